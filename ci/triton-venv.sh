#!/usr/bin/env bash
# A virtualenv with PyPI `nvidia-pytriton` (a real Triton Inference Server inside) for the
# Triton adapter's tests. It lives apart from .venv because pytriton pins numpy<2, and in
# the per-user cache so CI's fresh clones reuse it. Prints the venv's python.
set -euo pipefail
VERSION=0.7.0
CACHE=${ORCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/orchestratord}
VENV="$CACHE/venvs/pytriton-$VERSION-py$(python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')"
if [ ! -f "$VENV/.complete" ]; then  # the stamp: an interrupted install is redone
  echo "triton-venv: installing nvidia-pytriton $VERSION into $VENV" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "nvidia-pytriton==$VERSION" >&2
  touch "$VENV/.complete"
fi
echo "$VENV/bin/python"

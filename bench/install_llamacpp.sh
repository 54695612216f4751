#!/usr/bin/env bash
# llama.cpp, the peer bench/llm.py times lmblocks against, built from source: llama-cpp-python's
# PyPI wheels target a generic x86-64, and the issue demands llama.cpp at its best on this CPU, so
# it is compiled with -DGGML_NATIVE=ON (AVX-512, VNNI, BF16 where the machine has them). The build
# takes minutes on 2 cores, so the wheel is cached in ~/.cache/lmblocks/wheels and only rebuilt
# when no wheel of the pinned version is there (CI keeps that directory between runs).
#
#   bash bench/install_llamacpp.sh [PYTHON]     # default .venv/bin/python
set -euo pipefail

VERSION=0.3.36
PY=${1:-.venv/bin/python}
WHEELS=${LMBLOCKS_WHEELS:-$HOME/.cache/lmblocks/wheels}

wheel=$(ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    echo "building llama-cpp-python==$VERSION with -DGGML_NATIVE=ON into $WHEELS (several minutes)"
    mkdir -p "$WHEELS"
    start=$(date +%s)
    CMAKE_ARGS="-DGGML_NATIVE=ON" "$PY" -m pip wheel --disable-pip-version-check -q --no-deps \
        --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -w "$WHEELS"
    echo "built in $(( $(date +%s) - start )) s"
    wheel=$(ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl | head -n 1)
fi
# llama-cpp-python's runtime needs (numpy, typing-extensions, diskcache, jinja2) come from PyPI.
"$PY" -m pip install --disable-pip-version-check -q "$wheel"

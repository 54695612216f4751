#!/usr/bin/env bash
# Build the C++ kernel and thread-pool tests for aarch64 (NEON) and run them under qemu-user: the Arm
# path is then executed, not only compiled. Needs (Debian): g++-aarch64-linux-gnu qemu-user and, after
# `dpkg --add-architecture arm64`, libtbb-dev:arm64 libopenblas-dev:arm64.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build/aarch64}"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$root/tools/aarch64-linux-gnu.cmake" \
  -DLMBLOCKS_PYTHON=OFF -DLMBLOCKS_TESTS=ON -DLMBLOCKS_SYSTEM_BLAS=ON -DLMBLOCKS_SYSTEM_TBB=ON > "$build.log"
cmake --build "$build" --target lmblocks_cpp_tests lmblocks_cpp_thread_tests >> "$build.log"
qemu-aarch64 "$build/lmblocks_cpp_tests"
qemu-aarch64 "$build/lmblocks_cpp_thread_tests"

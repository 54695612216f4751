"""The C++ tests (tests/cpp/): every SIMD kernel against its scalar reference, and the thread pool;
natively and, where Debian's cross toolchain and qemu-user are installed, on aarch64 (NEON) under
emulation.

Both build with CMake into build/ (kept between runs, so rebuilds are incremental).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_simd_kernels_and_thread_pool_natively():
    build = ROOT / "build" / "cpp-tests"
    bindir = Path(sys.executable).parent  # cmake and ninja come as wheels with the test extras
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    run(["cmake", "-S", ROOT, "-B", build, "-G", "Ninja", "-DLMBLOCKS_PYTHON=OFF", "-DLMBLOCKS_TESTS=ON",
         f"-DPython_EXECUTABLE={sys.executable}"], env=env)
    run(["cmake", "--build", build, "--target", "lmblocks_cpp_tests", "lmblocks_cpp_thread_tests"], env=env)
    out = run(["ctest", "--test-dir", build, "--output-on-failure"], env=env)
    assert "100% tests passed" in out


ARM_NEEDS = {
    "g++-aarch64-linux-gnu": shutil.which("aarch64-linux-gnu-g++"),
    "qemu-user": shutil.which("qemu-aarch64"),
    "libtbb-dev:arm64": Path("/usr/lib/aarch64-linux-gnu/libtbb.so").exists() or None,
    "libopenblas-dev:arm64": Path("/usr/lib/aarch64-linux-gnu/libopenblas.so").exists() or None,
}


@pytest.mark.skipif(not all(ARM_NEEDS.values()),
                    reason="aarch64 check needs Debian packages: " + " ".join(k for k, v in ARM_NEEDS.items() if not v))
def test_neon_kernels_and_thread_pool_under_qemu():
    bindir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    out = run([ROOT / "tools" / "check_arm.sh", ROOT / "build" / "aarch64"], env=env)
    assert out.strip().endswith("0 failed"), out

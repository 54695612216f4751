"""The Arm build: every C++ source compiles for aarch64, kernels in their NEON and baseline forms.

No Arm machine is at hand to run them, so this guards the NEON code against rot at compile level
(its arithmetic is the x86 kernels' source, written once against simd::V). Needs Debian's
g++-aarch64-linux-gnu; skipped with a reason where it is not installed.
"""

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("aarch64-linux-gnu-g++")


def tbb_include():
    try:
        files = metadata.files("tbb-devel") or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "parallel_for.h" and "oneapi" in str(f):
            return f.locate().parents[2]
    return None


def sources():
    ops = sorted((ROOT / "cpp/src/ops").glob("*.cpp"))
    rest = sorted((ROOT / "cpp/src").glob("*.cpp")) + sorted((ROOT / "cpp/src/runtime").glob("*.cpp")) + \
        sorted((ROOT / "cpp/src/quant").glob("*.cpp"))
    jobs = [(f, ["-DLB_ISA=neon"]) for f in ops]
    jobs += [(f, ["-DLB_BASELINE=1", "-DLB_HAVE_neon=1"]) for f in ops + rest]
    return jobs


@pytest.mark.skipif(CXX is None, reason="no aarch64 cross compiler (apt-get install g++-aarch64-linux-gnu)")
def test_every_source_compiles_for_aarch64(tmp_path):
    inc = tbb_include()
    if inc is None:
        pytest.skip("tbb-devel headers not found")

    def compile_one(job):
        src, defs = job
        cmd = [CXX, "-std=c++20", "-O1", "-c", *defs, "-DLB_BLAS_PREFIX=scipy_", f"-I{ROOT / 'cpp/include'}",
               f"-I{ROOT / 'cpp/src'}", f"-I{inc}", str(src), "-o", str(tmp_path / f"{src.stem}{len(defs)}.o")]
        r = subprocess.run(cmd, capture_output=True, text=True)
        return f"{src.relative_to(ROOT)} {' '.join(defs)}:\n{r.stderr[:2000]}" if r.returncode else None

    with ThreadPoolExecutor(2) as pool:
        failures = [f for f in pool.map(compile_one, sources()) if f]
    assert not failures, "\n".join(failures)

"""Load the native libraries that come as wheels (scipy-openblas32, tbb) before ``_core``.

The extension links ``libscipy_openblas.so`` and ``libtbb.so.12`` by soname. Wheels put them in
places no loader searches by default (``site-packages/scipy_openblas32/lib`` and ``<prefix>/lib``),
so we load them by path here; the extension's RPATH covers the usual layout as a second line.
When the package was built against the system's libraries (CMake options LMBLOCKS_SYSTEM_BLAS /
LMBLOCKS_SYSTEM_TBB) nothing is found here and the system loader does the work.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from importlib import metadata


def _load(path: str) -> None:
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        pass  # the dynamic loader will report what is missing when _core is imported


def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= set(line.split())
    except OSError:
        pass
    return False


def _openblas() -> None:
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        return
    lib_dir = os.path.join(list(spec.submodule_search_locations)[0], "lib")
    names = sorted(os.listdir(lib_dir)) if os.path.isdir(lib_dir) else []
    lib = next((n for n in names if n.startswith("libscipy_openblas") and ".so" in n), None)
    if lib is None:
        return
    # OpenBLAS picks its kernels from a table of CPU models and falls back to AVX2 ("Haswell") on
    # AVX-512 CPUs it does not list (AMD Zen 4/5), where its SkylakeX sgemm is ~1.8x faster; some
    # machine images also pin OPENBLAS_CORETYPE=Haswell for every OpenBLAS in the process. Our copy
    # is private to lmblocks, so we choose for it (LMBLOCKS_OPENBLAS_CORETYPE overrides), set the
    # variable only while the library loads (it is read once, then), and put the old value back.
    # NumPy's OpenBLAS is a different library and is not affected.
    core = os.environ.get("LMBLOCKS_OPENBLAS_CORETYPE") or ("SkylakeX" if _has_avx512() else None)
    old = os.environ.get("OPENBLAS_CORETYPE")
    if core:
        os.environ["OPENBLAS_CORETYPE"] = core
    try:
        _load(os.path.join(lib_dir, lib))
    finally:
        if core and old is None:
            del os.environ["OPENBLAS_CORETYPE"]
        elif core:
            os.environ["OPENBLAS_CORETYPE"] = old


def _tbb() -> None:
    try:
        files = metadata.files("tbb") or []
    except metadata.PackageNotFoundError:
        return
    for f in files:
        if f.name == "libtbb.so.12":
            _load(str(f.locate()))
            return


def preload() -> None:
    _openblas()
    _tbb()

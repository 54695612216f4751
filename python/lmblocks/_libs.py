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


def _openblas() -> None:
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        return
    lib_dir = os.path.join(list(spec.submodule_search_locations)[0], "lib")
    if os.path.isdir(lib_dir):
        for name in sorted(os.listdir(lib_dir)):
            if name.startswith("libscipy_openblas") and ".so" in name:
                _load(os.path.join(lib_dir, name))
                return


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

"""lmblocks: compose, run and look inside tiny language models on CPUs.

Python describes, C++ runs: kernels and whole models execute natively with the GIL released,
on one thread pool; NumPy arrays and lmblocks tensors share memory without copies.

>>> import numpy as np, lmblocks as lb
>>> x = np.random.default_rng(0).standard_normal((4, 576), dtype=np.float32)
>>> y = lb.ops.rms_norm(x, np.ones(576, np.float32))
>>> y.shape, y.dtype
((4, 576), dtype('float32'))
"""

from __future__ import annotations

import warnings as _warnings

from ._libs import preload as _preload
from ._version import __version__

_preload()

from . import _core  # noqa: E402
from ._core import (  # noqa: E402
    MappedFile,
    Tensor,
    asarray,
    dtype_info,
    dtypes,
    empty,
    get_activation_bits,
    get_activation_quantization,
    get_isa,
    get_num_threads,
    set_activation_bits,
    set_activation_quantization,
    set_isa,
    set_num_threads,
    zeros,
)
from . import assets, io, ops, sampling, tokenize  # noqa: E402
from ._core.text import StringTable  # noqa: E402
from . import models  # noqa: E402
from .model import Model, load  # noqa: E402
from . import nn  # noqa: E402
from .quant import dequantize, quantize  # noqa: E402
from .convert import quantize_model  # noqa: E402
from .io.detect import inspect  # noqa: E402

if _core.__version__ != __version__:
    raise ImportError(f"lmblocks {__version__} found a native core built as {_core.__version__}; reinstall lmblocks")

if _core.isa_env_warning():
    _warnings.warn(_core.isa_env_warning(), RuntimeWarning, stacklevel=2)


def cpu_info() -> dict:
    """What this CPU offers and which code path each kernel family takes.

    Keys: arch, vendor, model, features (flag -> bool), isa (active), best_isa, compiled_isas,
    available_isas, kernels (family -> path), blas, num_threads.
    ``LMBLOCKS_ISA=scalar|avx2|avx512`` (or :func:`set_isa`) forces a lower path.

    >>> import lmblocks as lb
    >>> "scalar" in lb.cpu_info()["available_isas"]
    True
    """
    return _core.cpu_info()


def from_file(path, offset: int, shape, dtype) -> Tensor:
    """A read-only tensor viewing ``shape`` elements of ``dtype`` at byte ``offset`` of a file,
    memory-mapped (nothing is read until used). Raises ValueError if the region is not inside the file.
    """
    return MappedFile(str(path)).tensor(offset, tuple(shape), dtype)


__all__ = [
    "__version__", "Tensor", "MappedFile", "asarray", "empty", "zeros", "from_file", "dtype_info", "dtypes",
    "set_num_threads", "get_num_threads", "set_isa", "get_isa", "set_activation_quantization", "get_activation_quantization", "set_activation_bits", "get_activation_bits", "cpu_info", "ops", "io", "tokenize", "sampling", "dequantize", "quantize", "quantize_model", "inspect",
    "nn", "models", "Model", "load", "StringTable",
]

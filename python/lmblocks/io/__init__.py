"""Model file readers: each maps tensor names to read-only lmblocks tensors memory-mapped from the file.

>>> import lmblocks.io
>>> issubclass(lmblocks.io.FormatError, ValueError)
True
"""

from __future__ import annotations


class FormatError(ValueError):
    """A malformed model file. The message names the file, the field and its byte offset."""


from .gguf import GGUFFile, TensorInfo, read_gguf  # noqa: E402  (gguf.py imports FormatError from here)
from .safetensors import SafetensorsCheckpoint, SafetensorsFile  # noqa: E402

__all__ = ["FormatError", "GGUFFile", "TensorInfo", "read_gguf", "SafetensorsFile", "SafetensorsCheckpoint"]

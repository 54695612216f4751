"""Model file readers: each maps tensor names to read-only lmblocks tensors memory-mapped from the file.

>>> import lmblocks.io
>>> issubclass(lmblocks.io.FormatError, ValueError)
True
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .._core import MappedFile, Tensor


class FormatError(ValueError):
    """A malformed model file. The message names the file, the field and its byte offset."""


class TensorInfo(NamedTuple):
    """One tensor of a file's directory. ``shape`` is in NumPy order, ``dtype`` an lmblocks dtype name
    ("f32", "q4_k"), ``offset`` the absolute byte offset in the file, ``nbytes`` the size of its data."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    nbytes: int


class MappedReader:
    """What every reader shares: ``path``, one MappedFile ``_map`` of the file and a directory
    ``tensors`` (name -> TensorInfo); ``tensor(name)`` views one, read-only, without copying."""

    path: str
    _map: MappedFile
    tensors: dict[str, TensorInfo]

    def tensor(self, name: str) -> Tensor:
        """The tensor ``name``: read-only, memory-mapped from the file, no copy (quantized dtypes keep
        their blocks; ``np.asarray`` of one gives the raw bytes, one row of blocks per row)."""
        info = self.tensors.get(name)
        if info is None:
            raise KeyError(f"{self.path}: no tensor named {name!r} (it has {len(self.tensors)} tensors)")
        return self._map.tensor(info.offset, info.shape, info.dtype)


def tensor_table(tensors) -> tuple[list[str], int]:
    """Per dtype: tensors, parameters and bytes, largest first; and the total parameter count."""
    per_dtype: dict[str, list[int]] = {}
    for info in tensors:
        row = per_dtype.setdefault(info.dtype, [0, 0, 0])
        row[0] += 1
        row[1] += math.prod(info.shape)
        row[2] += info.nbytes
    lines = [f"  {dtype:<5} {n:>5} tensors {count:>15,} parameters {nbytes:>15,} bytes"
             for dtype, (n, count, nbytes) in sorted(per_dtype.items(), key=lambda item: -item[1][2])]
    return lines, sum(r[1] for r in per_dtype.values())


from .gguf import GGUFFile, read_gguf  # noqa: E402  (the readers import the names above from here)
from .safetensors import SafetensorsCheckpoint, SafetensorsFile  # noqa: E402

__all__ = ["FormatError", "TensorInfo", "MappedReader", "GGUFFile", "read_gguf", "SafetensorsFile", "SafetensorsCheckpoint"]

"""GGUF v3 writer: metadata key/values with their GGUF types, then tensors, in the layout
:mod:`lmblocks.io.gguf` reads (ggml's docs/gguf.md).

Tensors are written one at a time from whatever holds them (memory-mapped views of another file, or
arrays in memory), so writing needs no memory beyond the header. The file appears at ``path`` only
when complete: it is written beside it under a temporary name and renamed over it, which also makes
saving over a file that is still memory-mapped (the model's own source) safe.

Metadata types use :class:`lmblocks.io.GGUFFile`'s names ("uint32", "float32", "bool", "string",
"array[int32]", "array[string]", "array[array]" ...), so a file's metadata copies across unchanged:

>>> import lmblocks as lb
>>> from lmblocks.io.gguf_writer import write_gguf
>>> src = lb.io.GGUFFile("stories260K.gguf")                                  # doctest: +SKIP
>>> write_gguf("copy.gguf", [(k, src.metadata_types[k], v) for k, v in src.metadata.items()],
...            [(name, src.tensor(name)) for name in src.tensors])                  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import struct
import uuid
from typing import Any, Iterable

import numpy as np

from .. import Tensor, asarray, dtype_info
from .._core.text import StringTable
from .gguf import _INTEGER_TYPES, _SCALARS, DEFAULT_ALIGNMENT, MAX_DIMS

_STRING, _ARRAY = 8, 9
_SCALAR_IDS = {name: (t, struct.Struct(fmt)) for t, (name, fmt) in _SCALARS.items()}
_ARRAY_DTYPES = {name: (t, np.dtype(fmt)) for t, (name, fmt) in _SCALARS.items()}
_BY_NUMPY = {np.dtype(fmt).newbyteorder("="): name for _, (name, fmt) in _SCALARS.items() if name != "bool"}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


def _string(value, key: str) -> bytes:
    if isinstance(value, bytes):
        return _U64.pack(len(value)) + value
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")  # the reader's escape of bytes that are not UTF-8
        return _U64.pack(len(raw)) + raw
    raise ValueError(f"metadata {key!r}: {value!r} is not a string (str or bytes)")


def _strings(values, key: str) -> bytes:
    if isinstance(values, StringTable):
        raws = [values.raw(i) for i in range(len(values))]
        return b"".join(_U64.pack(len(r)) + r for r in raws)
    return b"".join(_string(v, key) for v in values)


def _element_type(value) -> str:
    """The GGUF element type of one element of an array of arrays (as GGUFFile reads them back)."""
    if isinstance(value, StringTable) or (isinstance(value, (list, tuple)) and value
                                          and all(isinstance(v, (str, bytes)) for v in value)):
        return "string"
    if isinstance(value, np.ndarray):
        return "bool" if value.dtype == np.bool_ else _BY_NUMPY.get(value.dtype.newbyteorder("="), "?")
    return "array"


def _array(element: str, values, key: str, depth: int = 0) -> bytes:
    """An array value: element type, count, elements."""
    if element == "string":
        return _U32.pack(_STRING) + _U64.pack(len(values)) + _strings(values, key)
    if element == "array":
        if depth >= 8:
            raise ValueError(f"metadata {key!r}: arrays nest deeper than 8 levels")
        inner = [_array(_element_type(v), v, key, depth + 1) for v in values]
        return _U32.pack(_ARRAY) + _U64.pack(len(inner)) + b"".join(inner)
    if element not in _ARRAY_DTYPES:
        raise ValueError(f"metadata {key!r}: array element type {element!r} is not a GGUF type")
    type_id, dtype = _ARRAY_DTYPES[element]
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"metadata {key!r}: an array[{element}] must be 1-D, got shape {a.shape}")
    if element == "bool":
        a = a.astype(np.uint8)
    elif a.size and a.dtype.kind in "iu" and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if a.min() < info.min or a.max() > info.max:
            raise ValueError(f"metadata {key!r}: values outside the range of {element}")
    return _U32.pack(type_id) + _U64.pack(a.size) + a.astype(dtype).tobytes()


def encode_value(key: str, vtype: str, value: Any) -> bytes:
    """The bytes of one key/value record: key string, value type u32, value."""
    head = _string(key, "key")
    if vtype in _SCALAR_IDS:
        type_id, st = _SCALAR_IDS[vtype]
        try:
            return head + _U32.pack(type_id) + st.pack(bool(value) if vtype == "bool" else value)
        except struct.error as e:
            raise ValueError(f"metadata {key!r}: {value!r} is not a valid {vtype} ({e})") from None
    if vtype == "string":
        return head + _U32.pack(_STRING) + _string(value, key)
    if vtype.startswith("array[") and vtype.endswith("]"):
        return head + _U32.pack(_ARRAY) + _array(vtype[6:-1], value, key)
    raise ValueError(f"metadata {key!r}: {vtype!r} is not a GGUF value type (e.g. 'uint32', 'string', "
                     f"'array[int32]')")


def _pad(n: int, alignment: int) -> int:
    return -n % alignment


def write_gguf(path: str | os.PathLike, metadata: Iterable[tuple[str, str, Any]],
               tensors: Iterable[tuple[str, Any]]) -> None:
    """Write a GGUF v3 file.

    ``metadata``: (key, GGUF type name, value) in file order, the types as :class:`GGUFFile` names
    them. ``tensors``: (name, tensor) in file order, each an :class:`lmblocks.Tensor` (any dtype with a
    ggml type id: f32, f16, bf16, q4_0 ... q6_k) or a NumPy array (float32/float16). The data section
    and every tensor are aligned to ``general.alignment`` if ``metadata`` carries it (an integer power
    of two), else to 32 bytes, as readers expect. Raises ValueError for a value that does not fit its
    type, a duplicate name, an unsupported dtype; OSError (naming ``path``) when the file cannot be
    written.
    """
    path = os.fsdecode(path)
    kv, keys, alignment = [], set(), DEFAULT_ALIGNMENT
    for key, vtype, value in metadata:
        if key in keys:
            raise ValueError(f"metadata key {key!r} appears twice")
        keys.add(key)
        kv.append(encode_value(key, vtype, value))
        if key == "general.alignment":
            if vtype not in _INTEGER_TYPES or value <= 0 or value & (value - 1):
                raise ValueError(f"metadata 'general.alignment' is {value!r} ({vtype}); expected an integer "
                                 "power of two")
            alignment = int(value)

    infos, items, names, offset = [], [], set(), 0
    for name, t in tensors:
        if name in names:
            raise ValueError(f"tensor {name!r} appears twice")
        names.add(name)
        if not isinstance(t, Tensor):
            t = asarray(t)
        info = dtype_info(t.dtype)
        if info["ggml_type"] < 0:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} has no ggml type")
        if not 1 <= t.ndim <= MAX_DIMS:
            raise ValueError(f"tensor {name!r}: {t.ndim} dimensions; GGUF holds 1 to {MAX_DIMS}")
        nbytes = math.prod(t.shape) // info["block_size"] * info["type_size"]
        if t.nbytes != nbytes:
            raise ValueError(f"tensor {name!r}: {t.nbytes} bytes of data for shape {t.shape} {t.dtype} ({nbytes})")
        dims = tuple(reversed(t.shape))  # innermost first
        infos.append(_string(name, "tensor name") + _U32.pack(len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
                     + _U32.pack(info["ggml_type"]) + _U64.pack(offset))
        items.append((name, t))
        offset += nbytes + _pad(nbytes, alignment)

    header = b"".join([b"GGUF", _U32.pack(3), _U64.pack(len(items)), _U64.pack(len(kv)), *kv, *infos])
    header += bytes(_pad(len(header), alignment))
    _write_atomically(path, header, items, alignment)


def _write_atomically(path: str, header: bytes, items, alignment: int) -> None:
    if os.path.isdir(path):
        raise IsADirectoryError(21, f"cannot write {path}: it is a folder")
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.partial")
    try:
        f = open(tmp, "xb")
    except OSError as e:
        raise type(e)(e.errno, f"cannot write {path}: {e.strerror}") from None
    try:
        with f:
            f.write(header)
            for name, t in items:
                a = np.ascontiguousarray(np.asarray(t))
                raw = a.reshape(-1).view(np.uint8)
                f.write(raw)
                f.write(bytes(_pad(raw.nbytes, alignment)))
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise type(e)(e.errno, f"cannot write {path}: {e.strerror}") from e
        raise

"""GGUF v2/v3 reader: the metadata, the tensor directory, and every tensor memory-mapped from the file.

The layout (ggml's docs/gguf.md), little-endian throughout:

    header        "GGUF", version u32, n_tensors u64, n_kv u64                    (24 bytes)
    metadata      n_kv x (key string, value type u32, value)
    tensor infos  n_tensors x (name string, n_dims u32, dims u64[n_dims] innermost first,
                               ggml type u32, offset u64 relative to the data section)
    padding       up to a multiple of general.alignment (default 32)
    data          the tensors' bytes; every offset is a multiple of the alignment

A string is a u64 byte count and that many bytes (no terminator); an array is an element type u32, a
count u64 and the elements, and may hold arrays. Versions 2 and 3 share this layout (3 only adds
big-endian files, which this reader refuses); version 1 had 32-bit counts and is refused too.

Every header value is checked before it is used: a malformed file raises FormatError naming the file,
the field and its byte offset, and no loop runs and nothing is allocated for a count the remaining bytes
cannot hold. Tensors may overlap or leave gaps between them (ggml's own loader insists they are packed in
order); each must only be aligned and lie inside the file.

Metadata values: integers, floats and bools as Python scalars; strings as str, except a string that is
not valid UTF-8 (some tokenizers store raw byte tokens), which stays bytes; numeric arrays as NumPy arrays
in native byte order; arrays of strings as a :class:`lmblocks.StringTable` (a sequence of str, one
buffer; bytes that are not UTF-8 come back surrogate-escaped); arrays of arrays as lists. Keys and tensor names must be valid UTF-8.

>>> import numpy as np, lmblocks.io
>>> f = lmblocks.io.read_gguf("stories260K.gguf")                       # doctest: +SKIP
>>> f.architecture, f.tensors["token_embd.weight"]                      # doctest: +SKIP
('llama', TensorInfo(name='token_embd.weight', shape=(512, 64), dtype='f32', offset=14176, nbytes=131072))
>>> np.asarray(f.tensor("token_embd.weight")).shape                      # doctest: +SKIP
(512, 64)
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any

import numpy as np

from .. import MappedFile, Tensor, dtype_info, dtypes
from .._core.text import StringTable
from . import FormatError, MappedReader, TensorInfo, tensor_table

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 8  # arrays of arrays nest at most this deep

# Metadata value types: id -> (name, little-endian element format). STRING and ARRAY have variable size.
_SCALARS = {
    0: ("uint8", "<B"), 1: ("int8", "<b"), 2: ("uint16", "<H"), 3: ("int16", "<h"),
    4: ("uint32", "<I"), 5: ("int32", "<i"), 6: ("float32", "<f"), 7: ("bool", "<B"),
    10: ("uint64", "<Q"), 11: ("int64", "<q"), 12: ("float64", "<d"),
}
_BOOL, _STRING, _ARRAY = 7, 8, 9
_INTEGER_TYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"}

_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_SCALAR_STRUCTS = {t: struct.Struct(fmt) for t, (_, fmt) in _SCALARS.items()}
_DIMS = {n: struct.Struct(f"<{n}Q") for n in range(1, MAX_DIMS + 1)}

# The fewest bytes each record can take, to bound a count by the bytes left before looping over it.
_MIN_KV_BYTES = 8 + 4 + 1  # empty key, value type, a one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # empty name, n_dims, one dim, type, offset
_MIN_ARRAY_BYTES = 4 + 8  # element type, count

# ggml type id -> lmblocks dtype name, from the package's type-traits table.
_GGML_DTYPES = {info["ggml_type"]: name for name in dtypes() if (info := dtype_info(name))["ggml_type"] >= 0}


class _Cursor:
    """Reads little-endian fields from the mapped bytes, each checked against the end of the file."""

    def __init__(self, path: str, buf: memoryview):
        self.path, self.buf, self.pos, self.end = path, buf, 0, len(buf)

    def fail(self, field: str, problem: str, at: int) -> FormatError:
        return FormatError(f"{self.path}: {field} [offset {at}] {problem}")

    def need(self, nbytes: int, field: str) -> None:
        if nbytes > self.end - self.pos:
            raise FormatError(f"{self.path}: {field} [offset {self.pos}, {nbytes} bytes] "
                              f"runs past the end of the file ({self.end} bytes)")

    def unpack(self, fmt: struct.Struct, field: str) -> tuple:
        self.need(fmt.size, field)
        values = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return values

    def u32(self, field: str) -> int:
        return self.unpack(_U32, field)[0]

    def u64(self, field: str) -> int:
        return self.unpack(_U64, field)[0]

    def raw_string(self, field: str) -> memoryview:
        nbytes = self.u64(f"{field} length")
        self.need(nbytes, field)
        raw = self.buf[self.pos:self.pos + nbytes]
        self.pos += nbytes
        return raw

    def name(self, field: str) -> str:
        """A key or tensor name: a string that must be valid UTF-8."""
        at = self.pos
        raw = self.raw_string(field)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(field, f"is not valid UTF-8 ({e.reason} at byte {e.start} of the string)", at) from None


def _text(raw: memoryview) -> str | bytes:
    """A string value: str when it is valid UTF-8, else the raw bytes (tokenizers may store byte tokens)."""
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError:
        return bytes(raw)


def _read_value(cur: _Cursor, vtype: int, type_at: int, field: str) -> tuple[Any, str]:
    """One metadata value of type id ``vtype`` (read at ``type_at``) -> (value, type name)."""
    if vtype in _SCALARS:
        at = cur.pos
        (value,) = cur.unpack(_SCALAR_STRUCTS[vtype], field)
        if vtype == _BOOL:
            if value > 1:
                raise cur.fail(field, f"is a bool stored as {value}, not 0 or 1", at)
            value = bool(value)
        return value, _SCALARS[vtype][0]
    if vtype == _STRING:
        return _text(cur.raw_string(field)), "string"
    if vtype == _ARRAY:
        return _read_array(cur, field, depth=0)
    raise cur.fail(f"{field} value type", f"is {vtype}, not a GGUF value type (0 to 12)", type_at)


def _read_array(cur: _Cursor, field: str, depth: int) -> tuple[Any, str]:
    """An array (element type, count, elements) -> (NumPy array or list, type name)."""
    if depth >= MAX_ARRAY_DEPTH:
        raise cur.fail(field, f"nests arrays deeper than {MAX_ARRAY_DEPTH} levels", cur.pos)
    type_at = cur.pos
    etype = cur.u32(f"{field} array element type")
    count = cur.u64(f"{field} array count")
    if etype in _SCALARS:
        name, fmt = _SCALARS[etype]
        dtype = np.dtype(fmt)
        cur.need(count * dtype.itemsize, f"{field} array of {count} {name}")
        values = np.frombuffer(cur.buf, dtype, count, cur.pos).astype(dtype.newbyteorder("="))  # an owned copy
        if etype == _BOOL:
            if count and values.max() > 1:
                bad = int(np.argmax(values > 1))
                raise cur.fail(f"{field}[{bad}]", f"is a bool stored as {values[bad]}, not 0 or 1", cur.pos + bad)
            values = values.view(np.bool_)
        cur.pos += count * dtype.itemsize
        return values, f"array[{name}]"
    if etype == _STRING:
        # A tokenizer's 262k tokens as one native buffer, not 262k Python objects (see StringTable).
        cur.need(count * 8, f"{field} array of {count} strings")
        try:
            table, cur.pos = StringTable.from_gguf(cur.buf, cur.pos, count)
        except ValueError as e:
            raise FormatError(f"{cur.path}: {field}{e}") from None
        return table, "array[string]"
    if etype == _ARRAY:
        cur.need(count * _MIN_ARRAY_BYTES, f"{field} array of {count} arrays")
        return [_read_array(cur, f"{field}[{i}]", depth + 1)[0] for i in range(count)], "array[array]"
    raise cur.fail(f"{field} array element type", f"is {etype}, not a GGUF value type (0 to 12)", type_at)


class GGUFFile(MappedReader):
    """A GGUF v2/v3 file: its metadata and tensor directory, read at open; tensors mapped on request.

    Attributes: ``path``, ``version``, ``metadata`` (key -> value, in file order), ``metadata_types``
    (key -> GGUF type name such as "uint32", "string", "array[float32]"), ``tensors`` (name -> TensorInfo,
    in file order), ``alignment``, ``data_offset`` (where the data section starts), ``architecture``.
    Raises :class:`lmblocks.io.FormatError` for a malformed file, OSError if it cannot be opened.

    >>> import lmblocks.io
    >>> f = lmblocks.io.GGUFFile("stories260K.gguf")      # doctest: +SKIP
    >>> print(f.summary())                                 # doctest: +SKIP
    stories260K.gguf: GGUF v3, architecture llama, 48 tensors, 19 metadata keys, 292,800 parameters
      f32      48 tensors         292,800 parameters       1,171,200 bytes
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fsdecode(path)
        self._map = MappedFile(self.path)  # the one map of this file; every tensor() views it
        whole = np.asarray(self._map.tensor(0, (self._map.size,), "u8"))
        cur = _Cursor(self.path, memoryview(whole))

        (magic,) = cur.unpack(struct.Struct("<4s"), "magic")
        if magic != MAGIC:
            raise cur.fail("magic", f"is {magic!r}, not b'GGUF': not a GGUF file", 0)
        self.version = cur.u32("version")
        if self.version not in VERSIONS:
            swapped = int.from_bytes(self.version.to_bytes(4, "little"), "big")
            hint = (" (a big-endian file? only little-endian GGUF is read)" if swapped in (2, 3) else
                    " (GGUF v1 had 32-bit counts and is no longer read)" if self.version == 1 else "")
            raise cur.fail("version", f"is {self.version}, not 2 or 3{hint}", 4)
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        left = cur.end - cur.pos
        if n_tensors * _MIN_TENSOR_INFO_BYTES > left:
            raise cur.fail("tensor count", f"is {n_tensors}, more than the {left} bytes left could describe", 8)
        if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > left:
            raise cur.fail("metadata count", f"is {n_kv}, more than the {left} bytes left could hold "
                           f"beside {n_tensors} tensor infos", 16)

        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, str] = {}
        self.alignment = DEFAULT_ALIGNMENT
        for i in range(n_kv):
            key_at = cur.pos
            key = cur.name(f"metadata key {i}")
            if key in self.metadata:
                raise cur.fail(f"metadata key '{key}'", "appears twice", key_at)
            type_at = cur.pos
            vtype = cur.u32(f"metadata '{key}' value type")
            value_at = cur.pos
            self.metadata[key], self.metadata_types[key] = _read_value(cur, vtype, type_at, f"metadata '{key}'")
            if key == "general.alignment":
                self.alignment = self._check_alignment(cur, value_at)

        # Tensor infos; offsets become absolute once the end of this section fixes the data section start.
        infos: dict[str, tuple] = {}
        for i in range(n_tensors):
            name_at = cur.pos
            name = cur.name(f"tensor {i} name")
            if name in infos:
                raise cur.fail(f"tensor '{name}'", "appears twice", name_at)
            infos[name] = self._read_tensor_info(cur, f"tensor '{name}'")
        self.data_offset = -(-cur.pos // self.alignment) * self.alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, (shape, dtype, offset, nbytes) in infos.items():
            start = self.data_offset + offset
            if start + nbytes > cur.end:
                raise FormatError(f"{self.path}: tensor '{name}' data [offset {start}, {nbytes} bytes] "
                                  f"runs past the end of the file ({cur.end} bytes)")
            self.tensors[name] = TensorInfo(name, shape, dtype, start, nbytes)

    @property
    def architecture(self) -> str | None:
        """``general.architecture`` ("llama", "gemma3" ...), or None if the file lacks it."""
        return self.metadata.get("general.architecture")

    def summary(self) -> str:
        """Architecture, counts, and per dtype the tensors, parameters and bytes."""
        lines, params = tensor_table(self.tensors.values())
        return "\n".join([f"{os.path.basename(self.path)}: GGUF v{self.version}, architecture {self.architecture}, "
                          f"{len(self.tensors)} tensors, {len(self.metadata)} metadata keys, {params:,} parameters",
                          *lines])

    def __repr__(self) -> str:
        return (f"GGUFFile({self.path!r}, v{self.version}, architecture={self.architecture!r}, "
                f"{len(self.tensors)} tensors, {len(self.metadata)} metadata keys)")

    def _check_alignment(self, cur: _Cursor, at: int) -> int:
        value, vtype = self.metadata["general.alignment"], self.metadata_types["general.alignment"]
        if vtype not in _INTEGER_TYPES:
            raise cur.fail("metadata 'general.alignment'", f"is a {vtype}, not an integer", at)
        if value <= 0 or value & (value - 1):
            raise cur.fail("metadata 'general.alignment'", f"is {value}, not a power of two", at)
        return value

    def _read_tensor_info(self, cur: _Cursor, field: str) -> tuple:
        """One tensor info after its name -> (shape in NumPy order, dtype, offset in the data section, nbytes)."""
        at = cur.pos
        n_dims = cur.u32(f"{field} n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"{field} n_dims", f"is {n_dims}, not 1 to {MAX_DIMS}", at)
        dims_at = cur.pos
        dims = cur.unpack(_DIMS[n_dims], f"{field} dims")  # innermost first
        if not all(0 < d < 2**63 for d in dims):
            raise cur.fail(f"{field} dims", f"{list(dims)} has a zero or negative (>= 2**63) dimension", dims_at)
        count = math.prod(dims)
        if count >= 2**63:
            raise cur.fail(f"{field} dims", f"{list(dims)} hold {count} elements, more than 2**63 - 1", dims_at)
        type_at = cur.pos
        type_id = cur.u32(f"{field} type")
        dtype = _GGML_DTYPES.get(type_id)
        if dtype is None:
            known = ", ".join(f"{t} {n}" for t, n in sorted(_GGML_DTYPES.items()))
            raise cur.fail(f"{field} type", f"is ggml type {type_id}, which lmblocks does not read (it reads {known})",
                           type_at)
        info = dtype_info(dtype)
        if dims[0] % info["block_size"]:
            raise cur.fail(f"{field} dims", f"{list(dims)}: the innermost dimension {dims[0]} is not a multiple of "
                           f"the {dtype} block size {info['block_size']}", dims_at)
        offset_at = cur.pos
        offset = cur.u64(f"{field} offset")
        if offset % self.alignment:
            raise cur.fail(f"{field} offset", f"is {offset}, not a multiple of the alignment {self.alignment}",
                           offset_at)
        nbytes = count // info["block_size"] * info["type_size"]
        return tuple(reversed(dims)), dtype, offset, nbytes


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Open a GGUF file: ``lmblocks.io.read_gguf("model.gguf").tensor("token_embd.weight")``."""
    return GGUFFile(path)

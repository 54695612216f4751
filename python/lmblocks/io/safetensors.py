"""Hugging Face safetensors, memory-mapped: a file, or a folder of shards with its index.

The format: a little-endian uint64 N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets":
[begin, end]}, "__metadata__": {str: str}}``, then the data; offsets are relative to the data start.
Every field is checked against the file before a tensor is viewed, so a damaged header raises
:class:`lmblocks.io.FormatError` naming the file and the field, never reads past the end.

>>> import numpy as np, lmblocks.io, tempfile, os, json, struct
>>> header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
>>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
>>> _ = open(path, "wb").write(struct.pack("<Q", len(header)) + header + np.float32([1, 2]).tobytes())
>>> np.asarray(lmblocks.io.SafetensorsFile(path).tensor("w"))
array([1., 2.], dtype=float32)
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import numpy as np

from .._core import MappedFile, Tensor
from . import FormatError, MappedReader, TensorInfo

MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit
INDEX_NAME = "model.safetensors.index.json"
# safetensors dtype -> lmblocks dtype (BOOL is one byte per value, 0 or 1).
DTYPES = {"F64": "f64", "F32": "f32", "F16": "f16", "BF16": "bf16", "I64": "i64", "I32": "i32", "I16": "i16",
          "I8": "i8", "U8": "u8", "BOOL": "u8"}
ITEMSIZE = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2, "i64": 8, "i32": 4, "i16": 2, "i8": 1, "u8": 1}


def _unique_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


class SafetensorsFile(MappedReader):
    """One .safetensors file: ``metadata`` (the ``__metadata__`` strings), ``tensors`` (name ->
    TensorInfo, by offset), ``tensor(name)`` -> a read-only Tensor viewing the file (no copy)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fsdecode(path)
        self._map = MappedFile(self.path)
        size = self._map.size
        if size < 8:
            raise FormatError(f"{self.path}: {size} bytes, too short for the 8-byte header length")
        raw = np.asarray(self._map.tensor(0, (min(size, 8 + MAX_HEADER_BYTES),), "u8"))
        (n,) = struct.unpack_from("<Q", raw, 0)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise FormatError(f"{self.path}: header length (offset 0) is {n} bytes; the file has {size} bytes "
                              f"and headers are limited to {MAX_HEADER_BYTES}")
        try:
            header = json.loads(bytes(raw[8:8 + n]).decode("utf-8"), object_pairs_hook=_unique_keys)
        except (UnicodeDecodeError, ValueError) as e:
            raise FormatError(f"{self.path}: the JSON header (bytes 8..{8 + n}) is malformed: {e}") from None
        if not isinstance(header, dict):
            raise FormatError(f"{self.path}: the JSON header is a {type(header).__name__}, not an object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise FormatError(f"{self.path}: __metadata__ must map strings to strings")
        self.metadata: dict[str, str] = meta
        self.data_offset = 8 + n
        data_bytes = size - self.data_offset
        infos = [self._tensor_info(name, entry, data_bytes) for name, entry in header.items()]
        infos.sort(key=lambda i: i.offset)
        for a, b in zip(infos, infos[1:]):
            if b.offset < a.offset + a.nbytes:
                raise FormatError(f"{self.path}: tensors '{a.name}' and '{b.name}' overlap")
        self.tensors: dict[str, TensorInfo] = {i.name: i for i in infos}

    def _tensor_info(self, name: str, entry: Any, data_bytes: int) -> TensorInfo:
        where = f"{self.path}: tensor '{name}'"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise FormatError(f"{where} needs dtype, shape and data_offsets, got {entry!r:.200}")
        dtype = DTYPES.get(entry["dtype"])
        if dtype is None:
            raise FormatError(f"{where} has dtype {entry['dtype']!r}; supported: {', '.join(DTYPES)}")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list) or len(shape) > 8 or \
                not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise FormatError(f"{where} has shape {shape!r:.200}; expected a list of at most 8 non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and not isinstance(o, bool)
                                                                         for o in offsets)):
            raise FormatError(f"{where} has data_offsets {offsets!r:.200}; expected [begin, end]")
        begin, end = offsets
        nbytes = math.prod(shape) * ITEMSIZE[dtype]
        if not 0 <= begin <= end <= data_bytes:
            raise FormatError(f"{where} data_offsets [{begin}, {end}] lie outside the data section "
                              f"({data_bytes} bytes)")
        if end - begin != nbytes:
            raise FormatError(f"{where} has shape {tuple(shape)} of {dtype} ({nbytes} bytes) but data_offsets "
                              f"span {end - begin} bytes")
        return TensorInfo(name, tuple(shape), dtype, self.data_offset + begin, nbytes)

    def __repr__(self) -> str:
        return f"SafetensorsFile({self.path!r}, {len(self.tensors)} tensors)"


class SafetensorsCheckpoint:
    """A Hugging Face checkpoint: ``model.safetensors``, or the shards named by
    ``model.safetensors.index.json`` in a folder, seen as one name -> tensor mapping.
    ``tensors`` (name -> TensorInfo), ``tensor(name)``, ``files`` (the opened shards)."""

    def __init__(self, path: str | os.PathLike):
        path = os.fsdecode(path)
        if os.path.isdir(path):
            index = os.path.join(path, INDEX_NAME)
            if os.path.exists(index):
                names = self._shards_from_index(index)
            else:
                names = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
                if not names:
                    raise FormatError(f"{path}: no *.safetensors file and no {INDEX_NAME}")
            paths = [os.path.join(path, f) for f in names]
        else:
            paths = [path]
        self.files = [SafetensorsFile(p) for p in paths]
        self._owner: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for name in f.tensors:
                if name in self._owner:
                    raise FormatError(f"{f.path}: tensor '{name}' is also in {self._owner[name].path}")
                self._owner[name] = f
        if os.path.isdir(path) and os.path.exists(os.path.join(path, INDEX_NAME)):
            missing = sorted(set(self._weight_map) - set(self._owner))
            if missing:
                raise FormatError(f"{path}: {INDEX_NAME} lists tensors no shard holds, e.g. {missing[:3]}")
        self.tensors = {name: f.tensors[name] for name, f in self._owner.items()}
        self.metadata = {k: v for f in self.files for k, v in f.metadata.items()}

    def _shards_from_index(self, index: str) -> list[str]:
        try:
            with open(index, encoding="utf-8") as fh:
                data = json.load(fh)
            self._weight_map = data["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"{index}: not a safetensors index ({e})") from None
        if not isinstance(self._weight_map, dict) or not all(isinstance(v, str) for v in self._weight_map.values()):
            raise FormatError(f"{index}: weight_map must map tensor names to file names")
        shards = sorted(set(self._weight_map.values()))
        for s in shards:
            if os.path.basename(s) != s:
                raise FormatError(f"{index}: shard {s!r} is not a file name in the same folder")
            if not os.path.exists(os.path.join(os.path.dirname(index), s)):
                raise FormatError(f"{index}: shard {s!r} does not exist")
        return shards

    def tensor(self, name: str) -> Tensor:
        f = self._owner.get(name)
        if f is None:
            raise KeyError(f"no tensor named {name!r} (the checkpoint has {len(self._owner)} tensors)")
        return f.tensor(name)

    def __repr__(self) -> str:
        return f"SafetensorsCheckpoint({len(self.files)} file(s), {len(self.tensors)} tensors)"


_ST_DTYPE = {v: k for k, v in DTYPES.items() if k != "BOOL"}


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> Tensor or NumPy array) as one .safetensors file, in the given order,
    data 8-byte aligned. Plain dtypes are stored as themselves; a ggml block type (which safetensors
    cannot name) as its raw bytes, U8 of shape (..., bytes per row), with ``__metadata__`` key
    ``lmblocks.dtype.<name>`` = "<dtype> <shape>" so :func:`block_tensor` can view it again. The file
    appears at ``path`` only once complete."""
    path = os.fsdecode(path)
    meta = dict(metadata or {})
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        dtype = t.dtype if isinstance(t, Tensor) else {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16",
                                                       np.dtype(np.float64): "f64", np.dtype(np.int32): "i32",
                                                       np.dtype(np.int64): "i64", np.dtype(np.uint8): "u8",
                                                       np.dtype(np.int8): "i8", np.dtype(np.int16): "i16"}.get(np.asarray(t).dtype)
        raw = np.ascontiguousarray(np.asarray(t.contiguous() if isinstance(t, Tensor) else t))
        if dtype is None:
            raise ValueError(f"write_safetensors: tensor {name!r} has dtype {raw.dtype}, which safetensors cannot hold")
        shape = [int(d) for d in t.shape]
        if dtype in _ST_DTYPE:
            st = _ST_DTYPE[dtype]
        else:  # a ggml block type: its bytes
            st = "U8"
            meta[f"lmblocks.dtype.{name}"] = f"{dtype} {' '.join(map(str, shape))}"
            shape = list(raw.shape)
        data = raw.view(np.uint8).reshape(-1).tobytes() if raw.size else b""
        header[name] = {"dtype": st, "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if meta:
        header["__metadata__"] = meta
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def block_tensor(reader: "SafetensorsCheckpoint", name: str) -> Tensor:
    """A tensor of ``reader`` as :func:`write_safetensors` wrote it: ggml block types viewed as such."""
    spec = reader.metadata.get(f"lmblocks.dtype.{name}")
    if spec is None:
        return reader.tensor(name)
    dtype, *dims = spec.split()
    try:
        shape = tuple(int(d) for d in dims)
        f = reader._owner[name]
        info = f.tensors[name]
        return f._map.tensor(info.offset, shape, dtype)
    except (ValueError, KeyError) as e:
        raise FormatError(f"tensor {name!r}: metadata says {spec!r}, which does not fit its bytes ({e})") from None


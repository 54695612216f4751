"""GGUF reader: real files against the gguf package's GGUFReader (llama.cpp's own Python reader), and
malformed files built here byte by byte, each of which must raise FormatError naming the field."""

import struct
from pathlib import Path

import numpy as np
import pytest

import lmblocks as lb
from lmblocks.io import FormatError, GGUFFile, read_gguf

REAL_FILES = [
    "stories260K.gguf",
    "tokenizer-vectors/ggml-vocab-llama-spm.gguf",
    "tokenizer-vectors/ggml-vocab-gpt-2.gguf",
    "tokenizer-vectors/ggml-vocab-bert-bge.gguf",
]


def _oracle():
    return pytest.importorskip("gguf", reason="the oracle is the gguf package (pip install gguf)")


def _oracle_read(path, monkeypatch):
    """gguf.GGUFReader(path), parsing a plain ndarray view of its np.memmap: the memmap subclass costs it
    a Python hook per element sliced (4x slower on a 50k-token vocabulary); the parsing is unchanged."""
    gguf, memmap = _oracle(), np.memmap
    with monkeypatch.context() as patch:
        patch.setattr(np, "memmap", lambda *args, **kwargs: np.asarray(memmap(*args, **kwargs)))
        return gguf.GGUFReader(path)


def _oracle_type(types) -> str:
    """GGUFReader's field.types ([ARRAY, STRING] ...) as our metadata_types name ("array[string]")."""
    if types[0].name == "ARRAY":
        if len(types) == 1:
            return "array[?]"
        return "array[array]" if types[1].name == "ARRAY" else f"array[{types[1].name.lower()}]"
    return types[0].name.lower()


def _assert_same_as_oracle(ours: GGUFFile, theirs) -> None:
    assert ours.version == theirs.fields["GGUF.version"].contents()
    fields = {key: field for key, field in theirs.fields.items() if not key.startswith("GGUF.")}
    assert list(ours.metadata) == list(fields)
    for key, field in fields.items():
        kind, value, expected = ours.metadata_types[key], ours.metadata[key], field.contents()
        if _oracle_type(field.types) == "array[?]":  # GGUFReader keeps no element type for an empty array
            assert kind.startswith("array[") and len(value) == len(expected) == 0, key
        else:
            assert kind == _oracle_type(field.types), key
        if kind == "array[array]":  # GGUFReader.contents() flattens nested arrays to their leaves
            assert [x for v in value for x in np.asarray(v).tolist()] == expected, key
        elif kind == "array[string]":
            assert list(value) == expected, key
        elif isinstance(value, np.ndarray):
            assert value.dtype == np.dtype(kind[6:-1]) and value.tolist() == expected, key
        else:
            assert value == expected and type(value) is type(expected), key

    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for t in theirs.tensors:
        info = ours.tensors[t.name]
        assert info.shape == tuple(int(d) for d in reversed(t.shape)), t.name
        assert lb.dtype_info(info.dtype)["ggml_type"] == int(t.tensor_type), t.name
        assert (info.offset, info.nbytes) == (t.data_offset, t.n_bytes), t.name
        data = np.asarray(ours.tensor(t.name))
        if not lb.dtype_info(info.dtype)["quantized"]:
            assert data.shape == t.data.shape == info.shape, t.name
        assert data.tobytes() == t.data.tobytes(), t.name


# ---- real files ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", REAL_FILES)
def test_real_file_equals_gguf_reader(shared_data, name, monkeypatch):
    path = shared_data / name
    _assert_same_as_oracle(read_gguf(path), _oracle_read(path, monkeypatch))


def test_stories260k_tensors_are_zero_copy_views_of_one_map(shared_data):
    f = read_gguf(shared_data / "stories260K.gguf")
    assert f.architecture == "llama" and f.alignment == 32 and f.data_offset % 32 == 0
    a, b = f.tensors["token_embd.weight"], f.tensors["output_norm.weight"]
    ta, ta2, tb = f.tensor(a.name), f.tensor(a.name), f.tensor(b.name)
    assert ta.readonly and ta.shape == a.shape and ta.dtype == "f32"
    assert ta.data_ptr == ta2.data_ptr == np.asarray(ta).ctypes.data  # the same bytes, never copied
    assert tb.data_ptr - ta.data_ptr == b.offset - a.offset  # both inside one map of the whole file
    assert not np.asarray(ta).flags.writeable
    assert "48 tensors" in f.summary() and "f32" in f.summary() and "llama" in repr(f)
    with pytest.raises(KeyError, match="no tensor named"):
        f.tensor("missing.weight")


def test_smollm2_equals_gguf_reader(smollm2_path, monkeypatch):
    _assert_same_as_oracle(read_gguf(smollm2_path), _oracle_read(smollm2_path, monkeypatch))


def test_gemma3_equals_gguf_reader(gemma3_path, monkeypatch):
    f = read_gguf(gemma3_path)
    assert f.architecture == "gemma3" and {"q4_k", "q6_k"} <= {i.dtype for i in f.tensors.values()}
    _assert_same_as_oracle(f, _oracle_read(gemma3_path, monkeypatch))


# ---- files built here: a GGUF writer in a few lines, independent of the reader -------------------------

def _str(text) -> bytes:
    raw = text if isinstance(text, bytes) else text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key, vtype: int, payload: bytes) -> bytes:
    return _str(key) + struct.pack("<I", vtype) + payload


def _array(etype: int, payloads) -> bytes:
    return struct.pack("<IQ", etype, len(payloads)) + b"".join(payloads)


def _info(name, dims, type_id=0, offset=0, n_dims=None) -> bytes:
    n = len(dims) if n_dims is None else n_dims
    return _str(name) + struct.pack(f"<I{len(dims)}QIQ", n, *dims, type_id, offset)


def _gguf(kvs=(), infos=(), data=b"", *, magic=b"GGUF", version=3, n_tensors=None, n_kv=None, alignment=32):
    head = magic + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    return body + bytes(-len(body) % alignment) + data


def _valid_parts():
    """Every value type, a nested array, an f32 and a q8_0 tensor; the q8_0 data ends the file."""
    kvs = [
        _kv("general.architecture", 8, _str("llama")),
        _kv("general.alignment", 4, struct.pack("<I", 64)),
        _kv("t.u8", 0, b"\xff"), _kv("t.i8", 1, b"\xff"), _kv("t.u16", 2, struct.pack("<H", 65535)),
        _kv("t.i16", 3, struct.pack("<h", -2)), _kv("t.u32", 4, struct.pack("<I", 2**32 - 1)),
        _kv("t.i32", 5, struct.pack("<i", -3)), _kv("t.f32", 6, struct.pack("<f", 0.5)),
        _kv("t.bool", 7, b"\x01"), _kv("t.str", 8, _str("héllo")),
        _kv("t.u64", 10, struct.pack("<Q", 2**64 - 1)), _kv("t.i64", 11, struct.pack("<q", -(2**63))),
        _kv("t.f64", 12, struct.pack("<d", 1e-300)),
        _kv("t.scores", 9, _array(6, [struct.pack("<f", x) for x in (0.0, -1.5, 2.25)])),
        _kv("t.tokens", 9, _array(8, [_str("a"), _str(""), _str("<0x0A>")])),
        _kv("t.nested", 9, _array(9, [_array(5, [struct.pack("<i", 7)]), _array(5, [])])),
        _kv("t.flags", 9, _array(7, [b"\x00", b"\x01"])),
        _kv("t.empty", 9, _array(8, [])),
    ]
    infos = [_info("a.weight", [8, 3], type_id=0, offset=0), _info("b.weight", [64, 2], type_id=8, offset=128)]
    data = np.arange(24, dtype=np.float32).tobytes().ljust(128, b"\0") + bytes(range(136))  # 2 rows x 2 q8_0 blocks
    return kvs, infos, data


def _write(tmp_path, blob: bytes, name="model.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def test_built_file_reads_every_value_type(tmp_path):
    kvs, infos, data = _valid_parts()
    f = GGUFFile(_write(tmp_path, _gguf(kvs, infos, data, alignment=64)))
    m, kinds = f.metadata, f.metadata_types
    assert (m["t.u8"], m["t.i8"], m["t.u16"], m["t.i16"], m["t.u32"], m["t.i32"]) == (255, -1, 65535, -2, 2**32 - 1, -3)
    assert (m["t.u64"], m["t.i64"], m["t.f32"], m["t.f64"], m["t.bool"]) == (2**64 - 1, -(2**63), 0.5, 1e-300, True)
    assert m["t.str"] == "héllo" and m["t.tokens"] == ["a", "", "<0x0A>"] and m["t.empty"] == []
    assert m["t.scores"].dtype == np.float32 and m["t.scores"].tolist() == [0.0, -1.5, 2.25]
    assert m["t.flags"].dtype == np.bool_ and m["t.flags"].tolist() == [False, True]
    assert [a.tolist() for a in m["t.nested"]] == [[7], []] and kinds["t.nested"] == "array[array]"
    assert kinds["t.u64"] == "uint64" and kinds["t.tokens"] == "array[string]" and kinds["t.scores"] == "array[float32]"
    assert f.alignment == 64 and f.data_offset % 64 == 0 and f.architecture == "llama"
    a, b = f.tensors["a.weight"], f.tensors["b.weight"]
    assert a == ("a.weight", (3, 8), "f32", f.data_offset, 96)
    assert b == ("b.weight", (2, 64), "q8_0", f.data_offset + 128, 136)
    assert np.array_equal(np.asarray(f.tensor("a.weight")), np.arange(24, dtype=np.float32).reshape(3, 8))
    assert np.asarray(f.tensor("b.weight")).tobytes() == bytes(range(136))
    assert "q8_0" in f.summary() and "152 parameters" in f.summary()


def test_built_file_equals_gguf_reader(tmp_path):
    """The few-line writer above agrees with the oracle, so the defects below damage a real GGUF."""
    gguf = _oracle()
    kvs, infos, data = _valid_parts()
    path = _write(tmp_path, _gguf(kvs, infos, data, alignment=64))
    _assert_same_as_oracle(GGUFFile(path), gguf.GGUFReader(path))


def test_gguf_writer_file_equals_gguf_reader(tmp_path):
    """A file from llama.cpp's own writer, with quantized tensors of several block sizes."""
    gguf = _oracle()
    path = tmp_path / "written.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_bool("llama.flag", False)
    w.add_array("llama.ints", [1, 2, 3])
    w.add_token_list(["<s>", "</s>", "Ġthe"])
    w.add_token_scores([0.0, -1.0, -2.5])
    rng = np.random.default_rng(0)
    w.add_tensor("f32.weight", rng.standard_normal((5, 7), dtype=np.float32))
    w.add_tensor("f16.weight", rng.standard_normal((3, 4)).astype(np.float16))
    for qtype, blocks in [(gguf.GGMLQuantizationType.Q4_0, 2), (gguf.GGMLQuantizationType.Q4_K, 1),
                          (gguf.GGMLQuantizationType.Q6_K, 3)]:
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (2, blocks * type_size), dtype=np.uint8)
        w.add_tensor(f"{qtype.name.lower()}.weight", raw, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = GGUFFile(path)
    assert f.tensors["q4_k.weight"].shape == (2, 256) and f.tensors["q6_k.weight"].dtype == "q6_k"
    _assert_same_as_oracle(f, gguf.GGUFReader(path))


def test_version_2_reads_and_odd_values_are_kept(tmp_path):
    kvs = [_kv("bad.utf8", 8, _str(b"\xff\xfe")), _kv("toks", 9, _array(8, [_str("ok"), _str(b"\xe2\x82")]))]
    # Two tensors sharing bytes: allowed (only alignment and the file's end are checked).
    infos = [_info("x", [4]), _info("y", [2, 2])]
    f = GGUFFile(_write(tmp_path, _gguf(kvs, infos, bytes(16), version=2)))
    assert f.version == 2 and f.architecture is None and f.alignment == 32
    assert f.metadata["bad.utf8"] == b"\xff\xfe" and f.metadata["toks"] == ["ok", "\udce2\udc82"]
    assert f.metadata["toks"].raw(1) == b"\xe2\x82"  # bytes that are not UTF-8 come back surrogate-escaped
    assert f.tensor("x").data_ptr == f.tensor("y").data_ptr


def test_truncation_at_every_byte_raises_format_error(tmp_path):
    kvs, infos, data = _valid_parts()
    blob = _gguf(kvs, infos, data, alignment=64)
    for cut in range(len(blob)):  # header, padding and data: every prefix is a broken file
        path = _write(tmp_path, blob[:cut], f"cut{cut}.gguf")
        with pytest.raises(FormatError, match=r"\[offset \d+"):
            GGUFFile(path)
        path.unlink()


def test_random_damage_raises_only_format_error(tmp_path, rng):
    kvs, infos, data = _valid_parts()
    blob = _gguf(kvs, infos, data, alignment=64)
    header_end = len(blob) - len(data)
    for trial in range(400):
        damaged = bytearray(blob)
        for at in rng.integers(0, header_end, rng.integers(1, 4)):
            damaged[at] = rng.integers(0, 256)
        path = _write(tmp_path, bytes(damaged), f"damaged{trial}.gguf")
        try:
            GGUFFile(path)
        except FormatError:
            pass
        path.unlink()


def _one_tensor(dims=(8,), type_id=0, offset=0, nbytes=32, kvs=(), **kw):
    return _gguf(list(kvs), [_info("blk.0.w", list(dims), type_id, offset, kw.pop("n_dims", None))],
                 bytes(nbytes), **kw)


_DEFECTS = {
    "empty file": (b"", "magic"),
    "shorter than the fixed header": (b"GGUF\x03\x00\x00\x00\x00", "tensor count"),
    "wrong magic": (b"GGML" + bytes(28), "magic"),
    "version 1": (_gguf(version=1), "version"),
    "version 4": (_gguf(version=4), "version"),
    "big-endian": (_gguf(version=3 << 24), "big-endian"),
    "tensor count too large": (_gguf(n_tensors=2**40), "tensor count"),
    "tensor count 2**64-1": (_gguf(n_tensors=2**64 - 1), "tensor count"),
    "metadata count too large": (_gguf(n_kv=2**63), "metadata count"),
    "key length past the end": (_gguf([struct.pack("<Q", 2**62) + b"k" * 16]), "metadata key 0 ["),
    "key not UTF-8": (_gguf([_kv(b"k\xff", 4, bytes(4))]), "UTF-8"),
    "string value past the end": (_gguf([_kv("k", 8, struct.pack("<Q", 2**40) + b"abc")]), "metadata 'k'"),
    "array count x size past the end": (_gguf([_kv("k", 9, struct.pack("<IQ", 10, 2**61))]), "metadata 'k' array"),
    "string array count past the end": (_gguf([_kv("k", 9, struct.pack("<IQ", 8, 2**40))]), "metadata 'k' array"),
    "string in an array past the end": (_gguf([_kv("k", 9, struct.pack("<IQQ", 8, 1, 99) + b"x" * 8)]),
                                        "metadata 'k'[0]"),
    "nested array count past the end": (_gguf([_kv("k", 9, struct.pack("<IQ", 9, 2**50))]), "metadata 'k' array"),
    "arrays nested too deep": (_gguf([_kv("k", 9, struct.pack("<IQ", 9, 1) * 9 + struct.pack("<IQ", 4, 0))]),
                               "deeper"),
    "unknown value type": (_gguf([_kv("k", 13, bytes(8))]), "metadata 'k' value type"),
    "unknown array element type": (_gguf([_kv("k", 9, struct.pack("<IQ", 99, 0))]), "array element type"),
    "bool not 0 or 1": (_gguf([_kv("k", 7, b"\x02")]), "bool"),
    "bool array not 0 or 1": (_gguf([_kv("k", 9, _array(7, [b"\x01", b"\x05"]))]), "metadata 'k'[1]"),
    "duplicate key": (_gguf([_kv("k", 4, bytes(4)), _kv("k", 4, bytes(4))]), "metadata key 'k'"),
    "duplicate tensor name": (_gguf([], [_info("w", [8]), _info("w", [8], offset=32)], bytes(64)), "tensor 'w'"),
    "n_dims 0": (_one_tensor(dims=(8,), n_dims=0), "n_dims"),
    "n_dims 5": (_one_tensor(dims=(1, 1, 1, 1, 8), nbytes=32), "n_dims"),
    "zero dimension": (_one_tensor(dims=(8, 0)), "dims"),
    "negative-looking dimension": (_one_tensor(dims=(8, 2**64 - 1)), "dims"),
    "overflowing element count": (_one_tensor(dims=(2**32, 2**32)), "dims"),
    "unknown tensor type": (_one_tensor(type_id=16), "tensor 'blk.0.w' type"),
    "removed tensor type 4": (_one_tensor(type_id=4), "tensor 'blk.0.w' type"),
    "innermost dim not a block multiple": (_one_tensor(dims=(33,), type_id=8), "block size"),
    "alignment zero": (_one_tensor(kvs=[_kv("general.alignment", 4, struct.pack("<I", 0))]), "general.alignment"),
    "alignment not a power of two": (_one_tensor(kvs=[_kv("general.alignment", 4, struct.pack("<I", 48))]),
                                     "general.alignment"),
    "alignment not an integer": (_one_tensor(kvs=[_kv("general.alignment", 8, _str("32"))]), "general.alignment"),
    "offset not aligned": (_one_tensor(offset=4, nbytes=64), "tensor 'blk.0.w' offset"),
    "tensor data past the end": (_one_tensor(dims=(64, 64), nbytes=100), "tensor 'blk.0.w' data"),
    "tensor offset past the end": (_one_tensor(offset=2**63), "tensor 'blk.0.w' data"),
}


@pytest.mark.parametrize("defect", list(_DEFECTS))
def test_defect_raises_format_error_naming_the_field(tmp_path, defect):
    blob, field = _DEFECTS[defect]
    path = _write(tmp_path, blob)
    with pytest.raises(FormatError) as err:
        GGUFFile(path)
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert message.startswith(f"{path}: ") and field in message and "[offset " in message, message


def test_missing_file_is_os_error_not_format_error(tmp_path):
    with pytest.raises(OSError):
        GGUFFile(tmp_path / "absent.gguf")

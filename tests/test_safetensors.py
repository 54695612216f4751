"""lmblocks.io.safetensors against the safetensors library (the oracle), and damaged files."""

import json
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from lmblocks.io import FormatError, SafetensorsCheckpoint, SafetensorsFile


def arrays(rng):
    return {
        "model.embed_tokens.weight": rng.standard_normal((7, 5)).astype(np.float32),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((4, 5)).astype(np.float16),
        "model.layers.0.mlp.up_proj.bias": rng.standard_normal(3),
        "ids": rng.integers(-5, 5, (2, 3)).astype(np.int64),
        "mask": rng.integers(0, 2, 4).astype(np.uint8),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }


def test_file_matches_the_safetensors_library(tmp_path, rng):
    want = arrays(rng)
    path = tmp_path / "model.safetensors"
    save_file(want, str(path), metadata={"format": "pt"})
    f = SafetensorsFile(path)
    assert f.metadata == {"format": "pt"}
    with safe_open(str(path), framework="np") as oracle:
        assert set(oracle.keys()) == set(f.tensors)
        for name in oracle.keys():
            got = np.asarray(f.tensor(name))
            ref = oracle.get_tensor(name)
            assert got.dtype == ref.dtype and got.shape == ref.shape, name
            np.testing.assert_array_equal(got, ref)
    t = f.tensor("model.embed_tokens.weight")
    assert t.readonly and f.tensor("model.embed_tokens.weight").data_ptr == t.data_ptr  # views, not copies


def raw_file(path, header, data=b"", prefix=None):
    body = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes((prefix if prefix is not None else struct.pack("<Q", len(body))) + body + data)
    return path


def test_bf16_and_bool(tmp_path):
    x = np.array([1.5, -2.0, 3.25], ml_dtypes.bfloat16)
    path = raw_file(tmp_path / "b.safetensors", {"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]},
                                                 "b": {"dtype": "BOOL", "shape": [2], "data_offsets": [6, 8]}},
                    x.tobytes() + b"\x01\x00")
    f = SafetensorsFile(path)
    np.testing.assert_array_equal(np.asarray(f.tensor("x")), x)
    assert np.asarray(f.tensor("b")).tolist() == [1, 0]


def test_sharded_checkpoint_with_index(tmp_path, rng):
    want = arrays(rng)
    names = sorted(want)
    shards = {"model-00001-of-00002.safetensors": names[:3], "model-00002-of-00002.safetensors": names[3:]}
    for shard, keys in shards.items():
        save_file({k: want[k] for k in keys}, str(tmp_path / shard))
    index = {"metadata": {"total_size": 0}, "weight_map": {k: s for s, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    ck = SafetensorsCheckpoint(tmp_path)
    assert len(ck.files) == 2 and set(ck.tensors) == set(want)
    for k, v in want.items():
        np.testing.assert_array_equal(np.asarray(ck.tensor(k)), v)
    with pytest.raises(KeyError, match="no tensor named"):
        ck.tensor("nope")


def test_index_naming_a_missing_shard_or_tensor(tmp_path, rng):
    save_file({"a": np.zeros(2, np.float32)}, str(tmp_path / "s1.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s2.safetensors"}}))
    with pytest.raises(FormatError, match="s2.safetensors.*does not exist"):
        SafetensorsCheckpoint(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s1.safetensors",
                                                                                      "b": "s1.safetensors"}}))
    with pytest.raises(FormatError, match="no shard holds"):
        SafetensorsCheckpoint(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../s1.safetensors"}}))
    with pytest.raises(FormatError, match="not a file name"):
        SafetensorsCheckpoint(tmp_path)


F32_2 = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize("header,data,prefix,match", [
    (F32_2, b"\0" * 8, b"\xff" * 8, "header length"),                       # absurd header length
    (F32_2, b"\0" * 8, struct.pack("<Q", 10 ** 6), "header length"),        # longer than the file
    (b"{not json", b"", None, "malformed"),
    (b"[1, 2]", b"", None, "not an object"),
    (b'{"w": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, "w": {}}', b"", None, "twice"),
    ({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\0\0", None, "F8_E4M3"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "shape"),
    ({"w": {"dtype": "F32", "shape": [2, True], "data_offsets": [0, 8]}}, b"\0" * 8, None, "shape"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "span"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "outside the data"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, None, "outside the data"),
    ({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, "data_offsets"),
    ({"w": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 8]}}, b"\0" * 8, None, "span"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None, "overlap"),
    ({"__metadata__": {"k": 1}, **F32_2}, b"\0" * 8, None, "__metadata__"),
])
def test_damaged_files_raise_format_errors(tmp_path, header, data, prefix, match):
    path = raw_file(tmp_path / "bad.safetensors", header, data, prefix)
    with pytest.raises(FormatError, match=match) as e:
        SafetensorsFile(path)
    assert "bad.safetensors" in str(e.value)


def test_truncated_anywhere_raises(tmp_path, rng):
    path = tmp_path / "m.safetensors"
    save_file(arrays(rng), str(path))
    whole = path.read_bytes()
    for cut in range(0, len(whole) - 1, 7):
        (tmp_path / "cut.safetensors").write_bytes(whole[:cut])
        with pytest.raises(FormatError):
            SafetensorsFile(tmp_path / "cut.safetensors")


def test_doc_example():
    import doctest

    import lmblocks.io.safetensors as mod
    assert doctest.testmod(mod).failed == 0

"""Bad input to lb.load, the Model and the native blocks raises a clear Python exception naming the file
and the field (or the argument): never a crash, never an allocation sized by an unchecked header value.

Every corrupt file is made here, in tmp_path, from a real small model (stories260K) or a tiny random
Hugging Face model (tests/hf_models.py). Calls that could take the interpreter down, or allocate
without bound, run in a subprocess under an address-space limit.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import lmblocks as lb
from lmblocks._core import nn  # the native blocks, weights first
from lmblocks.io import FormatError


def load_isolated(p: Path) -> subprocess.CompletedProcess:
    """lb.load(p) in a 2 GiB subprocess; it must end with a FormatError (printed to stdout)."""
    r = run_isolated(f"""
        import lmblocks as lb
        from lmblocks.io import FormatError
        try:
            lb.load({str(p)!r}, verbose=False)
        except FormatError as e:
            print("FormatError", e)
    """, mem_gib=2.0)
    assert r.returncode == 0 and r.stdout.startswith("FormatError"), r.stdout + r.stderr[-2000:]
    return r


def run_isolated(code: str, *, mem_gib: float = 4.0, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with its address space limited to ``mem_gib``: a crash or a
    runaway allocation there fails the test instead of the test run."""
    limit = int(mem_gib * 2**30)
    pre = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    """)
    return subprocess.run([sys.executable, "-c", pre + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def load(path, **kw):
    return lb.load(path, verbose=False, **kw)


# ---- GGUF ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def stories_gguf(shared_data) -> bytes:
    return (shared_data / "stories260K.gguf").read_bytes()


def _key_value_at(data: bytes, key: str) -> int:
    """Byte offset of the value of metadata ``key`` (after its u64 length, the key and the u32 type)."""
    raw = key.encode()
    at = data.find(struct.pack("<Q", len(raw)) + raw)
    assert at > 0, key
    return at + 8 + len(raw) + 4


def _tensor_info_at(data: bytes, name: str) -> int:
    """Byte offset of the n_dims field of tensor ``name``'s info."""
    raw = name.encode()
    at = data.find(struct.pack("<Q", len(raw)) + raw)
    assert at > 0, name
    return at + 8 + len(raw)


def _tensor_type_at(data: bytes, name: str) -> int:
    p = _tensor_info_at(data, name)
    (n_dims,) = struct.unpack_from("<I", data, p)
    return p + 4 + 8 * n_dims


def _write(tmp_path: Path, data: bytes | bytearray, name: str = "bad.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return p


def _cut_points(data: bytes) -> dict[str, int]:
    first_info = _tensor_info_at(data, "token_embd.weight") - 8 - len("token_embd.weight")
    return {"in magic": 2, "in version": 6, "in tensor count": 12, "in metadata count": 20,
            "in first metadata key": 30, "in tokenizer tokens": 3000, "in metadata scores": first_info - 2000,
            "in tensor infos": first_info + 10}


@pytest.mark.parametrize("where", ["in magic", "in version", "in tensor count", "in metadata count",
                                   "in first metadata key", "in tokenizer tokens", "in metadata scores",
                                   "in tensor infos", "in first tensor data", "in last tensor data"])
def test_gguf_truncated(tmp_path, shared_data, stories_gguf, where):
    real = lb.io.GGUFFile(shared_data / "stories260K.gguf")
    cuts = _cut_points(stories_gguf)
    cuts["in first tensor data"] = real.data_offset + 1000
    cuts["in last tensor data"] = len(stories_gguf) - 1
    p = _write(tmp_path, stories_gguf[:cuts[where]])
    with pytest.raises(FormatError) as e:
        load(p)
    msg = str(e.value)
    assert str(p) in msg
    if where == "in magic":
        assert "magic" in msg  # too short to hold b"GGUF": told it is not a GGUF file
    else:
        assert "past the end of the file" in msg or "bytes left" in msg, msg
    if where.endswith("tensor data"):
        assert "tensor '" in msg  # names the tensor whose data is cut off


def test_gguf_empty_file(tmp_path):
    p = _write(tmp_path, b"")
    with pytest.raises(FormatError, match=str(p)):
        load(p)


def test_gguf_wrong_magic(tmp_path, stories_gguf):
    p = _write(tmp_path, b"GGUX" + stories_gguf[4:])
    with pytest.raises(FormatError) as e:
        load(p)
    assert str(p) in str(e.value) and "magic" in str(e.value) and "GGUX" in str(e.value)


def test_gguf_wrong_version(tmp_path, stories_gguf):
    data = bytearray(stories_gguf)
    struct.pack_into("<I", data, 4, 7)
    p = _write(tmp_path, data)
    with pytest.raises(FormatError, match=r"version \[offset 4\] is 7"):
        load(p)


def test_gguf_tensor_offset_past_end(tmp_path, stories_gguf):
    data = bytearray(stories_gguf)
    off_at = _tensor_type_at(stories_gguf, "output_norm.weight") + 4
    struct.pack_into("<Q", data, off_at, 2**40)  # aligned, far beyond the file
    p = _write(tmp_path, data)
    with pytest.raises(FormatError) as e:
        load(p)
    msg = str(e.value)
    assert str(p) in msg and "output_norm.weight" in msg and "past the end of the file" in msg


@pytest.mark.parametrize("field", ["tensor count", "metadata count", "tokens array count", "key length",
                                   "token string length"])
def test_gguf_absurd_count_fails_fast_without_allocating(tmp_path, stories_gguf, field):
    data = bytearray(stories_gguf)
    if field == "tensor count":
        struct.pack_into("<Q", data, 8, 2**60)
    elif field == "metadata count":
        struct.pack_into("<Q", data, 16, 2**60)
    elif field == "key length":
        struct.pack_into("<Q", data, 24, 2**60)
    else:
        at = _key_value_at(stories_gguf, "tokenizer.ggml.tokens")  # element type u32, count u64, strings
        if field == "tokens array count":
            struct.pack_into("<Q", data, at + 4, 2**60)
        else:
            struct.pack_into("<Q", data, at + 12, 2**60)  # the first token's length
    p = _write(tmp_path, data)
    code = f"""
        import time, lmblocks as lb
        from lmblocks.io import FormatError
        t = time.perf_counter()
        try:
            lb.load({str(p)!r}, verbose=False)
        except FormatError as e:
            print("FormatError", time.perf_counter() - t)
            print(e)
    """
    r = run_isolated(code, mem_gib=2.0)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines and lines[0].startswith("FormatError"), r.stdout + r.stderr[-2000:]
    assert float(lines[0].split()[1]) < 1.0
    msg = "\n".join(lines[1:])
    assert str(p) in msg and (str(2**60) in msg or "past the end" in msg), msg


def test_gguf_unknown_architecture(tmp_path, stories_gguf):
    data = bytearray(stories_gguf)
    at = _key_value_at(stories_gguf, "general.architecture")
    assert data[at + 8: at + 13] == b"llama"
    data[at + 8: at + 13] = b"foo42"
    p = _write(tmp_path, data)
    with pytest.raises(FormatError) as e:
        load(p)
    msg = str(e.value)
    assert str(p) in msg and "'foo42'" in msg and "general.architecture" in msg and "llama" in msg


def test_gguf_unknown_architecture_written_by_gguf_package(tmp_path):
    gguf = pytest.importorskip("gguf")
    p = tmp_path / "foo.gguf"
    w = gguf.GGUFWriter(str(p), "foo")
    w.add_uint32("foo.block_count", 1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(FormatError) as e:
        load(p)
    assert str(p) in str(e.value) and "'foo'" in str(e.value) and "supported" in str(e.value)


def test_gguf_missing_architecture_metadata(tmp_path, stories_gguf):
    data = bytearray(stories_gguf)
    raw = b"general.architecture"
    at = data.find(raw)
    data[at: at + len(raw)] = b"general.architectur_"
    p = _write(tmp_path, data)
    with pytest.raises(FormatError) as e:
        load(p)
    assert str(p) in str(e.value) and "general.architecture" in str(e.value)


@pytest.mark.parametrize("type_id", [99, 2**32 - 1])
def test_gguf_unsupported_tensor_type(tmp_path, stories_gguf, type_id):
    data = bytearray(stories_gguf)
    struct.pack_into("<I", data, _tensor_type_at(stories_gguf, "token_embd.weight"), type_id)
    p = _write(tmp_path, data)
    with pytest.raises(FormatError) as e:
        load(p)
    msg = str(e.value)
    assert str(p) in msg and "token_embd.weight" in msg and f"ggml type {type_id}" in msg


def test_gguf_tensor_dims_absurd(tmp_path, stories_gguf):
    data = bytearray(stories_gguf)
    at = _tensor_info_at(stories_gguf, "token_embd.weight")
    struct.pack_into("<QQ", data, at + 4, 2**40, 2**40)  # 2**80 elements
    p = _write(tmp_path, data)
    with pytest.raises(FormatError) as e:
        load(p)
    assert str(p) in str(e.value) and "token_embd.weight" in str(e.value)


@pytest.mark.parametrize("key, value, tensor", [
    ("llama.embedding_length", 32, "embed"),
    ("llama.feed_forward_length", 100, "gate"),
    ("llama.block_count", 6, "layers.5"),
])
def test_gguf_metadata_disagrees_with_tensor_shape(tmp_path, stories_gguf, key, value, tensor):
    data = bytearray(stories_gguf)
    struct.pack_into("<I", data, _key_value_at(stories_gguf, key), value)
    p = _write(tmp_path, data)
    with pytest.raises(FormatError) as e:
        load(p)
    msg = str(e.value)
    if key == "llama.embedding_length":  # caught by the metadata's own consistency: 32 / 8 heads < 8 rotary dims
        assert str(p) in msg and key in msg and "rope.dimension_count" in msg, msg
    else:
        assert str(p) in msg and "tensor '" in msg and tensor in msg, msg


def test_gguf_shape_mismatch_names_the_files_tensor(tmp_path, stories_gguf):
    data = bytearray(stories_gguf)
    struct.pack_into("<I", data, _key_value_at(stories_gguf, "llama.feed_forward_length"), 100)
    p = _write(tmp_path, data)
    with pytest.raises(FormatError, match=r"'blk\.0\.ffn_gate\.weight' \(read as 'model\.layers\.0\.mlp\.gate_proj"):
        load(p)


@pytest.mark.parametrize("key, value", [("llama.block_count", 0), ("llama.block_count", 2**31),
                                        ("llama.attention.head_count", 0)])
def test_gguf_metadata_absurd(tmp_path, stories_gguf, key, value):
    data = bytearray(stories_gguf)
    struct.pack_into("<I", data, _key_value_at(stories_gguf, key), value)
    p = _write(tmp_path, data)
    r = load_isolated(p)
    assert str(p) in r.stdout


# ---- Hugging Face folders ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def hf_llama_master(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import hf_models

    folder = tmp_path_factory.mktemp("hf") / "llama"
    hf_models.build("llama", folder)
    return folder


@pytest.fixture
def hf_llama(hf_llama_master, tmp_path) -> Path:
    folder = tmp_path / "llama"
    shutil.copytree(hf_llama_master, folder)
    return folder


def _edit_config(folder: Path, **changes) -> Path:
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(changes)
    cfg_path.write_text(json.dumps(cfg))
    return cfg_path


def test_hf_loads_unedited(hf_llama):
    m = load(hf_llama)
    assert m.logits([1, 2, 3]).shape == (3, 300)


def test_hf_hidden_size_changed(hf_llama):
    _edit_config(hf_llama, hidden_size=64)
    with pytest.raises(FormatError) as e:
        load(hf_llama)
    msg = str(e.value)
    assert str(hf_llama) in msg and "'model.embed_tokens.weight'" in msg and "(300, 48)" in msg and "(300, 64)" in msg


@pytest.mark.parametrize("field, value, tensor", [
    ("intermediate_size", 90, "model.layers.0.mlp.gate_proj.weight"),
    ("vocab_size", 301, "model.embed_tokens.weight"),
    ("num_hidden_layers", 3, "model.layers.2.input_layernorm.weight"),
    ("num_attention_heads", 8, "model.layers.0.self_attn.q_proj.weight"),
])
def test_hf_config_disagrees_with_tensors(hf_llama, field, value, tensor):
    _edit_config(hf_llama, **{field: value})
    with pytest.raises(FormatError) as e:
        load(hf_llama)
    assert str(hf_llama) in str(e.value) and f"'{tensor}'" in str(e.value)


def test_hf_missing_tensor(hf_llama):
    from safetensors.numpy import load_file, save_file

    st = hf_llama / "model.safetensors"
    tensors = load_file(str(st))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(st), metadata={"format": "pt"})
    with pytest.raises(FormatError) as e:
        load(hf_llama)
    assert str(hf_llama) in str(e.value) and "'model.layers.1.mlp.up_proj.weight' is missing" in str(e.value)


def test_hf_truncated_safetensors(hf_llama):
    st = hf_llama / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError) as e:
        load(hf_llama)
    assert "model.safetensors" in str(e.value)


def test_hf_unknown_model_type(hf_llama):
    cfg = _edit_config(hf_llama, model_type="foo")
    with pytest.raises(FormatError) as e:
        load(hf_llama)
    msg = str(e.value)
    assert str(cfg) in msg and "'foo'" in msg and "supported" in msg
    for known in ("llama", "mistral", "qwen2", "phi3", "gemma3_text"):
        assert known in msg


@pytest.mark.parametrize("value", [2**40, -1, 0, "2", True, 2.0, None])
def test_hf_num_hidden_layers_absurd(hf_llama, value):
    _edit_config(hf_llama, num_hidden_layers=value)
    with pytest.raises(FormatError) as e:
        load(hf_llama)
    assert str(hf_llama) in str(e.value) and "'num_hidden_layers'" in str(e.value)


@pytest.mark.parametrize("field", ["hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"])
@pytest.mark.parametrize("value", [2**40, -3, "48"])
def test_hf_size_fields_absurd(hf_llama, field, value):
    _edit_config(hf_llama, **{field: value})
    with pytest.raises(FormatError) as e:
        load(hf_llama)
    assert f"'{field}'" in str(e.value) and str(hf_llama) in str(e.value)


def test_hf_kv_heads_not_a_divisor(hf_llama):
    _edit_config(hf_llama, num_key_value_heads=4)
    with pytest.raises(FormatError) as e:
        load(hf_llama)
    assert "num_key_value_heads 4" in str(e.value) and str(hf_llama) in str(e.value)


def test_hf_rms_norm_eps_not_a_number(hf_llama):
    _edit_config(hf_llama, rms_norm_eps="x")
    with pytest.raises(FormatError, match="rms_norm_eps"):
        load(hf_llama)


def test_hf_rope_type_unsupported(hf_llama):
    _edit_config(hf_llama, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4})
    with pytest.raises(FormatError) as e:
        load(hf_llama)
    assert "'yarn'" in str(e.value) and str(hf_llama) in str(e.value)


# How the library SHOULD answer config fields it does not validate yet: FormatError naming the field.
@pytest.mark.parametrize("field, value, observed", [
    ("num_key_value_heads", 0, "ZeroDivisionError 'integer modulo by zero' (models/base.py ModelArgs.validate)"),
    ("num_key_value_heads", "2", "TypeError unsupported operand for % (models/base.py ModelArgs.validate)"),
    ("num_key_value_heads", -1, "FormatError about k_proj's shape (16, 48) vs (-8, 48), not the field"),
    ("head_dim", 0, "FormatError about q_proj's shape vs (0, 48), not the field"),
    ("head_dim", "8", "FormatError: 'the config implies ('888888', 48)' (a str multiplied)"),
    ("head_dim", 2**62, "FormatError about q_proj's shape, not the field"),
    ("max_position_embeddings", -5, "ValueError 'n_ctx must be a positive integer, got None' (model.py load)"),
    ("max_position_embeddings", "abc", "ValueError from int(): invalid literal (model.py load)"),
    ("hidden_act", "relu", "native ValueError 'MLP: activation ...' without the file or the field"),
    ("partial_rotary_factor", 3.0, "native ValueError 'rope: rotary_dim 24 with head_dim 8' without file/field"),
    ("rope_parameters", {"rope_type": "default", "rope_theta": "abc"},
     "ValueError 'could not convert string to float' (models/base.py rope_kwargs)"),
    ("rope_scaling", [1, 2], "TypeError from dict() (models/base.py rope_parameters)"),
    ("model_type", ["llama"], "TypeError unhashable type: 'list' (model.py _from_hf)"),
    ("eos_token_id", {"a": 1}, "TypeError unhashable type: 'dict' (model.py _from_hf eos loop)"),
])
def test_hf_config_field_unvalidated(hf_llama, field, value, observed, request):
    changes = {field: value}
    if field == "rope_scaling":
        changes["rope_parameters"] = None
    _edit_config(hf_llama, **changes)
    with pytest.raises(FormatError) as e:
        load(hf_llama)
    assert str(hf_llama) in str(e.value) and field in str(e.value)


def test_hf_text_config_not_an_object(hf_llama):
    _edit_config(hf_llama, model_type="foo", text_config="x")
    with pytest.raises(FormatError, match="text_config"):
        load(hf_llama)


def test_hf_config_not_json(hf_llama):
    cfg = hf_llama / "config.json"
    cfg.write_text("{not json")
    with pytest.raises(FormatError) as e:
        load(hf_llama)
    assert str(cfg) in str(e.value) and "JSON" in str(e.value)


def test_hf_config_not_an_object(hf_llama):
    cfg = hf_llama / "config.json"
    cfg.write_text("[1, 2]")
    with pytest.raises(FormatError, match="JSON object"):
        load(hf_llama)


def test_hf_no_config(hf_llama):
    (hf_llama / "config.json").unlink()
    with pytest.raises(FormatError) as e:
        load(hf_llama)
    assert str(hf_llama) in str(e.value) and "config.json" in str(e.value)


@pytest.mark.parametrize("text, observed", [
    ("{not json", "json.JSONDecodeError without the file name (model.py _from_hf eos loop)"),
    ("[1, 2]", "AttributeError 'list' object has no attribute 'get' (model.py _from_hf eos loop)"),
])
def test_hf_generation_config_malformed(hf_llama, text, observed, request):
    gen = hf_llama / "generation_config.json"
    gen.write_text(text)
    with pytest.raises(FormatError) as e:
        load(hf_llama)
    assert str(gen) in str(e.value)


def test_hf_no_weights(hf_llama):
    (hf_llama / "model.safetensors").unlink()
    with pytest.raises(FormatError, match="safetensors"):
        load(hf_llama)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load(tmp_path / "nope.gguf")


# ---- llama2.c ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [("n_layers", 50), ("dim", 2**31 - 1), ("hidden_dim", 2**31 - 1),
                                          ("vocab_size", -(2**31 - 1)), ("seq_len", 2**31 - 1)])
def test_llama2c_header_claims_more_weights_than_the_file(tmp_path, shared_data, field, value):
    from lmblocks.io.llama2c import FIELDS

    data = bytearray((shared_data / "stories260K.bin").read_bytes())
    struct.pack_into("<i", data, 4 * FIELDS.index(field), value)
    if field == "dim":
        struct.pack_into("<ii", data, 12, 1, 1)  # n_heads = n_kv_heads = 1, so dim alone is absurd
    p = _write(tmp_path, data, "model.bin")
    r = load_isolated(p)
    assert str(p) in r.stdout and "header" in r.stdout


@pytest.mark.parametrize("field", ["n_heads", "n_kv_heads", "n_layers"])
def test_llama2c_header_field_not_positive(tmp_path, shared_data, field):
    from lmblocks.io.llama2c import FIELDS

    data = bytearray((shared_data / "stories260K.bin").read_bytes())
    struct.pack_into("<i", data, 4 * FIELDS.index(field), 0)
    p = _write(tmp_path, data, "model.bin")
    with pytest.raises(FormatError) as e:
        load(p)
    assert str(p) in str(e.value) and field in str(e.value)


def test_llama2c_too_short(tmp_path):
    p = _write(tmp_path, b"\x01\x00\x00\x00" * 3, "model.bin")
    with pytest.raises(FormatError, match="too short"):
        load(p)


# ---- tokenizer / embedding mismatch --------------------------------------------------------------------


def test_tokenizer_larger_than_embedding_llama2c(shared_data):
    with pytest.raises(FormatError) as e:
        load(shared_data / "stories260K.bin", tokenizer=shared_data / "llama2c-tokenizer.bin")
    assert "32000" in str(e.value) and "512" in str(e.value)


def test_tokenizer_larger_than_embedding_gguf(shared_data):
    with pytest.raises(FormatError) as e:
        load(shared_data / "stories260K.gguf", tokenizer=shared_data / "llama2c-tokenizer.bin")
    assert "32000" in str(e.value) and "512" in str(e.value)


def test_tokenizer_smaller_than_model(tmp_path, shared_data):
    data = (shared_data / "tok512.bin").read_bytes()
    p = _write(tmp_path, data[: len(data) // 2], "tok.bin")
    with pytest.raises(FormatError) as e:
        load(shared_data / "stories260K.bin", tokenizer=p)
    assert str(p) in str(e.value) and "cut off" in str(e.value)


# ---- runtime -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stories(shared_data):
    return load(shared_data / "stories260K.gguf")


def test_prompt_longer_than_context(shared_data):
    m = load(shared_data / "stories260K.gguf", n_ctx=8)
    with pytest.raises(ValueError, match="n_ctx"):
        m.generate("Once upon a time there was a little girl who loved to play outside", max_tokens=4)
    with pytest.raises(ValueError, match="n_ctx"):
        m.logits(list(range(1, 20)))


@pytest.mark.parametrize("n_ctx", [0, -1, "8", 2.5])
def test_load_bad_n_ctx(shared_data, n_ctx):
    with pytest.raises(ValueError, match="n_ctx"):
        load(shared_data / "stories260K.gguf", n_ctx=n_ctx)


@pytest.mark.parametrize("kv_dtype", ["bf16", "q8_0", ""])
def test_load_bad_kv_dtype(shared_data, kv_dtype):
    with pytest.raises(ValueError, match="kv_dtype"):
        load(shared_data / "stories260K.gguf", kv_dtype=kv_dtype)


@pytest.mark.parametrize("ids, index", [([1, 512], "512"), ([1, 2, 10**6], "1000000"), ([1, -1], "-1"),
                                        ([-(2**31)], str(-(2**31)))])
def test_logits_token_outside_vocab(stories, ids, index):
    with pytest.raises(IndexError) as e:
        stories.logits(ids)
    assert f"token {index}" in str(e.value) and "512" in str(e.value)


def test_forward_token_id_beyond_int32(stories):
    cache = stories.lm.make_cache(1, 8)
    with pytest.raises(IndexError, match=str(2**40)):
        stories.lm.forward(cache, np.array([2**40], np.int64))


@pytest.mark.parametrize("ids", [[1.0, 2.0], np.array([1, 2], np.float32), [], [[1, 2]], ["a"]])
def test_logits_bad_ids(stories, ids):
    with pytest.raises(ValueError, match="token ids"):
        stories.logits(ids)


@pytest.mark.parametrize("tokens, exc, match", [
    (np.array([1.0, 2.0], np.float32), TypeError, "tokens has dtype f32"),
    (np.array([1, 2], np.uint8), TypeError, "tokens has dtype u8"),
    (np.array([[1, 2]], np.int32), ValueError, r"tokens has shape \(1, 2\)"),
    (np.array([], np.int32), ValueError, "no tokens"),
])
def test_forward_bad_tokens(stories, tokens, exc, match):
    with pytest.raises(exc, match=match):
        stories.lm.forward(stories.lm.make_cache(1, 8), tokens)


def test_forward_sequence_id_outside_cache(stories):
    cache = stories.lm.make_cache(2, 8)
    for s in (2, -1):
        with pytest.raises(IndexError, match=f"sequence id {s} at index 1"):
            stories.lm.forward(cache, np.array([1, 2], np.int32), seq=np.array([0, s], np.int32))
    with pytest.raises(ValueError, match="seq has 1 entries for 2 tokens"):
        stories.lm.forward(cache, np.array([1, 2], np.int32), seq=np.array([0], np.int32))
    assert cache.length(0) == cache.length(1) == 0  # nothing was written by the failed calls


def test_forward_sequence_not_consecutive(stories):
    cache = stories.lm.make_cache(2, 8)
    with pytest.raises(ValueError, match="sequence 0 are not consecutive"):
        stories.lm.forward(cache, np.array([1, 2, 3], np.int32), seq=np.array([0, 1, 0], np.int32))


def test_forward_past_cache_context(stories):
    cache = stories.lm.make_cache(1, 4)
    stories.lm.forward(cache, np.array([1, 2, 3], np.int32))
    with pytest.raises(ValueError, match="more than the context of 4"):
        stories.lm.forward(cache, np.array([4, 5], np.int32))
    assert cache.length(0) == 3
    stories.lm.forward(cache, np.array([4], np.int32))  # the cache is still usable
    assert cache.length(0) == 4


def test_forward_cache_of_another_model(stories, shared_data):
    other = load(shared_data / "stories260K.gguf")
    cache = other.lm.make_cache(1, 8)
    with pytest.raises(ValueError, match="not made for this model"):
        stories.lm.forward(cache, np.array([1], np.int32))


def test_forward_bad_logits_mode(stories):
    with pytest.raises(ValueError, match="logits must be"):
        stories.lm.forward(stories.lm.make_cache(1, 8), np.array([1], np.int32), logits="first")


def test_cache_index_errors(stories):
    cache = stories.lm.make_cache(2, 8)
    with pytest.raises(IndexError, match="sequence 5"):
        cache.length(5)
    with pytest.raises(IndexError):
        cache.clear(2)
    with pytest.raises(IndexError):
        cache.layer(len(cache))


@pytest.mark.parametrize("n_seq, n_ctx, n_batch", [(1, 2**40, 512), (2**20, 2**20, 512), (1, 0, 512), (0, 8, 512),
                                                   (1, 8, 0), (1, -5, 512)])
def test_make_cache_absurd_sizes(stories, n_seq, n_ctx, n_batch):
    t = time.perf_counter()
    with pytest.raises(ValueError) as e:
        stories.lm.make_cache(n_seq, n_ctx, n_batch, "f32")
    assert time.perf_counter() - t < 1.0
    assert "KVCache" in str(e.value) and f"n_ctx {n_ctx}" in str(e.value)


@pytest.mark.parametrize("n_seq, n_ctx, observed", [
    (1, 2**60, "ValueError 'shape (1, 4, 1152921504606846976, 8) is too large': the byte total overflows "
               "int64 before the 1 TiB check (causal_lm.cpp KVCache::KVCache, `total +=`)"),
    (2**62, 8, "ValueError 'cannot create std::vector larger than max_size()': len_(n_seq) is built in the "
               "initializer list before n_seq is checked (causal_lm.cpp KVCache::KVCache)"),
])
def test_make_cache_overflowing_sizes(stories, n_seq, n_ctx, observed, request):
    with pytest.raises(ValueError) as e:
        stories.lm.make_cache(n_seq, n_ctx, 512, "f32")
    assert "KVCache" in str(e.value) and f"n_seq {n_seq}" in str(e.value)


def test_make_cache_bad_dtype(stories):
    with pytest.raises(ValueError, match="'bf16'"):
        stories.lm.make_cache(1, 8, 512, "bf16")


def test_new_cache_beyond_model_context(stories):
    with pytest.raises(ValueError, match="n_ctx"):
        stories.new_cache(1, 2**40)


# ---- native blocks built by hand -------------------------------------------------------------------------


def _w(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


def test_attention_heads_not_divisible():
    with pytest.raises(ValueError, match="n_heads 8, n_kv_heads 3"):
        nn.Attention(8, 3, 8, _w(64, 64), _w(24, 64), _w(24, 64), _w(64, 64))


@pytest.mark.parametrize("H, Hkv, hd", [(0, 0, 8), (8, 4, 0), (-8, -4, 8)])
def test_attention_sizes_not_positive(H, Hkv, hd):
    with pytest.raises(ValueError, match="need positive sizes"):
        nn.Attention(H, Hkv, hd, _w(64, 64), _w(32, 64), _w(32, 64), _w(64, 64))


@pytest.mark.parametrize("q, k, v, o, name", [
    (_w(64, 64), _w(64, 64), _w(32, 64), _w(64, 64), "k_proj"),
    (_w(64, 64), _w(32, 64), _w(32, 48), _w(64, 64), "v_proj"),
    (_w(64, 64), _w(32, 64), _w(32, 64), _w(64, 32), "o_proj"),
    (_w(64), _w(32, 64), _w(32, 64), _w(64, 64), "q_proj"),
    (_w(48, 64), _w(32, 64), _w(32, 64), _w(64, 64), "q_proj"),
])
def test_attention_projection_shapes(q, k, v, o, name):
    with pytest.raises(ValueError, match=f"Attention: {name} has shape"):
        nn.Attention(8, 4, 8, q, k, v, o)


@pytest.mark.parametrize("kw, match", [
    (dict(q_bias=_w(5)), "q_bias"), (dict(k_norm=_w(9)), "k_norm"), (dict(window=-1), "window"),
    (dict(rotary_dim=3), "rotary_dim"), (dict(rope_scaling=("yarn", 1.0, 1.0, 4.0, 8192.0)), "yarn"),
])
def test_attention_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        nn.Attention(8, 4, 8, _w(64, 64), _w(32, 64), _w(32, 64), _w(64, 64), **kw)


def test_attention_rotary_dim_larger_than_head_dim():
    with pytest.raises(ValueError, match="rotary_dim"):
        nn.Attention(8, 4, 8, _w(64, 64), _w(32, 64), _w(32, 64), _w(64, 64), rotary_dim=16)


@pytest.mark.parametrize("dtype", [np.float64, np.int32])
def test_attention_weight_dtype_unsupported(dtype):
    with pytest.raises(TypeError, match="Attention: q_proj has dtype"):
        nn.Attention(8, 4, 8, _w(64, 64, dtype=dtype), _w(32, 64), _w(32, 64), _w(64, 64))


def test_mlp_weight_dtype_unsupported():
    with pytest.raises(TypeError, match="MLP: up_proj has dtype f64"):
        nn.MLP(_w(96, 64), _w(96, 64, dtype=np.float64), _w(64, 96))


def test_norm_width_differs_from_the_stream(stories):
    """A norm of the wrong width is caught at the first forward, naming both widths."""
    norm = nn.RMSNorm(np.ones(32, np.float32))
    lm = nn.CausalLM(stories.lm.embed_tokens, 1.0, nn.Sequential([nn.Residual(norm, norm)]), stories.lm.norm)
    with pytest.raises(ValueError, match="RMSNorm: input has 64 features, weight has 32"):
        lm.forward(lm.make_cache(1, 8), np.array([1], np.int32))


def test_make_cache_huge_n_batch_with_window(stories):
    """n_batch beyond n_ctx is clamped to n_ctx (a chunk never exceeds the context): no overflow in the
    ring size window + n_batch - 1."""
    q, k = _w(64, 64), _w(32, 64)
    lm = nn.CausalLM(stories.lm.embed_tokens, 1.0, nn.Sequential([nn.Attention(8, 4, 8, q, k, k, q, window=4)]),
                     stories.lm.norm)
    cache = lm.make_cache(1, 16, 2**63 - 1)
    assert cache.n_batch == 16 and cache.layer(0)[0].shape == (1, 4, 16, 8)



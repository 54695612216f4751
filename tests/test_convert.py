"""lb.quantize_model and Model.save on real GGUF files (SmolLM2-135M Q4_1, Gemma 3 270M Q4_K_M,
stories260K f32), checked against independent readers and llama.cpp:

- the saved file read with gguf-py's GGUFReader (not lmblocks' reader): tensors equal
  lb.quantize(lb.dequantize(source), type) byte for byte, metadata equals the source's key for key;
- llama.cpp's own quantizer (llama_model_quantize, pure, round-to-nearest) on the same source gives the
  same tensors byte for byte, fallbacks for rows that are not a multiple of 256 included;
- lb.load of the saved file gives the in-memory quantized model's logits exactly;
- llama.cpp (llama-cpp-python) runs the saved file and its greedy tokens equal ours (see NEAR_TIE).
Our side runs the float reference path (activation quantization off), as in test_real_models.py.
"""

import ctypes
import os
import re
import shutil
from collections import Counter

import gguf
import llama_cpp  # installed by `make test` (bench/install_llamacpp.sh); not optional here
import numpy as np
import pytest

import lmblocks as lb

_NO_LOG = llama_cpp.llama_log_callback(lambda level, text, user_data: None)  # kept alive: llama.cpp calls it
llama_cpp.llama_log_set(_NO_LOG, ctypes.c_void_p(0))

PROMPTS = ["The capital of France is", "Once upon a time, there was a little", "def fibonacci(n):"]
N_GREEDY = 16

# llama.cpp rounds activations to 8 bits (q8_0 / q8_K blocks) before every product with these weight
# types; lmblocks' reference path keeps them float32. On these files that moves the logits of the
# top-5 tokens by up to ~1.1 and the gap between the two best by up to ~0.75 (measured over 4 prompts
# x 16 steps). Two tokens whose logits lie within NEAR_TIE of each other (on both sides) are a near
# tie either implementation may break; any larger lead must be followed. Measured on SmolLM2 q4_k: 3 of
# 48 teacher-forced steps were near ties, with gaps 0.075, 0.141 and 0.009; Gemma 3 q4_k: none.
NEAR_TIE = 0.5

FILE_TYPES = {  # gguf-py's names for llama.cpp's file types: the oracle for general.file_type
    "F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0, "Q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "Q4_K": gguf.LlamaFileType.MOSTLY_Q4_K_S,
    "Q6_K": gguf.LlamaFileType.MOSTLY_Q6_K,
}


@pytest.fixture(autouse=True)
def reference_path():
    lb.set_activation_quantization(False)
    yield
    lb.set_activation_quantization(True)


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return lb.load(smollm2_path, verbose=False)


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def q4k(request, tmp_path_factory):
    """(source path, source model, its q4_k quantization, the saved file) for each real model."""
    src = request.getfixturevalue(f"{request.param}_path")
    model = lb.load(src, verbose=False)
    q = lb.quantize_model(model, "q4_k", verbose=False)
    out = tmp_path_factory.mktemp("q4k") / f"{request.param}-q4_k.gguf"
    q.save(out)
    return src, model, q, out


# SmolLM2 (D=576, FF=1536, tied embeddings) with per-tensor types: q4_0 by default, ffn_down q6_k
# (rows of 1536 = 6 x 256), layers 10-19's attention q8_0, layers 20-29's ffn_up q5_k (rows of 576:
# falls back to q5_1), and the output matrix (the tied token_embd, q8_0 in the source) kept.
MIXED = dict(overrides={"blk.*.ffn_down.weight": "q6_k", "blk.1?.attn_*": "q8_0", "blk.2?.ffn_up.weight": "q5_k"},
             keep=("output.weight",))


def mixed_type(name: str) -> str | None:
    """The type MIXED asks for, by its rules (None: kept as in the source)."""
    layer = int(name.split(".")[1]) if name.startswith("blk.") else None
    if name == "token_embd.weight":
        return None
    if name.endswith("ffn_down.weight"):
        return "q6_k"
    if layer is not None and 10 <= layer <= 19 and ".attn_" in name:
        return "q8_0"
    if layer is not None and layer >= 20 and name.endswith("ffn_up.weight"):
        return "q5_1"
    return "q4_0"


@pytest.fixture(scope="module")
def mixed(smollm2, tmp_path_factory):
    """The MIXED quantization, and the saved file as gguf-py reads it."""
    q = lb.quantize_model(smollm2, "q4_0", verbose=False, **MIXED)
    out = tmp_path_factory.mktemp("mixed") / "smollm2-mixed.gguf"
    q.save(out)
    return q, gguf.GGUFReader(out)


def field_bytes(field) -> bytes:
    """A metadata record as stored (key, type, value), from gguf-py's parts."""
    return b"".join(p.tobytes() for p in field.parts)


def test_saved_tensors_equal_our_quantizers(smollm2_path, mixed):
    q, saved = mixed
    src = lb.io.GGUFFile(smollm2_path)
    assert [t.name for t in saved.tensors] == list(src.tensors)
    for t in saved.tensors:
        s = src.tensor(t.name)
        assert tuple(int(d) for d in reversed(t.shape)) == s.shape, t.name
        want = None if s.ndim == 1 else mixed_type(t.name)
        got = bytes(t.data)
        if want is None or want == s.dtype:
            assert t.tensor_type.name.lower() == s.dtype and got == np.asarray(s).tobytes(), t.name
        else:
            assert t.tensor_type.name.lower() == want, t.name
            assert got == np.asarray(lb.quantize(lb.dequantize(s), want)).tobytes(), t.name
    assert q.quantization["fallbacks"] == {f"blk.{i}.ffn_up.weight": ("q5_k", "q5_1") for i in range(20, 30)}


def test_metadata_round_trips(smollm2_path, mixed, tmp_path):
    q, saved = mixed
    src = gguf.GGUFReader(smollm2_path)
    assert list(saved.fields) == list(src.fields)
    for key, field in src.fields.items():
        if key != "general.file_type":
            assert field_bytes(saved.fields[key]) == field_bytes(field), key
    # general.file_type names the most common type of the weight matrices
    common = Counter(t.tensor_type.name for t in saved.tensors if len(t.shape) == 2).most_common(1)[0][0]
    assert int(saved.fields["general.file_type"].parts[-1][0]) == FILE_TYPES[common] == gguf.LlamaFileType.MOSTLY_Q4_0
    # a model saved unchanged is the source file, byte for byte
    lb.load(smollm2_path, verbose=False).save(tmp_path / "copy.gguf")
    with open(smollm2_path, "rb") as a, open(tmp_path / "copy.gguf", "rb") as b:
        assert a.read() == b.read()


def same_value(a, b) -> bool:
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return type(a) is type(b) and a == b


def test_saved_tensors_equal_llama_cpp_quantizer(q4k, tmp_path):
    """llama.cpp's quantizer on the same source (Q4_K_S, pure: every matrix q4_k, no importance matrix)
    writes the same tensors: re-quantized q4_1/q5_0/q6_k/q8_0 sources, fallbacks to q5_0 for rows of 576
    and 640, and q4_k tensors of Gemma's source copied as they are. llama.cpp orders tensors (and moves
    general.file_type) its own way, so both are compared by name. Both files are read with lmblocks'
    reader (gguf-py takes ~10 s over Gemma's 262k-token vocabulary; it checks the SmolLM2 files above)."""
    src, _, q, out = q4k
    theirs = tmp_path / "llama-cpp-q4_k_s.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread, params.ftype = lb.get_num_threads(), llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_S
    params.allow_requantize, params.pure = True, True
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
    a, b = lb.io.GGUFFile(theirs), lb.io.GGUFFile(out)
    assert sorted(a.tensors) == sorted(b.tensors)
    for name, t in a.tensors.items():
        assert (t.dtype, t.shape) == (b.tensors[name].dtype, b.tensors[name].shape), name
        assert np.array_equal(np.asarray(a.tensor(name)), np.asarray(b.tensor(name))), name
    assert sorted(a.metadata) == sorted(b.metadata)
    for key, value in a.metadata.items():
        if key != "general.file_type":
            assert a.metadata_types[key] == b.metadata_types[key] and same_value(value, b.metadata[key]), key
    assert any(f == ("q4_k", "q5_0") for f in q.quantization["fallbacks"].values())


def test_saved_file_loads_with_the_same_logits(q4k):
    _, _, q, out = q4k
    ids = q.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 3)
    assert np.array_equal(lb.load(out, verbose=False).logits(ids), q.logits(ids))


def llama_cpp_greedy(path, prompts, n):
    """llama.cpp's greedy tokens and the logits it chose them from, per prompt (token ids)."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_batch=128, n_threads=lb.get_num_threads(), verbose=False)
    out = []
    try:
        for ids in prompts:
            llm.reset()
            llm.eval(ids)
            toks, logits = [], []
            for _ in range(n):
                lg = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
                toks.append(int(lg.argmax()))
                logits.append(lg)
                llm.eval([toks[-1]])
            out.append((toks, np.array(logits)))
    finally:
        llm.close()
    return out


def assert_llama_cpp_agrees(model, path, prompts, n, tol=1e-3, what=""):
    """llama.cpp runs `path`: for each prompt its n greedy tokens are ours, and its logits along the way are
    ours (teacher-forced on its tokens) within `tol` of their range. For exact-arithmetic files (f32 weights,
    tiny random models): no near ties to excuse, unlike the quantized real models below."""
    for ids, (toks, theirs) in zip(prompts, llama_cpp_greedy(path, prompts, n)):
        ours = model.logits(list(ids) + toks)[len(ids) - 1:-1]
        err = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
        assert err <= tol, f"{what}: logits differ from llama.cpp's by {err:.2g} of their range"
        assert model.generate_ids(list(ids), n, stop_at_eos=False) == toks, what


def test_llama_cpp_greedy_equals_ours(q4k):
    """llama.cpp runs the saved file; for each prompt, 16 greedy tokens.

    Rule: our free-running greedy tokens equal llama.cpp's up to the first step where they differ, and
    there both sides see a near tie (each one's logit for the other's token within NEAR_TIE of its
    own pick). Then, teacher-forced on llama.cpp's whole continuation, our argmax is llama.cpp's token
    at every step, or llama.cpp's token is within NEAR_TIE of our best logit. (Where our argmax on
    llama.cpp's continuation is its token at every step, our greedy continuation is that continuation,
    so it is generated separately only when some step differs: Gemma's 262k-row output matrix makes
    each of our reference-path decode steps slow.)"""
    _, _, _, out = q4k
    ours = lb.load(out, verbose=False)
    prompts = [ours.tokenizer.encode(p, add_special=True) for p in PROMPTS]
    report = []
    for ids, (toks, theirs) in zip(prompts, llama_cpp_greedy(out, prompts, N_GREEDY)):
        forced = ours.logits(ids + toks)[len(ids) - 1:-1]  # (16, V): our logits on llama.cpp's tokens
        gaps = forced.max(axis=1) - forced[np.arange(N_GREEDY), toks]
        free = toks if (gaps == 0).all() else ours.generate_ids(ids, N_GREEDY, stop_at_eos=False)
        k = next((i for i in range(N_GREEDY) if free[i] != toks[i]), N_GREEDY)
        line = f"{PROMPTS[len(report)]!r}: {k}/{N_GREEDY} tokens equal"
        if k < N_GREEDY:  # the prefixes are equal up to k, so forced[k] are our free-running logits there
            their_gap = theirs[k, toks[k]] - theirs[k, free[k]]
            line += f" (then a near tie: ours leads by {gaps[k]:.3f}, llama.cpp by {their_gap:.3f})"
            assert gaps[k] <= NEAR_TIE and their_gap <= NEAR_TIE, f"greedy differs without a near tie: {line}"
        report.append(line + f"; teacher-forced gaps {', '.join(f'{g:.3f}' for g in gaps[gaps > 0]) or 'none'}")
        assert (gaps <= NEAR_TIE).all(), f"llama.cpp's tokens are not ours where the lead is clear: {report[-1]}"
    print("\n".join(report))


def test_fallbacks_and_f16(shared_data, tmp_path):
    """stories260K (f32, D=64, FF=172): k-quants fall back as llama-quantize does; rows of 172 fit no
    block, so they fall back to f16. The saved file runs the same as the model in memory."""
    model = lb.load(shared_data / "stories260K.gguf", verbose=False)
    with pytest.warns(UserWarning, match=r"fell back as llama-quantize does: .*q4_k -> q5_0.*q4_k -> f16"):
        q = lb.quantize_model(model, "q4_k")
    types = q.quantization["types"]
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == "q5_0"
    assert types["blk.0.ffn_down.weight"] == "f16" and types["blk.0.ffn_up.weight"] == "q5_0"
    assert types["blk.0.attn_norm.weight"] == "f32"
    assert q.quantization["fallbacks"]["blk.0.ffn_down.weight"] == ("q4_k", "f16")
    expected = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}
    for asked, used in expected.items():
        t = lb.quantize_model(model, asked, verbose=False).quantization["types"]
        assert (t["blk.0.attn_q.weight"], t["blk.0.ffn_down.weight"]) == (used, "f16"), asked
    q.save(tmp_path / "s.gguf")
    ids = q.tokenizer.encode("Once upon a time")
    assert np.array_equal(lb.load(tmp_path / "s.gguf", verbose=False).logits(ids), q.logits(ids))
    assert q.generate("Once upon a time", max_tokens=24, temperature=0) == \
        model.generate("Once upon a time", max_tokens=24, temperature=0)


def test_hugging_face_names_and_sources_that_cannot_be_saved(shared_data, tmp_path):
    """A llama2.c checkpoint (Hugging Face names): patterns use llama.cpp's names, and the result runs as
    the same weights quantized from their GGUF file (rows quantize independently, so llama.cpp's q/k row
    permutation does not matter); save refuses."""
    spec = dict(overrides={"blk.*.attn_v.weight": "q4_0", "output.weight": "q6_k"}, verbose=False)
    model = lb.load(shared_data / "stories260K.bin", tokenizer=shared_data / "tok512.bin", verbose=False)
    q = lb.quantize_model(model, "q8_0", **spec)
    types = q.quantization["types"]
    assert (types["blk.0.attn_q.weight"], types["blk.0.attn_v.weight"], types["token_embd.weight"]) == \
        ("q8_0", "q4_0", "q8_0")  # tied: token_embd is output.weight; 64 columns, q6_k falls back to q8_0
    ref = lb.quantize_model(lb.load(shared_data / "stories260K.gguf", verbose=False), "q8_0", **spec)
    ids = q.tokenizer.encode("Once upon a time")
    a, b = q.logits(ids), ref.logits(ids)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    with pytest.raises(NotImplementedError, match="GGUF files only.*llama2.c checkpoint"):
        q.save(tmp_path / "x.gguf")
    assert not os.listdir(tmp_path)


def test_bad_arguments(shared_data):
    model = lb.load(shared_data / "stories260K.gguf", verbose=False)
    cases = [
        (dict(dtype="q4_k_m"), ValueError, r"dtype: 'q4_k_m' is not a weight type .* supported: q4_0"),
        (dict(dtype="q8_1"), ValueError, "q8_1 is an activation format"),
        (dict(dtype=4), ValueError, "dtype: 4 is not a weight type"),
        (dict(overrides={"blk.*.ffn_down.weight": "q7_k"}), ValueError,
         r"overrides\['blk.\*.ffn_down.weight'\]: 'q7_k' is not a weight type"),
        (dict(overrides={"blk.*.attn_qkv.weight": "q8_0"}), ValueError,
         r"pattern 'blk.\*.attn_qkv.weight' names no weight matrix of stories260K.gguf: it matches no tensor"),
        (dict(overrides={"blk.*.attn_norm.weight": "q8_0"}), ValueError, "matches only 1-D tensors"),
        (dict(overrides={3: "q8_0"}), ValueError, "overrides: pattern 3 is not a non-empty str"),
        (dict(overrides=[("blk.*", "q8_0")]), TypeError, "overrides must be a mapping"),
        (dict(keep=("tok_embeddings.weight",)), ValueError, "keep: pattern 'tok_embeddings.weight' names no weight"),
    ]
    for kw, exc, msg in cases:
        kw = {"dtype": "q8_0", **kw}
        with pytest.raises(exc, match=msg):
            lb.quantize_model(model, kw.pop("dtype"), verbose=False, **kw)


def test_save_errors_and_saving_over_the_source(shared_data, tmp_path):
    src = tmp_path / "stories260K.gguf"
    shutil.copyfile(shared_data / "stories260K.gguf", src)
    model = lb.load(src, verbose=False)
    (tmp_path / "a_file").write_text("")
    for path, exc in [(tmp_path, IsADirectoryError), (tmp_path / "a_file" / "m.gguf", NotADirectoryError),
                      (tmp_path / "missing" / "m.gguf", FileNotFoundError)]:
        with pytest.raises(exc, match=re.escape(f"cannot write {path}")):
            model.save(path)
    assert sorted(os.listdir(tmp_path)) == ["a_file", "stories260K.gguf"]  # nothing half-written left
    # the new file replaces the source only once complete; the models mapping the old one keep it
    ids = model.tokenizer.encode("Once upon a time")
    before = model.logits(ids)
    q = lb.quantize_model(model, "q8_0", verbose=False)
    q.save(src)
    assert np.array_equal(model.logits(ids), before)
    assert np.array_equal(lb.load(src, verbose=False).logits(ids), q.logits(ids))
    q.save(tmp_path / "again.gguf")  # q's source is now the file it was saved over
    assert (tmp_path / "again.gguf").read_bytes() == src.read_bytes()
    with pytest.raises(RuntimeError, match="changed .* since the model was loaded"):
        lb.quantize_model(model, "q8_0", verbose=False)


def test_writer_value_types(tmp_path):
    """Every GGUF value type, as lmblocks' reader gives it back and as gguf-py reads it."""
    from lmblocks.io.gguf_writer import write_gguf

    md = [("u8", "uint8", 255), ("i8", "int8", -128), ("u16", "uint16", 65535), ("i16", "int16", -32768),
          ("u32", "uint32", 2**32 - 1), ("i32", "int32", -2**31), ("u64", "uint64", 2**64 - 1),
          ("i64", "int64", -2**63), ("f32", "float32", 0.25), ("f64", "float64", 1e300), ("b", "bool", True),
          ("s", "string", "héllo"), ("raw", "string", b"\xff\xfe"),
          ("af", "array[float32]", np.arange(3, dtype=np.float32)),
          ("ab", "array[bool]", np.array([True, False])), ("ae", "array[int32]", np.zeros(0, np.int32)),
          ("as", "array[string]", lb.StringTable(["a", "", "ü"])),
          ("aa", "array[array]", [np.arange(2, dtype=np.int16), lb.StringTable(["x"]), [np.ones(1, np.float64)]]),
          ("general.alignment", "uint32", 64)]
    x = np.arange(64, dtype=np.float32).reshape(2, 32)
    write_gguf(tmp_path / "t.gguf", md, [("x", x), ("q", lb.quantize(x, "q8_0"))])
    f = lb.io.GGUFFile(tmp_path / "t.gguf")
    assert list(f.metadata) == [k for k, _, _ in md] and f.alignment == 64 and f.data_offset % 64 == 0
    for key, vtype, value in md:
        assert f.metadata_types[key] == vtype, key
        got = f.metadata[key]
        if key == "aa":
            assert np.array_equal(got[0], value[0]) and got[1] == value[1] and np.array_equal(got[2][0], value[2][0])
        elif isinstance(value, np.ndarray):
            assert got.dtype == value.dtype and np.array_equal(got, value), key
        else:
            assert got == value, key
    assert np.array_equal(np.asarray(f.tensor("x")), x)
    assert np.asarray(f.tensor("q")).tobytes() == np.asarray(lb.quantize(x, "q8_0")).tobytes()
    r = gguf.GGUFReader(tmp_path / "t.gguf")
    assert r.fields["u64"].parts[-1][0] == 2**64 - 1 and r.fields["s"].contents() == "héllo"
    assert r.fields["as"].contents() == ["a", "", "ü"] and r.tensors[1].tensor_type == gguf.GGMLQuantizationType.Q8_0
    for bad, msg in [(("k", "uint8", 256), "'k': 256 is not a valid uint8"), (("k", "u8", 1), "not a GGUF value type"),
                     (("k", "array[uint8]", [1, 300]), "outside the range of uint8"),
                     (("k", "string", 3), "not a string"),
                     (("general.alignment", "uint32", 48), "expected an integer power of two")]:
        with pytest.raises(ValueError, match=msg):
            write_gguf(tmp_path / "bad.gguf", [bad], [])
    assert not (tmp_path / "bad.gguf").exists()

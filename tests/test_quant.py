"""lb.quant.dequantize against an independent implementation: the NumPy dequantizers of the `gguf`
package (llama.cpp's gguf-py), on random blocks whose scale fields hold realistic finite values.
Both sides run the same float32 operations in the same order, so results agree bit for bit on x86-64
(asserted there); elsewhere the compiler may fuse d*q + m into an FMA, hence the rtol elsewhere."""

import doctest
import platform

import numpy as np
import pytest

import lmblocks as lb
import lmblocks.quant
from lmblocks.quant import dequantize

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402

QUANT_TYPES = [n for n in lb.dtypes() if lb.dtype_info(n)["quantized"]]
EXACT = platform.machine().lower() in ("x86_64", "amd64")

# Byte offsets of the f16 scale fields inside one block (from ggml-common.h); q8_k's d is f32.
F16_FIELDS = {
    "q4_0": [0], "q4_1": [0, 2], "q5_0": [0], "q5_1": [0, 2], "q8_0": [0], "q8_1": [0, 2],
    "q2_k": [80, 82], "q3_k": [108], "q4_k": [0, 2], "q5_k": [0, 2], "q6_k": [208],
}
F32_FIELDS = {"q8_k": [0]}


def _reference(raw, name):
    """Float32 values of raw blocks (..., nbytes): gguf's dequantizer, or, for the two activation
    formats gguf-py does not decode (q8_1, q8_k), x = d * q written from the format here."""
    if name == "q8_1":
        b = raw.reshape(-1, 36)
        y = b[:, :2].copy().view(np.float16).astype(np.float32) * b[:, 4:].view(np.int8).astype(np.float32)
        return y.reshape(*raw.shape[:-1], -1)
    if name == "q8_k":
        b = raw.reshape(-1, 292)
        y = b[:, :4].copy().view(np.float32) * b[:, 4:260].view(np.int8).astype(np.float32)
        return y.reshape(*raw.shape[:-1], -1)
    qtype = gguf.GGMLQuantizationType(lb.dtype_info(name)["ggml_type"])
    return gguf_dequantize(np.ascontiguousarray(raw), qtype)


def _random_tensor(rng, name, shape):
    """A tensor of random blocks: random bytes, with every scale set to a finite value of the size
    real checkpoints have (|d| in [1e-4, 0.1], either sign)."""
    info = lb.dtype_info(name)
    t = lb.empty(*shape, dtype=name)
    raw = np.asarray(t)
    raw[...] = rng.integers(0, 256, raw.shape, dtype=np.uint8)
    blocks = raw.reshape(-1, info["type_size"])
    for off in F16_FIELDS.get(name, []):
        d = (rng.choice([-1, 1], len(blocks)) * 10 ** rng.uniform(-4, -1, len(blocks))).astype(np.float16)
        blocks[:, off:off + 2] = d.view(np.uint8).reshape(-1, 2)
    for off in F32_FIELDS.get(name, []):
        d = (rng.choice([-1, 1], len(blocks)) * 10 ** rng.uniform(-4, -1, len(blocks))).astype(np.float32)
        blocks[:, off:off + 4] = d.view(np.uint8).reshape(-1, 4)
    return t, raw


def _check(got, want):
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    if EXACT:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", QUANT_TYPES)
@pytest.mark.parametrize("rows,blocks", [(1, 1), (3, 5), (130, 8)])  # 130 rows span several pool chunks
def test_dequantize_matches_gguf(rng, name, rows, blocks):
    k = blocks * lb.dtype_info(name)["block_size"]
    t, raw = _random_tensor(rng, name, (rows, k))
    _check(dequantize(t), _reference(raw, name))


@pytest.mark.parametrize("name", QUANT_TYPES)
def test_dequantize_strided_rows(rng, name):
    k = 3 * lb.dtype_info(name)["block_size"]
    t, raw = _random_tensor(rng, name, (7, k))
    _check(dequantize(t[1::2]), _reference(raw[1::2], name))
    _check(dequantize(t[::-1]), _reference(raw[::-1], name))
    t3, raw3 = _random_tensor(rng, name, (2, 3, k))  # leading axes swapped: rows visited out of order
    _check(dequantize(t3.swapaxes(0, 1)), _reference(raw3.swapaxes(0, 1), name))


def test_q8_0_single_block():
    d = np.float16(0.375)
    q = np.arange(-16, 16, dtype=np.int8)[::-1].copy()
    t = lb.empty(1, 32, dtype="q8_0")
    raw = np.asarray(t)
    raw[0, :2] = np.array([d]).view(np.uint8)
    raw[0, 2:] = q.view(np.uint8)
    np.testing.assert_array_equal(dequantize(t)[0], q.astype(np.float32) * np.float32(d))


def test_q4_0_single_block():
    # Element j < 16 is the low nibble of byte j, element j + 16 its high nibble; value d * (nibble - 8).
    d = np.float16(-0.125)
    lo, hi = np.arange(16, dtype=np.uint8), np.arange(15, -1, -1, dtype=np.uint8)
    t = lb.empty(1, 32, dtype="q4_0")
    raw = np.asarray(t)
    raw[0, :2] = np.array([d]).view(np.uint8)
    raw[0, 2:] = lo | (hi << 4)
    want = (np.concatenate([lo, hi]).astype(np.float32) - 8) * np.float32(d)
    np.testing.assert_array_equal(dequantize(t)[0], want)
    assert want[0] == 1.0 and want[31] == 1.0 and want[15] == -0.875


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, "bfloat16"])
def test_plain_float_types(rng, dtype):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    x = rng.standard_normal((5, 37)).astype(dtype)
    for view in (x, x[::2], x.T):  # contiguous, strided rows, strided last axis
        got = dequantize(lb.asarray(view))
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, view.astype(np.float32))


def test_result_is_a_copy(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    got = dequantize(lb.asarray(x))
    got[0, 0] = 7.0
    assert x[0, 0] != 7.0


@pytest.mark.parametrize("bad", [np.zeros((2, 32), np.float32), [1.0, 2.0], None, "q8_0"])
def test_non_tensor_raises(bad):
    with pytest.raises(TypeError):
        dequantize(bad)


@pytest.mark.parametrize("name", ["i8", "u8", "i16", "i32", "i64"])
def test_type_without_to_float_raises(name):
    with pytest.raises(TypeError, match="no conversion"):
        dequantize(lb.zeros(2, 3, dtype=name))


def test_docstring_examples():
    result = doctest.testmod(lmblocks.quant, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_real_tensors_of_both_models(smollm2_path, gemma3_path):
    # Real blocks, not random bytes: the first tensor of each quantized type in SmolLM2 (q4_1, q8_0)
    # and Gemma 3 (q4_k, q6_k, q8_0 ...), against the gguf package's dequantizer.
    from lmblocks.io import read_gguf

    seen = set()
    for path in (smollm2_path, gemma3_path):
        f = read_gguf(path)
        for info in f.tensors.values():
            if not lb.dtype_info(info.dtype)["quantized"] or info.dtype in seen:
                continue
            seen.add(info.dtype)
            t = f.tensor(info.name)
            raw = np.asarray(t)  # the blocks as bytes, one row of blocks per row
            _check(dequantize(t), _reference(raw.reshape(-1, raw.shape[-1]), info.dtype).reshape(info.shape))
    assert {"q4_1", "q4_k", "q6_k", "q8_0"} <= seen


def test_linear_and_embedding_take_quantized_weights(smollm2_path, rng):
    # Real q4_1 projection and q8_0 embedding from SmolLM2 against dequantize + float64 NumPy.
    from lmblocks.io import read_gguf

    f = read_gguf(smollm2_path)
    for name in ("blk.0.attn_q.weight", "blk.3.ffn_down.weight", "token_embd.weight"):
        w = f.tensor(name)
        w64 = dequantize(w).astype(np.float64)
        for m in (1, 7):
            x = rng.standard_normal((m, w.shape[1]), dtype=np.float32)
            want = x.astype(np.float64) @ w64.T
            got = lb.ops.linear(x, w)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.sqrt(w.shape[1]) * np.abs(want).max())
    emb = f.tensor("token_embd.weight")
    ids = rng.integers(0, emb.shape[0], (3, 5))
    want = np.stack([dequantize(emb[int(i):int(i) + 1])[0] for i in ids.ravel()]).reshape(3, 5, -1)
    np.testing.assert_array_equal(np.asarray(lb.ops.embedding(ids, emb)), want)
    with pytest.raises(TypeError, match="weight has dtype i32"):
        lb.ops.linear(np.ones((2, 32), np.float32), np.ones((4, 32), np.int32))

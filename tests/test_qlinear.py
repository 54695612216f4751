"""The quantized-activation path for quantized weights (lmblocks.ops.linear on ggml blocks), against
float64 NumPy on the dequantized weights.

Quantizing a row of x to int16 per 32 elements (d_b = max|x_b| / 32639, b: its block) moves each x_k by at
most d_b / 2, so |x @ W^T - x_q @ W^T| <= sum_k |W_nk| max|x_b(k)| / 65278: the bound the fast path
is held to, computed per output. The vector kernels (AVX-512 VNNI) must also equal the scalar reference kernels
up to float summation order. Under LMBLOCKS_ISA=avx2/scalar, linear takes the dequantize + sgemm path,
which meets the same bound trivially; the reference-vs-vector check then compares the spec with itself.
"""

import numpy as np
import pytest

import lmblocks as lb
from lmblocks.quant import dequantize

from test_quant import _random_tensor

TYPES_32 = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]
TYPES_K = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
CASES = [(t, k) for t in TYPES_32 for k in (32, 96, 576)] + [(t, k) for t in TYPES_K for k in (256, 768)]


def quantization_bound(x, w64):
    """Per-output bound on the error int16 activations may add: sum_k |W_nk| * max|x_b(k)| / 65278."""
    amax = np.abs(x.astype(np.float64)).reshape(x.shape[0], -1, 32).max(-1)  # (M, K/32)
    return (np.repeat(amax, 32, axis=1) @ np.abs(w64).T) / 65278.0


@pytest.mark.parametrize("name,K", CASES)
@pytest.mark.parametrize("M,N", [(1, 1), (3, 67), (9, 130), (25, 33)])  # prefill tiles: 12 tokens x 16 rows
def test_quantized_linear_within_the_activation_quantization_bound(rng, name, K, M, N):
    w, _ = _random_tensor(rng, name, (N, K))
    w64 = dequantize(w).astype(np.float64)
    x = rng.standard_normal((M, K), dtype=np.float32) * rng.uniform(0.1, 10, (M, 1)).astype(np.float32)
    x[0, :7] *= 30  # an outlier block
    want = x.astype(np.float64) @ w64.T
    got = np.asarray(lb.ops.linear(x, w), np.float64)
    slack = 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(w64).T)  # float32 summation
    assert np.all(np.abs(got - want) <= quantization_bound(x, w64) + slack)


@pytest.mark.parametrize("name,K", CASES)
@pytest.mark.parametrize("M", [2, 6, 27])  # the row-at-a-time path; the panel path with a partial tile and with two
def test_vector_kernels_equal_the_scalar_reference(rng, name, K, M):
    w, _ = _random_tensor(rng, name, (37, K))  # 16-row panels and a tail of 5
    x = rng.standard_normal((M, K), dtype=np.float32)
    fast = lb._core.quant.qlinear(x, w, False)
    ref = lb._core.quant.qlinear(x, w, True)
    scale = np.abs(x).astype(np.float64) @ np.abs(dequantize(w).astype(np.float64)).T
    np.testing.assert_array_less(np.abs(fast - ref), 1e-5 * scale + 1e-30)


def test_bias_and_a_strided_x(rng):
    w, _ = _random_tensor(rng, "q4_k", (40, 512))
    b = rng.standard_normal(40, dtype=np.float32)
    x = rng.standard_normal((512, 6), dtype=np.float32).T  # column-major rows
    w64 = dequantize(w).astype(np.float64)
    want = x.astype(np.float64) @ w64.T + b
    got = np.asarray(lb.ops.linear(x, w, b), np.float64)
    assert np.all(np.abs(got - want) <= quantization_bound(x, w64) + 1e-5 * (np.abs(x) @ np.abs(w64).T) + 1e-6)


def test_reference_path_switch(rng):
    """With activation quantization off, linear multiplies f32 x by the dequantized weights."""
    w, _ = _random_tensor(rng, "q4_0", (16, 64))
    x = rng.standard_normal((2, 64), dtype=np.float32)
    want = x.astype(np.float64) @ dequantize(w).astype(np.float64).T
    assert lb.get_activation_quantization()
    lb.set_activation_quantization(False)
    try:
        np.testing.assert_allclose(lb.ops.linear(x, w), want, rtol=1e-5, atol=1e-6)
    finally:
        lb.set_activation_quantization(True)


def _half_weights(rng, dtype, N, K):
    w32 = rng.standard_normal((N, K), dtype=np.float32)
    if dtype == "f16":
        return lb.asarray(w32.astype(np.float16)), w32.astype(np.float16).astype(np.float64)
    bits = (w32.view(np.uint32) >> 16).astype(np.uint16)  # truncation: any bf16 values will do
    w = lb.empty(N, K, dtype="bf16")
    np.asarray(w).view(np.uint16)[...] = bits
    return w, (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (1, 67, 100), (3, 130, 576), (2, 9, 33)])
def test_half_weights_decode_path(rng, dtype, M, N, K):
    """f16/bf16 weights against a few rows of x: widened in registers, f32 accumulation."""
    w, w64 = _half_weights(rng, dtype, N, K)
    x = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal(N, dtype=np.float32)
    want = x.astype(np.float64) @ w64.T + b
    got = np.asarray(lb.ops.linear(x, w, b), np.float64)
    assert np.all(np.abs(got - want) <= 1e-5 * (np.abs(x) @ np.abs(w64).T + np.abs(b)) + 1e-6)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("M,N,K", [(4, 16, 32), (13, 37, 96), (27, 130, 576)])
def test_half_weights_prefill_path(rng, dtype, M, N, K):
    """Many rows of x against a model's f16/bf16 matrix: with the avx512 kernels each 32-weight chunk is rounded to
    12-bit integers on its own scale, adding at most sum_k |x_k| max|w_chunk(k)| / 4094 to the activations'
    bound (and nothing where the int16 path does not run)."""
    w, w64 = _half_weights(rng, dtype, N, K)
    x = rng.standard_normal((M, K), dtype=np.float32) * rng.uniform(0.1, 10, (M, 1)).astype(np.float32)
    x[0, :3] *= 25
    want = x.astype(np.float64) @ w64.T
    slack = 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(w64).T)  # float32 summation
    assert np.all(np.abs(np.asarray(lb.ops.linear(x, w), np.float64) - want) <= slack)  # a user's matrix: exact
    if not lb._core.quant.packable("q4_0"):
        return  # the int16 kernels run with avx512 only
    got = np.asarray(lb._core.quant.qlinear(x, w, False, packed=True), np.float64)  # as a model's matrix
    wmax = np.repeat(np.abs(w64).reshape(N, -1, 32).max(-1), 32, axis=1)  # (N, K): max|w| of each chunk
    bound = quantization_bound(x, w64) + (np.abs(x).astype(np.float64) @ wmax.T) / 4094.0
    assert np.all(np.abs(got - want) <= bound + slack)


PACKED = [c for c in CASES if c[0] not in ("q2_k", "q3_k")]


@pytest.mark.skipif(not lb._core.quant.packable("q4_0"), reason="weights are repacked only where the avx512 kernels run")
@pytest.mark.parametrize("name,K", PACKED)
@pytest.mark.parametrize("M", [1, 2, 3, 6, 27])  # decode (1-3 rows in one pass), prefill tiles with tails
def test_packed_weights_equal_the_scalar_reference(rng, name, K, M):
    """The layout CausalLM repacks weights into at load (16-row groups, rows as lanes; 37 rows: a partial
    last group) gives the scalar spec's products on the same int16 activations."""
    w, _ = _random_tensor(rng, name, (37, K))
    x = rng.standard_normal((M, K), dtype=np.float32) * rng.uniform(0.1, 10, (M, 1)).astype(np.float32)
    x[0, :5] *= 40  # an outlier block: the largest int16 quants, split into int8 halves
    packed = lb._core.quant.qlinear(x, w, False, packed=True)
    ref = lb._core.quant.qlinear(x, w, True)
    scale = np.abs(x).astype(np.float64) @ np.abs(dequantize(w).astype(np.float64)).T
    np.testing.assert_array_less(np.abs(packed - ref), 1e-5 * scale + 1e-30)


@pytest.mark.parametrize("name,K", PACKED)
def test_packed_rows_read_back_bit_for_bit(rng, name, K):
    """A tied embedding is gathered from the packed copy (the original's pages are released), so its rows
    must dequantize exactly as the original blocks do."""
    w, _ = _random_tensor(rng, name, (37, K))
    np.testing.assert_array_equal(lb._core.quant.packed_dequantize(w), dequantize(w))


@pytest.mark.skipif(not lb._core.quant.packable("q4_0"), reason="weights are repacked only where the avx512 kernels run")
@pytest.mark.parametrize("K", [256, 768])
@pytest.mark.parametrize("M", [1, 3, 6, 27])
def test_one_input_through_several_packed_weights(rng, K, M):
    """ops::linears, which q/k/v and gate/up go through: x quantized once, one job over every weight's
    groups (37 and 50 rows: groups split across weights and threads), each product the scalar spec's, bias
    added; and the float64 product of the dequantized weights within the activation-quantization bound."""
    names, rows = ["q4_0", "q8_0", "q4_k", "q6_k"], [37, 16, 50, 3]
    ws = [_random_tensor(rng, n, (r, K))[0] for n, r in zip(names, rows)]
    bs = [None, rng.standard_normal(16, dtype=np.float32), None, rng.standard_normal(3, dtype=np.float32)]
    x = rng.standard_normal((M, K), dtype=np.float32) * rng.uniform(0.1, 10, (M, 1)).astype(np.float32)
    x[0, :5] *= 40
    got = lb._core.quant.linears(x, ws, bs)
    assert [g.shape for g in got] == [(M, r) for r in rows]
    for g, w, b in zip(got, ws, bs):
        w64 = dequantize(w).astype(np.float64)
        ref = lb._core.quant.qlinear(x, w, True) + (0 if b is None else b)
        scale = np.abs(x).astype(np.float64) @ np.abs(w64).T
        np.testing.assert_array_less(np.abs(g - ref), 1e-5 * scale + 1e-6)
        want = x.astype(np.float64) @ w64.T + (0 if b is None else b)
        assert np.all(np.abs(g - want) <= quantization_bound(x, w64) + 1e-5 * scale + 1e-6)


def test_several_weights_fall_back_to_linear_one_at_a_time(rng):
    """Weights that are not a model's packed matrices (an f32 one here, unregistered blocks) go through
    linear() each; a bias list of the wrong length is refused."""
    w_q, _ = _random_tensor(rng, "q4_0", (20, 64))
    w_f = lb.empty(7, 64, dtype="f32")
    np.asarray(w_f)[...] = rng.standard_normal((7, 64), dtype=np.float32)
    x = rng.standard_normal((5, 64), dtype=np.float32)
    got = lb._core.quant.linears(x, [w_q, w_f], [None, None], packed=False)
    np.testing.assert_allclose(got[1], x.astype(np.float64) @ np.asarray(w_f, np.float64).T, rtol=1e-5, atol=1e-5)
    w64 = dequantize(w_q).astype(np.float64)
    slack = 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(w64).T)
    assert np.all(np.abs(got[0] - x.astype(np.float64) @ w64.T) <= quantization_bound(x, w64) + slack)
    with pytest.raises(ValueError, match="1 biases for 2 weights"):
        lb._core.quant.linears(x, [w_q, w_f], [None], packed=False)


def int8_activations(x):
    """NumPy's model of activations quantized with bits=8, in float32 as the kernels do it: per block of 32,
    d = max|x| / 127, q = round-half-even(x * (127 / max|x|)); returns the values d * q as float64."""
    xb = x.astype(np.float32).reshape(x.shape[0], -1, 32)
    amax = np.abs(xb).max(-1, keepdims=True)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), np.float32(0)).astype(np.float32)
    q = np.rint(xb * inv)
    d = (amax / np.float32(127)).astype(np.float32)
    return (q.astype(np.float64) * d.astype(np.float64)).reshape(x.shape)


@pytest.mark.parametrize("name,K,packed", [(*c, False) for c in CASES] + [(*c, True) for c in PACKED])
@pytest.mark.parametrize("M", [1, 4, 13, 27])  # decode rows, then a 4-token tile, a full one plus one, two plus 3
def test_int8_activations_equal_numpys_model_of_them(rng, name, K, M, packed):
    """With bits=8 (lb.set_activation_bits(8): the packed kernels for M >= 4; and the scalar spec) the
    product is that of NumPy's int8-quantized x with the dequantized weights, up to float32 summation."""
    if packed and not lb._core.quant.packable(name):
        pytest.skip("weights are repacked only where the avx512 kernels run")
    w, _ = _random_tensor(rng, name, (37, K))
    w64 = dequantize(w).astype(np.float64)
    x = rng.standard_normal((M, K), dtype=np.float32) * rng.uniform(0.1, 10, (M, 1)).astype(np.float32)
    x[0, :5] *= 40  # an outlier block
    want = int8_activations(x) @ w64.T
    got = lb._core.quant.qlinear(x, w, not packed, packed=packed, bits=8).astype(np.float64)
    slack = 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(w64).T) + 1e-30
    np.testing.assert_array_less(np.abs(got - want), slack)


def test_activation_bits_setting():
    assert lb.get_activation_bits() == 16
    for bad in (7, 0, 32):
        with pytest.raises(ValueError, match="bits must be 16 .* or 8, got"):
            lb.set_activation_bits(bad)
    with pytest.raises(TypeError):
        lb.set_activation_bits("int8")
    assert lb.get_activation_bits() == 16
    with pytest.raises(ValueError, match="bits must be 8 or 16"):
        lb._core.quant.qlinear(np.zeros((4, 32), np.float32), lb.quantize(np.zeros((1, 32), np.float32), "q8_0"),
                               True, bits=4)

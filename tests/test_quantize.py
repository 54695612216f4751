"""lb.quantize against independent references.

q4_0, q4_1, q5_0, q5_1, q8_0: the `gguf` package's NumPy port of ggml's reference quantizers, compared
byte for byte. q8_1 (which gguf-py does not quantize): its d and quants against gguf's q8_0, its s from
the definition. k-quants (which gguf-py does not quantize): the NumPy port of ggml's quantize_row_*_ref
below, float32 operations in ggml's order (sums accumulated element by element), so reconstructions
agree exactly; the bar of the task is RMSE no worse than 1.02x the reference's, also asserted."""

import doctest

import numpy as np
import pytest

import lmblocks as lb
import lmblocks.quant
from lmblocks.quant import dequantize, quantize

gguf = pytest.importorskip("gguf")
from gguf.quants import quantize as gguf_quantize  # noqa: E402

SIMPLE = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]
K_QUANTS = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
F32 = np.float32


def _gguf(x, name):
    with np.errstate(over="ignore"):  # the 1e6 rows' f16 scales overflow to inf, in ggml as here
        return gguf_quantize(np.ascontiguousarray(x, F32), gguf.GGMLQuantizationType[name.upper()])


def _awkward(rng, k):
    """Rows (32 elements per block) that stress the rounding: zeros, constants of either sign, tiny and
    huge scales (f16 d underflows to 0 / overflows to inf), an outlier, exact half-steps, both signs of
    the extreme value tied."""
    n = 32 * (k // 32)
    b = rng.standard_normal((12, n)).astype(F32)
    b[0] = 0
    b[1] = 0.3
    b[2] = -7.25
    b[3] *= F32(1e-30)
    b[4] *= F32(1e-9)
    b[5] *= F32(3e4)
    b[6] *= F32(1e6)
    b[7, 5] = 200
    b[8] = (rng.integers(-254, 255, n) / 2).astype(F32)   # halves: ties for q8_0's roundf
    b[8, ::32] = 127
    b[9] = np.where(np.arange(n) % 2, -1.5, 1.5)            # |max| reached by both signs
    b[10] = np.abs(b[10]) + 1                                # all positive: min > 0
    b[11] = -np.abs(b[11]) - 1                               # all negative
    return b


# ---- 32-element blocks: bit for bit against gguf ---------------------------------------------------

@pytest.mark.parametrize("name", SIMPLE)
@pytest.mark.parametrize("shape", [(1, 32), (7, 96), (3, 4, 64), (300, 128)])  # 300 rows: several pool chunks
def test_simple_matches_gguf(rng, name, shape):
    x = rng.standard_normal(shape).astype(F32) * F32(rng.uniform(0.01, 10))
    t = quantize(x, name)
    assert t.dtype == name and t.shape == shape
    np.testing.assert_array_equal(np.asarray(t), _gguf(x, name))


@pytest.mark.parametrize("name", SIMPLE)
def test_simple_awkward_blocks(rng, name):
    x = _awkward(rng, 64)
    np.testing.assert_array_equal(np.asarray(quantize(x, name)), _gguf(x, name))


def test_q8_0_ties_round_away_from_zero():
    x = np.zeros((1, 32), F32)
    x[0, :4] = [127, 2.5, -2.5, 0.5]  # d = 1: quants are roundf(x)
    q = np.asarray(quantize(x, "q8_0"))[0, 2:6].view(np.int8)
    np.testing.assert_array_equal(q, [127, 3, -3, 1])


def test_q8_1(rng):
    x = _awkward(rng, 64)
    got = np.asarray(quantize(x, "q8_1")).reshape(-1, 36)
    want = _gguf(x, "q8_0").reshape(-1, 34)
    np.testing.assert_array_equal(got[:, :2], want[:, :2])
    np.testing.assert_array_equal(got[:, 4:], want[:, 2:])
    d = np.abs(x).reshape(-1, 32).max(1) / F32(127)  # s = sum(q) * d with d before its f16 rounding
    with np.errstate(over="ignore"):
        s = (got[:, 4:].view(np.int8).astype(np.int32).sum(1).astype(F32) * d).astype(np.float16)
    np.testing.assert_array_equal(got[:, 2:4].copy().view(np.float16)[:, 0], s)


# ---- k-quants: NumPy port of ggml's reference quantizers -------------------------------------------
# Each function takes sub-blocks as rows (B, n) and returns float32 arrays; loops over elements keep
# ggml's summation order.

def _nearest_int(v):
    """ggml's nearest_int: the low mantissa bits of v + 1.5 * 2^23 (also for |v| > 2^22, as in C)."""
    return ((np.asarray(v, F32) + F32(12582912)).view(np.int32) & 0x7FFFFF) - 0x400000


def _sum(terms):
    out = np.zeros(terms[0].shape, F32)
    for t in terms:
        out += t
    return out


def _signed_absmax(x):
    return np.take_along_axis(x, np.abs(x).argmax(1)[:, None], 1)[:, 0]


def _make_qkx2(x, w, nmax, rmin, rdelta, nstep, use_mad):
    """-> scale, the_min, L: x ~ scale * L - the_min, L in [0, nmax]."""
    n = x.shape[1]
    lo, hi = np.minimum(x.min(1), 0), x.max(1)
    flat = hi == lo
    rng = np.where(flat, F32(1), hi - lo)
    sum_w, sum_x = _sum([w[:, i] for i in range(n)]), w[:, 0] * x[:, 0]
    for i in range(1, n):
        sum_x += w[:, i] * x[:, i]

    def err(scale, mn, L):
        e = [scale * L[:, i] + mn - x[:, i] for i in range(n)]
        return _sum([w[:, i] * (np.abs(e[i]) if use_mad else e[i] * e[i]) for i in range(n)])

    iscale = F32(nmax) / rng
    scale, mn = F32(1) / iscale, lo.copy()
    L = np.clip(_nearest_int(iscale[:, None] * (x - lo[:, None])), 0, nmax).astype(F32)
    best = err(scale, mn, L)
    for step in range(nstep + 1):  # as in ggml, later candidates start from the best min so far
        with np.errstate(all="ignore"):
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / np.where(flat, F32(1), hi - mn)
            La = np.clip(_nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax).astype(F32)
        sl = _sum([w[:, i] * La[:, i] for i in range(n)])
        sl2 = _sum([w[:, i] * La[:, i] * La[:, i] for i in range(n)])
        sxl = _sum([w[:, i] * La[:, i] * x[:, i] for i in range(n)])
        D = sum_w * sl2 - sl * sl
        with np.errstate(all="ignore"):
            s, m = (sum_w * sxl - sum_x * sl) / D, (sl2 * sum_x - sl * sxl) / D
            s, m = np.where(m > 0, sxl / sl2, s), np.minimum(m, 0)
            mad = err(s, m, La)
        take = (D > 0) & (mad < best)
        L[take], best[take], scale[take], mn[take] = La[take], mad[take], s[take], m[take]
    scale, L = np.where(flat, F32(0), scale), np.where(flat[:, None], F32(0), L)
    return scale, -np.where(flat, lo, mn), L


def _make_qx(x, nmax):
    """q6_k's search (rmse_type 1) -> scale, L in [0, 2 nmax)."""
    n, mx = x.shape[1], _signed_absmax(x)
    zero = np.abs(mx) < F32(1e-15)
    mx = np.where(zero, F32(1), mx)
    w = x * x

    def quant(iscale):
        l = np.clip(_nearest_int(iscale[:, None] * x), -nmax, nmax - 1).astype(F32)
        slx = _sum([w[:, i] * x[:, i] * l[:, i] for i in range(n)])
        return l, slx, _sum([w[:, i] * l[:, i] * l[:, i] for i in range(n)])

    l, slx, sl2 = quant(F32(-nmax) / mx)
    L = l + nmax
    with np.errstate(all="ignore"):
        scale = np.where(sl2 != 0, slx / sl2, F32(0))
        best = scale * slx
        for step in [s for s in range(-9, 10) if s]:
            l, slx, sl2 = quant(-(F32(nmax) + F32(0.1) * F32(step)) / mx)
            take = (sl2 > 0) & (slx * slx > best * sl2)
            L[take], scale[take] = l[take] + nmax, (slx / sl2)[take]
            best[take] = scale[take] * slx[take]
    return np.where(zero, F32(0), scale), np.where(zero[:, None], F32(0), L)


def _make_q3(x, nmax=4):
    """q3_k's search: single-quant moves while the weighted cosine improves -> scale, L in [0, 2 nmax)."""
    n, mx = x.shape[1], _signed_absmax(x)
    zero = np.abs(mx) < F32(1e-15)
    mx = np.where(zero, F32(1), mx)
    w = x * x
    L = np.clip(_nearest_int((F32(-nmax) / mx)[:, None] * x), -nmax, nmax - 1).astype(F32)
    slx = _sum([w[:, i] * x[:, i] * L[:, i] for i in range(n)])
    sl2 = _sum([w[:, i] * L[:, i] * L[:, i] for i in range(n)])
    with np.errstate(all="ignore"):
        for _ in range(5):  # a sweep that changes nothing leaves the state as it was: no early exit needed
            for i in range(n):
                a = slx - w[:, i] * x[:, i] * L[:, i]
                b = sl2 - w[:, i] * L[:, i] * L[:, i]
                new = np.clip(_nearest_int(x[:, i] * b / a), -nmax, nmax - 1).astype(F32)
                a2, b2 = a + w[:, i] * x[:, i] * new, b + w[:, i] * new * new
                take = (a > 0) & (new != L[:, i]) & (b2 > 0) & (a2 * a2 * sl2 > slx * slx * b2)
                L[take, i], slx[take], sl2[take] = new[take], a2[take], b2[take]
        scale = slx / sl2
    return np.where(zero, F32(0), scale), np.where(zero[:, None], F32(0), L + nmax)


def _f16(v):
    with np.errstate(over="ignore"):
        return np.asarray(v, F32).astype(np.float16).astype(F32)


def _ref_q2_k(x):
    xs = x.reshape(-1, 16)
    scales, mins, L = _make_qkx2(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
    scales, mins = scales.reshape(-1, 16), mins.reshape(-1, 16)
    ms, mm = np.maximum(scales.max(1), 0), np.maximum(mins.max(1), 0)
    with np.errstate(all="ignore"):
        lo = np.where(ms[:, None] > 0, _nearest_int((F32(15) / ms)[:, None] * scales), 0)
        hi = np.where(mm[:, None] > 0, _nearest_int((F32(15) / mm)[:, None] * mins), 0)
    byte = (lo & 0xFF) | ((hi << 4) & 0xFF)
    d, dmin = _f16(np.where(ms > 0, ms / F32(15), 0)), _f16(np.where(mm > 0, mm / F32(15), 0))
    dl, ml = (d[:, None] * (byte & 15)).reshape(-1), (dmin[:, None] * (byte >> 4)).reshape(-1)
    with np.errstate(all="ignore"):
        req = np.clip(_nearest_int((xs + ml[:, None]) / dl[:, None]), 0, 3)
    L = np.where(dl[:, None] != 0, req, L)
    with np.errstate(invalid="ignore"):  # inf * 0 where an f16 scale overflowed
        return (dl[:, None] * L.astype(F32) - ml[:, None]).reshape(x.shape)


def _ref_q3_k(x):
    scales, L = _make_q3(x.reshape(-1, 16))
    scales = scales.reshape(-1, 16)
    ms = _signed_absmax(scales)
    with np.errstate(all="ignore"):
        iscale = F32(-32) / ms
        sc = np.where(ms[:, None] != 0, np.clip(_nearest_int(iscale[:, None] * scales), -32, 31), -32)
        d = _f16(np.where(ms != 0, F32(1) / iscale, 0))
        dl = (d[:, None] * sc.astype(F32)).reshape(-1)
        req = np.clip(_nearest_int(x.reshape(-1, 16) / dl[:, None]), -4, 3) + 4
    L = np.where(dl[:, None] != 0, req, L)
    return (dl[:, None] * (L - 4).astype(F32)).reshape(x.shape)


def _ref_q45_k(x, nmax, rmin, nstep):
    xs = x.reshape(-1, 32)
    av = np.sqrt(_sum([xs[:, i] * xs[:, i] for i in range(32)]) / F32(32))
    scales, mins, L = _make_qkx2(xs, av[:, None] + np.abs(xs), nmax, rmin, 0.1, nstep, False)
    scales, mins = scales.reshape(-1, 8), mins.reshape(-1, 8)
    ms, mm = np.maximum(scales.max(1), 0), np.maximum(mins.max(1), 0)
    with np.errstate(all="ignore"):
        inv_s, inv_m = np.where(ms > 0, F32(63) / ms, 0), np.where(mm > 0, F32(63) / mm, 0)
    ls = np.minimum(_nearest_int(inv_s[:, None] * scales) & 0xFF, 63)
    lm = np.minimum(_nearest_int(inv_m[:, None] * mins) & 0xFF, 63)
    d, dmin = _f16(ms / F32(63)), _f16(mm / F32(63))
    dl, ml = (d[:, None] * ls.astype(F32)).reshape(-1), (dmin[:, None] * lm.astype(F32)).reshape(-1)
    with np.errstate(all="ignore"):
        req = np.clip(_nearest_int((xs + ml[:, None]) / dl[:, None]), 0, nmax)
    L = np.where(dl[:, None] != 0, req, L)
    return (dl[:, None] * L.astype(F32) - ml[:, None]).reshape(x.shape)


def _ref_q6_k(x):
    scales, L = _make_qx(x.reshape(-1, 16), 32)
    scales = scales.reshape(-1, 16)
    ms = _signed_absmax(scales)
    zero = np.abs(ms) < F32(1e-15)
    with np.errstate(all="ignore"):
        iscale = F32(-128) / ms
        sc = np.minimum(127, _nearest_int(iscale[:, None] * scales))
        d = _f16(np.where(zero, 0, F32(1) / iscale))
        dl = (d[:, None] * sc.astype(F32)).reshape(-1)
        req = np.clip(_nearest_int(x.reshape(-1, 16) / dl[:, None]), -32, 31) + 32
    L = np.where(dl[:, None] != 0, req, L)
    y = (dl[:, None] * (L - 32).astype(F32)).reshape(-1, 256)
    return np.where(zero[:, None], F32(0), y).reshape(x.shape)


K_REF = {
    "q2_k": _ref_q2_k, "q3_k": _ref_q3_k, "q6_k": _ref_q6_k,
    "q4_k": lambda x: _ref_q45_k(x, 15, -1.0, 20), "q5_k": lambda x: _ref_q45_k(x, 31, -0.5, 15),
}
# dequantize(quantize(x)) error bounds per format on Gaussian data, relative to the RMS of x: the RMSE,
# and the largest error in a 256-block relative to that block's RMS (ggml's own quantizers reach about
# half of each; a bug that scrambles quants or scales exceeds them).
K_RMSE = {"q2_k": 0.4, "q3_k": 0.2, "q4_k": 0.1, "q5_k": 0.05, "q6_k": 0.025}
K_MAXERR = {"q2_k": 2.0, "q3_k": 0.8, "q4_k": 0.4, "q5_k": 0.2, "q6_k": 0.1}


def _rmse(a, b):
    return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.mark.parametrize("name", K_QUANTS)
@pytest.mark.parametrize("data", ["gaussian", "outliers"])
def test_k_quant_rmse_vs_numpy_reference(rng, name, data):
    x = rng.standard_normal((64, 1024)).astype(F32)
    if data == "outliers":  # ~1% of elements 10-50x larger, as in real weight matrices
        mask = rng.random(x.shape) < 0.01
        x[mask] *= rng.uniform(10, 50, mask.sum()).astype(F32)
    got = dequantize(quantize(x, name))
    want = K_REF[name](x)
    assert _rmse(got, x) <= 1.02 * _rmse(want, x)
    np.testing.assert_array_equal(got, want)  # same operations in the same order: the same values


@pytest.mark.parametrize("name", K_QUANTS)
@pytest.mark.parametrize("shape", [(1, 256), (3, 2, 512), (40, 256)])
def test_k_quant_shapes_and_bound(rng, name, shape):
    x = rng.standard_normal(shape).astype(F32) * F32(rng.uniform(0.01, 10))
    t = quantize(x, name)
    assert t.dtype == name and t.shape == shape
    assert np.asarray(t).shape == (*shape[:-1], shape[-1] // 256 * lb.dtype_info(name)["type_size"])
    got = dequantize(t)
    np.testing.assert_array_equal(got, K_REF[name](x.reshape(-1, shape[-1])).reshape(shape))
    blocks, err = x.reshape(-1, 256), (got - x).reshape(-1, 256)
    rms = np.sqrt(np.mean(blocks.astype(np.float64) ** 2, 1))
    assert np.all(np.abs(err).max(1) <= K_MAXERR[name] * rms)
    assert _rmse(got, x) <= K_RMSE[name] * _rmse(x, 0)


@pytest.mark.parametrize("name", K_QUANTS)
def test_k_quant_awkward_blocks(rng, name):
    x = _awkward(rng, 256)
    x[3] = 1e-12 * rng.standard_normal(256)  # above ggml's 1e-15 all-zero threshold; x^4 sums underflow
    got = dequantize(quantize(x, name))
    np.testing.assert_array_equal(got, K_REF[name](x))
    assert np.all(got[0] == 0)
    np.testing.assert_allclose(got[1], 0.3, rtol=1e-3)  # a constant costs only the f16 rounding of scales
    np.testing.assert_allclose(got[2], -7.25, rtol=1e-3)


# ---- inputs and errors -----------------------------------------------------------------------------

def test_inputs_converted(rng):
    x = rng.standard_normal((4, 64))
    want = _gguf(x.astype(F32), "q4_0")
    np.testing.assert_array_equal(np.asarray(quantize(x, "q4_0")), want)                     # float64
    np.testing.assert_array_equal(np.asarray(quantize(x.tolist(), "q4_0")), want)            # a list
    np.testing.assert_array_equal(np.asarray(quantize(lb.asarray(x.astype(F32)), "q4_0")), want)  # Tensor
    np.testing.assert_array_equal(np.asarray(quantize(lb.asarray(x), "q4_0")), want)         # f64 Tensor
    w = rng.standard_normal((64, 4)).astype(F32)
    np.testing.assert_array_equal(np.asarray(quantize(w.T, "q4_0")), _gguf(w.T, "q4_0"))    # strided
    np.testing.assert_array_equal(np.asarray(quantize(lb.asarray(w).transpose(1, 0), "q4_0")), _gguf(w.T, "q4_0"))
    h = x.astype(np.float16)
    np.testing.assert_array_equal(np.asarray(quantize(lb.asarray(h), "q8_0")), _gguf(h.astype(F32), "q8_0"))


def test_empty_rows():
    t = quantize(np.zeros((0, 64), F32), "q8_0")
    assert t.shape == (0, 64) and np.asarray(t).shape == (0, 68)
    assert quantize(np.zeros((3, 0), F32), "q4_k").shape == (3, 0)


@pytest.mark.parametrize("name,k", [("q4_0", 48), ("q8_0", 31), ("q4_k", 128), ("q6_k", 288)])
def test_bad_k_raises(name, k):
    block = lb.dtype_info(name)["block_size"]
    with pytest.raises(ValueError, match=rf"K = {k}\b.*block size {block}"):
        quantize(np.zeros((2, k), F32), name)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["q4_0", "q6_k"])
def test_non_finite_raises_with_index(bad, name):
    x = np.ones((3, 2, 512), F32)
    x[2, 1, 300] = bad
    x[2, 1, 400] = np.nan  # a later one: the first is reported
    with pytest.raises(ValueError, match=r"index \(2, 1, 300\)"):
        quantize(x, name)


@pytest.mark.parametrize("dtype", ["q4_z", "f16", "int8", "q8_k"])
def test_unsupported_type_raises(dtype):
    names = "q4_0, q4_1, q5_0, q5_1, q8_0, q8_1, q2_k, q3_k, q4_k, q5_k, q6_k"
    with pytest.raises(ValueError, match=f"supported types: {names}$"):
        quantize(np.zeros((1, 256), F32), dtype)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="scalar"):
        quantize(1.0, "q8_0")
    with pytest.raises(TypeError, match="floating-point"):
        quantize(lb.zeros(1, 32, dtype="q8_0"), "q8_0")
    with pytest.raises(TypeError, match="floating-point"):
        quantize(lb.zeros(1, 32, dtype="i32"), "q8_0")


def test_doctest():
    assert doctest.testmod(lmblocks.quant, optionflags=doctest.ELLIPSIS).failed == 0

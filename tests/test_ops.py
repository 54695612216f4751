"""Every op of lmblocks.ops against its float64 NumPy reference (tests/ref/ops.py), tinygrad style.

Each numeric test runs once per dispatch path (the `isa` fixture in conftest.py) on inputs from a
seeded generator, in float32, float16 and bfloat16; the reference runs on the same rounded values.
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import lmblocks as lb
from lmblocks import ops
from ref import ops as ref

try:
    import ml_dtypes
except ImportError:  # bfloat16 cases skip
    ml_dtypes = None

# ---- Tolerances ---------------------------------------------------------------------------------
# (rtol, atol): an element passes when |got - ref| <= atol * scale + rtol * |ref|. scale is max|ref|, or
# the size of the terms where a test names it (max|x| for activations: float32 gelu computes
# 1 + erf(x / sqrt 2), which cancels for x << 0, as PyTorch's does), so cancellation (layer_norm's
# `+ bias`, a dot product near 0, gelu's left tail) is judged against the size of the terms.
# Inputs are rounded to their dtype first and the reference runs on those values, so float32,
# float16 and bfloat16 inputs share these float32-level bounds.
TOL = {
    "exact": (0.0, 0.0),           # embedding: a copy (float16/bfloat16 -> float32 is exact)
    "arith": (1e-7, 0.0),          # add, mul: one float32 rounding (<= 2**-24 relative)
    "elementwise": (1e-5, 1e-6),   # silu, gelu, swiglu, geglu, rope: exp / erf / tanh / sin, cos
    "norm": (1e-5, 1e-5),          # rms_norm, layer_norm, softmax: a row reduction, then elementwise
    "dot": (1e-5, 2e-7),           # matmul, linear, attention: atol times sqrt(K), K = reduction length
}

DTYPES = [
    "float32",
    "float16",
    pytest.param("bfloat16", marks=pytest.mark.skipif(ml_dtypes is None, reason="needs ml_dtypes")),
]
LAYOUTS = ["transposed", "strided", "reversed"]  # non-contiguous views with the same values
ROW_SHAPES = [(1,), (7,), (16,), (17,), (31,), (32,), (33,), (5, 1), (3, 13), (4, 16), (2, 3, 33),
              (2, 2, 3, 17)]
LARGE = (3, 4099)  # a row longer than any SIMD tile or cache-line loop; once per row-wise op
MANY = (67, 1031)  # enough rows for the work to be split over the thread pool, with ragged row tails


def np_dtype(name):
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def view(a, kind="contiguous"):
    """The same values as `a`, laid out as a contiguous array or a non-contiguous view."""
    if kind == "contiguous" or a.ndim == 0:
        return np.array(a, order="C")
    if kind == "transposed" and a.ndim >= 2:  # column-major in the last two axes
        return np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2)
    if kind in ("strided", "transposed"):  # every other element of a buffer twice as wide
        buf = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        buf[..., ::2] = a
        return buf[..., ::2]
    if kind == "reversed":  # negative stride on the last axis
        return np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    raise ValueError(kind)


def rand(rng, shape, dtype="float32", *, scale=1.0, shift=0.0, kind="contiguous"):
    """Normal(shift, scale) values rounded to `dtype`, in layout `kind`."""
    a = np.asarray(rng.standard_normal(shape) * scale + shift).astype(np.float32).astype(np_dtype(dtype))
    return view(a, kind)


def check(got, want, tol, *, K=1, scale=None):
    """Assert `got` (float32) matches the float64 reference `want`; report max abs / rel errors."""
    rtol, atol = TOL[tol]
    atol *= math.sqrt(K)
    got = np.asarray(got)
    assert got.dtype == np.float32, f"result dtype {got.dtype}, expected float32"
    assert got.shape == want.shape, f"result shape {got.shape}, expected {want.shape}"
    g = got.astype(np.float64)
    nan_ok = np.array_equal(np.isnan(g), np.isnan(want))
    inf = np.isinf(want)
    inf_ok = np.array_equal(g[inf], want[inf])
    fin = np.isfinite(want)
    with np.errstate(invalid="ignore"):
        err = np.where(fin, np.abs(g - want), 0.0)
    err = np.where(fin & ~np.isfinite(g), np.inf, err)
    if scale is None:
        scale = np.abs(want[fin]).max() if fin.any() else 0.0
    scale = float(scale)
    excess = err - (atol * scale + rtol * np.abs(np.where(fin, want, 0.0)))
    if nan_ok and inf_ok and not (excess > 0).any():
        return
    i = np.unravel_index(np.argmax(excess), excess.shape) if excess.ndim else ()
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.max(np.where(fin & (want != 0), err / np.abs(want), 0.0))
    raise AssertionError(
        f"max abs err {err.max():.3g}, max rel err {rel:.3g} (rtol {rtol:g}, atol {atol:g} x scale "
        f"{scale:.3g}); worst at {tuple(int(j) for j in i)}: got {g[i]!r}, want {want[i]!r}; "
        f"NaN pattern ok: {nan_ok}, inf ok: {inf_ok}, shape {want.shape}")


# ---- The references themselves, against independent computations -----------------------------

def test_ref_rope_is_complex_rotation(rng):
    B, T, H, hd = 2, 3, 2, 8
    x, pos = rng.standard_normal((B, T, H, hd)), rng.integers(0, 500, (B, T))
    inv = 10000.0 ** (-np.arange(0, 6, 2) / 6)
    for inter in (False, True):
        ia, ib = (np.arange(0, 6, 2), np.arange(1, 6, 2)) if inter else (np.arange(3), np.arange(3, 6))
        z = (x[..., ia] + 1j * x[..., ib]) * np.exp(1j * pos[:, :, None, None] * inv)
        want = x.copy()
        want[..., ia], want[..., ib] = z.real, z.imag
        np.testing.assert_allclose(ref.rope(x, pos, rotary_dim=6, interleaved=inter), want, rtol=1e-12, atol=1e-12)


def test_ref_llama3_matches_piecewise_rule():
    sc = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
    want = []
    for f in 500000.0 ** (-np.arange(0, 128, 2) / 128):
        wl = 2 * math.pi / f
        s = (8192 / wl - 1.0) / (4.0 - 1.0)
        want.append(f if wl < 8192 / 4 else f / 8 if wl > 8192 else (1 - s) * f / 8 + s * f)
    np.testing.assert_allclose(ref.rope_inv_freq(128, theta=500000.0, scaling=sc), want, rtol=1e-14)


def test_ref_attention_matches_loops(rng):
    B, T, S, H, Hkv, hd = 2, 3, 6, 4, 2, 5
    q, k = rng.standard_normal((B, T, H, hd)), rng.standard_normal((B, S, Hkv, hd))
    v = rng.standard_normal((B, S, Hkv, 3))
    mask = rng.standard_normal((B, 1, T, S))
    mask[1, 0, 2] = -np.inf
    for causal, window in [(True, None), (True, 2), (False, 2), (False, None)]:
        got = ref.attention(q, k, v, causal=causal, window=window, mask=mask, softcap=3.0)
        want = np.zeros_like(got)
        for b, t, h in np.ndindex(B, T, H):
            p, kh = S - T + t, h // (H // Hkv)
            js = [j for j in range(S) if (not causal or j <= p) and (not window or abs(p - j) < window)]
            s = np.array([3 * math.tanh(q[b, t, h] @ k[b, j, kh] / math.sqrt(hd) / 3) + mask[b, 0, t, j] for j in js])
            if js and np.isfinite(s.max()):
                w = np.exp(s - s.max())
                want[b, t, h] = (w / w.sum()) @ v[b, js, kh]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_ref_gelu_against_series():
    x = np.linspace(-4, 4, 81)
    z = x / math.sqrt(2)
    terms = ((-1) ** n * z ** (2 * n + 1) / (math.factorial(n) * (2 * n + 1)) for n in range(90))
    erf = 2 / math.sqrt(math.pi) * sum(terms)
    np.testing.assert_allclose(ref.gelu(x), 0.5 * x * (1 + erf), rtol=1e-12, atol=1e-12)  # series cancels at |x| = 4


# ---- Norms and softmax --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES + [LARGE, MANY])
def test_rms_norm(isa, rng, shape, dtype):
    x, w = rand(rng, shape, dtype, scale=2.0), rand(rng, shape[-1:])
    check(ops.rms_norm(x, w, eps=1e-5), ref.rms_norm(x, w, eps=1e-5), "norm")


@pytest.mark.parametrize("kw", [dict(), dict(offset=1.0), dict(eps=0.1, offset=0.5), dict(no_weight=True)])
def test_rms_norm_options(isa, rng, kw):
    x, w = rand(rng, (4, 33), scale=0.3), rand(rng, (33,), "bfloat16" if ml_dtypes else "float16")
    if kw.pop("no_weight", False):
        w = None
    check(ops.rms_norm(x, w, **kw), ref.rms_norm(x, w, **kw), "norm")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES + [LARGE, MANY])
def test_layer_norm(isa, rng, shape, dtype):
    x, w, b = rand(rng, shape, dtype, scale=2.0), rand(rng, shape[-1:]), rand(rng, shape[-1:], dtype)
    check(ops.layer_norm(x, w, b), ref.layer_norm(x, w, b), "norm")


@pytest.mark.parametrize("shape", [(5, 33), LARGE])
def test_layer_norm_shifted_mean(isa, rng, shape):
    # rows with mean 10 and std 1, where a one-pass E[x^2] - mean^2 variance cancels
    x, w, b = rand(rng, shape, shift=10.0), rand(rng, shape[-1:]), rand(rng, shape[-1:])
    check(ops.layer_norm(x, w, b), ref.layer_norm(x, w, b), "norm")


@pytest.mark.parametrize("kw", [dict(no_weight=True), dict(no_bias=True), dict(eps=0.5),
                                dict(no_weight=True, no_bias=True)])
def test_layer_norm_options(isa, rng, kw):
    x, w, b = rand(rng, (3, 17)), rand(rng, (17,)), rand(rng, (17,), "float16")
    w = None if kw.pop("no_weight", False) else w
    b = None if kw.pop("no_bias", False) else b
    check(ops.layer_norm(x, w, b, **kw), ref.layer_norm(x, w, b, **kw), "norm")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES + [LARGE, MANY])
def test_softmax(isa, rng, shape, dtype):
    x = rand(rng, shape, dtype, scale=3.0)
    check(ops.softmax(x), ref.softmax(x), "norm")


@pytest.mark.parametrize("shape,axis", [((7, 33), 0), ((7, 33), -2), ((2, 17, 5), 1), ((3, 4, 5), 0), ((4099, 2), 0),
                                        ((2, 3, 31), 2), ((1, 1), 0)])
def test_softmax_axis(isa, rng, shape, axis):
    x = rand(rng, shape, scale=3.0)
    check(ops.softmax(x, axis=axis), ref.softmax(x, axis=axis), "norm")


def test_softmax_large_and_neg_inf(isa, rng):
    x = rand(rng, (4, 37), scale=1e4)
    x[0, :] = 1e4                  # ties at a large value
    x[1, ::3] = -np.inf            # masked entries get exactly 0
    x[2, :-1] = -np.inf            # a single finite entry gets 1
    x[3, 5] = 3e38                 # one huge entry takes all
    got = ops.softmax(x)
    assert np.isfinite(got).all()
    check(got, ref.softmax(x), "norm")
    assert (got[1, ::3] == 0).all() and got[2, -1] == 1


@pytest.mark.parametrize("op", ["rms_norm", "layer_norm"])
def test_norm_nan_stays_in_its_row(isa, rng, op):
    x = rand(rng, (4, 33))
    x[1, 5] = np.nan
    got = np.asarray(getattr(ops, op)(x))
    assert np.isnan(got[1]).all()
    check(got, getattr(ref, op)(x), "norm")


@pytest.mark.parametrize("op", ["rms_norm", "layer_norm", "softmax"])
@pytest.mark.parametrize("kind", LAYOUTS)
def test_rowwise_noncontiguous(isa, rng, op, kind):
    x = rand(rng, (6, 33), kind=kind)
    assert not x.flags.c_contiguous
    check(getattr(ops, op)(x), getattr(ref, op)(x), "norm")


# ---- Activations and gated units ----------------------------------------------------------------

ACTS = {
    "silu": (ops.silu, ref.silu),
    "gelu": (ops.gelu, ref.gelu),
    "gelu_tanh": (lambda x, **kw: ops.gelu(x, approximate="tanh", **kw), lambda x: ref.gelu(x, approximate="tanh")),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES + [LARGE, MANY])
@pytest.mark.parametrize("act", ACTS)
def test_activation(isa, rng, act, shape, dtype):
    x = rand(rng, shape, dtype, scale=4.0)
    fn, want = ACTS[act]
    check(fn(x), want(x), "elementwise", scale=np.abs(ref.f64(x)).max())


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("act", ACTS)
def test_activation_noncontiguous(isa, rng, act, kind):
    x = rand(rng, (5, 33), scale=4.0, kind=kind)
    fn, want = ACTS[act]
    check(fn(x), want(x), "elementwise", scale=np.abs(ref.f64(x)).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_activation_special_values(isa, act, dtype):
    # +-90: exp overflow / underflow territory; the limits are x and 0. NaN stays NaN.
    x = np.array([-90, -30, -10, -1e-3, -0.0, 0, 1e-20, 1e-3, 10, 30, 90, np.nan, -4.5, 4.5] * 3, np.float32)
    x = x.astype(np_dtype(dtype))
    fn, want = ACTS[act]
    got = fn(x)
    check(got, want(x), "elementwise")
    assert got[10] == 90 and abs(got[0]) < 1e-30 and np.isnan(got[11])


def glu_terms(gate, up=None):
    """max |gate * up|: the size of the terms of swiglu / geglu (the error scale of gelu's left tail)."""
    if up is None:
        gate, up = np.split(ref.f64(gate), 2, axis=-1)
    return np.abs(ref.mul(gate, up)).max()


GLUS = {
    "swiglu": (ops.swiglu, ref.swiglu, {}),
    "geglu": (ops.geglu, ref.geglu, {}),
    "geglu_tanh": (ops.geglu, ref.geglu, {"approximate": "tanh"}),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 17), (2, 31), (4, 32), (2, 3, 33), (2, 4099), MANY])
@pytest.mark.parametrize("glu", GLUS)
def test_glu(isa, rng, glu, shape, dtype):
    fn, want, kw = GLUS[glu]
    gate, up = rand(rng, shape, dtype, scale=3.0), rand(rng, shape, "float32")
    check(fn(gate, up, **kw), want(gate, up, **kw), "elementwise", scale=glu_terms(gate, up))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2,), (14,), (3, 34), (2, 3, 64), (2, 8198), (67, 2062)])
@pytest.mark.parametrize("glu", GLUS)
def test_glu_fused_half_split(isa, rng, glu, shape, dtype):
    fn, want, kw = GLUS[glu]
    gate_up = rand(rng, shape, dtype, scale=3.0)
    got = fn(gate_up, **kw)
    assert got.shape == shape[:-1] + (shape[-1] // 2,)
    check(got, want(gate_up, **kw), "elementwise", scale=glu_terms(gate_up))


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("glu", GLUS)
def test_glu_noncontiguous(isa, rng, glu, kind):
    fn, want, kw = GLUS[glu]
    gate, up = rand(rng, (5, 34), kind=kind), rand(rng, (5, 34), "float16", kind=kind)
    check(fn(gate, up, **kw), want(gate, up, **kw), "elementwise", scale=glu_terms(gate, up))
    check(fn(gate, **kw), want(gate, **kw), "elementwise", scale=glu_terms(gate))


def test_glu_special_values(isa):
    gate = np.array([-90, 90, np.nan, 0, 1, 2], np.float32)
    up = np.array([2, 2, 1, np.nan, np.nan, -1], np.float32)
    for fn, want, kw in GLUS.values():
        check(fn(gate, up, **kw), want(gate, up, **kw), "elementwise")


# ---- RoPE ---------------------------------------------------------------------------------------

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
SCALINGS = [None, {"rope_type": "linear", "factor": 4.0}, {"type": "linear", "factor": 2.0},
            {"rope_type": "default"}, LLAMA3, {**LLAMA3, "factor": 32.0, "original_max_position_embeddings": 512}]


@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: str(s and (s.get("rope_type") or s.get("type"))))
@pytest.mark.parametrize("rd,theta", [(2, 10000.0), (8, 1.0), (64, 10000.0), (128, 500000.0), (6, 7.5)])
def test_rope_inv_freq(rd, theta, scaling):
    got = ops.rope_inv_freq(rd, theta=theta, scaling=scaling)
    assert got.dtype == np.float64 and got.shape == (rd // 2,)
    np.testing.assert_allclose(got, ref.rope_inv_freq(rd, theta=theta, scaling=scaling), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("shape,rd", [((1, 1, 2), None), ((7, 3, 8), None), ((5, 2, 16), None), ((3, 4, 34), None),
                                       ((2, 5, 3, 64), None), ((4, 2, 128), None), ((3, 2, 32), 16),
                                       ((4, 3, 10), 4), ((2, 3, 2, 96), 32), ((3, 1, 17), 16), ((2, 65, 8, 128), None)])
def test_rope(isa, rng, shape, rd, interleaved, dtype):
    x = rand(rng, shape, dtype)
    kw = dict(rotary_dim=rd, interleaved=interleaved, offset=3)
    check(ops.rope(x, **kw), ref.rope(x, **kw), "elementwise")


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("scaling", SCALINGS[1:], ids=lambda s: s.get("rope_type") or s.get("type"))
def test_rope_scaling(isa, rng, scaling, interleaved):
    x, pos = rand(rng, (6, 2, 128)), rng.integers(0, 8192, 6)
    kw = dict(theta=500000.0, scaling=scaling, interleaved=interleaved)
    check(ops.rope(x, pos, **kw), ref.rope(x, pos, **kw), "elementwise")


@pytest.mark.parametrize("pos_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("batched,pos_shape", [(False, "T"), (True, "T"), (True, "BT")])
def test_rope_positions(isa, rng, batched, pos_shape, pos_dtype):
    B, T, H, hd = 3, 5, 2, 16
    x = rand(rng, (B, T, H, hd) if batched else (T, H, hd))
    pos = rng.integers(0, 2048, (B, T) if pos_shape == "BT" else (T,)).astype(pos_dtype)
    check(ops.rope(x, pos, rotary_dim=8), ref.rope(x, pos, rotary_dim=8), "elementwise")


def test_rope_offset_equals_positions(isa, rng):
    x = rand(rng, (2, 7, 3, 32))
    check(ops.rope(x, offset=100), ref.rope(x, np.arange(100, 107)), "elementwise")
    check(ops.rope(x, np.arange(100, 107)), ref.rope(x, offset=100), "elementwise")


def test_rope_long_positions(isa, rng):
    # Llama 3.1 at 128K context: angles up to ~1e5 rad must still give float32-accurate rotations
    x, pos = rand(rng, (4, 2, 128)), np.array([0, 65535, 100000, 131071])
    kw = dict(theta=500000.0, scaling=LLAMA3)
    check(ops.rope(x, pos, **kw), ref.rope(x, pos, **kw), "elementwise")


@pytest.mark.parametrize("kind", ["fused_qkv", "strided", "reversed"])
def test_rope_noncontiguous(isa, rng, kind):
    T, H, hd = 5, 4, 16
    if kind == "fused_qkv":  # q as a view into a fused (T, 3 * H * hd) projection
        x = rand(rng, (T, 3 * H * hd))[:, H * hd : 2 * H * hd].reshape(T, H, hd)
    else:
        x = rand(rng, (T, H, hd), kind=kind)
    assert not x.flags.c_contiguous
    for inter in (False, True):
        kw = dict(offset=9, interleaved=inter, rotary_dim=8)
        check(ops.rope(x, **kw), ref.rope(x, **kw), "elementwise")


# ---- Embedding, add, mul ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("ids_shape,V,D", [((), 5, 7), ((1,), 1, 1), ((7,), 13, 17), ((2, 3), 31, 33),
                                           ((4,), 3, 4099), ((2, 2, 2), 50, 32), ((1000,), 50, 64)])
def test_embedding(isa, rng, ids_shape, V, D, id_dtype, dtype):
    ids, table = rng.integers(0, V, ids_shape).astype(id_dtype), rand(rng, (V, D), dtype)
    check(ops.embedding(ids, table), ref.embedding(ids, table), "exact")


def test_embedding_noncontiguous(isa, rng):
    ids, table = rng.integers(0, 13, (4, 6))[:, ::2], rand(rng, (13, 17), kind="transposed")
    check(ops.embedding(ids, table), ref.embedding(ids, table), "exact")
    check(ops.embedding(ids.T, table[:, ::-1]), ref.embedding(ids.T, table[:, ::-1]), "exact")


BROADCASTS = [((1,), (1,)), ((7,), (7,)), ((33,), (1,)), ((3, 31), (31,)), ((4, 32), (4, 1)), ((3, 1), (1, 17)),
              ((2, 3, 13), (3, 1)), ((1, 33), (5, 1, 1)), ((2, 1, 4, 1), (3, 1, 16)), ((5,), ()),
              ((3, 4099), (4099,)), ((67, 1031), (67, 1)), ((67, 1031), (67, 1031))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", BROADCASTS, ids=str)
@pytest.mark.parametrize("op", ["add", "mul"])
def test_add_mul(isa, rng, op, shapes, dtype):
    a, b = rand(rng, shapes[0], dtype), rand(rng, shapes[1], "float32")
    check(getattr(ops, op)(a, b), getattr(ref, op)(a, b), "arith")
    check(getattr(ops, op)(b, a), getattr(ref, op)(b, a), "arith")


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("op", ["add", "mul"])
def test_add_mul_noncontiguous(isa, rng, op, kind):
    a, b = rand(rng, (6, 33), kind=kind), rand(rng, (33,), "float16", kind=kind)
    check(getattr(ops, op)(a, b), getattr(ref, op)(a, b), "arith")
    check(getattr(ops, op)(a, a.T.T), getattr(ref, op)(a, a), "arith")


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_mul_special_values(isa, dtype):
    with np.errstate(over="ignore"):  # 3e38 is inf in float16
        a = np.array([np.nan, np.inf, -np.inf, 3e38, 1, 0], np.float32).astype(np_dtype(dtype))
    b = np.array([1, 1, 2, 3e38, np.nan, -0.0], np.float32)
    for op in ("add", "mul"):
        with np.errstate(over="ignore"):
            check(getattr(ops, op)(a, b), getattr(ref, op)(a, b).astype(np.float32).astype(np.float64), "arith")


# ---- matmul and linear --------------------------------------------------------------------------

MATMULS = [((1, 1), (1, 1)), ((7, 13), (13, 17)), ((33, 31), (31, 32)), ((16, 33), (33, 1)), ((1, 32), (32, 33)),
           ((13,), (13, 7)), ((7, 13), (13,)), ((17,), (17,)), ((2, 3, 7, 13), (13, 5)), ((7, 13), (4, 13, 5)),
           ((2, 1, 5, 17), (3, 17, 4)), ((2, 3, 7, 13), (13,)), ((13,), (2, 13, 5)), ((3, 4099), (4099, 5)),
           ((67, 257), (257, 129)), ((4, 33, 64), (4, 64, 65))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", MATMULS, ids=str)
def test_matmul(isa, rng, shapes, dtype):
    a, b = rand(rng, shapes[0], dtype), rand(rng, shapes[1], dtype)
    check(ops.matmul(a, b), ref.matmul(a, b), "dot", K=shapes[0][-1])


@pytest.mark.parametrize("ka,kb", [("transposed", "contiguous"), ("contiguous", "transposed"),
                                   ("transposed", "transposed"), ("strided", "strided"), ("reversed", "contiguous")])
def test_matmul_noncontiguous(isa, rng, ka, kb):
    a, b = rand(rng, (2, 17, 33), kind=ka), rand(rng, (33, 31), kind=kb)
    check(ops.matmul(a, b), ref.matmul(a, b), "dot", K=33)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape,N", [((1,), 1), ((7,), 13), ((5, 33), 17), ((2, 3, 32), 31), ((4, 4099), 7),
                                       ((1, 16), 33), ((3, 4131), 9), ((2, 95), 70)])  # M < 4: the streaming rows
@pytest.mark.parametrize("bias", [False, True])
def test_linear(isa, rng, x_shape, N, bias, dtype):
    x, w = rand(rng, x_shape, dtype), rand(rng, (N, x_shape[-1]), dtype)
    b = rand(rng, (N,), dtype) if bias else None
    check(ops.linear(x, w, b), ref.linear(x, w, b), "dot", K=x_shape[-1])


def test_linear_noncontiguous(isa, rng):
    x, w = rand(rng, (7, 33), kind="strided"), rand(rng, (17, 33), kind="transposed")
    b = rand(rng, (17,), kind="reversed")
    check(ops.linear(x, w, b), ref.linear(x, w, b), "dot", K=33)
    check(ops.linear(x, w[::2], b[::2]), ref.linear(x, w[::2], b[::2]), "dot", K=33)


# ---- attention ----------------------------------------------------------------------------------

# (B or None, T, S, H, Hkv, hd, hdv, options)
ATTENTIONS = [
    (None, 1, 1, 1, 1, 1, 1, {}),
    (None, 7, 7, 4, 4, 16, 16, {}),
    (None, 7, 7, 4, 2, 17, 17, {"causal": False}),
    (None, 1, 33, 8, 1, 32, 32, {}),                                  # MQA decode
    (2, 5, 13, 6, 3, 31, 7, {}),                                      # GQA, S > T, hdv != hd
    (2, 13, 13, 4, 2, 64, 64, {"window": 4}),
    (None, 9, 9, 2, 1, 33, 33, {"causal": False, "window": 3}),      # symmetric window
    (None, 3, 31, 4, 2, 16, 16, {"window": 5}),
    (None, 4, 16, 4, 4, 32, 32, {"scale": 0.05, "softcap": 5.0}),
    (2, 6, 6, 4, 2, 16, 8, {"softcap": 0.5, "causal": False}),
    (None, 1, 4099, 2, 1, 64, 64, {}),                                # long cache
    (None, 5, 300, 4, 2, 128, 128, {"window": 64}),
    (2, 65, 65, 8, 2, 64, 64, {}),                                    # prefill, split over threads
    (2, 65, 65, 8, 2, 64, 64, {"causal": False, "window": 16, "softcap": 30.0}),
]


def attention_id(c):
    return "B{}T{}S{}H{}Hkv{}hd{}hdv{}".format(*c[:7]) + "".join(f"-{k}{v}" for k, v in c[7].items())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ATTENTIONS, ids=attention_id)
def test_attention(isa, rng, case, dtype):
    B, T, S, H, Hkv, hd, hdv, kw = case
    lead = () if B is None else (B,)
    q, k = rand(rng, lead + (T, H, hd), dtype), rand(rng, lead + (S, Hkv, hd), dtype)
    v = rand(rng, lead + (S, Hkv, hdv), dtype)
    check(ops.attention(q, k, v, **kw), ref.attention(q, k, v, **kw), "dot", K=max(hd, S))


@pytest.mark.parametrize("batched,mask_shape", [(False, "TS"), (False, "1TS"), (False, "HTS"), (False, "S"),
                                                (True, "TS"), (True, "HTS"), (True, "B1TS"), (True, "BHTS"),
                                                (True, "1H1S")])
def test_attention_mask(isa, rng, batched, mask_shape):
    B, T, S, H, Hkv, hd = 2, 5, 9, 4, 2, 16
    lead = (B,) if batched else ()
    q, k, v = rand(rng, lead + (T, H, hd)), rand(rng, lead + (S, Hkv, hd)), rand(rng, lead + (S, Hkv, hd))
    dims = {"B": B, "H": H, "T": T, "S": S, "1": 1}
    mask = rand(rng, tuple(dims[c] for c in mask_shape), scale=2.0)
    mask[..., ::4] = -np.inf
    for causal in (True, False):
        kw = dict(mask=mask, causal=causal)
        check(ops.attention(q, k, v, **kw), ref.attention(q, k, v, **kw), "dot", K=S)


def test_attention_fully_masked_rows_are_zero(isa, rng):
    T, S, H, hd = 4, 6, 2, 8
    q, k, v = rand(rng, (T, H, hd)), rand(rng, (S, H, hd)), rand(rng, (S, H, hd))
    mask = np.zeros((H, T, S), np.float32)
    mask[0, 1] = -np.inf       # head 0, query 1 sees nothing
    mask[1, 3, :4] = -np.inf   # head 1, query 3 sees only keys 4, 5
    got = ops.attention(q, k, v, mask=mask)
    check(got, ref.attention(q, k, v, mask=mask), "dot", K=S)
    assert (np.asarray(got)[1, 0] == 0).all()


def test_attention_noncontiguous(isa, rng):
    # q, k, v as views into one fused (T, (H + 2 Hkv) * hd) projection, as a model produces them
    T, H, Hkv, hd = 7, 4, 2, 16
    qkv = rand(rng, (T, (H + 2 * Hkv) * hd))
    q = qkv[:, : H * hd].reshape(T, H, hd)
    k = qkv[:, H * hd : (H + Hkv) * hd].reshape(T, Hkv, hd)
    v = qkv[:, (H + Hkv) * hd :].reshape(T, Hkv, hd)
    check(ops.attention(q, k, v), ref.attention(q, k, v), "dot", K=hd)
    kt = rand(rng, (Hkv, T, hd)).transpose(1, 0, 2)  # a head-major cache seen as (S, Hkv, hd)
    check(ops.attention(q, kt, v, window=3), ref.attention(q, kt, v, window=3), "dot", K=hd)


def test_zero_stride_and_read_only_inputs(isa, rng):
    # np.broadcast_to gives read-only views with stride 0; memory-mapped weights are read-only
    row, w = rand(rng, (33,)), rand(rng, (33,))
    x = np.broadcast_to(row, (5, 33))
    w.setflags(write=False)
    check(ops.rms_norm(x, w), ref.rms_norm(x, w), "norm")
    check(ops.softmax(x, axis=0), ref.softmax(x, axis=0), "norm")
    check(ops.silu(x), ref.silu(x), "elementwise")
    check(ops.add(x, w), ref.add(x, w), "arith")
    check(ops.matmul(x, x.T), ref.matmul(x, x.T), "dot", K=33)
    w4 = np.broadcast_to(w, (4, 33))
    check(ops.linear(x, w4, w[:4]), ref.linear(x, w4, w[:4]), "dot", K=33)
    ids = np.broadcast_to(np.array([2]), (3,))
    check(ops.embedding(ids, x), ref.embedding(ids, x), "exact")


def test_attention_mask_dtypes_and_views(isa, rng):
    T, S, H, hd = 5, 8, 4, 16
    q, k, v = rand(rng, (T, H, hd)), rand(rng, (S, 2, hd)), rand(rng, (S, 2, hd))
    row = rand(rng, (S,), scale=3.0)
    row[2] = -np.inf
    strided = rand(rng, (T, 2 * S), "bfloat16" if ml_dtypes else "float16")[:, ::2]
    for mask in (row.astype(np.float16), np.broadcast_to(row, (H, T, S)), strided):
        check(ops.attention(q, k, v, mask=mask), ref.attention(q, k, v, mask=mask), "dot", K=S)


def test_rope_positions_views(isa, rng):
    x = rand(rng, (2, 5, 3, 16))
    pos = rng.integers(0, 1000, (5, 2)).T  # (B, T) transposed view
    check(ops.rope(x, pos), ref.rope(x, pos), "elementwise")
    check(ops.rope(x, pos[0, ::-1]), ref.rope(x, pos[0, ::-1]), "elementwise")
    check(ops.rope(lb.asarray(x), lb.asarray(np.ascontiguousarray(pos))), ref.rope(x, pos), "elementwise")


def test_empty_inputs_give_empty_outputs(isa):
    e = np.zeros((0, 5), np.float32)
    for got, shape in [(ops.rms_norm(e), (0, 5)), (ops.layer_norm(e), (0, 5)), (ops.softmax(e), (0, 5)),
                       (ops.silu(e), (0, 5)), (ops.add(e, np.ones(5, np.float32)), (0, 5)),
                       (ops.matmul(e, np.ones((5, 2), np.float32)), (0, 2)),
                       (ops.embedding(np.zeros(0, np.int64), np.ones((3, 5), np.float32)), (0, 5))]:
        assert got.shape == shape and got.dtype == np.float32


# ---- Threads ------------------------------------------------------------------------------------

def test_threads(isa, rng):
    x, w = rand(rng, (128, 257)), rand(rng, (257,))
    q, k, v = rand(rng, (17, 4, 32)), rand(rng, (40, 2, 32)), rand(rng, (40, 2, 32))
    prev = lb.get_num_threads()
    results = []
    try:
        for n in (1, max(prev, 2)):
            lb.set_num_threads(n)
            r = [ops.rms_norm(x, w), ops.softmax(x), ops.silu(x), ops.attention(q, k, v), ops.matmul(x, x.T)]
            check(r[0], ref.rms_norm(x, w), "norm")
            check(r[1], ref.softmax(x), "norm")
            check(r[2], ref.silu(x), "elementwise")
            check(r[3], ref.attention(q, k, v), "dot", K=40)
            check(r[4], ref.matmul(x, x.T), "dot", K=257)
            results.append(r[:3])
    finally:
        lb.set_num_threads(prev)
    for one, many in zip(*results):  # row-wise kernels compute a row the same way on any thread
        np.testing.assert_array_equal(many, one)


# ---- out=, in place, aliasing, NumPy / Tensor ---------------------------------------------------

def _cases(rng):
    """op name -> (call(*inputs, out=None), inputs, reference result, tolerance class, K)."""
    x, w, b = rand(rng, (3, 33)), rand(rng, (33,)), rand(rng, (33,))
    t = rand(rng, (5, 2, 16))
    q, k, v = rand(rng, (4, 2, 16)), rand(rng, (6, 1, 16)), rand(rng, (6, 1, 16))
    ids, table = np.array([3, 0, 2]), rand(rng, (4, 33))
    m = rand(rng, (33, 33))
    return {
        "rms_norm": (lambda x, w, out=None: ops.rms_norm(x, w, out=out), (x, w), ref.rms_norm(x, w), "norm", 1),
        "layer_norm": (lambda x, w, b, out=None: ops.layer_norm(x, w, b, out=out), (x, w, b), ref.layer_norm(x, w, b),
                       "norm", 1),
        "softmax": (ops.softmax, (x,), ref.softmax(x), "norm", 1),
        "silu": (ops.silu, (x,), ref.silu(x), "elementwise", 1),
        "gelu": (ops.gelu, (x,), ref.gelu(x), "elementwise", 1),
        "swiglu": (ops.swiglu, (x, m[:3]), ref.swiglu(x, m[:3]), "elementwise", 1),
        "geglu": (ops.geglu, (x, m[:3]), ref.geglu(x, m[:3]), "elementwise", 1),
        "rope": (lambda t, out=None: ops.rope(t, offset=2, rotary_dim=8, out=out), (t,),
                 ref.rope(t, offset=2, rotary_dim=8), "elementwise", 1),
        "embedding": (ops.embedding, (ids, table), ref.embedding(ids, table), "exact", 1),
        "add": (ops.add, (x, m[:3]), ref.add(x, m[:3]), "arith", 1),
        "mul": (ops.mul, (x, m[:3]), ref.mul(x, m[:3]), "arith", 1),
        "matmul": (ops.matmul, (m, m[::-1].copy()), ref.matmul(m, m[::-1]), "dot", 33),
        "linear": (lambda x, w, out=None: ops.linear(x, w, out=out), (x, m), ref.linear(x, m), "dot", 33),
        "attention": (ops.attention, (q, k, v), ref.attention(q, k, v), "dot", 16),
    }


OPS = list(_cases(np.random.default_rng(0)))


@pytest.mark.parametrize("op", OPS)
def test_out(isa, rng, op):
    fn, args, want, tol, K = _cases(rng)[op]
    out = np.full(want.shape, np.nan, np.float32)
    got = fn(*args, out=out)
    assert got is out, "out= should be written and returned"
    check(out, want, tol, K=K)


@pytest.mark.parametrize("op", OPS)
def test_numpy_and_tensor_io(isa, rng, op):
    fn, args, want, tol, K = _cases(rng)[op]
    got = fn(*args)
    assert type(got) is np.ndarray
    check(got, want, tol, K=K)
    got = fn(*(lb.asarray(a) for a in args))
    assert isinstance(got, lb.Tensor), f"Tensor in should give Tensor out, got {type(got).__name__}"
    check(np.asarray(got), want, tol, K=K)
    out = lb.asarray(np.zeros(want.shape, np.float32))
    assert fn(*(lb.asarray(a) for a in args), out=out) is out
    check(np.asarray(out), want, tol, K=K)


# (op, which input is `out`): documented in place for norms, activations, rope, add/mul
INPLACE = [("rms_norm", 0), ("layer_norm", 0), ("silu", 0), ("gelu", 0), ("rope", 0), ("add", 0), ("add", 1),
           ("mul", 0), ("mul", 1), ("swiglu", 0), ("swiglu", 1), ("geglu", 0), ("geglu", 1)]


@pytest.mark.parametrize("op,arg", INPLACE)
def test_in_place(isa, rng, op, arg):
    fn, args, want, tol, K = _cases(rng)[op]
    args = [np.array(a) for a in args]
    if op in ("swiglu", "geglu"):  # activations, though the doc names only norms/activations/rope/add/mul
        try:
            got = fn(*args, out=args[arg])
        except ValueError:
            return  # refusing is acceptable; a wrong result is not
    else:
        got = fn(*args, out=args[arg])
    assert got is args[arg]
    check(args[arg], want, tol, K=K)


@pytest.mark.parametrize("op", ["softmax"])
def test_in_place_softmax_is_right_or_refused(isa, rng, op):
    # softmax is row-wise like the norms, but the doc does not list it among the in-place ops
    fn, args, want, tol, K = _cases(rng)[op]
    x = np.array(args[0])
    try:
        fn(x, out=x)
    except ValueError:
        return
    check(x, want, tol)


@pytest.mark.parametrize("op", ["matmul", "linear", "attention"])
def test_out_exactly_an_input_of_a_non_elementwise_op_raises(rng, op):
    fn, args, want, tol, K = _cases(rng)[op]
    args = list(args)
    if op == "linear":
        args[0] = rand(rng, (33, 33))
    with pytest.raises(ValueError, match="out"):
        fn(*args, out=args[0])


@pytest.mark.parametrize("op", OPS)
def test_out_partly_overlapping_an_input_raises(rng, op):
    fn, args, want, tol, K = _cases(rng)[op]
    a0 = args[0]
    if a0.dtype != np.float32:  # embedding: overlap the table instead
        buf = np.zeros(want.size + args[1].size, np.float32)
        table = buf[: args[1].size].reshape(args[1].shape)
        table[...] = args[1]
        out = buf[1 : 1 + want.size].reshape(want.shape)
        with pytest.raises(ValueError, match="out"):
            fn(a0, table, out=out)
        return
    n = max(a0.size, want.size)
    buf = np.zeros(n + 1, np.float32)
    x = buf[: a0.size].reshape(a0.shape)
    x[...] = a0
    out = buf[1 : 1 + want.size].reshape(want.shape)
    with pytest.raises(ValueError, match="out"):
        fn(x, *args[1:], out=out)


def _bad_out(kind, shape):
    if kind == "shape":
        return np.zeros(shape[:-1] + (shape[-1] + 1,), np.float32), ValueError
    if kind == "ndim":
        return np.zeros((1,) + shape, np.float32), ValueError
    if kind == "dtype":
        return np.zeros(shape, np.float64), TypeError
    if kind == "float16":
        return np.zeros(shape, np.float16), TypeError
    if kind == "noncontiguous":
        return np.zeros(shape[:-1] + (2 * shape[-1],), np.float32)[..., ::2], ValueError
    a = np.zeros(shape, np.float32)
    a.setflags(write=False)
    return a, ValueError


@pytest.mark.parametrize("kind", ["shape", "ndim", "dtype", "float16", "noncontiguous", "readonly"])
@pytest.mark.parametrize("op", OPS)
def test_bad_out_raises(rng, op, kind):
    fn, args, want, tol, K = _cases(rng)[op]
    out, exc = _bad_out(kind, want.shape)
    with pytest.raises(exc, match="out"):
        fn(*args, out=out)


# ---- Bad inputs: each raises the documented exception, naming the argument -----------------------

f32, f64, i32 = np.float32, np.float64, np.int32
X = np.ones((3, 8), f32)
H3 = np.ones((4, 2, 8), f32)  # (T, H, hd)


def ones(*shape, dtype=f32):
    return np.ones(shape, dtype)



def _bad(name, call, exc, match):
    return pytest.param(call, exc, match, id=name)


BAD = [
    _bad("rms_norm-x-float64", lambda: ops.rms_norm(X.astype(f64)), TypeError, r"\bx\b"),
    _bad("rms_norm-x-int32", lambda: ops.rms_norm(X.astype(i32)), TypeError, r"\bx\b"),
    _bad("rms_norm-x-0d", lambda: ops.rms_norm(np.float32(1.0)), ValueError, r"\bx\b"),
    _bad("rms_norm-weight-size", lambda: ops.rms_norm(X, np.ones(9, f32)), ValueError, "weight"),
    _bad("rms_norm-weight-2d", lambda: ops.rms_norm(X, np.ones((1, 8), f32)), ValueError, "weight"),
    _bad("rms_norm-weight-float64", lambda: ops.rms_norm(X, np.ones(8)), TypeError, "weight"),
    _bad("layer_norm-x-float64", lambda: ops.layer_norm(X.astype(f64)), TypeError, r"\bx\b"),
    _bad("layer_norm-weight-size", lambda: ops.layer_norm(X, np.ones(7, f32)), ValueError, "weight"),
    _bad("layer_norm-bias-size", lambda: ops.layer_norm(X, np.ones(8, f32), np.ones(16, f32)), ValueError, "bias"),
    _bad("layer_norm-bias-int32", lambda: ops.layer_norm(X, None, np.ones(8, i32)), TypeError, "bias"),
    _bad("softmax-x-float64", lambda: ops.softmax(X.astype(f64)), TypeError, r"\bx\b"),
    _bad("softmax-x-int32", lambda: ops.softmax(X.astype(i32)), TypeError, r"\bx\b"),
    # NumPy raises AxisError, both a ValueError and an IndexError; either is accepted here
    _bad("softmax-axis", lambda: ops.softmax(X, axis=2), (ValueError, IndexError), "axis"),
    _bad("softmax-axis-neg", lambda: ops.softmax(X, axis=-3), (ValueError, IndexError), "axis"),
    _bad("silu-x-float64", lambda: ops.silu(X.astype(f64)), TypeError, r"\bx\b"),
    _bad("silu-x-int32", lambda: ops.silu(X.astype(i32)), TypeError, r"\bx\b"),
    _bad("gelu-x-int32", lambda: ops.gelu(X.astype(i32)), TypeError, r"\bx\b"),
    _bad("gelu-approximate", lambda: ops.gelu(X, approximate="sigmoid"), ValueError, "approximate"),
    _bad("swiglu-up-shape", lambda: ops.swiglu(X, np.ones((3, 9), f32)), ValueError, r"\bup\b"),
    _bad("swiglu-up-float64", lambda: ops.swiglu(X, np.ones((3, 8))), TypeError, r"\bup\b"),
    _bad("swiglu-gate-int32", lambda: ops.swiglu(X.astype(i32), X), TypeError, "gate"),
    _bad("swiglu-odd-fused", lambda: ops.swiglu(np.ones((3, 7), f32)), ValueError, "gate"),
    _bad("geglu-up-shape", lambda: ops.geglu(X, np.ones((2, 8), f32)), ValueError, r"\bup\b"),
    _bad("geglu-approximate", lambda: ops.geglu(X, X, approximate="fast"), ValueError, "approximate"),
    _bad("geglu-odd-fused", lambda: ops.geglu(np.ones((1,), f32)), ValueError, "gate"),
    _bad("rope-x-2d", lambda: ops.rope(X), ValueError, r"\bx\b"),
    _bad("rope-x-5d", lambda: ops.rope(np.ones((1, 1, 1, 1, 2), f32)), ValueError, r"\bx\b"),
    _bad("rope-x-float64", lambda: ops.rope(H3.astype(f64)), TypeError, r"\bx\b"),
    _bad("rope-rotary_dim-odd", lambda: ops.rope(H3, rotary_dim=3), ValueError, "rotary_dim"),
    _bad("rope-rotary_dim-too-big", lambda: ops.rope(H3, rotary_dim=10), ValueError, "rotary_dim"),
    _bad("rope-hd-odd", lambda: ops.rope(np.ones((2, 1, 5), f32)), ValueError, "rotary_dim|hd|head"),
    _bad("rope-positions-length", lambda: ops.rope(H3, np.arange(5)), ValueError, "positions"),
    _bad("rope-positions-batch", lambda: ops.rope(ones(2, 4, 2, 8), ones(3, 4, dtype=np.int64)), ValueError,
         "positions"),
    _bad("rope-positions-float", lambda: ops.rope(H3, np.arange(4.0)), TypeError, "positions"),
    _bad("rope-scaling-unknown", lambda: ops.rope(H3, scaling={"rope_type": "yarn-ish", "factor": 2.0}), ValueError,
         "scaling|yarn-ish"),
    _bad("rope-scaling-not-dict", lambda: ops.rope(H3, scaling="linear"), TypeError, "scaling"),
    _bad("rope_inv_freq-odd", lambda: ops.rope_inv_freq(5), ValueError, "rotary_dim"),
    _bad("rope_inv_freq-scaling-unknown", lambda: ops.rope_inv_freq(8, scaling={"rope_type": "ntk-ish"}), ValueError,
         "scaling|ntk-ish"),
    _bad("embedding-id-V", lambda: ops.embedding(np.array([0, 4]), np.ones((4, 8), f32)), IndexError, r"\b4\b|ids"),
    _bad("embedding-id-negative", lambda: ops.embedding(np.array([-1], i32), ones(4, 8)), IndexError, r"-1|ids"),
    _bad("embedding-ids-float", lambda: ops.embedding(np.array([0.0, 1.0]), np.ones((4, 8), f32)), TypeError, "ids"),
    _bad("embedding-table-1d", lambda: ops.embedding(np.array([0]), np.ones(8, f32)), ValueError, "table"),
    _bad("embedding-table-int32", lambda: ops.embedding(np.array([0]), np.ones((4, 8), i32)), TypeError, "table"),
    _bad("embedding-table-float64", lambda: ops.embedding(np.array([0]), np.ones((4, 8))), TypeError, "table"),
    _bad("add-shapes", lambda: ops.add(X, np.ones(7, f32)), ValueError, "broadcast|shape"),
    _bad("add-int32", lambda: ops.add(X, X.astype(i32)), TypeError, r"\bb\b"),
    _bad("mul-float64", lambda: ops.mul(X.astype(f64), X), TypeError, r"\ba\b"),
    _bad("mul-shapes", lambda: ops.mul(np.ones((2, 3), f32), np.ones((3, 2), f32)), ValueError, "broadcast|shape"),
    _bad("matmul-K", lambda: ops.matmul(X, np.ones((7, 2), f32)), ValueError, r"\bK\b|shape"),
    _bad("matmul-K-1d", lambda: ops.matmul(np.ones(3, f32), np.ones(4, f32)), ValueError, r"\bK\b|shape"),
    _bad("matmul-0d", lambda: ops.matmul(np.float32(2.0), X), ValueError, r"\ba\b"),
    _bad("matmul-batch", lambda: ops.matmul(ones(2, 3, 8), ones(3, 8, 2)), ValueError, "batch|broadcast|shape"),
    _bad("matmul-int32", lambda: ops.matmul(X, np.ones((8, 2), i32)), TypeError, r"\bb\b"),
    _bad("matmul-float64", lambda: ops.matmul(X.astype(f64), np.ones((8, 2), f32)), TypeError, r"\ba\b"),
    _bad("linear-weight-K", lambda: ops.linear(X, np.ones((4, 7), f32)), ValueError, "weight"),
    _bad("linear-weight-1d", lambda: ops.linear(X, np.ones(8, f32)), ValueError, "weight"),
    _bad("linear-bias-size", lambda: ops.linear(X, np.ones((4, 8), f32), np.ones(5, f32)), ValueError, "bias"),
    _bad("linear-x-int32", lambda: ops.linear(X.astype(i32), np.ones((4, 8), f32)), TypeError, r"\bx\b"),
    _bad("attention-H-Hkv", lambda: ops.attention(ones(2, 3, 8), ones(2, 2, 8), ones(2, 2, 8)), ValueError,
         "Hkv|heads"),
    _bad("attention-T>S", lambda: ops.attention(ones(3, 2, 8), ones(2, 2, 8), ones(2, 2, 8)), ValueError,
         r"\bT\b|\bS\b"),
    _bad("attention-hd", lambda: ops.attention(H3, ones(4, 2, 4), ones(4, 2, 8)), ValueError, r"\bk\b"),
    _bad("attention-v-S", lambda: ops.attention(H3, H3, np.ones((5, 2, 8), f32)), ValueError, r"\bv\b"),
    _bad("attention-v-Hkv", lambda: ops.attention(H3, H3, np.ones((4, 1, 8), f32)), ValueError, r"\bv\b"),
    _bad("attention-q-2d", lambda: ops.attention(X, H3, H3), ValueError, r"\bq\b"),
    _bad("attention-k-ndim", lambda: ops.attention(H3, np.ones((1, 4, 2, 8), f32), H3), ValueError, r"\bk\b"),
    _bad("attention-batch", lambda: ops.attention(H3[None], ones(2, 4, 2, 8), ones(2, 4, 2, 8)), ValueError,
         r"\bk\b|\bB\b|batch"),
    _bad("attention-q-float64", lambda: ops.attention(H3.astype(f64), H3, H3), TypeError, r"\bq\b"),
    _bad("attention-v-int32", lambda: ops.attention(H3, H3, H3.astype(i32)), TypeError, r"\bv\b"),
    _bad("attention-mask-shape", lambda: ops.attention(H3, H3, H3, mask=np.zeros((4, 5), f32)), ValueError, "mask"),
    _bad("attention-mask-bool", lambda: ops.attention(H3, H3, H3, mask=np.ones((4, 4), bool)), TypeError, "mask"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_docstring_examples():
    result = doctest.testmod(ops, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("T,offset,theta", [(3000, 0, 10000.0), (1300, 120000, 1e6)])
@pytest.mark.parametrize("explicit", [False, True])
def test_rope_long_runs_of_consecutive_positions(isa, rng, T, offset, theta, interleaved, explicit):
    # Runs of consecutive positions advance cos/sin by angle addition, re-anchored every 256 steps:
    # long runs, large offsets and a run broken in the middle stay at float rounding.
    x = rng.standard_normal((T, 2, 64), dtype=np.float32)
    if explicit:
        pos = offset + np.arange(T, dtype=np.int64)
        pos[T // 3:] += 17  # a jump: the run restarts from an exact sincos
        got = lb.ops.rope(x, pos, theta=theta, interleaved=interleaved)
        want = ref.rope(x.astype(np.float64), pos, theta=theta, interleaved=interleaved)
    else:
        got = lb.ops.rope(x, offset=offset, theta=theta, interleaved=interleaved)
        want = ref.rope(x.astype(np.float64), offset=offset, theta=theta, interleaved=interleaved)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()

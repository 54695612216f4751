"""The state-space kernels (lb.ops.causal_conv1d, selective_scan, ssd_scan, rms_norm_gated) against the
NumPy float64 references in tests/ref/ssm.py, against each other (chunked SSD == the sequential
recurrence, prefill + decode steps == one call) and against transformers' own torch functions.

Tolerance: an element passes when |got - ref| <= TOL * (max|ref| + |ref|). The kernels run in float32
(unit roundoff 2**-24 ~ 6e-8). A scan step rounds a handful of times and the state's decay is < 1, so
the error a token leaves behind fades; what can pile up is ~ (memory length + N) roundings, with a
memory of at most T = 300 tokens here and N <= 16 (dot products of N terms, which cancel, hence the
max|ref| scale). That is ~ 3e-5 in the worst case; 1e-4 leaves a factor of 3 and still catches any
wrong term (those are O(1)).
"""

from __future__ import annotations

import numpy as np
import pytest

import lmblocks as lb
from lmblocks import ops
from ref import ssm as ref

TOL = 1e-5


def close(got, want, tol=TOL):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = np.abs(want).max(initial=0.0)
    err = np.abs(got - want)
    bound = tol * (scale + np.abs(want))
    assert np.all(err <= bound), f"max error {err.max():.3g} (scale {scale:.3g}) at {np.unravel_index(err.argmax(), err.shape)}"


def f32(a):
    return np.ascontiguousarray(a, np.float32)


def inv_softplus(y):
    return y + np.log(-np.expm1(-y))


# ---- Inputs shaped like a model's (transformers' initialisations) ------------------------------------


def mamba_inputs(rng, T, Dm, N):
    """x, dt, A, B, C, D, z, dt_bias as MambaMixer would feed its scan: A = -exp(A_log) with
    A_log = log(1..N) jittered, dt_bias = softplus^-1 of dt in [1e-3, 0.1] (log-uniform)."""
    A = -np.exp(np.log(np.arange(1, N + 1))[None, :] + 0.1 * rng.standard_normal((Dm, N)))
    dt_bias = inv_softplus(np.exp(rng.uniform(np.log(1e-3), np.log(0.1), Dm)))
    return dict(x=f32(rng.standard_normal((T, Dm))), dt=f32(0.5 * rng.standard_normal((T, Dm))), A=f32(A),
                B=f32(rng.standard_normal((T, N))), C=f32(rng.standard_normal((T, N))),
                D=f32(rng.standard_normal(Dm)), z=f32(rng.standard_normal((T, Dm))), dt_bias=f32(dt_bias))


def mamba2_inputs(rng, T, H, P, G, N, d_per_p=False):
    """x, dt, A, B, C, D, dt_bias as Mamba2Mixer feeds mamba2_chunk_scan: A_log = log(1..H) jittered,
    dt_bias = softplus^-1 of dt in [1e-3, 0.1]; dt itself spread enough that some heads forget fast."""
    A = -np.exp(np.log(np.arange(1, H + 1)) + 0.1 * rng.standard_normal(H))
    dt_bias = inv_softplus(np.exp(rng.uniform(np.log(1e-3), np.log(0.1), H)))
    D = rng.standard_normal((H, P) if d_per_p else H)
    return dict(x=f32(rng.standard_normal((T, H, P))), dt=f32(rng.standard_normal((T, H))), A=f32(A),
                B=f32(rng.standard_normal((T, G, N))), C=f32(rng.standard_normal((T, G, N))), D=f32(D),
                dt_bias=f32(dt_bias))


TS = [1, 7, 64, 300]


# ---- causal_conv1d ------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("C,K,S", [(5, 4, 3), (37, 4, 4), (19, 3, 2), (8, 1, 0)])
@pytest.mark.parametrize("bias,activation", [(True, "silu"), (False, None)])
def test_causal_conv1d(isa, T, C, K, S, bias, activation):
    rng = np.random.default_rng(T * 100 + C)
    x, w = f32(rng.standard_normal((T, C))), f32(rng.standard_normal((C, K)))
    b = f32(rng.standard_normal(C)) if bias else None
    state = f32(rng.standard_normal((C, S)))
    want, want_state = ref.causal_conv1d(x, w, b, state, activation)
    got = ops.causal_conv1d(x, w, b, state=state, activation=activation)
    close(got, want)
    np.testing.assert_array_equal(state, want_state.astype(np.float32))  # a copy of inputs: exact


def test_causal_conv1d_no_state():
    rng = np.random.default_rng(1)
    x, w = f32(rng.standard_normal((9, 6))), f32(rng.standard_normal((6, 4)))
    close(ops.causal_conv1d(x, w), ref.causal_conv1d(x, w)[0])


# ---- selective_scan (Mamba) -----------------------------------------------------------------------------


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("Dm,N", [(5, 16), (37, 13), (64, 16)])
def test_selective_scan(isa, T, Dm, N):
    rng = np.random.default_rng(T * 1000 + Dm + N)
    a = mamba_inputs(rng, T, Dm, N)
    h0 = f32(rng.standard_normal((Dm, N)))
    state = h0.copy()
    want, want_state = ref.selective_scan(**a, state=h0)
    close(ops.selective_scan(**a, state=state), want)
    close(state, want_state)


@pytest.mark.parametrize("drop", ["D", "z", "dt_bias", "all"])
def test_selective_scan_optional(isa, drop):
    rng = np.random.default_rng(3)
    a = mamba_inputs(rng, 11, 21, 16)
    for k in (["D", "z", "dt_bias"] if drop == "all" else [drop]):
        a[k] = None
    close(ops.selective_scan(**a), ref.selective_scan(**a)[0])
    a = {**a, "dt": np.abs(a["dt"]), "dt_bias": None}  # without softplus dt must stay >= 0 to decay
    close(ops.selective_scan(**a, dt_softplus=False), ref.selective_scan(**a, dt_softplus=False)[0])


# ---- ssd_scan (Mamba2) ------------------------------------------------------------------------------------

SSD_SHAPES = [(4, 5, 1, 16), (6, 8, 2, 13), (2, 16, 2, 16)]  # (H, P, G, N)


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("chunk_size", [0, 1, 16, 64, 256])
@pytest.mark.parametrize("shape", SSD_SHAPES, ids=lambda s: "H%d-P%d-G%d-N%d" % s)
def test_ssd_scan(isa, T, chunk_size, shape):
    H, P, G, N = shape
    rng = np.random.default_rng(T * 7 + H)
    a = mamba2_inputs(rng, T, H, P, G, N, d_per_p=(G == 2))
    h0 = f32(0.5 * rng.standard_normal((H, P, N)))
    state = h0.copy()
    want, want_state = ref.ssd_scan(**a, state=h0)
    close(ops.ssd_scan(**a, state=state, chunk_size=chunk_size), want)
    close(state, want_state)


@pytest.mark.parametrize("chunk_size", [1, 16, 64, 256])
def test_ssd_chunked_equals_sequential(isa, chunk_size):
    """T = 300 crosses chunk boundaries (and ends in a partial chunk) for every chunk size."""
    rng = np.random.default_rng(5)
    a = mamba2_inputs(rng, 300, 6, 8, 2, 13)
    s_seq, s_chunk = np.zeros((6, 8, 13), np.float32), np.zeros((6, 8, 13), np.float32)
    close(ops.ssd_scan(**a, state=s_chunk, chunk_size=chunk_size), ops.ssd_scan(**a, state=s_seq, chunk_size=0))
    close(s_chunk, s_seq)


def test_ssd_long_prefill():
    """Past 32 chunks of 256 with 2 groups the chunk products are made in passes (~16 MiB each)."""
    rng = np.random.default_rng(14)
    a = mamba2_inputs(rng, 33 * 256 + 5, 2, 4, 2, 8)
    s_seq, s_chunk = np.zeros((2, 4, 8), np.float32), np.zeros((2, 4, 8), np.float32)
    close(ops.ssd_scan(**a, state=s_chunk, chunk_size=256), ops.ssd_scan(**a, state=s_seq, chunk_size=0))
    close(s_chunk, s_seq)


def test_views_and_half_inputs(isa):
    """Strided views (x and z sliced out of one projection, as a block has them) and float16 inputs
    are read as their values; the state stays float32."""
    rng = np.random.default_rng(15)
    T, Dm, N = 9, 12, 16
    a = mamba_inputs(rng, T, Dm, N)
    xz = f32(np.concatenate([a["x"], a["z"]], axis=1))
    b = {**a, "x": xz[:, :Dm], "z": xz[:, Dm:], "B": a["B"].astype(np.float16)}
    want = ref.selective_scan(**{**a, "B": b["B"].astype(np.float64)})[0]
    close(ops.selective_scan(**b), want)
    close(ops.causal_conv1d(xz[:, ::2], np.ones((Dm, 3), np.float16)), ref.causal_conv1d(xz[:, ::2], np.ones((Dm, 3)))[0])
    m = mamba2_inputs(rng, T, 4, 6, 2, 8)
    xs = np.concatenate([m["x"], m["x"]], axis=2)[:, :, :6]
    close(ops.ssd_scan(**{**m, "x": xs}, chunk_size=4), ref.ssd_scan(**m)[0])


def test_ssd_options(isa):
    rng = np.random.default_rng(6)
    a = mamba2_inputs(rng, 40, 4, 6, 1, 16)
    a["D"] = a["dt_bias"] = None
    for cs in (0, 16):
        close(ops.ssd_scan(**a, chunk_size=cs), ref.ssd_scan(**a)[0])
        close(ops.ssd_scan(**a, chunk_size=cs, dt_softplus=False, dt_limit=(0.01, 0.5)),
              ref.ssd_scan(**a, dt_softplus=False, dt_limit=(0.01, 0.5))[0])


# ---- State carried across calls: prefill of 37, then 5 one-token steps == one call of 42 -----------------


def test_state_carry(isa):
    rng = np.random.default_rng(7)
    T, split = 42, 37

    def steps(fn, seqs, state):
        """fn on [:split], then one token at a time; returns the outputs concatenated."""
        parts = [fn({k: v[:split] for k, v in seqs.items()}, state)]
        parts += [fn({k: v[t:t + 1] for k, v in seqs.items()}, state) for t in range(split, T)]
        return np.concatenate(parts)

    # causal_conv1d, with a transformers-sized state (C, K)
    x, w, b = f32(rng.standard_normal((T, 10))), f32(rng.standard_normal((10, 4))), f32(rng.standard_normal(10))
    s_one, s_steps = np.zeros((10, 4), np.float32), np.zeros((10, 4), np.float32)
    one = ops.causal_conv1d(x, w, b, state=s_one)
    close(steps(lambda s, st: ops.causal_conv1d(s["x"], w, b, state=st), {"x": x}, s_steps), one)
    np.testing.assert_array_equal(s_steps, s_one)

    # selective_scan
    m = mamba_inputs(rng, T, 12, 16)
    seq = {k: m[k] for k in ("x", "dt", "B", "C", "z")}
    s_one, s_steps = np.zeros((12, 16), np.float32), np.zeros((12, 16), np.float32)
    one = ops.selective_scan(**m, state=s_one)
    got = steps(lambda s, st: ops.selective_scan(**s, A=m["A"], D=m["D"], dt_bias=m["dt_bias"], state=st), seq, s_steps)
    close(got, one)
    close(s_steps, s_one)

    # ssd_scan: a chunked prefill (chunk 16, so 37 ends mid-chunk), then the one-step recurrence
    m = mamba2_inputs(rng, T, 4, 8, 2, 16)
    seq = {k: m[k] for k in ("x", "dt", "B", "C")}
    s_one, s_steps = np.zeros((4, 8, 16), np.float32), np.zeros((4, 8, 16), np.float32)
    one = ops.ssd_scan(**m, state=s_one, chunk_size=16)
    got = steps(lambda s, st: ops.ssd_scan(**s, A=m["A"], D=m["D"], dt_bias=m["dt_bias"], state=st, chunk_size=16),
                seq, s_steps)
    close(got, one)
    close(s_steps, s_one)


# ---- rms_norm_gated -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,group_size", [((7, 48), 24), ((3, 33), None), ((1, 2, 20), 5)])
def test_rms_norm_gated(isa, shape, group_size):
    rng = np.random.default_rng(8)
    x, z = f32(rng.standard_normal(shape)), f32(rng.standard_normal(shape))
    w = f32(rng.standard_normal(shape[-1]))
    close(ops.rms_norm_gated(x, z, w, eps=1e-5, group_size=group_size), ref.rms_norm_gated(x, z, w, 1e-5, group_size))
    close(ops.rms_norm_gated(x, group_size=group_size), ref.rms_norm_gated(x, group_size=group_size))


# ---- Against transformers' own torch functions ---------------------------------------------------------------

torch = pytest.importorskip("torch")


def tt(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def test_conv_vs_transformers():
    from transformers.models.mamba.modeling_mamba import causal_conv1d_fn, causal_conv1d_update

    rng = np.random.default_rng(9)
    T, C, K = 37, 24, 4
    x, w, b = f32(rng.standard_normal((T + 1, C))), f32(rng.standard_normal((C, K))), f32(rng.standard_normal(C))
    want = causal_conv1d_fn(tt(x[:T].T[None]), tt(w), tt(b), activation="silu")[0].T.numpy()
    state = np.zeros((C, K), np.float32)  # transformers' conv cache holds K inputs
    close(ops.causal_conv1d(x[:T], w, b, state=state), want)
    conv_state = tt(np.ascontiguousarray(x[T - K:T].T[None]))  # what update_conv_state leaves after prefill
    want = causal_conv1d_update(tt(x[T:].T[None]), conv_state, tt(w), tt(b), activation="silu")[0].T.numpy()
    close(ops.causal_conv1d(x[T:], w, b, state=state), want)
    np.testing.assert_array_equal(state, conv_state[0].numpy())


def test_selective_scan_vs_transformers():
    from transformers.models.mamba.modeling_mamba import mamba_selective_scan, mamba_selective_state_update

    rng = np.random.default_rng(10)
    T, Dm, N = 30, 20, 16
    a = mamba_inputs(rng, T + 1, Dm, N)
    pre = {k: (v[:T] if v.ndim == 2 and k not in ("A",) else v) for k, v in a.items()}
    y, last = mamba_selective_scan(tt(pre["x"].T[None]), tt(pre["dt"].T[None]), tt(a["A"]), tt(pre["B"].T[None]),
                                   tt(pre["C"].T[None]), D=tt(a["D"]), z=tt(pre["z"].T[None]),
                                   delta_bias=tt(a["dt_bias"]), delta_softplus=True, return_last_state=True)
    state = np.zeros((Dm, N), np.float32)
    close(ops.selective_scan(**pre, state=state), y[0].T.numpy())
    close(state, last[0].numpy())
    st = last.clone()
    y1 = mamba_selective_state_update(st, tt(a["x"][T:]), tt(a["dt"][T:]), tt(a["A"]), tt(a["B"][T:]),
                                      tt(a["C"][T:]), tt(a["D"]), z=tt(a["z"][T:]), dt_bias=tt(a["dt_bias"]),
                                      dt_softplus=True)
    step = {k: (v[T:] if v.ndim == 2 and k != "A" else v) for k, v in a.items()}
    close(ops.selective_scan(**step, state=state), y1.numpy())
    close(state, st[0].numpy())


@pytest.mark.parametrize("G", [1, 2])
def test_ssd_vs_transformers(G):
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan, mamba2_selective_state_update

    rng = np.random.default_rng(11 + G)
    T, H, P, N, L = 45, 4, 8, 16, 16  # 45 pads the last chunk
    a = mamba2_inputs(rng, T + 1, H, P, G, N)
    h0 = f32(0.3 * rng.standard_normal((H, P, N)))
    y, final = mamba2_chunk_scan(tt(a["x"][None, :T]), tt(a["dt"][None, :T]), tt(a["A"]), tt(a["B"][None, :T]),
                                 tt(a["C"][None, :T]), chunk_size=L, D=tt(a["D"]), dt_bias=tt(a["dt_bias"]),
                                 initial_states=tt(h0[None]), dt_softplus=True, return_final_states=True)
    state = h0.copy()
    pre = {k: (a[k][:T]) for k in ("x", "dt", "B", "C")}
    close(ops.ssd_scan(**pre, A=a["A"], D=a["D"], dt_bias=a["dt_bias"], state=state, chunk_size=L), y[0].numpy())
    close(state, final[0].numpy())
    # The one-token step, called as Mamba2Mixer calls it (per-(head, p) expanded dt, A, D, dt_bias).
    st = final.clone()
    y1 = mamba2_selective_state_update(
        st, tt(a["x"][T:]), tt(a["dt"][T:])[..., None].expand(-1, -1, P),
        tt(a["A"])[:, None, None].expand(-1, P, N), tt(a["B"][T:]), tt(a["C"][T:]),
        tt(a["D"])[:, None].expand(-1, P), dt_bias=tt(a["dt_bias"])[:, None].expand(-1, P), dt_softplus=True)
    step = {k: (a[k][T:]) for k in ("x", "dt", "B", "C")}
    close(ops.ssd_scan(**step, A=a["A"], D=a["D"], dt_bias=a["dt_bias"], state=state), y1.numpy())
    close(state, st[0].numpy())


def test_rms_norm_gated_vs_transformers():
    from transformers.models.mamba2.modeling_mamba2 import MambaRMSNormGated

    rng = np.random.default_rng(12)
    x, z = f32(rng.standard_normal((5, 64))), f32(rng.standard_normal((5, 64)))
    norm = MambaRMSNormGated(64, group_size=32, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(tt(f32(rng.standard_normal(64))))
        want = norm(tt(x), tt(z)).numpy()
    close(ops.rms_norm_gated(x, z, norm.weight.detach().numpy(), eps=1e-5, group_size=32), want)


# ---- Bad inputs ---------------------------------------------------------------------------------------------


def test_bad_inputs():
    rng = np.random.default_rng(13)
    x, w = f32(rng.standard_normal((6, 8))), f32(rng.standard_normal((8, 4)))
    with pytest.raises(ValueError, match="weight has shape"):
        ops.causal_conv1d(x, w[:7])
    with pytest.raises(ValueError, match="S >= K - 1"):
        ops.causal_conv1d(x, w, state=np.zeros((8, 2), np.float32))
    with pytest.raises(TypeError, match="state has dtype"):
        ops.causal_conv1d(x, w, state=np.zeros((8, 3)))
    with pytest.raises(ValueError, match="read-only"):
        s = np.zeros((8, 3), np.float32)
        s.setflags(write=False)
        ops.causal_conv1d(x, w, state=s)
    with pytest.raises(ValueError, match="contiguous"):
        ops.causal_conv1d(x, w, state=np.zeros((3, 8), np.float32).T)
    with pytest.raises(ValueError, match="state overlaps"):
        buf = np.zeros(48, np.float32)
        ops.causal_conv1d(buf.reshape(6, 8), w, state=buf[24:].reshape(8, 3))
    with pytest.raises(TypeError, match="state must be"):
        ops.causal_conv1d(x, w, state=[[0.0] * 3] * 8)
    with pytest.raises(ValueError, match="activation"):
        ops.causal_conv1d(x, w, activation="relu")
    with pytest.raises(TypeError, match="x has dtype"):
        ops.causal_conv1d(x.astype(np.int32), w)

    m = mamba_inputs(rng, 6, 8, 16)
    for k, bad in [("A", m["A"][:, :5].T), ("B", m["B"][:5]), ("C", m["C"][:, :3]), ("dt", m["dt"].T),
                   ("D", m["D"][:3]), ("z", m["z"][:, :2]), ("dt_bias", m["dt_bias"][None])]:
        with pytest.raises(ValueError, match=f"{k} has shape"):
            ops.selective_scan(**{**m, k: bad})
    with pytest.raises(ValueError, match=r"state has shape .*\(D, N\)"):
        ops.selective_scan(**m, state=np.zeros((16, 8), np.float32))

    s = mamba2_inputs(rng, 6, 4, 8, 2, 16)
    for k, bad in [("dt", s["dt"][:, :3]), ("A", s["A"][:2]), ("C", s["C"][:, :1]), ("D", s["D"][None]),
                   ("dt_bias", s["dt_bias"][:3])]:
        with pytest.raises(ValueError, match=f"{k} has shape"):
            ops.ssd_scan(**{**s, k: bad})
    with pytest.raises(ValueError, match="multiple"):
        ops.ssd_scan(**{**s, "B": f32(rng.standard_normal((6, 3, 16))), "C": f32(rng.standard_normal((6, 3, 16)))})
    with pytest.raises(ValueError, match=r"x has shape \(6, 32\); expected \(T, H, P\)"):
        ops.ssd_scan(**{**s, "x": s["x"].reshape(6, 32)})
    with pytest.raises(ValueError, match="chunk_size"):
        ops.ssd_scan(**s, chunk_size=-1)
    with pytest.raises(ValueError, match=r"state has shape .*\(H, P, N\)"):
        ops.ssd_scan(**s, state=np.zeros((4, 16, 8), np.float32))
    with pytest.raises(ValueError, match="group_size"):
        ops.rms_norm_gated(x, group_size=3)
    with pytest.raises(ValueError, match="z has shape"):
        ops.rms_norm_gated(x, x[:, :4])


def test_tensor_in_tensor_out():
    x, w = np.ones((3, 2), np.float32), np.ones((2, 2), np.float32)
    assert isinstance(ops.causal_conv1d(lb.asarray(x), w), lb.Tensor)


def test_doctests():
    import doctest

    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for fn in (ops.causal_conv1d, ops.selective_scan, ops.ssd_scan, ops.rms_norm_gated):
        for test in finder.find(fn, fn.__name__, globs={}):
            runner.run(test)
    assert runner.failures == 0 and runner.tries >= 4

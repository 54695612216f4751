"""The Mixture-of-Experts block (lb._core.nn.MoE) against a NumPy float64 reference, and the MoE
architectures (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, Granite MoE) against Hugging Face transformers
(PyTorch CPU, float32) on tiny random checkpoints (tests/hf_moe.py): logits, router choices, decode
against full recompute; quantized experts against their dequantized twin through the repacked kernels;
a GGUF written with llama.cpp's names against transformers and llama.cpp."""

import json
import shutil

import numpy as np
import pytest

import lmblocks as lb
from lmblocks.io.gguf_writer import write_gguf
from lmblocks.quant import dequantize
from test_qlinear import int8_activations

nn = lb._core.nn

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_moe  # noqa: E402  (needs torch)

T = 37  # prompt length: not a multiple of anything the kernels tile by


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


# ---- the block against NumPy float64 ---------------------------------------------------------------


def _act(h, name):
    if name == "silu":
        return h / (1.0 + np.exp(-h))
    if name == "gelu_tanh":
        return 0.5 * h * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (h + 0.044715 * h ** 3)))
    raise ValueError(name)


def moe_ref(x, router, gate, up, down, k, *, scoring="softmax", norm_topk=True, activation="silu",
            router_bias=None, selection_bias=None, routed_scale=1.0, shared=None, shared_gate=None):
    """Float64 MoE from the definitions (weights as float64 arrays). Returns (out (N, D), chosen (N, k),
    gap): gap is, per token, how far the k-th choice's key is above the (k+1)-th (inf when k = E)."""
    x = x.astype(np.float64)
    logits = x @ router.T + (0.0 if router_bias is None else router_bias)
    if scoring == "softmax":
        e = np.exp(logits - logits.max(1, keepdims=True))
        s = e / e.sum(1, keepdims=True)
    else:
        s = 1.0 / (1.0 + np.exp(-logits))
    # the key experts are ranked by: logits for softmax (the same order as s), else s + selection_bias
    if scoring == "softmax" and selection_bias is None:
        key = logits
    else:
        key = s + (0.0 if selection_bias is None else selection_bias)
    order = np.argsort(-key, axis=1, kind="stable")
    chosen = order[:, :k]
    ranked = np.take_along_axis(key, order, 1)
    gap = ranked[:, k - 1] - ranked[:, k] if k < key.shape[1] else np.full(len(x), np.inf)
    w = np.take_along_axis(s, chosen, 1)
    if norm_topk:
        w = w / w.sum(1, keepdims=True)
    w = w * routed_scale
    out = np.zeros_like(x)
    for t in range(len(x)):
        for j, e in enumerate(chosen[t]):
            h = _act(x[t] @ (up[e] if gate is None else gate[e]).T, activation)
            if gate is not None:
                h = h * (x[t] @ up[e].T)
            out[t] += w[t, j] * (h @ down[e].T)
    if shared is not None:
        g, u, d = shared
        sh = (_act(x @ g.T, activation) * (x @ u.T)) @ d.T
        if shared_gate is not None:
            sh = sh / (1.0 + np.exp(-(x @ shared_gate.reshape(-1))))[:, None]
        out += sh
    return out, chosen, gap


def _clear_inputs(rng, w, N, D, k, **kw):
    """x (N, D) without near-ties: rows whose k-th and (k+1)-th expert keys lie within 1e-4 (float32 logits
    are good to ~1e-6 here) are drawn again, so the reference's choice is the only right one."""
    x = rng.standard_normal((N, D), dtype=np.float32)
    while True:
        _, _, gap = _ref(w, x, k, **kw)
        close = gap < 1e-4
        if not close.any():
            return x
        x[close] = rng.standard_normal((int(close.sum()), D), dtype=np.float32)


def _random_block(rng, E, D, F, *, plain=False, shared=False):
    f = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    w = dict(router=f(E, D), gate=None if plain else f(E, F, D), up=f(E, F, D), down=f(E, D, F))
    if shared:
        w["shared"] = (f(F + 3, D), f(F + 3, D), f(D, F + 3))
        w["shared_gate"] = f(1, D)
    return w


def _block(w, k, **kw):
    shared = nn.MLP(*w["shared"]) if "shared" in w else None
    return nn.MoE(w["router"], w["gate"], w["up"], w["down"], k, shared=shared,
                  shared_gate=w.get("shared_gate"), **kw)


def _f64(a):
    return None if a is None else (tuple(_f64(t) for t in a) if isinstance(a, tuple) else
                                   dequantize(a).astype(np.float64) if isinstance(a, lb.Tensor) else
                                   np.asarray(a, np.float64))


def _ref(w, x, k, **kw):
    return moe_ref(x, _f64(w["router"]), _f64(w["gate"]), _f64(w["up"]), _f64(w["down"]), k,
                   shared=_f64(w.get("shared")), shared_gate=_f64(w.get("shared_gate")), **kw)


CASES = {  # name: (block settings, extra reference settings)
    "softmax-normalized": {},
    "softmax-raw": dict(norm_topk=False),
    "sigmoid-normalized-biases-scaled": dict(scoring="sigmoid", router_bias="r", selection_bias="s", routed_scale=2.5),
    "sigmoid-raw": dict(scoring="sigmoid", norm_topk=False),
    "gelu-plain-experts": dict(activation="gelu_tanh", plain=True),
    "shared-expert-with-gate": dict(shared=True, norm_topk=False),
}


@pytest.mark.parametrize("N", [1, 37])
@pytest.mark.parametrize("case", CASES)
def test_block_equals_float64_reference(rng, case, N):
    E, k, D, F = 5, 3, 48, 40
    kw = dict(CASES[case])
    w = _random_block(rng, E, D, F, plain=kw.pop("plain", False), shared=kw.pop("shared", False))
    if kw.get("router_bias"):
        kw["router_bias"] = (rng.standard_normal(E) * 0.5).astype(np.float32)
        kw["selection_bias"] = (rng.standard_normal(E) * 0.2).astype(np.float32)
    kw64 = {n: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for n, v in kw.items()}
    x = _clear_inputs(rng, w, N, D, k, **kw64)
    want, _, _ = _ref(w, x, k, **kw64)
    got = _block(w, k, **kw)(x)
    assert got.shape == (N, D) and got.dtype == np.float32
    assert rel_err(got, want) <= 1e-5, case


def test_block_with_every_expert_chosen_and_top1(rng):
    """k = E (every token to every expert) and k = 1 (no weights to mix: raw weight 1 when normalized)."""
    E, D, F = 4, 33, 17
    w = _random_block(rng, E, D, F)
    for k in (E, 1):
        x = _clear_inputs(rng, w, 9, D, k)
        want, _, _ = _ref(w, x, k)
        assert rel_err(_block(w, k)(x), want) <= 1e-5, k


@pytest.mark.parametrize("dtype,D,F", [("q8_0", 64, 96), ("q4_0", 96, 64), ("q4_k", 256, 256), ("f16", 48, 40),
                                       ("bf16", 48, 40)])
@pytest.mark.parametrize("N", [1, 37])
def test_quantized_experts_against_dequantized_float64(rng, dtype, D, F, N):
    """Experts stored as ggml blocks (or f16/bf16) against x @ dequantize(w) in float64. The activations are
    quantized to int16 per 32 elements on the fast path (tests/test_qlinear.py: at most max|x_b| / 65278 per
    element), which moves the output by ~1e-5 of its scale; with that path off (the reference path) only
    float32 rounding remains. (Measured: <= 6.3e-5 of the output range on the fast path.)"""
    E, k = 5, 3
    w = _random_block(rng, E, D, F, shared=True)
    for name in ("gate", "up", "down"):
        w[name] = lb.quantize(w[name], dtype) if dtype.startswith("q") else lb.asarray(w[name]).astype(dtype)
    x = _clear_inputs(rng, w, N, D, k)
    want, _, _ = _ref(w, x, k)
    block = _block(w, k)
    assert rel_err(block(x), want) <= 2e-4, dtype
    lb.set_activation_quantization(False)
    try:
        assert rel_err(block(x), want) <= 1e-5, dtype
    finally:
        lb.set_activation_quantization(True)


def test_block_properties_and_weights(rng):
    w = _random_block(rng, 5, 48, 40, shared=True)
    b = _block(w, 3, scoring="sigmoid", norm_topk=False, routed_scale=2.0)
    assert (b.kind, b.role, b.n_experts, b.top_k, b.expert_dim) == ("MoE", "moe", 5, 3, 40)
    assert (b.scoring, b.norm_topk, b.routed_scale, b.activation, b.gated) == ("sigmoid", False, 2.0, "silu", True)
    assert b.shared.kind == "MLP" and [n for n, _ in b.named_children] == ["shared"]
    ws = b.weights()
    assert list(ws) == ["router", "gate_proj", "up_proj", "down_proj", "shared_gate"]
    np.testing.assert_array_equal(np.asarray(ws["up_proj"]), w["up"])  # zero-copy views of what was given


def _error_cases(rng):
    E, D, F = 5, 48, 40
    w = _random_block(rng, E, D, F)
    r, g, u, d = w["router"], w["gate"], w["up"], w["down"]
    mlp = nn.MLP(*_random_block(rng, E, D, F, shared=True)["shared"])
    return {
        "top_k > n_experts": (lambda: nn.MoE(r, g, u, d, 6), ValueError, "top_k is 6"),
        "top_k < 1": (lambda: nn.MoE(r, g, u, d, 0), ValueError, "1 <= top_k"),
        "gate F differs from up": (lambda: nn.MoE(r, g[:, :39], u, d, 2), ValueError, "gate_proj has shape (5, 39, 48)"),
        "down is not (E, D, F)": (lambda: nn.MoE(r, g, u, d[:, :, :39], 2), ValueError, "down_proj has shape"),
        "experts' E differs from the router's": (lambda: nn.MoE(r[:4], g, u, d, 2), ValueError, "expected (E, F, D) = (4"),
        "router D differs from the experts'": (lambda: nn.MoE(r[:, :47], g, u, d, 2), ValueError,
                                               "up_proj has shape (5, 40, 48)"),
        "2-D experts": (lambda: nn.MoE(r, g[0], u, d, 2), ValueError, "gate_proj has shape (40, 48)"),
        "unknown scoring": (lambda: nn.MoE(r, g, u, d, 2, scoring="sparsemax"), ValueError, "scoring 'sparsemax'"),
        "unknown activation": (lambda: nn.MoE(r, g, u, d, 2, activation="tanh"), ValueError, "activation 'tanh'"),
        "router_bias shape": (lambda: nn.MoE(r, g, u, d, 2, router_bias=np.zeros(4, np.float32)), ValueError, "router_bias"),
        "selection_bias shape": (lambda: nn.MoE(r, g, u, d, 2, selection_bias=np.zeros((5, 1), np.float32)), ValueError,
                                 "selection_bias"),
        "shared_gate without shared": (lambda: nn.MoE(r, g, u, d, 2, shared_gate=np.zeros((1, D), np.float32)),
                                       ValueError, "shared_gate without"),
        "shared_gate shape": (lambda: nn.MoE(r, g, u, d, 2, shared=mlp, shared_gate=np.zeros((2, D), np.float32)),
                              ValueError, "shared_gate has shape (2, 48)"),
        "shared expert D": (lambda: nn.MoE(r[:, :32], g[:, :, :32], u[:, :, :32], d[:, :32], 2, shared=mlp), ValueError,
                            "shared expert takes 48"),
        "integer experts": (lambda: nn.MoE(r, g.astype(np.int32), u, d, 2), TypeError, "dtype i32"),
        "non-finite routed_scale": (lambda: nn.MoE(r, g, u, d, 2, routed_scale=float("inf")), ValueError, "routed_scale"),
        "input width": (lambda: nn.MoE(r, g, u, d, 2)(np.zeros((3, 47), np.float32)), ValueError, "expected (N, 48)"),
    }


@pytest.mark.parametrize("case", list(_error_cases(np.random.default_rng(0))))
def test_bad_arguments_raise_clear_errors(rng, case):
    fn, exc, words = _error_cases(rng)[case]
    with pytest.raises(exc, match=words.replace("(", r"\(").replace(")", r"\)")):
        fn()


# ---- quantized experts inside a model: the repacked kernels -----------------------------------------


def _tiny_lm(rng, expert_dtype, D, F, E=5, k=2, L=2, V=97, plain=False):
    """Two CausalLMs of L layers (attention + MoE) with the same f32 weights except the experts: stored as
    `expert_dtype` in the first, dequantized to f32 in the twin (`plain`: experts without gate_proj).
    Returns (lm, twin), the first's MoE blocks."""
    f = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    store = (lambda a: lb.quantize(a, expert_dtype)) if expert_dtype.startswith("q") else \
        (lambda a: lb.asarray(a).astype(expert_dtype))
    H = 4
    shared = [dict(attn=[f(D, D) for _ in range(4)], router=f(E, D), norms=(1 + f(D), 1 + f(D)),
                   experts=[None if plain and i == 0 else store(f(*s))
                            for i, s in enumerate(((E, F, D), (E, F, D), (E, D, F)))]) for _ in range(L)]
    embed, head, final = f(V, D), f(V, D), 1 + f(D)
    lms, moes = [], []
    for twin in (False, True):
        layers = []
        for p in shared:
            experts = [lb.asarray(dequantize(t)) if twin and t is not None else t for t in p["experts"]]
            moe = nn.MoE(p["router"], *experts, k)
            layers.append(nn.Layer(nn.Attention(H, H, D // H, *p["attn"]), moe, attn_norm=nn.RMSNorm(p["norms"][0]),
                                   mlp_norm=nn.RMSNorm(p["norms"][1])))
            moes += [] if twin else [moe]
        lms.append(nn.CausalLM(embed, 1.0, nn.Sequential(layers), nn.RMSNorm(final), head))
    return lms, moes


def _logits(lm, ids):
    return lm.forward(lm.make_cache(1, len(ids)), np.array(ids, np.int32), logits="all")


@pytest.mark.parametrize("dtype,D,F", [("q8_0", 64, 96), ("q4_0", 64, 96), ("q4_k", 256, 256), ("q6_k", 256, 256),
                                       ("f16", 64, 96)])
def test_quantized_moe_model_equals_its_dequantized_twin(rng, dtype, D, F):
    """CausalLM repacks each expert's matrix of stacked quantized weights (select(0, e)) for the AVX-512
    kernels, as it does 2-D weights. Bars: tests/test_real_models.py's for the fast path (relative error
    <= 1e-2, top-1 agreement), and float32 rounding for the reference path (activation quantization off)."""
    (lm, twin), moes = _tiny_lm(rng, dtype, D, F)
    # f16/bf16 matrices are always registered (marked for the int16 prefill); ggml blocks where repacked
    want_packed = 3 * 5 if dtype == "f16" or lb._core.quant.packable(dtype) else 0
    assert [m.packed for m in moes] == [want_packed] * len(moes)
    ids = rng.integers(0, 97, T).tolist()
    want = _logits(twin, ids)
    got = _logits(lm, ids)
    assert rel_err(got, want) <= 1e-2 and (got.argmax(1) == want.argmax(1)).mean() >= 0.99, dtype
    lb.set_activation_quantization(False)
    try:
        assert rel_err(_logits(lm, ids), want) <= 1e-5, dtype
    finally:
        lb.set_activation_quantization(True)


@pytest.mark.parametrize("plain", [False, True])
def test_packed_experts_equal_each_token_through_ops_linear(rng, plain):
    """A model's MoE block on repacked q4_0 experts (tokens grouped per expert, experts side by side on the
    pool, gated or plain) against the plain composition: per token and chosen expert, lb.ops.linear on that
    expert's matrix, which reads the same packed weights. N = 1 (decode), 2 and 3 (the row kernels, some
    experts taking every token, some not) and T (the token-tile kernel)."""
    if not lb._core.quant.packable("q4_0"):
        pytest.skip("no packed kernels on this CPU")
    E, k, D, F = 6, 3, 64, 96
    (lm, _), moes = _tiny_lm(rng, "q4_0", D, F, E=E, k=k, plain=plain)  # lm holds the packed weights
    moe = moes[0]
    assert moe.packed == (2 if plain else 3) * E
    w = moe.weights()
    router = np.asarray(w["router"], np.float64)
    for N in (1, 2, 3, T):
        x = rng.standard_normal((N, D)).astype(np.float32)
        logits = x.astype(np.float64) @ router.T
        order = np.argsort(-logits, axis=1, kind="stable")
        ranked = np.take_along_axis(logits, order, 1)
        assert np.all(ranked[:, k - 1] - ranked[:, k] > 1e-4)  # no near-ties: the choice is clear
        p = np.exp(logits - logits.max(1, keepdims=True))
        p = np.take_along_axis(p, order[:, :k], 1)
        p /= p.sum(1, keepdims=True)
        want = np.zeros((N, D))
        for t in range(N):
            xt = x[t:t + 1]
            for j, e in enumerate(order[t, :k]):
                u = lb.ops.linear(xt, w["up_proj"][int(e)])
                h = lb.ops.silu(u) if plain else lb.ops.swiglu(lb.ops.linear(xt, w["gate_proj"][int(e)]), u)
                want[t] += p[t, j] * lb.ops.linear(h, w["down_proj"][int(e)])[0]
        assert rel_err(moe(x), want) <= 1e-5, N
        if N >= 4:  # int8 prefill: x and h quantized to int8 once (NumPy's model: tests/test_qlinear.py).
            # h is float32 in the kernel, float64 here: an element at a rounding boundary may land one
            # step away, which moves the output by up to its d times the largest down weight (`step`).
            want8, step = np.zeros((N, D)), np.zeros(N)
            xq = int8_activations(x)
            silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
            for t in range(N):
                for j, e in enumerate(order[t, :k]):
                    w_up, w_down = (dequantize(w[n][int(e)]).astype(np.float64) for n in ("up_proj", "down_proj"))
                    h = silu(xq[t] @ w_up.T) if plain else \
                        silu(xq[t] @ dequantize(w["gate_proj"][int(e)]).astype(np.float64).T) * (xq[t] @ w_up.T)
                    want8[t] += p[t, j] * (int8_activations(h[None])[0] @ w_down.T)
                    step[t] += p[t, j] * np.abs(h).max() / 127 * np.abs(w_down).max()
            lb.set_activation_bits(8)
            try:
                got8 = moe(x)
            finally:
                lb.set_activation_bits(16)
            err = np.abs(got8 - want8).max(1)
            assert np.all(err <= 1e-5 * np.abs(want8).max() + 2 * step), (N, err, step)
            assert rel_err(got8, want) > 1e-4  # int8 ran: coarser than int16 (<= 1e-5 above)


# ---- architectures against transformers --------------------------------------------------------------

ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe"]


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request, tmp_path_factory):
    """(name, transformers model, our model, ids, folder) for one architecture."""
    folder = tmp_path_factory.mktemp(request.param)
    ref, model = hf_moe.build(request.param, folder), lb.load(folder, verbose=False)
    ids = np.random.default_rng(sum(map(ord, request.param))).integers(0, 300, T).tolist()
    return request.param, ref, model, ids, folder


def test_logits_equal_transformers(tiny):
    name, ref, model, ids, _ = tiny
    assert rel_err(model.logits(ids), hf_moe.hf_logits(ref, ids)) <= 1e-4, name


def test_router_choices_equal_transformers(tiny):
    """Every MoE layer's chosen experts (captured with hooks) are transformers' top-k for every token, and
    its router logits equal transformers'. A token where the two differ is allowed only at a near-tie in
    transformers' logits between its k-th and (k+1)-th expert (none occur in these models: counted)."""
    name, ref, model, ids, _ = tiny
    want = hf_moe.hf_routes(ref, ids)
    h = lb.nn.Hooks()
    h.capture("layers.*.moe.experts")
    h.capture("layers.*.moe.router")
    h.capture("layers.*.moe.expert_weights")
    model.lm.forward(model.new_cache(1, T), np.array(ids, np.int32), logits="all", hooks=h)
    got = {key: value for key, value, _, _ in h.records()}
    assert sorted(int(k.split(".")[1]) for k in got if k.endswith(".experts")) == sorted(want)
    near_ties = 0
    for i, (logits, chosen) in want.items():
        experts, router = got[f"layers.{i}.moe.experts"], got[f"layers.{i}.moe.router"]
        weights = got[f"layers.{i}.moe.expert_weights"]
        assert experts.dtype == np.int32 and experts.shape == chosen.shape and weights.shape == chosen.shape
        assert rel_err(router, logits) <= 1e-4, (name, i)
        k = chosen.shape[1]
        ranked = -np.sort(-logits.astype(np.float64), axis=1)
        gap = ranked[:, k - 1] - ranked[:, k]
        differ = np.any(np.sort(experts, 1) != np.sort(chosen, 1), axis=1)
        assert np.all(gap[differ] <= 1e-5 * np.abs(logits).max()), (name, i, np.flatnonzero(differ))
        near_ties += int(differ.sum())
        assert np.all(weights > 0)
    assert near_ties == 0, f"{near_ties} tokens routed differently at near-ties"


@pytest.mark.parametrize("prefill,n_batch", [(1, 512), (T // 2, 5)])
def test_decode_step_by_step_equals_full_recompute(tiny, prefill, n_batch):
    name, _, model, ids, _ = tiny
    full = model.logits(ids)
    cache = model.new_cache(1, T, n_batch=n_batch)
    rows = [model.lm.forward(cache, np.array(ids[:prefill], np.int32), logits="all")]
    rows += [model.lm.forward(cache, np.array([t], np.int32), logits="all") for t in ids[prefill:]]
    assert rel_err(np.concatenate(rows), full) <= 1e-5, name


def test_greedy_generation_equals_transformers(tiny):
    name, ref, model, ids, _ = tiny
    seq = ids[:5]
    for _ in range(12):
        seq.append(int(np.argmax(hf_moe.hf_logits(ref, seq)[-1])))
    assert model.generate_ids(ids[:5], 12, stop_at_eos=False) == seq[5:], name


def test_blocks_are_moe_blocks_with_the_checkpoint_weights(tiny):
    """The composed model's MoE blocks hold transformers' expert weights (stacked), zero-copy readable."""
    name, ref, model, _, _ = tiny
    for i, router in hf_moe.routers(ref).items():
        moe = model.lm.body[i].mlp
        assert moe.kind == "MoE" and moe.path == f"layers.{i}.moe" and moe.top_k == router.top_k
        experts = (ref.model.layers[i].block_sparse_moe if name == "granitemoe" else ref.model.layers[i].mlp).experts
        F = moe.expert_dim
        gate_up = experts.gate_up_proj.detach().numpy()
        np.testing.assert_array_equal(np.asarray(moe.weights()["gate_proj"]), gate_up[:, :F])
        np.testing.assert_array_equal(np.asarray(moe.weights()["down_proj"]), experts.down_proj.detach().numpy())


def test_transformers_in_memory_names_load_the_same(tiny, tmp_path):
    """A folder with transformers 5's in-memory names (fused experts.gate_up_proj (E, 2F, D), Granite's
    router.weight) gives the same logits as the Hub layout save_pretrained writes."""
    from safetensors.torch import save_file

    name, ref, model, ids, folder = tiny
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    assert any(k.endswith("experts.gate_up_proj") for k in state)
    save_file(state, str(tmp_path / "model.safetensors"))
    np.testing.assert_array_equal(lb.load(tmp_path, verbose=False).logits(ids), model.logits(ids))


@pytest.mark.parametrize("field,value,words", [
    ("num_experts_per_tok", 9, "num_experts_per_tok"),
    ("num_experts_per_tok", 0, "num_experts_per_tok"),
    ("num_local_experts", -1, "num_experts"),
    ("num_local_experts", 1 << 40, "num_experts"),
    ("num_local_experts", "8", "num_experts"),
])
def test_bad_config_raises_format_error_naming_the_field(tmp_path, field, value, words):
    folder = tmp_path / "m"
    hf_moe.build("mixtral", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg[field] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(lb.io.FormatError, match=words):
        lb.load(folder, verbose=False)


@pytest.mark.parametrize("name,field,value", [("qwen2_moe", "mlp_only_layers", [7]),
                                              ("qwen2_moe", "decoder_sparse_step", 0),
                                              ("olmoe", "clip_qkv", 8.0),
                                              ("granitemoe", "logits_scaling", 0.0),
                                              ("qwen3_moe", "moe_intermediate_size", 0)])
def test_bad_arch_fields_raise_format_error(tmp_path, name, field, value):
    folder = tmp_path / name
    hf_moe.build(name, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg[field] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(lb.io.FormatError, match=field):
        lb.load(folder, verbose=False)


# ---- GGUF ----------------------------------------------------------------------------------------------


def _spm_vocab(V):
    """A SentencePiece vocabulary llama.cpp accepts: <unk> <s> </s>, the 256 byte tokens, then letters."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [chr(0x61 + i % 26) * (1 + i // 26) for i in range(V - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (V - 259)
    return [("tokenizer.ggml.model", "string", "llama"), ("tokenizer.ggml.tokens", "array[string]", tokens),
            ("tokenizer.ggml.scores", "array[float32]", [0.0] * V), ("tokenizer.ggml.token_type", "array[int32]", types),
            ("tokenizer.ggml.bos_token_id", "uint32", 1), ("tokenizer.ggml.eos_token_id", "uint32", 2)]


def _meta_order(w, n_heads):
    """q/k rows from Hugging Face's half-split rotary order to Meta's adjacent pairs (llama.cpp's converter
    does this for "llama" files)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_moe_gguf(ref, path, arch, expert_dtype=None):
    """transformers' model as llama.cpp's `arch` GGUF (gguf-py's tensor names and keys: "qwen2moe", "olmoe",
    or "llama" for Mixtral), float32 except the stacked experts when `expert_dtype` (a ggml block type) is given."""
    store = (lambda a: lb.quantize(np.ascontiguousarray(a), expert_dtype)) if expert_dtype else np.ascontiguousarray
    c = ref.config
    F = getattr(c, "moe_intermediate_size", c.intermediate_size)
    u32 = [("context_length", c.max_position_embeddings), ("embedding_length", c.hidden_size),
           ("block_count", c.num_hidden_layers), ("feed_forward_length", c.intermediate_size),
           ("attention.head_count", c.num_attention_heads), ("attention.head_count_kv", c.num_key_value_heads),
           ("expert_count", getattr(c, "num_experts", None) or c.num_local_experts),
           ("expert_used_count", c.num_experts_per_tok), ("expert_feed_forward_length", F)]
    if getattr(c, "shared_expert_intermediate_size", 0):
        u32.append(("expert_shared_feed_forward_length", c.shared_expert_intermediate_size))
    md = [("general.architecture", "string", arch), ("general.name", "string", f"tiny-{arch}"),
          *[(f"{arch}.{k}", "uint32", v) for k, v in u32],
          (f"{arch}.rope.freq_base", "float32", c.rope_parameters["rope_theta"]),
          (f"{arch}.attention.layer_norm_rms_epsilon", "float32", c.rms_norm_eps), *_spm_vocab(c.vocab_size)]
    if arch == "granitemoe":  # llama.cpp's names for Granite's multipliers
        md += [(f"{arch}.{k}", "float32", float(getattr(c, a))) for k, a in (
            ("embedding_scale", "embedding_multiplier"), ("residual_scale", "residual_multiplier"),
            ("attention.scale", "attention_multiplier"), ("logit_scale", "logits_scaling"))]
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    heads = {"q": c.num_attention_heads, "k": c.num_key_value_heads}
    tensors = [("token_embd.weight", sd["model.embed_tokens.weight"]), ("output_norm.weight", sd["model.norm.weight"]),
               ("output.weight", sd["lm_head.weight"])]
    for i in range(c.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        m = p + ("block_sparse_moe." if arch == "granitemoe" else "mlp.")
        gate_up, down = sd[m + "experts.gate_up_proj"], sd[m + "experts.down_proj"]
        tensors += [(b + "attn_norm.weight", sd[p + "input_layernorm.weight"]),
                    (b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])]
        for x in "qkv":
            for kind in ("weight", "bias"):
                t = sd.get(p + f"self_attn.{x}_proj.{kind}")
                if t is not None:
                    permute = arch in ("llama", "granitemoe") and x in heads  # Meta's rope order
                    tensors.append((b + f"attn_{x}.{kind}", _meta_order(t, heads[x]) if permute else t))
            if x in heads and p + f"self_attn.{x}_norm.weight" in sd:  # OLMoE's q/k norms over all heads
                tensors.append((b + f"attn_{x}_norm.weight", sd[p + f"self_attn.{x}_norm.weight"]))
        tensors += [(b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"]),
                    (b + "ffn_gate_inp.weight", sd[m + ("router.weight" if arch == "granitemoe" else "gate.weight")]),
                    (b + "ffn_gate_exps.weight", store(gate_up[:, :F])),
                    (b + "ffn_up_exps.weight", store(gate_up[:, F:])),
                    (b + "ffn_down_exps.weight", store(down))]
        if p + "mlp.shared_expert_gate.weight" in sd:
            tensors.append((b + "ffn_gate_inp_shexp.weight", sd[p + "mlp.shared_expert_gate.weight"].reshape(-1)))
            tensors += [(b + f"ffn_{x}_shexp.weight", sd[p + f"mlp.shared_expert.{x}_proj.weight"])
                        for x in ("gate", "up", "down")]
    write_gguf(path, md, tensors)


def _tiny_gguf(tmp_path_factory, config, arch):
    """(transformers model, GGUF path) of hf_moe's `config` written as llama.cpp's `arch`."""
    folder = tmp_path_factory.mktemp(config)
    ref = hf_moe.build(config, folder / "hf")
    write_moe_gguf(ref, folder / f"tiny-{arch}.gguf", arch)
    return ref, folder / f"tiny-{arch}.gguf"


@pytest.fixture(scope="module")
def qwen2moe_gguf(tmp_path_factory):
    return _tiny_gguf(tmp_path_factory, "qwen2_moe_gguf", "qwen2moe")




def test_mixtral_gguf_is_a_llama_file_with_experts(tmp_path):
    """llama.cpp writes Mixtral as architecture "llama" with llama.expert_count and q/k rows in Meta's order."""
    ref = hf_moe.build("mixtral", tmp_path / "hf")
    path = tmp_path / "tiny-mixtral.gguf"
    write_moe_gguf(ref, path, "llama")
    model = lb.load(path, verbose=False)
    assert model.args.model_type == "mixtral" and model.lm.body[1].mlp.kind == "MoE"
    ids = np.random.default_rng(9).integers(0, 300, T).tolist()
    assert rel_err(model.logits(ids), hf_moe.hf_logits(ref, ids)) <= 1e-4


def test_quantized_gguf_experts_are_read_as_stored(qwen2moe_gguf, tmp_path):
    """Stacked q8_0 experts (3-D ggml tensors, as llama.cpp's quantizer writes ffn_*_exps) are read as stored
    and run through the fast kernels: within the fast path's bar of transformers' float32 logits."""
    ref, _ = qwen2moe_gguf
    path = tmp_path / "tiny-qwen2moe-q8_0.gguf"
    write_moe_gguf(ref, path, "qwen2moe", "q8_0")
    model = lb.load(path, verbose=False)
    moe = model.lm.body[0].mlp
    assert moe.weights()["up_proj"].dtype == "q8_0" and moe.weights()["up_proj"].shape == (6, 32, 64)
    assert moe.packed == (3 * 6 if lb._core.quant.packable("q8_0") else 0)
    ids = np.random.default_rng(8).integers(0, 300, T).tolist()
    assert rel_err(model.logits(ids), hf_moe.hf_logits(ref, ids)) <= 1e-2


# OLMoE as llama.cpp's "olmoe" graph takes it: q_norm and k_norm are both (D,), so Hkv = H and H * hd = D.
hf_moe.CONFIGS["olmoe_gguf"] = dict(hf_moe.CONFIGS["olmoe"], hidden_size=64, num_attention_heads=4,
                                    num_key_value_heads=4, num_experts=6, num_experts_per_tok=2)


@pytest.fixture(scope="module")
def olmoe_gguf(tmp_path_factory):
    return _tiny_gguf(tmp_path_factory, "olmoe_gguf", "olmoe")


# Qwen3-MoE as llama.cpp's "qwen3moe" graph takes it: every layer sparse, head_dim = D / H (the writer
# gives no key_length); per-head q/k norms, top-k renormalized.
hf_moe.CONFIGS["qwen3_moe_gguf"] = dict(hf_moe.CONFIGS["qwen3_moe"], head_dim=12, decoder_sparse_step=1,
                                        mlp_only_layers=[])


@pytest.fixture(scope="module")
def qwen3moe_gguf(tmp_path_factory):
    return _tiny_gguf(tmp_path_factory, "qwen3_moe_gguf", "qwen3moe")


@pytest.fixture(scope="module")
def granitemoe_gguf(tmp_path_factory):
    return _tiny_gguf(tmp_path_factory, "granitemoe", "granitemoe")


@pytest.mark.parametrize("gguf,model_type", [("qwen2moe_gguf", "qwen2_moe"), ("olmoe_gguf", "olmoe"),
                                             ("qwen3moe_gguf", "qwen3_moe"), ("granitemoe_gguf", "granitemoe")])
def test_gguf_logits_equal_transformers(gguf, model_type, request):
    """Qwen2-MoE with its shared expert; OLMoE with q/k norms over all heads (both keep the raw top-k
    weights); Qwen3-MoE with per-head q/k norms and Granite with its four multipliers (both renormalize)."""
    ref, path = request.getfixturevalue(gguf)
    model = lb.load(path, verbose=False)
    moe = model.lm.body[0].mlp
    assert model.args.model_type == model_type and moe.kind == "MoE"
    assert moe.norm_topk == (model_type in ("qwen3_moe", "granitemoe"))
    assert (moe.shared is not None) == (model_type == "qwen2_moe")
    ids = np.random.default_rng(7).integers(0, 300, T).tolist()
    assert rel_err(model.logits(ids), hf_moe.hf_logits(ref, ids)) <= 1e-4


@pytest.mark.parametrize("gguf", ["qwen2moe_gguf", "olmoe_gguf", "qwen3moe_gguf", "granitemoe_gguf"])
def test_llama_cpp_runs_the_gguf_with_our_greedy_tokens(gguf, request):
    """llama.cpp loads the file we wrote; its greedy continuation equals ours, and its logits along the way
    equal ours (teacher-forced on its tokens) within 1e-3 of their range."""
    pytest.importorskip("llama_cpp", reason="llama.cpp's Python binding (make llamacpp) is not installed")
    from test_convert import assert_llama_cpp_agrees

    _, path = request.getfixturevalue(gguf)
    prompts = [np.random.default_rng(s).integers(3, 300, n).tolist() for s, n in ((1, 9), (2, 23))]
    assert_llama_cpp_agrees(lb.load(path, verbose=False), path, prompts, 16, what=gguf)

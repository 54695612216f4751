"""lmblocks.nn: models composed in Python against a NumPy float64 reference written here, a Llama
checkpoint reassembled by hand against transformers and lb.load, random init, writable weights and the
errors raised at construction."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hf_models
import lmblocks as lb
from lmblocks import nn

D, V, T = 40, 53, 11  # awkward sizes

# ---- a float64 reference ----------------------------------------------------------------------------


def rms(x, w, eps, offset=0.0):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (offset + w)


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
    return y * (1 if w is None else w) + (0 if b is None else b)


def rope(x, theta):  # x (T, H, hd), NeoX halves, positions 0..T-1
    hd = x.shape[-1]
    inv = theta ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(x.shape[0])[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)


ACT = {
    "silu": lambda x: x / (1 + np.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2))),
    "relu2": lambda x: np.maximum(x, 0) ** 2,
    "relu": lambda x: np.maximum(x, 0),
}


def attention(x, w, cfg):
    H, Hkv, hd = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
    n = len(x)
    q = (x @ w["q_proj"].T + w.get("q_bias", 0)).reshape(n, H, hd)
    k = (x @ w["k_proj"].T + w.get("k_bias", 0)).reshape(n, Hkv, hd)
    v = (x @ w["v_proj"].T + w.get("v_bias", 0)).reshape(n, Hkv, hd)
    if cfg.get("qk_norm") == "head":
        q, k = rms(q, w["q_norm"], 1e-6), rms(k, w["k_norm"], 1e-6)
    elif cfg.get("qk_norm") == "all":
        q = rms(q.reshape(n, -1), w["q_norm"], 1e-6).reshape(n, H, hd)
        k = rms(k.reshape(n, -1), w["k_norm"], 1e-6).reshape(n, Hkv, hd)
    q, k = rope(q, cfg.get("rope_theta", 10000.0)), rope(k, cfg.get("rope_theta", 10000.0))
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    window = cfg.get("window", 0)
    visible = j <= i if cfg.get("causal", True) else np.ones((n, n), bool)
    if window:
        visible &= np.abs(i - j) < window
    out = np.empty((n, H, hd))
    for h in range(H):
        g = h // (H // Hkv)
        s = q[:, h] @ k[:, g].T / np.sqrt(hd)
        if cfg.get("softcap"):
            s = cfg["softcap"] * np.tanh(s / cfg["softcap"])
        s = np.where(visible, s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[:, h] = (p / p.sum(-1, keepdims=True)) @ v[:, g]
    return out.reshape(n, H * hd) @ w["o_proj"].T + w.get("o_bias", 0)


def mlp(x, w, cfg):
    u = x @ w["up_proj"].T + w.get("up_bias", 0)
    act = ACT[cfg.get("activation", "silu")]
    h = act(x @ w["gate_proj"].T + w.get("gate_bias", 0)) * u if "gate_proj" in w else act(u)
    return h @ w["down_proj"].T + w.get("down_bias", 0)


def norm_ref(kind, x, nw):
    return rms(x, nw["weight"], 1e-6) if kind == "rms" else layer_norm(x, nw.get("weight"), nw.get("bias"), 1e-6)


def layer_ref(x, spec, lw):
    """One layer as lb.nn.Layer documents it."""
    place, kind = spec["norm"], spec.get("norm_type", "rms")
    n = lambda key, y: norm_ref(kind, y, lw[key])  # noqa: E731
    f_attn = lambda y: attention(y, lw["attn"], spec["attn"])  # noqa: E731
    f_mlp = lambda y: mlp(y, lw["mlp"], spec["mlp"])  # noqa: E731
    if spec.get("parallel"):
        h = n("attn_norm", x)
        return x + f_attn(h) + f_mlp(h)
    for f, a, b in ((f_attn, "attn_norm", "attn_post_norm"), (f_mlp, "mlp_norm", "mlp_post_norm")):
        if place == "pre":
            x = x + f(n(a, x))
        elif place == "sandwich":
            x = x + n(b, f(n(a, x)))
        elif place == "output":
            x = x + n(b, f(x))
        elif place == "post":
            x = n(b, x + f(x))
    return x


# ---- building both from the same weights ------------------------------------------------------------


def rand(rng, *shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def attn_weights(rng, cfg):
    H, Hkv, hd = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
    w = {"q_proj": rand(rng, H * hd, D), "k_proj": rand(rng, Hkv * hd, D), "v_proj": rand(rng, Hkv * hd, D),
         "o_proj": rand(rng, D, H * hd)}
    if cfg.get("bias"):
        w |= {"q_bias": rand(rng, H * hd), "k_bias": rand(rng, Hkv * hd), "v_bias": rand(rng, Hkv * hd)}
    if cfg.get("qk_norm") == "head":
        w |= {"q_norm": 1 + rand(rng, hd), "k_norm": 1 + rand(rng, hd)}
    if cfg.get("qk_norm") == "all":
        w |= {"q_norm": 1 + rand(rng, H * hd), "k_norm": 1 + rand(rng, Hkv * hd)}
    return w


def mlp_weights(rng, cfg):
    F = cfg["hidden"]
    w = {"up_proj": rand(rng, F, D), "down_proj": rand(rng, D, F)}
    if cfg.get("gated", True):
        w["gate_proj"] = rand(rng, F, D)
    if cfg.get("bias"):
        w |= {"up_bias": rand(rng, F), "down_bias": rand(rng, D)} | ({"gate_bias": rand(rng, F)} if "gate_proj" in w else {})
    return w


def norm_weights(rng, kind):
    return {"weight": 1 + rand(rng, D)} | ({"bias": rand(rng, D)} if kind == "layer" else {})


def make_norm(kind, w):
    return nn.RMSNorm(D, weight=w["weight"]) if kind == "rms" else nn.LayerNorm(D, eps=1e-6, weights=w)


def build_pair(specs, seed=0):
    """(lb.nn model, reference forward) for layers given by specs, random weights."""
    rng = np.random.default_rng(seed)
    emb, fin = rand(rng, V, D, scale=1.0), 1 + rand(rng, D)
    layers, lws = [], []
    for spec in specs:
        kind = spec.get("norm_type", "rms")
        lw = {"attn": attn_weights(rng, spec["attn"]), "mlp": mlp_weights(rng, spec["mlp"])}
        a = {k: v for k, v in spec["attn"].items() if k not in ("n_heads", "n_kv_heads", "head_dim")}
        attn = nn.Attention(D, spec["attn"]["n_heads"], spec["attn"]["n_kv_heads"], spec["attn"]["head_dim"],
                            weights=lw["attn"], **a)
        m = {k: v for k, v in spec["mlp"].items() if k != "hidden"}
        block = nn.MLP(D, spec["mlp"]["hidden"], weights=lw["mlp"], **m)
        norms = {}
        for key in ("attn_norm", "attn_post_norm", "mlp_norm", "mlp_post_norm"):
            lw[key] = norm_weights(rng, kind)
            norms[key] = make_norm(kind, lw[key])
        place = spec["norm"]
        keep = {"pre": ("attn_norm", "mlp_norm"), "sandwich": tuple(norms), "output": ("attn_post_norm", "mlp_post_norm"),
                "post": ("attn_post_norm", "mlp_post_norm")}[place]
        if spec.get("parallel"):
            keep = ("attn_norm",)
        layers.append(nn.Layer(attn, block, norm=place, parallel=spec.get("parallel", False),
                               **{k: norms[k] for k in keep}))
        lws.append(lw)
    model = nn.Model(nn.Embedding(V, D, weight=emb), nn.Stack(layers), nn.RMSNorm(D, weight=fin))

    def reference(ids):
        x = emb[ids].astype(np.float64)
        for spec, lw in zip(specs, lws):
            lw64 = {k: {n: a.astype(np.float64) for n, a in v.items()} for k, v in lw.items()}
            x = layer_ref(x, spec, lw64)
        return rms(x, fin, 1e-6) @ emb.T.astype(np.float64)

    return model, reference


A = dict(n_heads=4, n_kv_heads=2, head_dim=12)
M = dict(hidden=56)
CASES = {
    "pre": [dict(attn=A, mlp=M, norm="pre")] * 2,
    "sandwich_layernorm": [dict(attn=A, mlp=M, norm="sandwich", norm_type="layer")],
    "output_qknorm_all": [dict(attn=A | dict(qk_norm="all"), mlp=M, norm="output")],
    "post_plain_relu2": [dict(attn=A, mlp=M | dict(gated=False, activation="relu2"), norm="post", norm_type="layer")],
    "parallel_gelu_bias": [dict(attn=A | dict(bias=True), mlp=M | dict(gated=False, activation="gelu", bias=True),
                                norm="pre", parallel=True, norm_type="layer")],
    "mqa_window_softcap_headnorm": [dict(attn=dict(n_heads=5, n_kv_heads=1, head_dim=8, window=4, softcap=3.0,
                                                   qk_norm="head", rope_theta=500.0), mlp=M, norm="pre"),
                                    dict(attn=A, mlp=M | dict(activation="relu"), norm="pre")],
    "bidirectional": [dict(attn=A | dict(causal=False), mlp=M, norm="pre")],
    "bidirectional_window": [dict(attn=A | dict(causal=False, window=3), mlp=M, norm="pre")],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_composed_model_equals_float64_reference(case):
    model, reference = build_pair(CASES[case], seed=len(case))
    ids = np.random.default_rng(1).integers(0, V, T)
    got, want = model.logits(ids), reference(ids)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-4, (case, err)


@pytest.mark.parametrize("case", ["pre", "mqa_window_softcap_headnorm", "parallel_gelu_bias"])
def test_decode_with_cache_equals_full_recompute(case):
    model, _ = build_pair(CASES[case], seed=3)
    ids = np.random.default_rng(2).integers(0, V, T).astype(np.int32)
    full = model.logits(ids)
    cache = model.new_cache(1, T)
    rows = [model.forward(cache, ids[:4], logits="all")]
    rows += [model.forward(cache, ids[i:i + 1], logits="all") for i in range(4, T)]
    np.testing.assert_allclose(np.concatenate(rows), full, atol=1e-4 * np.abs(full).max())


# ---- a checkpoint reassembled by hand -----------------------------------------------------------------


def test_llama_checkpoint_assembled_with_nn_equals_transformers_and_load(tmp_path):
    from safetensors.numpy import load_file

    ref = hf_models.build("llama", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    w = load_file(str(tmp_path / "model.safetensors"))
    Dm, H, Hkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    eps, theta = cfg["rms_norm_eps"], cfg["rope_parameters"]["rope_theta"]

    def layer(i):
        p = f"model.layers.{i}."
        attn = nn.Attention(Dm, H, Hkv, rope_theta=theta, weights={
            n: w[p + f"self_attn.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj", "o_proj")})
        mlp = nn.MLP(Dm, cfg["intermediate_size"], weights={
            n: w[p + f"mlp.{n}.weight"] for n in ("gate_proj", "up_proj", "down_proj")})
        return nn.Layer(attn, mlp, attn_norm=nn.RMSNorm(Dm, eps=eps, weight=w[p + "input_layernorm.weight"]),
                        mlp_norm=nn.RMSNorm(Dm, eps=eps, weight=w[p + "post_attention_layernorm.weight"]))

    model = nn.Model(nn.Embedding(cfg["vocab_size"], Dm, weight=w["model.embed_tokens.weight"]),
                     nn.Stack("LL", {"L": layer}), nn.RMSNorm(Dm, eps=eps, weight=w["model.norm.weight"]),
                     head=w["lm_head.weight"])
    ids = np.random.default_rng(5).integers(0, cfg["vocab_size"], T).tolist()
    want = hf_models.hf_logits(ref, ids)
    got = model.logits(ids)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
    np.testing.assert_allclose(got, lb.load(tmp_path, verbose=False).logits(ids), atol=1e-5)


# ---- init, dtypes, writable weights --------------------------------------------------------------------


def test_seeded_init_is_reproducible_and_has_the_asked_std():
    nn.seed(7)
    a = nn.Attention(256, 8, 2, std=0.05)
    nn.seed(7)
    b = nn.Attention(256, 8, 2, std=0.05)
    qa, qb = (np.asarray(x.weights()["q_proj"]) for x in (a, b))
    np.testing.assert_array_equal(qa, qb)
    assert abs(qa.std() - 0.05) < 0.002 and abs(qa.mean()) < 0.002
    c = nn.MLP(256, 512, rng=np.random.default_rng(1), init="zeros")
    assert not np.asarray(c.weights()["up_proj"]).any()


@pytest.mark.parametrize("dtype, tol", [("f16", 2e-3), ("bf16", 2e-2), ("q8_0", 2e-2), ("q4_k", 0.15)])
def test_blocks_stored_in_other_dtypes_track_float32(dtype, tol):
    def build(dt):
        rng = np.random.default_rng(3)
        layer = lambda i: nn.Layer(nn.Attention(256, 4, 2, dtype=dt, rng=rng), nn.MLP(256, 512, dtype=dt, rng=rng))  # noqa: E731
        return nn.Model(nn.Embedding(97, 256, rng=rng, std=1.0), nn.Stack("AA", {"A": layer}), nn.RMSNorm(256))

    ids = np.arange(1, 20) % 97
    ref, got = build("f32").logits(ids), build(dtype).logits(ids)
    assert build(dtype).lm.body[0].mixer.weights()["q_proj"].dtype == dtype
    assert np.abs(got - ref).max() / np.abs(ref).max() < tol, dtype


def test_weights_are_writable_views_the_model_reads():
    nn.seed(0)
    model = nn.Model(nn.Embedding(V, D), nn.Stack("A", {"A": lambda i: nn.Layer(nn.Attention(D, 4), nn.MLP(D, 64))}),
                     nn.RMSNorm(D))
    ids = [3, 1, 4, 1, 5]
    before = model.logits(ids)
    mlp = model.lm.body[0].mlp
    down = np.asarray(mlp.weights()["down_proj"])
    down[:] = 0  # the MLP now adds nothing
    with model.intervene({"layers.0.mlp": lambda out: np.zeros_like(out)}):
        want = model.logits(ids)
    np.testing.assert_array_equal(model.logits(ids), want)
    assert not np.allclose(before, want)


# ---- errors at construction ---------------------------------------------------------------------------


def test_construction_errors_are_clear():
    with pytest.raises(ValueError, match=r"pattern 'AAX' names \['X'\]"):
        nn.Stack("AAX", {"A": lambda i: nn.Layer(nn.Attention(D, 4), nn.MLP(D, 64))})
    with pytest.raises(ValueError, match="mlp .*takes 32 features"):
        nn.Layer(nn.Attention(D, 4), nn.MLP(32, 64))
    with pytest.raises(ValueError, match="mlp_norm .*takes 32"):
        nn.Layer(nn.Attention(D, 4), nn.MLP(D, 64), mlp_norm=nn.RMSNorm(32))
    with pytest.raises(ValueError, match=r"q_proj' has shape \(8, 40\); expected \(40, 40\)"):
        nn.Attention(D, 4, weights={"q_proj": np.zeros((8, D), np.float32)})
    with pytest.raises(ValueError, match="unknown weight names"):
        nn.MLP(D, 64, weights={"gate": np.zeros((64, D), np.float32)})
    with pytest.raises(ValueError, match="n_heads 6 is not a multiple of n_kv_heads 4"):
        nn.Attention(48, 6, 4)
    with pytest.raises(ValueError, match="embedding has D=64"):
        nn.Model(nn.Embedding(V, 64), nn.Stack([nn.Layer(nn.Attention(D, 4), nn.MLP(D, 64))]))
    with pytest.raises(ValueError, match="block 1 .* takes 32 features"):
        nn.Stack([nn.Layer(nn.Attention(D, 4)), nn.Layer(nn.Attention(32, 4))])
    with pytest.raises(ValueError, match="norm must be one of"):
        nn.Layer(nn.Attention(D, 4), norm="middle")
    with pytest.raises(ValueError, match="activation 'swiglu'"):
        nn.MLP(D, 64, activation="swiglu")
    with pytest.raises(ValueError, match="cannot store as 'q4_0'"):
        nn.MLP(D, 64, dtype="q4_0")  # 40 is not a multiple of 32


# ---- save and load -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["pre", "sandwich_layernorm", "post_plain_relu2", "parallel_gelu_bias",
                                  "mqa_window_softcap_headnorm", "bidirectional"])
def test_save_and_load_give_the_same_logits(case, tmp_path):
    model, reference = build_pair(CASES[case], seed=11)
    model.save(tmp_path / "m")
    back = lb.load(tmp_path / "m")
    ids = np.random.default_rng(4).integers(0, V, T)
    np.testing.assert_array_equal(back.logits(ids), model.logits(ids))
    err = np.abs(back.logits(ids) - reference(ids)).max() / np.abs(reference(ids)).max()
    assert err < 1e-4


def test_quantized_and_untied_model_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    layer = lambda i: nn.Layer(nn.Attention(64, 4, 1, dtype="q8_0", rng=rng, o_bias=True),  # noqa: E731
                               nn.MLP(64, 96, dtype="f16", rng=rng))
    model = nn.Model(nn.Embedding(77, 64, rng=rng, dtype="q8_0", scale=8.0), nn.Stack("AB", {"A": layer, "B": layer}),
                     nn.LayerNorm(64), head=nn.Linear(64, 77, rng=rng, dtype="q8_0"), logit_scale=0.5,
                     final_softcap=20.0)
    model.save(tmp_path / "q")
    back = lb.load(tmp_path / "q", n_ctx=64)
    assert back.lm.body[0].mixer.weights()["q_proj"].dtype == "q8_0" and back.n_ctx == 64
    assert back.lm.logit_scale == 0.5 and back.lm.embed_scale == 8.0
    ids = [5, 9, 2, 70, 3]
    np.testing.assert_array_equal(back.logits(ids), model.logits(ids))


def test_a_loaded_checkpoint_saved_as_blocks_round_trips(tmp_path):
    from lmblocks import serialize

    folder = tmp_path / "gemma"
    ref = hf_models.build("gemma3_text", folder)
    model = lb.load(folder, verbose=False)
    serialize.save(model, tmp_path / "blocks")
    back = lb.load(tmp_path / "blocks")
    ids = list(range(3, 3 + T))
    np.testing.assert_array_equal(back.logits(ids), model.logits(ids))
    want = hf_models.hf_logits(ref, ids)
    assert np.abs(back.logits(ids) - want).max() / np.abs(want).max() < 1e-4


def _edit_json(folder, fn):
    p = folder / "lmblocks.json"
    spec = json.loads(p.read_text())
    fn(spec)
    p.write_text(json.dumps(spec))


@pytest.mark.parametrize("edit, msg", [
    (lambda s: s["body"]["blocks"][0].__setitem__("kind", "Transformer"), "unknown block kind 'Transformer'"),
    (lambda s: s["body"]["blocks"][0]["mixer"]["weights"].__setitem__("q_proj", "nope"), "does not hold"),
    (lambda s: s["body"]["blocks"][0]["mixer"]["weights"].pop("k_proj"), "weight 'k_proj' is missing"),
    (lambda s: s["body"]["blocks"][0]["mixer"].__setitem__("n_heads", "4"), "field 'n_heads'"),
    (lambda s: s["body"]["blocks"][0]["mixer"].__setitem__("n_heads", 3), "n_heads"),
    (lambda s: s.__setitem__("version", 99), "version 99"),
])
def test_damaged_saved_models_raise_format_errors(tmp_path, edit, msg):
    model, _ = build_pair(CASES["pre"], seed=1)
    model.save(tmp_path / "m")
    _edit_json(tmp_path / "m", edit)
    with pytest.raises(lb.io.FormatError, match=msg):
        lb.load(tmp_path / "m")


def test_truncated_weights_file_raises(tmp_path):
    model, _ = build_pair(CASES["pre"], seed=1)
    model.save(tmp_path / "m")
    p = tmp_path / "m" / "model.safetensors"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(lb.io.FormatError):
        lb.load(tmp_path / "m")


# ---- summary -------------------------------------------------------------------------------------------


def test_summary_counts_match_transformers_parameters(tmp_path, capsys):
    ref = hf_models.build("llama", tmp_path)
    model = lb.load(tmp_path, verbose=False)
    cfg = ref.config
    s = model.summary(context=100)
    assert "layers.0-1" in capsys.readouterr().out
    tot = s["totals"]
    assert tot["params"] == sum(p.numel() for p in ref.parameters())
    n_matrix = sum(p.numel() for n, p in ref.named_parameters() if p.ndim == 2 and "embed_tokens" not in n)
    L, H, Hkv, hd = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    assert tot["flops"] == 2 * n_matrix + L * 4 * H * hd * 100
    assert tot["kv_bytes_per_token"] == L * 2 * Hkv * hd * 4 and tot["kv_bytes"] == 100 * tot["kv_bytes_per_token"]
    f32 = 4 * sum(p.numel() for n, p in ref.named_parameters() if "embed_tokens" not in n)
    assert tot["decode_bytes"] == f32 + 4 * cfg.hidden_size + tot["kv_bytes"]


def test_moe_model_summary_counts_active_experts_and_round_trips(tmp_path):
    """An MoE of 8 experts, top-2, with a gated shared expert: the summary's FLOPs count the router, the
    shared expert and 2 of 8 experts; saving keeps every setting."""
    rng = np.random.default_rng(0)
    Dm, F, E, k, Fs = 64, 48, 8, 2, 32
    layer = lambda i: nn.Layer(nn.Attention(Dm, 4, 2, rng=rng),  # noqa: E731
                               nn.MoE(Dm, F, E, k, shared_hidden=Fs, shared_gate=True, norm_topk=False,
                                      scoring="sigmoid", routed_scale=2.5, rng=rng, std=0.2))
    model = nn.Model(nn.Embedding(V, Dm, rng=rng), nn.Stack("MM", {"M": layer}), nn.RMSNorm(Dm))
    tot = model.summary(print_table=False)["totals"]
    attn = 2 * Dm * Dm + 2 * Dm * 32
    per_layer = attn + E * Dm + Dm + 3 * Dm * Fs + k * 3 * Dm * F  # router, shared gate, shared, k experts
    assert tot["flops"] == 2 * (2 * per_layer + V * Dm)
    assert tot["params"] == V * Dm + Dm + 2 * (attn + E * Dm + Dm + 3 * Dm * Fs + E * 3 * Dm * F + 2 * Dm)
    model.save(tmp_path / "moe")
    back = lb.load(tmp_path / "moe")
    moe = back.lm.body[1].mlp
    assert (moe.kind, moe.top_k, moe.scoring, moe.norm_topk, moe.routed_scale) == ("MoE", k, "sigmoid", False, 2.5)
    ids = [4, 8, 15, 16, 23, 42]
    np.testing.assert_array_equal(back.logits(ids), model.logits(ids))
    with back.capture("layers.*.moe.experts") as acts:
        back.logits(ids)
    assert acts["layers.0.moe.experts"].shape == (6, k)


def test_moe_errors_at_construction():
    with pytest.raises(ValueError, match="top_k 9 is more than n_experts 8"):
        nn.MoE(D, 32, 8, 9)
    with pytest.raises(ValueError, match="scoring"):
        nn.MoE(D, 32, 8, 2, scoring="relu")
    with pytest.raises(ValueError, match=r"up_proj' has shape \(8, 32, 40\); expected \(4, 32, 40\)"):
        nn.MoE(D, 32, 4, 2, weights={"up_proj": np.zeros((8, 32, D), np.float32)})

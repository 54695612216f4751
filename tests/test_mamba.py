"""Mamba, Mamba2 and Bamba (issue 6): the native blocks and architectures against transformers'
MambaForCausalLM / Mamba2ForCausalLM / BambaForCausalLM on tiny random configs, their state in the model's cache (decode =
recompute, states equal transformers' cache, save/restore for branching), and hybrid attention + SSM
stacks built with lmblocks.nn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmblocks as lb
from lmblocks import nn

V = 300
CONFIGS = {
    # Mamba2: chunk_size 16 so 64- and 300-token prompts cross chunk boundaries; groups 2 and 1
    "mamba2_groups2": dict(num_heads=8, head_dim=12, hidden_size=48, state_size=13, n_groups=2, chunk_size=16,
                           tie_word_embeddings=True),
    "mamba2_groups1_untied_bias": dict(num_heads=4, head_dim=16, hidden_size=32, state_size=16, n_groups=1,
                                       chunk_size=7, tie_word_embeddings=False, use_bias=True, conv_kernel=3),
    "mamba": dict(hidden_size=40, state_size=13, tie_word_embeddings=True),
    "mamba_untied_bias_rank3": dict(hidden_size=24, state_size=8, time_step_rank=3, conv_kernel=2, use_bias=True,
                                    tie_word_embeddings=False),
}


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def randomize(ref):
    """Every parameter random (seeded), A and dt in their usual ranges."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in sorted(ref.named_parameters()):
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand(p.shape, generator=g) * 4 + 0.5))
            elif name.endswith("dt_bias") or name.endswith("dt_proj.bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 - 1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def seeded(Model, cfg, eager=False):
    """transformers' Model(cfg) made under a fixed seed, in eval mode (`eager`: eager attention)."""
    if eager:
        cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return Model(cfg).eval()


def assert_logits_equal_transformers(model, ref, T, what=""):
    """T random tokens (seeded by T) in one pass: our logits within 1e-4 of transformers' range."""
    ids = np.random.default_rng(T).integers(0, V, T)
    assert rel_err(model.logits(ids), hf_logits(ref, ids)) <= 1e-4, what


def saved_and_loaded(ref, folder):
    """transformers' model with random parameters, saved to `folder`; lmblocks' load of that folder."""
    randomize(ref)
    ref.save_pretrained(folder)
    return lb.load(folder, verbose=False)


def assert_decode_equals_recompute(model, ids, prefill):
    """`prefill` tokens in one call, then one token per call: the logits of one full pass."""
    full = model.logits(ids)
    cache = model.new_cache(1, len(ids) + 1)
    rows = [model.forward(cache, ids[:prefill], logits="all")]
    rows += [model.forward(cache, ids[i:i + 1], logits="all") for i in range(prefill, len(ids))]
    np.testing.assert_allclose(np.concatenate(rows), full, atol=1e-5 * np.abs(full).max())
    return full, cache


def transformers_model(name):
    """transformers' Mamba or Mamba2 of CONFIGS[name], random parameters (see randomize)."""
    import transformers

    v2 = name.startswith("mamba2")
    Config = transformers.Mamba2Config if v2 else transformers.MambaConfig
    Model = transformers.Mamba2ForCausalLM if v2 else transformers.MambaForCausalLM
    cfg = Config(vocab_size=V, num_hidden_layers=2, expand=2, layer_norm_epsilon=1e-5, **CONFIGS[name])
    ref = seeded(Model, cfg)
    randomize(ref)
    return ref


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request, tmp_path_factory):
    ref = transformers_model(request.param)
    return request.param, ref, saved_and_loaded(ref, tmp_path_factory.mktemp(request.param))


@torch.no_grad()
def hf_logits(ref, ids):
    return ref(torch.tensor([list(ids)])).logits[0].numpy()


@pytest.mark.parametrize("T", [1, 7, 64, 300])
def test_logits_equal_transformers(tiny, T):
    name, ref, model = tiny
    assert_logits_equal_transformers(model, ref, T, name)


def test_decode_step_by_step_equals_full_recompute(tiny):
    _, _, model = tiny
    assert_decode_equals_recompute(model, np.random.default_rng(3).integers(0, V, 40).astype(np.int32), 10)


def prefill_both(model, ref, n=23, seed=4):
    """n random tokens prefilled by both: (our cache.states(), transformers' output with its cache)."""
    ids = np.random.default_rng(seed).integers(0, V, n)
    with torch.no_grad():
        out = ref(torch.from_numpy(ids)[None], use_cache=True)
    cache = model.new_cache(1, 32)
    model.forward(cache, ids.astype(np.int32))
    return cache.states(), out


def assert_states_equal_cache(states, hf_cache, layers, what, conv_atol=1e-6, nonzero=False):
    """Each block's (conv window, SSM state) against transformers' cache of layer `layers[k]`: the state, and
    the window (we keep the last K - 1 conv inputs, transformers the last K)."""
    for i, (path, (conv, ssm)) in zip(layers, states):
        want_ssm = hf_cache.get_recurrent_state(i, state_idx=0)[0].numpy()  # (H, P, N) or (d_inner, N)
        want_conv = hf_cache.get_conv_state(i, state_idx=0)[0].numpy()      # (conv_dim, K): last K inputs
        if nonzero:
            assert want_ssm.any() and want_conv.any()
        np.testing.assert_allclose(ssm[0], want_ssm, atol=1e-5 * np.abs(want_ssm).max(), err_msg=f"{what} {path}")
        np.testing.assert_allclose(conv[0], want_conv[:, 1:], atol=conv_atol * np.abs(want_conv).max(),
                                   err_msg=f"{what} {path}")


def test_states_after_prefill_equal_transformers_cache(tiny):
    name, ref, model = tiny
    states, out = prefill_both(model, ref)
    assert [p for p, _ in states] == [f"layers.{i}.mamba" for i in range(len(states))]
    assert all(conv.shape[-1] == ref.config.conv_kernel - 1 for _, (conv, _) in states)
    assert_states_equal_cache(states, out.cache_params, range(len(states)), name)


def test_state_save_and_restore_branches_a_generation(tiny):
    """Prefill once, snapshot the sequence, decode two different continuations from it."""
    _, _, model = tiny
    ids = np.random.default_rng(5).integers(0, V, 12).astype(np.int32)
    cache = model.new_cache(1, 64)
    model.forward(cache, ids)
    snap = cache.snapshot()
    assert snap.length == 12 and snap.nbytes == sum(t.nbytes for _, ts in cache.states() for t in ts)
    a = model.forward(cache, np.asarray([7], np.int32))
    model.forward(cache, np.asarray([9, 9, 9], np.int32))
    cache.restore(snap)
    assert cache.length() == 12
    b = model.forward(cache, np.asarray([7], np.int32))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, model.logits(np.r_[ids, 7])[-1:], atol=1e-5 * np.abs(a).max())
    # The raw views say the same: cache.states() are writable arrays of every sequence.
    for (path, ts), (spath, ss) in zip(cache.states(), snap.arrays().items()):
        assert path == spath and [t.shape[1:] for t in ts] == [x.shape for x in ss]
    cache.clear()
    assert all(not t.any() for _, ts in cache.states() for t in ts)


def test_dt_and_state_norm_hook_points(tiny):
    """``dt`` equals softplus(dt + dt_bias) recomputed in float64 from the block's captured input; the last
    ``state_norm`` row equals the norms of transformers' cached state; the hooked pass gives the same logits."""
    name, ref, model = tiny
    ids = np.random.default_rng(14).integers(0, V, 37)
    with model.capture("layers.*.mamba.in", "layers.*.mamba.dt", "layers.*.mamba.state_norm") as acts:
        hooked = model.logits(ids)
    np.testing.assert_allclose(hooked, model.logits(ids), atol=1e-5 * np.abs(hooked).max())
    with torch.no_grad():
        cache = ref(torch.from_numpy(ids)[None], use_cache=True).cache_params
    v2 = ref.config.model_type == "mamba2"
    for i, layer in enumerate(ref.backbone.layers):
        m = layer.mixer
        x = acts[f"layers.{i}.mamba.in"].astype(np.float64)
        zxbcdt = x @ m.in_proj.weight.detach().double().numpy().T
        if m.in_proj.bias is not None:
            zxbcdt += m.in_proj.bias.detach().double().numpy()
        if v2:
            raw = zxbcdt[:, -m.num_heads:] + m.dt_bias.detach().double().numpy()
        else:  # dt comes from the conv's output: recompute it as transformers does, in float64
            with torch.no_grad():
                xs = torch.from_numpy(zxbcdt[:, :m.intermediate_size].T[None])  # (1, di, T)
                conv = torch.nn.functional.conv1d(xs, m.conv1d.weight.double(), None if m.conv1d.bias is None else
                                                  m.conv1d.bias.double(), padding=m.conv_kernel_size - 1,
                                                  groups=m.intermediate_size)[..., :len(ids)]
                xs = torch.nn.functional.silu(conv)[0].T
                low = (xs @ m.x_proj.weight.double().T)[:, :m.time_step_rank]
                raw = (low @ m.dt_proj.weight.double().T + m.dt_proj.bias.double()).numpy()
        want = np.logaddexp(0, raw)
        np.testing.assert_allclose(acts[f"layers.{i}.mamba.dt"], want, rtol=1e-4, atol=1e-6, err_msg=name)
        state = cache.get_recurrent_state(i, state_idx=0)[0].double().numpy()
        norms = np.sqrt((state.reshape(state.shape[0], -1) ** 2).sum(-1))
        got = acts[f"layers.{i}.mamba.state_norm"]
        assert got.shape == (len(ids), state.shape[0])
        np.testing.assert_allclose(got[-1], norms, rtol=1e-4, err_msg=name)


def test_sequences_in_one_batch_equal_each_alone(tiny):
    _, _, model = tiny
    a, b = (np.random.default_rng(s).integers(0, V, n).astype(np.int32) for s, n in ((6, 9), (7, 14)))
    cache = model.new_cache(2, 32)
    both = model.forward(cache, np.r_[a, b], seq=np.r_[np.zeros(9, np.int32), np.ones(14, np.int32)], logits="all")
    np.testing.assert_allclose(both[:9], model.logits(a), atol=1e-5)
    np.testing.assert_allclose(both[9:], model.logits(b), atol=1e-5)


# ---- composed with lmblocks.nn ------------------------------------------------------------------------


def hybrid(pattern="MAMS", chunk=8):
    rng = np.random.default_rng(0)
    D = 64
    blocks = {"M": lambda i: nn.Layer(nn.Mamba2(D, head_dim=16, state_size=16, n_groups=2, chunk_size=chunk, rng=rng,
                                                 std=0.1), nn.MLP(D, 96, rng=rng, std=0.1)),
              "S": lambda i: nn.Layer(nn.Mamba(D, state_size=8, rng=rng, std=0.1)),
              "A": lambda i: nn.Layer(nn.Attention(D, 4, 2, rng=rng, std=0.1), nn.MLP(D, 96, rng=rng, std=0.1))}
    return nn.Model(nn.Embedding(V, D, rng=rng, std=1.0), nn.Stack(pattern, blocks), nn.RMSNorm(D))


def test_hybrid_stack_decodes_as_it_prefills_and_round_trips(tmp_path):
    model = hybrid()
    ids = np.random.default_rng(8).integers(0, V, 50).astype(np.int32)
    full, _ = assert_decode_equals_recompute(model, ids, 20)
    # The chunk size changes the order of sums only.
    np.testing.assert_allclose(hybrid(chunk=0).logits(ids), full, atol=1e-4 * np.abs(full).max())
    model.save(tmp_path / "h")
    np.testing.assert_array_equal(lb.load(tmp_path / "h").logits(ids), full)
    s = model.summary(context=1000, print_table=False)["totals"]
    assert s["kv_bytes_per_token"] == 2 * 2 * 16 * 4  # the one attention layer
    mamba2 = 4 * ((128 + 2 * 2 * 16) * 3 + 8 * 16 * 16)
    mamba = 4 * (128 * 3 + 128 * 8)
    assert s["state_bytes"] == 2 * mamba2 + mamba


def test_prefix_snapshot_of_a_hybrid_restores_into_another_cache_and_sequence():
    """Attention keys/values and SSM states of a shared prompt, taken once, continue in another cache (longer
    n_ctx, other sequence slot) exactly as if the prompt had been run there."""
    model = hybrid()
    prompt = np.random.default_rng(12).integers(0, V, 30).astype(np.int32)
    tail = np.random.default_rng(13).integers(0, V, 5).astype(np.int32)
    c1 = model.new_cache(1, 40)
    model.forward(c1, prompt)
    snap = c1.snapshot()
    assert list(snap.arrays()) == ["layers.1.attn", "layers.0.mamba", "layers.2.mamba", "layers.3.mamba"]
    c2 = model.new_cache(3, 64)
    c2.restore(snap, seq=2)
    got = model.forward(c2, tail, seq=np.full(5, 2, np.int32), logits="all")
    np.testing.assert_allclose(got, model.logits(np.r_[prompt, tail])[30:], atol=1e-5)
    assert c2.length(0) == 0 and c2.length(2) == 35


def test_a_snapshot_from_another_model_is_refused_by_name():
    model = hybrid()
    cache = model.new_cache(1, 32)
    model.forward(cache, np.arange(10, dtype=np.int32))
    rng = np.random.default_rng(0)
    other = nn.Model(nn.Embedding(V, 64, rng=rng), nn.Stack("MAMS", {
        "M": lambda i: nn.Layer(nn.Mamba2(64, head_dim=16, state_size=8, n_groups=2, rng=rng)),
        "S": lambda i: nn.Layer(nn.Mamba(64, state_size=8, rng=rng)),
        "A": lambda i: nn.Layer(nn.Attention(64, 4, 2, rng=rng))}), nn.RMSNorm(64))
    theirs = other.new_cache(1, 32)
    other.forward(theirs, np.arange(10, dtype=np.int32))
    before = [t.copy() for _, ts in cache.states() for t in ts]
    with pytest.raises(ValueError, match=r"layers.0.mamba: the snapshot has state 0 of shape \(160, 3\) where this "
                                         r"block's is \(192, 3\); it was taken from another model"):
        cache.restore(theirs.snapshot())
    assert all((a == b).all() for a, b in zip(before, (t for _, ts in cache.states() for t in ts)))  # untouched
    small = nn.Model(nn.Embedding(V, 64), nn.Stack("MA", {"M": lambda i: nn.Layer(nn.Mamba2(64, head_dim=16)),
                                                          "A": lambda i: nn.Layer(nn.Attention(64, 4))}), nn.RMSNorm(64))
    with pytest.raises(ValueError, match="holds 2 blocks' entries; this cache holds 1 attention and 3 stateful"):
        cache.restore(small.new_cache(1, 8).snapshot())
    with pytest.raises(ValueError, match="the snapshot is 10 positions long; this cache holds 8"):
        model.new_cache(1, 8).restore(cache.snapshot())


def test_mamba2_errors():
    with pytest.raises(ValueError, match="n_heads 6 is not a multiple of n_groups 4"):
        nn.Mamba2(48, 6, 16, n_groups=4)
    with pytest.raises(ValueError, match="in_proj' has shape"):
        nn.Mamba2(32, 4, 16, state_size=8, weights={"in_proj": np.zeros((10, 32), np.float32)})
    with pytest.raises(ValueError, match="conv_weight has shape"):
        lb._core.nn.Mamba2(2, 4, 1, 4, np.zeros((2 * 8 + 8 + 2, 4), np.float32), np.zeros((10, 4), np.float32), None,
                           np.zeros(2, np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32),
                           np.ones(8, np.float32), np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError, match=r"x_proj' has shape \(4, 64\); expected \(18, 64\)"):
        nn.Mamba(32, state_size=8, weights={"x_proj": np.zeros((4, 64), np.float32)})
    with pytest.raises(ValueError, match="A_log must be a 2-D"):
        lb._core.nn.Mamba(*(np.zeros((64, 32), np.float32),) * 2, None, np.zeros((18, 64), np.float32),
                          np.zeros((64, 2), np.float32), np.zeros(64, np.float32), np.zeros(64, np.float32),
                          np.zeros(64, np.float32), np.zeros((32, 64), np.float32))


# ---- Bamba: Mamba2 and attention layers in one checkpoint -----------------------------------------------


@pytest.fixture(scope="module")
def bamba(tmp_path_factory):
    from transformers import BambaConfig, BambaForCausalLM

    cfg = BambaConfig(vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=8, mamba_n_groups=2,
                      mamba_d_state=12, mamba_chunk_size=16, tie_word_embeddings=False, max_position_embeddings=512)
    ref = seeded(BambaForCausalLM, cfg)
    return ref, saved_and_loaded(ref, tmp_path_factory.mktemp("bamba"))


@pytest.mark.parametrize("T", [1, 7, 64, 300])
def test_bamba_logits_equal_transformers(bamba, T):
    ref, model = bamba
    assert [b.mixer.kind for b in model.lm.body] == ["Mamba2", "Attention", "Mamba2", "Mamba2"]
    assert_logits_equal_transformers(model, ref, T)


def test_bamba_decode_equals_recompute(bamba):
    _, model = bamba
    _, cache = assert_decode_equals_recompute(model, np.random.default_rng(9).integers(0, V, 30).astype(np.int32), 17)
    assert len(cache) == 1 and len(cache.states()) == 3  # one attention layer's keys, three SSM states


# ---- GGUF: llama.cpp's "mamba" and "mamba2" files ----------------------------------------------------------


def write_ssm_gguf(ref, path):
    """transformers' Mamba/Mamba2 as llama.cpp's converter writes it (convert_hf_to_gguf.py's MambaModel and
    Mamba2Model): A stored as -exp(A_log), the conv kernel squeezed to (C, K), Mamba2's A and D as (H, 1) and its
    norm as (groups, d_inner / groups), the head omitted when tied."""
    from lmblocks.io.gguf_writer import write_gguf
    from test_moe import _spm_vocab

    c = ref.config
    v2 = c.model_type == "mamba2"
    arch = c.model_type
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    di = c.num_heads * c.head_dim if v2 else c.intermediate_size
    u32 = [("context_length", 1 << 20), ("embedding_length", c.hidden_size), ("feed_forward_length", 0),
           ("attention.head_count", 0), ("block_count", c.num_hidden_layers), ("ssm.conv_kernel", c.conv_kernel),
           ("ssm.inner_size", di), ("ssm.state_size", c.state_size),
           ("ssm.time_step_rank", c.num_heads if v2 else c.time_step_rank)]
    if v2:
        u32.append(("ssm.group_count", c.n_groups))
    md = [("general.architecture", "string", arch), *[(f"{arch}.{k}", "uint32", v) for k, v in u32],
          (f"{arch}.attention.layer_norm_rms_epsilon", "float32", c.layer_norm_epsilon), *_spm_vocab(c.vocab_size)]
    tensors = [("token_embd.weight", sd["backbone.embeddings.weight"])]
    for i in range(c.num_hidden_layers):
        p, b = f"backbone.layers.{i}.mixer.", f"blk.{i}."
        A = -np.exp(sd[p + "A_log"])
        tensors += [(b + "attn_norm.weight", sd[f"backbone.layers.{i}.norm.weight"]),
                    (b + "ssm_in.weight", sd[p + "in_proj.weight"]),
                    (b + "ssm_conv1d.weight", sd[p + "conv1d.weight"].squeeze(1)),
                    (b + "ssm_conv1d.bias", sd[p + "conv1d.bias"])]
        if v2:
            tensors += [(b + "ssm_dt.bias", sd[p + "dt_bias"]), (b + "ssm_a", A.reshape(-1, 1)),
                        (b + "ssm_d", sd[p + "D"].reshape(-1, 1)),
                        (b + "ssm_norm.weight", sd[p + "norm.weight"].reshape(c.n_groups, -1))]
        else:
            tensors += [(b + "ssm_x.weight", sd[p + "x_proj.weight"]), (b + "ssm_dt.weight", sd[p + "dt_proj.weight"]),
                        (b + "ssm_dt.bias", sd[p + "dt_proj.bias"]), (b + "ssm_a", A), (b + "ssm_d", sd[p + "D"])]
        tensors.append((b + "ssm_out.weight", sd[p + "out_proj.weight"]))
    tensors.append(("output_norm.weight", sd["backbone.norm_f.weight"]))
    if not c.tie_word_embeddings:
        tensors.append(("output.weight", sd["lm_head.weight"]))
    write_gguf(path, md, tensors)


@pytest.fixture(scope="module", params=["mamba", "mamba2_groups2"])  # llama.cpp's graphs have no projection biases
def ssm_gguf(request, tmp_path_factory):
    name, ref = request.param, transformers_model(request.param)
    path = tmp_path_factory.mktemp("gguf") / f"{name}.gguf"
    write_ssm_gguf(ref, path)
    return name, ref, path


@pytest.mark.parametrize("T", [1, 64, 300])
def test_gguf_logits_equal_transformers(ssm_gguf, T):
    name, ref, path = ssm_gguf
    model = lb.load(path, verbose=False)
    assert model.args.model_type == ref.config.model_type
    assert_logits_equal_transformers(model, ref, T, name)


def test_llama_cpp_runs_the_ssm_gguf_with_our_greedy_tokens(ssm_gguf):
    """llama.cpp's own Mamba/Mamba2 graph on the same file: the same greedy tokens, logits within 1e-3."""
    pytest.importorskip("llama_cpp", reason="llama.cpp's Python binding (make llamacpp) is not installed")
    from test_convert import assert_llama_cpp_agrees

    name, _, path = ssm_gguf
    prompts = [np.random.default_rng(s).integers(3, V, n).tolist() for s, n in ((1, 5), (2, 40))]
    assert_llama_cpp_agrees(lb.load(path, verbose=False), path, prompts, 12, what=name)


def test_gguf_with_a_nonnegative_a_is_rejected(tmp_path):
    """A = -exp(A_log) is negative; a file holding anything else (here NaN) names the tensor."""
    from lmblocks.io import FormatError

    bad = transformers_model("mamba2_groups2")
    with torch.no_grad():
        bad.backbone.layers[1].mixer.A_log[2] = float("nan")
    write_ssm_gguf(bad, tmp_path / "bad.gguf")
    with pytest.raises(FormatError, match=r"ssm_a \(read as 'backbone.layers.1.mixer.A_log'\) holds a value >= 0"):
        lb.load(tmp_path / "bad.gguf", verbose=False)


def test_exported_ssm_gguf_runs_in_lmblocks_and_llama_cpp_as_loaded(ssm_gguf, tmp_path):
    """lmblocks' own writer (io.gguf_export) on a loaded Mamba/Mamba2: the file reads back to the logits it came from,
    and llama.cpp's greedy tokens on it are ours."""
    from lmblocks.io.gguf_export import export

    name, ref, path = ssm_gguf
    model = lb.load(path, verbose=False)
    export(model, tmp_path / "out.gguf")
    again = lb.load(tmp_path / "out.gguf", verbose=False)
    ids = np.random.default_rng(11).integers(0, V, 40)
    # A passes through log and exp once more: equal to rounding
    np.testing.assert_allclose(again.logits(ids), model.logits(ids), rtol=0, atol=1e-6)
    pytest.importorskip("llama_cpp", reason="llama.cpp's Python binding (make llamacpp) is not installed")
    from test_convert import assert_llama_cpp_agrees

    assert_llama_cpp_agrees(model, tmp_path / "out.gguf", [ids.tolist()], 8, what=name)


def test_export_refuses_what_llama_cpp_mamba2_cannot_hold(tmp_path):
    rng = np.random.default_rng(0)
    m = nn.Model(nn.Embedding(V, 32, rng=rng), nn.Stack("MM", {"M": lambda i: nn.Layer(
        nn.Mamba2(32, head_dim=16, state_size=8, dt_limit=(0.0, 0.1), rng=rng))}), nn.RMSNorm(32))
    with pytest.raises(NotImplementedError, match=r"layers.0.mamba limits dt .*'mamba2' graph"):
        m.save(tmp_path / "m.gguf")
    m = nn.Model(nn.Embedding(V, 32, rng=rng), nn.Stack("MA", {
        "M": lambda i: nn.Layer(nn.Mamba2(32, head_dim=16, state_size=8, rng=rng)),
        "A": lambda i: nn.Layer(nn.Attention(32, 4, rng=rng))}), nn.RMSNorm(32))
    with pytest.raises(NotImplementedError, match=r"layers.0's MLP is missing or not a dense MLP; llama.cpp's "
                                                  r"'granitehybrid' graph"):  # attention beside Mamba2: Granite's graph
        m.save(tmp_path / "m.gguf")


@pytest.mark.parametrize("change, message", [
    (dict(conv_kernel=3), r"tensor 'backbone.layers.0.mixer.conv1d.weight' has shape \(148, 1, 4\); the config implies "
                          r"\(148, 1, 3\)"),
    (dict(n_groups=3), "num_heads 8 is not a multiple of n_groups 3"),
    (dict(head_dim=10), "expand \\* hidden_size = 96 but num_heads \\* head_dim = 80"),
    (dict(state_size=12), r"in_proj.weight' has shape \(252, 48\); the config implies \(248, 48\)"),
    (dict(num_heads=0), "num_heads"),
])
def test_inconsistent_mamba2_checkpoints_are_refused_by_name(change, message, tmp_path):
    """A config whose sizes disagree with each other or with the weights: the field or tensor is named."""
    import json

    from lmblocks.io import FormatError

    ref = transformers_model("mamba2_groups2")
    ref.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(change)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match=message):
        lb.load(tmp_path, verbose=False)

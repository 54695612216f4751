"""Falcon-H1 (attention and Mamba2 side by side in every layer, muP multipliers folded into the weights)
against transformers' FalconH1ForCausalLM on tiny random configs: logits, decode = recompute, SSM states
equal transformers' cache, the lmblocks folder format round trip, and config errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lmblocks as lb
from lmblocks import serialize
from lmblocks.io import FormatError
from test_mamba import (assert_decode_equals_recompute, assert_logits_equal_transformers, assert_states_equal_cache,
                        prefill_both, randomize, rel_err, saved_and_loaded, seeded)

V = 300
_MULTIPLIERS = dict(embedding_multiplier=2.0, lm_head_multiplier=0.5, key_multiplier=0.7, attention_in_multiplier=1.3,
                    attention_out_multiplier=0.8, ssm_in_multiplier=1.2, ssm_out_multiplier=0.9,
                    mlp_multipliers=[1.1, 0.6], ssm_multipliers=[0.9, 1.1, 0.8, 1.2, 0.7])
FALCON_H1 = {
    # No mamba norm (transformers' default): y * silu(z); mamba_d_ssm (64) is not expand * hidden (96); every bias.
    "no_norm_d_ssm_biases": dict(mamba_d_ssm=64, mamba_n_heads=8, mamba_n_groups=2, mamba_rms_norm=False,
                                 mamba_proj_bias=True, projectors_bias=True, attention_bias=True, mlp_bias=True,
                                 tie_word_embeddings=False, **_MULTIPLIERS),
    # Gated RMSNorm, norm before the gate (Falcon-H1's default when the norm is on), tied head, GQA, and
    # head_dim not hidden_size / heads (as Falcon-H1-0.5B: 64 with 1024 / 8).
    "norm_before_gate_tied": dict(mamba_d_ssm=None, mamba_n_heads=6, mamba_n_groups=3, mamba_rms_norm=True,
                                  mamba_norm_before_gate=True, tie_word_embeddings=True, num_key_value_heads=2,
                                  head_dim=8, **_MULTIPLIERS),
    # Gated RMSNorm, gate first (Mamba2's order); plain multipliers.
    "norm_after_gate": dict(mamba_d_ssm=48, mamba_n_heads=4, mamba_n_groups=1, mamba_rms_norm=True,
                            mamba_norm_before_gate=False, tie_word_embeddings=False, mamba_conv_bias=False),
}


def falcon_reference(name):
    from transformers import FalconH1Config, FalconH1ForCausalLM

    base = dict(vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=4, mamba_d_state=12, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=16,
                max_position_embeddings=512, rms_norm_eps=1e-5)
    cfg = FalconH1Config(**{**base, **{**FALCON_H1, **FALCON_H1_GGUF}[name]})
    return seeded(FalconH1ForCausalLM, cfg, eager=True)


@pytest.fixture(scope="module", params=sorted(FALCON_H1))
def falcon(request, tmp_path_factory):
    ref = falcon_reference(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, ref, saved_and_loaded(ref, folder), folder


@pytest.mark.parametrize("T", [1, 7, 64, 300])
def test_falcon_h1_logits_equal_transformers(falcon, T):
    name, ref, model, _ = falcon
    assert_logits_equal_transformers(model, ref, T, name)


def test_falcon_h1_layout_and_folded_multipliers(falcon):
    name, ref, model, _ = falcon
    layer = model.lm.body[0]
    assert layer.mixer.kind == "Parallel" and [b.kind for b in layer.mixer.blocks] == ["Mamba2", "Attention"]
    tied = ref.config.tie_word_embeddings
    # Only a tied table keeps its multipliers as runtime scales.
    assert model.lm.embed_scale == (ref.config.embedding_multiplier if tied else 1.0)
    assert model.lm.logit_scale == pytest.approx(ref.config.lm_head_multiplier if tied else 1.0)
    k = np.asarray(layer.mixer.blocks[1].weights()["k_proj"])
    want = ref.model.layers[0].self_attn.k_proj.weight.detach().numpy() * (
        ref.config.attention_in_multiplier * ref.config.key_multiplier)
    np.testing.assert_allclose(k, want, rtol=1e-6)


def test_falcon_h1_decode_equals_recompute(falcon):
    _, _, model, _ = falcon
    _, cache = assert_decode_equals_recompute(model, np.random.default_rng(9).integers(0, V, 40).astype(np.int32), 17)
    assert len(cache) == 3 and len(cache.states()) == 3  # every layer: keys and values, and an SSM state


def test_falcon_h1_states_after_prefill_equal_transformers_cache(falcon):
    name, ref, model, _ = falcon
    states, out = prefill_both(model, ref)
    assert [p for p, _ in states] == [f"layers.{i}.mixer.mamba" for i in range(len(states))]
    assert_states_equal_cache(states, out.past_key_values, range(len(states)), name, conv_atol=1e-5)


def assert_sequences_in_one_batch_equal_each_alone(model):
    a, b = (np.random.default_rng(s).integers(0, V, n).astype(np.int32) for s, n in ((6, 9), (7, 14)))
    cache = model.new_cache(2, 32)
    both = model.forward(cache, np.r_[a, b], seq=np.r_[np.zeros(9, np.int32), np.ones(14, np.int32)], logits="all")
    np.testing.assert_allclose(both[:9], model.logits(a), atol=1e-5 * np.abs(both).max())
    np.testing.assert_allclose(both[9:], model.logits(b), atol=1e-5 * np.abs(both).max())


def test_falcon_h1_sequences_in_one_batch_equal_each_alone(falcon):
    assert_sequences_in_one_batch_equal_each_alone(falcon[2])


def test_zamba2_sequences_in_one_batch_equal_each_alone(zamba):
    assert_sequences_in_one_batch_equal_each_alone(zamba[2])  # each run reads its own rows of the embeddings


def test_falcon_h1_save_and_load_round_trip(falcon, tmp_path):
    _, _, model, _ = falcon
    ids = np.random.default_rng(11).integers(0, V, 50).astype(np.int32)
    serialize.save(model, tmp_path / "lb")  # what nn.Model.save writes; a loaded model's save() writes GGUF
    again = lb.load(tmp_path / "lb")
    assert [b.kind for b in again.lm.body[0].mixer.blocks] == ["Mamba2", "Attention"]
    np.testing.assert_array_equal(again.logits(ids), model.logits(ids))


def _with_config(folder, tmp_path, **changes):
    import shutil

    dst = tmp_path / "edited"
    shutil.copytree(folder, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_falcon_h1_config_errors(tmp_path):
    folder = tmp_path / "hf"
    falcon_reference("no_norm_d_ssm_biases").save_pretrained(folder)
    with pytest.raises(FormatError, match=r"mamba_d_head 7 \* mamba_n_heads 8 is not mamba_d_ssm 64"):
        lb.load(_with_config(folder, tmp_path, mamba_d_head=7), verbose=False)
    with pytest.raises(FormatError, match="field 'ssm_multipliers' is"):
        lb.load(_with_config(folder, tmp_path / "b", ssm_multipliers=[1.0, 2.0]), verbose=False)
    with pytest.raises(FormatError, match="'hidden_act' is 'gelu'"):
        lb.load(_with_config(folder, tmp_path / "c", hidden_act="gelu"), verbose=False)
    # A checkpoint whose in_proj does not fit the config names the tensor.
    with pytest.raises(FormatError, match=r"model.layers.0.mamba.in_proj.weight' has shape"):
        lb.load(_with_config(folder, tmp_path / "d", mamba_d_state=10), verbose=False)


def test_parallel_block_errors():
    from lmblocks import nn

    with pytest.raises(ValueError, match="Parallel: no blocks"):
        nn.Parallel([])
    with pytest.raises(ValueError, match="Parallel: block 1 \\(MLP\\) takes 32 features but the blocks before it takes 16"):
        nn.Parallel([nn.MLP(16, 8), nn.MLP(32, 8)])



# ---- Falcon-H1 as llama.cpp's "falcon-h1" GGUF -----------------------------------------------------------

# What llama.cpp's graph computes: the mamba norm (if any) after the gate, no projector or o_proj biases.
FALCON_H1_GGUF = {
    "gguf_norm": dict(FALCON_H1["norm_after_gate"], mamba_conv_bias=True, **_MULTIPLIERS),
    "gguf_no_norm": dict(FALCON_H1["no_norm_d_ssm_biases"], mamba_proj_bias=False, projectors_bias=False,
                         attention_bias=False, mlp_bias=False),
}


def write_falcon_h1_gguf(ref, path):
    """transformers' model as llama.cpp's converter writes it (conversion/falcon_h1.py, mamba.py): every
    multiplier folded into its weight (mup_vector from transformers' compute_mup_vector), A = -exp(A_log),
    D as (H, 1), the conv squeezed to (conv_dim, K), the mamba norm as (groups, d / groups); float32."""
    from test_moe import _spm_vocab
    from transformers.models.falcon_h1.modeling_falcon_h1 import compute_mup_vector

    from lmblocks.io.gguf_writer import write_gguf

    c, arch = ref.config, "falcon-h1"
    sd = {k: v.detach().float().numpy() for k, v in ref.state_dict().items()}
    mup = compute_mup_vector(c)[0, 0].numpy()
    u32 = [("context_length", c.max_position_embeddings), ("embedding_length", c.hidden_size),
           ("block_count", c.num_hidden_layers), ("feed_forward_length", c.intermediate_size),
           ("attention.head_count", c.num_attention_heads), ("attention.head_count_kv", c.num_key_value_heads),
           ("attention.key_length", getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)),
           ("attention.value_length", getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)),
           ("ssm.conv_kernel", c.mamba_d_conv), ("ssm.inner_size", c.mamba_d_ssm), ("ssm.state_size", c.mamba_d_state),
           ("ssm.time_step_rank", c.mamba_n_heads), ("ssm.group_count", c.mamba_n_groups)]
    md = [("general.architecture", "string", arch), ("general.name", "string", "tiny-falcon-h1"),
          *[(f"{arch}.{k}", "uint32", v) for k, v in u32],
          (f"{arch}.rope.freq_base", "float32", c.rope_parameters["rope_theta"]),
          (f"{arch}.attention.layer_norm_rms_epsilon", "float32", c.rms_norm_eps), *_spm_vocab(c.vocab_size)]
    g, d = c.mlp_multipliers
    tensors = [("token_embd.weight", sd["model.embed_tokens.weight"] * c.embedding_multiplier),
               ("output_norm.weight", sd["model.final_layernorm.weight"]),
               ("output.weight", sd["lm_head.weight"] * c.lm_head_multiplier)]
    for i in range(c.num_hidden_layers):
        p, b, m = f"model.layers.{i}.", f"blk.{i}.", f"model.layers.{i}.mamba."
        a_in = c.attention_in_multiplier
        tensors += [
            (b + "attn_norm.weight", sd[p + "input_layernorm.weight"]),
            (b + "attn_q.weight", sd[p + "self_attn.q_proj.weight"] * a_in),
            (b + "attn_k.weight", sd[p + "self_attn.k_proj.weight"] * a_in * c.key_multiplier),
            (b + "attn_v.weight", sd[p + "self_attn.v_proj.weight"] * a_in),
            (b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"] * c.attention_out_multiplier),
            (b + "ssm_in.weight", sd[m + "in_proj.weight"] * c.ssm_in_multiplier * mup[:, None]),
            (b + "ssm_conv1d.weight", sd[m + "conv1d.weight"][:, 0, :]),
            (b + "ssm_conv1d.bias", sd[m + "conv1d.bias"]),
            (b + "ssm_dt.bias", sd[m + "dt_bias"]),
            (b + "ssm_a", -np.exp(sd[m + "A_log"])[:, None]),
            (b + "ssm_d", sd[m + "D"][:, None]),
            (b + "ssm_out.weight", sd[m + "out_proj.weight"] * c.ssm_out_multiplier),
            (b + "ffn_norm", sd[p + "pre_ff_layernorm.weight"]),  # no ".weight": llama.cpp's falcon-h1 name
            (b + "ffn_gate.weight", sd[p + "feed_forward.gate_proj.weight"] * g),
            (b + "ffn_up.weight", sd[p + "feed_forward.up_proj.weight"]),
            (b + "ffn_down.weight", sd[p + "feed_forward.down_proj.weight"] * d)]
        if c.mamba_rms_norm:
            tensors.append((b + "ssm_norm.weight", sd[m + "norm.weight"].reshape(c.mamba_n_groups, -1)))
    write_gguf(path, md, [(n, np.ascontiguousarray(t, np.float32)) for n, t in tensors])


@pytest.fixture(scope="module", params=sorted(FALCON_H1_GGUF))
def falcon_gguf(request, tmp_path_factory):
    ref = falcon_reference(request.param)
    randomize(ref)
    path = tmp_path_factory.mktemp(request.param) / "tiny-falcon-h1.gguf"
    write_falcon_h1_gguf(ref, path)
    return ref, path


@pytest.mark.parametrize("T", [7, 300])
def test_falcon_h1_gguf_logits_equal_transformers(falcon_gguf, T):
    ref, path = falcon_gguf
    model = lb.load(path, verbose=False)
    assert model.args.model_type == "falcon_h1"
    assert ("norm" in model.lm.body[0].mixer.blocks[0].weights()) == ref.config.mamba_rms_norm
    assert_logits_equal_transformers(model, ref, T)


def test_llama_cpp_runs_the_falcon_h1_gguf_with_our_greedy_tokens(falcon_gguf):
    """llama.cpp loads the file; its greedy continuation equals ours, and its logits along the way equal
    ours (teacher-forced on its tokens) within 1e-3 of their range."""
    pytest.importorskip("llama_cpp", reason="llama.cpp's Python binding (make llamacpp) is not installed")
    from test_convert import llama_cpp_greedy

    _, path = falcon_gguf
    model = lb.load(path, verbose=False)
    prompts = [np.random.default_rng(s).integers(3, V, n).tolist() for s, n in ((1, 9), (2, 23))]
    for ids, (toks, theirs) in zip(prompts, llama_cpp_greedy(path, prompts, 16)):
        forced = model.logits(ids + toks)[len(ids) - 1:-1]
        assert rel_err(forced, theirs) <= 1e-3
        assert model.generate_ids(ids, 16, stop_at_eos=False) == toks

# ---- Zamba2: Mamba2 layers and shared transformer blocks on [x | embeddings] ----------------------------------

ZAMBA2 = {
    # Two shared blocks over three hybrid layers (uses 0 and 2 share block 0), q/k/v adapters, tied head.
    "two_blocks_attn_adapters": dict(num_mem_blocks=2, use_shared_attention_adapter=True, tie_word_embeddings=True,
                                     layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "hybrid", "mamba"]),
    # One shared block used twice, MLP adapters only, untied head, biases, silu, groups 2, no rope.
    "one_block_bias_nope": dict(num_mem_blocks=1, use_shared_attention_adapter=False, tie_word_embeddings=False,
                                add_bias_linear=True, hidden_act="silu", mamba_ngroups=2, use_mem_rope=False,
                                layers_block_type=["hybrid", "mamba", "mamba", "hybrid", "mamba", "mamba"]),
}


def zamba2_reference(name):
    from transformers import Zamba2Config, Zamba2ForCausalLM

    cfg = Zamba2Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=6, num_attention_heads=4,
                       n_mamba_heads=4, mamba_d_state=8, chunk_size=16, adapter_rank=4,
                       max_position_embeddings=512, **{"use_mem_rope": True, **ZAMBA2[name]})
    return seeded(Zamba2ForCausalLM, cfg, eager=True)


@pytest.fixture(scope="module", params=sorted(ZAMBA2))
def zamba(request, tmp_path_factory):
    ref = zamba2_reference(request.param)
    return request.param, ref, saved_and_loaded(ref, tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("T", [1, 7, 64, 300])
def test_zamba2_logits_equal_transformers(zamba, T):
    name, ref, model = zamba
    assert_logits_equal_transformers(model, ref, T, name)


def hf_shares(ref, i, k):
    """Whether transformers' hybrid layers i and k hold one shared block (it ties them only when it ties the
    embeddings too; else each layer keeps, and saves, its own copy)."""
    a, b = (ref.model.layers[n].shared_transformer.self_attn.q_proj.weight for n in (i, k))
    return a.data_ptr() == b.data_ptr()


def test_zamba2_shared_weights_are_one_copy_with_a_cache_slot_per_use(zamba):
    name, ref, model = zamba
    hybrid, M = ref.config.hybrid_layer_ids, ref.config.num_mem_blocks
    attn = [use_attention(model, i) for i in hybrid]  # each use's Attention
    assert all(a.kind == "Attention" for a in attn)
    assert any(hf_shares(ref, hybrid[j], hybrid[j % M]) for j in range(M, len(hybrid))) == ref.config.tie_word_embeddings
    for j, a in enumerate(attn):
        first = attn[j % M]
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert np.shares_memory(np.asarray(a.weights()[n]), np.asarray(first.weights()[n])) == \
                hf_shares(ref, hybrid[j], hybrid[j % M]), (name, j, n)
    if ref.config.use_shared_attention_adapter:  # adapters are per use
        assert not np.shares_memory(np.asarray(attn[0].weights()["q_proj.lora_A"]),
                                    np.asarray(attn[M].weights()["q_proj.lora_A"]))
    cache = model.new_cache(1, 16)
    assert len(cache) == len(hybrid)  # one KV slot per use
    assert len(cache.states()) == ref.config.num_hidden_layers


def test_zamba2_decode_equals_recompute(zamba):
    _, _, model = zamba
    assert_decode_equals_recompute(model, np.random.default_rng(9).integers(0, V, 40).astype(np.int32), 17)


def test_zamba2_states_after_prefill_equal_transformers_cache(zamba):
    name, ref, model = zamba
    states, out = prefill_both(model, ref)
    assert [p for p, _ in states] == [f"layers.{i}.mamba" for i in range(len(states))]
    assert_states_equal_cache(states, out.past_key_values, range(len(states)), name, conv_atol=1e-5)


def use_attention(model, i):
    """The Attention of hybrid layer i: Layer.attn_norm = Sequential([Parallel([identity, branch]), norm])."""
    return model.lm.body[i].attn_norm[0].blocks[1][2]


def test_zamba2_save_and_load_round_trip(zamba, tmp_path):
    _, ref, model = zamba
    ids = np.random.default_rng(11).integers(0, V, 50).astype(np.int32)
    serialize.save(model, tmp_path / "lb")
    again = lb.load(tmp_path / "lb")
    np.testing.assert_array_equal(again.logits(ids), model.logits(ids))
    # Shared weights were stored once and come back as one copy.
    hybrid, M = ref.config.hybrid_layer_ids, ref.config.num_mem_blocks
    for j in range(M, len(hybrid)):
        a, first = use_attention(again, hybrid[j]), use_attention(again, hybrid[j % M])
        assert np.shares_memory(np.asarray(a.weights()["q_proj"]), np.asarray(first.weights()["q_proj"])) == \
            hf_shares(ref, hybrid[j], hybrid[j % M])


def test_zamba2_config_errors(tmp_path):
    folder = tmp_path / "hf"
    zamba2_reference("two_blocks_attn_adapters").save_pretrained(folder)
    with pytest.raises(FormatError, match="'layers_block_type' is"):
        lb.load(_with_config(folder, tmp_path / "b", layers_block_type=["mamba", "hybrid"]), verbose=False)
    with pytest.raises(FormatError, match=r"linear_q_adapter_list.0.0.weight' has shape \(4, 64\); the config implies \(8, 64\)"):
        lb.load(_with_config(folder, tmp_path / "c", adapter_rank=8), verbose=False)


# ---- the general pieces: low-rank adapters, ConcatEmbeddings ---------------------------------------------


def test_low_rank_adapters_equal_the_folded_dense_projection(tmp_path):
    from lmblocks import nn

    D, F, r = 32, 48, 3
    g = np.random.default_rng(0)
    mat = lambda *s: (g.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    attn_w = {n: mat(D, D) for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    mlp_w = {"gate_proj": mat(F, D), "up_proj": mat(F, D), "down_proj": mat(D, F)}
    lora = {n: (mat(r, w.shape[1]), mat(w.shape[0], r)) for n, w in {**attn_w, **mlp_w}.items()
            if n in ("q_proj", "v_proj", "o_proj", "up_proj", "down_proj")}
    emb = mat(V, D) * 5

    def model(adapted):
        def with_lora(ws):
            if not adapted:  # W + B A: the same map as one dense matrix
                return {n: w + lora[n][1] @ lora[n][0] if n in lora else w for n, w in ws.items()}
            return ws | {f"{n}.lora_{x}": lora[n][k] for n in lora if n in ws for k, x in ((0, "A"), (1, "B"))}
        names = lambda ws: [n for n in lora if n in ws] if adapted else []  # noqa: E731
        attn = nn.Attention(D, 4, weights=with_lora(attn_w), adapters=names(attn_w), adapter_rank=r)
        mlp = nn.MLP(D, F, weights=with_lora(mlp_w), adapters=names(mlp_w), adapter_rank=r)
        return nn.Model(nn.Embedding(V, D, weight=emb), nn.Stack([nn.Layer(attn, mlp)]), nn.RMSNorm(D))

    ids = np.random.default_rng(1).integers(0, V, 20).astype(np.int32)
    lm, dense = model(True), model(False)
    assert set(lm.lm.body[0].mixer.weights()) >= {"q_proj.lora_A", "q_proj.lora_B", "o_proj.lora_B"}
    np.testing.assert_allclose(lm.logits(ids), dense.logits(ids), atol=2e-5 * np.abs(dense.logits(ids)).max())
    lm.save(tmp_path / "lora")
    np.testing.assert_array_equal(lb.load(tmp_path / "lora").logits(ids), lm.logits(ids))
    # A fresh adapter (B = 0) changes nothing.
    fresh = nn.Attention(D, 4, weights=attn_w, adapters=["q_proj"], adapter_rank=r)
    assert not np.asarray(fresh.weights()["q_proj.lora_B"]).any()


def test_low_rank_adapter_errors():
    from lmblocks import nn

    with pytest.raises(ValueError, match="Attention: no projection 'x_proj' to adapt"):
        nn.Attention(32, 4, adapters=["x_proj"], adapter_rank=2)
    with pytest.raises(ValueError, match="adapter_rank must be a positive integer"):
        nn.MLP(32, 48, adapters=["up_proj"])
    z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    with pytest.raises(ValueError, match=r"MLP: up_proj.lora_A has shape \(2, 31\); expected \(2, 32\)"):
        lb._core.nn.MLP(z(48, 32), z(48, 32), z(32, 48), adapters={"up_proj": (z(2, 31), z(48, 2))})
    with pytest.raises(ValueError, match=r"MLP: up_proj.lora_B has shape \(47, 2\); expected \(48, 2\)"):
        lb._core.nn.MLP(z(48, 32), z(48, 32), z(32, 48), adapters={"up_proj": (z(2, 32), z(47, 2))})
    with pytest.raises(ValueError, match="Attention: adapter q_proj must be a pair"):
        lb._core.nn.Attention(4, 4, 8, z(32, 32), z(32, 32), z(32, 32), z(32, 32), adapters={"q_proj": (z(2, 32),)})


def test_concat_embeddings_needs_the_models_width():
    from lmblocks import nn

    D = 16
    branch = nn.Sequential([nn.ConcatEmbeddings(D, 8), nn.Linear(D + 8, D)])
    layer = nn.Layer(nn.Mamba2(D, head_dim=8, state_size=4), attn_norm=nn.Sequential([nn.Parallel([nn.Sequential([]), branch]), nn.RMSNorm(D)]))
    with pytest.raises(ValueError, match="ConcatEmbeddings block takes embeddings of 8 features but the embedding has D=16"):
        nn.Model(nn.Embedding(V, D), nn.Stack([layer]), nn.RMSNorm(D))


def test_zamba2_summary_counts_shared_weights_once(zamba):
    name, ref, model = zamba
    import re

    s = model.summary(print_table=False)["totals"]
    hybrid = ref.config.hybrid_layer_ids

    def used(n):  # an untied layer also holds (unused) adapters of the other uses of its block
        m = re.match(r"model\.layers\.(\d+)\..*_adapter_list\.(\d+)\.", n)
        return not m or ref.config.tie_word_embeddings or hybrid.index(int(m[1])) == int(m[2])

    # named_parameters lists a tied tensor once, as the summary should
    assert s["params"] == sum(p.numel() for n, p in ref.named_parameters() if used(n)), name


def test_mamba2_norm_options():
    from lmblocks import nn

    assert "norm" not in nn.Mamba2(32, 4, 16, state_size=8, norm="none").weights()
    b = nn.Mamba2(32, 4, 16, state_size=8, norm="before_gate")
    assert b.norm_before_gate and b.weights()["norm"].shape == (64,)
    with pytest.raises(ValueError, match="Mamba2: norm must be 'gated', 'before_gate' or 'none', got 'after'"):
        nn.Mamba2(32, 4, 16, norm="after")


def test_gguf_export_refuses_adapters_it_would_drop(tmp_path):
    from lmblocks import nn

    D = 32
    layer = nn.Layer(nn.Attention(D, 4, adapters=["q_proj"], adapter_rank=2), nn.MLP(D, 64))
    model = nn.Model(nn.Embedding(V, D), nn.Stack([layer]), nn.RMSNorm(D))
    with pytest.raises(NotImplementedError, match="layers.0.attn has low-rank adapters"):
        model.save(tmp_path / "m.gguf")


def test_saved_adapter_without_its_b_is_a_format_error(tmp_path):
    from lmblocks import nn

    D = 32
    model = nn.Model(nn.Embedding(V, D), nn.Stack([nn.Layer(nn.Attention(D, 4, adapters=["v_proj"], adapter_rank=2),
                                                            nn.MLP(D, 64))]), nn.RMSNorm(D))
    model.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "lmblocks.json").read_text())
    del cfg["body"]["blocks"][0]["mixer"]["weights"]["v_proj.lora_B"]
    (tmp_path / "m" / "lmblocks.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="weight 'v_proj.lora_B' is missing"):
        lb.load(tmp_path / "m")

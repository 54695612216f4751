"""Jamba and Granite 4.0-H (granitemoehybrid): hybrids of SSM layers, attention without (or with) rope and
MoE or dense feed-forwards, loaded from Hugging Face folders and checked against transformers' JambaForCausalLM
/ GraniteMoeHybridForCausalLM on tiny random configs: logits, decode = recompute, SSM states = transformers'
cache, lmblocks' own folder format round trip, and config errors that name the field."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lmblocks as lb
from lmblocks.io import FormatError

from test_mamba import (assert_decode_equals_recompute, assert_logits_equal_transformers, assert_states_equal_cache,
                        prefill_both, randomize, rel_err, seeded)

V = 300

JAMBA = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, attn_layer_period=3,
             attn_layer_offset=1, rms_norm_eps=1e-6, max_position_embeddings=512)
GRANITE = dict(vocab_size=V, hidden_size=48, intermediate_size=40, shared_intermediate_size=56, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, mamba_n_heads=8, mamba_n_groups=2, mamba_d_state=12,
               mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=16, rms_norm_eps=1e-6, max_position_embeddings=512,
               layer_types=["mamba", "attention", "mamba", "attention"], embedding_multiplier=3.0,
               residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=2.5)

CONFIGS = {
    # Layers M A M M; experts in layers 1 and 3 (one attention + MoE layer, one Mamba + MoE layer).
    "jamba_moe": ("jamba", dict(JAMBA, num_experts=4, num_experts_per_tok=2, expert_layer_period=2,
                                expert_layer_offset=1, tie_word_embeddings=False)),
    # Dense (num_experts 1), tied, Mamba with projection biases, dt rank 3, conv kernel 3.
    "jamba_dense_bias": ("jamba", dict(JAMBA, num_experts=1, tie_word_embeddings=True, mamba_proj_bias=True,
                                       mamba_dt_rank=3, mamba_d_conv=3, attn_layer_offset=2)),
    "granite_moe_rope": ("granitemoehybrid", dict(GRANITE, num_local_experts=4, num_experts_per_tok=2,
                                                  position_embedding_type="rope", tie_word_embeddings=False)),
    "granite_dense_nope": ("granitemoehybrid", dict(GRANITE, num_local_experts=0, position_embedding_type=None,
                                                    tie_word_embeddings=True, mamba_n_groups=1)),
}


def hf_model(kind, kw):
    """transformers' Jamba or GraniteMoeHybrid model of config `kw`, random parameters (see randomize)."""
    import transformers
    if kind == "jamba":
        ref = seeded(transformers.JambaForCausalLM, transformers.JambaConfig(**kw))
    else:
        ref = seeded(transformers.GraniteMoeHybridForCausalLM, transformers.GraniteMoeHybridConfig(**kw))
    randomize(ref)
    return ref


def hf_folder(name, folder):
    """transformers' model for CONFIGS[name], random parameters, saved to ``folder``."""
    kind, kw = CONFIGS[name]
    ref = hf_model(kind, kw)
    ref.save_pretrained(folder)
    return ref


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    ref = hf_folder(request.param, folder)
    return request.param, ref, lb.load(folder, verbose=False), folder


def mixers(model):
    return [b.mixer.kind for b in model.lm.body]


def test_layouts(tiny):
    name, _, model, _ = tiny
    body = list(model.lm.body)
    if name.startswith("jamba"):
        assert mixers(model) == (["Mamba", "Attention", "Mamba", "Mamba"] if name == "jamba_moe"
                                 else ["Mamba", "Mamba", "Attention", "Mamba"])
        assert [b.mlp.kind for b in body] == (["MLP", "MoE"] * 2 if name == "jamba_moe" else ["MLP"] * 4)
        assert all(b.mixer.normed for b in body if b.mixer.kind == "Mamba")
        assert not any(b.mixer.rope for b in body if b.mixer.kind == "Attention")
    else:
        assert mixers(model) == ["Mamba2", "Attention"] * 2
        moe = name == "granite_moe_rope"
        assert [b.mlp.kind for b in body] == (["MoE"] if moe else ["MLP"]) * 4
        assert all(b.mixer.rope == moe for b in body if b.mixer.kind == "Attention")
        if moe:
            assert all(b.mlp.shared is not None and b.mlp.norm_topk for b in body)


@pytest.mark.parametrize("T", [1, 7, 64, 300])
def test_logits_equal_transformers(tiny, T):
    name, ref, model, _ = tiny
    assert_logits_equal_transformers(model, ref, T, name)


def test_decode_step_by_step_equals_full_recompute(tiny):
    _, _, model, _ = tiny
    _, cache = assert_decode_equals_recompute(model, np.random.default_rng(3).integers(0, V, 40).astype(np.int32), 10)
    assert len(cache.states()) == sum(k.startswith("Mamba") for k in mixers(model))


def test_states_after_prefill_equal_transformers_cache(tiny):
    name, ref, model, _ = tiny
    states, out = prefill_both(model, ref)
    want_layers = [i for i, k in enumerate(mixers(model)) if k.startswith("Mamba")]
    assert [int(p.split(".")[1]) for p, _ in states] == want_layers
    assert_states_equal_cache(states, out.past_key_values, want_layers, name, nonzero=True)


def test_save_and_load_round_trip(tiny, tmp_path):
    name, _, model, _ = tiny
    ids = np.random.default_rng(5).integers(0, V, 50).astype(np.int32)
    lb.serialize.save(model, tmp_path / name)  # what nn.Model.save writes; Model.save writes GGUF
    spec = json.loads((tmp_path / name / "lmblocks.json").read_text())
    attn = [b["mixer"] for b in spec["body"]["blocks"] if b["mixer"]["kind"] == "Attention"]
    assert attn and all(a["rope"] == (name == "granite_moe_rope") for a in attn)
    again = lb.load(tmp_path / name)
    np.testing.assert_array_equal(again.logits(ids), model.logits(ids))
    body = list(again.lm.body)
    assert [b.mixer.kind for b in body] == mixers(model)
    if name.startswith("jamba"):
        assert all(b.mixer.normed and b.mixer.norm_eps == pytest.approx(1e-6) for b in body if b.mixer.kind == "Mamba")


def test_rope_matters(tiny, tmp_path):
    """The same weights with the attention's rope switched: other logits (so the flag is live both ways)."""
    name, _, model, _ = tiny
    lb.serialize.save(model, tmp_path / "m")
    spec_path = tmp_path / "m" / "lmblocks.json"
    spec = json.loads(spec_path.read_text())
    for b in spec["body"]["blocks"]:
        if b["mixer"]["kind"] == "Attention":
            b["mixer"]["rope"] = not b["mixer"]["rope"]
    spec_path.write_text(json.dumps(spec))
    ids = np.random.default_rng(6).integers(0, V, 30).astype(np.int32)
    assert rel_err(lb.load(tmp_path / "m").logits(ids), model.logits(ids)) > 1e-3


# ---- config and tensor errors ---------------------------------------------------------------------------


def edited(folder, tmp_path, change=None, drop=None):
    """A copy of the Hugging Face folder with config.json changed; ``drop`` removes that tensor."""
    import shutil

    from safetensors.numpy import load_file, save_file
    out = tmp_path / "edited"
    shutil.copytree(folder, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(change or {})
    (out / "config.json").write_text(json.dumps(cfg))
    if drop:
        t = load_file(str(out / "model.safetensors"))
        del t[drop]
        save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("change, match", [
    ({"attn_layer_offset": 3}, r"attn_layer_offset' is 3; expected an integer in \[0, attn_layer_period = 3\)"),
    ({"expert_layer_period": 0}, "expert_layer_period' is 0"),
    ({"num_experts_per_tok": 5}, "num_experts_per_tok' is 5; expected at most num_experts = 4"),
])
def test_jamba_config_errors(tmp_path, change, match):
    folder = tmp_path / "hf"
    hf_folder("jamba_moe", folder)
    with pytest.raises(FormatError, match=match):
        lb.load(edited(folder, tmp_path, change), verbose=False)


def test_jamba_missing_dt_norm_names_the_tensor(tmp_path):
    folder = tmp_path / "hf"
    hf_folder("jamba_moe", folder)
    with pytest.raises(FormatError, match=r"model\.layers\.0\.mamba\.dt_layernorm\.weight' is missing"):
        lb.load(edited(folder, tmp_path, drop="model.layers.0.mamba.dt_layernorm.weight"), verbose=False)


@pytest.mark.parametrize("change, match", [
    ({"layer_types": ["mamba", "attention"]}, "layer_types' is .*expected num_hidden_layers = 4 entries"),
    ({"layer_types": ["mamba", "attention", "mamba", "moe"]}, "each 'mamba' or 'attention'"),
    ({"position_embedding_type": "alibi"}, "position_embedding_type' is 'alibi'"),
    ({"num_experts_per_tok": 9}, r"num_experts_per_tok' is 9; expected an integer in \[1, num_local_experts = 4\]"),
    ({"residual_multiplier": 0}, "residual_multiplier' is 0"),
])
def test_granite_config_errors(tmp_path, change, match):
    folder = tmp_path / "hf"
    hf_folder("granite_moe_rope", folder)
    with pytest.raises(FormatError, match=match):
        lb.load(edited(folder, tmp_path, change), verbose=False)


def test_granite_shared_mlp_shape_names_the_tensor(tmp_path):
    folder = tmp_path / "hf"
    hf_folder("granite_dense_nope", folder)
    with pytest.raises(FormatError, match=r"shared_mlp\.input_linear\.weight' has shape \(112, 48\); the config "
                                          r"implies \(120, 48\)"):
        lb.load(edited(folder, tmp_path, {"shared_intermediate_size": 60}), verbose=False)


# ---- the native options on their own ------------------------------------------------------------------


def test_mamba_norms_come_together():
    nn = lb.nn
    m = nn.Mamba(32, state_size=8, dt_norms=True, rng=np.random.default_rng(0))
    w = m.weights()
    assert w["dt_norm"].shape == (2,) and w["b_norm"].shape == (8,) and m.normed
    with pytest.raises(ValueError, match="dt_norm, b_norm and c_norm go together"):
        lb._core.nn.Mamba(*(w[n] for n in ("in_proj", "conv_weight", "conv_bias", "x_proj", "dt_proj", "dt_bias",
                                           "A_log", "D", "out_proj")), dt_norm=w["dt_norm"])
    with pytest.raises(ValueError, match=r"b_norm' has shape \(7,\)"):
        nn.Mamba(32, state_size=8, dt_norms=True, weights={"b_norm": np.ones(7, np.float32)})


def test_attention_without_rope_ignores_positions():
    """No rope: the last token's output depends on which tokens precede it, not on their order; with rope it
    does depend on the order."""
    nn = lb.nn

    def one_layer(rope):
        rng = np.random.default_rng(0)
        emb = nn.Embedding(V, 32, rng=rng, std=1.0)
        return nn.Model(emb, nn.Stack("A", {"A": lambda i: nn.Layer(nn.Attention(32, 4, 2, rope=rope, rng=rng,
                                                                                  std=0.3))}), nn.RMSNorm(32))

    nope, rope = one_layer(False), one_layer(True)
    assert not nope.lm.body[0].mixer.rope and rope.lm.body[0].mixer.rope
    ids = np.asarray([3, 17, 42, 99, 7], np.int32)
    shuffled = np.asarray([99, 42, 3, 17, 7], np.int32)
    a, b = nope.logits(ids)[-1], nope.logits(shuffled)[-1]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())
    a, b = rope.logits(ids)[-1], rope.logits(shuffled)[-1]
    assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()


# ---- GGUF: the files llama.cpp's converter writes, against transformers and llama.cpp ---------------------


def write_hybrid_gguf(ref, path, arch, rope=False):
    """transformers' Jamba / GraniteMoeHybrid as llama.cpp's converter writes it (conversion/jamba.py,
    granite.py's GraniteHybridModel): per-layer head_count_kv (0 for SSM layers), A = -exp(A_log), conv
    weights squeezed, Mamba2's A and D as (H, 1) and norm as (G, d_inner / G), experts stacked per
    projection, Granite's fused gate/up split and, with rope, q/k rows in Meta's pair order."""
    from lmblocks.io.gguf_writer import write_gguf
    from test_moe import _meta_order, _spm_vocab

    c = ref.config
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    L, D = c.num_hidden_layers, c.hidden_size
    granite = arch == "granitehybrid"
    attn = [i for i in range(L) if (c.layer_types[i] in ("attention", "full_attention") if granite
                                    else c.layers_block_type[i] == "attention")]
    E = c.num_local_experts if granite else c.num_experts
    u32 = [("context_length", c.max_position_embeddings), ("embedding_length", D), ("block_count", L),
           ("attention.head_count", c.num_attention_heads),
           ("ssm.conv_kernel", c.mamba_d_conv), ("ssm.inner_size", c.mamba_expand * D),
           ("ssm.state_size", c.mamba_d_state)]
    if E:  # llama.cpp asserts expert_used_count <= expert_count (a dense Jamba has num_experts 1)
        u32 += [("expert_count", E), ("expert_used_count", min(c.num_experts_per_tok, E))]
    if granite:
        u32 += [("feed_forward_length", c.intermediate_size if E else c.shared_intermediate_size),
                ("ssm.time_step_rank", c.mamba_n_heads), ("ssm.group_count", c.mamba_n_groups)]
        if E:
            u32.append(("expert_shared_feed_forward_length", c.shared_intermediate_size))
    else:
        u32 += [("feed_forward_length", c.intermediate_size), ("ssm.time_step_rank", c.mamba_dt_rank)]
    md = [("general.architecture", "string", arch), ("general.name", "string", f"tiny-{arch}"),
          *[(f"{arch}.{k}", "uint32", v) for k, v in u32],
          (f"{arch}.attention.head_count_kv", "array[int32]",
           [c.num_key_value_heads if i in attn else 0 for i in range(L)]),
          (f"{arch}.attention.layer_norm_rms_epsilon", "float32", c.rms_norm_eps), *_spm_vocab(c.vocab_size)]
    if granite:
        md += [(f"{arch}.{k}", "float32", float(getattr(c, a))) for k, a in (
            ("embedding_scale", "embedding_multiplier"), ("residual_scale", "residual_multiplier"),
            ("attention.scale", "attention_multiplier"), ("logit_scale", "logits_scaling"))]
        md += [(f"{arch}.rope.scaling.finetuned", "bool", rope),
               (f"{arch}.rope.freq_base", "float32", c.rope_parameters["rope_theta"])]
    final = "model.norm.weight" if granite else "model.final_layernorm.weight"
    tensors = [("token_embd.weight", sd["model.embed_tokens.weight"]), ("output_norm.weight", sd[final])]
    if "lm_head.weight" in sd and not c.tie_word_embeddings:
        tensors.append(("output.weight", sd["lm_head.weight"]))
    heads = {"q": c.num_attention_heads, "k": c.num_key_value_heads}
    for i in range(L):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        tensors.append((b + "attn_norm.weight", sd[p + "input_layernorm.weight"]))
        if i in attn:
            for x in "qkv":
                t = sd[p + f"self_attn.{x}_proj.weight"]
                tensors.append((b + f"attn_{x}.weight", _meta_order(t, heads[x]) if rope and x in heads else t))
            tensors.append((b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"]))
        else:
            m = p + "mamba."
            tensors += [(b + "ssm_in.weight", sd[m + "in_proj.weight"]),
                        (b + "ssm_conv1d.weight", sd[m + "conv1d.weight"].squeeze(1)),
                        (b + "ssm_conv1d.bias", sd[m + "conv1d.bias"]),
                        (b + "ssm_out.weight", sd[m + "out_proj.weight"])]
            A = -np.exp(sd[m + "A_log"])
            if granite:
                G = c.mamba_n_groups
                tensors += [(b + "ssm_dt.bias", sd[m + "dt_bias"]), (b + "ssm_a", A.reshape(-1, 1)),
                            (b + "ssm_d", sd[m + "D"].reshape(-1, 1)),
                            (b + "ssm_norm.weight", sd[m + "norm.weight"].reshape(G, -1))]
            else:
                tensors += [(b + "ssm_x.weight", sd[m + "x_proj.weight"]),
                            (b + "ssm_dt.weight", sd[m + "dt_proj.weight"]),
                            (b + "ssm_dt.bias", sd[m + "dt_proj.bias"]), (b + "ssm_a", A), (b + "ssm_d", sd[m + "D"]),
                            *[(b + f"ssm_{x}_norm.weight", sd[m + f"{x}_layernorm.weight"]) for x in ("dt", "b", "c")]]
        ff_norm = "post_attention_layernorm" if granite else "pre_ff_layernorm"
        tensors.append((b + "ffn_norm.weight", sd[p + ff_norm + ".weight"]))
        f = p + ("block_sparse_moe." if granite else "feed_forward.")
        if f + "router.weight" in sd:
            F = c.intermediate_size
            gate_up, down = sd[f + "experts.gate_up_proj"], sd[f + "experts.down_proj"]
            tensors += [(b + "ffn_gate_inp.weight", sd[f + "router.weight"]),
                        (b + "ffn_gate_exps.weight", np.ascontiguousarray(gate_up[:, :F])),
                        (b + "ffn_up_exps.weight", np.ascontiguousarray(gate_up[:, F:])),
                        (b + "ffn_down_exps.weight", down)]
        if granite:
            Fs, sfx = c.shared_intermediate_size, "_shexp" if E else ""
            gu = sd[p + "shared_mlp.input_linear.weight"]
            tensors += [(b + f"ffn_gate{sfx}.weight", gu[:Fs]), (b + f"ffn_up{sfx}.weight", gu[Fs:]),
                        (b + f"ffn_down{sfx}.weight", sd[p + "shared_mlp.output_linear.weight"])]
        elif f + "router.weight" not in sd:
            tensors += [(b + f"ffn_{x}.weight", sd[f + f"{x}_proj.weight"]) for x in ("gate", "up", "down")]
    write_gguf(path, md, [(n, np.ascontiguousarray(t, np.float32)) for n, t in tensors])


GGUF_CASES = {  # name: (CONFIGS entry, llama.cpp arch, rope in the file)
    "jamba_moe": ("jamba_moe", "jamba", False),
    "jamba_dense": ("jamba_dense_bias", "jamba", False),
    "granite_moe_nope": ("granite_moe_rope", "granitehybrid", False),
    "granite_moe_rope": ("granite_moe_rope", "granitehybrid", True),
    "granite_dense": ("granite_dense_nope", "granitehybrid", False),
}


@pytest.fixture(scope="module", params=sorted(GGUF_CASES))
def gguf(request, tmp_path_factory):
    config, arch, rope = GGUF_CASES[request.param]
    kind, kw = CONFIGS[config]
    if arch == "granitehybrid":
        kw = dict(kw, position_embedding_type="rope" if rope else None)
    if config == "jamba_dense_bias":  # llama.cpp's Jamba has no Mamba projection biases and needs expand 2
        kw = dict(kw, mamba_proj_bias=False)
    ref = hf_model(kind, kw)
    path = tmp_path_factory.mktemp(request.param) / f"tiny-{arch}.gguf"
    write_hybrid_gguf(ref, path, arch, rope)
    return request.param, ref, path


@pytest.mark.parametrize("T", [7, 64])
def test_gguf_logits_equal_transformers(gguf, T):
    name, ref, path = gguf
    model = lb.load(path, verbose=False)
    assert_logits_equal_transformers(model, ref, T, name)
    attn = [b.mixer for b in model.lm.body if b.mixer.kind == "Attention"]
    assert attn and all(a.rope == name.endswith("rope") for a in attn)


def test_llama_cpp_runs_the_gguf_with_our_greedy_tokens(gguf):
    """llama.cpp loads the file; its greedy continuation equals ours, and its logits along the way equal ours
    (teacher-forced on its tokens) within 1e-3 of their range."""
    pytest.importorskip("llama_cpp", reason="llama.cpp's Python binding is not installed")
    from test_convert import assert_llama_cpp_agrees

    name, _, path = gguf
    prompts = [np.random.default_rng(s).integers(3, V, n).tolist() for s, n in ((1, 9), (2, 23))]
    assert_llama_cpp_agrees(lb.load(path, verbose=False), path, prompts, 16, what=name)


@pytest.mark.parametrize("kv, match", [(2, "expected one count per layer"),
                                       ([0, 2, 0], "expected jamba.block_count = 4 entries"),
                                       ([0, 2, 0, 1], "the non-zero ones equal")])
def test_gguf_head_count_kv_errors_name_the_key(kv, match):
    from lmblocks.models import jamba
    md = {"jamba.block_count": 4, "jamba.attention.head_count": 4, "jamba.attention.head_count_kv": kv}
    with pytest.raises(FormatError, match=r"x: metadata jamba\.attention\.head_count_kv is .*" + match):
        jamba.config_from_gguf(md, "x")


def test_gguf_ssm_inner_size_error_names_the_key():
    from lmblocks.models import granitemoehybrid
    md = {"granitehybrid.block_count": 2, "granitehybrid.attention.head_count": 4, "granitehybrid.embedding_length": 32,
          "granitehybrid.feed_forward_length": 64, "granitehybrid.attention.head_count_kv": [0, 2],
          "granitehybrid.ssm.inner_size": 48, "granitehybrid.ssm.time_step_rank": 4}
    with pytest.raises(FormatError, match=r"granitehybrid\.ssm\.inner_size 48 .* multiple of "
                                          r"granitehybrid\.embedding_length 32"):
        granitemoehybrid.config_from_gguf(md, "x")

"""A composed or loaded model as a GGUF file llama.cpp runs, when its blocks are an architecture
llama.cpp names.

A stack of pre-norm ``nn.Layer(Mamba2)`` or ``nn.Layer(Mamba)`` layers without MLPs is written as
llama.cpp's "mamba2" or "mamba" graph, the tensors as its converter lays them out (A as -exp(A_log), the
conv kernel as (C, K), Mamba2's A and D as (H, 1) and its norm as (groups, d_inner / groups)). llama.cpp
stores no chunk size or dt limit: a Mamba2 with a dt limit other than (0, inf) raises.

Anything else is written as llama.cpp's "llama" graph, dense or with Mixtral's experts: every layer a pre-norm
``nn.Layer`` of RMSNorm, causal global ``Attention`` (GQA/MQA, optional q/k/v/o biases, rope theta
and linear/llama3 scaling, no QK-norm, window or soft-cap) and a gated SiLU ``MLP`` or an ``MoE``
(softmax router, top-k renormalized, no shared expert or biases), one final RMSNorm. q/k rows go to
Meta's adjacent-pair rope order, as llama.cpp's converter writes them. Anything else raises
NotImplementedError naming the block and what llama.cpp's graph lacks.

The vocabulary: the ``tokenizer.*`` keys of the GGUF file the model's tokenizer was loaded from (for
example a model composed with SmolLM2's tokenizer), re-read at saving, else ``tokenizer.ggml.model = "no_vocab"``
(llama.cpp then takes token ids only).
"""

from __future__ import annotations

import os

import numpy as np

from .._core import empty
from .gguf import GGUFFile
from .gguf_writer import write_gguf


def _unsupported(where: str, why: str, graph: str = "llama"):
    return NotImplementedError(f"saving as GGUF: {where} {why}; llama.cpp's '{graph}' graph has no such "
                               "block (save to a folder instead: model.save('folder'))")


def _meta_order(t, n_heads: int, rotary: int, hd: int):
    """q/k rows (or bias) from half-split rotary order to adjacent pairs, per head. Rows of a ggml block
    type move as their bytes."""
    order = np.arange(n_heads * hd).reshape(n_heads, hd)
    half = rotary // 2
    rot = np.stack([order[:, :half], order[:, half:rotary]], axis=2).reshape(n_heads, rotary)
    rows = np.concatenate([rot, order[:, rotary:]], axis=1).reshape(-1)
    if isinstance(t, np.ndarray) or t.dtype in ("f32", "f16"):
        return np.ascontiguousarray(np.asarray(t)[rows])
    out = empty(*t.shape, dtype=t.dtype)
    np.asarray(out)[...] = np.asarray(t)[rows]  # (rows, bytes per row) views of the blocks
    return out


def _check(cond: bool, where: str, why: str, graph: str = "llama") -> None:
    if not cond:
        raise _unsupported(where, why, graph)


def export(model, path: str | os.PathLike) -> None:
    lm = model.lm
    layers = list(lm.body.children) if lm.body.kind == "Sequential" else [lm.body]
    _check(lm.norm is not None and lm.norm.kind == "RMSNorm" and lm.norm.offset == 0, "the final norm", "is not a plain RMSNorm")
    _check(lm.final_softcap == 0, "the model", "soft-caps its logits")
    mixers = {layer.mixer.kind for layer in layers if layer.kind == "Layer" and layer.mixer is not None}
    ssm_only = mixers <= {"Mamba", "Mamba2"} and all(layer.kind == "Layer" and layer.mlp is None for layer in layers)
    graph = _ssm if ssm_only else _granite_hybrid if "Mamba2" in mixers else _llama
    if graph is not _granite_hybrid:
        _check(lm.embed_scale == 1 and lm.logit_scale == 1, "the model", "scales its embedding or logits")
    arch, u32, md, tensors = graph(model, lm, layers)
    tensors.insert(0, ("token_embd.weight", lm.embed_tokens))
    tensors.append(("output_norm.weight", lm.norm.weights()["weight"]))
    if not lm.tied:
        tensors.append(("output.weight", lm.lm_head))
    md = [("general.architecture", "string", arch), ("general.name", "string", getattr(model, "name", "lmblocks")),
          *[(f"{arch}.{k}", "uint32", int(v)) for k, v in u32],
          (f"{arch}.attention.layer_norm_rms_epsilon", "float32", float(lm.norm.eps)), *md]
    source = getattr(model.tokenizer, "gguf_source", None) if model.tokenizer is not None else None
    if source is not None and os.path.exists(source):
        src = GGUFFile(source)
        md += [(k, src.metadata_types[k], v) for k, v in src.metadata.items() if k.startswith("tokenizer.")]
    else:
        md.append(("tokenizer.ggml.model", "string", "no_vocab"))
    write_gguf(path, md, tensors)


# ---- one block's tensors, as llama.cpp's converter names them --------------------------------------------


def _pre_norm_layer(p: str, layer, eps: float, arch: str, residual_scale: bool = False) -> None:
    _check(layer.kind == "Layer", p, f"is a {layer.kind}, not an nn.Layer", arch)
    _check(not layer.parallel and not layer.norm_after_add and (residual_scale or layer.residual_scale == 1)
           and layer.attn_post_norm is None and layer.mlp_post_norm is None, p, "is not a pre-norm layer", arch)
    for slot, block in (("attn_norm", layer.mixer), ("mlp_norm", layer.mlp)):
        n = getattr(layer, slot)
        if block is not None:
            _check(n is not None and n.kind == "RMSNorm" and n.offset == 0 and n.eps == eps, f"{p}.{slot}",
                   "is not an RMSNorm with the model's eps", arch)


def _ssm_tensors(p: str, b: str, m, arch: str):
    """(shape key, tensors) of a Mamba or Mamba2 mixer: A as -exp(A_log), the conv as (C, K), Mamba2's A and D
    as (H, 1) and its norm as (groups, d_inner / groups)."""
    w = m.weights()
    _check("in_bias" not in w and "out_bias" not in w and "conv_bias" in w, f"{p}.mamba",
           "has projection biases or no conv bias", arch)
    A = -np.exp(np.asarray(w["A_log"], dtype=np.float32))
    tensors = [(b + "ssm_in.weight", w["in_proj"]), (b + "ssm_conv1d.weight", w["conv_weight"]),
               (b + "ssm_conv1d.bias", w["conv_bias"])]
    if m.kind == "Mamba2":
        _check(m.dt_limit[0] == 0 and m.dt_limit[1] >= 1e30, f"{p}.mamba", "limits dt (time_step_limit)", arch)
        _check("norm" in w and not m.norm_before_gate, f"{p}.mamba", "has no gated norm, or norms before the gate",
               arch)
        key = (m.n_heads, m.head_dim, m.n_groups, m.state_size, m.conv_kernel, m.norm_eps)
        tensors += [(b + "ssm_dt.bias", w["dt_bias"]), (b + "ssm_a", A.reshape(-1, 1)),
                    (b + "ssm_d", np.asarray(w["D"]).reshape(-1, 1)),
                    (b + "ssm_norm.weight", np.asarray(w["norm"]).reshape(m.n_groups, -1))]
    else:
        _check(not m.normed, f"{p}.mamba", "normalizes dt, B and C (Jamba's variant)", arch)
        key = (m.d_inner, m.state_size, m.dt_rank, m.conv_kernel)
        tensors += [(b + "ssm_x.weight", w["x_proj"]), (b + "ssm_dt.weight", w["dt_proj"]),
                    (b + "ssm_dt.bias", w["dt_bias"]), (b + "ssm_a", A), (b + "ssm_d", w["D"])]
    return key, tensors + [(b + "ssm_out.weight", w["out_proj"])]


def _ssm_u32(m) -> list:
    u32 = [("ssm.conv_kernel", m.conv_kernel), ("ssm.inner_size", m.d_inner), ("ssm.state_size", m.state_size),
           ("ssm.time_step_rank", m.n_heads if m.kind == "Mamba2" else m.dt_rank)]
    return u32 + [("ssm.group_count", m.n_groups)] if m.kind == "Mamba2" else u32


def _attention_tensors(p: str, b: str, a, arch: str, rope: bool = True):
    """(shape key, tensors) of an Attention block: causal and global, no QK-norm or adapters; with rope,
    q/k rows in Meta's adjacent-pair order (llama.cpp's converter permutes them)."""
    _check(a.kind == "Attention", f"{p}'s mixer", "is not attention", arch)
    _check(a.causal and not a.window and not a.softcap, f"{p}.attn", "is bidirectional, windowed or soft-capped",
           arch)
    _check(a.rope == rope, f"{p}.attn", "has rope" if a.rope else "has no rope", arch)
    w = a.weights()
    _check("q_norm" not in w and "k_norm" not in w, f"{p}.attn", "has QK-norm", arch)
    _check(not any(".lora_" in k for k in w), f"{p}.attn", "has low-rank adapters (fold B A into the weights)", arch)
    if rope:
        _check(a.rope_scaling[0] in ("none", "linear"), f"{p}.attn", "uses llama3 rope scaling (llama.cpp "
               "reads that from a rope_freqs tensor)", arch)
    H, Hkv, hd, rd = a.n_heads, a.n_kv_heads, a.head_dim, a.rotary_dim
    tensors = []
    for x, heads in (("q", H), ("k", Hkv), ("v", 0)):
        for kind, name in (("weight", f"{x}_proj"), ("bias", f"{x}_bias")):
            if name in w:
                t = w[name]
                if rope and heads and not a.rope_interleaved:
                    t = _meta_order(t, heads, rd, hd)
                tensors.append((b + f"attn_{x}.{kind}", t))
    tensors.append((b + "attn_output.weight", w["o_proj"]))
    if "o_bias" in w:
        tensors.append((b + "attn_output.bias", w["o_bias"]))
    key = (H, Hkv, hd, a.rope_theta, rd, a.rope_scaling, a.rope_interleaved, a.scale or hd ** -0.5)
    return key, tensors


def _dense_mlp_tensors(p: str, b: str, m, arch: str, suffix: str = ""):
    _check(m is not None and m.kind == "MLP", f"{p}'s MLP", "is missing or not a dense MLP", arch)
    _check(m.gated and m.activation == "silu", f"{p}.mlp", "is not a gated SiLU MLP", arch)
    w = m.weights()
    _check(not any(".lora_" in k for k in w), f"{p}.mlp", "has low-rank adapters (fold B A into the weights)", arch)
    _check(not any(k.endswith("bias") for k in w), f"{p}.mlp", "has biases", arch)
    return w["up_proj"].shape[0], [(b + f"ffn_{x}{suffix}.weight", w[f"{x}_proj"]) for x in ("gate", "up", "down")]


# ---- the graphs --------------------------------------------------------------------------------------------


def _ssm(model, lm, layers):
    """llama.cpp's "mamba"/"mamba2" graph: x += mixer(rms_norm(x)) per layer, nothing else."""
    kind = layers[0].mixer.kind
    arch = kind.lower()
    tensors, key0 = [], None
    for i, layer in enumerate(layers):
        p, b = f"layers.{i}", f"blk.{i}."
        _pre_norm_layer(p, layer, lm.norm.eps, arch)
        _check(layer.mixer is not None and layer.mixer.kind == kind, p, f"is not an nn.Layer whose only block is a {kind}",
               arch)
        key, ts = _ssm_tensors(p, b, layer.mixer, arch)
        key0 = key0 or key
        _check(key == key0, f"{p}.mamba", "differs in shape from layer 0", arch)
        tensors += [(b + "attn_norm.weight", layer.attn_norm.weights()["weight"]), *ts]
    u32 = [("context_length", model.n_ctx), ("embedding_length", lm.model_dim), ("feed_forward_length", 0),
           ("attention.head_count", 0), ("block_count", len(layers)), *_ssm_u32(layers[0].mixer),
           ("vocab_size", lm.vocab_size)]
    return arch, u32, [], tensors


def _granite_hybrid(model, lm, layers):
    """llama.cpp's "granitehybrid" graph (Granite 4.0-H, Bamba): pre-norm layers of Mamba2 or attention, each
    with a dense gated MLP; Granite's scalars (embedding and residual scale, attention scale, logit scale). Its
    attention has rope only when ``rope.scaling.finetuned`` is set, and then in every attention layer."""
    arch = "granitehybrid"
    tensors, ssm0, attn0, F0, res0 = [], None, None, None, None
    rope = any(layer.mixer.rope for layer in layers if layer.kind == "Layer" and layer.mixer is not None
               and layer.mixer.kind == "Attention")
    kv = []
    for i, layer in enumerate(layers):
        p, b = f"layers.{i}", f"blk.{i}."
        _pre_norm_layer(p, layer, lm.norm.eps, arch, residual_scale=True)
        res0 = layer.residual_scale if res0 is None else res0
        _check(layer.residual_scale == res0, p, "has another residual scale than layer 0", arch)
        m = layer.mixer
        _check(m is not None and m.kind in ("Mamba2", "Attention"), f"{p}'s mixer", "is not Mamba2 or attention", arch)
        tensors.append((b + "attn_norm.weight", layer.attn_norm.weights()["weight"]))
        if m.kind == "Mamba2":
            key, ts = _ssm_tensors(p, b, m, arch)
            ssm0 = ssm0 or (m, key)
            _check(key == ssm0[1], f"{p}.mamba", "differs in shape from the first Mamba2 layer", arch)
            kv.append(0)
        else:
            key, ts = _attention_tensors(p, b, m, arch, rope)
            attn0 = attn0 or (m, key)
            _check(key[:3] + key[7:] == attn0[1][:3] + attn0[1][7:] and (not rope or key == attn0[1]), f"{p}.attn",
                   "differs in shape, scale or rope from the first attention layer", arch)
            kv.append(m.n_kv_heads)
        F, mlp = _dense_mlp_tensors(p, b, layer.mlp, arch)
        F0 = F0 or F
        _check(F == F0, f"{p}.mlp", "differs in width from layer 0", arch)
        tensors += [*ts, (b + "ffn_norm.weight", layer.mlp_norm.weights()["weight"]), *mlp]
    _check(ssm0 is not None, "the model", "has no Mamba2 layer", arch)
    a = attn0[0] if attn0 else None
    u32 = [("context_length", model.n_ctx), ("embedding_length", lm.model_dim), ("block_count", len(layers)),
           ("feed_forward_length", F0), ("attention.head_count", a.n_heads if a else 0), *_ssm_u32(ssm0[0]),
           ("vocab_size", lm.vocab_size)]
    if a:
        u32 += [("attention.key_length", a.head_dim), ("attention.value_length", a.head_dim),
                ("rope.dimension_count", a.rotary_dim)]
    md = [(f"{arch}.attention.head_count_kv", "array[int32]", kv),
          (f"{arch}.embedding_scale", "float32", float(lm.embed_scale)),
          (f"{arch}.residual_scale", "float32", float(res0)),
          (f"{arch}.attention.scale", "float32", float(attn0[1][7] if a else 1.0)),
          (f"{arch}.logit_scale", "float32", 1.0 / float(lm.logit_scale)),
          (f"{arch}.rope.scaling.finetuned", "bool", bool(rope)),
          (f"{arch}.rope.freq_base", "float32", float(a.rope_theta if a else 10000.0))]
    return arch, u32, md, tensors


def _llama(model, lm, layers):
    attn0 = None
    moe0 = None
    tensors = []
    for i, layer in enumerate(layers):
        p, b = f"layers.{i}", f"blk.{i}."
        _pre_norm_layer(p, layer, lm.norm.eps, "llama")
        a, m = layer.mixer, layer.mlp
        _check(a is not None, f"{p}'s mixer", "is missing")
        key, ts = _attention_tensors(p, b, a, "llama")
        _check(key[7] == a.head_dim ** -0.5, f"{p}.attn", "has a custom score scale")
        attn0 = attn0 or (a, key)
        _check(key[:6] == attn0[1][:6], f"{p}.attn", "differs in shape or rope from layer 0")
        tensors += [(b + "attn_norm.weight", layer.attn_norm.weights()["weight"]), *ts,
                    (b + "ffn_norm.weight", layer.mlp_norm.weights()["weight"])]
        _check(m is not None and m.kind in ("MLP", "MoE"), f"{p}'s MLP", "is missing or not an MLP/MoE")
        if m.kind == "MLP":
            _check(moe0 is None, p, "is dense while earlier layers have experts")
            F, mlp = _dense_mlp_tensors(p, b, m, "llama")
            tensors += mlp
        else:
            mw = m.weights()
            _check(m.gated and m.activation == "silu", f"{p}.moe", "is not a gated SiLU MLP")
            _check(m.scoring == "softmax" and m.norm_topk and m.routed_scale == 1 and m.shared is None
                   and set(mw) == {"router", "gate_proj", "up_proj", "down_proj"}, f"{p}.moe",
                   "is not Mixtral's (softmax, renormalized top-k, no biases or shared expert)")
            _check(i == 0 or moe0 is not None, p, "has experts while earlier layers are dense")
            moe0 = moe0 or (m.n_experts, m.top_k)
            _check((m.n_experts, m.top_k) == moe0, f"{p}.moe", "differs in experts from layer 0")
            tensors += [(b + "ffn_gate_inp.weight", mw["router"]), (b + "ffn_gate_exps.weight", mw["gate_proj"]),
                        (b + "ffn_up_exps.weight", mw["up_proj"]), (b + "ffn_down_exps.weight", mw["down_proj"])]
            F = m.expert_dim
    a, key = attn0
    V, D = lm.embed_tokens.shape
    u32 = [("context_length", model.n_ctx), ("embedding_length", D), ("block_count", len(layers)),
           ("feed_forward_length", F), ("attention.head_count", a.n_heads), ("attention.head_count_kv", a.n_kv_heads),
           ("attention.key_length", a.head_dim), ("attention.value_length", a.head_dim),
           ("rope.dimension_count", a.rotary_dim), ("vocab_size", V)]
    if moe0:
        u32 += [("expert_count", moe0[0]), ("expert_used_count", moe0[1])]
    md = [("llama.rope.freq_base", "float32", float(a.rope_theta))]
    kind, factor = a.rope_scaling[:2]
    if kind != "none":
        md += [("llama.rope.scaling.type", "string", kind), ("llama.rope.scaling.factor", "float32", factor)]
    return "llama", u32, md, tensors

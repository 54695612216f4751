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
    _check(lm.embed_scale == 1 and lm.logit_scale == 1 and lm.final_softcap == 0, "the model",
           "scales its embedding or logits")
    ssm = layers[0].kind == "Layer" and layers[0].mixer is not None and layers[0].mixer.kind in ("Mamba", "Mamba2")
    arch, u32, md, tensors = (_ssm if ssm else _llama)(model, lm, layers)
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


def _ssm(model, lm, layers):
    """llama.cpp's "mamba"/"mamba2" graph: x += mixer(rms_norm(x)) per layer, nothing else."""
    kind = layers[0].mixer.kind
    arch = kind.lower()
    tensors, m0 = [], None
    for i, layer in enumerate(layers):
        p = f"layers.{i}"
        _check(layer.kind == "Layer" and layer.mixer is not None and layer.mixer.kind == kind and layer.mlp is None,
               p, f"is not an nn.Layer whose only block is a {kind}", arch)
        _check(not layer.parallel and not layer.norm_after_add and layer.residual_scale == 1
               and layer.attn_post_norm is None, p, "is not a pre-norm layer", arch)
        n, m = layer.attn_norm, layer.mixer
        _check(n is not None and n.kind == "RMSNorm" and n.offset == 0 and n.eps == lm.norm.eps, f"{p}.attn_norm",
               "is not an RMSNorm with the model's eps", arch)
        w = m.weights()
        _check("in_bias" not in w and "out_bias" not in w and "conv_bias" in w, f"{p}.mamba",
               "has projection biases or no conv bias", arch)
        if kind == "Mamba2":
            key = (m.n_heads, m.head_dim, m.n_groups, m.state_size, m.conv_kernel, m.norm_eps)
            _check(m.dt_limit[0] == 0 and m.dt_limit[1] >= 1e30, f"{p}.mamba", "limits dt (time_step_limit)", arch)
            _check("norm" in w and not m.norm_before_gate, f"{p}.mamba", "has no gated norm, or norms before the gate",
                   arch)
        else:
            key = (m.d_inner, m.state_size, m.dt_rank, m.conv_kernel)
        m0 = m0 or (m, key)
        _check(key == m0[1], f"{p}.mamba", "differs in shape from layer 0", arch)
        b = f"blk.{i}."
        A = -np.exp(np.asarray(w["A_log"], dtype=np.float32))
        tensors += [(b + "attn_norm.weight", n.weights()["weight"]), (b + "ssm_in.weight", w["in_proj"]),
                    (b + "ssm_conv1d.weight", w["conv_weight"]), (b + "ssm_conv1d.bias", w["conv_bias"])]
        if kind == "Mamba2":
            tensors += [(b + "ssm_dt.bias", w["dt_bias"]), (b + "ssm_a", A.reshape(-1, 1)),
                        (b + "ssm_d", np.asarray(w["D"]).reshape(-1, 1)),
                        (b + "ssm_norm.weight", np.asarray(w["norm"]).reshape(m.n_groups, -1))]
        else:
            tensors += [(b + "ssm_x.weight", w["x_proj"]), (b + "ssm_dt.weight", w["dt_proj"]),
                        (b + "ssm_dt.bias", w["dt_bias"]), (b + "ssm_a", A), (b + "ssm_d", w["D"])]
        tensors.append((b + "ssm_out.weight", w["out_proj"]))
    m = m0[0]
    D = lm.embed_tokens.shape[1]
    u32 = [("context_length", model.n_ctx), ("embedding_length", D), ("feed_forward_length", 0),
           ("attention.head_count", 0), ("block_count", len(layers)), ("ssm.conv_kernel", m.conv_kernel),
           ("ssm.inner_size", m.d_inner), ("ssm.state_size", m.state_size),
           ("ssm.time_step_rank", m.n_heads if kind == "Mamba2" else m.dt_rank), ("vocab_size", lm.vocab_size)]
    if kind == "Mamba2":
        u32.append(("ssm.group_count", m.n_groups))
    return arch, u32, [], tensors


def _llama(model, lm, layers):
    attn0 = None
    moe0 = None
    eps = lm.norm.eps
    tensors = []
    for i, layer in enumerate(layers):
        p = f"layers.{i}"
        _check(layer.kind == "Layer", p, f"is a {layer.kind}, not an nn.Layer")
        _check(not layer.parallel and not layer.norm_after_add and layer.residual_scale == 1
               and layer.attn_post_norm is None and layer.mlp_post_norm is None, p, "is not a pre-norm layer")
        for slot in ("attn_norm", "mlp_norm"):
            n = getattr(layer, slot)
            _check(n is not None and n.kind == "RMSNorm" and n.offset == 0 and n.eps == eps, f"{p}.{slot}",
                   "is not an RMSNorm with the model's eps")
        a, m = layer.mixer, layer.mlp
        _check(a is not None and a.kind == "Attention", f"{p}'s mixer", "is not attention")
        _check(a.causal and not a.window and not a.softcap, f"{p}.attn", "is bidirectional, windowed or soft-capped")
        _check(a.scale in (0, a.head_dim ** -0.5), f"{p}.attn", "has a custom score scale")
        _check(a.rope, f"{p}.attn", "has no rope")
        w = a.weights()
        _check("q_norm" not in w and "k_norm" not in w, f"{p}.attn", "has QK-norm")
        _check(not any(".lora_" in k for k in w), f"{p}.attn", "has low-rank adapters (fold B A into the weights)")
        key = (a.n_heads, a.n_kv_heads, a.head_dim, a.rope_theta, a.rotary_dim, a.rope_scaling, a.rope_interleaved)
        _check(a.rope_scaling[0] in ("none", "linear"), f"{p}.attn", "uses llama3 rope scaling (llama.cpp "
               "reads that from a rope_freqs tensor)")
        attn0 = attn0 or (a, key)
        _check(key[:6] == attn0[1][:6], f"{p}.attn", "differs in shape or rope from layer 0")
        H, Hkv, hd, rd = a.n_heads, a.n_kv_heads, a.head_dim, a.rotary_dim
        b = f"blk.{i}."
        tensors.append((b + "attn_norm.weight", layer.attn_norm.weights()["weight"]))
        for x, heads in (("q", H), ("k", Hkv), ("v", 0)):
            for kind, name in (("weight", f"{x}_proj"), ("bias", f"{x}_bias")):
                if name in w:
                    t = w[name]
                    if heads and not a.rope_interleaved:
                        t = _meta_order(t, heads, rd, hd)
                    tensors.append((b + f"attn_{x}.{kind}", t))
        tensors.append((b + "attn_output.weight", w["o_proj"]))
        if "o_bias" in w:
            tensors.append((b + "attn_output.bias", w["o_bias"]))
        tensors.append((b + "ffn_norm.weight", layer.mlp_norm.weights()["weight"]))
        _check(m is not None and m.kind in ("MLP", "MoE"), f"{p}'s MLP", "is missing or not an MLP/MoE")
        _check(m.gated and m.activation == "silu", f"{p}.{m.role}", "is not a gated SiLU MLP")
        mw = m.weights()
        _check(not any(".lora_" in k for k in mw), f"{p}.{m.role}", "has low-rank adapters (fold B A into the weights)")
        if m.kind == "MLP":
            _check(moe0 is None, p, "is dense while earlier layers have experts")
            _check(not any(k.endswith("bias") for k in mw), f"{p}.mlp", "has biases")
            tensors += [(b + "ffn_gate.weight", mw["gate_proj"]), (b + "ffn_up.weight", mw["up_proj"]),
                        (b + "ffn_down.weight", mw["down_proj"])]
            F = mw["up_proj"].shape[0]
        else:
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

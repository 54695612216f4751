"""Float64 NumPy reference decoders for whole models, built from the op references in ops.py.

Written from the papers (Llama: Touvron et al. 2023; RMSNorm, RoPE, GQA, SwiGLU) and read top to
bottom like llama2.c's run.c: no cache, every call recomputes the whole sequence. Weights are a dict
of Hugging Face checkpoint names to arrays stored (out, in); the config uses Hugging Face keys.
"""

from __future__ import annotations

import numpy as np

from . import ops


def llama_forward(weights: dict, config: dict, tokens) -> np.ndarray:
    """Logits (T, V) in float64 of a Llama-family decoder for ``tokens`` at positions 0..T-1.

    Per layer: ``x += o(attention(rope(q(n1)), rope(k(n1)), v(n1)))`` with ``n1 = rms_norm(x)``, then
    ``x += down(silu(gate(n2)) * up(n2))`` with ``n2 = rms_norm(x)``; then a final RMSNorm and
    ``lm_head`` (or the token embedding when tied). ``config["rope_interleaved"]`` picks the rotary
    pairs: (2i, 2i+1) as llama2.c and Meta's checkpoints, else (i, i + hd/2) as Hugging Face's.
    Query head h reads kv head ``h // (H // Hkv)``. A projection's ``.bias`` is added when present.
    """
    w = {k: ops.f64(v) for k, v in weights.items()}
    D, L = config["hidden_size"], config["num_hidden_layers"]
    H = config["num_attention_heads"]
    Hkv = config.get("num_key_value_heads") or H
    hd = config.get("head_dim") or D // H
    eps = config.get("rms_norm_eps", 1e-6)
    rope = dict(theta=config.get("rope_theta", 10000.0), interleaved=bool(config.get("rope_interleaved", False)),
                scaling=config.get("rope_scaling"))
    T = len(tokens)

    def linear(name, x):
        return ops.linear(x, w[name + ".weight"], w.get(name + ".bias"))

    x = ops.embedding(tokens, w["model.embed_tokens.weight"])  # (T, D)
    for i in range(L):
        p = f"model.layers.{i}."
        h = ops.rms_norm(x, w[p + "input_layernorm.weight"], eps=eps)
        q = linear(p + "self_attn.q_proj", h).reshape(T, H, hd)
        k = linear(p + "self_attn.k_proj", h).reshape(T, Hkv, hd)
        v = linear(p + "self_attn.v_proj", h).reshape(T, Hkv, hd)
        q, k = ops.rope(q, **rope), ops.rope(k, **rope)
        att = ops.attention(q, k, v, causal=True)  # (T, H, hd)
        x = x + linear(p + "self_attn.o_proj", att.reshape(T, H * hd))
        h = ops.rms_norm(x, w[p + "post_attention_layernorm.weight"], eps=eps)
        x = x + linear(p + "mlp.down_proj", ops.silu(linear(p + "mlp.gate_proj", h)) * linear(p + "mlp.up_proj", h))
    x = ops.rms_norm(x, w["model.norm.weight"], eps=eps)
    head = w.get("lm_head.weight")
    if head is None:  # tie_word_embeddings
        head = w["model.embed_tokens.weight"]
    return x @ head.T  # (T, V)


def llama_greedy(weights: dict, config: dict, prompt_tokens, n: int) -> list[int]:
    """``n`` tokens chosen greedily (argmax, first on ties) after ``prompt_tokens``; every step
    recomputes the whole sequence. Returns only the new tokens."""
    w = {k: ops.f64(v) for k, v in weights.items()}  # convert once, not per step
    seq = list(prompt_tokens)
    for _ in range(n):
        seq.append(int(np.argmax(llama_forward(w, config, seq)[-1])))
    return seq[len(prompt_tokens):]

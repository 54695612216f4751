"""Phi-3 (Abdin et al. 2024): Llama's layout with fused projections, ``qkv_proj`` = [q; k; v] and
``gate_up_proj`` = [gate; up] stored as one matrix each, and optionally partial rotary. The fused
matrices are split into row views at load time (no copy, any dtype)."""

from __future__ import annotations

from . import llama
from .base import ModelArgs, Weights, gguf_config, nn, rope_kwargs

MODEL_TYPES = ("phi3",)
GGUF_ARCHS = ("phi3",)
GGUF_OVERRIDES = {"blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.gate_up_proj.weight"}


def config_from_gguf(md: dict, where: str) -> dict:
    return gguf_config(md, "phi3", "phi3", where)


def layer(args: ModelArgs, w: Weights, i: int):
    D, H, Hkv, hd, F = (args.hidden_size, args.num_attention_heads, args.num_key_value_heads, args.head_dim,
                        args.intermediate_size)
    p = f"model.layers.{i}."
    qkv = w.take(p + "self_attn.qkv_proj.weight", ((H + 2 * Hkv) * hd, D))
    q, k, v = qkv[: H * hd], qkv[H * hd: (H + Hkv) * hd], qkv[(H + Hkv) * hd:]
    attn = nn.Attention(H, Hkv, hd, q, k, v, w.take(p + "self_attn.o_proj.weight", (D, H * hd)),
                        **rope_kwargs(args.rope, args.rotary_dim, args.rope_interleaved, w.where))
    gate_up = w.take(p + "mlp.gate_up_proj.weight", (2 * F, D))
    mlp = nn.MLP(gate_up[:F], gate_up[F:], w.take(p + "mlp.down_proj.weight", (D, F)), activation=args.hidden_act)
    return nn.Layer(attn, mlp, attn_norm=llama.norm(args, w, p + "input_layernorm.weight"),
                    mlp_norm=llama.norm(args, w, p + "post_attention_layernorm.weight"))


def build(args: ModelArgs, w: Weights, progress=iter):
    return llama.build_decoder(args, w, (layer(args, w, i) for i in progress(range(args.num_hidden_layers))))

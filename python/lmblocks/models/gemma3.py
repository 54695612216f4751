"""Gemma 3 text decoders (Gemma Team 2025).

Differences from Llama, each a block setting rather than new code: the embedding is scaled by
sqrt(D); every RMSNorm multiplies by (1 + w); q and k get a per-head RMSNorm before rope; attention
scale is query_pre_attn_scalar^-1/2; layers alternate local sliding-window attention (rope base
``rope_local_base_freq``) and global attention (``rope_theta``) by ``layer_types``; each sub-layer
has a norm before and after it; the MLP is GeGLU with tanh GELU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..io import FormatError
from . import llama
from .base import ACTIVATIONS, ModelArgs, Weights, check_rope, gguf_config, nn, rope_kwargs, rope_parameters

MODEL_TYPES = ("gemma3_text",)
GGUF_ARCHS = ("gemma3",)
GGUF_OVERRIDES = {
    "blk.{i}.post_attention_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.pre_feedforward_layernorm.weight",
    "blk.{i}.post_ffw_norm.weight": "model.layers.{i}.post_feedforward_layernorm.weight",
}


@dataclass
class Gemma3Args(ModelArgs):
    query_pre_attn_scalar: float | None = None
    layer_types: list = field(default_factory=list)
    sliding_window_pattern: int = 6
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None
    rope_local: dict = field(default_factory=dict)
    hidden_activation: str = "gelu_pytorch_tanh"

    @classmethod
    def from_config(cls, config: dict, where: str = "config"):
        args = super().from_config(config, where)
        args.rope = rope_parameters(config, "full_attention", where)
        if isinstance(config.get("rope_parameters"), dict) and "sliding_attention" in config["rope_parameters"]:
            args.rope_local = rope_parameters(config, "sliding_attention", where)
        else:
            args.rope_local = {"rope_type": "default", "rope_theta": config.get("rope_local_base_freq", 10000.0)}
        check_rope(args.rope, where)
        check_rope(args.rope_local, where)
        args.hidden_act = args.hidden_activation
        if args.hidden_act not in ACTIVATIONS:
            raise FormatError(f"{where}: field 'hidden_activation' is {args.hidden_act!r}; supported: "
                             f"{', '.join(ACTIVATIONS)}")
        if not args.layer_types:  # transformers' default: every sixth layer global
            n = args.sliding_window_pattern
            args.layer_types = ["full_attention" if (i + 1) % n == 0 else "sliding_attention"
                                for i in range(args.num_hidden_layers)]
        if len(args.layer_types) != args.num_hidden_layers:
            raise FormatError(f"{where}: layer_types has {len(args.layer_types)} entries for "
                             f"{args.num_hidden_layers} layers")
        if args.query_pre_attn_scalar is None:
            args.query_pre_attn_scalar = args.head_dim
        return args


ARGS = Gemma3Args


def config_from_gguf(md: dict, where: str) -> dict:
    cfg = gguf_config(md, "gemma3", "gemma3_text", where)
    # llama.cpp's gemma3 settings that the file does not carry: local rope base 10000, every sixth layer global.
    cfg["rope_local_base_freq"] = 10000.0
    cfg["query_pre_attn_scalar"] = cfg["head_dim"]
    return cfg


def gguf_tensor(name: str, t):
    """llama.cpp's converter stores Gemma's norm weights as 1 + w; give back w (Hugging Face's meaning)."""
    import numpy as np

    if name.endswith("norm.weight"):
        return np.asarray(t, dtype=np.float32) - np.float32(1.0)
    return t


def build(args: Gemma3Args, w: Weights, progress=iter):
    D, H, Hkv, hd = args.hidden_size, args.num_attention_heads, args.num_key_value_heads, args.head_dim
    eps = args.rms_norm_eps

    def norm(name, n=D):
        return nn.RMSNorm(w.take(name, (n,)), eps=eps, offset=1.0)

    def attention(p, i):
        local = args.layer_types[i] == "sliding_attention"
        a = p + "self_attn."
        return nn.Attention(
            H, Hkv, hd, w.take(a + "q_proj.weight", (H * hd, D)), w.take(a + "k_proj.weight", (Hkv * hd, D)),
            w.take(a + "v_proj.weight", (Hkv * hd, D)), w.take(a + "o_proj.weight", (D, H * hd)),
            q_norm=w.take(a + "q_norm.weight", (hd,)), k_norm=w.take(a + "k_norm.weight", (hd,)), qk_norm_offset=1.0,
            window=(args.sliding_window or 0) if local else 0,
            scale=float(args.query_pre_attn_scalar) ** -0.5, softcap=float(args.attn_logit_softcapping or 0.0),
            qk_norm_eps=eps,
            **rope_kwargs(args.rope_local if local else args.rope, args.rotary_dim, False, w.where))

    def layer(i):
        p = f"model.layers.{i}."
        mlp = llama.mlp(args, w, p)
        return nn.Layer(attention(p, i), mlp,
                        attn_norm=norm(p + "input_layernorm.weight"), attn_post_norm=norm(p + "post_attention_layernorm.weight"),
                        mlp_norm=norm(p + "pre_feedforward_layernorm.weight"),
                        mlp_post_norm=norm(p + "post_feedforward_layernorm.weight"))

    return llama.build_decoder(args, w, (layer(i) for i in progress(range(args.num_hidden_layers))),
                               embed_scale=D ** 0.5, norm_offset=1.0,
                               final_softcap=float(args.final_logit_softcapping or 0.0))


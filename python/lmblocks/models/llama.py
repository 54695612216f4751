"""Llama 2/3 (Touvron et al. 2023) and the models that share its layout: TinyLlama, SmolLM/SmolLM2,
MobileLLM, llama2.c's checkpoints.

Per layer: ``x += o(attention(rope(q(n)), rope(k(n)), v(n)))`` with ``n = rms_norm(x)``, then
``x += down(silu(gate(n)) * up(n))`` with ``n = rms_norm(x)``; a final RMSNorm and the head (or the
tied embedding). Mistral, Qwen2 and Phi-3 reuse :func:`build_decoder` with their own attention or MLP.
"""

from __future__ import annotations

from .base import ModelArgs, Weights, gguf_config, nn, rope_kwargs

MODEL_TYPES = ("llama",)
GGUF_ARCHS = ("llama",)
GGUF_OVERRIDES: dict[str, str] = {}


def config_from_gguf(md: dict, where: str) -> dict:
    cfg = gguf_config(md, "llama", "llama", where)
    # llama.cpp's converter permutes q/k rows of Llama from Hugging Face's half-split rotary order to
    # Meta's adjacent pairs; rotating pairs on the file's rows gives the same attention, no copy needed.
    cfg["rope_interleaved"] = True
    return cfg


def attention(args: ModelArgs, w: Weights, p: str, **extra) -> "nn.Attention":
    """The attention block of layer prefix ``p`` (``model.layers.{i}.``), projections as stored."""
    D, H, Hkv, hd = args.hidden_size, args.num_attention_heads, args.num_key_value_heads, args.head_dim
    a = p + "self_attn."
    return nn.Attention(
        H, Hkv, hd,
        w.take(a + "q_proj.weight", (H * hd, D)), w.take(a + "k_proj.weight", (Hkv * hd, D)),
        w.take(a + "v_proj.weight", (Hkv * hd, D)), w.take(a + "o_proj.weight", (D, H * hd)),
        q_bias=w.take(a + "q_proj.bias", (H * hd,), optional=True),
        k_bias=w.take(a + "k_proj.bias", (Hkv * hd,), optional=True),
        v_bias=w.take(a + "v_proj.bias", (Hkv * hd,), optional=True),
        o_bias=w.take(a + "o_proj.bias", (D,), optional=True),
        **rope_kwargs(args.rope, args.rotary_dim, args.rope_interleaved, w.where), **extra)


def mlp(args: ModelArgs, w: Weights, p: str) -> "nn.MLP":
    D, F = args.hidden_size, args.intermediate_size
    m = p + "mlp."
    return nn.MLP(w.take(m + "gate_proj.weight", (F, D)), w.take(m + "up_proj.weight", (F, D)),
                  w.take(m + "down_proj.weight", (D, F)), activation=args.hidden_act)


def norm(args: ModelArgs, w: Weights, name: str, offset: float = 0.0) -> "nn.RMSNorm":
    return nn.RMSNorm(w.take(name, (args.hidden_size,)), eps=args.rms_norm_eps, offset=offset)


def build_decoder(args: ModelArgs, w: Weights, layers, *, embed_scale: float = 1.0, norm_offset: float = 0.0,
                  final_softcap: float = 0.0) -> "nn.CausalLM":
    """Embedding, the given layer blocks, final norm and head (``lm_head`` unless tied)."""
    V, D = args.vocab_size, args.hidden_size
    embed = w.take("model.embed_tokens.weight", (V, D))
    head = None if args.tie_word_embeddings else w.take("lm_head.weight", (V, D))
    return nn.CausalLM(embed, embed_scale, nn.Sequential(list(layers)), norm(args, w, "model.norm.weight", norm_offset),
                       head, final_softcap)


def layer(args: ModelArgs, w: Weights, i: int, mlp_block=None, **attn_extra) -> "nn.Layer":
    """Pre-norm layer ``i``: attention and ``mlp_block`` (default: the dense MLP of the checkpoint)."""
    p = f"model.layers.{i}."
    attn_norm = norm(args, w, p + "input_layernorm.weight")  # taken in file order: errors name the first bad tensor
    attn = attention(args, w, p, **attn_extra)
    mlp_norm = norm(args, w, p + "post_attention_layernorm.weight")
    return nn.Layer(attn, mlp_block if mlp_block is not None else mlp(args, w, p), attn_norm=attn_norm,
                    mlp_norm=mlp_norm)


def build(args: ModelArgs, w: Weights, progress=iter) -> "nn.CausalLM":
    return build_decoder(args, w, (layer(args, w, i) for i in progress(range(args.num_hidden_layers))))

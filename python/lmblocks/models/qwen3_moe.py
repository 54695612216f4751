"""Qwen3-MoE (Qwen Team 2025): Qwen 3's attention (per-head RMSNorm of q and k before rope, no biases)
with a sparse MLP of ``num_experts`` experts, softmax router, top ``num_experts_per_tok``, weights
renormalized with ``norm_topk_prob``; no shared expert. ``mlp_only_layers`` and
``decoder_sparse_step`` as in Qwen2-MoE."""

from __future__ import annotations

from dataclasses import dataclass

from . import llama
from .base import Weights, gguf_config
from .mixtral import moe
from .qwen2_moe import Qwen2MoeArgs

MODEL_TYPES = ("qwen3_moe",)
GGUF_ARCHS = ("qwen3moe",)
GGUF_OVERRIDES: dict[str, str] = {}


@dataclass
class Qwen3MoeArgs(Qwen2MoeArgs):
    def window(self, i: int) -> int:
        return (self.sliding_window or 0) if self.use_sliding_window else 0  # every layer


ARGS = Qwen3MoeArgs


def config_from_gguf(md: dict, where: str) -> dict:
    cfg = gguf_config(md, "qwen3moe", "qwen3_moe", where)
    cfg.setdefault("norm_topk_prob", True)  # what llama.cpp's qwen3moe graph does
    return cfg


def build(args: Qwen3MoeArgs, w: Weights, progress=iter):
    hd = args.head_dim

    def layer(i):
        p = f"model.layers.{i}."
        block = moe(args, w, p + "mlp.", "gate.weight") if args.sparse(i) else None
        a = p + "self_attn."
        return llama.layer(args, w, i, mlp_block=block, window=args.window(i),
                           q_norm=w.take(a + "q_norm.weight", (hd,)), k_norm=w.take(a + "k_norm.weight", (hd,)),
                           qk_norm_eps=args.rms_norm_eps)

    return llama.build_decoder(args, w, (layer(i) for i in progress(range(args.num_hidden_layers))))

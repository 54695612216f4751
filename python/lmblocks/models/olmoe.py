"""OLMoE (Muennighoff et al. 2024): Llama's layout with an RMSNorm of q and of k over all heads at once
((H*hd,) and (Hkv*hd,) weights) before rope, and a sparse MLP in every layer: softmax router, top
``num_experts_per_tok`` of ``num_experts``, weights renormalized only with ``norm_topk_prob``."""

from __future__ import annotations

from dataclasses import dataclass

from ..io import FormatError
from . import llama
from .base import Weights, gguf_config
from .mixtral import MoEArgs, moe

MODEL_TYPES = ("olmoe",)
GGUF_ARCHS = ("olmoe",)
GGUF_OVERRIDES: dict[str, str] = {}


@dataclass
class OlmoeArgs(MoEArgs):
    norm_topk_prob: bool = False
    clip_qkv: float | None = None

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.clip_qkv is not None:
            raise FormatError(f"{where}: field 'clip_qkv' is {self.clip_qkv!r}; clamping q, k and v is not supported")


ARGS = OlmoeArgs


def config_from_gguf(md: dict, where: str) -> dict:
    return gguf_config(md, "olmoe", "olmoe", where)


def build(args: OlmoeArgs, w: Weights, progress=iter):
    H, Hkv, hd = args.num_attention_heads, args.num_key_value_heads, args.head_dim

    def layer(i):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        return llama.layer(args, w, i, mlp_block=moe(args, w, p + "mlp.", "gate.weight"),
                           q_norm=w.take(a + "q_norm.weight", (H * hd,)),
                           k_norm=w.take(a + "k_norm.weight", (Hkv * hd,)),
                           qk_norm_eps=args.rms_norm_eps)

    return llama.build_decoder(args, w, (layer(i) for i in progress(range(args.num_hidden_layers))))

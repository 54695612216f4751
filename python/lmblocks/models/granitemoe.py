"""Granite MoE (IBM Granite 3.0 MoE): Mixtral's layout with four scalars: the embedding times
``embedding_multiplier``, each sub-layer's output times ``residual_multiplier`` before it is added,
attention scaled by ``attention_multiplier`` (not 1/sqrt(hd)) and the logits divided by
``logits_scaling``. The router takes the top k logits and a softmax over those k, which is the softmax
over all E renormalized over the chosen: ``nn.MoE(norm_topk=True)``. Experts are stored fused:
``input_linear`` (E, 2F, D), gate rows first, and ``output_linear`` (E, D, F)."""

from __future__ import annotations

from dataclasses import dataclass

from . import llama
from .base import Weights, gguf_config, nn
from .mixtral import MoEArgs, _number_field, moe

MODEL_TYPES = ("granitemoe",)
GGUF_ARCHS = ("granitemoe",)
GGUF_OVERRIDES = {
    "blk.{i}.ffn_gate_inp.weight": "model.layers.{i}.block_sparse_moe.router.weight",
    "blk.{i}.ffn_gate_exps.weight": "model.layers.{i}.block_sparse_moe.experts.gate_proj",
    "blk.{i}.ffn_up_exps.weight": "model.layers.{i}.block_sparse_moe.experts.up_proj",
    "blk.{i}.ffn_down_exps.weight": "model.layers.{i}.block_sparse_moe.experts.down_proj",
}


@dataclass
class GraniteMoeArgs(MoEArgs):
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float = 1.0
    logits_scaling: float = 1.0

    def validate(self, where: str) -> None:
        super().validate(where)
        for k in ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"):
            _number_field(where, k, getattr(self, k))
        self.norm_topk_prob = True  # softmax over the k chosen logits


ARGS = GraniteMoeArgs


def config_from_gguf(md: dict, where: str) -> dict:
    cfg = gguf_config(md, "granitemoe", "granitemoe", where)
    for key, name in (("embedding_scale", "embedding_multiplier"), ("residual_scale", "residual_multiplier"),
                      ("attention.scale", "attention_multiplier"), ("logit_scale", "logits_scaling")):
        if md.get(f"granitemoe.{key}") is not None:
            cfg[name] = float(md[f"granitemoe.{key}"])
    cfg["rope_interleaved"] = True  # llama.cpp's converter permutes Granite's q/k rows as Llama's
    return cfg


def build(args: GraniteMoeArgs, w: Weights, progress=iter):
    def layer(i):
        p = f"model.layers.{i}.block_sparse_moe."
        router = "router.weight" if w.has(p + "router.weight") else "router.layer.weight"
        fused = (("experts.gate_up_proj", "experts.down_proj") if w.has(p + "experts.gate_up_proj")
                 else ("input_linear.weight", "output_linear.weight"))
        block = moe(args, w, p, router, fused=fused)
        dense = llama.layer(args, w, i, mlp_block=block, scale=args.attention_multiplier)
        return nn.Layer(dense.mixer, dense.mlp, attn_norm=dense.attn_norm, mlp_norm=dense.mlp_norm,
                        residual_scale=args.residual_multiplier)

    lm = llama.build_decoder(args, w, (layer(i) for i in progress(range(args.num_hidden_layers))),
                             embed_scale=args.embedding_multiplier)
    lm.logit_scale = 1.0 / args.logits_scaling
    return lm

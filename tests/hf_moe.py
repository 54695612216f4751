"""Tiny random-weight Hugging Face Mixture-of-Experts causal LMs used as references by tests/test_moe.py.

Not a test module. ``CONFIGS`` maps a name to config kwargs (with ``model_type``), in the style of
tests/hf_models.py, whose ``build`` (seeded ``randn * 0.2`` for every parameter, ``save_pretrained``,
float32, eager attention) and ``hf_logits`` are reused as they are. ``hf_routes`` runs transformers and
returns each MoE layer's router logits and chosen experts, read with forward hooks on the routers.

Facts read from transformers 5.23 (the .venv):
- Routers return (logits, top-k weights, top-k indices): ``mlp.gate`` (Mixtral, Qwen2/3-MoE, OLMoE) and
  ``block_sparse_moe.router`` (Granite). Mixtral/Qwen/OLMoE take the top k of softmax(logits) and divide
  by their sum (Mixtral always, the others with norm_topk_prob); Granite takes the top k logits and a
  softmax over those.
- In memory the experts are fused, ``experts.gate_up_proj`` (E, 2F, D) gate rows first and
  ``experts.down_proj`` (E, D, F), but ``save_pretrained`` writes the Hub layout: per expert
  ``block_sparse_moe.experts.{e}.w1/w2/w3.weight`` (Mixtral; w1 gate, w3 up, w2 down),
  ``mlp.experts.{e}.{gate,up,down}_proj.weight`` (Qwen2/3-MoE, OLMoE), and Granite's stacked
  ``block_sparse_moe.input_linear.weight`` (E, 2F, D), ``output_linear.weight``, ``router.layer.weight``.
- Qwen3-MoE's config.json names the expert count ``num_local_experts`` (``num_experts`` in memory).
- Qwen2-MoE: shared_expert (MLP of shared_expert_intermediate_size) times sigmoid(shared_expert_gate(x)),
  (1, D); layers in mlp_only_layers or with (i + 1) % decoder_sparse_step != 0 are dense MLPs.
- OLMoE: q_norm over H*hd, k_norm over Hkv*hd, applied before rope.
- Granite: embeddings * embedding_multiplier, sub-layer outputs * residual_multiplier, attention scale
  attention_multiplier, logits / logits_scaling.
"""

from __future__ import annotations

import contextlib
import pathlib

import numpy as np
import torch

import hf_models

_COMMON = dict(vocab_size=300, max_position_embeddings=128, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
               pad_token_id=0, tie_word_embeddings=False)

CONFIGS: dict[str, dict] = {
    "mixtral": dict(model_type="mixtral", hidden_size=48, intermediate_size=40, num_hidden_layers=2,
                    num_attention_heads=6, num_key_value_heads=2, num_local_experts=5, num_experts_per_tok=2,
                    rope_theta=10000.0, **_COMMON),
    "qwen2_moe": dict(model_type="qwen2_moe", hidden_size=48, intermediate_size=56, moe_intermediate_size=24,
                      shared_expert_intermediate_size=40, num_hidden_layers=3, num_attention_heads=6,
                      num_key_value_heads=2, num_experts=6, num_experts_per_tok=3, mlp_only_layers=[1],
                      rope_theta=1000000.0, **_COMMON),
    "qwen3_moe": dict(model_type="qwen3_moe", hidden_size=48, intermediate_size=56, moe_intermediate_size=24,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      num_experts=7, num_experts_per_tok=3, norm_topk_prob=True, decoder_sparse_step=2,
                      rope_theta=1000000.0, **_COMMON),
    "olmoe": dict(model_type="olmoe", hidden_size=48, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=2, num_experts=5, num_experts_per_tok=3,
                  rope_theta=10000.0, **_COMMON),
    "granitemoe": dict(model_type="granitemoe", hidden_size=48, intermediate_size=40, num_hidden_layers=2,
                       num_attention_heads=6, num_key_value_heads=2, num_local_experts=5, num_experts_per_tok=2,
                       embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.2,
                       logits_scaling=2.5, rope_theta=10000.0, **_COMMON),
    # The file the llama.cpp test writes as a "qwen2moe" GGUF: every layer sparse, H * hd = D (llama.cpp's
    # shapes), the router's weights left raw (llama.cpp's qwen2moe graph does not renormalize them).
    "qwen2_moe_gguf": dict(model_type="qwen2_moe", hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                           shared_expert_intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, num_experts=6, num_experts_per_tok=2, rope_theta=10000.0,
                           **_COMMON),
}


@contextlib.contextmanager
def _registered(name: str):
    """hf_models.build reads its configs by name from hf_models.CONFIGS: lend it ours for one call."""
    hf_models.CONFIGS[name] = CONFIGS[name]
    try:
        yield
    finally:
        del hf_models.CONFIGS[name]


def build(name: str, folder: pathlib.Path) -> torch.nn.Module:
    """The tiny model ``name`` with random weights, saved to ``folder`` (see hf_models.build)."""
    with _registered(name):
        return hf_models.build(name, folder)


hf_logits = hf_models.hf_logits


def routers(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """Layer index -> router module, for the layers that have experts."""
    out = {}
    for i, layer in enumerate(model.model.layers):
        moe = getattr(layer, "block_sparse_moe", None) or layer.mlp
        r = getattr(moe, "router", None) or getattr(moe, "gate", None)
        if r is not None and hasattr(r, "top_k"):
            out[i] = r
    return out


@torch.no_grad()
def hf_routes(model: torch.nn.Module, ids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Layer -> (router logits (T, E) float32, chosen experts (T, k) int64) of one plain forward."""
    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    handles = [r.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(
        i, (out[0].float().numpy().copy(), out[2].numpy().copy()))) for i, r in routers(model).items()]
    try:
        hf_logits(model, ids)
    finally:
        for h in handles:
            h.remove()
    return seen

"""Mixtral (Jiang et al. 2024): Llama's layout with a sparse MLP, each token sent to the top
``num_experts_per_tok`` of ``num_local_experts`` SwiGLU experts by a softmax router, their weights
renormalized over the chosen ones.

Also what the other MoE architectures (qwen2_moe, qwen3_moe, olmoe, granitemoe) share: :class:`MoEArgs`
and :func:`moe`, which builds ``nn.MoE`` from any of the ways checkpoints store experts: one tensor per
expert (Hugging Face Hub checkpoints and transformers' ``save_pretrained``: ``experts.3.w1.weight``,
``experts.3.gate_proj.weight``), fused stacks (transformers 5 in memory: ``experts.gate_up_proj``
(E, 2F, D); Granite's ``input_linear``), or one stack per projection (GGUF's ``ffn_gate_exps``, read
as ``experts.gate_proj``). Per-expert tensors are stacked once at load (a copy); stacks are used as
stored, any dtype.

llama.cpp writes Mixtral GGUFs as architecture "llama" with ``llama.expert_count``; ``models.for_gguf``
sends those files here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..io import FormatError
from . import llama
from .base import ModelArgs, Weights, nn

MODEL_TYPES = ("mixtral",)
GGUF_ARCHS: tuple[str, ...] = ()  # "llama" files with llama.expert_count (models.for_gguf)
GGUF_OVERRIDES: dict[str, str] = {}


def _int_field(where: str, name: str, v, lo: int = 1, hi: int = 1 << 24) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < hi:
        raise FormatError(f"{where}: field {name!r} is {v!r}; expected an integer in [{lo}, {hi})")


def _number_field(where: str, name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
        raise FormatError(f"{where}: field {name!r} is {v!r}; expected a positive finite number")


def with_num_experts(config: dict) -> dict:
    """A copy of ``config`` with ``num_experts`` set from ``num_local_experts`` (Mixtral's, Jamba's name)
    when only that is given."""
    config = dict(config)
    if config.get("num_experts") is None and config.get("num_local_experts") is not None:
        config["num_experts"] = config["num_local_experts"]
    return config


@dataclass
class MoEArgs(ModelArgs):
    """A decoder whose MLPs are (some or all) experts. ``num_experts`` is read from ``num_experts`` or,
    as Mixtral and Granite name it, ``num_local_experts``; ``moe_intermediate_size`` (each expert's F)
    defaults to ``intermediate_size``."""

    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int | None = None
    norm_topk_prob: bool = True

    @classmethod
    def from_config(cls, config: dict, where: str = "config"):
        return super().from_config(with_num_experts(config), where)

    def validate(self, where: str) -> None:
        super().validate(where)
        _int_field(where, "num_experts", self.num_experts, 1, 1 << 16)
        _int_field(where, "num_experts_per_tok", self.num_experts_per_tok, 1, self.num_experts + 1)
        if self.moe_intermediate_size is None:
            self.moe_intermediate_size = self.intermediate_size
        _int_field(where, "moe_intermediate_size", self.moe_intermediate_size)
        if not isinstance(self.norm_topk_prob, bool):
            raise FormatError(f"{where}: field 'norm_topk_prob' is {self.norm_topk_prob!r}; expected true or false")


ARGS = MoEArgs


def _stacked(w: Weights, names: list[str], shape: tuple[int, ...]):
    """One (E, ...) array from E per-expert tensors (a copy; an f32/f16/bf16 NumPy array)."""
    return np.stack([np.asarray(w.take(n, shape)) for n in names])


def experts(w: Weights, p: str, E: int, F: int, D: int, *, per_expert=("gate_proj", "up_proj", "down_proj"),
            fused=("experts.gate_up_proj", "experts.down_proj")):
    """(gate, up, down) of the experts under prefix ``p``, stacked: (E, F, D) (E, F, D) (E, D, F).

    Looked for as a fused pair ``fused`` = (gate_up (E, 2F, D) with gate first, down (E, D, F)), then
    GGUF's stacks ``experts.{gate,up,down}_proj``, then per expert ``experts.{e}.{name}.weight`` with
    ``per_expert`` naming the gate, up and down projections."""
    gate_up, down = fused
    if w.has(p + gate_up):
        t = w.take(p + gate_up, (E, 2 * F, D))
        return t[:, :F], t[:, F:], w.take(p + down, (E, D, F))
    if w.has(p + "experts.up_proj"):
        return (w.take(p + "experts.gate_proj", (E, F, D)), w.take(p + "experts.up_proj", (E, F, D)),
                w.take(p + "experts.down_proj", (E, D, F)))
    g, u, d = per_expert
    return (_stacked(w, [f"{p}experts.{e}.{g}.weight" for e in range(E)], (F, D)),
            _stacked(w, [f"{p}experts.{e}.{u}.weight" for e in range(E)], (F, D)),
            _stacked(w, [f"{p}experts.{e}.{d}.weight" for e in range(E)], (D, F)))


def moe(args: MoEArgs, w: Weights, p: str, router: str, *, norm_topk: bool | None = None, shared=None,
        shared_gate=None, **expert_names) -> "nn.MoE":
    """The MoE block under prefix ``p`` with its router weight named ``p + router``; ``expert_names`` as
    :func:`experts` takes them."""
    E, D, F = args.num_experts, args.hidden_size, args.moe_intermediate_size
    r = w.take(p + router, (E, D))
    gate, up, down = experts(w, p, E, F, D, **expert_names)
    return nn.MoE(r, gate, up, down, args.num_experts_per_tok, activation=args.hidden_act,
                  norm_topk=args.norm_topk_prob if norm_topk is None else norm_topk, shared=shared,
                  shared_gate=shared_gate)


def config_from_gguf(md: dict, where: str) -> dict:
    cfg = llama.config_from_gguf(md, where)  # gguf_config reads llama.expert_count and the other expert keys
    cfg["model_type"] = "mixtral"
    return cfg


def build(args: MoEArgs, w: Weights, progress=iter):
    def layer(i):
        p = f"model.layers.{i}."
        if w.has(p + "block_sparse_moe.gate.weight"):  # Hub checkpoints: experts.{e}.w1 (gate), w3 (up), w2 (down)
            block = moe(args, w, p + "block_sparse_moe.", "gate.weight", per_expert=("w1", "w3", "w2"))
        else:  # transformers 5's names, and GGUF's
            block = moe(args, w, p + "mlp.", "gate.weight")
        return llama.layer(args, w, i, mlp_block=block, window=args.sliding_window or 0)

    return llama.build_decoder(args, w, (layer(i) for i in progress(range(args.num_hidden_layers))))

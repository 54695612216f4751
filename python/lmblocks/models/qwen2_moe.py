"""Qwen2-MoE / Qwen1.5-MoE (Qwen Team 2024): Qwen2's attention (q/k/v biases) with a sparse MLP of
``num_experts`` experts (softmax router, top ``num_experts_per_tok``, weights renormalized only with
``norm_topk_prob``) plus a shared expert every token goes through, gated by
sigmoid(x . shared_expert_gate). Layers listed in ``mlp_only_layers``, or not a multiple of
``decoder_sparse_step`` (1-based), keep a dense MLP of ``intermediate_size``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..io import FormatError
from . import llama
from .base import Weights, gguf_config, nn
from .mixtral import MoEArgs, _int_field, moe

MODEL_TYPES = ("qwen2_moe",)
GGUF_ARCHS = ("qwen2moe",)
GGUF_OVERRIDES: dict[str, str] = {}


@dataclass
class Qwen2MoeArgs(MoEArgs):
    norm_topk_prob: bool = False
    shared_expert_intermediate_size: int = 0  # 0: no shared expert
    decoder_sparse_step: int = 1
    mlp_only_layers: list = field(default_factory=list)
    use_sliding_window: bool = False
    max_window_layers: int = 0
    layer_types: list | None = None

    def validate(self, where: str) -> None:
        super().validate(where)
        _int_field(where, "shared_expert_intermediate_size", self.shared_expert_intermediate_size, 0)
        _int_field(where, "decoder_sparse_step", self.decoder_sparse_step, 1, self.num_hidden_layers + 1)
        if not isinstance(self.mlp_only_layers, list):
            raise FormatError(f"{where}: field 'mlp_only_layers' is {self.mlp_only_layers!r}; "
                              "expected a list of layers")
        for i in self.mlp_only_layers:
            _int_field(where, "mlp_only_layers", i, 0, self.num_hidden_layers)
        if self.layer_types is not None and (not isinstance(self.layer_types, list)
                                             or len(self.layer_types) != self.num_hidden_layers):
            raise FormatError(f"{where}: field 'layer_types' is {self.layer_types!r}; expected one entry per layer")

    def sparse(self, i: int) -> bool:
        """Whether layer i's MLP is the experts (transformers' rule)."""
        return i not in self.mlp_only_layers and (i + 1) % self.decoder_sparse_step == 0

    def window(self, i: int) -> int:
        """Layer i's sliding window (0: global attention)."""
        if not self.use_sliding_window:
            return 0
        if self.layer_types is not None:
            return (self.sliding_window or 0) if self.layer_types[i] == "sliding_attention" else 0
        return (self.sliding_window or 0) if i >= self.max_window_layers else 0


ARGS = Qwen2MoeArgs


def config_from_gguf(md: dict, where: str) -> dict:
    return gguf_config(md, "qwen2moe", "qwen2_moe", where)


def shared_expert(args: Qwen2MoeArgs, w: Weights, p: str):
    """(MLP, gate) of the shared expert under ``p`` (``model.layers.{i}.mlp.``), or (None, None)."""
    D, F = args.hidden_size, args.shared_expert_intermediate_size
    if not F:
        return None, None
    s = p + "shared_expert."
    mlp = nn.MLP(w.take(s + "gate_proj.weight", (F, D)), w.take(s + "up_proj.weight", (F, D)),
                 w.take(s + "down_proj.weight", (D, F)), activation=args.hidden_act)
    gate = w.take(p + "shared_expert_gate.weight")
    if tuple(gate.shape) not in ((1, D), (D,)):  # GGUF stores it as (D,)
        raise FormatError(f"{w.where}: tensor {w.label(p + 'shared_expert_gate.weight')} has shape "
                          f"{tuple(gate.shape)}; the config implies (1, {D})")
    return mlp, gate


def build(args: Qwen2MoeArgs, w: Weights, progress=iter):
    def layer(i):
        p = f"model.layers.{i}.mlp."
        block = None
        if args.sparse(i):
            shared, gate = shared_expert(args, w, p)
            block = moe(args, w, p, "gate.weight", shared=shared, shared_gate=gate)
        return llama.layer(args, w, i, mlp_block=block, window=args.window(i))

    return llama.build_decoder(args, w, (layer(i) for i in progress(range(args.num_hidden_layers))))

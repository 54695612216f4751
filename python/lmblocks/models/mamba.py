"""Mamba (Gu & Dao 2023): a stack of pre-norm residual layers whose only mixer is the selective-scan
block (no attention, no MLP), a final RMSNorm and the (usually tied) head. Decode keeps a constant-size
state per layer (conv window + SSM state) in the model's cache.

Per layer: ``x += Mamba(rms_norm(x))`` (``lmblocks.nn.Mamba``, cpp/include/lmblocks/mamba.h).
:func:`backbone` is the layout Mamba2 shares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..io import FormatError
from .base import Weights, args_from_config, check_positive_int, nn

MODEL_TYPES = ("mamba",)
GGUF_ARCHS: tuple[str, ...] = ()


@dataclass
class MambaArgs:
    """The Hugging Face MambaConfig fields the model needs (same names)."""

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    state_size: int = 16
    expand: int = 2
    conv_kernel: int = 4
    intermediate_size: int | None = None
    time_step_rank: int | str = "auto"
    layer_norm_epsilon: float = 1e-5
    use_bias: bool = False
    use_conv_bias: bool = True
    hidden_act: str = "silu"
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 1 << 20  # no positional limit: the state does not grow
    num_attention_heads = 0  # what lmblocks.Model's repr reads from any architecture's arguments
    num_key_value_heads = 0

    @classmethod
    def from_config(cls, config: dict, where: str = "config"):
        return args_from_config(cls, config, ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"), where)

    def validate(self, where: str) -> None:
        if self.intermediate_size is None:
            self.intermediate_size = self.expand * self.hidden_size
        if self.time_step_rank == "auto":
            self.time_step_rank = math.ceil(self.hidden_size / 16)
        for k in ("hidden_size", "num_hidden_layers", "vocab_size", "state_size", "expand", "conv_kernel",
                  "intermediate_size", "time_step_rank"):
            check_positive_int(where, k, getattr(self, k))
        if self.hidden_act != "silu":
            raise FormatError(f"{where}: field 'hidden_act' is {self.hidden_act!r}; Mamba supports 'silu'")


ARGS = MambaArgs


def backbone(args, w: Weights, mixer, progress=iter) -> "nn.CausalLM":
    """``backbone.embeddings``, layers ``x += mixer(rms_norm(x))`` with ``mixer(prefix)`` the block under
    ``backbone.layers.{i}.mixer.``, ``backbone.norm_f`` and the head (tied unless ``lm_head.weight``)."""
    D, V, eps = args.hidden_size, args.vocab_size, float(args.layer_norm_epsilon)
    embed = w.take("backbone.embeddings.weight", (V, D))

    def layer(i):
        p = f"backbone.layers.{i}."
        norm = nn.RMSNorm(w.take(p + "norm.weight", (D,)), eps=eps)
        return nn.Layer(mixer(p + "mixer."), None, attn_norm=norm)

    layers = nn.Sequential([layer(i) for i in progress(range(args.num_hidden_layers))])
    head = None if args.tie_word_embeddings or not w.has("lm_head.weight") else w.take("lm_head.weight", (V, D))
    return nn.CausalLM(embed, 1.0, layers, nn.RMSNorm(w.take("backbone.norm_f.weight", (D,)), eps=eps), head)


def mixer(args: MambaArgs, w: Weights, p: str, norms: bool = False) -> "nn.Mamba":
    """The Mamba block under prefix ``p``; ``norms``: with Jamba's ``dt_layernorm``, ``b_layernorm`` and
    ``c_layernorm`` (eps ``layer_norm_epsilon``)."""
    D, di, N, K, R = (args.hidden_size, args.intermediate_size, args.state_size, args.conv_kernel,
                      args.time_step_rank)
    extra = {}
    if norms:
        extra = dict(dt_norm=w.take(p + "dt_layernorm.weight", (R,)), b_norm=w.take(p + "b_layernorm.weight", (N,)),
                     c_norm=w.take(p + "c_layernorm.weight", (N,)), norm_eps=float(args.layer_norm_epsilon))
    return nn.Mamba(
        w.take(p + "in_proj.weight", (2 * di, D)), w.take(p + "conv1d.weight", (di, 1, K)),
        w.take(p + "conv1d.bias", (di,)) if args.use_conv_bias else None, w.take(p + "x_proj.weight", (R + 2 * N, di)),
        w.take(p + "dt_proj.weight", (di, R)), w.take(p + "dt_proj.bias", (di,)), w.take(p + "A_log", (di, N)),
        w.take(p + "D", (di,)), w.take(p + "out_proj.weight", (D, di)),
        in_bias=w.take(p + "in_proj.bias", (2 * di,)) if args.use_bias else None,
        out_bias=w.take(p + "out_proj.bias", (D,)) if args.use_bias else None, **extra)


def build(args: MambaArgs, w: Weights, progress=iter) -> "nn.CausalLM":
    return backbone(args, w, lambda p: mixer(args, w, p), progress)

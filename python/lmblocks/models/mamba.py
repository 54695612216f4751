"""Mamba (Gu & Dao 2023): a stack of pre-norm residual layers whose only mixer is the selective-scan
block (no attention, no MLP), a final RMSNorm and the (usually tied) head. Decode keeps a constant-size
state per layer (conv window + SSM state) in the model's cache.

Per layer: ``x += Mamba(rms_norm(x))`` (``lmblocks.nn.Mamba``, cpp/include/lmblocks/mamba.h).
:func:`backbone` is the layout Mamba2 shares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..io import FormatError
from .base import Weights, args_from_config, check_positive_int, nn

MODEL_TYPES = ("mamba",)
GGUF_ARCHS = ("mamba",)

# llama.cpp's names for the backbone and the mixer (convert_hf_to_gguf.py's MambaModel/Mamba2Model);
# Mamba2 changes what ssm_dt.bias is read as (mamba2.GGUF_OVERRIDES).
_M = "backbone.layers.{i}.mixer."
GGUF_OVERRIDES = {
    "token_embd.weight": "backbone.embeddings.weight",
    "output_norm.weight": "backbone.norm_f.weight",
    "blk.{i}.attn_norm.weight": "backbone.layers.{i}.norm.weight",
    "blk.{i}.ssm_in.weight": _M + "in_proj.weight",
    "blk.{i}.ssm_in.bias": _M + "in_proj.bias",
    "blk.{i}.ssm_conv1d.weight": _M + "conv1d.weight",
    "blk.{i}.ssm_conv1d.bias": _M + "conv1d.bias",
    "blk.{i}.ssm_x.weight": _M + "x_proj.weight",
    "blk.{i}.ssm_dt.weight": _M + "dt_proj.weight",
    "blk.{i}.ssm_dt.bias": _M + "dt_proj.bias",
    "blk.{i}.ssm_a": _M + "A_log",
    "blk.{i}.ssm_d": _M + "D",
    "blk.{i}.ssm_norm.weight": _M + "norm.weight",
    "blk.{i}.ssm_out.weight": _M + "out_proj.weight",
    "blk.{i}.ssm_out.bias": _M + "out_proj.bias",
}


def gguf_ssm_config(md: dict, arch: str, where: str, model_type: str) -> dict:
    """The Hugging Face config fields a ``mamba``/``mamba2`` GGUF carries (llama.cpp's ``{arch}.ssm.*``)."""

    def get(key, default=None):
        v = md.get(f"{arch}.{key}", default)
        if v is None:
            raise FormatError(f"{where}: metadata {arch}.{key} is missing")
        if isinstance(v, (list, np.ndarray)):
            raise FormatError(f"{where}: metadata {arch}.{key} varies per layer, which is not supported")
        return v

    D, di = get("embedding_length"), get("ssm.inner_size")
    cfg = {"model_type": model_type, "hidden_size": D, "num_hidden_layers": get("block_count"),
           "state_size": get("ssm.state_size"), "conv_kernel": get("ssm.conv_kernel"),
           "layer_norm_epsilon": float(get("attention.layer_norm_rms_epsilon", 1e-5)), "intermediate_size": di}
    if not isinstance(D, int) or not isinstance(di, int) or D <= 0 or di <= 0 or di % D:
        raise FormatError(f"{where}: {arch}.ssm.inner_size {di!r} is not a positive multiple of "
                          f"{arch}.embedding_length {D!r}")
    cfg["expand"] = di // D
    return cfg


def config_from_gguf(md: dict, where: str) -> dict:
    cfg = gguf_ssm_config(md, "mamba", where, "mamba")
    cfg["time_step_rank"] = md.get("mamba.ssm.time_step_rank")
    cfg["use_conv_bias"] = True
    return cfg


def small_f32(t) -> np.ndarray:
    """A small tensor's values as float32, whatever its type: llama-quantize may have turned a 2-D one (a
    grouped norm) into blocks."""
    from ..quant import dequantize

    return np.asarray(t, np.float32) if str(t.dtype) in ("f32", "f16", "float32", "float16") \
        else np.asarray(dequantize(t), np.float32)


def gguf_a_log(name: str, t, shape=None):
    """llama.cpp stores A = -exp(A_log) (``ssm_a``); the blocks take A_log back."""
    a = small_f32(t)
    if not (a < 0).all():
        raise FormatError(f"tensor ssm_a (read as {name!r}) holds a value >= 0 or NaN; llama.cpp stores "
                          "A = -exp(A_log), which is negative")
    return np.log(-a).reshape(shape if shape is not None else a.shape)


def gguf_tensor(name: str, t):
    """llama.cpp's layouts back to Hugging Face's: A from -exp(A_log), the conv kernel (C, K) -> (C, 1, K)."""
    if name.endswith(".A_log"):
        return gguf_a_log(name, t)
    if name.endswith("conv1d.weight"):
        a = small_f32(t)
        return a.reshape(a.shape[0], 1, a.shape[-1])
    return t


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

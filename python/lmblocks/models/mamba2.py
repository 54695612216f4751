"""Mamba2 (Dao & Gu 2024, "Transformers are SSMs"): a stack of pre-norm residual layers whose only
mixer is the Mamba2 SSD block (no MLP), a final RMSNorm and the (usually tied) head. Decode keeps a
constant-size state per layer (conv window + SSM state) in the model's cache instead of keys and values.

Per layer: ``x += Mamba2(rms_norm(x))`` (see ``lmblocks.nn.Mamba2`` / cpp/include/lmblocks/mamba.h), in
:func:`lmblocks.models.mamba.backbone`'s layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..io import FormatError
from . import mamba
from .base import Weights, args_from_config, check_positive_int, json_float, nn

MODEL_TYPES = ("mamba2",)
GGUF_ARCHS = ("mamba2",)
GGUF_OVERRIDES = {**mamba.GGUF_OVERRIDES, "blk.{i}.ssm_dt.bias": mamba._M + "dt_bias"}


def config_from_gguf(md: dict, where: str) -> dict:
    """llama.cpp's Mamba2 keys: ``ssm.time_step_rank`` is the head count, ``ssm.group_count`` the groups;
    chunk size and dt limits are not stored (Hugging Face's defaults)."""
    cfg = mamba.gguf_ssm_config(md, "mamba2", where, "mamba2")
    H = md.get("mamba2.ssm.time_step_rank")
    di = cfg.pop("intermediate_size")
    if not isinstance(H, int) or H <= 0 or di % H:
        raise FormatError(f"{where}: mamba2.ssm.time_step_rank (the head count) is {H!r}; expected a positive "
                          f"divisor of mamba2.ssm.inner_size {di}")
    cfg.update(num_heads=H, head_dim=di // H, n_groups=md.get("mamba2.ssm.group_count", 1), use_conv_bias=True)
    return cfg


def gguf_tensor(name: str, t):
    """llama.cpp's Mamba2 layouts (its mamba2, granitehybrid and falcon-h1 files): A and D as (H, 1), the norm
    as (groups, d_inner / groups)."""
    if name.endswith(".A_log"):
        return mamba.gguf_a_log(name, t, (-1,))
    if name.endswith((".D", "norm.weight")) and len(t.shape) == 2:
        return mamba.small_f32(t).reshape(-1)
    return mamba.gguf_tensor(name, t)


def with_time_step_limit(config: dict) -> dict:
    """A copy of ``config`` whose ``time_step_limit`` list is a tuple of floats (transformers writes inf
    as {"__float__": "Infinity"})."""
    config = dict(config)
    if isinstance(config.get("time_step_limit"), list):
        config["time_step_limit"] = tuple(json_float(v) for v in config["time_step_limit"])
    return config


def check_scan_fields(where: str, time_step_limit, chunk_key: str, chunk_size) -> None:
    """The SSD settings every Mamba2 architecture reads: its dt limit and its chunk size."""
    lim = time_step_limit
    if not (isinstance(lim, (list, tuple)) and len(lim) == 2 and all(isinstance(v, (int, float)) for v in lim)
            and 0 <= lim[0] <= lim[1]):
        raise FormatError(f"{where}: field 'time_step_limit' is {lim!r}; expected [min, max] with 0 <= min <= max")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
        raise FormatError(f"{where}: field {chunk_key!r} is {chunk_size!r}; expected an integer >= 0")


def dt_limits(time_step_limit) -> dict:
    """The native block's dt_min/dt_max for a (min, max) limit; max inf is the block's 1e30."""
    lo, hi = time_step_limit
    return dict(dt_min=float(lo), dt_max=float(min(hi, 1e30)) if math.isfinite(hi) else 1e30)


@dataclass
class HybridMambaFields:
    """The ``mamba_*`` config fields of the hybrids that name their Mamba2 layers as Bamba does (Bamba,
    Granite 4.0-H, Falcon-H1), with transformers' defaults; a mixin for their ModelArgs."""

    mamba_n_heads: int = 128
    mamba_d_head: int | str = "auto"
    mamba_n_groups: int = 1
    mamba_d_state: int = 256
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_chunk_size: int = 256
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    mlp_bias: bool = False
    time_step_limit: tuple = (0.0, float("inf"))


@dataclass
class Mamba2Args:
    """The Hugging Face Mamba2Config fields the model needs (same names)."""

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    num_heads: int
    head_dim: int = 64
    state_size: int = 128
    n_groups: int = 8
    expand: int = 2
    conv_kernel: int = 4
    chunk_size: int = 256
    layer_norm_epsilon: float = 1e-5
    use_bias: bool = False
    use_conv_bias: bool = True
    hidden_act: str = "silu"
    time_step_limit: tuple = (0.0, float("inf"))
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 1 << 20  # no positional limit: the state does not grow

    num_attention_heads = 0  # what lmblocks.Model's repr reads from any architecture's arguments
    num_key_value_heads = 0

    @classmethod
    def from_config(cls, config: dict, where: str = "config"):
        return args_from_config(cls, with_time_step_limit(config), ("model_type", "hidden_size", "num_hidden_layers",
                                                                    "vocab_size", "num_heads"), where)

    def validate(self, where: str) -> None:
        for k in ("hidden_size", "num_hidden_layers", "vocab_size", "num_heads", "head_dim", "state_size", "n_groups",
                  "expand", "conv_kernel"):
            check_positive_int(where, k, getattr(self, k))
        if self.expand * self.hidden_size != self.num_heads * self.head_dim:
            raise FormatError(f"{where}: expand * hidden_size = {self.expand * self.hidden_size} but num_heads * head_dim "
                              f"= {self.num_heads * self.head_dim}; Mamba2 needs them equal (d_inner)")
        if self.num_heads % self.n_groups:
            raise FormatError(f"{where}: num_heads {self.num_heads} is not a multiple of n_groups {self.n_groups}")
        if self.hidden_act != "silu":
            raise FormatError(f"{where}: field 'hidden_act' is {self.hidden_act!r}; Mamba2 supports 'silu'")
        check_scan_fields(where, self.time_step_limit, "chunk_size", self.chunk_size)


ARGS = Mamba2Args


def mixer(args: Mamba2Args, w: Weights, p: str) -> "nn.Mamba2":
    """The Mamba2 block under prefix ``p`` (``backbone.layers.{i}.mixer.``), weights as stored."""
    D, H, P, G, N, K = (args.hidden_size, args.num_heads, args.head_dim, args.n_groups, args.state_size,
                        args.conv_kernel)
    di = H * P
    cd = di + 2 * G * N
    return nn.Mamba2(
        H, P, G, N, w.take(p + "in_proj.weight", (di + cd + H, D)), w.take(p + "conv1d.weight", (cd, 1, K)),
        w.take(p + "conv1d.bias", (cd,)) if args.use_conv_bias else None, w.take(p + "dt_bias", (H,)),
        w.take(p + "A_log", (H,)), w.take(p + "D", (H,)), w.take(p + "norm.weight", (di,)),
        w.take(p + "out_proj.weight", (D, di)),
        in_bias=w.take(p + "in_proj.bias", (di + cd + H,)) if args.use_bias else None,
        out_bias=w.take(p + "out_proj.bias", (D,)) if args.use_bias else None,
        chunk_size=args.chunk_size, norm_eps=float(args.layer_norm_epsilon), **dt_limits(args.time_step_limit))


def build(args: Mamba2Args, w: Weights, progress=iter) -> "nn.CausalLM":
    return mamba.backbone(args, w, lambda p: mixer(args, w, p), progress)

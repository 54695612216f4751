"""Falcon-H1 (TII, 2025): every layer runs rope attention and a Mamba2 mixer side by side on the same
normed input and adds both to the residual stream, then a gated MLP.

Per layer: ``n = rms_norm(x)``, ``x += mamba(n) + attn(n)`` (``nn.Parallel``), ``x += mlp(rms_norm(x))``.

Falcon-H1 is trained with muP multipliers. Each one scales the input or output of a linear map, so it is
folded into that map's weights (and bias) once, at load time: ``attention_in_multiplier`` into q/k/v,
``key_multiplier`` into k, ``attention_out_multiplier`` into o, ``ssm_in_multiplier`` and the per-row
``mup_vector`` (from ``ssm_multipliers``: z, x, B, C and dt parts of in_proj's output) into in_proj,
``ssm_out_multiplier`` into out_proj, ``mlp_multipliers`` into gate_proj and down_proj. The embedding and
lm_head multipliers fold into their tables when the head is untied; a tied table is both, so there they
stay runtime scales (``embed_scale``, ``logit_scale``).

The Mamba2 mixer's own options: ``mamba_d_ssm`` (its width, not necessarily ``mamba_expand *
hidden_size``), ``mamba_rms_norm`` (a gated RMSNorm before out_proj, or just ``y * silu(z)``),
``mamba_norm_before_gate``, and biases on in_proj (``mamba_proj_bias``) and out_proj (``projectors_bias``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..io import FormatError
from . import llama, mamba2
from .base import ModelArgs, Weights, check_positive_int, gguf_config, nn, rope_kwargs

MODEL_TYPES = ("falcon_h1",)
GGUF_ARCHS = ("falcon-h1",)
# llama.cpp's "falcon-h1" names. Its converter folds every multiplier into the weights (as build does),
# stores A = -exp(A_log), D as (H, 1), the conv as (conv_dim, K) and the mamba norm as (groups, d / groups):
# gguf_tensor gives back transformers' tensors.
GGUF_OVERRIDES = {
    "output_norm.weight": "model.final_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.pre_ff_layernorm.weight",
    "blk.{i}.ffn_norm": "model.layers.{i}.pre_ff_layernorm.weight",  # the name llama.cpp's falcon-h1 loader reads
    **{f"blk.{{i}}.ffn_{x}.{k}": f"model.layers.{{i}}.feed_forward.{x}_proj.{k}"
       for x in ("gate", "up", "down") for k in ("weight", "bias")},
    "blk.{i}.ssm_in.weight": "model.layers.{i}.mamba.in_proj.weight",
    "blk.{i}.ssm_conv1d.weight": "model.layers.{i}.mamba.conv1d.weight",
    "blk.{i}.ssm_conv1d.bias": "model.layers.{i}.mamba.conv1d.bias",
    "blk.{i}.ssm_dt.bias": "model.layers.{i}.mamba.dt_bias",
    "blk.{i}.ssm_a": "model.layers.{i}.mamba.A_log",
    "blk.{i}.ssm_d": "model.layers.{i}.mamba.D",
    "blk.{i}.ssm_norm.weight": "model.layers.{i}.mamba.norm.weight",
    "blk.{i}.ssm_out.weight": "model.layers.{i}.mamba.out_proj.weight",
}


@dataclass
class FalconH1Args(mamba2.HybridMambaFields, ModelArgs):
    rms_norm_eps: float = 1e-5
    mamba_d_ssm: int | None = 1024  # transformers' default; None means mamba_expand * hidden_size
    mamba_norm_before_gate: bool = True
    mamba_rms_norm: bool | str = False  # "auto" (GGUF): when the file has the norm weights
    projectors_bias: bool = False
    embedding_multiplier: float = 1.0
    lm_head_multiplier: float = 1.0
    key_multiplier: float = 1.0
    attention_in_multiplier: float = 1.0
    attention_out_multiplier: float = 1.0
    ssm_in_multiplier: float = 1.0
    ssm_out_multiplier: float = 1.0
    mlp_multipliers: list = field(default_factory=lambda: [1.0, 1.0])
    ssm_multipliers: list = field(default_factory=lambda: [1.0] * 5)

    @classmethod
    def from_config(cls, config: dict, where: str = "config"):
        config = mamba2.with_time_step_limit(config)
        if "mamba_d_ssm" in config and config["mamba_d_ssm"] is None:  # explicit null: expand * hidden_size
            config["mamba_d_ssm"] = config.get("mamba_expand", 2) * config.get("hidden_size", 0)
        return super().from_config(config, where)

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.mamba_d_ssm is None:
            self.mamba_d_ssm = self.mamba_expand * self.hidden_size
        for k in ("mamba_d_ssm", "mamba_n_heads", "mamba_n_groups", "mamba_d_state", "mamba_d_conv"):
            check_positive_int(where, k, getattr(self, k))
        if self.mamba_d_head == "auto":
            self.mamba_d_head = self.mamba_d_ssm // self.mamba_n_heads
        check_positive_int(where, "mamba_d_head", self.mamba_d_head)
        if self.mamba_d_head * self.mamba_n_heads != self.mamba_d_ssm:
            raise FormatError(f"{where}: mamba_d_head {self.mamba_d_head} * mamba_n_heads {self.mamba_n_heads} is not "
                              f"mamba_d_ssm {self.mamba_d_ssm} (the Mamba2 mixer's width)")
        if self.mamba_n_heads % self.mamba_n_groups:
            raise FormatError(f"{where}: mamba_n_heads {self.mamba_n_heads} is not a multiple of mamba_n_groups "
                              f"{self.mamba_n_groups}")
        if self.mamba_rms_norm not in (True, False, "auto"):
            raise FormatError(f"{where}: field 'mamba_rms_norm' is {self.mamba_rms_norm!r}; expected true or false")
        if self.hidden_act != "silu":  # the mixer's conv uses hidden_act too; the native conv is silu
            raise FormatError(f"{where}: field 'hidden_act' is {self.hidden_act!r}; Falcon-H1 supports 'silu'")
        mamba2.check_scan_fields(where, self.time_step_limit, "mamba_chunk_size", self.mamba_chunk_size)
        for k, n in (("mlp_multipliers", 2), ("ssm_multipliers", 5)):
            v = getattr(self, k)
            if not (isinstance(v, (list, tuple)) and len(v) == n and all(_finite(x) for x in v)):
                raise FormatError(f"{where}: field {k!r} is {v!r}; expected a list of {n} finite numbers")
        for k in ("embedding_multiplier", "lm_head_multiplier", "key_multiplier", "attention_in_multiplier",
                  "attention_out_multiplier", "ssm_in_multiplier", "ssm_out_multiplier"):
            if not _finite(getattr(self, k)):
                raise FormatError(f"{where}: field {k!r} is {getattr(self, k)!r}; expected a finite number")

    def mup_vector(self) -> np.ndarray:
        """transformers' compute_mup_vector: one multiplier per row of in_proj's output [z | x | B | C | dt]."""
        di, gn, H = self.mamba_d_ssm, self.mamba_n_groups * self.mamba_d_state, self.mamba_n_heads
        sizes = (di, di, gn, gn, H)
        return np.concatenate([np.full(n, m, np.float32) for n, m in zip(sizes, self.ssm_multipliers)])


def _finite(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


ARGS = FalconH1Args


def config_from_gguf(md: dict, where: str) -> dict:
    """transformers' config from llama.cpp's metadata: what its falcon-h1 graph computes (the mamba norm,
    when present, after the gate; no in_proj bias; multipliers already in the weights)."""
    cfg = gguf_config(md, "falcon-h1", "falcon_h1", where)
    for key, name in (("ssm.inner_size", "mamba_d_ssm"), ("ssm.state_size", "mamba_d_state"),
                      ("ssm.conv_kernel", "mamba_d_conv"), ("ssm.time_step_rank", "mamba_n_heads"),
                      ("ssm.group_count", "mamba_n_groups")):
        v = md.get(f"falcon-h1.{key}")
        if v is None:
            raise FormatError(f"{where}: metadata falcon-h1.{key} is missing")
        cfg[name] = v
    cfg.update(mamba_rms_norm="auto", mamba_norm_before_gate=False, mamba_proj_bias=False, projectors_bias=False,
               mamba_conv_bias=True)
    return cfg


gguf_tensor = mamba2.gguf_tensor  # the Mamba2 tensors are laid out as in llama.cpp's mamba2 files


def scaled(t, s):
    """``t`` with its rows multiplied by ``s`` (a number or a per-row vector), in ``t``'s dtype (f32, f16 or
    bf16); ``t`` itself (no copy) when every factor is 1. Used to fold muP multipliers into weights."""
    if t is None:
        return None
    s = np.asarray(s, np.float32)
    if np.all(s == 1):
        return t
    dtype = str(t.dtype)
    if dtype not in ("float32", "f32", "float16", "f16", "bfloat16", "bf16"):
        raise FormatError(f"cannot fold a Falcon-H1 multiplier into a {dtype} tensor")
    a = np.asarray(t, np.float32)
    out = a * (s.reshape(-1, *([1] * (a.ndim - 1))) if s.ndim else s)
    return out.astype(np.float32) if dtype in ("float32", "f32") else nn_as_dtype(out, dtype)


def nn_as_dtype(a: np.ndarray, dtype: str):
    from ..nn import as_dtype

    return as_dtype(a, {"float16": "f16", "bfloat16": "bf16"}.get(dtype, dtype))


def attention(args: FalconH1Args, w: Weights, p: str) -> "nn.Attention":
    D, H, Hkv, hd = args.hidden_size, args.num_attention_heads, args.num_key_value_heads, args.head_dim
    a, m_in, m_k, m_out = p + "self_attn.", args.attention_in_multiplier, args.key_multiplier, args.attention_out_multiplier
    bias = lambda n, k: w.take(a + n + ".bias", (k,), optional=True)  # noqa: E731
    return nn.Attention(
        H, Hkv, hd,
        scaled(w.take(a + "q_proj.weight", (H * hd, D)), m_in), scaled(w.take(a + "k_proj.weight", (Hkv * hd, D)), m_in * m_k),
        scaled(w.take(a + "v_proj.weight", (Hkv * hd, D)), m_in), scaled(w.take(a + "o_proj.weight", (D, H * hd)), m_out),
        q_bias=bias("q_proj", H * hd), k_bias=scaled(bias("k_proj", Hkv * hd), m_k), v_bias=bias("v_proj", Hkv * hd),
        o_bias=scaled(bias("o_proj", D), m_out), **rope_kwargs(args.rope, args.rotary_dim, args.rope_interleaved, w.where))


def mixer(args: FalconH1Args, w: Weights, p: str) -> "nn.Mamba2":
    D, H, P, G, N, K = (args.hidden_size, args.mamba_n_heads, args.mamba_d_head, args.mamba_n_groups,
                        args.mamba_d_state, args.mamba_d_conv)
    di = H * P
    cd = di + 2 * G * N
    m = p + "mamba."
    mup, out = args.mup_vector(), args.ssm_out_multiplier
    return nn.Mamba2(
        H, P, G, N, scaled(w.take(m + "in_proj.weight", (di + cd + H, D)), mup * args.ssm_in_multiplier),
        w.take(m + "conv1d.weight", (cd, 1, K)), w.take(m + "conv1d.bias", (cd,)) if args.mamba_conv_bias else None,
        w.take(m + "dt_bias", (H,)), w.take(m + "A_log", (H,)), w.take(m + "D", (H,)),
        w.take(m + "norm.weight", (di,), optional=args.mamba_rms_norm == "auto") if args.mamba_rms_norm else None,
        scaled(w.take(m + "out_proj.weight", (D, di)), out),
        in_bias=scaled(w.take(m + "in_proj.bias", (di + cd + H,)), mup) if args.mamba_proj_bias else None,
        out_bias=scaled(w.take(m + "out_proj.bias", (D,)), out) if args.projectors_bias else None,
        chunk_size=args.mamba_chunk_size, norm_eps=float(args.rms_norm_eps), **mamba2.dt_limits(args.time_step_limit),
        norm_before_gate=bool(args.mamba_norm_before_gate))


def mlp(args: FalconH1Args, w: Weights, p: str) -> "nn.MLP":
    D, F = args.hidden_size, args.intermediate_size
    f, (m_gate, m_down) = p + "feed_forward.", args.mlp_multipliers
    bias = lambda n, k: w.take(f + n + ".bias", (k,), optional=not args.mlp_bias)  # noqa: E731
    return nn.MLP(scaled(w.take(f + "gate_proj.weight", (F, D)), m_gate), w.take(f + "up_proj.weight", (F, D)),
                  scaled(w.take(f + "down_proj.weight", (D, F)), m_down), activation=args.hidden_act,
                  gate_bias=scaled(bias("gate_proj", F), m_gate), up_bias=bias("up_proj", F),
                  down_bias=scaled(bias("down_proj", D), m_down))


def build(args: FalconH1Args, w: Weights, progress=iter) -> "nn.CausalLM":
    D, V = args.hidden_size, args.vocab_size

    def layer(i):
        p = f"model.layers.{i}."
        in_norm = llama.norm(args, w, p + "input_layernorm.weight")
        both = nn.Parallel([mixer(args, w, p), attention(args, w, p)])
        return nn.Layer(both, mlp(args, w, p), attn_norm=in_norm,
                        mlp_norm=llama.norm(args, w, p + "pre_ff_layernorm.weight"))

    embed = w.take("model.embed_tokens.weight", (V, D))
    if args.tie_word_embeddings:  # one table is both: its multipliers stay runtime scales
        head, embed_scale, logit_scale = None, args.embedding_multiplier, args.lm_head_multiplier
    else:
        embed, head = scaled(embed, args.embedding_multiplier), scaled(w.take("lm_head.weight", (V, D)), args.lm_head_multiplier)
        embed_scale = logit_scale = 1.0
    layers = nn.Sequential([layer(i) for i in progress(range(args.num_hidden_layers))])
    lm = nn.CausalLM(embed, float(embed_scale), layers, llama.norm(args, w, "model.final_layernorm.weight"), head)
    lm.logit_scale = float(logit_scale)
    return lm

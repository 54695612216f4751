"""Granite 4.0-H (IBM, transformers' ``granitemoehybrid``): Bamba's hybrid of Mamba2 and attention
layers (``layer_types``: "mamba" / "attention") with Granite MoE's feed-forward and scalars.

- Mixer: Mamba2 (SSD) as Bamba's, or attention with full rope (``position_embedding_type`` "rope") or
  no positional encoding at all (None or "nope": the Mamba2 layers carry position), scores scaled by
  ``attention_multiplier``.
- Feed-forward: Granite MoE's router (softmax over the top k logits: ``nn.MoE(norm_topk=True)``) plus
  ``shared_mlp``, a gated MLP every token goes through, added ungated (``nn.MoE(shared=...)``); with
  ``num_local_experts`` 0, the shared MLP alone. Both store gate and up fused: ``input_linear``
  (2F, D), gate rows first.
- Scalars: embeddings times ``embedding_multiplier``, each sub-layer's output times
  ``residual_multiplier`` before it is added, logits divided by ``logits_scaling``.

Per layer: ``x += r * mixer(rms_norm(x))``, ``x += r * (moe(h) + shared_mlp(h))``, ``h = rms_norm(x)``.

GGUF (llama.cpp's "granitehybrid"): attention layers are those with a non-zero ``head_count_kv`` entry;
rope is on unless ``rope.scaling.finetuned`` is false (llama.cpp's converter writes false for every
hybrid, as transformers' Granite 4.0-H configs say "nope"), with q/k rows in Meta's pair order; the
shared MLP is ``ffn_{gate,up,down}_shexp`` (or ``ffn_{gate,up,down}`` without experts), gate and up
split; Mamba2's A (as -exp(A_log)), D and norm weight are reshaped back (:func:`gguf_tensor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


from ..io import FormatError
from . import llama, mamba2
from .bamba import BambaArgs
from .base import Weights, check_positive_int, gguf_config, nn, per_layer_kv_heads
from .mixtral import _number_field, experts

MODEL_TYPES = ("granitemoehybrid",)
GGUF_ARCHS = ("granitehybrid",)
_SSM = "model.layers.{i}.mamba."
_MOE = "model.layers.{i}.block_sparse_moe."
_SHARED = "model.layers.{i}.shared_mlp."
GGUF_OVERRIDES = {
    "blk.{i}.ffn_gate_inp.weight": _MOE + "router.weight",
    **{f"blk.{{i}}.ffn_{x}_exps.weight": f"{_MOE}experts.{x}_proj" for x in ("gate", "up", "down")},
    # the shared MLP, or the only one: gate and up split (names of our own), down as Hugging Face's
    **{f"blk.{{i}}.ffn_{x}{s}.weight": f"{_SHARED}{x}_proj.weight" for x in ("gate", "up") for s in ("", "_shexp")},
    **{f"blk.{{i}}.ffn_down{s}.weight": _SHARED + "output_linear.weight" for s in ("", "_shexp")},
    "blk.{i}.ssm_in.weight": _SSM + "in_proj.weight",
    "blk.{i}.ssm_conv1d.weight": _SSM + "conv1d.weight",
    "blk.{i}.ssm_conv1d.bias": _SSM + "conv1d.bias",
    "blk.{i}.ssm_dt.bias": _SSM + "dt_bias",
    "blk.{i}.ssm_a": _SSM + "A_log",
    "blk.{i}.ssm_d": _SSM + "D",
    "blk.{i}.ssm_norm.weight": _SSM + "norm.weight",
    "blk.{i}.ssm_out.weight": _SSM + "out_proj.weight",
}

_MAMBA = ("mamba", "linear_attention")  # transformers 5 renames the Hub's "mamba" / "attention"
_ATTENTION = ("attention", "full_attention")


@dataclass
class GraniteMoeHybridArgs(BambaArgs):
    layer_types: list | None = None
    position_embedding_type: str | None = None
    num_local_experts: int = 8
    num_experts_per_tok: int = 2
    shared_intermediate_size: int = 1024
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float = 1.0
    logits_scaling: float = 1.0
    ROTARY_FRACTION: ClassVar[float] = 1.0

    @classmethod
    def from_config(cls, config: dict, where: str = "config"):
        config = dict(config)
        if config.get("layer_types") is None and config.get("layers_block_type") is not None:
            config["layer_types"] = config["layers_block_type"]
        return super().from_config(config, where)

    def validate(self, where: str) -> None:
        L = self.num_hidden_layers
        kinds = self.layer_types if self.layer_types is not None else ["mamba"] * L
        if not isinstance(kinds, list) or len(kinds) != L or not all(k in _MAMBA + _ATTENTION for k in kinds):
            raise FormatError(f"{where}: field 'layer_types' is {self.layer_types!r:.200}; expected "
                              f"num_hidden_layers = {L} entries, each 'mamba' or 'attention'")
        self.attn_layer_indices = [i for i, k in enumerate(kinds) if k in _ATTENTION]
        super().validate(where)
        pe = self.position_embedding_type
        if pe not in (None, "nope", "rope"):
            raise FormatError(f"{where}: field 'position_embedding_type' is {pe!r}; supported: 'rope', 'nope' or null")
        n = self.num_local_experts
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise FormatError(f"{where}: field 'num_local_experts' is {n!r}; expected an integer >= 0")
        if n:
            k = self.num_experts_per_tok
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
                raise FormatError(f"{where}: field 'num_experts_per_tok' is {k!r}; expected an integer in "
                                  f"[1, num_local_experts = {n}]")
        check_positive_int(where, "shared_intermediate_size", self.shared_intermediate_size)
        for k in ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"):
            _number_field(where, k, getattr(self, k))


ARGS = GraniteMoeHybridArgs


def config_from_gguf(md: dict, where: str) -> dict:
    a = "granitehybrid"
    md, kv = per_layer_kv_heads(md, a, where)
    cfg = gguf_config(md, a, "granitemoehybrid", where)
    D, inner, H = cfg["hidden_size"], md.get(f"{a}.ssm.inner_size"), md.get(f"{a}.ssm.time_step_rank")
    if not isinstance(inner, int) or inner % D or not isinstance(H, int) or H < 1 or inner % H:
        raise FormatError(f"{where}: metadata {a}.ssm.inner_size {inner!r} and {a}.ssm.time_step_rank (SSM heads) "
                          f"{H!r}; expected a multiple of {a}.embedding_length {D} divisible by the heads")
    E = cfg.pop("num_experts", 0)
    rope = bool(md.get(f"{a}.rope.scaling.finetuned", True))  # llama.cpp's switch for rope on this arch
    cfg |= {"layer_types": ["attention" if n else "mamba" for n in kv], "num_local_experts": E,
            "shared_intermediate_size": cfg.pop("shared_expert_intermediate_size", None) if E else
            cfg["intermediate_size"],
            "position_embedding_type": "rope" if rope else None, "rope_interleaved": rope,
            "mamba_expand": inner // D, "mamba_n_heads": H, "mamba_d_head": inner // H,
            "mamba_n_groups": md.get(f"{a}.ssm.group_count"), "mamba_d_state": md.get(f"{a}.ssm.state_size"),
            "mamba_d_conv": md.get(f"{a}.ssm.conv_kernel")}
    for key, name in (("embedding_scale", "embedding_multiplier"), ("residual_scale", "residual_multiplier"),
                      ("attention.scale", "attention_multiplier"), ("logit_scale", "logits_scaling")):
        if md.get(f"{a}.{key}") is not None:
            cfg[name] = float(md[f"{a}.{key}"])
    cfg.setdefault("attention_multiplier", cfg["head_dim"] ** -0.5)  # llama.cpp's default, not Granite's 1
    return cfg


# llama.cpp's converter stores A = -exp(A_log), the conv weight squeezed and A, D and the norm reshaped:
# the Mamba2 loader's rewrite gives back the Hugging Face tensors.
gguf_tensor = mamba2.gguf_tensor


def feed_forward(args: GraniteMoeHybridArgs, w: Weights, p: str):
    """The shared MLP under ``p + "shared_mlp."`` and, with experts, the MoE under ``p + "block_sparse_moe."``
    it is added to."""
    D, Fs, F, E = args.hidden_size, args.shared_intermediate_size, args.intermediate_size, args.num_local_experts
    s = p + "shared_mlp."
    if w.has(s + "input_linear.weight"):
        gate_up = w.take(s + "input_linear.weight", (2 * Fs, D))
        gate, up = gate_up[:Fs], gate_up[Fs:]
    else:  # GGUF
        gate, up = w.take(s + "gate_proj.weight", (Fs, D)), w.take(s + "up_proj.weight", (Fs, D))
    shared = nn.MLP(gate, up, w.take(s + "output_linear.weight", (D, Fs)), activation=args.hidden_act)
    if not E:
        return shared
    m = p + "block_sparse_moe."
    router = w.take(m + (("router.weight" if w.has(m + "router.weight") else "router.layer.weight")), (E, D))
    fused = (("experts.gate_up_proj", "experts.down_proj") if w.has(m + "experts.gate_up_proj")
             else ("input_linear.weight", "output_linear.weight"))
    gate, up, down = experts(w, m, E, F, D, fused=fused)
    return nn.MoE(router, gate, up, down, args.num_experts_per_tok, activation=args.hidden_act, norm_topk=True,
                  shared=shared)


def build(args: GraniteMoeHybridArgs, w: Weights, progress=iter) -> "nn.CausalLM":
    attn = set(args.attn_layer_indices)
    rope = args.position_embedding_type == "rope"

    def layer(i):
        p = f"model.layers.{i}."
        in_norm = llama.norm(args, w, p + "input_layernorm.weight")
        if i in attn:
            mixer = llama.attention(args, w, p, scale=args.attention_multiplier, rope=rope)
        else:
            mixer = mamba2.mixer(args.ssm, w, p + "mamba.")
        ff_norm = llama.norm(args, w, p + "post_attention_layernorm.weight")
        return nn.Layer(mixer, feed_forward(args, w, p), attn_norm=in_norm, mlp_norm=ff_norm,
                        residual_scale=args.residual_multiplier)

    lm = llama.build_decoder(args, w, (layer(i) for i in progress(range(args.num_hidden_layers))),
                             embed_scale=args.embedding_multiplier)
    lm.logit_scale = 1.0 / args.logits_scaling
    return lm

"""Jamba (AI21, Lieber et al. 2024): pre-norm decoder layers whose mixer is attention in the layers with
``i % attn_layer_period == attn_layer_offset`` and Mamba (v1) elsewhere, and whose feed-forward is a
sparse MoE in the layers with ``i % expert_layer_period == expert_layer_offset`` (when ``num_experts`` > 1)
and a dense gated MLP elsewhere.

Differences from the parts it reuses: the attention has no positional encoding at all (the Mamba layers
carry position), the Mamba mixer RMS-normalizes dt, B and C after ``x_proj`` (``dt_layernorm``,
``b_layernorm``, ``c_layernorm``), and the router takes the top k of the softmax over all experts without
renormalizing them (``nn.MoE(norm_topk=False)``).

GGUF (llama.cpp's "jamba"): attention layers are those with a non-zero ``head_count_kv`` entry, MoE
layers those with an ``ffn_gate_inp`` tensor (the file does not say otherwise); ``ssm_a`` holds
-exp(A_log) and ``ssm_conv1d`` is stored squeezed, both undone at load (:func:`gguf_tensor`).

Per layer: ``x += mixer(rms_norm(x))``, ``x += ffn(rms_norm(x))``.
"""

from __future__ import annotations

from dataclasses import dataclass


from ..io import FormatError
from . import llama, mamba
from .base import ModelArgs, Weights, check_positive_int, gguf_config, nn, per_layer_kv_heads
from .mixtral import experts, with_num_experts

MODEL_TYPES = ("jamba",)
GGUF_ARCHS = ("jamba",)
_FF = "model.layers.{i}.feed_forward."
_SSM = "model.layers.{i}.mamba."
GGUF_OVERRIDES = {
    "output_norm.weight": "model.final_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.pre_ff_layernorm.weight",
    **{f"blk.{{i}}.ffn_{x}.weight": f"{_FF}{x}_proj.weight" for x in ("gate", "up", "down")},
    "blk.{i}.ffn_gate_inp.weight": _FF + "router.weight",
    **{f"blk.{{i}}.ffn_{x}_exps.weight": f"{_FF}experts.{x}_proj" for x in ("gate", "up", "down")},
    "blk.{i}.ssm_in.weight": _SSM + "in_proj.weight",
    "blk.{i}.ssm_conv1d.weight": _SSM + "conv1d.weight",
    "blk.{i}.ssm_conv1d.bias": _SSM + "conv1d.bias",
    "blk.{i}.ssm_x.weight": _SSM + "x_proj.weight",
    "blk.{i}.ssm_dt.weight": _SSM + "dt_proj.weight",
    "blk.{i}.ssm_dt.bias": _SSM + "dt_proj.bias",
    "blk.{i}.ssm_dt_norm.weight": _SSM + "dt_layernorm.weight",
    "blk.{i}.ssm_b_norm.weight": _SSM + "b_layernorm.weight",
    "blk.{i}.ssm_c_norm.weight": _SSM + "c_layernorm.weight",
    "blk.{i}.ssm_a": _SSM + "A_log",
    "blk.{i}.ssm_d": _SSM + "D",
    "blk.{i}.ssm_out.weight": _SSM + "out_proj.weight",
}


@dataclass
class JambaArgs(ModelArgs):
    num_experts: int = 16
    num_experts_per_tok: int = 2
    expert_layer_period: int = 2
    expert_layer_offset: int = 1
    attn_layer_period: int = 8
    attn_layer_offset: int = 4
    attn_layer_indices: list | None = None  # GGUF: read from head_count_kv; overrides period and offset
    experts_by_tensor: bool = False  # GGUF: the layers with a router tensor have experts
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_dt_rank: int | str = "auto"
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    max_position_embeddings: int = 262144

    @classmethod
    def from_config(cls, config: dict, where: str = "config"):
        return super().from_config(with_num_experts(config), where)

    def validate(self, where: str) -> None:
        super().validate(where)
        for k in ("num_experts", "num_experts_per_tok", "expert_layer_period", "attn_layer_period"):
            check_positive_int(where, k, getattr(self, k))
        idx = self.attn_layer_indices
        if idx is not None and not (isinstance(idx, list) and all(
                isinstance(i, int) and 0 <= i < self.num_hidden_layers for i in idx)):
            raise FormatError(f"{where}: attention layers {idx!r}; expected indices in [0, {self.num_hidden_layers})")
        for k in ("expert_layer_offset", "attn_layer_offset"):
            v, period = getattr(self, k), getattr(self, k.replace("offset", "period"))
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < period:
                raise FormatError(f"{where}: field {k!r} is {v!r}; expected an integer in [0, "
                                  f"{k.replace('offset', 'period')} = {period})")
        if self.num_experts > 1 and self.num_experts_per_tok > self.num_experts:
            raise FormatError(f"{where}: field 'num_experts_per_tok' is {self.num_experts_per_tok}; expected at most "
                              f"num_experts = {self.num_experts}")
        self.ssm = mamba.MambaArgs(
            model_type="mamba", hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            vocab_size=self.vocab_size, state_size=self.mamba_d_state, expand=self.mamba_expand,
            conv_kernel=self.mamba_d_conv, time_step_rank=self.mamba_dt_rank, layer_norm_epsilon=self.rms_norm_eps,
            use_bias=self.mamba_proj_bias, use_conv_bias=self.mamba_conv_bias, hidden_act=self.hidden_act)
        self.ssm.validate(where)

    def is_attention(self, i: int) -> bool:
        if self.attn_layer_indices is not None:
            return i in self.attn_layer_indices
        return i % self.attn_layer_period == self.attn_layer_offset

    def has_experts(self, i: int, w: Weights) -> bool:
        if self.experts_by_tensor:
            return w.has(_FF.format(i=i) + "router.weight")
        return self.num_experts > 1 and i % self.expert_layer_period == self.expert_layer_offset


ARGS = JambaArgs


def config_from_gguf(md: dict, where: str) -> dict:
    md, kv = per_layer_kv_heads(md, "jamba", where)
    cfg = gguf_config(md, "jamba", "jamba", where)
    D, inner = cfg["hidden_size"], md.get("jamba.ssm.inner_size")
    if not isinstance(inner, int) or inner % D:
        raise FormatError(f"{where}: metadata jamba.ssm.inner_size is {inner!r}; expected a multiple of "
                          f"jamba.embedding_length {D}")
    cfg |= {"attn_layer_indices": [i for i, n in enumerate(kv) if n], "experts_by_tensor": True,
            "mamba_expand": inner // D, "mamba_d_state": md.get("jamba.ssm.state_size"),
            "mamba_d_conv": md.get("jamba.ssm.conv_kernel"), "mamba_dt_rank": md.get("jamba.ssm.time_step_rank")}
    return cfg


# llama.cpp's converter stores A = -exp(A_log), the conv weight squeezed:
# the Mamba loader's rewrite gives back the Hugging Face tensors.
gguf_tensor = mamba.gguf_tensor


def feed_forward(args: JambaArgs, w: Weights, i: int, p: str):
    D, F = args.hidden_size, args.intermediate_size
    if not args.has_experts(i, w):
        return nn.MLP(w.take(p + "gate_proj.weight", (F, D)), w.take(p + "up_proj.weight", (F, D)),
                      w.take(p + "down_proj.weight", (D, F)), activation=args.hidden_act)
    E = args.num_experts
    router = w.take(p + "router.weight", (E, D))
    gate, up, down = experts(w, p, E, F, D)
    return nn.MoE(router, gate, up, down, args.num_experts_per_tok, activation=args.hidden_act, norm_topk=False)


def build(args: JambaArgs, w: Weights, progress=iter) -> "nn.CausalLM":
    def layer(i):
        p = f"model.layers.{i}."
        in_norm = llama.norm(args, w, p + "input_layernorm.weight")
        if args.is_attention(i):
            mixer = llama.attention(args, w, p, rope=False)
        else:
            mixer = mamba.mixer(args.ssm, w, p + "mamba.", norms=True)
        ff_norm = llama.norm(args, w, p + "pre_ff_layernorm.weight")
        return nn.Layer(mixer, feed_forward(args, w, i, p + "feed_forward."), attn_norm=in_norm, mlp_norm=ff_norm)

    V, D = args.vocab_size, args.hidden_size
    layers = nn.Sequential([layer(i) for i in progress(range(args.num_hidden_layers))])
    embed = w.take("model.embed_tokens.weight", (V, D))
    head = None if args.tie_word_embeddings else w.take("lm_head.weight", (V, D))
    return nn.CausalLM(embed, 1.0, layers, llama.norm(args, w, "model.final_layernorm.weight"), head)

"""Jamba (AI21, Lieber et al. 2024): pre-norm decoder layers whose mixer is attention in the layers with
``i % attn_layer_period == attn_layer_offset`` and Mamba (v1) elsewhere, and whose feed-forward is a
sparse MoE in the layers with ``i % expert_layer_period == expert_layer_offset`` (when ``num_experts`` > 1)
and a dense gated MLP elsewhere.

Differences from the parts it reuses: the attention has no positional encoding at all (the Mamba layers
carry position), the Mamba mixer RMS-normalizes dt, B and C after ``x_proj`` (``dt_layernorm``,
``b_layernorm``, ``c_layernorm``), and the router takes the top k of the softmax over all experts without
renormalizing them (``nn.MoE(norm_topk=False)``).

Per layer: ``x += mixer(rms_norm(x))``, ``x += ffn(rms_norm(x))``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..io import FormatError
from . import llama, mamba
from .base import ModelArgs, Weights, check_positive_int, nn
from .mixtral import experts

MODEL_TYPES = ("jamba",)
GGUF_ARCHS: tuple[str, ...] = ()


@dataclass
class JambaArgs(ModelArgs):
    num_experts: int = 16
    num_experts_per_tok: int = 2
    expert_layer_period: int = 2
    expert_layer_offset: int = 1
    attn_layer_period: int = 8
    attn_layer_offset: int = 4
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_dt_rank: int | str = "auto"
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    max_position_embeddings: int = 262144

    @classmethod
    def from_config(cls, config: dict, where: str = "config"):
        config = dict(config)
        if config.get("num_experts") is None and config.get("num_local_experts") is not None:
            config["num_experts"] = config["num_local_experts"]
        return super().from_config(config, where)

    def validate(self, where: str) -> None:
        super().validate(where)
        for k in ("num_experts", "num_experts_per_tok", "expert_layer_period", "attn_layer_period"):
            check_positive_int(where, k, getattr(self, k))
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
        return i % self.attn_layer_period == self.attn_layer_offset

    def has_experts(self, i: int) -> bool:
        return self.num_experts > 1 and i % self.expert_layer_period == self.expert_layer_offset


ARGS = JambaArgs


def feed_forward(args: JambaArgs, w: Weights, i: int, p: str):
    D, F = args.hidden_size, args.intermediate_size
    if not args.has_experts(i):
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

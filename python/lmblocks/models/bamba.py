"""Bamba (IBM, 2024) and the hybrid layout Granite 4.0-H builds on: pre-norm decoder layers whose mixer
is Mamba2 (SSD) in most layers and rope attention (half the head dim rotated) in the layers listed by
``attn_layer_indices``, each followed by a gated MLP. SSM layers keep a constant-size state in the
cache, attention layers keys and values.

Per layer: ``x += mixer(rms_norm(x))``, ``x += mlp(rms_norm(x))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..io import FormatError
from . import llama, mamba2
from .base import ModelArgs, Weights, check_positive_int, nn

MODEL_TYPES = ("bamba",)
GGUF_ARCHS: tuple[str, ...] = ()


@dataclass
class BambaArgs(mamba2.HybridMambaFields, ModelArgs):
    attn_layer_indices: list | None = None
    ROTARY_FRACTION: ClassVar[float] = 0.5  # the rotated part of each head when the config does not say

    @classmethod
    def from_config(cls, config: dict, where: str = "config"):
        config = mamba2.with_time_step_limit(config)
        if config.get("partial_rotary_factor") is None:  # transformers hard-codes 0.5 for Bamba
            config["partial_rotary_factor"] = cls.ROTARY_FRACTION
        return super().from_config(config, where)

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.mamba_d_head == "auto":
            self.mamba_d_head = self.mamba_expand * self.hidden_size // self.mamba_n_heads
        for k in ("mamba_n_heads", "mamba_d_head", "mamba_n_groups", "mamba_d_state", "mamba_d_conv", "mamba_expand"):
            check_positive_int(where, k, getattr(self, k))
        idx = self.attn_layer_indices or []
        if not isinstance(idx, list) or not all(isinstance(i, int) and 0 <= i < self.num_hidden_layers for i in idx):
            raise FormatError(f"{where}: field 'attn_layer_indices' is {self.attn_layer_indices!r}; expected layer "
                              f"indices in [0, {self.num_hidden_layers})")
        self.ssm = mamba2.Mamba2Args(
            model_type="mamba2", hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            vocab_size=self.vocab_size, num_heads=self.mamba_n_heads, head_dim=self.mamba_d_head,
            state_size=self.mamba_d_state, n_groups=self.mamba_n_groups, expand=self.mamba_expand,
            conv_kernel=self.mamba_d_conv, chunk_size=self.mamba_chunk_size, layer_norm_epsilon=self.rms_norm_eps,
            use_bias=self.mamba_proj_bias, use_conv_bias=self.mamba_conv_bias, time_step_limit=self.time_step_limit)
        self.ssm.validate(where)


ARGS = BambaArgs


def build(args: BambaArgs, w: Weights, progress=iter) -> "nn.CausalLM":
    D, F = args.hidden_size, args.intermediate_size
    attn = set(args.attn_layer_indices or [])

    def layer(i):
        p = f"model.layers.{i}."
        in_norm = llama.norm(args, w, p + "input_layernorm.weight")
        mixer = llama.attention(args, w, p) if i in attn else mamba2.mixer(args.ssm, w, p + "mamba.")
        f = p + "feed_forward."
        mlp = nn.MLP(w.take(f + "gate_proj.weight", (F, D)), w.take(f + "up_proj.weight", (F, D)),
                     w.take(f + "down_proj.weight", (D, F)), activation=args.hidden_act,
                     up_bias=w.take(f + "up_proj.bias", (F,), optional=True),
                     down_bias=w.take(f + "down_proj.bias", (D,), optional=True),
                     gate_bias=w.take(f + "gate_proj.bias", (F,), optional=True))
        return nn.Layer(mixer, mlp, attn_norm=in_norm, mlp_norm=llama.norm(args, w, p + "pre_ff_layernorm.weight"))

    V = args.vocab_size
    embed = w.take("model.embed_tokens.weight", (V, D))
    head = None if args.tie_word_embeddings else w.take("lm_head.weight", (V, D))
    return nn.CausalLM(embed, 1.0, nn.Sequential([layer(i) for i in progress(range(args.num_hidden_layers))]),
                       llama.norm(args, w, "model.final_layernorm.weight"), head)

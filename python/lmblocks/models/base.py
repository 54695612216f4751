"""What the architecture files share: their arguments, named weights, rope settings and GGUF names.

An architecture file (``llama.py``, ``gemma3.py`` ...) turns a Hugging Face config into a
:class:`ModelArgs`, then composes native blocks (``lmblocks.nn``) from :class:`Weights`, which hands out
tensors by their Hugging Face names whatever file they came from. GGUF files get Hugging Face names and
configs here, once, so the architecture files see one naming.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from .. import _core
from ..io import FormatError

nn = _core.nn

_ROPE_RULES = {"default": "none", "linear": "linear", "llama3": "llama3"}
ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu_tanh", "gelu")


def rope_parameters(config: dict, layer_type: str | None = None, where: str = "config") -> dict:
    """The rope settings of ``config`` as one flat dict (``rope_type``, ``rope_theta``, scaling keys), from
    transformers 5's ``rope_parameters`` (per layer type for Gemma 3) or the older ``rope_theta`` +
    ``rope_scaling`` pair."""
    rp = config.get("rope_parameters")
    if rp is not None and not isinstance(rp, dict):
        raise FormatError(f"{where}: field 'rope_parameters' is {rp!r}; expected an object")
    if config.get("rope_scaling") is not None and not isinstance(config["rope_scaling"], dict):
        raise FormatError(f"{where}: field 'rope_scaling' is {config['rope_scaling']!r}; expected an object")
    if isinstance(rp, dict):
        if layer_type is not None and isinstance(rp.get(layer_type), dict):
            rp = rp[layer_type]
        out = dict(rp)
    else:
        out = dict(config.get("rope_scaling") or {})
        out["rope_theta"] = config.get("rope_theta", 10000.0)
    out.setdefault("rope_type", out.pop("type", "default"))
    out.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return out


@dataclass
class ModelArgs:
    """The Hugging Face config fields a decoder needs (same names as ``config.json``)."""

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    attention_bias: bool = False
    partial_rotary_factor: float = 1.0
    rope_interleaved: bool = False  # llama2.c and llama.cpp's Llama GGUFs keep q/k in Meta's pair order
    sliding_window: int | None = None
    rope: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict, where: str = "config"):
        rope = rope_parameters(config, where=where)
        extra = {"rope": rope}
        if config.get("partial_rotary_factor") is None and "partial_rotary_factor" in rope:
            extra["partial_rotary_factor"] = rope["partial_rotary_factor"]
        return args_from_config(cls, config, ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                              "intermediate_size", "vocab_size"), where, extra)

    def validate(self, where: str) -> None:
        def positive_int(k, v, limit=1 << 24):
            check_positive_int(where, k, v, limit)

        for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            positive_int(k, getattr(self, k))
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        positive_int("num_key_value_heads", self.num_key_value_heads)
        positive_int("head_dim", self.head_dim, 1 << 16)
        positive_int("max_position_embeddings", self.max_position_embeddings, 1 << 40)
        if self.num_attention_heads % self.num_key_value_heads:
            raise FormatError(f"{where}: num_attention_heads {self.num_attention_heads} is not a multiple of "
                              f"num_key_value_heads {self.num_key_value_heads}")
        if isinstance(self.rms_norm_eps, bool) or not isinstance(self.rms_norm_eps, (int, float)) or not self.rms_norm_eps > 0:
            raise FormatError(f"{where}: field 'rms_norm_eps' is {self.rms_norm_eps!r}; expected a positive number")
        if self.hidden_act not in ACTIVATIONS:
            raise FormatError(f"{where}: field 'hidden_act' is {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")
        prf = self.partial_rotary_factor
        if isinstance(prf, bool) or not isinstance(prf, (int, float)) or not 0 < prf <= 1 or self.rotary_dim < 2:
            raise FormatError(f"{where}: field 'partial_rotary_factor' is {prf!r}; expected a number in (0, 1] "
                              f"leaving at least 2 rotary features of head_dim {self.head_dim}")
        check_rope(self.rope, where)

    @property
    def rotary_dim(self) -> int:
        rd = int(self.head_dim * self.partial_rotary_factor)
        return rd - rd % 2


def args_from_config(cls, config: dict, required, where: str, extra: dict | None = None):
    """``cls`` (a dataclass with a ``validate(where)``) from the config fields it names, plus ``extra``;
    FormatError naming a missing required field."""
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in config.items() if k in names and v is not None} | (extra or {})
    for k in required:
        if k not in kw:
            raise FormatError(f"{where}: missing field {k!r}")
    args = cls(**kw)
    args.validate(where)
    return args


def json_float(v):
    """A number from config.json, where transformers writes inf and nan as {"__float__": "Infinity"}."""
    if isinstance(v, dict) and set(v) == {"__float__"} and isinstance(v["__float__"], str):
        try:
            return float(v["__float__"])
        except ValueError:
            return v
    return v


def check_positive_int(where: str, k: str, v, limit: int = 1 << 24) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < limit:
        raise FormatError(f"{where}: field {k!r} is {v!r}; expected a positive integer below {limit}")


def check_rope(rope: dict, where: str) -> None:
    """Rope settings a forward pass can use, else FormatError naming the field."""
    kind = rope.get("rope_type", "default")
    if kind not in _ROPE_RULES:
        raise FormatError(f"{where}: rope_type {kind!r} is not supported (supported: {', '.join(_ROPE_RULES)})")
    for k in ("rope_theta", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        v = rope.get(k, 1.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
            raise FormatError(f"{where}: rope setting {k!r} (rope_parameters / rope_theta / rope_scaling) is {v!r}; "
                              "expected a positive number")


def rope_kwargs(rope: dict, rotary_dim: int, interleaved: bool, where: str) -> dict:
    """Keyword arguments of ``nn.Attention`` for one rope dict (see :func:`rope_parameters`), already
    validated by :func:`check_rope` when the config was read."""
    scaling = (_ROPE_RULES[rope.get("rope_type", "default")], float(rope.get("factor", 1.0)),
               float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0)), float(rope.get("original_max_position_embeddings", 8192)))
    return dict(rope_theta=float(rope["rope_theta"]), rotary_dim=rotary_dim, rope_interleaved=interleaved,
                rope_scaling=scaling)


class Weights:
    """Tensors by Hugging Face name from one checkpoint, each checked against the shape the config implies.

    ``get(name)`` maps a name to a tensor or None. ``take`` raises :class:`FormatError` naming the file
    and the tensor when one is missing or has the wrong shape; :meth:`unused` lists what nobody took.
    """

    def __init__(self, get: Callable[[str], Any], names: Iterable[str], where: str,
                 label: Callable[[str], str] | None = None):
        self._get = get
        self.label = label or repr
        self.names = set(names)
        self.where = where
        self.taken: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.names

    def take(self, name: str, shape: tuple[int, ...] | None = None, optional: bool = False):
        if name not in self.names:
            if optional:
                return None
            raise FormatError(f"{self.where}: tensor {self.label(name)} is missing")
        t = self._get(name)
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise FormatError(f"{self.where}: tensor {self.label(name)} has shape {tuple(t.shape)}; the config implies "
                              f"{tuple(shape)}")
        self.taken.add(name)
        return t

    def unused(self) -> list[str]:
        return sorted(self.names - self.taken)


# ---- GGUF: names and config in Hugging Face terms ----------------------------------------------------

# GGUF tensor names (llama.cpp's) -> Hugging Face names; {i} is the layer. An architecture file passes
# overrides for names whose meaning differs (Gemma's ffn_norm is its pre-feedforward norm).
GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_q.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "model.layers.{i}.self_attn.v_proj.bias",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_qkv.weight": "model.layers.{i}.self_attn.qkv_proj.weight",
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
    # Mixture of experts: the router, the experts stacked per projection ((E, F, D) (E, F, D) (E, D, F),
    # names of our own: Hugging Face stores them per expert or fused), and a shared expert with its gate.
    "blk.{i}.ffn_gate_inp.weight": "model.layers.{i}.mlp.gate.weight",
    "blk.{i}.ffn_gate_exps.weight": "model.layers.{i}.mlp.experts.gate_proj",
    "blk.{i}.ffn_up_exps.weight": "model.layers.{i}.mlp.experts.up_proj",
    "blk.{i}.ffn_down_exps.weight": "model.layers.{i}.mlp.experts.down_proj",
    "blk.{i}.ffn_gate_shexp.weight": "model.layers.{i}.mlp.shared_expert.gate_proj.weight",
    "blk.{i}.ffn_up_shexp.weight": "model.layers.{i}.mlp.shared_expert.up_proj.weight",
    "blk.{i}.ffn_down_shexp.weight": "model.layers.{i}.mlp.shared_expert.down_proj.weight",
    "blk.{i}.ffn_gate_inp_shexp.weight": "model.layers.{i}.mlp.shared_expert_gate.weight",
}


def gguf_renamer(overrides: dict[str, str] | None = None, *, to_gguf: bool = False) -> Callable[[str], str | None]:
    """GGUF tensor name -> Hugging Face name (None if unknown), or the reverse with ``to_gguf=True``.
    ``overrides``: an architecture's extra or changed GGUF -> Hugging Face names (GGUF_OVERRIDES)."""
    table = {**GGUF_NAMES, **(overrides or {})}
    pairs = [(hf, g) for g, hf in table.items()] if to_gguf else list(table.items())
    pats = [(re.compile("^" + re.escape(src).replace(r"\{i\}", r"(\d+)") + "$"), dst) for src, dst in pairs]

    def rename(name: str) -> str | None:
        for pat, dst in pats:
            m = pat.match(name)
            if m:
                return dst.format(i=m.group(1)) if m.groups() else dst
        return None

    return rename


def gguf_config(md: dict, arch: str, model_type: str, where: str) -> dict:
    """A Hugging Face-style config from a GGUF file's ``{arch}.*`` metadata (llama.cpp's key names)."""

    def get(key, default=None, required=False):
        v = md.get(f"{arch}.{key}", default)
        if required and v is None:
            raise FormatError(f"{where}: metadata {arch}.{key} is missing")
        if isinstance(v, (list, np.ndarray)):
            raise FormatError(f"{where}: metadata {arch}.{key} varies per layer, which is not supported")
        return v

    D = get("embedding_length", required=True)
    H = get("attention.head_count", required=True)
    hd = get("attention.key_length", D // H if H else 0)
    cfg = {
        "model_type": model_type,
        "hidden_size": D,
        "num_hidden_layers": get("block_count", required=True),
        "num_attention_heads": H,
        "num_key_value_heads": get("attention.head_count_kv", H),
        "intermediate_size": get("feed_forward_length", required=True),
        "head_dim": hd,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "max_position_embeddings": get("context_length", 2048),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "sliding_window": get("attention.sliding_window"),
    }
    rd = get("rope.dimension_count")
    if rd is not None and hd and not 0 < rd <= hd:
        raise FormatError(f"{where}: {arch}.rope.dimension_count is {rd} but the head size is {hd} "
                          f"({arch}.embedding_length {D} / {arch}.attention.head_count {H})")
    if rd and hd and rd != hd:
        cfg["partial_rotary_factor"] = rd / hd
    for key, name in (("expert_count", "num_experts"), ("expert_used_count", "num_experts_per_tok"),
                      ("expert_feed_forward_length", "moe_intermediate_size"),
                      ("expert_shared_feed_forward_length", "shared_expert_intermediate_size"),
                      ("expert_weights_norm", "norm_topk_prob")):
        if get(key) is not None:
            cfg[name] = get(key)
    kind = get("rope.scaling.type")
    if kind not in (None, "none"):
        cfg["rope_scaling"] = {"rope_type": kind, "factor": float(get("rope.scaling.factor", 1.0))}
    return cfg


def per_layer_kv_heads(md: dict, arch: str, where: str) -> tuple[dict, list[int]]:
    """``md`` with ``{arch}.attention.head_count_kv`` made one number (the attention layers' count), and
    the per-layer counts (0: an SSM layer), as llama.cpp's hybrid files write them."""
    key = f"{arch}.attention.head_count_kv"
    kv = md.get(key)
    L = md.get(f"{arch}.block_count")
    if not isinstance(kv, (list, np.ndarray)):
        raise FormatError(f"{where}: metadata {key} is {kv!r}; expected one count per layer (0 for SSM layers)")
    per = [int(n) for n in kv]
    if len(per) != L or len({n for n in per if n}) > 1:
        raise FormatError(f"{where}: metadata {key} is {per}; expected {arch}.block_count = {L} entries, the "
                          "non-zero ones equal")
    H = md.get(f"{arch}.attention.head_count")
    return {**md, key: max(per) or H}, per

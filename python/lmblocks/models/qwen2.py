"""Qwen2 / Qwen2.5 (Yang et al. 2024): Llama's layout with biases on q, k and v, usually tied embeddings.
Sliding windows apply only when ``use_sliding_window`` is set, to layers from ``max_window_layers`` on."""

from __future__ import annotations

from dataclasses import dataclass

from . import llama
from .base import ModelArgs, Weights, gguf_config

MODEL_TYPES = ("qwen2",)
GGUF_ARCHS = ("qwen2",)
GGUF_OVERRIDES: dict[str, str] = {}


@dataclass
class Qwen2Args(ModelArgs):
    use_sliding_window: bool = False
    max_window_layers: int = 0


def config_from_gguf(md: dict, where: str) -> dict:
    return gguf_config(md, "qwen2", "qwen2", where)


def build(args: Qwen2Args, w: Weights, progress=iter):
    def window(i):
        return args.sliding_window or 0 if args.use_sliding_window and i >= args.max_window_layers else 0

    return llama.build_decoder(args, w, (llama.layer(args, w, i, window=window(i))
                                         for i in progress(range(args.num_hidden_layers))))


ARGS = Qwen2Args

"""Mistral (Jiang et al. 2023): Llama's layout with sliding-window attention on every layer (a key j is
seen from position p when p - j < sliding_window)."""

from __future__ import annotations

from . import llama
from .base import ModelArgs, Weights

MODEL_TYPES = ("mistral",)
GGUF_ARCHS: tuple[str, ...] = ()  # llama.cpp writes Mistral models as "llama"


def build(args: ModelArgs, w: Weights, progress=iter):
    window = args.sliding_window or 0
    return llama.build_decoder(args, w, (llama.layer(args, w, i, window=window)
                                         for i in progress(range(args.num_hidden_layers))))

"""Architectures: one file per Hugging Face ``model_type``, each composing native blocks (``lmblocks.nn``).

An architecture file declares ``MODEL_TYPES`` (Hugging Face names), ``GGUF_ARCHS`` (llama.cpp names),
``build(args, weights, progress)`` and, when it reads GGUF files, ``config_from_gguf`` and
``GGUF_OVERRIDES``; optionally ``ARGS`` (its :class:`ModelArgs` subclass) and ``gguf_tensor`` (a load-time
rewrite of a tensor). Adding one that only recombines existing blocks is one file plus a line here.
"""

from __future__ import annotations

from types import ModuleType

from . import gemma3, llama, mistral, phi3, qwen2
from .base import ModelArgs, Weights

_MODULES = (llama, mistral, qwen2, phi3, gemma3)
BY_MODEL_TYPE: dict[str, ModuleType] = {t: m for m in _MODULES for t in m.MODEL_TYPES}
BY_GGUF_ARCH: dict[str, ModuleType] = {a: m for m in _MODULES for a in m.GGUF_ARCHS}


def args_class(module: ModuleType) -> type[ModelArgs]:
    return getattr(module, "ARGS", ModelArgs)


__all__ = ["BY_MODEL_TYPE", "BY_GGUF_ARCH", "ModelArgs", "Weights", "args_class"]

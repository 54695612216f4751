"""Architectures: one file per Hugging Face ``model_type``, each composing native blocks (``lmblocks.nn``).

An architecture file declares ``MODEL_TYPES`` (Hugging Face names), ``GGUF_ARCHS`` (llama.cpp names),
``build(args, weights, progress)`` and, when it reads GGUF files, ``config_from_gguf`` and
``GGUF_OVERRIDES``; optionally ``ARGS`` (its :class:`ModelArgs` subclass) and ``gguf_tensor`` (a load-time
rewrite of a tensor). Adding one that only recombines existing blocks is one file plus a line here.
"""

from __future__ import annotations

from types import ModuleType

from . import (bamba, falcon_h1, gemma3, granitemoe, granitemoehybrid, jamba, llama, mamba, mamba2, mistral, mixtral,
               olmoe, phi3, qwen2, qwen2_moe, qwen3_moe, zamba2)
from .base import ModelArgs, Weights

_MODULES = (llama, mistral, qwen2, phi3, gemma3, mixtral, qwen2_moe, qwen3_moe, olmoe, granitemoe, mamba, mamba2, bamba,
            jamba, granitemoehybrid, falcon_h1, zamba2)
BY_MODEL_TYPE: dict[str, ModuleType] = {t: m for m in _MODULES for t in m.MODEL_TYPES}
BY_GGUF_ARCH: dict[str, ModuleType] = {a: m for m in _MODULES for a in m.GGUF_ARCHS}


def for_gguf(arch: str, metadata: dict) -> ModuleType | None:
    """The architecture file for a GGUF file's ``general.architecture``. llama.cpp writes Mixtral as
    "llama" with ``llama.expert_count``: such files go to :mod:`.mixtral`, dense ones to :mod:`.llama`."""
    if arch == "llama" and metadata.get("llama.expert_count"):
        return mixtral
    return BY_GGUF_ARCH.get(arch)


def args_class(module: ModuleType) -> type[ModelArgs]:
    return getattr(module, "ARGS", ModelArgs)


__all__ = ["BY_MODEL_TYPE", "BY_GGUF_ARCH", "for_gguf", "ModelArgs", "Weights", "args_class"]

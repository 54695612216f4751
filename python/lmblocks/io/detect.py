"""Which reader a path needs, and a summary of any checkpoint without loading its weights."""

from __future__ import annotations

import json
import os

from . import FormatError, tensor_table
from .gguf import GGUFFile
from .llama2c import Llama2cFile
from .safetensors import SafetensorsCheckpoint


def open_checkpoint(path: str | os.PathLike):
    """A GGUF file (by its magic), a safetensors file or Hugging Face folder, or a llama2.c checkpoint
    (``.bin``), opened for reading: tensors are mapped, not loaded."""
    path = os.fsdecode(path)
    if os.path.isdir(path):
        return SafetensorsCheckpoint(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return GGUFFile(path)
    if path.endswith(".safetensors"):
        return SafetensorsCheckpoint(path)
    if path.endswith(".bin"):
        return Llama2cFile(path)
    raise FormatError(f"{path}: not a GGUF file (magic {magic!r}), a .safetensors file, a Hugging Face folder "
                      "or a llama2.c .bin checkpoint")


def _config(reader, path: str) -> dict:
    if isinstance(reader, Llama2cFile):
        return reader.config
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    cfg = os.path.join(folder, "config.json")
    if isinstance(reader, SafetensorsCheckpoint) and os.path.exists(cfg):
        with open(cfg, encoding="utf-8") as f:
            return json.load(f)
    return {}


def inspect(path: str | os.PathLike) -> str:
    """Architecture, sizes, tensor types and bytes of a checkpoint, read from its header only.

    >>> import lmblocks as lb
    >>> print(lb.inspect("stories260K.gguf"))        # doctest: +SKIP
    stories260K.gguf: GGUF v3, architecture llama
    ...
    """
    path = os.fsdecode(path)
    reader = open_checkpoint(path)
    lines = []
    if isinstance(reader, GGUFFile):
        md = reader.metadata
        arch = reader.architecture or "?"
        lines.append(f"{os.path.basename(path)}: GGUF v{reader.version}, architecture {arch}"
                     + (f", name {md['general.name']!r}" if "general.name" in md else ""))
        keys = [k for k in md if k.startswith(f"{arch}.") and not isinstance(md[k], (list, bytes))
                and getattr(md[k], "ndim", 0) == 0]
        lines += [f"  {k[len(arch) + 1:]}: {md[k]}" for k in keys]
        if "tokenizer.ggml.model" in md:
            lines.append(f"  tokenizer: {md['tokenizer.ggml.model']}, {len(md.get('tokenizer.ggml.tokens', []))} tokens"
                         + (", chat template" if "tokenizer.chat_template" in md else ""))
    else:
        kind = {Llama2cFile: "llama2.c checkpoint", SafetensorsCheckpoint: "safetensors"}[type(reader)]
        cfg = _config(reader, path)
        lines.append(f"{os.path.basename(os.path.normpath(path))}: {kind}, architecture {cfg.get('model_type', '?')}")
        lines += [f"  {k}: {v}" for k, v in cfg.items() if isinstance(v, (int, float, str, bool)) and k != "model_type"]
    table, params = tensor_table(reader.tensors.values())
    total = sum(info.nbytes for info in reader.tensors.values())
    lines.append(f"  {len(reader.tensors)} tensors, {params:,} parameters, {total / 2**20:,.1f} MiB of weights")
    lines += ["  " + row for row in table]
    return "\n".join(lines)

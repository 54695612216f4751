"""llama2.c checkpoints (``run.c``'s format) and their ``tokenizer.bin``, memory-mapped.

Checkpoint: seven int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a
negative vocab_size means the classifier has its own weights, positive that it is the token
embedding), then float32 arrays, each stacked over layers and stored (out, in) like PyTorch:
token embedding (V, D); attention norms (L, D); wq (L, H*hd, D); wk, wv (L, Hkv*hd, D);
wo (L, D, H*hd); ffn norms (L, D); w1 (L, F, D); w2 (L, D, F); w3 (L, F, D); final norm (D,);
two unused RoPE tables (seq_len * hd/2 each); then the classifier (V, D) when not shared.

The tensors are exposed under Hugging Face Llama names (per-layer views of the stacked arrays, no
copies), with a matching ``config`` dict. llama2.c rotates interleaved pairs (2i, 2i+1), so
``config["rope_interleaved"]`` is True.

Tokenizer: int32 max_token_length, then per token a float32 score, an int32 length and the bytes.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from .._core import MappedFile
from . import FormatError, MappedReader, TensorInfo

HEADER = struct.Struct("<7i")
FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")


class Llama2cFile(MappedReader):
    """A llama2.c checkpoint: ``header`` (the seven ints, vocab_size made positive), ``shared_classifier``,
    ``config`` (Hugging Face Llama config keys), ``tensors`` (HF name -> TensorInfo) and ``tensor(name)``."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fsdecode(path)
        self._map = MappedFile(self.path)
        size = self._map.size
        if size < HEADER.size:
            raise FormatError(f"{self.path}: {size} bytes, too short for the 28-byte llama2.c header")
        values = HEADER.unpack(bytes(np.asarray(self._map.tensor(0, (HEADER.size,), "u8"))))
        h = dict(zip(FIELDS, values))
        self.shared_classifier = h["vocab_size"] > 0
        h["vocab_size"] = abs(h["vocab_size"])
        for k in FIELDS:
            if h[k] <= 0:
                raise FormatError(f"{self.path}: header field {k} (offset {4 * FIELDS.index(k)}) is {h[k]}; "
                                  "it must be positive")
        D, F, L, H, Hkv, V, S = (h[k] for k in FIELDS)
        if D % H or H % Hkv:
            raise FormatError(f"{self.path}: dim {D} must be a multiple of n_heads {H}, and n_heads of n_kv_heads {Hkv}")
        hd = D // H
        if hd % 2:
            raise FormatError(f"{self.path}: head size {hd} is odd; rotary pairs need it even")
        self.header = h

        # (name, per-layer shape or None for a single tensor, count of floats)
        layout = [("embed", (V, D)), ("attn_norm", (L, D)), ("wq", (L, H * hd, D)), ("wk", (L, Hkv * hd, D)),
                  ("wv", (L, Hkv * hd, D)), ("wo", (L, D, H * hd)), ("ffn_norm", (L, D)), ("w1", (L, F, D)),
                  ("w2", (L, D, F)), ("w3", (L, F, D)), ("final_norm", (D,)), ("rope_tables", (S, hd))]
        if not self.shared_classifier:
            layout.append(("classifier", (V, D)))
        offsets, at = {}, HEADER.size
        for name, shape in layout:
            offsets[name] = (at, shape)
            at += 4 * int(np.prod(shape, dtype=object))  # Python ints: no overflow from absurd headers
        if at > size:
            raise FormatError(f"{self.path}: the header {tuple(values)} describes {at} bytes of weights and "
                              f"header, but the file has {size}")

        self.config = {
            "model_type": "llama", "hidden_size": D, "intermediate_size": F, "num_hidden_layers": L,
            "num_attention_heads": H, "num_key_value_heads": Hkv, "vocab_size": V, "max_position_embeddings": S,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": self.shared_classifier,
            "hidden_act": "silu", "rope_interleaved": True,
        }
        self.tensors: dict[str, TensorInfo] = {}

        def add(name, key, layer=None):
            start, shape = offsets[key]
            if layer is not None:
                per = shape[1:]
                start += layer * 4 * int(np.prod(per))
                shape = per
            self.tensors[name] = TensorInfo(name, tuple(shape), "f32", start, 4 * int(np.prod(shape)))

        add("model.embed_tokens.weight", "embed")
        for i in range(L):
            p = f"model.layers.{i}."
            add(p + "input_layernorm.weight", "attn_norm", i)
            add(p + "self_attn.q_proj.weight", "wq", i)
            add(p + "self_attn.k_proj.weight", "wk", i)
            add(p + "self_attn.v_proj.weight", "wv", i)
            add(p + "self_attn.o_proj.weight", "wo", i)
            add(p + "post_attention_layernorm.weight", "ffn_norm", i)
            add(p + "mlp.gate_proj.weight", "w1", i)
            add(p + "mlp.down_proj.weight", "w2", i)
            add(p + "mlp.up_proj.weight", "w3", i)
        add("model.norm.weight", "final_norm")
        if not self.shared_classifier:
            add("lm_head.weight", "classifier")

    def __repr__(self) -> str:
        return f"Llama2cFile({self.path!r}, {self.header})"


def read_llama2c_tokenizer(path: str | os.PathLike, vocab_size: int | None = None):
    """``(pieces: list[bytes], scores: float32 array, max_token_length)`` from a llama2.c tokenizer.bin.
    With ``vocab_size``, exactly that many tokens are read (as run.c does) and a file holding fewer
    raises; without it, tokens are read to the end of the file."""
    path = os.fsdecode(path)
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise FormatError(f"{path}: {len(data)} bytes, too short for max_token_length")
    (max_len,) = struct.unpack_from("<i", data, 0)
    if max_len <= 0:
        raise FormatError(f"{path}: max_token_length (offset 0) is {max_len}")
    pieces, scores, at = [], [], 4
    while at < len(data) and (vocab_size is None or len(pieces) < vocab_size):
        if at + 8 > len(data):
            raise FormatError(f"{path}: token {len(pieces)} (offset {at}) is cut off in its score/length")
        score, n = struct.unpack_from("<fi", data, at)
        if not 0 <= n <= max_len or at + 8 + n > len(data):
            raise FormatError(f"{path}: token {len(pieces)} (offset {at}) has length {n}; max_token_length is "
                              f"{max_len} and {len(data) - at - 8} bytes remain")
        pieces.append(data[at + 8:at + 8 + n])
        scores.append(score)
        at += 8 + n
    if vocab_size is not None and len(pieces) < vocab_size:
        raise FormatError(f"{path}: holds {len(pieces)} tokens; the model needs {vocab_size}")
    return pieces, np.array(scores, np.float32), max_len

"""Tokenizers that give the same ids as llama.cpp (and Hugging Face) on real vocabularies.

Built from GGUF metadata: SentencePiece BPE ("llama"), byte-level BPE ("gpt2") and
WordPiece ("bert"). Vocabularies and merges live in native StringTables (one buffer and a hash index
each, ~6 MB for Gemma 3's 262k tokens, against ~50 MB as Python objects) and the BPE/SPM merge loops
run natively; pre-tokenizer regexes and special-token splitting stay in Python.

>>> from lmblocks.tokenize import from_gguf_metadata
>>> md = {"tokenizer.ggml.model": "llama",
...       "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "\u2581", "h", "i", "\u2581h", "\u2581hi"],
...       "tokenizer.ggml.scores": [0, 0, 0, -1, -4, -5, -3, -2],
...       "tokenizer.ggml.token_type": [2, 3, 3, 1, 1, 1, 1, 1]}
>>> tok = from_gguf_metadata(md)
>>> tok.encode("hi hi")
[1, 7, 7]
>>> tok.decode([7, 7])
'hi hi'

Real vocabularies come from GGUF files: `from_gguf_metadata(gguf_metadata("model.gguf"))`.
"""

from __future__ import annotations

from .base import TokenAttr, Tokenizer
from .bpe import BpeTokenizer
from .chat import ChatTemplate
from .hf import from_tokenizer_json
from .llama2c import from_llama2c
from .pretokenize import PRE_TOKENIZERS
from .spm import SpmTokenizer
from .wpm import WpmTokenizer

MODELS: dict[str, type[Tokenizer]] = {"llama": SpmTokenizer, "gpt2": BpeTokenizer, "bert": WpmTokenizer}


def from_gguf_metadata(md: dict) -> Tokenizer:
    """The tokenizer a GGUF file describes, from its metadata as a plain dict (`tokenizer.ggml.*` keys;
    arrays as lists, strings as str)."""
    model = md.get("tokenizer.ggml.model")
    cls = MODELS.get(model)
    if cls is None:
        raise ValueError(f"unsupported tokenizer model {model!r}; supported: {', '.join(MODELS)}")
    return cls(md)


def gguf_metadata(path) -> dict:
    """The metadata of a GGUF file, as :func:`from_gguf_metadata` takes it. Strings that are not valid
    UTF-8 (raw byte tokens, which lmblocks.io keeps as bytes) become surrogate-escaped str, losslessly."""
    from ..io import GGUFFile

    def text(v):
        return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v

    return {k: [text(x) for x in v] if isinstance(v, list) else text(v) for k, v in GGUFFile(path).metadata.items()}


__all__ = ["ChatTemplate", "Tokenizer", "TokenAttr", "SpmTokenizer", "BpeTokenizer", "WpmTokenizer", "MODELS", "PRE_TOKENIZERS",
           "from_gguf_metadata", "from_tokenizer_json", "from_llama2c", "gguf_metadata"]

"""llama2.c's ``tokenizer.bin`` as a SentencePiece-BPE tokenizer (the same ids as ``run.c``).

A tokenizer.bin is a SentencePiece vocabulary exported by llama2.c's tokenizer.py: pieces with U+2581
written as a plain space, BOS/EOS written as ``"\\n<s>\\n"`` / ``"\\n</s>\\n"``, and a float32 score
each. run.c's ``encode`` (a dummy-prefix space, UTF-8 characters, ``<0xXX>`` byte fallback for the
characters the vocabulary lacks, then merging the adjacent pair whose merged piece scores best,
leftmost on ties) is the algorithm :class:`SpmTokenizer` already runs, so this module only builds that
tokenizer's metadata, the way llama.cpp's convert-llama2c-to-ggml does: ids 0/1/2 become ``<unk>``,
``<s>``, ``</s>``, ``<0xXX>`` pieces are byte tokens, spaces become U+2581.

Decoding matches run.c's ``decode(prev, token)`` for text that follows BOS: the first piece loses its
leading space, byte tokens become their bytes. (run.c prints EOS as ``"\\n</s>\\n"``; here it is
``</s>``, or nothing with ``skip_special=True``. run.c's ``safe_printf`` also skips every byte token
that is not printable ASCII or whitespace, so it prints nothing for a non-ASCII character the
vocabulary spells in bytes; ``decode`` gives that character.)

>>> from lmblocks.tokenize import SpmTokenizer
>>> pieces = [b"<unk>", b"\\n<s>\\n", b"\\n</s>\\n", b" ", b"h", b"i", b" h", b" hi"]  # a tokenizer.bin's
>>> tok = SpmTokenizer(llama2c_metadata(pieces, [0, 0, 0, -1, -4, -5, -3, -2]))
>>> tok.encode("hi hi"), tok.decode([7, 7])
([1, 7, 7], 'hi hi')

A real file: ``from_llama2c("tok512.bin", 512)``.
"""

from __future__ import annotations

import os
import re

from .spm import SPACE, SpmTokenizer

_BYTE = re.compile(rb"<0x[0-9A-Fa-f]{2}>")
_SPECIAL = {0: ("<unk>", 2), 1: ("<s>", 3), 2: ("</s>", 3)}  # id -> (text, GGUF token type)


def llama2c_metadata(pieces: list[bytes], scores) -> dict:
    """GGUF-style tokenizer metadata (``tokenizer.ggml.*``) for llama2.c pieces and scores, as
    :func:`lmblocks.tokenize.from_gguf_metadata` takes it."""
    tokens, types = [], []
    for i, p in enumerate(pieces):
        if i in _SPECIAL:
            text, kind = _SPECIAL[i]
        else:
            text = p.decode("utf-8", "surrogateescape").replace(" ", SPACE)
            kind = 6 if _BYTE.fullmatch(p) else 3 if not p else 1  # byte, control (empty), normal
        tokens.append(text)
        types.append(kind)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [float(s) for s in scores],
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": True,  # run.c's generate() encodes the prompt with bos=1
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": True,  # run.c's add_dummy_prefix
    }


def from_llama2c(path: str | os.PathLike, vocab_size: int | None = None) -> SpmTokenizer:
    """The tokenizer of a llama2.c ``tokenizer.bin``; ``vocab_size`` (the checkpoint's) reads exactly
    that many tokens, as run.c does.

    >>> tok = from_llama2c("../shared/data/tok512.bin", 512)  # doctest: +SKIP
    >>> tok.encode("Lily")  # doctest: +SKIP
    [1, 317]
    """
    from ..io.llama2c import read_llama2c_tokenizer

    pieces, scores, _ = read_llama2c_tokenizer(path, vocab_size)
    return SpmTokenizer(llama2c_metadata(pieces, scores))


__all__ = ["from_llama2c", "llama2c_metadata"]

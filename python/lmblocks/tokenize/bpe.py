"""Byte-level BPE (GPT-2 style) as llama.cpp implements it for `tokenizer.ggml.model == "gpt2"`
(llm_tokenizer_bpe_session in src/llama-vocab.cpp).

Text is split into words by the regexes `tokenizer.ggml.pre` selects; each word's UTF-8 bytes are
mapped to printable characters (GPT-2's bytes_to_unicode); then the adjacent pair with the lowest
merge rank merges (ties: the leftmost) until no pair has a rank. The pre-tokenizer's regexes run in
Python (the `regex` module); the merge loop is native (lmblocks._core.text).
"""

from __future__ import annotations

from .._core import text as _text
from . import pretokenize
from .base import StringTable, Tokenizer, _string_table


def bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> character table: printable Latin-1 bytes map to themselves, the other 68 bytes
    to U+0100 upwards, in byte order."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = [""] * 256
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in enumerate(BYTE_TO_CHAR)}


class BpeTokenizer(Tokenizer):
    """llama.cpp's byte-level BPE tokenizer (GPT-2, SmolLM, Llama 3, Qwen2, Falcon ... vocabularies)."""

    model = "gpt2"
    _defaults = dict(bos_id=11, eos_id=11, add_bos=False, add_eos=False, add_space_prefix=False,
                     clean_spaces=True)

    def __init__(self, md: dict):
        self.pre = md.get("tokenizer.ggml.pre") or "default"
        self._exprs = pretokenize.patterns(self.pre)
        defaults = dict(self._defaults)
        if self.pre in pretokenize.ADD_BOS:
            defaults["add_bos"] = True
        if self.pre in pretokenize.NO_CLEAN_SPACES:
            defaults["clean_spaces"] = False
        self._defaults = defaults
        super().__init__(md)
        self.ignore_merges = self.pre in pretokenize.IGNORE_MERGES
        merges = md.get("tokenizer.ggml.merges")
        if merges is None:
            raise ValueError("byte-level BPE needs tokenizer.ggml.merges")
        # "a b": the rank of merging symbols a and b is the first index of that text (byte-level
        # symbols never contain a plain space, so the text names the pair unambiguously).
        self.merges: StringTable = _string_table(merges)

    def _normal_piece(self, text: str) -> bytes:
        out = bytearray()
        for c in text:
            b = CHAR_TO_BYTE.get(c)
            if b is None:  # llama.cpp's marker for a character outside the byte table
                out += b"[UNK_BYTE_0x" + c.encode("utf-8", "surrogateescape").hex().encode() + text.encode(
                    "utf-8", "surrogateescape") + b"]"
            else:
                out.append(b)
        return bytes(out)

    def _encode_fragments(self, frags: list, add_special: bool) -> list[int]:
        out: list[int] = []
        if add_special and self.add_bos:
            out.append(self.bos_id)
        for f in frags:
            if isinstance(f, str):
                self._tokenize(f, out)
            else:
                out.append(f)
        if add_special and self.add_eos:
            out.append(self.eos_id)
        return out

    def _tokenize(self, text: str, out: list[int]) -> None:
        out.extend(_text.bpe_words(self.tokens, self.merges, pretokenize.split(text, self._exprs), self.ignore_merges))

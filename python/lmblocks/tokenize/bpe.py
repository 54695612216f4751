"""Byte-level BPE (GPT-2 style) as llama.cpp implements it for `tokenizer.ggml.model == "gpt2"`
(llm_tokenizer_bpe_session in src/llama-vocab.cpp).

Text is split into words by the regexes `tokenizer.ggml.pre` selects; each word's UTF-8 bytes are
mapped to printable characters (GPT-2's bytes_to_unicode); then the adjacent pair with the lowest
merge rank merges (ties: the leftmost) until no pair has a rank. Words are cached.
"""

from __future__ import annotations

from . import pretokenize
from .base import CACHE_SIZE, Tokenizer


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
        self.ranks: dict[tuple[str, str], int] = {}
        for r, m in enumerate(merges):
            if isinstance(m, bytes):
                m = m.decode("utf-8", "surrogateescape")
            k = m.find(" ", 1)  # a merge may start with a space character
            pair = (m[:k], m[k + 1:]) if k >= 0 else ("", "")
            self.ranks.setdefault(pair, r)
        self._cache: dict[str, tuple[int, ...]] = {}

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
        cache = self._cache
        for word in pretokenize.split(text, self._exprs):
            ids = cache.get(word)
            if ids is None:
                if len(cache) >= CACHE_SIZE:
                    cache.clear()
                ids = cache[word] = self._word(word)
            out.extend(ids)

    def _word(self, word: str) -> tuple[int, ...]:
        """Token ids of one pre-tokenized word."""
        tok = self.token_to_id
        chars = "".join([BYTE_TO_CHAR[b] for b in word.encode("utf-8", "surrogateescape")])
        if self.ignore_merges and chars in tok:
            return (tok[chars],)
        syms = list(chars)
        ranks = self.ranks
        while len(syms) > 1:
            best, at = None, -1
            for i in range(len(syms) - 1):
                r = ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            syms[at:at + 2] = [syms[at] + syms[at + 1]]
        ids = []
        for s in syms:
            j = tok.get(s)
            if j is not None:
                ids.append(j)
            else:
                # llama.cpp looks up each UTF-8 byte of the symbol as a one-byte token, dropping misses
                for b in s.encode("utf-8", "surrogateescape"):
                    j = tok.get(chr(b)) if b < 0x80 else None
                    if j is not None:
                        ids.append(j)
        return tuple(ids)

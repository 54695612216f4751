"""WordPiece (BERT) as llama.cpp implements it for `tokenizer.ggml.model == "bert"`
(llm_tokenizer_wpm_session in src/llama-vocab.cpp).

llama.cpp's converter stores word-initial pieces with a U+2581 prefix and continuation pieces bare
(instead of BERT's "##"). Text is lower-cased and accents stripped (BERT's uncased normalizer), split
at whitespace and around punctuation, ASCII symbols and CJK characters; each word, prefixed with
U+2581, is cut greedily into the longest vocabulary pieces, or becomes [UNK] as a whole.
"""

from __future__ import annotations

import unicodedata

import regex

from .base import Tokenizer

CACHE_SIZE = 1 << 14  # words remembered; the cache is emptied when full
from .spm import SPACE

_WS = regex.compile(r"\s")
_WS_RUNS = regex.compile(r"\s+")
# Hugging Face's BertNormalizer removes control characters before it looks for whitespace, so the
# whitespace characters of category Cc other than \t \n \r (\v \f U+0085) join words instead.
_HF_WS_RUNS = regex.compile(r"[^\S\x0b\x0c\x85]+")


def _is_chinese(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B920 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WpmTokenizer(Tokenizer):
    """llama.cpp's WordPiece tokenizer (BERT, BGE, MiniLM vocabularies)."""

    model = "bert"
    max_input_chars_per_word: int | None = None  # Hugging Face's cap (a longer word is [UNK]); llama.cpp has none
    hf_normalizer = False  # True: Hugging Face's BertNormalizer + BertPreTokenizer instead of llama.cpp's
    hf_vocab: dict[str, int] | None = None  # Hugging Face's own spelling ("##" continuations), when known
    _defaults = dict(bos_id=101, unk_id=100, sep_id=102, pad_id=0, mask_id=103, add_bos=True, add_eos=False,
                     add_sep=True, add_space_prefix=False, clean_spaces=True)

    def __init__(self, md: dict):
        super().__init__(md)
        self._cache: dict[str, tuple[int, ...]] = {}
        # BERT's [CLS] plays BOS
        cls_id = md.get("tokenizer.ggml.cls_token_id")
        if md.get("tokenizer.ggml.bos_token_id") is None and cls_id is not None and 0 <= int(cls_id) < self.vocab_size:
            self.bos_id = int(cls_id)
        self.lowercase = bool(md.get("tokenizer.ggml.normalizer.lowercase", True))
        self.strip_accents = bool(md.get("tokenizer.ggml.normalizer.strip_accents", self.lowercase))
        self._max_len = max(len(t) for t in self.tokens)

    def _normal_piece(self, text: str) -> bytes:
        return text.replace(SPACE, " ").encode("utf-8", "surrogateescape")

    def _encode_fragments(self, frags: list, add_special: bool) -> list[int]:
        out: list[int] = []
        if add_special:
            out.append(self.bos_id)
        for f in frags:
            if isinstance(f, str):
                # whitespace only ends words, so whitespace-separated chunks tokenize independently
                words = self._words_hf if self.hf_normalizer else self._words
                for chunk in (_HF_WS_RUNS if self.hf_normalizer else _WS_RUNS).split(f):
                    ids = self._cache.get(chunk)
                    if ids is None:
                        ids = []
                        for word in words(chunk):
                            self._word(word, ids)
                        if len(self._cache) >= CACHE_SIZE:
                            self._cache.clear()
                        ids = self._cache[chunk] = tuple(ids)
                    out.extend(ids)
            else:
                out.append(f)
        if add_special:
            out.append(self.sep_id)
        return out

    def _words(self, text: str) -> list[str]:
        """BERT's basic tokenizer: normalize, then split at whitespace and around punctuation."""
        words = [""]
        for c in text:
            if self.strip_accents:
                c = unicodedata.normalize("NFD", c)[0]  # llama.cpp keeps the first code point of the NFD
            if _WS.match(c):
                if words[-1]:
                    words.append("")
                continue
            cat = unicodedata.category(c)
            cp = ord(c)
            if cp == 0 or cp == 0xFFFD or cat in ("Cc", "Cf", "Co", "Cs"):
                continue
            if self.strip_accents and cat[0] == "M":
                continue
            if self.lowercase:
                low = c.lower()
                c = low if len(low) == 1 else low[0]
            if cat[0] == "P" or (cp < 0x7F and cat[0] == "S") or _is_chinese(cp):
                if words[-1]:
                    words.append("")
                words[-1] = c
                words.append("")
            else:
                words[-1] += c
        if not words[-1]:
            words.pop()
        return words

    def _words_hf(self, text: str) -> list[str]:
        """Hugging Face's BertNormalizer (clean text, pad CJK, NFD and drop Mn, full lower-casing) and
        BertPreTokenizer (split at whitespace, isolate punctuation and ASCII symbols)."""
        chars = []
        for c in text:
            cat = unicodedata.category(c)
            if c in "\x00\ufffd" or (cat[0] == "C" and c not in "\t\n\r"):
                continue
            if c in "\t\n\r" or _WS.match(c):
                chars.append(" ")
            elif _is_chinese(ord(c)):
                chars += (" ", c, " ")
            else:
                chars.append(c)
        s = "".join(chars)
        if self.strip_accents:
            s = "".join(c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn")
        if self.lowercase:
            s = s.lower()
        words = []
        for chunk in _WS_RUNS.split(s):
            start = 0
            for i, c in enumerate(chunk):
                cat = unicodedata.category(c)
                if cat[0] == "P" or (ord(c) < 0x7F and cat[0] == "S"):
                    if i > start:
                        words.append(chunk[start:i])
                    words.append(c)
                    start = i + 1
            if start < len(chunk):
                words.append(chunk[start:])
        return words

    def _word(self, word: str, out: list[int]) -> None:
        if self.max_input_chars_per_word is not None and len(word) > self.max_input_chars_per_word:
            out.append(self.unk_id)
            return
        if self.hf_vocab is not None:
            return self._word_hf(word, out)
        tok = self.token_to_id
        w = SPACE + word
        n = len(w)
        start = len(out)
        i = 0
        while i < n:
            for j in range(min(n, i + self._max_len + 1), i, -1):
                k = tok.get(w[i:j])
                if k is not None:
                    out.append(k)
                    i = j
                    break
            else:  # a piece with no token: the whole word is unknown
                del out[start:]
                break
        if len(out) == start:
            out.append(self.unk_id)

    def _word_hf(self, word: str, out: list[int]) -> None:
        """Hugging Face's WordPiece on its own vocabulary: a U+2581 in the text stays text (llama.cpp's
        spelling would read it as a word start)."""
        vocab = self.hf_vocab
        ids = []
        start, n = 0, len(word)
        while start < n:
            for end in range(n, start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                k = vocab.get(piece)
                if k is not None:
                    ids.append(k)
                    start = end
                    break
            else:
                out.append(self.unk_id)
                return
        out.extend(ids)

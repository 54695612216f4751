"""The vocabulary and behaviour every tokenizer shares, as llama.cpp's `llama_vocab` defines it
(src/llama-vocab.cpp): token attributes from `tokenizer.ggml.token_type`, special-token ids with
per-model defaults, special tokens split out of the text before the model's own algorithm runs,
and detokenization (pieces, the leading-space rule, BPE's `clean_spaces`)."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from .._core.text import StringTable

_META = "tokenizer.ggml."


class TokenAttr(enum.IntFlag):
    """llama.cpp's `llama_token_attr` bits (only the ones GGUF token types map to)."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5


# GGUF `tokenizer.ggml.token_type` values (llama_token_type) -> attribute.
_TYPE_TO_ATTR = {
    0: TokenAttr.UNDEFINED,
    1: TokenAttr.NORMAL,
    2: TokenAttr.UNKNOWN,
    3: TokenAttr.CONTROL,
    4: TokenAttr.USER_DEFINED,
    5: TokenAttr.UNUSED,
    6: TokenAttr.BYTE,
}

_SPECIAL = TokenAttr.CONTROL | TokenAttr.UNKNOWN  # hidden unless special=True; split only with parse_special

# Texts llama.cpp recognises as end-of-turn / end-of-generation when the GGUF does not say.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
              "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_EOG_TEXTS = _EOT_TEXTS + ("<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "</s>", "<|eom_id|>", "[EOS]",
                           "<eos>", "<turn|>", "<|tool_response>", "[e~[")

# Fill-in-the-middle tokens by text; fim_pad, fim_rep and fim_sep also end generation.
_FIM_TEXTS = {
    "fim_pre_id": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                   "<|code_prefix|>", "<|prefix|>"),
    "fim_suf_id": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                   "<|code_suffix|>", "<|suffix|>"),
    "fim_mid_id": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                   "<|code_middle|>", "<|middle|>"),
    "fim_pad_id": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep_id": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep_id": ("<|file_sep|>",),
}

# Metadata key suffix -> attribute name of the special-token ids (GGUF spells "seperator").
_SPECIAL_KEYS = (("bos_token_id", "bos_id"), ("eos_token_id", "eos_id"), ("eot_token_id", "eot_id"),
                 ("eom_token_id", "eom_id"), ("unknown_token_id", "unk_id"), ("seperator_token_id", "sep_id"),
                 ("padding_token_id", "pad_id"), ("mask_token_id", "mask_id"), ("fim_pre_token_id", "fim_pre_id"),
                 ("fim_suf_token_id", "fim_suf_id"), ("fim_mid_token_id", "fim_mid_id"),
                 ("fim_pad_token_id", "fim_pad_id"), ("fim_rep_token_id", "fim_rep_id"),
                 ("fim_sep_token_id", "fim_sep_id"))


class Tokenizer:
    """A tokenizer that gives the token ids llama.cpp gives for the same GGUF vocabulary.

    Build one with `from_gguf_metadata` (a plain dict of GGUF metadata) or `from_tokenizer_json`.

    >>> from lmblocks.tokenize import from_gguf_metadata
    >>> tok = from_gguf_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
    ...     "tokenizer.ggml.tokens": ["a", "b", "\u0120", "ab", "\u0120ab", "<|endoftext|>"],
    ...     "tokenizer.ggml.merges": ["a b", "\u0120 ab"], "tokenizer.ggml.token_type": [1, 1, 1, 1, 1, 3]})
    >>> tok.encode("ab ab<|endoftext|>", parse_special=True)
    [3, 4, 5]
    >>> tok.decode([3, 4, 5]), tok.decode([3, 4, 5], skip_special=True), tok.eog_ids
    ('ab ab<|endoftext|>', 'ab ab', frozenset({5}))
    """

    model = ""  # the `tokenizer.ggml.model` value
    # llama.cpp's per-model defaults, overridden by the metadata where present
    _defaults: dict = {}

    def __init__(self, md: dict):
        tokens = _string_table(md[_META + "tokens"])
        n = len(tokens)
        empty = np.flatnonzero(tokens.lengths() == 0)
        if len(empty):  # llama.cpp's name for an empty token; rare, so the table is rebuilt
            names = {int(i): f"[EMPTY_{i}]" for i in empty}
            tokens = StringTable(names.get(i) or tokens.raw(i) for i in range(n))
        i, j = tokens.first_duplicate()
        if i >= 0:
            raise ValueError(f"duplicate token in vocabulary: {tokens[i]!r} has ids {i} and {j}")
        self.tokens: StringTable = tokens  # id -> text (str), and text -> id through .find()
        self.scores: np.ndarray = _per_token(md.get(_META + "scores"), n, np.float32, 0.0)
        types = _per_token(md.get(_META + "token_type"), n, np.int64, 1)  # absent: all NORMAL
        lut = np.array([_TYPE_TO_ATTR[t] for t in range(len(_TYPE_TO_ATTR))], np.uint8)
        known = (types >= 0) & (types < len(lut))
        self.attrs: np.ndarray = np.where(known, lut[np.where(known, types, 0)], np.uint8(TokenAttr.UNDEFINED))

        d = dict.fromkeys(name for _, name in _SPECIAL_KEYS)
        d.update(add_bos=False, add_eos=False, add_sep=False, add_space_prefix=False, clean_spaces=False)
        d.update(self._defaults)
        for key, name in _SPECIAL_KEYS:
            if d[name] is not None and d[name] >= n:
                d[name] = None
            v = md.get(_META + key)
            if v is not None and 0 <= int(v) < n:  # an out-of-range id (e.g. 2**32-1) keeps the default
                d[name] = int(v)
        for key in ("add_bos", "add_eos", "add_sep"):
            if md.get(f"{_META}{key}_token") is not None:
                d[key] = bool(md[f"{_META}{key}_token"])
        if md.get(_META + "add_space_prefix") is not None:
            d["add_space_prefix"] = bool(md[_META + "add_space_prefix"])
        for flag, name in (("add_bos", "bos_id"), ("add_eos", "eos_id"), ("add_sep", "sep_id")):
            if d[flag] and d[name] is None:
                raise ValueError(f"{_META}{flag}_token is true, but the {name} token is not set")
        self.bos_id: int | None = d["bos_id"]
        self.eos_id: int | None = d["eos_id"]
        self.eot_id: int | None = d["eot_id"]
        self.eom_id: int | None = d["eom_id"]
        self.unk_id: int | None = d["unk_id"]
        self.sep_id: int | None = d["sep_id"]
        self.pad_id: int | None = d["pad_id"]
        self.mask_id: int | None = d["mask_id"]
        self.fim_ids: dict[str, int | None] = {k: d[k] for k in _FIM_TEXTS}  # fim_pre_id ... fim_sep_id
        self.add_bos: bool = d["add_bos"]
        self.add_eos: bool = d["add_eos"]
        self.add_sep: bool = d["add_sep"]
        self.add_space_prefix: bool = d["add_space_prefix"]
        self.clean_spaces: bool = d["clean_spaces"]

        # Like llama.cpp: find EOT/EOM by text when the metadata does not name them, and make every
        # end-of-generation-looking token a control token (so it is hidden and split out as special).
        def first(texts) -> int | None:
            found = [i for i in map(tokens.find, texts) if i >= 0]
            return min(found) if found else None

        if self.eot_id is None and (i := first(_EOT_TEXTS)) is not None:
            self.eot_id = i
            self.attrs[i] |= TokenAttr.CONTROL
        if self.eom_id is None and (i := first(["<|eom_id|>"])) is not None:
            self.eom_id = i
            self.attrs[i] |= TokenAttr.CONTROL
        for k, texts in _FIM_TEXTS.items():
            if self.fim_ids[k] is None and (i := first(texts)) is not None:
                self.fim_ids[k] = i
                self.attrs[i] |= TokenAttr.CONTROL
        eog = {self.fim_ids[k] for k in ("fim_pad_id", "fim_rep_id", "fim_sep_id")} - {None}
        for i in map(tokens.find, _EOG_TEXTS):
            if i >= 0:
                eog.add(i)
                self.attrs[i] |= TokenAttr.CONTROL
        for i in np.flatnonzero(self.attrs & TokenAttr.CONTROL):
            if "unused" in tokens[int(i)]:
                self.attrs[i] |= TokenAttr.UNUSED
        eog.update(i for i in (self.eos_id, self.eot_id, self.eom_id) if i is not None)
        self.eog_ids: frozenset[int] = frozenset(eog)

        # Special tokens are matched longest first (llama.cpp's cache_special_tokens).
        special = np.flatnonzero(self.attrs & (TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN))
        order = np.lexsort((special, -tokens.lengths()[special]))
        self._special_order: list[int] = special[order].tolist()

    # ---- the public API -------------------------------------------------------------------------

    @staticmethod
    def from_gguf_metadata(md: dict) -> "Tokenizer":
        """The tokenizer for a GGUF file's metadata (a plain dict); see lmblocks.tokenize.from_gguf_metadata."""
        from . import from_gguf_metadata

        return from_gguf_metadata(md)

    @staticmethod
    def from_tokenizer_json(path) -> "Tokenizer":
        """The tokenizer for a Hugging Face tokenizer.json; see lmblocks.tokenize.from_tokenizer_json."""
        from .hf import from_tokenizer_json

        return from_tokenizer_json(path)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def token_to_id(self) -> Mapping[str, int]:
        """Token text -> id, read-only, looked up in the vocabulary's hash index."""
        return _TokenIds(self.tokens)

    @property
    def special_ids(self) -> frozenset[int]:
        """Control, user-defined and unknown tokens: the ones split out of text before tokenizing."""
        return frozenset(self._special_order)

    @property
    def control_ids(self) -> frozenset[int]:
        return frozenset(np.flatnonzero(self.attrs & TokenAttr.CONTROL).tolist())

    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`, as llama.cpp's `llama_tokenize(text, add_special, parse_special)`.

        add_special adds the BOS/EOS (SEP for WordPiece) the model asks for; parse_special turns the
        text of control tokens (e.g. "<|im_start|>") into those tokens instead of tokenizing it.
        """
        return self._encode_fragments(self._partition(text, parse_special), add_special)

    def token_to_piece(self, id: int, *, special: bool = True) -> bytes:
        """The bytes token `id` stands for; control/unknown tokens give b"" unless special=True."""
        if not special and self.attrs[id] & _SPECIAL:
            return b""
        return self._piece(id)

    def decode_bytes(self, ids: Sequence[int], *, skip_special: bool = False) -> bytes:
        """llama.cpp's `llama_detokenize(ids, remove_special=skip_special, unparse_special=not skip_special)`."""
        ids = list(ids)
        remove_space = self.add_space_prefix
        if skip_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if skip_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        parts = [self.token_to_piece(i, special=not skip_special) for i in ids]
        if remove_space and parts and parts[0][:1] == b" ":
            parts[0] = parts[0][1:]
        text = b"".join(parts)
        return _clean_spaces(text) if self.clean_spaces else text

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """The text of `ids` (invalid UTF-8 from split byte tokens becomes U+FFFD)."""
        return self.decode_bytes(ids, skip_special=skip_special).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model={self.model!r}, vocab_size={self.vocab_size}, "
                f"bos_id={self.bos_id}, eos_id={self.eos_id})")

    # ---- shared machinery -----------------------------------------------------------------------

    def _partition(self, text: str, parse_special: bool) -> list:
        """Split `text` into raw-text pieces (str) and special token ids (int), longest token first.
        User-defined tokens are always split out; control and unknown ones only with parse_special."""
        frags: list = [text] if text else []
        for sid in self._special_order:
            if not parse_special and self.attrs[sid] & _SPECIAL:
                continue
            st = self.tokens[sid]
            if not any(isinstance(f, str) and st in f for f in frags):
                continue
            out: list = []
            for f in frags:
                if not isinstance(f, str) or st not in f:
                    out.append(f)
                    continue
                parts = f.split(st)
                for k, p in enumerate(parts):
                    if k:
                        out.append(sid)
                    if p:
                        out.append(p)
            frags = out
        return frags

    def _piece(self, id: int) -> bytes:
        """llama.cpp's token_to_piece(special=True) for this model type; subclasses decode NORMAL tokens."""
        attr = self.attrs[id]
        if attr & (_SPECIAL | TokenAttr.USER_DEFINED):
            return self.tokens.raw(id)
        text = self.tokens[id]
        if attr & TokenAttr.NORMAL:
            return self._normal_piece(text)
        if attr & TokenAttr.BYTE:
            return bytes([int(text[3:5], 16)])
        return b""

    def _normal_piece(self, text: str) -> bytes:
        raise NotImplementedError

    def _encode_fragments(self, frags: list, add_special: bool) -> list[int]:
        raise NotImplementedError


class _TokenIds(Mapping):
    """A Mapping view (text -> id) of a vocabulary's StringTable: no dict of every token is built."""

    def __init__(self, tokens: StringTable):
        self._tokens = tokens

    def __getitem__(self, text: str) -> int:
        i = self._tokens.find(text) if isinstance(text, (str, bytes)) else -1
        if i < 0:
            raise KeyError(text)
        return i

    def get(self, text: str, default=None):
        i = self._tokens.find(text)
        return default if i < 0 else i

    def __contains__(self, text) -> bool:
        return text in self._tokens

    def __len__(self) -> int:
        return len(self._tokens)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tokens)


def _string_table(strings) -> StringTable:
    """A GGUF reader's StringTable as it is; a list (tokenizer.json, llama2.c, a test) packed into one."""
    return strings if isinstance(strings, StringTable) else StringTable(strings)


def _per_token(values, n: int, dtype, default) -> np.ndarray:
    """A per-token metadata array of length n (missing or short entries take `default`)."""
    out = np.full(n, default, dtype)
    if values is not None:
        v = np.asarray(values[:n], dtype)
        out[:len(v)] = v
    return out


def _clean_spaces(text: bytes) -> bytes:
    """llama.cpp's detokenize clean-up for BPE and WordPiece vocabularies (`clean_up_tokenization_spaces`),
    its three in-place passes as substitutions: drop the space before ? ! . , then turn " ' " into "'",
    then drop the space before 's 'm 're 've (not before 't 'd 'll)."""
    text = _CLEAN_PUNCT.sub(b"", text)
    text = _CLEAN_QUOTE.sub(b"'", text)
    return _CLEAN_CONTRACTION.sub(b"", text)


_CLEAN_PUNCT = re.compile(rb" (?=[?!.,])")
_CLEAN_QUOTE = re.compile(rb" ' ")
_CLEAN_CONTRACTION = re.compile(rb" (?='[sm]|'re|'ve)")

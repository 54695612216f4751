"""Hugging Face `tokenizer.json` -> the GGUF metadata llama.cpp's converter (convert_hf_to_gguf.py)
would write, so one code path serves both. Covers WordPiece (BERT) and byte-level BPE whose
pre-tokenizer is one of the known ones; anything else is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

from .base import Tokenizer
from .pretokenize import LLAMA3, QWEN2

_SPACE = "\u2581"

# Hugging Face Split regexes -> llama.cpp pre-tokenizer names
_HF_SPLIT = {
    LLAMA3: "llama-bpe",
    QWEN2: "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


def _pre_name(pt: dict | None) -> str:
    """The llama.cpp pre-tokenizer name equivalent to a tokenizer.json `pre_tokenizer`."""
    t = (pt or {}).get("type")
    if t == "ByteLevel" and pt.get("use_regex", True):
        return "gpt-2"
    if t == "Sequence":
        steps = pt["pretokenizers"]
        kinds = [s["type"] for s in steps]
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
            return "smollm"
        if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
            pattern = steps[0]["pattern"].get("Regex")
            if pattern in _HF_SPLIT:
                return _HF_SPLIT[pattern]
    raise ValueError(f"unsupported pre_tokenizer in tokenizer.json: {json.dumps(pt)[:300]}")


def _template_specials(post: dict | None) -> tuple[list[str], list[str]]:
    """Special tokens a TemplateProcessing post-processor puts before and after a single sequence."""
    if not post or post.get("type") != "TemplateProcessing":
        return [], []
    before, after, seen = [], [], False
    for item in post["single"]:
        if "Sequence" in item:
            seen = True
        else:
            (after if seen else before).append(item["SpecialToken"]["id"])
    return before, after


def tokenizer_json_metadata(path) -> tuple[dict, dict]:
    """(GGUF-style metadata, extra attributes) for a tokenizer.json."""
    path = Path(path)
    d = json.loads(path.read_text(encoding="utf-8"))
    model = d["model"]
    added = {a["content"]: a for a in d.get("added_tokens", [])}
    vocab = dict(model["vocab"])
    for a in added.values():
        vocab.setdefault(a["content"], a["id"])
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    for t, i in vocab.items():
        tokens[i] = t
    types = [3 if t in added and added[t]["special"] else 4 if t in added else 1 for t in tokens]
    before, after = _template_specials(d.get("post_processor"))
    ids = {t: i for i, t in enumerate(tokens)}
    md: dict = {"tokenizer.ggml.token_type": types}
    extra: dict = {}

    if model["type"] == "WordPiece":
        prefix = model.get("continuing_subword_prefix", "##")
        # llama.cpp's converter marks word starts with U+2581 and strips the continuation prefix
        md["tokenizer.ggml.tokens"] = [t if ty != 1 else t[len(prefix):] if t.startswith(prefix) else _SPACE + t
                                       for t, ty in zip(tokens, types)]
        md["tokenizer.ggml.model"] = "bert"
        norm = d.get("normalizer") or {}
        lower = bool(norm.get("lowercase", True))
        md["tokenizer.ggml.normalizer.lowercase"] = lower
        sa = norm.get("strip_accents")
        md["tokenizer.ggml.normalizer.strip_accents"] = lower if sa is None else bool(sa)
        if model.get("unk_token") in ids:
            md["tokenizer.ggml.unknown_token_id"] = ids[model["unk_token"]]
        if before:
            md["tokenizer.ggml.bos_token_id"] = ids[before[0]]
        if after:
            md["tokenizer.ggml.seperator_token_id"] = ids[after[-1]]
        extra["max_input_chars_per_word"] = model.get("max_input_chars_per_word")
        if prefix == "##":
            extra["hf_vocab"] = {t: i for i, t in enumerate(tokens)}
        if norm.get("type") == "BertNormalizer" and (d.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer":
            extra["hf_normalizer"] = True
        else:
            raise ValueError("WordPiece tokenizer.json needs BertNormalizer and BertPreTokenizer")
    elif model["type"] == "BPE":
        md["tokenizer.ggml.tokens"] = tokens
        md["tokenizer.ggml.model"] = "gpt2"
        md["tokenizer.ggml.pre"] = _pre_name(d.get("pre_tokenizer"))
        md["tokenizer.ggml.merges"] = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        cfg_path = path.with_name("tokenizer_config.json")
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
        for key, name in (("bos_token", "bos"), ("eos_token", "eos")):
            t = cfg.get(key)
            t = t.get("content") if isinstance(t, dict) else t
            if t in ids:
                md[f"tokenizer.ggml.{name}_token_id"] = ids[t]
        md["tokenizer.ggml.add_bos_token"] = bool(before)
        if before:
            md["tokenizer.ggml.bos_token_id"] = ids[before[0]]
        if after:
            md["tokenizer.ggml.add_eos_token"] = True
            md["tokenizer.ggml.eos_token_id"] = ids[after[-1]]
    else:
        raise ValueError(f"unsupported tokenizer.json model type {model['type']!r}; supported: WordPiece, BPE")
    return md, extra


def from_tokenizer_json(path) -> Tokenizer:
    """A tokenizer from a Hugging Face tokenizer.json (WordPiece, or byte-level BPE).

    Added tokens marked special become control tokens (split out of text only with
    parse_special=True, as llama.cpp does); the others are always split out.
    """
    from . import from_gguf_metadata

    md, extra = tokenizer_json_metadata(path)
    tok = from_gguf_metadata(md)
    for k, v in extra.items():
        setattr(tok, k, v)
    return tok

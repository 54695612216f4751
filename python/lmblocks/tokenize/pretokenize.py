"""Pre-tokenizer regexes of byte-level BPE vocabularies, chosen by `tokenizer.ggml.pre`, as in
llama.cpp's llm_tokenizer_bpe (src/llama-vocab.cpp).

llama.cpp applies a list of regexes in turn: each one splits every piece left by the previous one
into its matches and the text between them (unicode_regex_split in src/unicode.cpp). `split` does
the same with the `regex` package. Where llama.cpp rewrote a Hugging Face pattern (case-insensitive
contractions spelled out as [sS]...), we keep llama.cpp's spelling.
"""

from __future__ import annotations

import regex

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# pre-tokenizer name -> the regexes llama.cpp applies, in order
_LLAMA3 = (LLAMA3,)
_GPT2 = (GPT2,)
_SMOLLM = (r"\p{N}", GPT2)  # starcoder family: single digits first
_QWEN2 = (QWEN2,)
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    **dict.fromkeys(("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
                     "mellum", "modern-bert", "mpt", "olmo", "jais", "exaone4", "jina-v1-en", "jina-v2-code",
                     "roberta-bpe"), _GPT2),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "dbrx", "smaug-bpe"), _LLAMA3),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"), _SMOLLM),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), _QWEN2),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"),
    "chatglm-bpe": (LLAMA3,),
    "glm4": (LLAMA3,),
}

# Per pre-tokenizer flags llama.cpp sets beside the regexes.
IGNORE_MERGES = frozenset(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"))
ADD_BOS = IGNORE_MERGES
NO_CLEAN_SPACES = frozenset(("qwen2", "deepseek-r1-qwen", "smollm", "command-r"))

_compiled: dict[str, regex.Pattern] = {}


def patterns(pre: str) -> tuple[str, ...]:
    """The regexes of pre-tokenizer `pre`; an unknown name raises ValueError listing the known ones."""
    try:
        return PRE_TOKENIZERS[pre]
    except KeyError:
        raise ValueError(f"unsupported pre-tokenizer {pre!r}; supported: {', '.join(sorted(PRE_TOKENIZERS))}") from None


def split(text: str, exprs: tuple[str, ...]) -> list[str]:
    """Split `text` by each regex in turn, keeping matches and the text between them."""
    pieces = [text] if text else []
    for expr in exprs:
        rx = _compiled.get(expr)
        if rx is None:
            rx = _compiled[expr] = regex.compile(expr)
        out = []
        for p in pieces:
            pos = 0
            for m in rx.finditer(p):
                s, e = m.span()
                if s > pos:
                    out.append(p[pos:s])
                if e > s:
                    out.append(p[s:e])
                pos = e
            if pos < len(p):
                out.append(p[pos:])
        pieces = out
    return pieces

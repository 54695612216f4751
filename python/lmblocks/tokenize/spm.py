"""SentencePiece BPE as llama.cpp implements it for `tokenizer.ggml.model == "llama"`
(llm_tokenizer_spm_session in src/llama-vocab.cpp).

Spaces become U+2581; a space is prefixed to every text fragment that starts the input or follows a
special token (add_space_prefix); then adjacent symbols merge, best vocabulary score first (ties: the
leftmost pair), as long as the merged text is a token. A symbol left without a token is emitted as
its UTF-8 bytes, each as a `<0xXX>` byte token. The merge loop is native (lmblocks._core.text).
"""

from __future__ import annotations

import numpy as np

from .._core import text as _text
from .base import Tokenizer

SPACE = "\u2581"  # ▁, SentencePiece's escaped space


class SpmTokenizer(Tokenizer):
    """llama.cpp's SPM tokenizer (Llama 1/2, Mistral v1, TinyLlama, llama2.c vocabularies)."""

    model = "llama"
    _defaults = dict(bos_id=1, eos_id=2, unk_id=0, add_bos=True, add_eos=False, add_space_prefix=True,
                     clean_spaces=False)

    def __init__(self, md: dict):
        super().__init__(md)
        byte_ids = np.full(256, -1, np.int32)  # byte -> its <0xXX> token (or the ASCII character's), -1: none
        for b in range(256):
            i = self.tokens.find(f"<0x{b:02X}>")
            if i < 0 and b < 0x80:
                i = self.tokens.find(chr(b))
            byte_ids[b] = i
        self._byte_ids = byte_ids

    def _normal_piece(self, text: str) -> bytes:
        return text.replace(SPACE, " ").encode("utf-8", "surrogateescape")

    def _encode_fragments(self, frags: list, add_special: bool) -> list[int]:
        out: list[int] = []
        if add_special and self.add_bos:
            out.append(self.bos_id)
        prev_special = True  # the first fragment gets the space prefix, BOS or not
        for f in frags:
            if isinstance(f, str):
                if self.add_space_prefix and prev_special:
                    f = " " + f
                self._tokenize(f.replace(" ", SPACE), out)
                prev_special = False
            else:
                out.append(f)
                prev_special = True
        if add_special and self.add_eos:
            out.append(self.eos_id)
        return out

    def _tokenize(self, text: str, out: list[int]) -> None:
        """Merge the characters of `text` (spaces already U+2581) by score into tokens, appended to `out`."""
        out.extend(_text.spm_tokenize(self.tokens, self.scores, self._byte_ids, text))

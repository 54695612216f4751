"""SentencePiece BPE as llama.cpp implements it for `tokenizer.ggml.model == "llama"`
(llm_tokenizer_spm_session in src/llama-vocab.cpp).

Spaces become U+2581; a space is prefixed to every text fragment that starts the input or follows a
special token (add_space_prefix); then adjacent symbols merge, best vocabulary score first (ties: the
leftmost pair), as long as the merged text is a token. A symbol left without a token is emitted as
its UTF-8 bytes, each as a `<0xXX>` byte token.
"""

from __future__ import annotations

import heapq

from .base import CACHE_SIZE, Tokenizer

SPACE = "\u2581"  # ▁, SentencePiece's escaped space


class SpmTokenizer(Tokenizer):
    """llama.cpp's SPM tokenizer (Llama 1/2, Mistral v1, TinyLlama, llama2.c vocabularies)."""

    model = "llama"
    _defaults = dict(bos_id=1, eos_id=2, unk_id=0, add_bos=True, add_eos=False, add_space_prefix=True,
                     clean_spaces=False)

    def __init__(self, md: dict):
        super().__init__(md)
        byte_ids = []
        for b in range(256):
            i = self.token_to_id.get(f"<0x{b:02X}>")
            if i is None and b < 0x80:
                i = self.token_to_id.get(chr(b))
            byte_ids.append(i)
        self._byte_ids = byte_ids
        # Adjacent character pairs found inside some token. Where the text has a pair not in this set,
        # no token (so no merge) can span it: the text is cut there, and the pieces tokenized
        # independently and cached, with the same result as one pass over the whole text.
        self._pairs = {p for t in self.tokens for p in zip(t, t[1:])}
        self._cache: dict[str, tuple[int, ...]] = {}

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
                self._tokenize_cached(f.replace(" ", SPACE), out)
                prev_special = False
            else:
                out.append(f)
                prev_special = True
        if add_special and self.add_eos:
            out.append(self.eos_id)
        return out

    def _tokenize_cached(self, text: str, out: list[int]) -> None:
        pairs, cache = self._pairs, self._cache
        start = 0
        for i in range(1, len(text) + 1):
            if i == len(text) or (text[i - 1], text[i]) not in pairs:
                piece = text[start:i]
                ids = cache.get(piece)
                if ids is None:
                    ids = []
                    self._tokenize(piece, ids)
                    if len(cache) >= CACHE_SIZE:
                        cache.clear()
                    ids = cache[piece] = tuple(ids)
                out.extend(ids)
                start = i

    def _tokenize(self, text: str, out: list[int]) -> None:
        """Merge the characters of `text` by score into tokens, appended to `out`."""
        tok = self.token_to_id
        scores = self.scores
        sym = list(text)  # symbol text; "" once merged into its left neighbour
        n = len(sym)
        nxt = list(range(1, n + 1))
        nxt[-1:] = [-1] if n else []
        prv = list(range(-1, n - 1))

        # heap entries: (-score, left, right, merged length); a stale entry no longer matches the lengths
        heap = []
        for i in range(n - 1):
            j = tok.get(sym[i] + sym[i + 1])
            if j is not None:
                heap.append((-scores[j], i, i + 1, 2))
        heapq.heapify(heap)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            ls, rs = sym[left], sym[right]
            if not ls or not rs or len(ls) + len(rs) != size:
                continue
            sym[left] = ls + rs
            sym[right] = ""
            r = nxt[left] = nxt[right]
            if r >= 0:
                prv[r] = left
            for a, b in ((prv[left], left), (left, r)):
                if a >= 0 and b >= 0:
                    t = sym[a] + sym[b]
                    j = tok.get(t)
                    if j is not None:
                        heapq.heappush(heap, (-scores[j], a, b, len(t)))

        # Every merged symbol is a token (a pair is only queued if it is), so only single characters
        # can miss: they fall back to byte tokens (llama.cpp's resegment()).
        i = 0 if n else -1
        while i >= 0:
            s = sym[i]
            j = tok.get(s)
            if j is not None:
                out.append(j)
            else:
                for b in s.encode("utf-8", "surrogateescape"):
                    bid = self._byte_ids[b]
                    if bid is None:
                        raise KeyError(f"no byte token for 0x{b:02X} in the vocabulary")
                    out.append(bid)
            i = nxt[i]

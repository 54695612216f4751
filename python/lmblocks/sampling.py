"""Choosing the next token from logits, and cutting generated text at stop strings.

:class:`Sampler` follows llama.cpp's default sampler chain: the order of
``common_params_sampling::samplers`` in ``common/common.h``, with each step defined as in
``src/llama-sampling.cpp``. The steps that are off by default there (DRY, top-n-sigma, typical-p,
XTC) are left out. llama-cpp-python builds the same order (``Llama._init_sampler``: penalties,
top_k, typical, top_p, min_p, temp, dist). One call, on logits ``l`` of shape (V,):

1. **penalties**: for every token ``t`` that occurs ``c_t > 0`` times in the last
   ``repeat_last_n`` history tokens (-1: the whole history, as llama.cpp's -1 = context size;
   0: no penalties), first
   ``l_t = l_t * repeat_penalty`` if ``l_t <= 0``, else ``l_t / repeat_penalty``. Then
   ``l_t -= c_t * frequency_penalty + presence_penalty``.
2. **top_k**: keep the ``top_k`` largest logits (0: keep all).
3. **top_p**: ``p = softmax(l)`` over the tokens left. Sorted by ``p`` from high to low, keep
   the shortest run whose total is ``>= top_p`` (always at least 1 token; all of them if
   rounding keeps the total under ``top_p``). 1.0 turns it off.
4. **min_p**: keep the tokens with ``l_t >= max(l) + log(min_p)``, that is
   ``p_t >= min_p * p_max`` (0: off).
5. **temperature**: 0 is greedy: the largest penalized logit (steps 2-4 always keep it), and no
   random draw. Otherwise ``l / temperature``.
6. **dist**: ``p = softmax(l)`` over the tokens left. Draw ``u`` uniform in [0, 1) and take
   the first token, in sorted order, whose cumulative probability is ``>= u``.

top_p and min_p measure probability at temperature 1, before step 5, as llama.cpp does. A hot
temperature flattens the final draw but does not widen those two sets.

Ties: llama.cpp's partial sort breaks ties in no fixed order. Here tokens are ordered by logit,
high to low, then by id, low to high. So a tie at the top_k or top_p cut keeps the lowest ids,
and greedy picks the lowest id. The arithmetic is float64 (llama.cpp uses float32), so
:meth:`Sampler.probs` can be checked exactly against ``tests/ref/sampling.py``.

:class:`StopMatcher` takes decoded text pieces as they are produced. It releases only the text
that cannot be the start of a stop string, and reports when one is hit.

>>> import numpy as np
>>> from lmblocks.sampling import Sampler, SamplingParams, StopMatcher
>>> logits = np.array([1.0, 3.0, 2.0, 3.0], np.float32)
>>> Sampler(SamplingParams(temperature=0)).sample(logits, history=[])
1
>>> m = StopMatcher(["</s>"])
>>> m.feed("Hi</"), m.feed("s> more")
(('Hi', False), ('', True))
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SamplingParams", "Sampler", "StopMatcher"]


def _check_real(name, value, ok, rule):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} must be a finite number{rule}, got {value!r}")


def _check_int(name, value, ok, rule):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not ok(value):
        raise ValueError(f"{name} must be an integer{rule}, got {value!r}")


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings. Names and defaults are llama-cpp-python's (and OpenAI's for the two
    penalties). ``max_tokens`` belongs to generation, not here.

    Every field is checked on construction. A bad value raises ``ValueError`` naming the field.

    >>> SamplingParams(temperature=0.2, top_k=0).top_k
    0
    >>> SamplingParams(top_p=0)
    Traceback (most recent call last):
    ...
    ValueError: top_p must be a finite number in (0, 1], got 0
    """

    temperature: float = 0.8        # 0 = greedy (argmax)
    top_k: int = 40                 # 0 = off
    top_p: float = 0.95             # 1 = off
    min_p: float = 0.05             # 0 = off
    repeat_penalty: float = 1.0     # 1 = off; > 1 discourages repeats
    repeat_last_n: int = 64         # history window for all three penalties; -1 = all, 0 = off
    frequency_penalty: float = 0.0  # subtracted once per occurrence in the window
    presence_penalty: float = 0.0   # subtracted once if the token occurs in the window
    seed: int | None = None         # None: fresh OS entropy

    def __post_init__(self):
        _check_real("temperature", self.temperature, lambda v: v >= 0, " >= 0")
        _check_int("top_k", self.top_k, lambda v: v >= 0, " >= 0 (0 = off)")
        _check_real("top_p", self.top_p, lambda v: 0 < v <= 1, " in (0, 1]")
        _check_real("min_p", self.min_p, lambda v: 0 <= v < 1, " in [0, 1)")
        _check_real("repeat_penalty", self.repeat_penalty, lambda v: v > 0, " > 0")
        _check_int("repeat_last_n", self.repeat_last_n, lambda v: v >= -1, " >= -1 (-1 = whole history)")
        _check_real("frequency_penalty", self.frequency_penalty, lambda v: True, "")
        _check_real("presence_penalty", self.presence_penalty, lambda v: True, "")
        if self.seed is not None:
            _check_int("seed", self.seed, lambda v: v >= 0, " >= 0 or None")


class Sampler:
    """Picks the next token with the chain in this module's docstring.

    The sampler has its own ``np.random.Generator``, seeded from ``params.seed``. With a given
    seed, the same calls give the same tokens.

    >>> import numpy as np
    >>> logits = np.log(np.array([0.5, 0.3, 0.2]))
    >>> s = Sampler(SamplingParams(seed=0, top_k=0, top_p=1.0, min_p=0.0, temperature=1.0))
    >>> s.probs(logits, history=[]).round(3)
    array([0.5, 0.3, 0.2])
    >>> a, b = Sampler(s.params), Sampler(s.params)
    >>> [a.sample(logits, []) for _ in range(8)] == [b.sample(logits, []) for _ in range(8)]
    True
    """

    def __init__(self, params: SamplingParams | None = None):
        if params is None:
            params = SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        self.params = params
        self._rng: np.random.Generator | None = None  # made at the first draw: greedy never imports np.random

    def sample(self, logits, history: Sequence[int] = ()) -> int:
        """One token id drawn from ``logits`` (V,).

        ``history`` holds the token ids so far (prompt and generated). Only the penalties read it.
        """
        ids, p = self._chain(logits, history)
        if ids.size == 1:  # greedy, or one token left: llama.cpp's dist does not draw here either
            return int(ids[0])
        cdf = np.cumsum(p)
        if self._rng is None:
            self._rng = np.random.default_rng(self.params.seed)
        i = int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="left"))
        return int(ids[min(i, ids.size - 1)])

    def probs(self, logits, history: Sequence[int] = ()) -> np.ndarray:
        """The distribution :meth:`sample` draws from, as a float64 array of shape (V,).

        Filtered tokens get 0. Greedy gives a one-hot array. The random generator is not used.
        """
        ids, p = self._chain(logits, history)
        out = np.zeros(np.shape(logits)[-1], np.float64)
        out[ids] = p
        return out

    def _chain(self, logits, history):
        """(ids, p): the tokens left, sorted by logit from high to low (ties: lowest id first),
        and their final probabilities."""
        prm = self.params
        x = _penalize(_as_logits(logits), history, prm)
        if prm.temperature == 0:
            return np.array([np.argmax(x)]), np.ones(1)  # argmax: first (lowest id) of ties
        ids = _top_k(x, prm.top_k)
        lg = x[ids]  # sorted from high to low; lg[0] is the max
        if prm.top_p < 1:
            cum = np.cumsum(_softmax_sorted(lg))
            n = int(np.searchsorted(cum, prm.top_p, side="left")) + 1  # first index with cum >= top_p
            ids, lg = ids[:n], lg[:n]
        if prm.min_p > 0:
            n = int(np.count_nonzero(lg >= lg[0] + math.log(prm.min_p)))  # a prefix, as lg is sorted
            ids, lg = ids[:n], lg[:n]
        return ids, _softmax_sorted(lg / prm.temperature)


def _as_logits(logits) -> np.ndarray:
    """A float64 copy of ``logits`` (V,). There must be no NaN, no +inf, and at least one finite value."""
    x = np.array(logits, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"logits must have shape (vocab,) with vocab >= 1, got {x.shape}")
    if not np.all(x < np.inf):
        raise ValueError("logits must not contain NaN or +inf")
    if not np.any(x > -np.inf):
        raise ValueError("logits are all -inf: there is no token to sample")
    return x


def _penalize(x, history, prm) -> np.ndarray:
    """llama_sampler_penalties_apply, on ``x`` in place: repeat, then frequency and presence penalties,
    for the tokens of the last ``repeat_last_n`` history entries."""
    n = prm.repeat_last_n
    if n == 0 or (prm.repeat_penalty == 1 and prm.frequency_penalty == 0 and prm.presence_penalty == 0):
        return x
    window = np.asarray(history[-n:] if n > 0 else history, dtype=np.int64).ravel()
    if window.size == 0:
        return x
    if window.min() < 0 or window.max() >= x.size:
        raise ValueError(f"history holds token ids outside [0, {x.size})")
    ids, counts = np.unique(window, return_counts=True)
    v = x[ids]
    v = np.where(v <= 0, v * prm.repeat_penalty, v / prm.repeat_penalty)
    x[ids] = v - (counts * prm.frequency_penalty + prm.presence_penalty)
    return x


def _top_k(x, k) -> np.ndarray:
    """Ids of the k largest entries of ``x`` (all if k is 0 or >= V), sorted from high to low.
    Ties keep and list the lowest ids first."""
    if 0 < k < x.size:
        # np.partition finds the k-th largest value; a tie at that value keeps the lowest ids
        # (argpartition alone would keep an arbitrary subset of the tie).
        kth = np.partition(x, x.size - k)[x.size - k]
        above = np.flatnonzero(x > kth)
        ids = np.sort(np.concatenate([above, np.flatnonzero(x == kth)[: k - above.size]]))
    else:
        ids = np.arange(x.size)
    return ids[np.argsort(-x[ids], kind="stable")]


def _softmax_sorted(lg) -> np.ndarray:
    """softmax of logits sorted from high to low (lg[0] is the max and finite); -inf gets 0."""
    e = np.exp(lg - lg[0])
    return e / e.sum()


class StopMatcher:
    """Cuts streamed text at the first stop string, and holds back only what could start one.

    Give :meth:`feed` each decoded piece as it is produced (a str: decode bytes to whole
    characters first). It returns ``(text, stopped)``. ``text`` is safe to show now.
    ``stopped`` is True once a stop string is complete. The output then ends just before
    it, and later calls return ``("", True)``. If generation ends without a stop, call
    :meth:`finish` for the text held back. The first stop string to be completed wins, as
    generation would stop there; if several are completed at the same character, the longest
    wins. So the result does not depend on how the text is split into pieces. The stop string
    that was hit is in :attr:`hit`.

    >>> m = StopMatcher(["\\nUser:", "</s>"])
    >>> m.feed("Sure.\\nUs")       # "\\nUs" could start "\\nUser:": held back
    ('Sure.', False)
    >>> m.feed("ually")          # it did not
    ('\\nUsually', False)
    >>> m.feed(" yes</"), m.finish()
    ((' yes', False), '</')
    >>> m = StopMatcher("</s>")
    >>> m.feed("ok</"), m.feed("s>tail"), m.hit
    (('ok', False), ('', True), '</s>')
    """

    def __init__(self, stop: str | Iterable[str] | None = None):
        stops = [stop] if isinstance(stop, str) else list(stop or ())
        for s in stops:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty str, got {s!r}")
        self.stop: tuple[str, ...] = tuple(dict.fromkeys(stops))
        self.hit: str | None = None  # the stop string that ended the text
        self._longest = max(map(len, self.stop), default=0)
        self._held = ""

    @property
    def stopped(self) -> bool:
        return self.hit is not None

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add ``piece`` and return ``(text safe to emit now, whether a stop string was hit)``."""
        if self.stopped:
            return "", True
        buf = self._held + piece
        # The stop completed first (smallest end) wins; of several ending there, the longest.
        found = [(pos + len(s), pos, s) for s in self.stop if (pos := buf.find(s)) >= 0]
        if found:
            _, pos, self.hit = min(found)
            self._held = ""
            return buf[:pos], True
        keep = self._partial(buf)
        self._held = buf[len(buf) - keep:]
        return buf[: len(buf) - keep], False

    def finish(self) -> str:
        """The text still held back, at the end of generation (no stop string came). Empty after a stop."""
        text, self._held = self._held, ""
        return text

    def _partial(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is the start of some stop string.

        The suffix can be at most one character shorter than that stop string.
        """
        for n in range(min(len(buf), self._longest - 1), 0, -1):
            tail = buf[-n:]
            if any(len(s) > n and s.startswith(tail) for s in self.stop):
                return n
        return 0

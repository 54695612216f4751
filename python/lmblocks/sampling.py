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

The chain runs natively (``cpp/src/runtime/sampling.cpp``) without the GIL. It reads float32 or
float64 logits in place, in one pass, and sorts only the ``top_k`` candidates (every token when
``top_k`` is 0). Other dtypes are converted to float64 first.

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

from . import _core

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
        big = 1 << 62  # top_k and repeat_last_n beyond any vocabulary or history mean "all"
        self._native = _core.sampling.Sampler(
            temperature=float(params.temperature), top_k=min(int(params.top_k), big), top_p=float(params.top_p),
            min_p=float(params.min_p), repeat_penalty=float(params.repeat_penalty),
            repeat_last_n=min(int(params.repeat_last_n), big), frequency_penalty=float(params.frequency_penalty),
            presence_penalty=float(params.presence_penalty))
        n = params.repeat_last_n
        self._last_n = 0 if n == 0 or (params.repeat_penalty == 1 and params.frequency_penalty == 0
                                       and params.presence_penalty == 0) else n
        self._rng: np.random.Generator | None = None  # made at the first draw: greedy never imports np.random
        self._u: float | None = None  # a draw the last chain did not need (it kept one token)

    def sample(self, logits, history: Sequence[int] = ()) -> int:
        """One token id drawn from ``logits`` (V,).

        ``history`` holds the token ids so far (prompt and generated). Only the penalties read it.
        """
        window = self._window(history)
        if self.params.temperature == 0:
            return self._native.sample(logits, window, 0.0)[0]
        # u is drawn before the chain runs; when the chain keeps one token, llama.cpp's dist does
        # not draw, so u waits for the next call: the draws used are the generator's sequence.
        if self._u is None:
            if self._rng is None:
                self._rng = np.random.default_rng(self.params.seed)
            self._u = float(self._rng.random())
        token, used = self._native.sample(logits, window, self._u)
        if used:
            self._u = None
        return token

    def probs(self, logits, history: Sequence[int] = ()) -> np.ndarray:
        """The distribution :meth:`sample` draws from, as a float64 array of shape (V,).

        Filtered tokens get 0. Greedy gives a one-hot array. The random generator is not used.
        """
        return self._native.probs(logits, self._window(history))

    def _window(self, history):
        """The history entries the penalties read (only these cross into native code)."""
        n = self._last_n
        if n == 0:
            return ()
        return history[-n:] if n > 0 else history


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

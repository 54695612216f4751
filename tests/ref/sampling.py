"""Float64 references for lmblocks.sampling: each filter of llama.cpp's default chain, written from
its definition (src/llama-sampling.cpp, order from common/common.h). Independent of lmblocks.

Every filter takes and returns full-vocabulary logits (V,) float64. A filtered token gets -inf,
so it ends with probability 0, as when llama.cpp drops it from the candidate list. Ties are
broken by lowest token id, the rule lmblocks documents.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

NEG_INF = -np.inf


def softmax(x):
    """exp(x - max) / sum; -inf entries get 0."""
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def by_rank(x):
    """Token ids ordered by logit, high to low, then by id, low to high."""
    return np.lexsort((np.arange(x.size), -x))


def penalties(x, history, *, repeat_penalty=1.0, repeat_last_n=64, frequency_penalty=0.0, presence_penalty=0.0):
    """For each token seen c > 0 times in the last repeat_last_n history entries (-1: all, 0: none):
    a positive logit is divided by repeat_penalty, a non-positive one multiplied; then
    c * frequency_penalty + presence_penalty is subtracted."""
    x = np.array(x, np.float64)
    history = list(history)
    if repeat_last_n == -1:
        window = history
    else:
        window = history[max(0, len(history) - repeat_last_n):] if repeat_last_n > 0 else []
    for t, c in Counter(window).items():
        v = x[t]
        v = v / repeat_penalty if v > 0 else v * repeat_penalty
        x[t] = v - (c * frequency_penalty + presence_penalty)
    return x


def top_k(x, k):
    """Keep the k highest logits; k <= 0 keeps all."""
    x = np.array(x, np.float64)
    if 0 < k < x.size:
        x[by_rank(x)[k:]] = NEG_INF
    return x


def top_p(x, p):
    """Keep the smallest set of highest-probability tokens whose probability sum is >= p (at least
    one token; every token if the sum never reaches p). p >= 1 keeps all."""
    x = np.array(x, np.float64)
    if p >= 1:
        return x
    order = by_rank(x)
    probs = softmax(x)
    total, n = 0.0, order.size
    for i, t in enumerate(order):
        total += probs[t]
        if total >= p:
            n = i + 1
            break
    x[order[n:]] = NEG_INF
    return x


def min_p(x, m):
    """Keep tokens with p >= m * p_max; m <= 0 keeps all."""
    x = np.array(x, np.float64)
    if m <= 0:
        return x
    probs = softmax(x)
    x[probs < m * probs.max()] = NEG_INF
    return x


def temperature(x, t):
    """x / t; t == 0 keeps only the highest logit (the lowest id among ties)."""
    x = np.array(x, np.float64)
    if t == 0:
        top = x.max()
        best = next(i for i, v in enumerate(x) if v == top)
        out = np.full_like(x, NEG_INF)
        out[best] = 0.0
        return out
    return x / t


# llama.cpp's common_params_sampling defaults (common/common.h), under llama-cpp-python's names.
DEFAULTS = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0, repeat_last_n=64,
                frequency_penalty=0.0, presence_penalty=0.0)


def chain(logits, history, params=None):
    """The distribution (V,) the default chain draws from, for a dict of settings (missing ones take
    DEFAULTS; a "seed" key is ignored): penalties -> top_k -> top_p -> min_p -> temperature -> softmax."""
    prm = {**DEFAULTS, **{k: v for k, v in (params or {}).items() if k != "seed"}}
    x = penalties(logits, history, repeat_penalty=prm["repeat_penalty"], repeat_last_n=prm["repeat_last_n"],
                  frequency_penalty=prm["frequency_penalty"], presence_penalty=prm["presence_penalty"])
    x = min_p(top_p(top_k(x, prm["top_k"]), prm["top_p"]), prm["min_p"])
    return softmax(temperature(x, prm["temperature"]))

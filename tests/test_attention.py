"""The attention kernels (tiled prefill, decode, split over threads) against the float64 reference.

lb.ops.attention runs keys and values as given (f32 or f16, read as stored) and lb.ops.attention_cache
runs them as the engine keeps its KV cache: a ring of C positions per kv head. Each case runs on every
dispatch path (the `isa` fixture) at awkward sizes: head dims 40 to 128, 1 to 513 queries, contexts
crossing the kernels' key blocks (64 keys prefill, 256 decode), GQA groups 1, 3 and 8.
"""

from __future__ import annotations

import numpy as np
import pytest

import lmblocks as lb
from lmblocks import ops
from ref import ops as ref
from test_ops import check, rand

KV_DTYPES = ["float32", "float16"]

# (T, S, Hkv, G, hd, options); query t sits at position S - T + t.
CASES = [
    (513, 513, 1, 3, 64, {}),                                   # SmolLM2's group: many tiles and key blocks
    (100, 100, 2, 1, 128, {}),
    (17, 17, 1, 8, 80, {}),
    (7, 7, 3, 3, 40, {}),
    (100, 129, 1, 8, 96, {}),                                   # a prefill chunk after earlier keys
    (7, 1100, 1, 3, 128, {}),                                   # few queries, long context
    (3, 200, 2, 3, 64, {}),                                     # under a tile: one position at a time
    (100, 100, 1, 3, 64, {"window": 33}),                       # window edges inside key blocks
    (17, 300, 2, 3, 64, {"window": 50}),
    (513, 513, 1, 1, 40, {"window": 100, "softcap": 20.0}),
    (100, 100, 1, 3, 64, {"causal": False}),
    (65, 130, 1, 8, 40, {"causal": False, "window": 20}),
    (1, 1, 1, 1, 64, {}),                                       # decode
    (1, 63, 1, 3, 64, {}),
    (1, 64, 1, 3, 64, {}),
    (1, 65, 1, 3, 64, {}),
    (1, 257, 1, 8, 96, {}),
    (1, 1100, 3, 3, 64, {}),
    (1, 4099, 1, 1, 40, {}),
    (1, 300, 2, 3, 80, {"window": 100}),
    (1, 300, 1, 3, 64, {"softcap": 5.0, "scale": 0.3}),
    (1, 300, 1, 3, 64, {"causal": False, "window": 7}),
]


def case_id(c):
    T, S, Hkv, G, hd, kw = c
    return f"T{T}-S{S}-Hkv{Hkv}-G{G}-hd{hd}" + "".join(f"-{k}{v}" for k, v in kw.items())


@pytest.mark.parametrize("kv", KV_DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_attention_sizes(isa, rng, case, kv):
    T, S, Hkv, G, hd, kw = case
    q = rand(rng, (T, Hkv * G, hd), scale=2.0)  # peaked softmax rows
    k, v = rand(rng, (S, Hkv, hd), kv), rand(rng, (S, Hkv, hd), kv)
    check(ops.attention(q, k, v, **kw), ref.attention(q, k, v, **kw), "dot", K=max(hd, S))


@pytest.mark.parametrize("T", [1, 100])
@pytest.mark.parametrize("order", ["rising", "falling"])
def test_attention_running_max(isa, rng, T, order):
    # Scores that rise along the keys move every row's max at every key block (the output is
    # rescaled each time, the early blocks' weights to below exp's range); falling ones leave the
    # first block's max and push later blocks' weights below exp's range.
    S, hd = 700, 64
    u = rng.standard_normal(hd)
    u /= np.linalg.norm(u)
    ramp = np.linspace(-100.0, 0.0, S) if order == "rising" else np.linspace(0.0, -100.0, S)
    k = (ramp[:, None, None] * u + 0.1 * rng.standard_normal((S, 1, hd))).astype(np.float32)
    q = (np.sqrt(hd) * u + 0.1 * rng.standard_normal((T, 3, hd))).astype(np.float32)
    v = rand(rng, (S, 1, hd))
    check(ops.attention(q, k, v), ref.attention(q, k, v), "dot", K=S)


@pytest.mark.parametrize("T", [1, 7, 70])
def test_attention_mask_blocks(isa, rng, T):
    S, hd = 300, 64
    q, k, v = rand(rng, (T, 6, hd)), rand(rng, (S, 2, hd), "float16"), rand(rng, (S, 2, hd), "float16")
    mask = rand(rng, (6, T, S), scale=3.0)
    mask[:, :, 70:200] = -np.inf  # whole key blocks hidden, for some rows everything before them too
    mask[1, :, :] = -np.inf       # rows that see nothing get zeros
    got = ops.attention(q, k, v, mask=mask, window=250)
    check(got, ref.attention(q, k, v, mask=mask, window=250), "dot", K=S)
    assert (np.asarray(got)[:, 1] == 0).all()


def ring(history, C):
    """(P, Hkv, d) values of positions 0 .. P-1 written in order into a ring of C rows: (Hkv, C, d)."""
    P, Hkv, d = history.shape
    r = np.zeros((Hkv, C, d), history.dtype)
    for j in range(P):
        r[:, j % C] = history[j]
    return r


# (T, pos, C, Hkv, G, hd, window): a global layer keeps C >= pos + T; a sliding one a ring of
# window + n_batch - 1 that the queries' keys wrap around.
RINGS = [
    (17, 100, 200, 1, 3, 64, 0),
    (1, 1023, 1024, 3, 3, 64, 0),
    (1, 1000, 71, 1, 3, 64, 64),
    (17, 500, 80, 2, 4, 80, 64),
    (100, 150, 139, 1, 8, 40, 40),
    (7, 0, 7, 1, 3, 64, 4),
    (513, 513, 640, 1, 3, 128, 128),
    (1, 300, 100, 2, 1, 96, 100),
]


@pytest.mark.parametrize("kv", KV_DTYPES)
@pytest.mark.parametrize("case", RINGS, ids=lambda c: "T{}-pos{}-C{}-Hkv{}-G{}-hd{}-w{}".format(*c))
def test_attention_cache_ring(isa, rng, case, kv):
    T, pos, C, Hkv, G, hd, window = case
    q = rand(rng, (T, Hkv * G, hd), scale=2.0)
    keys, values = rand(rng, (pos + T, Hkv, hd), kv), rand(rng, (pos + T, Hkv, hd), kv)
    # the ring of sequence 1 of a two-sequence cache (S, Hkv, C, hd), as KVCache.layer() gives it
    k = np.stack([np.zeros((Hkv, C, hd), keys.dtype), ring(keys, C)])[1]
    v = np.stack([np.zeros((Hkv, C, hd), keys.dtype), ring(values, C)])[1]
    kw = {"window": window, "softcap": 30.0} if window else {}
    got = ops.attention_cache(q, k, v, pos, **kw)
    check(got, ref.attention(q, keys, values, **kw), "dot", K=max(hd, pos + T))
    check(got, ref.attention_cache(q, k, v, pos, **kw), "dot", K=max(hd, pos + T))


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_attention_split_over_threads(isa, rng, threads):
    # One long head is cut along its keys into a share per thread; the parts merge exactly.
    prev = lb.get_num_threads()
    try:
        lb.set_num_threads(threads)
        for T, S, G in [(1, 3000, 3), (2, 3000, 1), (65, 65, 8)]:
            q, k, v = rand(rng, (T, G, 64)), rand(rng, (S, 1, 64), "float16"), rand(rng, (S, 1, 64), "float16")
            check(ops.attention(q, k, v), ref.attention(q, k, v), "dot", K=S)
    finally:
        lb.set_num_threads(prev)


def test_attention_cache_refuses_bad_input():
    q, k = np.ones((2, 6, 8), np.float32), np.ones((3, 10, 8), np.float16)
    with pytest.raises(ValueError, match="C=10"):
        ops.attention_cache(q, k, k, 9)  # positions 0..10 do not fit a ring of 10 without a window
    ops.attention_cache(q, k, k, 9, window=9)  # they do with one
    with pytest.raises(ValueError, match="pos"):
        ops.attention_cache(q, k, k, -1)
    with pytest.raises(ValueError, match=r"\bv\b"):
        ops.attention_cache(q, k, k[:2], 0)
    with pytest.raises(ValueError, match=r"\bk\b"):
        ops.attention_cache(q, k[:, :, :4], k, 0)
    with pytest.raises(ValueError, match=r"\bk\b"):
        ops.attention_cache(q, np.ones((4, 10, 8), np.float32), np.ones((4, 10, 8), np.float32), 0)  # H=6, Hkv=4
    with pytest.raises(TypeError, match=r"\bk\b"):
        ops.attention_cache(q, k.astype(np.int32), k, 0)

"""lmblocks.sampling against the float64 reference chain (tests/ref/sampling.py), plus checks on
draws, seeds, greedy ties, the penalty window, parameter checks and StopMatcher."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from lmblocks import sampling
from lmblocks.sampling import Sampler, SamplingParams, StopMatcher
from ref import sampling as ref

VOCABS = [1, 2, 7, 32000, 49152]

# One entry per kind of parameter combination: each filter alone, the defaults, all together, the edges.
PARAMS = {
    "defaults": {},
    "greedy": dict(temperature=0.0),
    "greedy_penalized": dict(temperature=0.0, repeat_penalty=1.5, presence_penalty=1.0),
    "plain_softmax": dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    "top_k": dict(temperature=1.0, top_k=5, top_p=1.0, min_p=0.0),
    "top_k_1": dict(top_k=1),
    "top_p": dict(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0),
    "top_p_tiny": dict(top_k=0, top_p=1e-9, min_p=0.0),
    "min_p": dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2),
    "cold": dict(temperature=0.3),
    "hot_all_filters": dict(temperature=1.7, top_k=100, top_p=0.8, min_p=0.05),
    "penalties": dict(repeat_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.6, repeat_last_n=16),
    "penalties_whole_history": dict(repeat_penalty=0.7, presence_penalty=-0.5, repeat_last_n=-1, top_k=0),
    "penalties_window_off": dict(repeat_penalty=2.0, frequency_penalty=1.0, repeat_last_n=0),
}


def make_logits(rng, vocab, kind):
    """Random logits (vocab,) float32: normal, with many exact ties, or with -inf entries."""
    if kind == "normal":
        x = rng.standard_normal(vocab) * 3
    elif kind == "ties":  # a handful of distinct values, so the max and every cut fall inside a tie
        x = rng.integers(-3, 3, vocab).astype(np.float64)
    else:  # "neg_inf": about a third masked out, never all
        x = rng.standard_normal(vocab) * 3
        x[rng.random(vocab) < 0.35] = -np.inf
        x[rng.integers(vocab)] = 1.0
    return x.astype(np.float32)


def make_history(rng, vocab, n=48):
    """Token ids with repeats (a few ids many times), some early, some in the last tokens."""
    return list(rng.integers(0, min(vocab, 6), n // 2)) + list(rng.integers(0, vocab, n - n // 2))


# ---- (a) the distribution we draw from equals the reference's --------------------------------------

@pytest.mark.parametrize("name", PARAMS)
@pytest.mark.parametrize("kind", ["normal", "ties", "neg_inf"])
@pytest.mark.parametrize("vocab", VOCABS)
def test_probs_match_reference(rng, vocab, kind, name):
    params = PARAMS[name]
    logits, history = make_logits(rng, vocab, kind), make_history(rng, vocab)
    got = Sampler(SamplingParams(**params)).probs(logits, history)
    want = ref.chain(logits, history, params)
    assert got.shape == (vocab,) and got.dtype == np.float64
    np.testing.assert_array_equal(got > 0, want > 0)  # the same tokens survive every filter
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert math.isclose(got.sum(), 1.0, rel_tol=1e-12)


def test_default_params_are_llama_cpps():
    p = SamplingParams()
    assert {k: getattr(p, k) for k in ref.DEFAULTS} == ref.DEFAULTS and p.seed is None


# ---- (b) empirical frequencies over many draws agree with that distribution -------------------------

@pytest.mark.parametrize("vocab, kind, name", [
    (7, "normal", "plain_softmax"),
    (32, "ties", "hot_all_filters"),
    (32, "neg_inf", "penalties_whole_history"),
    (32, "normal", "defaults"),
    (32000, "normal", "hot_all_filters"),
])
def test_draw_frequencies(rng, vocab, kind, name):
    n = 4000 if vocab > 1000 else 20000
    logits, history = make_logits(rng, vocab, kind), make_history(rng, vocab)
    s = Sampler(SamplingParams(**PARAMS[name], seed=1234))
    p = s.probs(logits, history)
    counts = np.bincount([s.sample(logits, history) for _ in range(n)], minlength=vocab)
    assert counts[p == 0].sum() == 0  # never a filtered token
    live = p > 0
    # Fixed seed, so this is deterministic, not flaky. Each count lies within 5 sigma of n * p, and
    # Pearson's chi-square is below df + 5 * sqrt(2 df), far in the tail of chi2(df).
    np.testing.assert_array_less(np.abs(counts - n * p), 5 * np.sqrt(n * p * (1 - p)) + 1)
    chi2 = np.sum((counts[live] - n * p[live]) ** 2 / (n * p[live]))
    df = max(live.sum() - 1, 1)
    assert chi2 < df + 5 * math.sqrt(2 * df)


# ---- (c) seeds ---------------------------------------------------------------------------------------

def draws(seed, steps=200, vocab=50):
    rng = np.random.default_rng(7)  # the same logits for every seed
    s = Sampler(SamplingParams(seed=seed, top_k=0, top_p=1.0, min_p=0.0, temperature=1.5))
    return [s.sample(rng.standard_normal(vocab), []) for _ in range(steps)]


def test_same_seed_same_tokens():
    assert draws(0) == draws(0)
    assert draws(2**40) == draws(2**40)


def test_different_seeds_different_tokens():
    runs = [draws(seed) for seed in (0, 1, 2, 12345)]
    assert all(a != b for i, a in enumerate(runs) for b in runs[i + 1:])
    assert draws(None) != draws(None)  # OS entropy


def test_probs_does_not_advance_the_generator():
    logits = np.random.default_rng(3).standard_normal(100)
    a, b = Sampler(SamplingParams(seed=5)), Sampler(SamplingParams(seed=5))
    a.probs(logits, [])
    assert [a.sample(logits, []) for _ in range(20)] == [b.sample(logits, []) for _ in range(20)]


# ---- (d) greedy ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab", VOCABS)
def test_greedy_is_argmax_lowest_id(rng, vocab):
    x = rng.integers(-5, 5, vocab).astype(np.float32)
    top = rng.choice(vocab, size=min(vocab, 3), replace=False)
    x[top] = 9.0  # a three-way tie for the max
    for seed in (0, 1, None):
        s = Sampler(SamplingParams(temperature=0, seed=seed))
        assert s.sample(x, []) == top.min() == np.argmax(x)
        assert s.probs(x, [])[top.min()] == 1.0


def test_greedy_sees_penalties():
    x = np.array([0.0, 3.0, 2.5])
    s = Sampler(SamplingParams(temperature=0, repeat_penalty=2.0))
    assert s.sample(x, [1]) == 2  # 3.0 / 2 = 1.5 < 2.5


def test_single_token_vocab():
    assert Sampler(SamplingParams(seed=0)).sample(np.array([-1e30]), [0, 0]) == 0


# ---- (e) penalties: only the last repeat_last_n history tokens ---------------------------------------

def penalized_probs(logits, history, **kw):
    """The chain with every filter off, temperature 1: softmax of the penalized logits."""
    return Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, **kw)).probs(logits, history)


def test_penalty_window():
    logits = np.zeros(10)
    history = [1, 1, 1, 2] + [3, 4, 4]  # window of 3 holds 3 once and 4 twice; 1 and 2 fall outside
    kw = dict(frequency_penalty=0.5, presence_penalty=0.25, repeat_last_n=3)
    got = np.log(penalized_probs(logits, history, **kw))
    got -= got[0]  # back to logits relative to an untouched token
    want = np.zeros(10)
    want[3], want[4] = -(0.5 + 0.25), -(2 * 0.5 + 0.25)
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(penalized_probs(logits, history, **kw), ref.chain(logits, history, {
        "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, **kw}), rtol=1e-12)


@pytest.mark.parametrize("last_n", [-1, 0, 1, 5, 64, 1000])
def test_penalty_window_sizes(rng, last_n):
    logits, history = rng.standard_normal(40), list(rng.integers(0, 40, 100))
    kw = dict(repeat_penalty=1.7, frequency_penalty=0.3, presence_penalty=0.2, repeat_last_n=last_n)
    got = penalized_probs(logits, history, **kw)
    # Only the tokens in the window change: the same as penalizing with just that window.
    window = history if last_n == -1 else history[len(history) - last_n:] if last_n > 0 else []
    np.testing.assert_allclose(got, penalized_probs(logits, window, **{**kw, "repeat_last_n": -1}), rtol=1e-12)
    untouched = np.setdiff1d(np.arange(40), window)
    base = penalized_probs(logits, [])
    np.testing.assert_allclose(got[untouched] / got[untouched].sum(), base[untouched] / base[untouched].sum(),
                               rtol=1e-12)


def test_repeat_penalty_divides_positive_multiplies_negative():
    logits = np.array([2.0, -2.0, 0.0, 1.0])  # token 3 is not in the history
    got = penalized_probs(logits, [0, 1, 2], repeat_penalty=2.0)
    want = np.exp([1.0, -4.0, 0.0, 1.0])
    np.testing.assert_allclose(got, want / want.sum(), rtol=1e-12)


def test_history_out_of_range():
    s = Sampler(SamplingParams(repeat_penalty=1.1))
    with pytest.raises(ValueError, match="history"):
        s.sample(np.zeros(5), [0, 5])
    with pytest.raises(ValueError, match="history"):
        s.sample(np.zeros(5), [-1])


# ---- (f) every invalid parameter raises ValueError naming it ----------------------------------------

@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("temperature", math.nan), ("temperature", math.inf), ("temperature", "hot"),
    ("top_k", -1), ("top_k", 1.5), ("top_k", True), ("top_k", None),
    ("top_p", 0.0), ("top_p", -0.1), ("top_p", 1.01), ("top_p", math.nan),
    ("min_p", -0.01), ("min_p", 1.0), ("min_p", 2.0), ("min_p", math.nan),
    ("repeat_penalty", 0.0), ("repeat_penalty", -1.0), ("repeat_penalty", math.inf),
    ("repeat_last_n", -2), ("repeat_last_n", 2.5), ("repeat_last_n", None),
    ("frequency_penalty", math.nan), ("frequency_penalty", -math.inf), ("frequency_penalty", "0"),
    ("presence_penalty", math.nan), ("presence_penalty", math.inf),
    ("seed", -1), ("seed", 1.5), ("seed", "0"),
])
def test_invalid_params(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


@pytest.mark.parametrize("field, value", [
    ("temperature", 0), ("top_k", 0), ("top_p", 1), ("min_p", 0), ("repeat_penalty", 0.5),
    ("repeat_last_n", -1), ("frequency_penalty", -2.0), ("presence_penalty", 2), ("seed", 0),
    ("seed", np.int64(3)),
])
def test_edge_params_accepted(field, value):
    SamplingParams(**{field: value})


@pytest.mark.parametrize("logits", [np.zeros((2, 3)), np.zeros(0), np.array([0.0, np.nan]),
                                    np.array([0.0, np.inf]), np.full(4, -np.inf)])
def test_invalid_logits(logits):
    with pytest.raises(ValueError, match="logits"):
        Sampler().sample(logits, [])


def test_params_type():
    with pytest.raises(TypeError):
        Sampler({"temperature": 0})


# ---- StopMatcher --------------------------------------------------------------------------------------

def run(matcher, pieces):
    """Feed every piece; return (all emitted text incl. finish(), stopped)."""
    out, stopped = [], False
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
    out.append(matcher.finish())
    return "".join(out), stopped


def expected(text, stops):
    """Naive oracle: grow the text one character at a time; at the first length where some stop
    string is a suffix, cut before the longest such stop string."""
    for n in range(1, len(text) + 1):
        ends = [s for s in stops if text[:n].endswith(s)]
        if ends:
            return text[:n - max(map(len, ends))], True
    return text, False


TEXTS = [
    ("Hello world<|end|> more text", ["<|end|>"]),
    ("a\n\nb</s>c", ["</s>", "\n\n"]),
    ("xaaab", ["aab"]),
    ("abce", ["abcd", "bce"]),
    ("abcd", ["abcd", "bc"]),
    ("日本語の文。🙂終わり。\nあと", ["🙂終わり", "。\n"]),
    ("no stop here <|en", ["<|end|>"]),
    ("<|end|>", ["<|end|>"]),
]


@pytest.mark.parametrize("text, stops", TEXTS)
def test_stop_split_at_every_position(text, stops):
    want = expected(text, stops)
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            assert run(StopMatcher(stops), [text[:i], text[i:j], text[j:]]) == want, (i, j)
    assert run(StopMatcher(stops), list(text)) == want  # one character at a time


def test_stop_random_streams(rng):
    """Random text over a small alphabet, random stops and random splits, against the oracle; after
    every feed, only a possible start of a stop string is held back."""
    for _ in range(300):
        text = "".join(rng.choice(list("abé🙂"), rng.integers(0, 30)))
        stops = ["".join(rng.choice(list("abé🙂"), rng.integers(1, 5))) for _ in range(rng.integers(1, 4))]
        cuts = np.sort(rng.integers(0, len(text) + 1, rng.integers(0, 6)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        m, fed, emitted = StopMatcher(stops), "", ""
        for piece in pieces:
            out, stopped = m.feed(piece)
            fed, emitted = fed + piece, emitted + out
            if stopped:
                break
            held = fed[len(emitted):]
            assert fed.startswith(emitted)
            assert held == "" or any(len(s) > len(held) and s.startswith(held) for s in stops)
        assert emitted + m.finish() == expected(text, stops)[0]
        assert m.stopped == expected(text, stops)[1]


def test_stop_holdback_released():
    m = StopMatcher(["<|end|>"])
    assert m.feed("abc<|en") == ("abc", False)
    assert m.feed("x") == ("<|enx", False)
    assert m.feed("<") == ("", False)
    assert m.finish() == "<"  # the end of generation releases a held prefix
    assert m.finish() == ""


def test_stop_after_hit():
    m = StopMatcher(["\n\n", "</s>"])
    assert m.feed("one\n") == ("one", False)
    assert m.feed("\ntwo</s>") == ("", True)
    assert m.hit == "\n\n" and m.stopped
    assert m.feed("more") == ("", True) and m.finish() == ""


def test_stop_none_passes_through():
    for stops in (None, [], ()):
        m = StopMatcher(stops)
        assert m.feed("a</s>") == ("a</s>", False) and m.finish() == ""


def test_stop_single_string():
    assert run(StopMatcher("STOP"), ["aST", "OPb"]) == ("a", True)


@pytest.mark.parametrize("bad", [[""], ["ok", ""], [None], [3]])
def test_stop_invalid(bad):
    with pytest.raises(ValueError, match="stop"):
        StopMatcher(bad)


def test_doctests():
    result = doctest.testmod(sampling, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ---- the native chain: awkward sizes, ties, top_k past V, history edges, the draw ---------------------

NATIVE_PARAMS = ["defaults", "greedy_penalized", "plain_softmax", "top_p", "hot_all_filters", "penalties",
                 "penalties_whole_history"]


# Gemma 3's 262,144-token vocabulary with three settings only: the reference's full sorts are slow there.
NATIVE_SIZES = [(v, n) for v in (1, 2, 17, 49152) for n in NATIVE_PARAMS] + \
    [(262144, n) for n in ("defaults", "penalties", "greedy_penalized")]


@pytest.mark.parametrize("vocab,name", NATIVE_SIZES)
@pytest.mark.parametrize("kind", ["normal", "ties", "neg_inf"])
def test_native_sizes_match_reference(rng, vocab, kind, name):
    params = PARAMS[name]
    logits, history = make_logits(rng, vocab, kind), make_history(rng, vocab, 64)
    got = Sampler(SamplingParams(**params)).probs(logits, history)
    want = ref.chain(logits, history, params)
    np.testing.assert_array_equal(got > 0, want > 0)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("top_k", [1, 2, 3, 16, 17, 18, 100])
@pytest.mark.parametrize("values", [1, 2, 3])
def test_many_ties(rng, values, top_k):
    """Only a few distinct logits, so every cut (top_k, top_p, the max) falls inside a tie."""
    logits = rng.integers(0, values, 17).astype(np.float32)
    for params in (dict(top_k=top_k, temperature=1.0, top_p=1.0, min_p=0.0), dict(top_k=top_k, top_p=0.5),
                   dict(top_k=top_k, temperature=0.0)):
        got = Sampler(SamplingParams(**params)).probs(logits, [])
        want = ref.chain(logits, [], params)
        np.testing.assert_array_equal(got > 0, want > 0)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    kept = Sampler(SamplingParams(top_k=top_k, temperature=1.0, top_p=1.0, min_p=0.0)).probs(logits, []) > 0
    order = np.lexsort((np.arange(17), -logits))  # logit high to low, then id low to high
    assert set(np.flatnonzero(kept)) == set(order[:top_k])  # a tie at the cut keeps the lowest ids


@pytest.mark.parametrize("vocab", [1, 2, 17, 1000])
@pytest.mark.parametrize("top_k", ["V", "V+1", 10**9, 2**70])
def test_top_k_past_vocab_keeps_all(rng, vocab, top_k):
    k = {"V": vocab, "V+1": vocab + 1}.get(top_k, top_k)
    logits = make_logits(rng, vocab, "normal")
    params = dict(temperature=1.0, top_k=k, top_p=1.0, min_p=0.0)
    got = Sampler(SamplingParams(**params)).probs(logits, [])
    np.testing.assert_allclose(got, ref.softmax(logits.astype(np.float64)), rtol=1e-12, atol=1e-15)
    assert np.all(got > 0)


@pytest.mark.parametrize("vocab", [1, 2, 17, 49152])
def test_history_repeats_and_range_ends(rng, vocab):
    """Ids 0 and V-1, each many times, among others; penalties that raise as well as lower logits."""
    logits = make_logits(rng, vocab, "normal")
    history = [0, vocab - 1] * 10 + list(rng.integers(0, vocab, 20)) + [vocab - 1, 0, 0]
    for params in (dict(repeat_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.6, repeat_last_n=16),
                   dict(repeat_penalty=0.5, frequency_penalty=-0.7, presence_penalty=-1.0, repeat_last_n=-1, top_k=3),
                   dict(repeat_penalty=2.0, repeat_last_n=1000, top_k=0, top_p=1.0, min_p=0.0, temperature=1.0)):
        got = Sampler(SamplingParams(**params)).probs(logits, history)
        want = ref.chain(logits, history, params)
        np.testing.assert_array_equal(got > 0, want > 0)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    s = Sampler(SamplingParams(repeat_penalty=1.1))
    for bad in ([vocab], [0, vocab - 1, vocab], [-1, 0], [2**40]):
        with pytest.raises(ValueError, match=r"history holds token ids outside \[0, %d\)" % vocab):
            s.sample(logits, bad)
    Sampler().sample(logits, [vocab, -1])  # penalties off: the history is not read


@pytest.mark.parametrize("vocab", [1, 2, 17, 49152, 262144])
def test_greedy_is_argmax_of_penalized(rng, vocab):
    """temperature 0 = np.argmax of the penalized logits (first, i.e. lowest id, of a tie)."""
    for kind in ("normal", "ties", "neg_inf"):
        logits = make_logits(rng, vocab, kind)
        history = make_history(rng, vocab, 64)
        kw = dict(repeat_penalty=1.5, frequency_penalty=0.25, presence_penalty=0.5, repeat_last_n=32)
        x = ref.penalties(logits, history, **kw)
        s = Sampler(SamplingParams(temperature=0, **kw))
        assert s.sample(logits, history) == np.argmax(x)
        x = logits.astype(np.float64)
        x[vocab // 2] = x[vocab - 1] = x.max()  # a tie at the max, lowest id wins
        assert Sampler(SamplingParams(temperature=0)).sample(x, []) == np.argmax(x) == min(np.flatnonzero(x == x.max()))


def test_draws_follow_the_generator(rng):
    """Each draw takes the generator's next u and the first token, in rank order, whose cumulative
    probability reaches u * total; a step that keeps one token takes no draw."""
    s = Sampler(SamplingParams(seed=42, top_p=0.9))
    u = np.random.default_rng(42)
    for step in range(300):
        logits = make_logits(rng, 50, "ties" if step % 3 else "normal")
        if step % 4 == 0:
            logits[rng.integers(50)] = 100.0  # one token holds all the mass: top_p keeps it alone
        p = s.probs(logits, [])
        order = [t for t in np.lexsort((np.arange(50), -logits.astype(np.float64))) if p[t] > 0]
        if len(order) == 1:
            want = order[0]
        else:
            cdf = np.cumsum(p[order])
            want = order[int(np.searchsorted(cdf, u.random() * cdf[-1]))]
        assert s.sample(logits, []) == want


def test_logits_layouts_and_dtypes(rng):
    """float32 and float64 are read in place; strided views, lists, ints and Tensors give the same."""
    import lmblocks as lb

    x32 = make_logits(rng, 1000, "normal")
    x64 = x32.astype(np.float64)
    s = Sampler(SamplingParams(top_k=0, top_p=0.9))
    want = s.probs(x64, [])
    np.testing.assert_array_equal(s.probs(x32, []), want)
    np.testing.assert_array_equal(s.probs(np.stack([x32, x32], 1)[:, 1], []), want)
    np.testing.assert_array_equal(s.probs(list(x64), []), want)
    np.testing.assert_array_equal(s.probs(lb.asarray(x32), []), want)
    ints = np.arange(20) % 7
    np.testing.assert_array_equal(s.probs(ints, []), s.probs(ints.astype(np.float64), []))
    with pytest.raises(ValueError, match="logits"):
        s.sample(np.array(["a", "b"]), [])

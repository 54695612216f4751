"""Looking inside a running model: capture activations by name, replace a block's output.

Names are block paths plus a point: ``layers.3.attn`` is layer 3's attention block, ``layers.3`` the
whole layer, ``norm`` the final norm. Every block has the points ``in`` and ``out`` (the default);
attention adds ``probs`` (attention probabilities), an MoE block ``router`` (router logits),
``experts`` (chosen experts) and ``expert_weights``, Mamba and Mamba2 blocks ``dt`` (the step Δ of each
token, per head or channel, after softplus) and ``state_norm`` (the L2 norm of each head's or channel's
SSM state after each token; while it is captured the scan runs token by token). In patterns ``*`` matches within one name and
``**`` across names: ``layers.*.moe.router``, ``**.attn.probs``.

>>> with model.capture("layers.3.attn.probs", "layers.*.out") as acts:   # doctest: +SKIP
...     model.logits(ids)
>>> acts["layers.3.attn.probs"].shape                                      # doctest: +SKIP
(7, 9, 7)

Captured arrays are token-major: row i belongs to the i-th token run through the model while capturing
(prompt tokens, then each generated token), with ``acts.positions(name)`` and ``acts.sequences(name)``
saying which. ``probs`` has shape (tokens, heads, key positions), 0 where a key was not visible.
When no hook is set, nothing of this runs: a pass costs one pointer test per block.
"""

from __future__ import annotations

import inspect
from typing import Callable, Iterable, Mapping

import numpy as np

from . import _core

POINTS = {"in": None, "out": None, "probs": ("Attention",), "router": ("MoE",), "experts": ("MoE",),
          "expert_weights": ("MoE",), "dt": ("Mamba", "Mamba2"), "state_norm": ("Mamba", "Mamba2")}


def named_blocks(lm) -> dict:
    """Every block of a native model by path (``layers.0``, ``layers.0.attn`` ...), in order."""
    out = {}

    def walk(b, path):
        out[path] = b
        for name, c in b.named_children:
            walk(c, f"{path}.{name}")

    walk(lm.body, "layers")
    if lm.norm is not None:
        walk(lm.norm, "norm")
    return out


glob_match = _core.nn.glob_match  # the native hooks' own matching and splitting, so both sides agree


def split(pattern: str) -> tuple[str, str]:
    """(block glob, point) of a hook pattern, as the native hooks split it."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"a hook pattern must be a non-empty str, got {pattern!r}")
    return _core.nn.split_pattern(pattern)


def check_patterns(lm, patterns: Iterable[str], what: str) -> None:
    """ValueError unless each pattern names at least one block that has its point."""
    blocks = named_blocks(lm)
    for pat in patterns:
        block, point = split(pat)
        hits = [p for p in blocks if glob_match(block, p)]
        if not hits:
            some = ", ".join(list(blocks)[:6])
            raise ValueError(f"{what}: pattern {pat!r} matches no block; paths look like {some} ... "
                             "(model.blocks() lists them)")
        kinds = POINTS[point]
        if kinds is not None and not any(blocks[p].kind in kinds for p in hits):
            raise ValueError(f"{what}: point {point!r} belongs to {' and '.join(kinds)} blocks, but {pat!r} matches "
                             f"{sorted({blocks[p].kind for p in hits})}")


class Activations(Mapping):
    """What a :meth:`Model.capture` block recorded, by concrete name (``layers.3.attn.probs``).

    ``acts[name]`` is one array, the forward passes joined along the token axis (attention
    probabilities padded with zeros to the longest key range). A glob (``acts["layers.*.out"]``) gives
    a dict of the matching names. :meth:`positions` and :meth:`sequences` give each row's token position
    and sequence id; :meth:`calls` the per-pass arrays.
    """

    def __init__(self, patterns):
        self.patterns = tuple(patterns)
        self._parts: dict[str, list] = {}

    def _add(self, records) -> None:
        for key, value, pos, seq in records:
            self._parts.setdefault(key, []).append((value, pos, seq))

    def calls(self, name: str) -> list[np.ndarray]:
        return [v for v, _, _ in self._get(name)]

    def positions(self, name: str) -> np.ndarray:
        return np.concatenate([p for _, p, _ in self._get(name)])

    def sequences(self, name: str) -> np.ndarray:
        return np.concatenate([s for _, _, s in self._get(name)])

    def _get(self, name):
        try:
            return self._parts[name]
        except KeyError:
            raise KeyError(f"{name!r} was not captured; captured: {sorted(self._parts)}") from None

    def __getitem__(self, name: str):
        if "*" in name:
            return {k: self[k] for k in self._parts if glob_match(name, k)}
        vals = self.calls(name)
        if len(vals) == 1:
            return vals[0]
        if vals[0].ndim == 3 and name.endswith(".probs"):  # pad the key axis
            S = max(v.shape[2] for v in vals)
            vals = [np.pad(v, ((0, 0), (0, 0), (0, S - v.shape[2]))) for v in vals]
        return np.concatenate(vals, axis=0)

    def __iter__(self):
        return iter(self._parts)

    def __len__(self):
        return len(self._parts)

    def __repr__(self):
        return f"Activations({sorted(self._parts)})"


def replacement(fn: Callable) -> Callable:
    """The native hook's callback for a user's ``fn(out)`` or ``fn(out, info)`` (info: path, positions)."""
    try:
        n = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in inspect.signature(fn).parameters.values())
        varargs = any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        n, varargs = 1, False
    two = n >= 2 or varargs

    class Info:
        __slots__ = ("path", "positions")

        def __init__(self, path, positions):
            self.path, self.positions = path, positions

        def __repr__(self):
            return f"Info(path={self.path!r}, positions={self.positions!r})"

    def call(path, out, pos):
        r = fn(out, Info(path, pos)) if two else fn(out)
        if r is None or r is out:
            return None
        r = np.asarray(r, dtype=np.float32)
        if r.shape != out.shape:
            raise ValueError(f"hook on {path}: the replacement has shape {r.shape}; the block's output has {out.shape}")
        return r

    return call


class HookSet:
    """The captures and replacements active on one model; builds the native Hooks for each pass."""

    def __init__(self):
        self.captures: list[Activations] = []
        self.replacements: list[tuple[str, Callable]] = []

    def native(self):
        if not self.captures and not self.replacements:
            return None
        h = _core.nn.Hooks()
        for pat in dict.fromkeys(p for a in self.captures for p in a.patterns):
            h.capture(pat)
        for pat, fn in self.replacements:
            h.replace(pat, fn)
        return h

    def collect(self, h) -> None:
        if h is None or not self.captures:
            return
        recs = h.records()
        for a in self.captures:
            pats = [split(p) for p in a.patterns]

            def wanted(key: str) -> bool:  # keys are "path.point"; a point is one name
                path, _, point = key.rpartition(".")
                return any(point == pt and glob_match(block, path) for block, pt in pats)

            a._add([r for r in recs if wanted(r[0])])


__all__ = ["Activations", "POINTS", "named_blocks", "split", "check_patterns"]

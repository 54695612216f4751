"""What a model costs: parameters, bytes by dtype, FLOPs, KV cache and the bytes a decode step reads.

Counted from the native blocks themselves (any model: loaded or built with :mod:`lmblocks.nn`), per
top-level part (embedding, each layer, final norm, head). Definitions, per generated token:

- FLOPs: 2 per multiply-add of every matrix the token goes through (an MoE: its router, shared experts
  and ``top_k`` of its experts), plus attention over ``context`` earlier positions (QK and PV:
  4 * heads * head_dim * keys seen, keys capped by a sliding window).
- KV bytes per token: what one more position of context adds to the cache (keys and values of every
  attention layer in the cache's dtype; a sliding-window layer stops growing at its window).
- Decode bytes: the weight bytes one decode step reads (every weight, an MoE's experts counted at
  ``top_k / n_experts``, the embedding as one row) plus the KV cache read at ``context``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .hooks import named_blocks


@dataclass
class Part:
    name: str
    kind: str
    params: int = 0
    bytes: int = 0
    bytes_by_dtype: dict = field(default_factory=dict)
    flops: float = 0.0  # per token, at the summary's context
    kv_bytes_per_token: int = 0
    kv_bytes: int = 0  # at the summary's context
    state_bytes: int = 0  # recurrent state per sequence (Mamba: conv window + SSM state), whatever the context
    decode_bytes: float = 0.0


def _numel(t) -> int:
    n = 1
    for s in t.shape:
        n *= int(s)
    return n


def _add_tensor(part: Part, t, active: float = 1.0, matrix: bool = True, seen: set | None = None) -> None:
    """Count t in part; a tensor already in ``seen`` (a weight shared by several blocks, Zamba2's shared
    transformer) adds its FLOPs and decode reads again but not its parameters or bytes."""
    n = _numel(t)
    ptr = t.data_ptr if hasattr(t, "data_ptr") else np.asarray(t).__array_interface__["data"][0]
    key = (ptr, int(t.nbytes))
    if seen is None or key not in seen:
        part.params += n
        part.bytes += int(t.nbytes)
        part.bytes_by_dtype[t.dtype] = part.bytes_by_dtype.get(t.dtype, 0) + int(t.nbytes)
        if seen is not None:
            seen.add(key)
    part.decode_bytes += t.nbytes * active
    if matrix and len(t.shape) >= 2:
        part.flops += 2.0 * n * active


def _describe(b) -> str:
    if b.kind == "Attention":
        s = f"Attention {b.n_heads}/{b.n_kv_heads}x{b.head_dim}"
        if b.window:
            s += f" w{b.window}"
        if not b.rope:
            s += " nope"
        return s + ("" if b.causal else " bidir")
    if b.kind == "MLP":
        w = b.weights()
        return f"MLP {w['up_proj'].shape[0]}" + ("" if b.gated else " plain")
    if b.kind == "MoE":
        return f"MoE {b.top_k}/{b.n_experts}" + (" +shared" if b.shared is not None else "")
    if b.kind == "Mamba2":
        return f"Mamba2 {b.n_heads}x{b.head_dim} N{b.state_size}"
    if b.kind == "Mamba":
        return f"Mamba {b.d_inner} N{b.state_size}"
    return b.kind


def parts(model, context: int = 0, kv_dtype: str = "f32") -> list[Part]:
    lm = model.lm
    kv_elt = 2 if kv_dtype == "f16" else 4
    V, D = lm.embed_tokens.shape
    out = []
    emb = Part("embed", f"Embedding {V}x{D}")
    _add_tensor(emb, lm.embed_tokens, active=1.0 / V, matrix=False)
    out.append(emb)
    blocks = named_blocks(lm)
    seen: set = set()
    tops = [p for p in blocks if p.count(".") == 1] if lm.body.kind == "Sequential" else ["layers"]
    for top in tops:
        inner = {p: b for p, b in blocks.items() if p == top or p.startswith(top + ".")}
        kinds = [_describe(b) for p, b in inner.items() if b.kind in ("Attention", "MLP", "MoE", "Mamba", "Mamba2")
                 and not p.endswith(".shared")]
        part = Part(top, " + ".join(kinds) or blocks[top].kind)
        for p, b in inner.items():
            active = 1.0
            if b.kind == "MoE":
                active = b.top_k / b.n_experts
            for name, t in b.weights().items():
                three_d = len(t.shape) == 3
                _add_tensor(part, t, active=active if three_d else 1.0, seen=seen)
            if b.kind in ("Mamba", "Mamba2"):
                conv_dim = b.d_inner + (2 * b.n_groups * b.state_size if b.kind == "Mamba2" else 0)
                state = 4 * (conv_dim * (b.conv_kernel - 1) + b.d_inner * b.state_size)
                part.state_bytes += state
                part.decode_bytes += 2 * state  # read and written each step
            if b.kind == "Attention":
                per_tok = 2 * b.n_kv_heads * b.head_dim * kv_elt
                keys = min(context, b.window) if b.window else context
                part.kv_bytes_per_token += per_tok
                part.kv_bytes += per_tok * keys
                part.decode_bytes += per_tok * keys
                part.flops += 4.0 * b.n_heads * b.head_dim * keys
        out.append(part)
    if lm.norm is not None:
        n = Part("norm", lm.norm.kind)
        for t in lm.norm.weights().values():
            _add_tensor(n, t)
        out.append(n)
    head = Part("head", "tied to embed" if lm.tied else f"Linear {D}->{V}")
    if lm.tied:
        head.flops = 2.0 * V * D
        head.decode_bytes = float(lm.embed_tokens.nbytes)
    else:
        _add_tensor(head, lm.lm_head)
    out.append(head)
    return out


def _si(x: float, unit: str = "") -> str:
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f} {suf}{unit}"
    return f"{x:.0f} {unit}".rstrip()


def _bytes(x: float) -> str:
    for div, suf in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(x) >= div:
            return f"{x / div:.2f} {suf}"
    return f"{x:.0f} B"


def _groups(ps: list[Part]) -> list[tuple[Part, int, str]]:
    """Consecutive layers that cost the same, as (first part, count, name range)."""
    out: list[tuple[Part, int, str]] = []
    sig = lambda p: (p.kind, p.params, p.bytes, p.flops, p.kv_bytes_per_token, p.decode_bytes)  # noqa: E731
    for p in ps:
        if out and p.name.startswith("layers.") and out[-1][0].name.startswith("layers.") and sig(out[-1][0]) == sig(p):
            first, n, _ = out[-1]
            out[-1] = (first, n + 1, f"{first.name}-{p.name.rsplit('.', 1)[1]}")
        else:
            out.append((p, 1, p.name))
    return out


def table(ps: list[Part], context: int) -> str:
    """The parts as text; runs of identical layers on one line (count, per-layer figures)."""
    head = (f"{'part':<14} {'blocks':<38} {'x':>3} {'params':>10} {'bytes':>11} {'FLOPs/tok':>11} {'KV B/tok':>9} "
            f"{'decode B/tok':>12}")
    lines = [head, "-" * len(head)]
    for p, n, name in _groups(ps):
        lines.append(f"{name:<14} {p.kind[:38]:<38} {n:>3} {_si(p.params):>10} {_bytes(p.bytes):>11} {_si(p.flops):>11} "
                     f"{_bytes(p.kv_bytes_per_token) if p.kv_bytes_per_token else '-':>9} {_bytes(p.decode_bytes):>12}")
    tot = Part("total", "")
    for p in ps:
        tot.params += p.params
        tot.bytes += p.bytes
        tot.flops += p.flops
        tot.kv_bytes_per_token += p.kv_bytes_per_token
        tot.kv_bytes += p.kv_bytes
        tot.state_bytes += p.state_bytes
        tot.decode_bytes += p.decode_bytes
        for k, v in p.bytes_by_dtype.items():
            tot.bytes_by_dtype[k] = tot.bytes_by_dtype.get(k, 0) + v
    lines.append("-" * len(head))
    lines.append(f"{'total':<14} {'':<38} {'':>3} {_si(tot.params):>10} {_bytes(tot.bytes):>11} {_si(tot.flops):>11} "
                 f"{_bytes(tot.kv_bytes_per_token):>9} {_bytes(tot.decode_bytes):>12}")
    lines.append("bytes by dtype: " + ", ".join(f"{k} {_bytes(v)}" for k, v in sorted(tot.bytes_by_dtype.items(),
                                                                                       key=lambda kv: -kv[1])))
    state = f" + recurrent state {_bytes(tot.state_bytes)} per sequence" if tot.state_bytes else ""
    lines.append(f"at context {context}: KV cache {_bytes(tot.kv_bytes)}{state}; FLOPs and decode bytes are per token "
                 f"generated there (summary(context=n) for another)")
    return "\n".join(lines)


def totals(ps: list[Part]) -> dict:
    keys = ("params", "bytes", "flops", "kv_bytes_per_token", "kv_bytes", "state_bytes", "decode_bytes")
    return {k: sum(getattr(p, k) for p in ps) for k in keys}


__all__ = ["Part", "parts", "table", "totals"]

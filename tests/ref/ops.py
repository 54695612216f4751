"""Float64 NumPy references for lmblocks.ops, one function per op, same names and arguments.

Every function takes arrays of any float dtype (float16, bfloat16 via ml_dtypes, float32), computes in
float64 on the exact values it was given and returns float64. Written from the formulas (papers,
PyTorch docs, Hugging Face's rope_scaling rules); independent of lmblocks.
"""

from __future__ import annotations

import math

import numpy as np

_erf = np.frompyfunc(math.erf, 1, 1)


def f64(x):
    """The exact values of ``x`` (any float dtype, bfloat16 included) as float64."""
    return np.asarray(x).astype(np.float64)


def matmul(a, b):
    """``a @ b`` with np.matmul semantics (batch broadcast, 1-D operands), in float64."""
    return np.matmul(f64(a), f64(b))


def linear(x, weight, bias=None):
    """``x @ weight.T + bias``; x (..., K), weight (N, K), bias (N,) or None -> (..., N)."""
    y = f64(x) @ f64(weight).T
    return y if bias is None else y + f64(bias)


def rms_norm(x, weight=None, *, eps=1e-6, offset=0.0):
    """RMSNorm (Zhang & Sennrich 2019): ``x / sqrt(mean(x**2, -1) + eps) * (offset + weight)``.

    Without a weight there is no scale (offset is not used).
    """
    x = f64(x)
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y if weight is None else y * (offset + f64(weight))


def layer_norm(x, weight=None, bias=None, *, eps=1e-5):
    """LayerNorm (Ba et al. 2016): ``(x - mean) / sqrt(var + eps) * weight + bias``, biased variance."""
    x = f64(x)
    mu = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mu) ** 2, axis=-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if weight is not None:
        y = y * f64(weight)
    if bias is not None:
        y = y + f64(bias)
    return y


def softmax(x, *, axis=-1):
    """``exp(x - max) / sum(exp(x - max))`` along ``axis``; -inf entries get 0."""
    x = f64(x)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def sigmoid(x):
    """``1 / (1 + exp(-x))`` without overflow warnings."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-f64(x)))


def silu(x):
    """SiLU / swish (Hendrycks & Gimpel 2016; Ramachandran et al. 2017): ``x * sigmoid(x)``."""
    x = f64(x)
    return x * sigmoid(x)


def gelu(x, *, approximate="none"):
    """GELU (Hendrycks & Gimpel 2016), as torch.nn.functional.gelu.

    ``"none"``: ``x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))`` with math.erf (exact in float64);
    ``"tanh"``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.
    """
    x = f64(x)
    if approximate == "none":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))
    if approximate == "tanh":
        with np.errstate(over="ignore", invalid="ignore"):
            return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    raise ValueError(f"gelu: unknown approximate {approximate!r}")


def _split(gate, up):
    gate = f64(gate)
    if up is None:
        h = gate.shape[-1] // 2
        return gate[..., :h], gate[..., h:]
    return gate, f64(up)


def swiglu(gate, up=None):
    """SwiGLU (Shazeer 2020): ``silu(gate) * up``; ``up=None``: gate is ``[gate | up]`` on its last axis."""
    g, u = _split(gate, up)
    return silu(g) * u


def geglu(gate, up=None, *, approximate="none"):
    """GeGLU (Shazeer 2020): ``gelu(gate) * up``; ``up=None`` splits gate in half as :func:`swiglu`."""
    g, u = _split(gate, up)
    return gelu(g, approximate=approximate) * u


def rope_inv_freq(rotary_dim, *, theta=10000.0, scaling=None):
    """RoPE frequencies (Su et al. 2021) ``theta ** (-2i / rotary_dim)``, i < rotary_dim/2, with
    Hugging Face's ``rope_scaling`` applied (transformers.modeling_rope_utils):

    * ``linear`` (position interpolation): ``inv_freq / factor``.
    * ``llama3``: with ``wavelen = 2 pi / inv_freq``, ``low = L / low_freq_factor`` and
      ``high = L / high_freq_factor`` (L = original_max_position_embeddings): wavelengths above
      ``low`` get ``inv_freq / factor``, below ``high`` are kept, and in between
      ``(1 - s) inv_freq / factor + s inv_freq`` with ``s = (L / wavelen - low_freq_factor) /
      (high_freq_factor - low_freq_factor)``.
    """
    i = np.arange(rotary_dim // 2, dtype=np.float64)
    inv = float(theta) ** (-2.0 * i / rotary_dim)
    kind = "none"
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type", "none")) or "none"
    if kind in ("none", "default"):
        return inv
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv / factor
    if kind == "llama3":
        lo_f = float(scaling.get("low_freq_factor", 1.0))
        hi_f = float(scaling.get("high_freq_factor", 4.0))
        old = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        out = np.where(wavelen > old / lo_f, inv / factor, inv)
        s = (old / wavelen - lo_f) / (hi_f - lo_f)
        medium = (wavelen >= old / hi_f) & (wavelen <= old / lo_f)
        return np.where(medium, (1 - s) * inv / factor + s * inv, out)
    raise ValueError(f"rope: unknown scaling {kind!r}")


def rope(x, positions=None, *, offset=0, theta=10000.0, rotary_dim=None, interleaved=False, scaling=None):
    """Rotary position embedding on x (T, H, hd) or (B, T, H, hd).

    Pair i of each head, ``(x[i], x[i + rd/2])`` (NeoX / HF) or ``(x[2i], x[2i+1])`` (GPT-J,
    ``interleaved``), is rotated by ``angle = pos * inv_freq[i]``:
    ``(a, b) -> (a cos - b sin, b cos + a sin)``. Features past ``rotary_dim`` pass through.
    positions: (T,) or (B, T) ints; None means ``offset + arange(T)``.
    """
    x = f64(x)
    T, hd = x.shape[-3], x.shape[-1]
    rd = rotary_dim or hd
    pos = offset + np.arange(T) if positions is None else np.asarray(positions)
    ang = pos.astype(np.float64)[..., None] * rope_inv_freq(rd, theta=theta, scaling=scaling)  # (.., T, rd/2)
    cos, sin = np.cos(ang)[..., None, :], np.sin(ang)[..., None, :]  # (.., T, 1, rd/2)
    if interleaved:
        a, b = x[..., 0:rd:2], x[..., 1:rd:2]
    else:
        a, b = x[..., : rd // 2], x[..., rd // 2 : rd]
    ra, rb = a * cos - b * sin, b * cos + a * sin
    y = np.array(np.broadcast_to(x, np.broadcast_shapes(x.shape, ra.shape[:-1] + (hd,))))
    if interleaved:
        y[..., 0:rd:2], y[..., 1:rd:2] = ra, rb
    else:
        y[..., : rd // 2], y[..., rd // 2 : rd] = ra, rb
    return y


def embedding(ids, table):
    """Row gather ``table[ids]``: ids (...) ints, table (V, D) -> (..., D)."""
    return f64(table)[np.asarray(ids)]


def add(a, b):
    """``a + b`` with NumPy broadcasting, in float64."""
    return f64(a) + f64(b)


def mul(a, b):
    """``a * b`` with NumPy broadcasting, in float64."""
    return f64(a) * f64(b)


def attention(q, k, v, *, causal=True, window=None, mask=None, scale=None, softcap=None):
    """Scaled dot-product attention (Vaswani et al. 2017) with grouped kv heads (GQA, Ainslie et al. 2023).

    q (T, H, hd) or (B, T, H, hd); k (S, Hkv, hd); v (S, Hkv, hdv), with q's leading B.
    ``scores[h, t, j] = q[t, h] . k[j, h // (H // Hkv)] * scale`` (scale default 1/sqrt(hd)), then
    ``softcap * tanh(scores / softcap)`` (Gemma 2), then ``+ mask``. Query t sits at position
    ``p = S - T + t``; key j is visible when ``j <= p`` (causal) and ``p - j < window`` (or
    ``|p - j| < window`` when not causal). ``out[t, h] = sum_j softmax_j(scores) v[j, h // (H // Hkv)]``
    over the visible keys; a query with no visible key (or all scores -inf) gets zeros.
    """
    q, k, v = f64(q), f64(k), f64(v)
    squeeze = q.ndim == 3
    if squeeze:
        q, k, v = q[None], k[None], v[None]
    B, T, H, hd = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    g = H // Hkv
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)  # kv head of query head h is h // g
    s = np.einsum("bthd,bshd->bhts", q, k) * (1.0 / math.sqrt(hd) if scale is None else scale)
    if softcap:
        s = softcap * np.tanh(s / softcap)
    if mask is not None:
        s = s + f64(mask)
    p = (S - T + np.arange(T))[:, None]
    j = np.arange(S)[None, :]
    visible = np.ones((T, S), bool)
    if causal:
        visible &= j <= p
    if window:
        visible &= (p - j < window) if causal else (np.abs(p - j) < window)
    s = np.where(visible, s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    seen = m > -np.inf
    e = np.exp(s - np.where(seen, m, 0.0))
    w = np.where(seen, e / np.where(seen, e.sum(-1, keepdims=True), 1.0), 0.0)
    out = np.einsum("bhts,bshd->bthd", w, v)
    return out[0] if squeeze else out


def attention_cache(q, k, v, pos, *, window=None, scale=None, softcap=None):
    """Causal `attention` of q (T, H, hd) at positions ``pos ..`` over rings k (Hkv, C, hd), v (Hkv, C, hdv)
    holding position j in row ``j % C``: the keys the queries see, unrolled in position order."""
    T, C = q.shape[0], k.shape[1]
    lo = max(0, pos - window + 1) if window else 0
    rows = np.arange(lo, pos + T) % C
    keys, values = np.swapaxes(f64(k)[:, rows], 0, 1), np.swapaxes(f64(v)[:, rows], 0, 1)  # (S, Hkv, hd)
    return attention(q, keys, values, window=window, scale=scale, softcap=softcap)

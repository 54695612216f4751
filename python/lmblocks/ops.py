"""Native kernels, callable one at a time on NumPy arrays or :class:`lmblocks.Tensor`.

Conventions shared by every op:

* Input first, weights next, options as keywords.
* Floating inputs are float32; float16 and bfloat16 are accepted and converted on the way in.
  Results are float32. Other dtypes raise ``TypeError``.
* NumPy in, NumPy out (a zero-copy view of the native result); Tensor in, Tensor out.
* ``out=`` takes a contiguous, writable float32 array of the result's shape. Elementwise ops
  (norms, softmax, activations, rope, add/mul) may write in place (``out`` is exactly an input); any other
  overlap between ``out`` and an input raises ``ValueError``.
* The GIL is released while a kernel runs; work is split over the lmblocks thread pool
  (:func:`lmblocks.set_num_threads`).

Shape letters: B batch, T query tokens, S key tokens, H heads, Hkv key/value heads, hd head dim.
"""

from __future__ import annotations

from . import _core

_ops = _core.ops

__all__ = [
    "matmul", "linear", "rms_norm", "layer_norm", "softmax", "silu", "gelu", "swiglu", "geglu",
    "rope", "rope_inv_freq", "embedding", "add", "mul", "attention", "attention_cache",
    "causal_conv1d", "selective_scan", "ssd_scan", "rms_norm_gated",
]


def matmul(a, b, *, out=None):
    """Matrix product with NumPy's ``matmul`` semantics, on OpenBLAS sgemm.

    a: (..., M, K), b: (..., K, N) -> (..., M, N); batch dimensions broadcast; a 1-D ``a`` is a
    row vector and a 1-D ``b`` a column vector, dropped from the result as in ``np.matmul``.
    Transposed views are passed to BLAS without a copy.

    >>> import numpy as np, lmblocks as lb
    >>> lb.ops.matmul(np.eye(2, dtype=np.float32), np.arange(4, dtype=np.float32).reshape(2, 2))
    array([[0., 1.],
           [2., 3.]], dtype=float32)
    """
    return _ops.matmul(a, b, out)


def linear(x, weight, bias=None, *, out=None):
    """``x @ weight.T + bias``, weights stored (out_features, in_features) as in PyTorch.

    x: (..., K), weight: (N, K), bias: (N,) or None -> (..., N). The weight may also be f16, bf16 or
    a ggml block type (``q4_0``, ``q4_k`` ... as GGUF files hold them): its rows are converted to f32
    panel by panel inside the call, with no f32 copy of the matrix (the reference path).

    >>> import numpy as np, lmblocks as lb
    >>> w = np.array([[1, 0, 0], [0, 0, 2]], np.float32)
    >>> lb.ops.linear(np.array([1, 2, 3], np.float32), w, np.array([0.5, 0], np.float32))
    array([1.5, 6. ], dtype=float32)
    """
    return _ops.linear(x, weight, bias, out)


def rms_norm(x, weight=None, *, eps=1e-6, offset=0.0, out=None):
    """RMSNorm over the last axis: ``x / sqrt(mean(x**2) + eps) * (offset + weight)``.

    x: (..., D); weight: (D,) or None (no scale, and ``offset`` is unused). ``offset=1.0`` gives
    Gemma's ``(1 + w)`` form without rewriting its weights.

    >>> import numpy as np, lmblocks as lb
    >>> lb.ops.rms_norm(np.array([[3, 4]], np.float32), np.array([1, 2], np.float32), eps=0.0).round(4)
    array([[0.8485, 2.2627]], dtype=float32)
    """
    return _ops.rms_norm(x, weight, float(eps), float(offset), out)


def layer_norm(x, weight=None, bias=None, *, eps=1e-5, out=None):
    """LayerNorm over the last axis: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    x: (..., D); weight, bias: (D,) or None. The variance is the biased one (as PyTorch).

    >>> import numpy as np, lmblocks as lb
    >>> lb.ops.layer_norm(np.array([1, 3], np.float32), eps=0.0)
    array([-1.,  1.], dtype=float32)
    """
    return _ops.layer_norm(x, weight, bias, float(eps), out)


def softmax(x, *, axis=-1, out=None):
    """Numerically stable softmax along ``axis``: ``exp(x - max) / sum(exp(x - max))``.

    >>> import numpy as np, lmblocks as lb
    >>> lb.ops.softmax(np.array([0, 0, np.log(2)], np.float32))
    array([0.25, 0.25, 0.5 ], dtype=float32)
    """
    return _ops.softmax(x, int(axis), out)


def silu(x, *, out=None):
    """SiLU / swish: ``x * sigmoid(x)``, elementwise.

    >>> import numpy as np, lmblocks as lb
    >>> lb.ops.silu(np.array([0, 1], np.float32))
    array([0.       , 0.7310586], dtype=float32)
    """
    return _ops.silu(x, out)


def gelu(x, *, approximate="none", out=None):
    """GELU, elementwise: ``x * Phi(x)`` (``approximate="none"``, the erf form) or the tanh form
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (``approximate="tanh"``), as PyTorch.

    >>> import numpy as np, lmblocks as lb
    >>> lb.ops.gelu(np.array([-1, 0, 1], np.float32)).round(4)
    array([-0.1587,  0.    ,  0.8413], dtype=float32)
    """
    return _ops.gelu(x, approximate, out)


def swiglu(gate, up=None, *, out=None):
    """``silu(gate) * up``. With ``up=None``, ``gate`` holds ``[gate | up]`` along its last axis
    (a fused gate_up projection, as Phi-3) and the result has half its width.

    >>> import numpy as np, lmblocks as lb
    >>> lb.ops.swiglu(np.array([1, 2], np.float32), np.array([2, 0], np.float32))
    array([1.4621172, 0.       ], dtype=float32)
    """
    return _ops.swiglu(gate, up, out)


def geglu(gate, up=None, *, approximate="none", out=None):
    """``gelu(gate) * up`` (Gemma uses ``approximate="tanh"``); ``up=None`` splits ``gate`` in half
    along its last axis, as :func:`swiglu`.

    >>> import numpy as np, lmblocks as lb
    >>> lb.ops.geglu(np.array([1, 1], np.float32))
    array([0.8413447], dtype=float32)
    """
    return _ops.geglu(gate, up, approximate, out)


def rope(x, positions=None, *, offset=0, theta=10000.0, rotary_dim=None, interleaved=False,
         scaling=None, out=None):
    """Rotary position embedding (Su et al. 2021) applied to queries or keys.

    x: (T, H, hd) or (B, T, H, hd). ``positions``: int32/int64 of shape (T,) or (B, T); None means
    ``offset + arange(T)`` (give one or the other: both is a ``ValueError``). Feature pair i of a head rotates by ``pos * inv_freq[i]`` with
    ``inv_freq[i] = theta ** (-2i / rotary_dim)`` (see :func:`rope_inv_freq` for ``scaling``).

    * ``interleaved=False`` pairs ``(i, i + rotary_dim/2)`` (GPT-NeoX / Hugging Face layout);
      ``interleaved=True`` pairs ``(2i, 2i + 1)`` (GPT-J / Meta's original Llama / llama.cpp).
    * ``rotary_dim``: rotate only the first ``rotary_dim`` features of each head (partial rotary,
      e.g. Phi); the rest pass through. Default: all of hd.
    * ``scaling``: a Hugging Face ``rope_scaling`` dict: ``{"rope_type": "linear", "factor": f}`` or
      ``{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
      "original_max_position_embeddings"}``; None for plain RoPE.

    >>> import numpy as np, lmblocks as lb
    >>> x = np.array([[[1, 0]]], np.float32)          # T=1, H=1, hd=2
    >>> lb.ops.rope(x, offset=1, theta=1.0).round(4)  # rotates by 1 radian
    array([[[0.5403, 0.8415]]], dtype=float32)
    """
    if positions is not None and offset:
        raise ValueError("rope: give positions or offset, not both (positions are absolute)")
    return _ops.rope(x, positions, int(offset), float(theta), int(rotary_dim or 0), bool(interleaved),
                     _scaling_args(scaling), out)


def rope_inv_freq(rotary_dim, *, theta=10000.0, scaling=None):
    """The rotary frequencies (rotary_dim // 2,) float64 that :func:`rope` uses, scaling applied.

    >>> import lmblocks as lb
    >>> lb.ops.rope_inv_freq(4, theta=100.0)
    array([1. , 0.1])
    """
    return _ops.rope_inv_freq(int(rotary_dim), float(theta), _scaling_args(scaling))


def _scaling_args(scaling):
    if scaling is None:
        return ("none", 1.0, 1.0, 4.0, 8192.0)
    if not isinstance(scaling, dict):
        raise TypeError(f"rope: scaling must be a dict like Hugging Face's rope_scaling, got {type(scaling).__name__}")
    kind = scaling.get("rope_type", scaling.get("type", "none")) or "none"
    if kind == "default":
        kind = "none"
    return (str(kind), float(scaling.get("factor", 1.0)), float(scaling.get("low_freq_factor", 1.0)),
            float(scaling.get("high_freq_factor", 4.0)),
            float(scaling.get("original_max_position_embeddings", 8192)))


def embedding(ids, table, *, out=None):
    """Gather rows: ``table[ids]``. ids: int32/int64 (...); table: (V, D) float32/float16/bfloat16 or
    a ggml block type (rows dequantized as they are gathered) -> (..., D) float32. An id outside [0, V) raises ``IndexError``. The result is a Tensor when
    ``table`` is one (model weights usually are), else NumPy.

    >>> import numpy as np, lmblocks as lb
    >>> lb.ops.embedding(np.array([2, 0]), np.arange(6, dtype=np.float32).reshape(3, 2))
    array([[4., 5.],
           [0., 1.]], dtype=float32)
    """
    return _ops.embedding(ids, table, out)


def add(a, b, *, out=None):
    """Elementwise ``a + b`` with NumPy broadcasting.

    >>> import numpy as np, lmblocks as lb
    >>> lb.ops.add(np.ones((2, 2), np.float32), np.array([1, 2], np.float32))
    array([[2., 3.],
           [2., 3.]], dtype=float32)
    """
    return _ops.add(a, b, out)


def mul(a, b, *, out=None):
    """Elementwise ``a * b`` with NumPy broadcasting.

    >>> import numpy as np, lmblocks as lb
    >>> lb.ops.mul(np.full((2, 2), 2, np.float32), np.array([[1], [3]], np.float32))
    array([[2., 2.],
           [6., 6.]], dtype=float32)
    """
    return _ops.mul(a, b, out)


def attention(q, k, v, *, causal=True, window=None, mask=None, scale=None, softcap=None, out=None):
    """Scaled dot-product attention with grouped heads, tiled with an online softmax (no (T, S) matrix).

    q: (T, H, hd) or (B, T, H, hd); k: (S, Hkv, hd); v: (S, Hkv, hdv) (with the same leading B);
    float16 k and v are read as stored.
    H must be a multiple of Hkv: query head h reads kv head ``h // (H // Hkv)`` (GQA; Hkv=1 is MQA).
    Query t sits at position ``S - T + t``, so S > T is decoding against a cache.

    * ``causal``: key j is visible when ``j <= S - T + t``; ``causal=False`` is bidirectional.
    * ``window``: sliding window; key j is also required to satisfy ``(S - T + t) - j < window``
      (with ``causal=False`` the window is symmetric: ``|(S - T + t) - j| < window``).
    * ``mask``: additive float mask broadcastable to (B, H, T, S) (or (H, T, S) for 3-D q).
    * ``scale``: default ``1 / sqrt(hd)``. ``softcap``: ``scores = softcap * tanh(scores / softcap)``
      (Gemma 2), applied before the mask.

    A query that can see no key (everything masked) gets zeros. Returns (…, T, H, hdv) float32.

    >>> import numpy as np, lmblocks as lb
    >>> q = k = np.ones((2, 1, 4), np.float32); v = np.array([[[1.0]], [[3.0]]], np.float32)
    >>> lb.ops.attention(q, k, v)[:, 0, 0]           # token 0 sees itself, token 1 averages both
    array([1., 2.], dtype=float32)
    """
    return _ops.attention(q, k, v, bool(causal), int(window or 0), mask, float(scale or 0.0),
                          float(softcap or 0.0), out)


def attention_cache(q, k, v, pos, *, window=None, scale=None, softcap=None, out=None):
    """Causal attention of T queries over one sequence's KV cache, kept as the engine keeps it.

    q: (T, H, hd), the queries at positions ``pos .. pos + T - 1``. k: (Hkv, C, hd), v: (Hkv, C, hdv),
    float32 or float16 (read as stored): rings holding positions ``0 .. pos + T - 1``, position j in
    row ``j % C`` (``nn.KVCache.layer(i)`` gives them as (S, Hkv, C, hd); pass one sequence's slice).
    C must hold every key the queries see. ``window``, ``scale`` and ``softcap`` as in `attention`.
    Returns (T, H, hdv) float32, equal to ``attention(q, keys, values, window=window, ...)`` over the
    unrolled keys.

    >>> import numpy as np, lmblocks as lb
    >>> k = np.zeros((1, 2, 4), np.float16); v = np.array([[[5.0], [1.0]]], np.float16)  # ring of C=2
    >>> lb.ops.attention_cache(np.ones((1, 1, 4), np.float32), k, v, pos=2, window=2)[:, 0, 0]  # keys 1, 2
    array([3.], dtype=float32)
    """
    return _ops.attention_cache(q, k, v, int(pos), int(window or 0), float(scale or 0.0), float(softcap or 0.0), out)


# ---- State-space model kernels (Mamba, Mamba2) --------------------------------------------------------
# Defined as transformers' modeling_mamba.py / modeling_mamba2.py compute them. A ``state`` argument is a
# contiguous, writable float32 array, read as the state before the call and overwritten with the state
# after it, so a prefill followed by one-token calls equals one long call; None means zeros.


def causal_conv1d(x, weight, bias=None, *, state=None, activation="silu"):
    """Depthwise causal convolution over time (Mamba's ``conv1d``), then SiLU.

    x: (T, C); weight: (C, K) (transformers' ``conv1d.weight.squeeze(1)``); bias: (C,) or None.
    ``y[t, c] = bias[c] + sum_k weight[c, k] * in[t - (K-1) + k, c]``, where ``in`` is ``state`` followed
    by ``x`` along time. state: (C, S) with S >= K-1, the S inputs before x (transformers' conv cache
    keeps S = K), updated in place to the last S inputs. ``activation``: "silu" (or "swish") or None.
    Returns (T, C) float32.

    >>> import numpy as np, lmblocks as lb
    >>> x = np.array([[1], [2], [3]], np.float32); w = np.array([[1, 10]], np.float32)
    >>> state = np.zeros((1, 1), np.float32)
    >>> lb.ops.causal_conv1d(x, w, state=state, activation=None)[:, 0]   # 10 x_t + x_{t-1}
    array([10., 21., 32.], dtype=float32)
    >>> state
    array([[3.]], dtype=float32)
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: activation must be 'silu', 'swish' or None, got {activation!r}")
    return _ops.causal_conv1d(x, weight, bias, state, activation is not None)


def selective_scan(x, dt, A, B, C, D=None, z=None, *, dt_bias=None, state=None, dt_softplus=True):
    """Mamba's selective scan (transformers' ``mamba_selective_scan``), token by token in float32.

    x, dt: (T, Dm); A: (Dm, N), already ``-exp(A_log)``; B, C: (T, N); D, dt_bias: (Dm,) or None;
    z: (T, Dm) gate or None; state: (Dm, N) or None. With ``dt' = softplus(dt + dt_bias)``::

        h = exp(dt' * A) * h + dt' * B[t] * x[t]      # (Dm, N)
        y[t] = (h @ C[t] + D * x[t]) * silu(z[t])

    Returns y (T, Dm) float32; ``state`` ends as the last h.

    >>> import numpy as np, lmblocks as lb
    >>> one = np.ones((2, 1), np.float32)
    >>> lb.ops.selective_scan(one, one, -one[:1], one, one, dt_softplus=False)[:, 0].round(4)  # h = e^-1 h + 1
    array([1.    , 1.3679], dtype=float32)
    """
    return _ops.selective_scan(x, dt, A, B, C, D, z, dt_bias, state, bool(dt_softplus))


def ssd_scan(x, dt, A, B, C, D=None, *, dt_bias=None, state=None, chunk_size=256, dt_softplus=True,
             dt_limit=(0.0, float("inf"))):
    """Mamba2's state-space duality scan (transformers' ``mamba2_chunk_scan`` and
    ``mamba2_selective_state_update``), in float32.

    x: (T, H, P) heads of P features; dt: (T, H); A: (H,), already ``-exp(A_log)``; B, C: (T, G, N)
    with H a multiple of G, head h reading group ``h // (H // G)``; D: (H,) or (H, P) or None;
    dt_bias: (H,) or None; state: (H, P, N) or None. With
    ``dt' = clip(softplus(dt + dt_bias), *dt_limit)``, per head::

        h = exp(dt' * A) * h + dt' * outer(x[t], B[t])     # (P, N)
        y[t] = h @ C[t] + D * x[t]

    ``chunk_size`` > 1 (and T > 1) runs the chunked matrix form: within a chunk y is a masked
    ``(C B^T ∘ decay) @ (dt x)`` product plus the chunk's start state read through C, and the state is
    carried across chunks. ``chunk_size`` 0 or 1 runs the recurrence above token by token (transformers
    runs that for T = 1; it does not apply ``dt_limit`` there, which the default limit makes moot).
    Returns y (T, H, P) float32; the gate ``z`` of a Mamba2 layer goes to :func:`rms_norm_gated`.

    >>> import numpy as np, lmblocks as lb
    >>> x = np.ones((3, 1, 1), np.float32); b = np.ones((3, 1, 1), np.float32)
    >>> y = lb.ops.ssd_scan(x, np.ones((3, 1), np.float32), np.zeros(1, np.float32), b, b, dt_softplus=False)
    >>> y[:, 0, 0]    # A = 0: h sums dt x B
    array([1., 2., 3.], dtype=float32)
    """
    lo, hi = dt_limit
    return _ops.ssd_scan(x, dt, A, B, C, D, dt_bias, state, int(chunk_size), bool(dt_softplus), float(lo),
                         float(hi))


def rms_norm_gated(x, z=None, weight=None, *, eps=1e-6, group_size=None):
    """Mamba2's gated RMSNorm (transformers' ``MambaRMSNormGated``): ``v = x * silu(z)``, then
    ``v / sqrt(mean(v**2) + eps) * weight`` with the mean over groups of ``group_size`` features of
    the last axis (None: the whole axis; Mamba2 uses ``intermediate_size // n_groups``).

    x, z: (..., D); weight: (D,) or None. Returns (..., D) float32.

    >>> import numpy as np, lmblocks as lb
    >>> lb.ops.rms_norm_gated(np.array([3, 4, 1, 1], np.float32), eps=0.0, group_size=2).round(4)
    array([0.8485, 1.1314, 1.    , 1.    ], dtype=float32)
    """
    return _ops.rms_norm_gated(x, z, weight, float(eps), int(group_size or 0))

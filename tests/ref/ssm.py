"""NumPy float64 references for the state-space kernels of Mamba (Gu & Dao 2023) and Mamba2 / SSD
(Dao & Gu 2024), written from the recurrences as transformers' modeling_mamba.py and
modeling_mamba2.py define them. Each takes the state before the call (None: zeros) and returns the
output with the state after it.
"""

from __future__ import annotations

import numpy as np


def softplus(x):
    """torch.nn.functional.softplus: log(1 + e^x), and x itself above the threshold 20."""
    x = np.asarray(x, np.float64)
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def silu(x):
    x = np.asarray(x, np.float64)
    return x / (1 + np.exp(-x))


def causal_conv1d(x, weight, bias=None, state=None, activation="silu"):
    """x (T, C), weight (C, K), bias (C,), state (C, S) with S >= K-1 (None: K-1 zeros).

    y[t, c] = bias[c] + sum_k weight[c, k] * in[t - (K-1) + k, c] over in = [state | x] along time.
    Returns y (T, C) and the new state: the last S inputs of [state | x].
    """
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    T, C = x.shape
    K = weight.shape[1]
    prev = np.zeros((C, K - 1)) if state is None else np.asarray(state, np.float64)
    S = prev.shape[1]
    full = np.concatenate([prev.T, x], axis=0)  # (S + T, C)
    y = np.zeros((T, C)) if bias is None else np.broadcast_to(np.asarray(bias, np.float64), (T, C)).copy()
    for k in range(K):
        start = S - (K - 1) + k
        y += weight[:, k] * full[start:start + T]
    if activation is not None:
        y = silu(y)
    return y, full[full.shape[0] - S:].T.copy()


def selective_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, state=None, dt_softplus=True):
    """Mamba: x, dt, z (T, Dm); A (Dm, N); B, C (T, N); D, dt_bias (Dm,); state (Dm, N).

    dt' = softplus(dt + dt_bias); h = exp(dt' A) h + dt' B_t x_t; y_t = h C_t + D x_t; y_t *= silu(z_t).
    """
    x, dt, A, B, C = (np.asarray(a, np.float64) for a in (x, dt, A, B, C))
    T, Dm = x.shape
    if dt_bias is not None:
        dt = dt + np.asarray(dt_bias, np.float64)
    if dt_softplus:
        dt = softplus(dt)
    h = np.zeros(A.shape) if state is None else np.array(state, np.float64)
    y = np.zeros((T, Dm))
    for t in range(T):
        h = np.exp(dt[t][:, None] * A) * h + (dt[t] * x[t])[:, None] * B[t][None, :]
        y[t] = h @ C[t]
    if D is not None:
        y += np.asarray(D, np.float64) * x
    if z is not None:
        y *= silu(z)
    return y, h


def ssd_scan(x, dt, A, B, C, D=None, dt_bias=None, state=None, dt_softplus=True, dt_limit=(0.0, np.inf)):
    """Mamba2, token by token: x (T, H, P); dt (T, H); A (H,); B, C (T, G, N), head h in group
    h // (H // G); D (H,) or (H, P); dt_bias (H,); state (H, P, N).

    dt' = clip(softplus(dt + dt_bias), dt_limit); h = exp(dt' A) h + dt' x_t B_t^T; y_t = h C_t + D x_t.
    """
    x, dt, A, B, C = (np.asarray(a, np.float64) for a in (x, dt, A, B, C))
    T, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    if dt_bias is not None:
        dt = dt + np.asarray(dt_bias, np.float64)
    if dt_softplus:
        dt = softplus(dt)
    dt = np.clip(dt, *dt_limit)
    Bh = np.repeat(B, H // G, axis=1)  # (T, H, N)
    Ch = np.repeat(C, H // G, axis=1)
    h = np.zeros((H, P, N)) if state is None else np.array(state, np.float64)
    y = np.zeros((T, H, P))
    for t in range(T):
        h = np.exp(dt[t] * A)[:, None, None] * h + (dt[t][:, None] * x[t])[:, :, None] * Bh[t][:, None, :]
        y[t] = np.einsum("hpn,hn->hp", h, Ch[t])
    if D is not None:
        D = np.asarray(D, np.float64)
        y += (D[:, None] if D.ndim == 1 else D) * x
    return y, h


def rms_norm_gated(x, z=None, weight=None, eps=1e-6, group_size=None):
    """MambaRMSNormGated: v = x * silu(z), normalized by its RMS over groups of group_size features."""
    v = np.asarray(x, np.float64)
    if z is not None:
        v = v * silu(z)
    d = v.shape[-1]
    gs = group_size or d
    g = v.reshape(*v.shape[:-1], d // gs, gs)
    g = g / np.sqrt((g * g).mean(-1, keepdims=True) + eps)
    y = g.reshape(v.shape)
    return y if weight is None else y * np.asarray(weight, np.float64)

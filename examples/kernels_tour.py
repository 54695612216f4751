"""A tour of the lmblocks kernels: one decoder layer's worth of math on NumPy arrays.

Run: python examples/kernels_tour.py
"""

import time

import numpy as np

import lmblocks as lb

T, D, H, HKV, FF = 128, 576, 9, 3, 1536  # SmolLM2-135M's shapes
HD = D // H
rng = np.random.default_rng(0)


def timed(fn, *args, reps=20, **kw):
    fn(*args, **kw)
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn(*args, **kw)
    return out, (time.perf_counter() - t0) / reps * 1e6


def main():
    info = lb.cpu_info()
    print(f"lmblocks {lb.__version__} on {info['model'] or info['arch']}: {info['isa']} kernels, "
          f"{info['num_threads']} threads")
    print(f"  {info['blas']}\n")

    x = rng.standard_normal((T, D), dtype=np.float32)
    w = lambda *s: (rng.standard_normal(s) / np.sqrt(s[-1])).astype(np.float32)  # noqa: E731
    norm_w, wq, wk, wv, wo = np.ones(D, np.float32), w(H * HD, D), w(HKV * HD, D), w(HKV * HD, D), w(D, H * HD)
    w_gate, w_up, w_down = w(FF, D), w(FF, D), w(D, FF)

    # One Llama-style decoder layer, kernel by kernel, timed.
    steps = []
    h, us = timed(lb.ops.rms_norm, x, norm_w, eps=1e-5); steps.append(("rms_norm", us))
    q, us = timed(lb.ops.linear, h, wq); steps.append(("linear q", us))
    k = lb.ops.linear(h, wk)
    v = lb.ops.linear(h, wv)
    q, us = timed(lb.ops.rope, q.reshape(T, H, HD), theta=100000.0); steps.append(("rope q", us))
    k = lb.ops.rope(k.reshape(T, HKV, HD), theta=100000.0)
    a, us = timed(lb.ops.attention, q, k, v.reshape(T, HKV, HD)); steps.append(("attention (GQA, causal)", us))
    o, us = timed(lb.ops.linear, a.reshape(T, D), wo); steps.append(("linear o", us))
    x2, us = timed(lb.ops.add, x, o); steps.append(("residual add", us))
    g = lb.ops.linear(lb.ops.rms_norm(x2, norm_w), w_gate)
    u = lb.ops.linear(lb.ops.rms_norm(x2, norm_w), w_up)
    m, us = timed(lb.ops.swiglu, g, u); steps.append(("swiglu", us))
    y, us = timed(lb.ops.linear, m, w_down); steps.append(("linear down", us))
    y = lb.ops.add(x2, y)

    # The same layer in float64 NumPy, as a check.
    def rms(z):
        z = z.astype(np.float64)
        return z / np.sqrt((z * z).mean(-1, keepdims=True) + 1e-5)

    def rope64(z):
        n = z.shape[-1] // 2
        f = 100000.0 ** (-np.arange(n) * 2 / z.shape[-1])
        ang = np.arange(T)[:, None, None] * f
        c, s = np.cos(ang), np.sin(ang)
        return np.concatenate([z[..., :n] * c - z[..., n:] * s, z[..., n:] * c + z[..., :n] * s], -1)

    h64 = rms(x)
    q64 = rope64((h64 @ wq.T).reshape(T, H, HD))
    k64 = rope64((h64 @ wk.T).reshape(T, HKV, HD)).repeat(H // HKV, axis=1)
    v64 = (h64 @ wv.T).reshape(T, HKV, HD).repeat(H // HKV, axis=1)
    s = np.einsum("thd,shd->hts", q64, k64) / np.sqrt(HD) + np.triu(np.full((T, T), -np.inf), 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    x2_64 = x + np.einsum("hts,shd->thd", p, v64).reshape(T, D) @ wo.T
    g64, u64 = rms(x2_64) @ w_gate.T, rms(x2_64) @ w_up.T
    y64 = x2_64 + (g64 / (1 + np.exp(-g64)) * u64) @ w_down.T
    err = np.abs(y - y64).max() / np.abs(y64).max()

    print(f"One SmolLM2-135M-shaped decoder layer over {T} tokens, kernel by kernel:")
    for name, us in steps:
        print(f"  {name:<26}{us:9.1f} us")
    print(f"\nmax relative error against a float64 NumPy layer: {err:.2e}")
    print("kernel paths:", ", ".join(f"{k}={v}" for k, v in sorted(info["kernels"].items())))


if __name__ == "__main__":
    main()

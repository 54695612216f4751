"""Compose a language model from native blocks.

Every class here is a C++ block (``lmblocks._core.nn``) with a Python constructor that takes sizes:
weights come from ``weights={name: array}`` (NumPy arrays or lmblocks Tensors, shared, not copied) or
from a seeded random init. A :class:`Model` built from an :class:`Embedding`, a :class:`Stack` of
:class:`Layer` s, a norm and a head runs like a loaded checkpoint: one native call per forward pass,
every layer and token, the GIL released.

>>> import lmblocks as lb
>>> from lmblocks import nn
>>> nn.seed(0)
>>> D = 64
>>> layer = lambda i: nn.Layer(nn.Attention(D, 4, 2), nn.MLP(D, 128))
>>> model = nn.Model(nn.Embedding(100, D), nn.Stack("AAAA", {"A": layer}), nn.RMSNorm(D))
>>> len(model.generate_ids([1, 2, 3], 5))
5

Given weights are used as they are (shared, not copied), except float64 NumPy arrays, which are stored as
float32. ``block.weights()`` gives each parameter as a writable zero-copy array: a running model sees
writes to float32, f16 and bf16 weights at once; quantized matrices are repacked for the fast kernels
when a :class:`Model` is built, so write those before building it (or build a new one). Random init draws from the generator set by :func:`seed` (or a block's ``rng=``): matrices
``normal(0, std)``, norm weights 1 and biases 0. ``dtype`` stores a block's matrices as ``f32``,
``f16``, ``bf16`` or a ggml block type (``q8_0``, ``q4_k`` ...), quantized with :func:`lmblocks.quantize`.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence

import numpy as np

from . import _core
from .quant import quantize

_c = _core.nn
Block = _c.Block
Sequential = _c.Sequential
Residual = _c.Residual
Parallel = _c.Parallel  # Parallel([a, b])(x) = a(x) + b(x): Falcon-H1's attention beside its Mamba2
ConcatEmbeddings = _c.ConcatEmbeddings  # ConcatEmbeddings(D, De)(x) = [x | token embeddings]: Zamba2's shared blocks
CausalLM = _c.CausalLM
KVCache = _c.KVCache
Hooks = _c.Hooks

_rng = np.random.default_rng(0)

_PLAIN = {"f32": np.float32, "float32": np.float32, "f16": np.float16, "float16": np.float16}


def seed(s: int) -> None:
    """Seed the generator that blocks built with ``init="normal"`` and no ``rng`` draw from."""
    global _rng
    _rng = np.random.default_rng(s)


class _Params:
    """Hands out a block's parameters: given ones by name (checked against the expected shape), else a
    random init; matrices converted to the block's dtype."""

    def __init__(self, block: str, weights: Mapping | None, init: str, std: float, dtype: str, rng):
        if init not in ("normal", "zeros"):
            raise ValueError(f"{block}: init must be 'normal' or 'zeros', got {init!r}")
        if not (isinstance(std, (int, float)) and std >= 0):
            raise ValueError(f"{block}: std must be a number >= 0, got {std!r}")
        self.block, self.init, self.std, self.dtype = block, init, float(std), dtype
        self.rng = rng if rng is not None else _rng
        self.given = dict(weights or {})
        self.used: set[str] = set()

    def _given(self, name, shape):
        w = self.given[name]
        self.used.add(name)
        if w is None:
            return None
        if tuple(w.shape) != tuple(shape):
            raise ValueError(f"{self.block}: weight {name!r} has shape {tuple(w.shape)}; expected {tuple(shape)}")
        if isinstance(w, np.ndarray) and w.dtype == np.float64:  # NumPy's default: stored as float32 (a copy)
            w = w.astype(np.float32)
        return w

    def matrix(self, name, shape, dtype: str | None = None):
        """Given, or random; stored as ``dtype`` (default: the block's)."""
        if name in self.given:
            return self._given(name, shape)
        w = (self.rng.standard_normal(shape, dtype=np.float32) * np.float32(self.std) if self.init == "normal"
             else np.zeros(shape, np.float32))
        return as_dtype(w, dtype or self.dtype, f"{self.block}.{name}")

    def given_or(self, name, shape, make):
        """Given, or ``make()``: a parameter with an init of its own (Mamba's A, dt and conv)."""
        return self._given(name, shape) if name in self.given else make()

    def vector(self, name, n, fill=0.0, want=True):
        if name in self.given:
            return self._given(name, (n,))
        return np.full(n, fill, np.float32) if want else None

    def check_used(self):
        extra = sorted(set(self.given) - self.used)
        if extra:
            raise ValueError(f"{self.block}: unknown weight names {extra}")


def as_dtype(w, dtype: str, where: str = "weight"):
    """A float32 matrix stored as ``dtype`` (f32, f16, bf16 or a ggml block type)."""
    if dtype in _PLAIN:
        return np.ascontiguousarray(w, _PLAIN[dtype])
    if dtype in ("bf16", "bfloat16"):
        return _core.asarray(np.ascontiguousarray(w, np.float32)).astype("bf16")
    try:
        return quantize(w, dtype)
    except ValueError as e:
        raise ValueError(f"{where}: cannot store as {dtype!r}: {e}") from None


def _positive(block, **kw):
    for k, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{block}: {k} must be a positive integer, got {v!r}")


def _adapters(p: "_Params", names, rank, projs: dict) -> dict:
    """Low-rank adapters {proj: (lora_A (rank, in), lora_B (out, rank))} on the projections ``names``: given
    as weights "<proj>.lora_A" / "<proj>.lora_B", else A random and B zero (LoRA's init: a no-op at first)."""
    names = list(names)
    if names:
        _positive(p.block, adapter_rank=rank)
    out = {}
    for n in names:
        if projs.get(n) is None:
            raise ValueError(f"{p.block}: no projection {n!r} to adapt; adaptable: {sorted(k for k, v in projs.items() if v is not None)}")
        rows, cols = projs[n].shape
        out[n] = (p.matrix(f"{n}.lora_A", (rank, cols)),
                  p.given_or(f"{n}.lora_B", (rows, rank), lambda: np.zeros((rows, rank), np.float32)))
    return out


# ---- blocks -----------------------------------------------------------------------------------------


class Embedding:
    """Token embedding table (vocab, dim), rows multiplied by ``scale`` (Gemma: sqrt(dim))."""

    def __init__(self, vocab: int, dim: int, *, weight=None, scale: float = 1.0, init: str = "normal",
                 std: float = 0.02, dtype: str = "f32", rng=None):
        _positive("Embedding", vocab=vocab, dim=dim)
        p = _Params("Embedding", {"weight": weight} if weight is not None else None, init, std, dtype, rng)
        self.weight = p.matrix("weight", (vocab, dim))
        self.vocab, self.dim, self.scale = vocab, dim, float(scale)

    def __repr__(self):
        return f"Embedding({self.vocab}, {self.dim})"


class Linear(_c.Linear):
    """y = x @ weight.T + bias; weight (out, in) of any dtype."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False, weights: Mapping | None = None,
                 init: str = "normal", std: float = 0.02, dtype: str = "f32", rng=None):
        _positive("Linear", in_features=in_features, out_features=out_features)
        p = _Params("Linear", weights, init, std, dtype, rng)
        w = p.matrix("weight", (out_features, in_features))
        b = p.vector("bias", out_features, want=bias)
        p.check_used()
        super().__init__(w, b)


class RMSNorm(_c.RMSNorm):
    """x / sqrt(mean(x^2) + eps) * (offset + weight)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, offset: float = 0.0, weight=None):
        _positive("RMSNorm", dim=dim)
        w = np.full(dim, 1.0 - offset, np.float32) if weight is None else weight
        super().__init__(w, eps=eps, offset=offset)


class LayerNorm(_c.LayerNorm):
    """(x - mean) / sqrt(var + eps) * weight + bias; ``affine=False`` for neither, ``bias=False`` for no bias."""

    def __init__(self, dim: int, *, eps: float = 1e-5, affine: bool = True, bias: bool = True, weights=None):
        _positive("LayerNorm", dim=dim)
        p = _Params("LayerNorm", weights, "zeros", 0.0, "f32", None)
        w = p.vector("weight", dim, 1.0, want=affine)
        b = p.vector("bias", dim, 0.0, want=affine and bias)
        p.check_used()
        super().__init__(dim, w, b, eps)


_ROPE_SCALING = ("none", "linear", "llama3")


class Attention(_c.Attention):
    """Multi-head self-attention with rope over the KV cache: MHA (``n_kv_heads == n_heads``), GQA, or MQA
    (``n_kv_heads=1``).

    ``causal=False`` lets a sequence's tokens in one batch see each other (an encoder's whole input in one
    call). ``window``: sliding window (keys within the last ``window`` positions). ``qk_norm``: RMSNorm of
    q and k per head (``"head"``, Qwen 3, Gemma 3) or across all heads (``"all"``, OLMo 2). ``bias``:
    q/k/v biases (Qwen 2), ``o_bias``: output bias. ``rope_scaling``: ``{"rope_type": "linear" | "llama3",
    "factor": ..., ...}`` as Hugging Face's. ``scale``: score scale (default 1/sqrt(head_dim));
    ``softcap``: Gemma 2's logit soft-capping. ``qk_norm_offset``: q/k norms scale by (offset + w), 1 for
    Gemma. ``rope=False``: no positional encoding at all (Jamba), the rope settings unused. ``out_dim``:
    the output projection's width (default ``dim``). ``adapters``: projections (``"q_proj"`` ...) given a
    low-rank adapter of ``adapter_rank`` (LoRA: proj(x) + (x A^T) B^T). Weights: q_proj, k_proj, v_proj,
    o_proj, q_bias, k_bias, v_bias, o_bias, q_norm, k_norm, <proj>.lora_A, <proj>.lora_B.
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None = None, head_dim: int | None = None, *,
                 bias: bool = False, o_bias: bool = False, qk_norm: str | None = None, qk_norm_eps: float = 1e-6,
                 qk_norm_offset: float = 0.0,
                 rope_theta: float = 10000.0, rotary_dim: int | None = None, rope_interleaved: bool = False,
                 rope_scaling: Mapping | None = None, rope: bool = True, window: int = 0, causal: bool = True,
                 scale: float | None = None, softcap: float = 0.0, out_dim: int | None = None,
                 adapters: Sequence[str] = (), adapter_rank: int = 0, weights: Mapping | None = None,
                 init: str = "normal", std: float = 0.02, dtype: str = "f32", rng=None):
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        out_dim = dim if out_dim is None else out_dim
        _positive("Attention", dim=dim, n_heads=n_heads, n_kv_heads=n_kv_heads)
        if head_dim is None:
            if dim % n_heads:
                raise ValueError(f"Attention: dim {dim} is not a multiple of n_heads {n_heads}; pass head_dim")
            head_dim = dim // n_heads
        _positive("Attention", head_dim=head_dim)
        if n_heads % n_kv_heads:
            raise ValueError(f"Attention: n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
        if qk_norm not in (None, "head", "all"):
            raise ValueError(f"Attention: qk_norm must be None, 'head' or 'all', got {qk_norm!r}")
        H, Hkv, hd = n_heads, n_kv_heads, head_dim
        p = _Params("Attention", weights, init, std, dtype, rng)
        q = p.matrix("q_proj", (H * hd, dim))
        k = p.matrix("k_proj", (Hkv * hd, dim))
        v = p.matrix("v_proj", (Hkv * hd, dim))
        o = p.matrix("o_proj", (out_dim, H * hd))
        ad = _adapters(p, adapters, adapter_rank, {"q_proj": q, "k_proj": k, "v_proj": v, "o_proj": o})
        qb, kb, vb = (p.vector(n, m * hd, want=bias) for n, m in (("q_bias", H), ("k_bias", Hkv), ("v_bias", Hkv)))
        ob = p.vector("o_bias", out_dim, want=o_bias)
        nq, nk = (hd, hd) if qk_norm == "head" else (H * hd, Hkv * hd)
        # Given q/k norm weights may be per head or whole-row: the native block checks which.
        qn, kn = (p.given[n] if n in p.given else np.ones(m, np.float32) if qk_norm else None
                  for n, m in (("q_norm", nq), ("k_norm", nk)))
        p.used |= {"q_norm", "k_norm"} & set(p.given)
        p.check_used()
        rs = dict(rope_scaling or {})
        kind = rs.get("rope_type", rs.get("type", "none"))
        kind = "none" if kind == "default" else kind
        if kind not in _ROPE_SCALING:
            raise ValueError(f"Attention: rope_scaling type {kind!r} is not one of {_ROPE_SCALING}")
        scaling = (kind, float(rs.get("factor", 1.0)), float(rs.get("low_freq_factor", 1.0)),
                   float(rs.get("high_freq_factor", 4.0)), float(rs.get("original_max_position_embeddings", 8192)))
        super().__init__(H, Hkv, hd, q, k, v, o, qb, kb, vb, ob, qn, kn, rope_theta=float(rope_theta),
                         rotary_dim=int(rotary_dim or 0), rope_interleaved=bool(rope_interleaved),
                         rope_scaling=scaling, window=int(window), scale=float(scale or 0.0), softcap=float(softcap),
                         qk_norm_eps=float(qk_norm_eps), qk_norm_offset=float(qk_norm_offset), causal=bool(causal),
                         rope=bool(rope), adapters=ad)


class MLP(_c.MLP):
    """down(act(gate(x)) * up(x)) (``gated=True``: SwiGLU with silu, GeGLU with gelu), or down(act(up(x))).
    Activations: silu, gelu, gelu_tanh, relu, relu2 (ReLU squared). ``adapters``: projections given a
    low-rank adapter of ``adapter_rank`` (as :class:`Attention`'s). Weights: gate_proj, up_proj,
    down_proj, gate_bias, up_bias, down_bias, <proj>.lora_A, <proj>.lora_B."""

    def __init__(self, dim: int, hidden: int, *, gated: bool = True, activation: str = "silu", bias: bool = False,
                 adapters: Sequence[str] = (), adapter_rank: int = 0, weights: Mapping | None = None,
                 init: str = "normal", std: float = 0.02, dtype: str = "f32", rng=None):
        _positive("MLP", dim=dim, hidden=hidden)
        p = _Params("MLP", weights, init, std, dtype, rng)
        g = p.matrix("gate_proj", (hidden, dim)) if gated else None
        u = p.matrix("up_proj", (hidden, dim))
        d = p.matrix("down_proj", (dim, hidden))
        gb = p.vector("gate_bias", hidden, want=bias and gated)
        ub = p.vector("up_bias", hidden, want=bias)
        db = p.vector("down_bias", dim, want=bias)
        ad = _adapters(p, adapters, adapter_rank, {"gate_proj": g, "up_proj": u, "down_proj": d})
        p.check_used()
        super().__init__(g, u, d, activation=activation, up_bias=ub, down_bias=db, gate_bias=gb, adapters=ad)


class MoE(_c.MoE):
    """A sparse MLP: a router scores ``n_experts`` expert MLPs per token, the ``top_k`` best run and their
    outputs are summed with the routing weights (softmax scores renormalized over the chosen,
    ``norm_topk=True`` (Mixtral), or raw (OLMoE); ``scoring="sigmoid"`` for DeepSeek-style scores).
    Experts are stored stacked, one (E, hidden, dim) tensor per projection, in ``dtype``; the router
    stays float32. ``shared_hidden > 0`` adds a dense shared expert every token goes through
    (``shared_gate=True``: scaled by sigmoid(x . g), Qwen2-MoE). A decode step reads only the chosen
    experts' weights; prefill groups tokens by expert. Weights: router, gate_proj, up_proj,
    down_proj, router_bias, selection_bias, shared_gate; ``shared=`` takes a ready ``MLP``.

    Hook points: ``router`` (tokens, E) logits, ``experts`` (tokens, top_k) chosen experts,
    ``expert_weights`` (tokens, top_k).
    """

    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int, *, gated: bool = True,
                 activation: str = "silu", scoring: str = "softmax", norm_topk: bool = True,
                 routed_scale: float = 1.0, router_bias: bool = False, shared_hidden: int = 0,
                 shared_gate: bool = False, shared=None, weights: Mapping | None = None, init: str = "normal",
                 std: float = 0.02, dtype: str = "f32", rng=None):
        _positive("MoE", dim=dim, hidden=hidden, n_experts=n_experts, top_k=top_k)
        if top_k > n_experts:
            raise ValueError(f"MoE: top_k {top_k} is more than n_experts {n_experts}")
        E = n_experts
        p = _Params("MoE", weights, init, std, dtype, rng)
        router = p.matrix("router", (E, dim), "f32")  # the router and the shared gate stay float32
        g = p.matrix("gate_proj", (E, hidden, dim)) if gated else None
        u = p.matrix("up_proj", (E, hidden, dim))
        d = p.matrix("down_proj", (E, dim, hidden))
        rb = p.vector("router_bias", E, want=router_bias)
        sb = p.vector("selection_bias", E, want=False)
        if shared is None and shared_hidden:
            shared = MLP(dim, shared_hidden, gated=gated, activation=activation, init=init, std=std, dtype=dtype,
                         rng=p.rng)
        sg = p.matrix("shared_gate", (1, dim), "f32") if (shared_gate or "shared_gate" in p.given) else None
        p.check_used()
        super().__init__(router, g, u, d, top_k, scoring=scoring, norm_topk=norm_topk, activation=activation,
                         router_bias=rb, selection_bias=sb, routed_scale=float(routed_scale), shared=shared,
                         shared_gate=sg)


def _conv_init(rng, channels: int, kernel: int) -> np.ndarray:
    """PyTorch's Conv1d default for a depthwise kernel: uniform(-1, 1) / sqrt(kernel)."""
    return (rng.uniform(-1, 1, (channels, kernel)) / np.sqrt(kernel)).astype(np.float32)


def _dt_bias(p: _Params, n: int, dt_init) -> np.ndarray:
    """The given dt_bias, or softplus^-1 of dt log-uniform in ``dt_init`` (transformers' Mamba init). The dt
    draw happens either way, so later parameters get the same random numbers."""
    lo, hi = dt_init
    dt = np.exp(p.rng.uniform(np.log(lo), np.log(hi), n))
    return p.given_or("dt_bias", (n,), lambda: (dt + np.log(-np.expm1(-dt))).astype(np.float32))


class Mamba(_c.Mamba):
    """Mamba's selective-scan mixer: ``expand * dim`` inner channels, a causal conv of ``conv_kernel``, a
    per-token dt of rank ``dt_rank`` (default ceil(dim / 16)), B and C of ``state_size``, D skip and a
    SiLU gate. Conv window and SSM state live in the model's cache, constant in context length. Random
    init follows transformers' Mamba: A = -(1 .. state_size) per channel, D = 1, dt in [dt_init]
    log-uniform. ``dt_norms=True``: Jamba's RMSNorms (eps ``norm_eps``) of dt, B and C after x_proj.
    Weights: in_proj, conv_weight, conv_bias, x_proj, dt_proj, dt_bias, A_log, D, out_proj, in_bias,
    out_bias, dt_norm, b_norm, c_norm."""

    def __init__(self, dim: int, *, state_size: int = 16, expand: int = 2, conv_kernel: int = 4,
                 dt_rank: int | None = None, bias: bool = False, conv_bias: bool = True, dt_init=(1e-3, 0.1),
                 dt_norms: bool = False, norm_eps: float = 1e-6,
                 weights: Mapping | None = None, init: str = "normal", std: float = 0.02, dtype: str = "f32", rng=None):
        dt_rank = -(-dim // 16) if dt_rank is None else dt_rank
        _positive("Mamba", dim=dim, state_size=state_size, expand=expand, conv_kernel=conv_kernel, dt_rank=dt_rank)
        di, N = expand * dim, state_size
        p = _Params("Mamba", weights, init, std, dtype, rng)
        in_proj = p.matrix("in_proj", (2 * di, dim))
        conv_w = p.given_or("conv_weight", (di, conv_kernel), lambda: _conv_init(p.rng, di, conv_kernel))
        conv_b = p.vector("conv_bias", di, want=conv_bias)
        x_proj = p.matrix("x_proj", (dt_rank + 2 * N, di))
        dt_proj = p.matrix("dt_proj", (di, dt_rank), "f32")
        dt_b = _dt_bias(p, di, dt_init)
        a_log = p.given_or("A_log", (di, N),
                           lambda: np.log(np.broadcast_to(np.arange(1, N + 1, dtype=np.float32), (di, N))).copy())
        d = p.vector("D", di, 1.0)
        out_proj = p.matrix("out_proj", (dim, di))
        ib = p.vector("in_bias", 2 * di, want=bias)
        ob = p.vector("out_bias", dim, want=bias)
        dtn, bn, cn = (p.vector(n, m, 1.0, want=dt_norms)
                       for n, m in (("dt_norm", dt_rank), ("b_norm", N), ("c_norm", N)))
        p.check_used()
        super().__init__(in_proj, conv_w, conv_b, x_proj, dt_proj, dt_b, a_log, d, out_proj, in_bias=ib, out_bias=ob,
                         dt_norm=dtn, b_norm=bn, c_norm=cn, norm_eps=float(norm_eps))


class Mamba2(_c.Mamba2):
    """Mamba2's mixer (SSD): ``n_heads`` heads of ``head_dim`` (``n_heads * head_dim`` is the inner width,
    usually 2 * dim), ``n_groups`` groups of B/C of ``state_size``, a causal conv of ``conv_kernel`` over
    x/B/C, a gated RMSNorm before the output projection. Prefill runs the chunked SSD (``chunk_size``
    tokens per chunk; 0 = the sequential recurrence); decode the one-step recurrence. Its conv window
    and SSM state live in the model's cache (``cache.states()``), constant in context length.
    Random init follows transformers' Mamba2: A = -(1 .. n_heads), D = 1, dt in [dt_init_min,
    dt_init_max] log-uniform. ``norm``: ``"gated"`` norm(y * silu(z)) * w (Mamba2), ``"before_gate"``
    norm(y) * w * silu(z), ``"none"`` y * silu(z) (Falcon-H1's options). Weights: in_proj, conv_weight,
    conv_bias, dt_bias, A_log, D, norm, out_proj, in_bias, out_bias."""

    def __init__(self, dim: int, n_heads: int | None = None, head_dim: int = 64, *, state_size: int = 128,
                 n_groups: int = 1, conv_kernel: int = 4, chunk_size: int = 256, expand: int = 2, bias: bool = False,
                 conv_bias: bool = True, norm: str = "gated", norm_eps: float = 1e-5, dt_limit=(0.0, float("inf")),
                 dt_init=(1e-3, 0.1), weights: Mapping | None = None, init: str = "normal", std: float = 0.02,
                 dtype: str = "f32", rng=None):
        if n_heads is None:
            if (expand * dim) % head_dim:
                raise ValueError(f"Mamba2: expand * dim = {expand * dim} is not a multiple of head_dim {head_dim}")
            n_heads = expand * dim // head_dim
        _positive("Mamba2", dim=dim, n_heads=n_heads, head_dim=head_dim, state_size=state_size, n_groups=n_groups,
                  conv_kernel=conv_kernel)
        if n_heads % n_groups:
            raise ValueError(f"Mamba2: n_heads {n_heads} is not a multiple of n_groups {n_groups}")
        if norm not in ("gated", "before_gate", "none"):
            raise ValueError(f"Mamba2: norm must be 'gated', 'before_gate' or 'none', got {norm!r}")
        H, di = n_heads, n_heads * head_dim
        cd = di + 2 * n_groups * state_size
        p = _Params("Mamba2", weights, init, std, dtype, rng)
        in_proj = p.matrix("in_proj", (di + cd + H, dim))
        conv_w = p.given_or("conv_weight", (cd, conv_kernel), lambda: _conv_init(p.rng, cd, conv_kernel))
        conv_b = p.vector("conv_bias", cd, want=conv_bias)
        dt_b = _dt_bias(p, H, dt_init)
        a_log = p.given_or("A_log", (H,), lambda: np.log(np.arange(1, H + 1, dtype=np.float32)))
        d = p.vector("D", H, 1.0)
        norm_w = p.vector("norm", di, 1.0, want=norm != "none")
        out_proj = p.matrix("out_proj", (dim, di))
        ib = p.vector("in_bias", di + cd + H, want=bias)
        ob = p.vector("out_bias", dim, want=bias)
        p.check_used()
        lim_lo, lim_hi = dt_limit
        super().__init__(H, head_dim, n_groups, state_size, in_proj, conv_w, conv_b, dt_b, a_log, d, norm_w, out_proj,
                         in_bias=ib, out_bias=ob, chunk_size=chunk_size, norm_eps=norm_eps, dt_min=float(lim_lo),
                         dt_max=float(min(lim_hi, 1e30)), norm_before_gate=norm == "before_gate")


def _norm(kind, dim: int, eps: float):
    if callable(kind) and not isinstance(kind, str):
        return kind(dim)
    if kind in ("rms", "rmsnorm"):
        return RMSNorm(dim, eps=eps)
    if kind in ("layer", "layernorm"):
        return LayerNorm(dim, eps=eps)
    raise ValueError(f"Layer: norm_type must be 'rms', 'layer' or a callable dim -> norm block, got {kind!r}")


_PLACEMENTS = ("pre", "post", "sandwich", "output", "none")


class Layer(_c.Layer):
    """One layer: a token mixer (``Attention`` ...) and an MLP (``MLP``, ``MoE``), each a residual sub-layer.

    ``norm``: where the norms go — ``"pre"`` x += f(n(x)) (Llama), ``"sandwich"`` x += n2(f(n1(x))) (Gemma
    2/3), ``"output"`` x += n(f(x)) (OLMo 2), ``"post"`` x = n(x + f(x)) (BERT), ``"none"``.
    ``norm_type``: ``"rms"``, ``"layer"`` or a callable ``dim -> block``. ``parallel=True``: x += mixer(n(x))
    + mlp(n(x)) (GPT-J, Falcon). ``residual_scale`` multiplies each sub-layer's output (Granite).
    Norm blocks can also be given: ``attn_norm=``, ``attn_post_norm=``, ``mlp_norm=``, ``mlp_post_norm=``.
    """

    def __init__(self, mixer=None, mlp=None, *, norm: str = "pre", norm_type="rms", eps: float = 1e-6,
                 parallel: bool = False, residual_scale: float = 1.0, dim: int | None = None, **norms):
        if norm not in _PLACEMENTS:
            raise ValueError(f"Layer: norm must be one of {_PLACEMENTS}, got {norm!r}")
        bad = set(norms) - {"attn_norm", "attn_post_norm", "mlp_norm", "mlp_post_norm"}
        if bad:
            raise TypeError(f"Layer: unexpected arguments {sorted(bad)}")
        if dim is None:
            dims = [b.in_dim for b in (mixer, mlp) if b is not None and b.in_dim >= 0]
            if not dims:
                raise ValueError("Layer: cannot tell the model dim from the blocks; pass dim=")
            dim = dims[0]
        pre = norm in ("pre", "sandwich")
        out = norm in ("sandwich", "output", "post")
        if parallel and norm not in ("pre", "none"):
            raise ValueError(f"Layer: parallel layers take norm 'pre' or 'none', got {norm!r}")

        def make(key, want, sub):
            if key in norms:
                return norms[key]
            return _norm(norm_type, dim, eps) if want and sub is not None else None

        an = make("attn_norm", pre, mixer)
        apn = make("attn_post_norm", out, mixer)
        mn = make("mlp_norm", pre and not parallel, mlp)
        mpn = make("mlp_post_norm", out, mlp)
        super().__init__(mixer, mlp, an, apn, mn, mpn, parallel=parallel, norm_after_add=norm == "post",
                         residual_scale=float(residual_scale))


class Stack(_c.Sequential):
    """Layers by pattern: ``Stack("AAMA", {"A": make_attn_layer, "M": make_moe_layer})`` calls
    ``blocks[key](i)`` for layer i with key ``pattern[i]`` (a str of one-letter keys, or a list of keys),
    or takes a list of ready blocks: ``Stack([layer0, layer1])``."""

    def __init__(self, pattern: str | Sequence, blocks: Mapping[str, Callable[[int], object]] | None = None):
        if blocks is None:
            layers = list(pattern)
        else:
            keys = list(pattern)
            unknown = sorted({k for k in keys if k not in blocks}, key=str)
            if unknown:
                raise ValueError(f"Stack: pattern {pattern!r} names {unknown}, which are not among the blocks "
                                 f"{sorted(blocks, key=str)}")
            layers = [blocks[k](i) for i, k in enumerate(keys)]
        if not layers:
            raise ValueError("Stack: no layers")
        for i, b in enumerate(layers):
            if not isinstance(b, _c.Block):
                raise TypeError(f"Stack: layer {i} is a {type(b).__name__}, not a block")
        self.pattern = pattern if blocks is not None else None
        super().__init__(layers)


# ---- a model from parts -----------------------------------------------------------------------------

from .model import Model as _LoadedModel  # noqa: E402


class Model(_LoadedModel):
    """A language model from parts: ``Model(embedding, stack, norm, head=None, tie=True)``.

    ``head``: an (vocab, dim) weight array / Tensor or :class:`Linear` (none with ``tie=True``: the
    embedding is the head). ``tokenizer``: an lmblocks tokenizer for text in and out (else use token ids:
    :meth:`generate_ids`, :meth:`logits`). Everything else is :class:`lmblocks.Model`'s: ``generate``,
    ``stream``, ``logits``, ``perplexity``, ``capture``, ``summary``, ``save``.
    """

    def __init__(self, embedding: Embedding, stack, norm=None, head=None, *, tie: bool = True, tokenizer=None,
                 n_ctx: int = 2048, kv_dtype: str = "f32", logit_scale: float = 1.0, final_softcap: float = 0.0,
                 eos_ids: Sequence[int] = (), name: str = "custom"):
        if not isinstance(embedding, Embedding):
            raise TypeError(f"Model: embedding must be an nn.Embedding, got {type(embedding).__name__}")
        if isinstance(head, _c.Linear):
            head = head.weights()["weight"]
        if head is not None and tie:
            tie = False
        if head is None and not tie:
            head = Embedding(embedding.vocab, embedding.dim).weight
        lm = CausalLM(embedding.weight, embedding.scale, stack, norm, head, final_softcap)
        lm.logit_scale = float(logit_scale)
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or not 0 < n_ctx <= 1 << 40:
            raise ValueError(f"Model: n_ctx must be a positive integer up to 2^40, got {n_ctx!r}")
        if kv_dtype not in ("f32", "f16"):
            raise ValueError(f"Model: kv_dtype must be 'f32' or 'f16', got {kv_dtype!r}")
        super().__init__(lm, None, tokenizer, None, eos_ids=eos_ids, n_ctx=n_ctx, kv_dtype=kv_dtype, path=name,
                         converted_bytes=0, mapped_bytes=0)
        self.embedding, self.stack, self.norm, self.tied = embedding, stack, norm, head is None
        self.name = name

    def __repr__(self) -> str:
        return (f"nn.Model({self.name!r}, {len(self.stack)} layers, D={self.embedding.dim}, "
                f"vocab {self.embedding.vocab}, n_ctx {self.n_ctx})")

    def save(self, path: str | os.PathLike) -> None:
        """Write the model to the folder ``path``: ``lmblocks.json`` (its blocks and settings) and
        ``model.safetensors`` (its weights, by block path, in their dtypes). ``lmblocks.load(path)`` reads
        it back. A path ending in ``.gguf`` writes a GGUF file llama.cpp runs, when the blocks are its
        "llama" graph, dense or with Mixtral's experts, or its "mamba"/"mamba2" graph
        (:mod:`lmblocks.io.gguf_export` says what fits; anything else raises NotImplementedError)."""
        from . import serialize

        if os.fsdecode(path).endswith(".gguf"):
            from .io.gguf_export import export

            export(self, path)
            return
        serialize.save(self, path)


__all__ = ["seed", "as_dtype", "Embedding", "Linear", "RMSNorm", "LayerNorm", "Attention", "MLP", "MoE", "Mamba", "Mamba2", "Layer", "Stack",
           "Model", "Block", "Sequential", "Residual", "Parallel", "ConcatEmbeddings", "CausalLM", "KVCache", "Hooks"]

"""Any native model as files and back: ``lmblocks.json`` (the block tree: kinds and settings) beside
``model.safetensors`` (every weight, named by block path: ``layers.0.attn.q_proj``).

This is how a model built with :mod:`lmblocks.nn` is saved (``model.save(folder)``) and loaded
(``lb.load(folder)``). It describes blocks by what the native objects report, so it covers every block
kind, in any arrangement, with weights of any dtype (ggml block types stored as bytes; see
:func:`lmblocks.io.safetensors.write_safetensors`).
"""

from __future__ import annotations

import json
import os

import numpy as np

from . import _core
from .io import FormatError
from .io.safetensors import SafetensorsCheckpoint, block_tensor, write_safetensors

nn = _core.nn
FORMAT = "lmblocks"
VERSION = 1
CONFIG = "lmblocks.json"
WEIGHTS = "model.safetensors"

_ATTN_FIELDS = ("n_heads", "n_kv_heads", "head_dim", "rope_theta", "rotary_dim", "rope_interleaved", "window",
                "causal", "scale", "softcap", "qk_norm_eps", "qk_norm_offset")
_MOE_FIELDS = ("top_k", "scoring", "norm_topk", "activation", "routed_scale")
_MAMBA2_FIELDS = ("n_heads", "head_dim", "n_groups", "state_size", "chunk_size", "norm_eps", "norm_before_gate")


class _Writer:
    """Collects tensors by name; a tensor met twice (shared weights) is stored once."""

    def __init__(self):
        self.tensors: dict[str, object] = {}
        self._by_address: dict[tuple, str] = {}

    def add(self, name: str, t) -> str:
        a = np.asarray(t)
        key = (a.__array_interface__["data"][0], a.nbytes, str(t.dtype), tuple(t.shape))
        if key in self._by_address:
            return self._by_address[key]
        self._by_address[key] = name
        self.tensors[name] = t
        return name


def _block(b, path: str, w: _Writer) -> dict:
    kind = b.kind
    spec: dict = {"kind": kind}
    weights = {n: w.add(f"{path}.{n}", t) for n, t in b.weights().items()}
    if weights:
        spec["weights"] = weights
    if kind == "RMSNorm":
        spec |= {"eps": b.eps, "offset": b.offset}
    elif kind == "LayerNorm":
        spec |= {"dim": b.dim, "eps": b.eps}
    elif kind == "Attention":
        spec |= {f: getattr(b, f) for f in _ATTN_FIELDS}
        spec["rope_scaling"] = list(b.rope_scaling)
        spec["rope"] = b.rope
    elif kind == "MLP":
        spec["activation"] = b.activation
    elif kind == "MoE":
        spec |= {f: getattr(b, f) for f in _MOE_FIELDS if hasattr(b, f)}
        if getattr(b, "shared", None) is not None:
            spec["shared"] = _block(b.shared, f"{path}.shared", w)
    elif kind == "Mamba2":
        spec |= {f: getattr(b, f) for f in _MAMBA2_FIELDS}
        spec["dt_limit"] = list(b.dt_limit)
    elif kind == "Mamba":
        if b.normed:
            spec["norm_eps"] = b.norm_eps
    elif kind == "Layer":
        spec |= {"parallel": b.parallel, "norm_after_add": b.norm_after_add, "residual_scale": b.residual_scale}
        for slot in ("mixer", "mlp", "attn_norm", "attn_post_norm", "mlp_norm", "mlp_post_norm"):
            c = getattr(b, slot)
            if c is not None:
                name = dict((id(x), n) for n, x in b.named_children).get(id(c), slot)
                spec[slot] = _block(c, f"{path}.{name}", w)
    elif kind == "Sequential":
        spec["blocks"] = [_block(c, f"{path}.{i}", w) for i, c in enumerate(b.children)]
    elif kind == "Parallel":
        spec["blocks"] = [_block(c, f"{path}.{name}", w) for name, c in b.named_children]
    elif kind == "Residual":
        for slot in ("pre", "inner", "post"):
            c = getattr(b, slot)
            if c is not None:
                spec[slot] = _block(c, f"{path}.{slot}", w)
    elif kind == "ConcatEmbeddings":
        spec |= {"dim": b.dim, "embed_dim": b.embed_dim}
    elif kind != "Linear":  # it holds nothing but weights
        raise NotImplementedError(f"saving a {kind} block ({path}) is not supported yet")
    return spec


def save(model, folder: str | os.PathLike) -> None:
    """Write ``model`` (an :class:`lmblocks.Model`) as ``folder/lmblocks.json`` + ``folder/model.safetensors``."""
    folder = os.fsdecode(folder)
    os.makedirs(folder, exist_ok=True)
    lm = model.lm
    w = _Writer()
    embed = w.add("embed_tokens", lm.embed_tokens)
    head = w.add("lm_head", lm.lm_head)
    spec = {
        "format": FORMAT, "version": VERSION, "name": getattr(model, "name", None),
        "embed_tokens": embed, "embed_scale": lm.embed_scale, "lm_head": head,
        "final_softcap": lm.final_softcap, "logit_scale": lm.logit_scale,
        "n_ctx": model.n_ctx, "kv_dtype": model.kv_dtype, "eos_ids": sorted(model.eos_ids),
        "body": _block(lm.body, "layers", w),
        "norm": _block(lm.norm, "norm", w) if lm.norm is not None else None,
    }
    write_safetensors(os.path.join(folder, WEIGHTS), w.tensors)
    tmp = os.path.join(folder, CONFIG + ".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=1)
    os.replace(tmp, os.path.join(folder, CONFIG))


# ---- loading -------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, folder: str):
        self.where = os.path.join(folder, CONFIG)
        self.ckpt = SafetensorsCheckpoint(os.path.join(folder, WEIGHTS))

    def tensor(self, name, where):
        if not isinstance(name, str) or name not in self.ckpt.tensors:
            raise FormatError(f"{self.where}: {where} names tensor {name!r}, which {WEIGHTS} does not hold")
        return block_tensor(self.ckpt, name)


def _get(spec: dict, key: str, types, where: str, default=...):
    """spec[key] if it has one of ``types`` (a bool is not an int here unless bool is listed)."""
    types = types if isinstance(types, tuple) else (types,)
    if key not in spec:
        if default is ...:
            raise FormatError(f"{where}: field {key!r} is missing")
        return default
    v = spec[key]
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        raise FormatError(f"{where}: field {key!r} is {v!r:.80}; expected {' or '.join(t.__name__ for t in types)}")
    return v


def _build(spec, r: _Reader, where: str):
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise FormatError(f"{r.where}: {where} is not a block (an object with a 'kind')")
    kind = spec["kind"]
    here = f"{r.where}: {where} ({kind})"
    ws = spec.get("weights", {})
    if not isinstance(ws, dict):
        raise FormatError(f"{here}: field 'weights' must be an object")
    t = {n: r.tensor(v, f"{where}.{n}") for n, v in ws.items()}
    num = (int, float)
    try:
        # Low-rank adapters ("q_proj.lora_A" / "q_proj.lora_B") of an Attention or MLP, by projection.
        adapters = {n[:-len(".lora_A")]: (t[n], t[n[:-len(".lora_A")] + ".lora_B"]) for n in t if n.endswith(".lora_A")}
        if kind == "RMSNorm":
            return nn.RMSNorm(t["weight"], eps=_get(spec, "eps", num, here), offset=_get(spec, "offset", num, here))
        if kind == "LayerNorm":
            return nn.LayerNorm(_get(spec, "dim", int, here), t.get("weight"), t.get("bias"), _get(spec, "eps", num, here))
        if kind == "Linear":
            return nn.Linear(t["weight"], t.get("bias"))
        if kind == "Attention":
            kw = {f: _get(spec, f, (int, float, bool), here) for f in _ATTN_FIELDS}
            sc = _get(spec, "rope_scaling", list, here)
            if len(sc) != 5 or not isinstance(sc[0], str):
                raise FormatError(f"{here}: field 'rope_scaling' is {sc!r:.80}; expected [kind, 4 numbers]")
            H, Hkv, hd = kw.pop("n_heads"), kw.pop("n_kv_heads"), kw.pop("head_dim")
            return nn.Attention(H, Hkv, hd, t["q_proj"], t["k_proj"], t["v_proj"], t["o_proj"],
                                q_bias=t.get("q_bias"), k_bias=t.get("k_bias"), v_bias=t.get("v_bias"),
                                o_bias=t.get("o_bias"), q_norm=t.get("q_norm"), k_norm=t.get("k_norm"),
                                rope_scaling=tuple(sc), rope=_get(spec, "rope", bool, here, True), adapters=adapters,
                                **kw)
        if kind == "MLP":
            return nn.MLP(t.get("gate_proj"), t["up_proj"], t["down_proj"], activation=_get(spec, "activation", str, here),
                          up_bias=t.get("up_bias"), down_bias=t.get("down_bias"), gate_bias=t.get("gate_bias"),
                          adapters=adapters)
        if kind == "ConcatEmbeddings":
            return nn.ConcatEmbeddings(_get(spec, "dim", int, here), _get(spec, "embed_dim", int, here))
        if kind == "MoE":
            kw = {f: spec[f] for f in _MOE_FIELDS if f in spec}
            shared = _build(spec["shared"], r, where + ".shared") if spec.get("shared") else None
            extra = {n: t[n] for n in ("router_bias", "selection_bias", "shared_gate") if n in t}
            return nn.MoE(t["router"], t.get("gate_proj"), t["up_proj"], t["down_proj"], shared=shared, **extra, **kw)
        if kind == "Mamba":
            opt = {n: t.get(n) for n in ("conv_bias", "in_bias", "out_bias", "dt_norm", "b_norm", "c_norm")}
            return nn.Mamba(t["in_proj"], t["conv_weight"], opt.pop("conv_bias"), t["x_proj"], t["dt_proj"],
                            t["dt_bias"], t["A_log"], t["D"], t["out_proj"], **opt,
                            norm_eps=_get(spec, "norm_eps", (int, float), here, 1e-6))
        if kind == "Mamba2":
            kw = {f: spec[f] for f in _MAMBA2_FIELDS if f in spec}
            lo, hi = _get(spec, "dt_limit", list, here)
            opt = {n: t.get(n) for n in ("conv_bias", "in_bias", "out_bias", "norm")}
            return nn.Mamba2(kw.pop("n_heads"), kw.pop("head_dim"), kw.pop("n_groups"), kw.pop("state_size"),
                             t["in_proj"], t["conv_weight"], opt["conv_bias"], t["dt_bias"], t["A_log"], t["D"],
                             opt["norm"], t["out_proj"], in_bias=opt["in_bias"], out_bias=opt["out_bias"],
                             dt_min=lo, dt_max=hi, **kw)
        if kind == "Layer":
            slots = {s: _build(spec[s], r, f"{where}.{s}") if spec.get(s) else None
                     for s in ("mixer", "mlp", "attn_norm", "attn_post_norm", "mlp_norm", "mlp_post_norm")}
            return nn.Layer(**slots, parallel=_get(spec, "parallel", bool, here),
                            norm_after_add=_get(spec, "norm_after_add", bool, here),
                            residual_scale=_get(spec, "residual_scale", num, here, 1.0))
        if kind in ("Sequential", "Parallel"):
            blocks = _get(spec, "blocks", list, here)
            return getattr(nn, kind)([_build(b, r, f"{where}.{i}") for i, b in enumerate(blocks)])
        if kind == "Residual":
            return nn.Residual(*(_build(spec[s], r, f"{where}.{s}") if spec.get(s) else None
                                 for s in ("pre", "inner", "post")))
    except KeyError as e:
        raise FormatError(f"{here}: weight {e.args[0]!r} is missing") from None
    except (ValueError, TypeError) as e:
        raise FormatError(f"{here}: {e}") from None
    raise FormatError(f"{here}: unknown block kind {kind!r}")


def is_saved_model(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG))


def load(folder: str, *, n_ctx: int | None = None, kv_dtype: str | None = None, tokenizer=None):
    """The :class:`lmblocks.nn.Model` saved in ``folder`` by :func:`save`."""
    from . import nn as lnn

    folder = os.fsdecode(folder)
    where = os.path.join(folder, CONFIG)
    try:
        with open(where, encoding="utf-8") as f:
            spec = json.load(f)
    except ValueError as e:
        raise FormatError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise FormatError(f"{where}: not an lmblocks model (field 'format' is not {FORMAT!r})")
    if spec.get("version") != VERSION:
        raise FormatError(f"{where}: version {spec.get('version')!r}; this lmblocks reads version {VERSION}")
    r = _Reader(folder)
    embed = r.tensor(spec.get("embed_tokens"), "embed_tokens")
    head = r.tensor(spec.get("lm_head"), "lm_head")
    body = _build(spec.get("body"), r, "body")
    norm = _build(spec["norm"], r, "norm") if spec.get("norm") else None
    if embed.ndim != 2:
        raise FormatError(f"{where}: embed_tokens has shape {tuple(embed.shape)}; expected (vocab, dim)")
    emb = lnn.Embedding(*embed.shape, weight=embed, scale=_get(spec, "embed_scale", (int, float), where))
    tied = spec.get("lm_head") == spec.get("embed_tokens")
    try:
        return lnn.Model(emb, body, norm, None if tied else head, tie=tied, tokenizer=tokenizer,
                         n_ctx=n_ctx or _get(spec, "n_ctx", int, where), kv_dtype=kv_dtype or spec.get("kv_dtype", "f32"),
                         logit_scale=_get(spec, "logit_scale", (int, float), where, 1.0),
                         final_softcap=_get(spec, "final_softcap", (int, float), where, 0.0),
                         eos_ids=spec.get("eos_ids", ()), name=spec.get("name") or os.path.basename(folder))
    except (ValueError, TypeError) as e:
        raise FormatError(f"{where}: {e}") from None

"""Quantize a loaded model's weights and save it as GGUF: ``lb.quantize_model(model, "q4_k")`` and
``model.save(path)``, llama.cpp's ``llama-quantize`` (round-to-nearest, no importance matrix) in Python
over lmblocks' quantizers.

>>> import lmblocks as lb
>>> model = lb.load("SmolLM2-135M-Instruct.Q4_1.gguf")                              # doctest: +SKIP
>>> q = lb.quantize_model(model, "q4_k", overrides={"blk.*.ffn_down.weight": "q6_k"},
...                       keep=("token_embd.weight",))                               # doctest: +SKIP
>>> q.quantization["fallbacks"]["blk.0.attn_q.weight"]   # 576 columns: not a multiple of 256  # doctest: +SKIP
('q4_k', 'q5_0')
>>> q.save("SmolLM2-135M-Instruct.Q4_K.gguf")                                       # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from . import Tensor, dequantize, dtype_info, empty, models, quantize
from .io import GGUFFile
from .io.detect import open_checkpoint
from .io.gguf_writer import write_gguf

if TYPE_CHECKING:
    from .model import Model

__all__ = ["quantize_model", "save_gguf", "QUANT_TYPES", "TYPES", "K_QUANT_FALLBACK"]

QUANT_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
TYPES = QUANT_TYPES + ("f16", "f32")

# What llama-quantize picks when a row is not a multiple of the 256-element k-quant super-block
# (llama_tensor_get_type's "incompatible tensor" fallbacks). llama.cpp takes iq4_nl for q2_k/q3_k;
# lmblocks has no iq4_nl quantizer, so q4_0 (same size, 4.5 bits per weight) stands in.
K_QUANT_FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}

# llama.cpp's llama_ftype for a file whose weight matrices are mostly of one type (general.file_type);
# a k-quant maps to its "_S" variant, the one closest to that type throughout.
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10,
              "q3_k": 11, "q4_k": 14, "q5_k": 16, "q6_k": 18, "bf16": 32}

_CHUNK = 1 << 24  # elements dequantized at a time: a 262k-row embedding is converted in 64 MB slices


def _check_type(value, what: str) -> str:
    if not isinstance(value, str) or value not in TYPES:
        hint = " (q8_1 is an activation format, not a weight type)" if value == "q8_1" else ""
        raise ValueError(f"{what}: {value!r} is not a weight type lmblocks can quantize to{hint}; supported: "
                         f"{', '.join(TYPES)}")
    return value


def _check_patterns(patterns, what: str) -> list[str]:
    patterns = list(patterns)
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise ValueError(f"{what}: pattern {p!r} is not a non-empty str (fnmatch glob on tensor names such "
                             "as 'blk.*.ffn_down.weight')")
    return patterns


def _gguf_namer(model):
    """Hugging Face tensor name -> the llama.cpp (GGUF) name (unknown names stay as they are)."""
    module = models.BY_MODEL_TYPE.get(model.args.model_type)
    rename = models.base.gguf_renamer(getattr(module, "GGUF_OVERRIDES", None), to_gguf=True)
    return lambda name: rename(name) or name


def _open_source(model):
    """The model's source checkpoint, reopened, after checking it is still the file the model came from."""
    from .model import _file_id

    if model._source_id is not None and _file_id(model.path) != model._source_id:
        raise RuntimeError(f"{model.path} changed (or was removed) since the model was loaded from it; load it again")
    return open_checkpoint(model.path)


def _convert(src: Tensor, dtype: str) -> Tensor:
    """``src`` (rows, K) dequantized to float32 and stored as ``dtype``, a slice of rows at a time."""
    rows, cols = src.shape
    out = empty(rows, cols, dtype=dtype)
    raw = np.asarray(out)
    step = max(1, _CHUNK // cols)
    for i in range(0, rows, step):
        x = dequantize(src[i:i + step])
        if dtype in QUANT_TYPES:
            raw[i:i + step] = np.asarray(quantize(x, dtype))
        else:
            raw[i:i + step] = x.astype(raw.dtype)
    return out


def quantize_model(model: Model, dtype: str, *, overrides: Mapping[str, str] | None = None,
                   keep: Iterable[str] = (), verbose: bool = True) -> Model:
    """A new :class:`lmblocks.Model` whose 2-D weight matrices are quantized to ``dtype``, round-to-nearest
    with lmblocks' quantizers (ggml's reference ``quantize_row_*_ref``; no importance matrix).

    Each 2-D weight is dequantized to float32 and quantized to its type; one already of that type is
    kept as it is, and 1-D tensors (norm weights, biases) keep their type (float32), both as
    llama-quantize does. On SmolLM2's and Gemma 3's GGUF files the result equals llama.cpp's
    ``llama_model_quantize`` (``pure``, requantize allowed) tensor for tensor, byte for byte.

    ``dtype``: q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k, f16 or f32.
    ``overrides``: {pattern: dtype}, per-tensor types by fnmatch glob on the llama.cpp (GGUF) tensor
    name, e.g. ``{"blk.*.ffn_down.weight": "q6_k"}``; the first pattern in the mapping that matches
    decides. ``keep``: patterns of tensors kept at the model's current type, e.g.
    ``keep=("token_embd.weight", "output.weight")`` keeps the embedding and the output matrix in
    higher precision. In a model with tied embeddings ``token_embd.weight`` is the output matrix and
    also answers to ``output.weight`` (as in llama-quantize). For models from Hugging Face folders or
    llama2.c files, patterns match the name llama.cpp would give the tensor and the source's own name.
    ``overrides`` come before ``keep``. Every pattern must match a weight matrix of the model.

    Rows that are not a multiple of the 256-element k-quant super-block (SmolLM2-135M has D=576,
    Gemma 3 270M D=640) fall back as llama-quantize does: q4_k -> q5_0, q5_k -> q5_1, q6_k -> q8_0,
    and q2_k/q3_k -> q4_0 (llama.cpp takes iq4_nl there, which lmblocks cannot write); a type whose
    block still does not divide the row falls back to f16. The returned model's ``quantization``
    says what happened: ``{"dtype", "types": {name: type}, "fallbacks": {name: (asked, used)}}``,
    and a warning summarizes the fallbacks.

    ``verbose=False`` silences the progress bars and that warning. The model's source file must still
    be where it was loaded from: tensors that stay are read from it, and the new model maps them too.
    Raises ValueError for an unknown dtype or a bad override (pattern or type), naming it.

    >>> import lmblocks as lb
    >>> model = lb.load("SmolLM2-135M-Instruct.Q4_1.gguf", verbose=False)             # doctest: +SKIP
    >>> q = lb.quantize_model(model, "q8_0", keep=("token_embd.weight",), verbose=False)  # doctest: +SKIP
    >>> q.quantization["types"]["blk.0.attn_q.weight"], q.quantization["types"]["token_embd.weight"]  # doctest: +SKIP
    ('q8_0', 'q8_0')
    """
    from .model import _load

    _check_type(dtype, "dtype")
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a mapping {{pattern: dtype}}, got {type(overrides).__name__}")
    for p, t in overrides.items():
        _check_patterns([p], "overrides")
        _check_type(t, f"overrides[{p!r}]")
    if keep is None or isinstance(keep, str):
        keep = () if keep is None else (keep,)
    keep = _check_patterns(keep, "keep")

    reader = _open_source(model)
    is_gguf = isinstance(reader, GGUFFile)
    to_gguf = (lambda n: n) if is_gguf else _gguf_namer(model)
    names = list(reader.tensors)
    tied = not any(to_gguf(n) == "output.weight" for n in names)

    def aliases(name: str) -> tuple[str, ...]:
        g = to_gguf(name)
        a = (g,) if g == name else (g, name)
        return a + ("output.weight",) if tied and g == "token_embd.weight" else a

    matrices = [n for n in names if len(reader.tensors[n].shape) == 2]
    for what, patterns in (("overrides", list(overrides)), ("keep", keep)):
        for p in patterns:
            if not any(fnmatchcase(a, p) for n in matrices for a in aliases(n)):
                hit = [n for n in names if any(fnmatchcase(a, p) for a in aliases(n))]
                why = (f"it matches only 1-D tensors (e.g. {hit[0]!r}: norm weights and biases stay as they are)"
                       if hit else f"it matches no tensor; the names look like {', '.join(map(repr, matrices[:3]))}")
                raise ValueError(f"{what}: pattern {p!r} names no weight matrix of "
                                 f"{os.path.basename(model.path)}: {why}")

    replaced = dict(model._replaced)
    types, fallbacks, example = {}, {}, None
    it = names
    if verbose:
        from tqdm.auto import tqdm

        it = tqdm(names, desc=f"quantizing to {dtype}", unit="tensor", leave=False)
    for name in it:
        src = model._replaced[name] if name in model._replaced else reader.tensor(name)
        asked = None
        if src.ndim == 2:
            al = aliases(name)
            asked = next((t for p, t in overrides.items() if any(fnmatchcase(a, p) for a in al)), None)
            if asked is None and not any(fnmatchcase(a, p) for p in keep for a in al):
                asked = dtype
        if asked is None:
            types[to_gguf(name)] = src.dtype
            continue
        used, cols = asked, src.shape[-1]
        if cols % dtype_info(used)["block_size"]:
            used = K_QUANT_FALLBACK.get(used, "f16")
            if cols % dtype_info(used)["block_size"]:
                used = "f16"
            fallbacks[to_gguf(name)] = (asked, used)
            example = example or f"{to_gguf(name)!r}: rows of {cols}"
        types[to_gguf(name)] = used
        if src.dtype != used:  # already that type: kept as it is, as llama-quantize does
            replaced[name] = _convert(src, used)
    del reader

    if fallbacks and verbose:
        per = ", ".join(f"{n} {a} -> {u}" for (a, u), n in Counter(fallbacks.values()).items())
        warnings.warn(f"{len(fallbacks)} weight matrices have rows that are not a multiple of their type's block "
                      f"and fell back as llama-quantize does: {per} (e.g. {example}); see "
                      "model.quantization['fallbacks']", stacklevel=2)
    new = _load(model.path, model._tokenizer_arg, model.n_ctx, model.kv_dtype, verbose, replaced)
    new.quantization = {"dtype": dtype, "types": types, "fallbacks": fallbacks}
    return new


def _file_type(types: Iterable[str]) -> int | None:
    """general.file_type for weight matrices of these types: the most common one, as the GGUF spec
    defines the key ("the type of the majority of the tensors"). llama-quantize writes the type it was
    asked for instead, which differs when rows fell back (SmolLM2 asked for q4_k is mostly q5_0)."""
    counts = Counter(t for t in types if t in FILE_TYPES)
    return FILE_TYPES[counts.most_common(1)[0][0]] if counts else None


def save_gguf(model: Model, path: str | os.PathLike) -> None:
    """Write ``model`` as GGUF v3 (see :meth:`lmblocks.Model.save`)."""
    reader = _open_source(model)
    if not isinstance(reader, GGUFFile):
        kind = "a Hugging Face folder" if os.path.isdir(model.path) or model.path.endswith(".safetensors") \
            else "a llama2.c checkpoint"
        raise NotImplementedError(
            f"Model.save writes GGUF files for models loaded from GGUF files only; {model.path} is {kind}, "
            "whose llama.cpp metadata (tokenizer, hyperparameters) lmblocks cannot write yet. Convert the "
            "source with llama.cpp's convert_hf_to_gguf.py, then load that file")
    replaced = model._replaced
    metadata = {k: (reader.metadata_types[k], v) for k, v in reader.metadata.items()}  # in file order
    if replaced:  # the weights changed type: say so as llama-quantize does
        matrices = [(replaced[n] if n in replaced else info).dtype for n, info in reader.tensors.items()
                    if len(info.shape) == 2]
        if any(t in QUANT_TYPES for t in matrices) and "general.quantization_version" not in metadata:
            metadata["general.quantization_version"] = ("uint32", 2)  # ggml's block layouts (GGML_QNT_VERSION)
        ft = _file_type(matrices)
        if ft is not None:
            metadata["general.file_type"] = ("uint32", ft)
    tensors = ((n, replaced[n] if n in replaced else reader.tensor(n)) for n in reader.tensors)
    over_source = os.path.exists(path) and os.path.samefile(path, model.path)
    write_gguf(path, [(k, t, v) for k, (t, v) in metadata.items()], tensors)  # aligned as the source
    if over_source:  # the file now holds exactly this model: it is the model's source from here on
        from .model import _file_id

        model._source_id, model._replaced = _file_id(model.path), {}

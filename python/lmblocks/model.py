"""Load a checkpoint and run it: ``lb.load(path)`` gives a :class:`Model` with ``generate``, ``stream``,
``logits``, ``perplexity`` and its ``tokenizer``.

The forward pass is one native call (``lmblocks.nn.CausalLM.forward``); Python only picks the next
token between decode steps.

>>> import lmblocks as lb
>>> model = lb.load(lb.assets.smollm2_135m())                     # doctest: +SKIP
>>> model.generate([{"role": "user", "content": "Hi!"}], max_tokens=16, temperature=0)  # doctest: +SKIP
'Hello! How can I help you today?'
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from . import _core, hooks, models
from .io import FormatError, GGUFFile, SafetensorsCheckpoint
from .io.detect import open_checkpoint
from .io.llama2c import Llama2cFile
from .sampling import Sampler, SamplingParams, StopMatcher

nn = _core.nn


def _progress(verbose: bool, desc: str):
    if not verbose:
        return iter
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=desc, unit="layer", leave=False)


class Model:
    """A decoder ready to run: the native ``lm`` (:class:`lmblocks.nn.CausalLM`), its ``args``, ``tokenizer``
    and ``chat_template`` (or None), the end-of-generation ids ``eos_ids`` and the context length ``n_ctx``;
    ``quantization`` says what :func:`lmblocks.quantize_model` did to make it (None for a loaded model)."""

    def __init__(self, lm, args, tokenizer, chat_template, *, eos_ids, n_ctx: int, kv_dtype: str, path: str,
                 converted_bytes: int, mapped_bytes: int):
        self.lm = lm
        self.args = args
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.eos_ids = frozenset(eos_ids)
        self.n_ctx = n_ctx
        self.kv_dtype = kv_dtype
        self.path = path
        self._converted = converted_bytes
        self._mapped = mapped_bytes
        self._cache_bytes = 0
        # What lmblocks.convert needs to re-read or save the source: its file's identity, the tokenizer
        # load() was given, and the tensors that replace the file's (by file name), e.g. quantized ones.
        self._source_id = _file_id(path)
        self._tokenizer_arg = None
        self._replaced: dict = {}
        self.quantization: dict | None = None  # set by lb.quantize_model: types and fallbacks
        self._hooks = hooks.HookSet()

    def __repr__(self) -> str:
        a = self.args
        return (f"Model({a.model_type}, {a.num_hidden_layers} layers, D={a.hidden_size}, heads {a.num_attention_heads}/"
                f"{a.num_key_value_heads}, vocab {a.vocab_size}, n_ctx {self.n_ctx}, from {os.path.basename(self.path)!r})")

    # ---- running -----------------------------------------------------------------------------------

    def new_cache(self, n_seq: int = 1, n_ctx: int | None = None, n_batch: int = 512):
        """A KV cache for ``n_seq`` sequences of up to ``n_ctx`` positions (default: the model's)."""
        n_ctx = self.n_ctx if n_ctx is None else n_ctx
        if not 0 < n_ctx <= self.n_ctx:
            raise ValueError(f"n_ctx {n_ctx} must be in [1, {self.n_ctx}] (the model's context)")
        cache = self.lm.make_cache(n_seq, n_ctx, n_batch, self.kv_dtype)
        self._cache_bytes = cache.nbytes
        return cache

    def forward(self, cache, ids, logits: str = "last", seq=None):
        """One native pass over token ids (see :class:`lmblocks.nn.CausalLM`), with the hooks of any
        active :meth:`capture` / :meth:`intervene`. Every method that runs the model goes through here."""
        h = self._hooks.native()
        out = self.lm.forward(cache, ids, seq, logits, h)
        self._hooks.collect(h)
        return out

    # ---- looking inside ----------------------------------------------------------------------------

    def blocks(self) -> dict:
        """Every native block by path (``layers.0``, ``layers.0.attn``, ``layers.0.mlp``, ``norm`` ...):
        the names :meth:`capture` and :meth:`intervene` take."""
        return hooks.named_blocks(self.lm)

    def summary(self, context: int = 0, *, print_table: bool = True) -> dict:
        """Per part (embedding, each layer, final norm, head): parameters, bytes, FLOPs per token, KV cache
        bytes per token of context and the bytes a decode step reads, at ``context`` earlier positions
        (definitions in :mod:`lmblocks.summary`). Prints the table (unless ``print_table=False``) and
        returns ``{"parts": [Part ...], "totals": {...}, "table": str}``."""
        from . import summary

        if isinstance(context, bool) or not isinstance(context, int) or context < 0:
            raise ValueError(f"summary: context must be an integer >= 0, got {context!r}")
        ps = summary.parts(self, context, self.kv_dtype)
        text = summary.table(ps, context)
        if print_table:
            print(text)
        return {"parts": ps, "totals": summary.totals(ps), "table": text}

    @contextlib.contextmanager
    def capture(self, *patterns: str):
        """Record activations while the block runs: ``with model.capture("layers.3.attn.probs") as acts:``.

        A pattern is a block path (``layers.5`` = that layer's output), a path and a point
        (``layers.5.in``, ``layers.3.attn.probs``, ``layers.2.moe.router``), with ``*`` globs
        (``layers.*.out``). Yields an :class:`lmblocks.hooks.Activations`; see :mod:`lmblocks.hooks`.
        Raises ValueError at once for a pattern that matches no block (or a point its blocks lack).
        """
        if not patterns:
            raise ValueError("capture: give at least one pattern, e.g. 'layers.0.attn.probs'")
        hooks.check_patterns(self.lm, patterns, "capture")
        acts = hooks.Activations(patterns)
        self._hooks.captures.append(acts)
        try:
            yield acts
        finally:
            self._hooks.captures.remove(acts)

    @contextlib.contextmanager
    def intervene(self, replacements: Mapping[str, Callable]):
        """Replace block outputs while the block runs: ``{"layers.5.mlp": fn}``, ``fn(out)`` or
        ``fn(out, info)`` (``info.path``, ``info.positions``) returning the new output (same shape), or
        None after changing ``out`` in place. ``out`` (tokens, features) is valid only during the call.

        >>> with model.intervene({"layers.*.mlp": lambda out: out * 0}):   # doctest: +SKIP
        ...     ablated = model.logits(ids)
        """
        if not isinstance(replacements, Mapping) or not replacements:
            raise ValueError("intervene: give a non-empty {pattern: fn} mapping")
        for pat, fn in replacements.items():
            if not callable(fn):
                raise TypeError(f"intervene: the value for {pat!r} is not callable")
            if hooks.split(pat)[1] != "out":
                raise ValueError(f"intervene: {pat!r} names a point; only a block's output can be replaced")
        hooks.check_patterns(self.lm, replacements, "intervene")
        added = [(pat, hooks.replacement(fn)) for pat, fn in replacements.items()]
        self._hooks.replacements.extend(added)
        try:
            yield self
        finally:
            for r in added:
                self._hooks.replacements.remove(r)

    # ---- running -----------------------------------------------------------------------------------

    def _ids(self, ids) -> np.ndarray:
        a = np.asarray(ids)
        if a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"token ids must be a non-empty 1-D sequence of ints, got shape {a.shape} dtype {a.dtype}")
        if a.size > self.n_ctx:
            raise ValueError(f"{a.size} tokens are longer than the context of {self.n_ctx} (n_ctx)")
        return a.astype(np.int32)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (T, vocab) float32 for every position of ``ids``, a fresh sequence from position 0."""
        a = self._ids(ids)
        return self.forward(self.new_cache(1, len(a)), a, logits="all")

    def perplexity(self, text: str | Sequence[int], *, window: int = 512, max_tokens: int | None = None,
                   verbose: bool = True) -> float:
        """exp(mean negative log-likelihood) of ``text`` (or token ids) in non-overlapping windows of
        ``window`` tokens: each window starts a fresh context, and each of its tokens after the first is
        predicted from those before it. ``max_tokens`` keeps only the first tokens. The text is
        tokenized without special tokens (no BOS), as the standard wikitext evaluation does."""
        ids = self.tokenizer.encode(text, add_special=False) if isinstance(text, str) else list(text)
        if max_tokens is not None:
            ids = ids[:max_tokens]
        if window < 2 or window > self.n_ctx:
            raise ValueError(f"window {window} must be in [2, {self.n_ctx}]")
        starts = [s for s in range(0, len(ids), window) if len(ids) - s >= 2]
        if not starts:
            raise ValueError(f"perplexity needs at least 2 tokens, got {len(ids)}")
        nll, count = 0.0, 0
        cache = self.new_cache(1, window)
        it = starts
        if verbose:
            from tqdm.auto import tqdm

            it = tqdm(starts, desc="perplexity", unit="window", leave=False)
        for s in it:
            w = np.asarray(ids[s: s + window], dtype=np.int32)
            cache.clear()
            lg = self.forward(cache, w, logits="all")[:-1].astype(np.float64)  # (n-1, V)
            mx = lg.max(axis=1, keepdims=True)
            lse = (mx[:, 0] + np.log(np.exp(lg - mx).sum(axis=1)))
            nll += float((lse - lg[np.arange(len(w) - 1), w[1:]]).sum())
            count += len(w) - 1
        return math.exp(nll / count)

    def encode_prompt(self, prompt) -> list[int]:
        """Token ids for a prompt: a str (the tokenizer's BOS added, special tokens in the text parsed), or a
        list of chat messages rendered with the model's chat template."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special=True, parse_special=True)
        if isinstance(prompt, (list, tuple)):
            if self.chat_template is None:
                raise ValueError(f"{self.path} has no chat template; pass the prompt as a str")
            text = self.chat_template.render(list(prompt), add_generation_prompt=True)
            return self.tokenizer.encode(text, add_special=False, parse_special=True)
        raise TypeError(f"prompt must be a str or a list of chat messages, got {type(prompt).__name__}")

    def stream(self, prompt, max_tokens: int = 256, *, temperature: float = 0.8, top_k: int = 40,
               top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0, repeat_last_n: int = 64,
               frequency_penalty: float = 0.0, presence_penalty: float = 0.0, seed: int | None = None,
               stop: str | Sequence[str] | None = None) -> Iterator[str]:
        """Generate text for ``prompt`` piece by piece (see :meth:`generate` for the arguments)."""
        yield from self._generate(prompt, max_tokens, SamplingParams(
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
            repeat_last_n=repeat_last_n, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
            seed=seed), stop, None)

    def generate(self, prompt, max_tokens: int = 256, *, temperature: float = 0.8, top_k: int = 40,
                 top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0, repeat_last_n: int = 64,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, seed: int | None = None,
                 stop: str | Sequence[str] | None = None) -> str:
        """The text generated after ``prompt`` (a str, or chat messages ``[{"role": ..., "content": ...}]``).

        Sampling as llama-cpp-python (same names and defaults); ``temperature=0`` is greedy. Generation ends
        at an end-of-generation token, at a ``stop`` string (not included), after ``max_tokens`` tokens, or
        at the context's end.
        """
        return "".join(self.stream(prompt, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                   min_p=min_p, repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                                   frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, seed=seed,
                                   stop=stop))

    def generate_ids(self, prompt_ids: Sequence[int], max_tokens: int, params: SamplingParams | None = None,
                     *, stop_at_eos: bool = True) -> list[int]:
        """The token ids generated after ``prompt_ids`` (no text handling)."""
        out: list[int] = []
        for _ in self._generate(list(prompt_ids), max_tokens, params or SamplingParams(temperature=0), None, out,
                                stop_at_eos=stop_at_eos):
            pass
        return out

    def _generate(self, prompt, max_tokens, params, stop, out_ids, stop_at_eos=True):
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise ValueError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
        ids = list(prompt) if out_ids is not None else self.encode_prompt(prompt)
        if len(ids) >= self.n_ctx:
            raise ValueError(f"the prompt has {len(ids)} tokens, which leaves no room in the context of "
                             f"{self.n_ctx} (n_ctx)")
        n_ctx = min(self.n_ctx, len(ids) + max_tokens)
        cache = self.new_cache(1, max(n_ctx, len(ids)))
        sampler = Sampler(params)
        matcher = StopMatcher(stop)
        history = list(ids)
        # Text is decoded in context (leading spaces, characters split over tokens) from the last few
        # prompt tokens on, not the whole history: decoding is prefix-stable, and this keeps each step
        # independent of the prompt's length.
        context = ids[-8:]
        base = self.tokenizer.decode(context, skip_special=True) if out_ids is None else ""

        def continuation() -> str:
            return self.tokenizer.decode(context + history[len(ids):], skip_special=True)[len(base):]

        shown = 0
        logits = self.forward(cache, np.asarray(ids, np.int32))[0]
        for step in range(max_tokens):
            t = sampler.sample(logits, history)
            if stop_at_eos and t in self.eos_ids:
                break
            history.append(t)
            if out_ids is not None:
                out_ids.append(t)
            else:
                text = continuation()  # a trailing partial character is held back
                end = len(text) - 1 if text.endswith("\ufffd") else len(text)
                if end > shown:
                    piece, stopped = matcher.feed(text[shown:end])
                    shown = end
                    if piece:
                        yield piece
                    if stopped:
                        return
            if step + 1 == max_tokens or cache.length(0) >= cache.n_ctx:
                break
            logits = self.forward(cache, np.asarray([t], np.int32))[0]
        if out_ids is None:
            text = continuation()
            piece, _ = matcher.feed(text[shown:])
            tail = piece + matcher.finish() if not matcher.stopped else piece
            if tail:
                yield tail

    # ---- saving ------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the model as a GGUF v3 file that llama.cpp and :func:`load` read.

        For a model loaded from a GGUF file: every metadata key/value of the source (tokenizer, chat
        template ...) in its order, ``general.file_type`` set to the most common weight type when
        tensors were replaced (see :func:`lmblocks.quantize_model`), and the tensors in the source's
        order with their current types and data, aligned as the source (``general.alignment``, else
        32 bytes). Tensors are written one at a time; the file appears at ``path`` only once complete,
        so saving over the source itself is safe. Models loaded from Hugging Face folders or llama2.c
        files raise NotImplementedError (only GGUF sources can be saved so far).

        >>> import lmblocks as lb
        >>> q = lb.quantize_model(lb.load("SmolLM2-135M-Instruct.Q4_1.gguf"), "q4_k")   # doctest: +SKIP
        >>> q.save("SmolLM2-135M-Instruct.Q4_K.gguf")                                    # doctest: +SKIP
        """
        from .convert import save_gguf

        save_gguf(self, path)

    def memory(self) -> dict:
        """Where the bytes go: ``weights_mapped`` (used straight from the memory-mapped file),
        ``weights_converted`` (copies made at load: rewritten norms and the like), ``kv_cache`` (the last
        cache made) and ``total``."""
        m = {"weights_mapped": self._mapped, "weights_converted": self._converted, "kv_cache": self._cache_bytes}
        m["total"] = sum(m.values())
        return m


# ---- loading -----------------------------------------------------------------------------------------


def load(path: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None, n_ctx: int | None = None,
         kv_dtype: str = "f32", verbose: bool = True) -> Model:
    """Open a checkpoint and build its native model. Weights stay memory-mapped (no copy).

    ``path``: a GGUF file, a Hugging Face folder (``config.json`` + safetensors + ``tokenizer.json``) or
    a llama2.c ``.bin`` (its ``tokenizer.bin``/``tok{vocab}.bin`` is looked for beside it unless
    ``tokenizer`` names one). ``n_ctx``: the longest sequence (default: the model's trained context);
    ``kv_dtype``: "f32" or "f16" for the KV cache.

    >>> import lmblocks as lb
    >>> model = lb.load("SmolLM2-135M-Instruct.Q4_1.gguf", verbose=False)  # doctest: +SKIP
    >>> model.tokenizer.encode("Hello")                                      # doctest: +SKIP
    [19556]
    """
    return _load(path, tokenizer, n_ctx, kv_dtype, verbose)


def _load(path, tokenizer, n_ctx, kv_dtype, verbose, replaced: dict | None = None) -> Model:
    """:func:`load`, with ``replaced`` tensors (by their name in the file) used instead of the file's."""
    path = os.fsdecode(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    from . import serialize

    if serialize.is_saved_model(path):  # a model composed with lmblocks.nn and saved
        tok = _tokenizer_file(tokenizer, 1 << 62) if tokenizer is not None else None
        return serialize.load(path, n_ctx=n_ctx, kv_dtype=kv_dtype, tokenizer=tok)
    reader = open_checkpoint(path)
    replaced = dict(replaced or {})
    get = (lambda n: replaced[n] if n in replaced else reader.tensor(n)) if replaced else reader.tensor
    if isinstance(reader, GGUFFile):
        spec = _from_gguf(reader, path, get)
    elif isinstance(reader, Llama2cFile):
        spec = _from_llama2c(reader, path, tokenizer, get)
    else:
        spec = _from_hf(reader, path, get)
    module, config, weights, tok, template, eos = spec
    if tokenizer is not None and not isinstance(reader, Llama2cFile):
        tok = _tokenizer_file(tokenizer, config["vocab_size"])
    args = models.args_class(module).from_config(config, where=f"{path}: config")
    if tok is not None and tok.vocab_size > args.vocab_size:
        raise FormatError(f"{path}: the tokenizer has {tok.vocab_size} tokens but the embedding only "
                          f"{args.vocab_size} rows")
    lm = module.build(args, weights, _progress(verbose, f"loading {os.path.basename(os.path.normpath(path))}"))
    unused = [n for n in weights.unused() if not n.endswith("rotary_emb.inv_freq")]
    if unused:
        warnings.warn(f"{path}: {len(unused)} tensors were not used, e.g. {unused[:3]}", stacklevel=3)
    ctx = args.max_position_embeddings if n_ctx is None else n_ctx
    if isinstance(ctx, bool) or not isinstance(ctx, int) or not 0 < ctx <= 1 << 40:
        raise ValueError(f"n_ctx must be a positive integer up to 2^40, got {n_ctx!r}")
    if kv_dtype not in ("f32", "f16"):
        raise ValueError(f"kv_dtype must be 'f32' or 'f16', got {kv_dtype!r}")
    if tok is not None:
        eos = set(eos) | set(tok.eog_ids)
    # The readers (and a GGUF's parsed metadata) go now: every tensor keeps its file mapped by itself.
    model = Model(lm, args, tok, template, eos_ids=eos, n_ctx=ctx, kv_dtype=kv_dtype, path=path,
                  converted_bytes=weights.converted_bytes, mapped_bytes=weights.mapped_bytes)
    model._tokenizer_arg = tokenizer
    model._replaced = replaced
    return model


def _file_id(path: str):
    """What tells whether ``path`` is still the file a model was loaded from (None for a folder)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return None if os.path.isdir(path) else (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _Source(models.Weights):
    """Weights that count what they hand out: mapped from the file, or converted at load."""

    def __init__(self, get, names, where, transform=None, label=None):
        super().__init__(self._get_counted, names, where, label)
        self._raw = get
        self._transform = transform
        self.mapped_bytes = 0
        self.converted_bytes = 0

    def _get_counted(self, name):
        t = self._raw(name)
        if self._transform is not None:
            t = self._transform(name, t)
        if isinstance(t, np.ndarray) or not t.readonly:  # file tensors are read-only maps
            self.converted_bytes += t.nbytes
        else:
            self.mapped_bytes += t.nbytes
        return t


def _text(v):
    return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v


def _from_gguf(reader: GGUFFile, path: str, get):
    from .tokenize import ChatTemplate, from_gguf_metadata

    arch = reader.architecture
    module = models.for_gguf(arch, reader.metadata)
    if module is None:
        raise FormatError(f"{path}: architecture {arch!r} (general.architecture) is not supported; supported: "
                          f"{', '.join(sorted(models.BY_GGUF_ARCH))}")
    md = reader.metadata
    config = module.config_from_gguf(md, f"{path}: metadata")
    if "token_embd.weight" not in reader.tensors:
        raise FormatError(f"{path}: tensor 'token_embd.weight' is missing")
    config["vocab_size"] = reader.tensors["token_embd.weight"].shape[0]
    config["tie_word_embeddings"] = "output.weight" not in reader.tensors
    rename = models.base.gguf_renamer(getattr(module, "GGUF_OVERRIDES", None))
    hf_to_gguf = {}
    for name in reader.tensors:
        hf = rename(name)
        if hf is not None:
            hf_to_gguf[hf] = name
    transform = getattr(module, "gguf_tensor", None)
    weights = _Source(lambda n: get(hf_to_gguf[n]), hf_to_gguf, path, transform,
                      label=lambda n: f"'{hf_to_gguf[n]}' (read as '{n}')" if n in hf_to_gguf else repr(n))
    tok = template = None
    if md.get("tokenizer.ggml.model") not in (None, "no_vocab", "none"):  # llama.cpp's names for "ids only"
        tmd = {k: [_text(x) for x in v] if isinstance(v, list) else _text(v)
               for k, v in md.items() if k.startswith("tokenizer.")}
        tok = from_gguf_metadata(tmd)
        tok.gguf_source = path  # a model composed with this tokenizer writes its tokenizer.* keys from here
        if "tokenizer.chat_template" in tmd:
            template = ChatTemplate.from_gguf_metadata(tmd)
    return module, config, weights, tok, template, set()


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a JSON object")
    return data


def _from_hf(reader: SafetensorsCheckpoint, path: str, get):
    from .tokenize import ChatTemplate, from_tokenizer_json

    folder = Path(path if os.path.isdir(path) else os.path.dirname(path))
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FormatError(f"{path}: no config.json beside the weights")
    config = _json_object(cfg_path)
    mt = config.get("model_type")
    if "text_config" in config and (not isinstance(mt, str) or mt not in models.BY_MODEL_TYPE):
        if not isinstance(config["text_config"], dict):
            raise FormatError(f"{cfg_path}: field 'text_config' is {config['text_config']!r}; expected an object")
        config = {**config["text_config"], "model_type": config["text_config"].get("model_type")}
        mt = config.get("model_type")
    module = models.BY_MODEL_TYPE.get(mt) if isinstance(mt, str) else None
    if module is None:
        raise FormatError(f"{cfg_path}: model_type {mt!r} is not supported; supported: "
                          f"{', '.join(sorted(models.BY_MODEL_TYPE))}")
    weights = _Source(get, reader.tensors, path)
    tok = template = None
    if (folder / "tokenizer.json").is_file():
        tok = from_tokenizer_json(folder / "tokenizer.json")
        try:
            template = ChatTemplate.from_tokenizer_config(folder)
        except ValueError:
            template = None
    eos = set()
    for f in (cfg_path, folder / "generation_config.json"):
        if not f.is_file():
            continue
        data = _json_object(f)
        e = data.get("eos_token_id")
        e = [] if e is None else e if isinstance(e, list) else [e]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in e):
            raise FormatError(f"{f}: field 'eos_token_id' is {data.get('eos_token_id')!r}; expected ids")
        eos |= set(e)
    return module, config, weights, tok, template, eos


def _tokenizer_file(path, vocab_size):
    from .tokenize import from_llama2c, from_tokenizer_json

    from .io.llama2c import read_llama2c_tokenizer

    path = os.fsdecode(path)
    if path.endswith(".json"):
        return from_tokenizer_json(path)
    n = len(read_llama2c_tokenizer(path)[0])
    if n > vocab_size:  # run.c would read only the first vocab_size tokens: a mismatched pair, not a model
        raise FormatError(f"{path}: the tokenizer holds {n} tokens but the model's embedding has {vocab_size} rows")
    return from_llama2c(path, vocab_size)


def _from_llama2c(reader: Llama2cFile, path: str, tokenizer, get):
    config = dict(reader.config)
    V = config["vocab_size"]
    if tokenizer is None:
        folder = os.path.dirname(path)
        for cand in (f"tok{V}.bin", "tokenizer.bin"):
            if os.path.exists(os.path.join(folder, cand)):
                tokenizer = os.path.join(folder, cand)
                break
    tok = _tokenizer_file(tokenizer, V) if tokenizer is not None else None
    weights = _Source(get, reader.tensors, path)
    return models.BY_MODEL_TYPE["llama"], config, weights, tok, None, set()

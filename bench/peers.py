"""The peers lmblocks is benchmarked against, timed with the protocol lmblocks is timed with.

Two runners share one interface (bench/llm.py adds lmblocks' own), so the bench can put lmblocks
beside them row by row:

- `LlamaCppRunner`: llama.cpp through llama-cpp-python's low-level ctypes API (built from source
  with -DGGML_NATIVE=ON by bench/install_llamacpp.sh), mmap'd weights, CPU only, one decode call
  for a whole prefill (n_batch = n_ubatch = 512), logits only where the protocol reads them.
- `TorchRunner`: transformers on PyTorch CPU in float32, the oracle lmblocks is checked against.

Protocol: `prefill(tokens)` times one forward over the prompt from an empty KV cache up to the last
token's logits; `decode(n, ctx_tokens)` times n single-token steps (greedy argmax feeds the next
step) after an untimed prefill of ctx_tokens tokens (from token id 1 at position 0 when ctx_tokens
is 0). Prompts are `bench_tokens`, fixed pseudo-random ids. bench/llm.py runs each runner in a fresh
process, so the peers' allocators and mapped weights never share an address space with lmblocks or
with each other.
"""

from __future__ import annotations

import ctypes
import pathlib
import time
from typing import Callable, Protocol

import numpy as np

N_BATCH = 512
TOKEN_SEED = 0


class Runner(Protocol):
    n_vocab: int

    def prefill(self, tokens: list[int]) -> float: ...
    def decode(self, n: int, ctx_tokens: int = 0) -> float: ...
    def greedy(self, tokens: list[int], n: int) -> list[int]: ...
    def logits(self, tokens: list[int]) -> np.ndarray: ...
    def close(self) -> None: ...


def bench_tokens(n: int, n_vocab: int) -> list[int]:
    """A fixed pseudo-random prompt: timing does not depend on what the tokens mean."""
    return np.random.default_rng(TOKEN_SEED).integers(3, n_vocab, size=n).tolist()


# ---- llama.cpp -----------------------------------------------------------------------------------

_NO_LOG = None  # the no-op log callback; ctypes must keep it alive as long as llama.cpp may call it


def _silence_llama_log() -> None:
    """Route llama.cpp's log (load chatter, per-context banners) to a no-op."""
    import llama_cpp

    global _NO_LOG
    _NO_LOG = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    llama_cpp.llama_log_set(_NO_LOG, ctypes.c_void_p(0))


class LlamaCppRunner:
    """One llama.cpp model + context on the CPU, driven token batch by token batch."""

    def __init__(self, path: str | pathlib.Path, n_threads: int, n_ctx: int = 2048) -> None:
        import llama_cpp

        self.ll = llama_cpp
        _silence_llama_log()
        llama_cpp.llama_backend_init()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), self._model_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.ctx = llama_cpp.llama_init_from_model(self.model, self._context_params(n_threads, n_ctx))
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context for {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx = n_ctx
        self.batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)

    def _model_params(self):
        params = self.ll.llama_model_default_params()
        params.n_gpu_layers = 0
        params.load_mode = self.ll.LLAMA_LOAD_MODE_MMAP
        return params

    def _context_params(self, n_threads: int, n_ctx: int):
        params = self.ll.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        return params

    def _clear(self) -> None:
        self.ll.llama_memory_clear(self.ll.llama_get_memory(self.ctx), True)

    def _fill(self, tokens: list[int], pos0: int, all_logits: bool) -> None:
        batch = self.batch
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = pos0 + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = all_logits or i == len(tokens) - 1

    def _decode(self) -> None:
        rc = self.ll.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _last_logits(self) -> np.ndarray:
        """The logits of the batch's last token (reading them waits for the computation)."""
        ptr = self.ll.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def _run_prompt(self, tokens: list[int]) -> int:
        """Append the prompt to the cache in n_batch chunks, return the greedy next token."""
        for start in range(0, len(tokens), N_BATCH):
            self._fill(tokens[start:start + N_BATCH], start, all_logits=False)
            self._decode()
        return int(np.argmax(self._last_logits()))

    def _step(self, token: int, pos: int) -> int:
        self._fill([token], pos, all_logits=False)
        self._decode()
        return int(np.argmax(self._last_logits()))

    def prefill(self, tokens: list[int]) -> float:
        if not 0 < len(tokens) <= N_BATCH:
            raise ValueError(f"prefill takes 1..{N_BATCH} tokens (one llama_decode call)")
        self._clear()
        self._fill(tokens, 0, all_logits=False)
        t0 = time.perf_counter()
        self._decode()
        self._last_logits()
        return time.perf_counter() - t0

    def decode(self, n: int, ctx_tokens: int = 0) -> float:
        self._clear()
        token = self._run_prompt(bench_tokens(ctx_tokens, self.n_vocab)) if ctx_tokens else 1
        t0 = time.perf_counter()
        for pos in range(ctx_tokens, ctx_tokens + n):
            token = self._step(token, pos)
        return time.perf_counter() - t0

    def greedy(self, tokens: list[int], n: int) -> list[int]:
        self._clear()
        out = [self._run_prompt(tokens)]
        for pos in range(len(tokens), len(tokens) + n - 1):
            out.append(self._step(out[-1], pos))
        return out

    def logits(self, tokens: list[int]) -> np.ndarray:
        self._clear()
        chunks = []
        for start in range(0, len(tokens), N_BATCH):
            chunk = tokens[start:start + N_BATCH]
            self._fill(chunk, start, all_logits=True)
            self._decode()
            ptr = self.ll.llama_get_logits(self.ctx)
            chunks.append(np.ctypeslib.as_array(ptr, shape=(len(chunk), self.n_vocab)).copy())
        return np.concatenate(chunks)

    def tokenize(self, text: str) -> list[int]:
        """Text to ids, special tokens such as <|im_start|> parsed, no BOS added."""
        data = text.encode()
        buf = (self.ll.llama_token * (len(data) + 8))()
        n = self.ll.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, True)
        return list(buf[:n])

    def detokenize(self, tokens: list[int]) -> str:
        ids = (self.ll.llama_token * len(tokens))(*tokens)
        buf = ctypes.create_string_buffer(16 * len(tokens) + 16)
        n = self.ll.llama_detokenize(self.vocab, ids, len(tokens), buf, len(buf), False, True)
        return buf.raw[:n].decode(errors="replace")

    def close(self) -> None:
        self.ll.llama_batch_free(self.batch)
        self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)


# ---- transformers on PyTorch CPU -----------------------------------------------------------------

class TorchRunner:
    """transformers' causal LM in float32 on the CPU, stepping with a DynamicCache."""

    def __init__(self, path_or_hf_dir: str | pathlib.Path, n_threads: int) -> None:
        import torch
        import transformers

        self.torch = torch
        torch.set_num_threads(n_threads)
        path = pathlib.Path(path_or_hf_dir)
        kwargs = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
        directory = path.parent if path.suffix == ".gguf" else path
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=torch.float32, **kwargs).eval()
        self.n_vocab = self.model.config.vocab_size
        self.new_cache = lambda: transformers.DynamicCache(config=self.model.config)

    def _forward(self, tokens: list[int], cache, keep: int = 1):
        ids = self.torch.tensor([tokens], dtype=self.torch.long)
        with self.torch.inference_mode():
            return self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=keep).logits[0]

    def _next(self, tokens: list[int], cache) -> int:
        return int(self._forward(tokens, cache)[-1].argmax())

    def prefill(self, tokens: list[int]) -> float:
        cache = self.new_cache()
        t0 = time.perf_counter()
        self._next(tokens, cache)
        return time.perf_counter() - t0

    def decode(self, n: int, ctx_tokens: int = 0) -> float:
        cache = self.new_cache()
        token = self._next(bench_tokens(ctx_tokens, self.n_vocab), cache) if ctx_tokens else 1
        t0 = time.perf_counter()
        for _ in range(n):
            token = self._next([token], cache)
        return time.perf_counter() - t0

    def greedy(self, tokens: list[int], n: int) -> list[int]:
        cache = self.new_cache()
        out = [self._next(tokens, cache)]
        while len(out) < n:
            out.append(self._next([out[-1]], cache))
        return out

    def logits(self, tokens: list[int]) -> np.ndarray:
        return self._forward(tokens, self.new_cache(), keep=0).float().numpy()

    def close(self) -> None:
        del self.model


RUNNERS: dict[str, Callable[[str, int], Runner]] = {"llama.cpp": LlamaCppRunner, "torch": TorchRunner}

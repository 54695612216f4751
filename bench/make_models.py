"""GGUF files for the LLM benchmark, made locally because this machine reaches no model hub.

    python bench/make_models.py [--out DIR] [--only smollm2|tinyllama] [--keep-f16]

- SmolLM2-135M-Instruct at the formats people actually run: its only shipped file is Q4_1, so its
  weights are dequantized to F16 (norms stay F32) with every metadata key copied (tokenizer, chat
  template, hparams), then llama.cpp's own quantizer makes Q4_0, Q4_K_M and Q8_0 from that F16.
  A quantized-twice model is not the published one, but both engines read the same bytes.
- A TinyLlama-1.1B-shaped llama with random weights (std 0.02, seed fixed) and a 32000-token SPM
  vocab: 135M parameters fit in cache, 1.1B do not, and decode speed at that size is a question
  of memory bandwidth, which is what the bigger shape measures. Its text is noise by design.

Every file is loaded by llama.cpp afterwards and must produce tokens; SmolLM2's F16 must answer
a chat prompt sensibly. Files already present are skipped, so the script is cheap to rerun.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Iterator

import gguf
import llama_cpp
import numpy as np

from peers import LlamaCppRunner

DEFAULT_OUT = pathlib.Path.home() / ".cache" / "lmblocks" / "bench-models"
QUANTS = {
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
}
SEED = 0
CHAT_PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
               "<|im_start|>user\nWhat is the capital of France? Answer in one sentence.<|im_end|>\n"
               "<|im_start|>assistant\n")
TINYLLAMA = dict(n_vocab=32000, n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632, n_ctx=2048,
                 rope_theta=10000.0, rms_eps=1e-5)


def say(msg: str) -> None:
    print(msg, flush=True)


# ---- SmolLM2 F16 from the shipped Q4_1 -----------------------------------------------------------

def copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter) -> None:
    """Every key but the header's and the architecture (the writer adds it); file type becomes F16."""
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        if field.name == gguf.Keys.General.FILE_TYPE:
            writer.add_file_type(llama_cpp.LLAMA_FTYPE_MOSTLY_F16)
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)


def dequantized(tensor: gguf.ReaderTensor) -> np.ndarray:
    """F16 for matrices, F32 for vectors (norms), as llama.cpp's converter writes them."""
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return values.astype(np.float32 if values.ndim == 1 else np.float16)


def write_smollm2_f16(src: pathlib.Path, dst: pathlib.Path) -> None:
    reader = gguf.GGUFReader(src)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(dst, arch)
    copy_metadata(reader, writer)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, dequantized(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---- TinyLlama-shaped random llama -----------------------------------------------------------------

def spm_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """<unk> <s> </s>, the 256 byte-fallback tokens, then filler pieces up to n_vocab."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    n_filler = n_vocab - len(tokens)
    tokens += [f"\u2581t{i}" for i in range(n_filler)]
    types += [gguf.TokenType.NORMAL] * n_filler
    scores = [0.0] * (n_vocab - n_filler) + [-float(i) for i in range(n_filler)]
    return tokens, scores, [int(t) for t in types]


def add_tinyllama_metadata(writer: gguf.GGUFWriter, hp: dict) -> None:
    writer.add_name("TinyLlama-1.1B-shaped random weights")
    writer.add_file_type(llama_cpp.LLAMA_FTYPE_MOSTLY_F16)
    writer.add_context_length(hp["n_ctx"])
    writer.add_embedding_length(hp["n_embd"])
    writer.add_block_count(hp["n_layer"])
    writer.add_feed_forward_length(hp["n_ff"])
    writer.add_head_count(hp["n_head"])
    writer.add_head_count_kv(hp["n_head_kv"])
    writer.add_rope_dimension_count(hp["n_embd"] // hp["n_head"])
    writer.add_rope_freq_base(hp["rope_theta"])
    writer.add_layer_norm_rms_eps(hp["rms_eps"])
    writer.add_vocab_size(hp["n_vocab"])
    tokens, scores, types = spm_vocab(hp["n_vocab"])
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)


def tinyllama_shapes(hp: dict) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, NumPy shape) of every tensor; matrices are (out_features, in_features)."""
    d, ff, kv = hp["n_embd"], hp["n_ff"], hp["n_head_kv"] * hp["n_embd"] // hp["n_head"]
    yield "token_embd.weight", (hp["n_vocab"], d)
    for i in range(hp["n_layer"]):
        yield f"blk.{i}.attn_norm.weight", (d,)
        yield f"blk.{i}.attn_q.weight", (d, d)
        yield f"blk.{i}.attn_k.weight", (kv, d)
        yield f"blk.{i}.attn_v.weight", (kv, d)
        yield f"blk.{i}.attn_output.weight", (d, d)
        yield f"blk.{i}.ffn_norm.weight", (d,)
        yield f"blk.{i}.ffn_gate.weight", (ff, d)
        yield f"blk.{i}.ffn_up.weight", (ff, d)
        yield f"blk.{i}.ffn_down.weight", (d, ff)
    yield "output_norm.weight", (d,)
    yield "output.weight", (hp["n_vocab"], d)


def write_tinyllama_f16(dst: pathlib.Path, hp: dict) -> None:
    """Streams one tensor at a time to disk, so memory stays near the largest tensor (~0.4 GB)."""
    writer = gguf.GGUFWriter(dst, "llama")
    add_tinyllama_metadata(writer, hp)
    shapes = list(tinyllama_shapes(hp))
    for name, shape in shapes:
        dtype = np.dtype(np.float32 if len(shape) == 1 else np.float16)
        writer.add_tensor_info(name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(SEED)
    for _, shape in shapes:
        if len(shape) == 1:
            writer.write_tensor_data(np.ones(shape, np.float32))
        else:
            writer.write_tensor_data((rng.standard_normal(shape, np.float32) * 0.02).astype(np.float16))
    writer.close()


# ---- quantize and check --------------------------------------------------------------------------

def quantize(src: pathlib.Path, dst: pathlib.Path, ftype: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:
        raise RuntimeError(f"llama_model_quantize failed for {dst}")


def check_decodes(path: pathlib.Path) -> None:
    """llama.cpp loads the file and greedily produces tokens from a short prompt."""
    runner = LlamaCppRunner(path, n_threads=2, n_ctx=256)
    tokens = runner.greedy([1, 100, 200, 300], 8)
    runner.close()
    if len(tokens) != 8 or not all(0 <= t < runner.n_vocab for t in tokens):
        raise RuntimeError(f"{path.name}: bad greedy output {tokens}")
    say(f"  ok {path.name}: {path.stat().st_size / 2**20:.1f} MiB, greedy {tokens}")


def check_chat(path: pathlib.Path) -> None:
    """SmolLM2 must still be SmolLM2: the F16 answers the chat prompt with Paris."""
    runner = LlamaCppRunner(path, n_threads=2, n_ctx=256)
    text = runner.detokenize(runner.greedy(runner.tokenize(CHAT_PROMPT), 24))
    runner.close()
    say(f"  chat {path.name}: {text!r}")
    if "Paris" not in text:
        raise RuntimeError(f"{path.name} does not answer sensibly: {text!r}")


def make_quants(f16: pathlib.Path, stem: str, out: pathlib.Path) -> None:
    for suffix, ftype in QUANTS.items():
        dst = out / f"{stem}-{suffix}.gguf"
        if dst.exists():
            say(f"  skip {dst.name} (exists)")
            continue
        say(f"  quantizing {dst.name}")
        quantize(f16, dst, ftype)
        check_decodes(dst)


# ---- the two families ----------------------------------------------------------------------------

def make_smollm2(out: pathlib.Path) -> None:
    import lmblocks.assets

    f16 = out / "smollm2-135m-f16.gguf"
    say("SmolLM2-135M-Instruct")
    if f16.exists():
        say(f"  skip {f16.name} (exists)")
    else:
        say(f"  dequantizing {lmblocks.assets.smollm2_135m().name} -> {f16.name}")
        write_smollm2_f16(lmblocks.assets.smollm2_135m(), f16)
        check_decodes(f16)
        check_chat(f16)
    make_quants(f16, "smollm2-135m", out)


def make_tinyllama(out: pathlib.Path, keep_f16: bool) -> None:
    f16 = out / "tinyllama-shape-f16.gguf"
    say("TinyLlama-1.1B shape, random weights")
    if all((out / f"tinyllama-shape-{s}.gguf").exists() for s in QUANTS) and not keep_f16:
        say("  skip (all quantized files exist)")
        return
    if not f16.exists():
        say(f"  writing {f16.name} (random normal, std 0.02, seed {SEED})")
        write_tinyllama_f16(f16, TINYLLAMA)
        check_decodes(f16)
    make_quants(f16, "tinyllama-shape", out)
    if not keep_f16:
        f16.unlink()
        say(f"  removed {f16.name} (pass --keep-f16 to keep it)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    ap.add_argument("--only", choices=["smollm2", "tinyllama"])
    ap.add_argument("--keep-f16", action="store_true", help="keep tinyllama-shape-f16.gguf (2.1 GiB)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "smollm2"):
        make_smollm2(args.out)
    if args.only in (None, "tinyllama"):
        make_tinyllama(args.out, args.keep_f16)
    for path in sorted(args.out.glob("*.gguf")):
        say(f"{path.stat().st_size / 2**20:9.1f} MiB  {path}")


if __name__ == "__main__":
    main()

"""GGUF files for the LLM benchmark, made locally because this machine reaches no model hub.

    python bench/make_models.py [--out DIR] [--only smollm2|tinyllama|olmoe|mamba2|hybrid] [--keep-f16]

- SmolLM2-135M-Instruct at the formats people actually run: its only shipped file is Q4_1, so its
  weights are dequantized to F16 (norms stay F32) with every metadata key copied (tokenizer, chat
  template, hparams), then llama.cpp's own quantizer makes Q4_0, Q4_K_M and Q8_0 from that F16.
  A quantized-twice model is not the published one, but both engines read the same bytes.
- A TinyLlama-1.1B-shaped llama with random weights (std 0.02, seed fixed) and a 32000-token SPM
  vocab: 135M parameters fit in cache, 1.1B do not, and decode speed at that size is a question
  of memory bandwidth, which is what the bigger shape measures. Its text is noise by design.
- An OLMoE-1B-7B-shaped mixture of experts ("olmoe": 16 layers, 64 experts of F=1024, top 8, q/k
  RMSNorm over all heads; H = Hkv as llama.cpp's olmoe graph requires) with random weights the same
  way, in Q4_0 only (~3.9 GB; its F16 is 13 GB while it lasts). Routers stay F32 as llama.cpp's
  converter writes them (and its quantizer leaves them). Decode reads 8 of 64 experts per layer, so
  about 1.2B parameters a token. The embedding has std 1 and the matrices writing into the residual
  stream (attn_output, ffn_down_exps) std 0.005, so each token's own embedding dominates its residual:
  with std 0.02 everywhere the attention's average over the context swamps it and, from the second
  layer on, every token picks the same few experts (22-37 of 64 used, one taking all 256 tokens). The
  check prints how evenly the router spreads 512 tokens over the experts.

- A Mamba2-130M-shaped state-space model ("mamba2": 24 layers of Mamba2 only, D=768, 24 heads of 64,
  state 128, one group, tied 50280-row embedding) composed with lmblocks.nn (transformers' init,
  seed fixed) and written by lmblocks' GGUF exporter as F32, then quantized by llama.cpp to Q8_0 and
  Q4_0 (the conv, A, D, dt and norm tensors stay F32, as llama-quantize leaves them). No tokenizer
  ("no_vocab"): both engines take token ids.
- A Granite-4.0-H-shaped hybrid at the same width ("granitehybrid": 24 layers, every sixth attention
  without rope (12 heads, 4 KV heads), the rest Mamba2 as above, each layer with a gated MLP of 2048),
  written and quantized the same way.

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
TINYLLAMA = dict(arch="llama", name="TinyLlama-1.1B-shaped random weights", n_vocab=32000, n_embd=2048,
                 n_layer=22, n_head=32, n_head_kv=4, n_ff=5632, n_ctx=2048, rope_theta=10000.0, rms_eps=1e-5)
OLMOE = dict(arch="olmoe", name="OLMoE-1B-7B-shaped random weights", n_vocab=50304, n_embd=2048, n_layer=16,
             n_head=16, n_head_kv=16, n_ff=1024, n_ctx=4096, rope_theta=10000.0, rms_eps=1e-5, n_expert=64,
             n_expert_used=8, std={"token_embd": 1.0, "attn_output": 0.005, "ffn_down_exps": 0.005})


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


def add_random_metadata(writer: gguf.GGUFWriter, hp: dict) -> None:
    writer.add_name(hp["name"])
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
    if "n_expert" in hp:  # olmoe: the experts' F is feed_forward_length, as llama.cpp's converter writes it
        writer.add_expert_count(hp["n_expert"])
        writer.add_expert_used_count(hp["n_expert_used"])
        writer.add_expert_feed_forward_length(hp["n_ff"])
    tokens, scores, types = spm_vocab(hp["n_vocab"])
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)


def random_shapes(hp: dict) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, NumPy shape) of every tensor; matrices are (out_features, in_features). With hp["n_expert"],
    llama.cpp's olmoe: q/k norms over all heads, a router and experts stacked (E, F, D) (E, F, D) (E, D, F)."""
    d, ff, e = hp["n_embd"], hp["n_ff"], hp.get("n_expert")
    kv = hp["n_head_kv"] * d // hp["n_head"]
    yield "token_embd.weight", (hp["n_vocab"], d)
    for i in range(hp["n_layer"]):
        yield f"blk.{i}.attn_norm.weight", (d,)
        yield f"blk.{i}.attn_q.weight", (d, d)
        yield f"blk.{i}.attn_k.weight", (kv, d)
        yield f"blk.{i}.attn_v.weight", (kv, d)
        if e:
            yield f"blk.{i}.attn_q_norm.weight", (d,)
            yield f"blk.{i}.attn_k_norm.weight", (kv,)
        yield f"blk.{i}.attn_output.weight", (d, d)
        yield f"blk.{i}.ffn_norm.weight", (d,)
        if e:
            yield f"blk.{i}.ffn_gate_inp.weight", (e, d)
            yield f"blk.{i}.ffn_gate_exps.weight", (e, ff, d)
            yield f"blk.{i}.ffn_up_exps.weight", (e, ff, d)
            yield f"blk.{i}.ffn_down_exps.weight", (e, d, ff)
        else:
            yield f"blk.{i}.ffn_gate.weight", (ff, d)
            yield f"blk.{i}.ffn_up.weight", (ff, d)
            yield f"blk.{i}.ffn_down.weight", (d, ff)
    yield "output_norm.weight", (d,)
    yield "output.weight", (hp["n_vocab"], d)


def write_random_f16(dst: pathlib.Path, hp: dict) -> None:
    """Streams one tensor at a time to disk, so memory stays near the largest tensor (0.5 GB as f32).
    Norms are ones (F32), routers F32 (llama.cpp's converter keeps ffn_gate_inp F32), the rest F16,
    random normal with std 0.02 unless hp["std"] names the tensor kind ("token_embd", "attn_output")."""
    writer = gguf.GGUFWriter(dst, hp["arch"])
    add_random_metadata(writer, hp)
    shapes = list(random_shapes(hp))
    f32 = [len(shape) == 1 or ".ffn_gate_inp." in name for name, shape in shapes]
    for (name, shape), keep in zip(shapes, f32):
        dtype = np.dtype(np.float32 if keep else np.float16)
        writer.add_tensor_info(name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(SEED)
    for (name, shape), keep in zip(shapes, f32):
        if len(shape) == 1:
            writer.write_tensor_data(np.ones(shape, np.float32))
        else:
            w = rng.standard_normal(shape, np.float32) * np.float32(hp.get("std", {}).get(name.split(".")[-2], 0.02))
            writer.write_tensor_data(w if keep else w.astype(np.float16))
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


def check_routing(path: pathlib.Path, n_tokens: int = 512) -> None:
    """lmblocks runs the MoE file on a random prompt; prints how many of the slots each expert got, over
    all layers (even spread: n_tokens * k / E each), and fails if a few experts take everything."""
    import lmblocks as lb

    model = lb.load(path, n_ctx=n_tokens, verbose=False)
    hooks = lb.nn.Hooks()
    hooks.capture("layers.*.moe.experts")
    ids = np.random.default_rng(SEED).integers(3, model.args.vocab_size, n_tokens).astype(np.int32)
    model.lm.forward(model.new_cache(1, n_tokens), ids, hooks=hooks)
    chosen = [np.asarray(v) for _, v, _, _ in hooks.records()]
    counts = np.stack([np.bincount(c.ravel(), minlength=model.args.num_experts) for c in chosen])
    per_layer = counts.max(1) / (counts.sum(1) / counts.shape[1])
    say(f"  routing over {n_tokens} tokens: slots per expert (all layers) min {counts.sum(0).min()} "
        f"median {int(np.median(counts.sum(0)))} max {counts.sum(0).max()}; busiest expert per layer "
        f"{per_layer.min():.1f}-{per_layer.max():.1f}x the mean; experts unused in some layer: "
        f"{int((counts == 0).sum())} of {counts.size}")
    if (counts == 0).mean() > 0.05 or per_layer.max() > 3:
        raise RuntimeError(f"{path.name}: the router's choices are degenerate")


def make_quants(f16: pathlib.Path, stem: str, out: pathlib.Path, quants: dict[str, int] = QUANTS) -> None:
    for suffix, ftype in quants.items():
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
        write_random_f16(f16, TINYLLAMA)
        check_decodes(f16)
    make_quants(f16, "tinyllama-shape", out)
    if not keep_f16:
        f16.unlink()
        say(f"  removed {f16.name} (pass --keep-f16 to keep it)")


def make_olmoe(out: pathlib.Path, keep_f16: bool) -> None:
    f16, q4 = out / "olmoe-shape-f16.gguf", out / "olmoe-shape-q4_0.gguf"
    say("OLMoE-1B-7B shape, random weights")
    if q4.exists() and not keep_f16:
        say(f"  skip {q4.name} (exists)")
        return
    if not f16.exists():
        say(f"  writing {f16.name} (random normal, std 0.02 but as OLMOE['std'] says, seed {SEED})")
        write_random_f16(f16, OLMOE)
    make_quants(f16, "olmoe-shape", out, {"q4_0": QUANTS["q4_0"]})
    check_routing(q4)
    if not keep_f16:
        f16.unlink()
        say(f"  removed {f16.name} (pass --keep-f16 to keep it)")


MAMBA2 = dict(dim=768, n_layer=24, head_dim=64, state_size=128, n_groups=1, n_vocab=50280)


HYBRID = dict(MAMBA2, n_head=12, n_head_kv=4, n_ff=2048, attn_every=6)


def make_ssm(out: pathlib.Path, stem: str, hybrid: bool) -> None:
    """Compose the model with lmblocks.nn (seeded), write it with lmblocks' exporter, quantize with llama.cpp."""
    import lmblocks as lb
    from lmblocks import nn

    f32 = out / f"{stem}-f32.gguf"
    say(f"{stem}: random weights")
    if f32.exists():
        say(f"  skip {f32.name} (exists)")
    else:
        hp, rng = (HYBRID if hybrid else MAMBA2), np.random.default_rng(SEED)
        D = hp["dim"]
        mlp = (lambda: nn.MLP(D, hp["n_ff"], rng=rng)) if hybrid else (lambda: None)
        blocks = {"M": lambda i: nn.Layer(nn.Mamba2(D, head_dim=hp["head_dim"], state_size=hp["state_size"],
                                                    n_groups=hp["n_groups"], rng=rng), mlp(), eps=1e-5),
                  "A": lambda i: nn.Layer(nn.Attention(D, hp["n_head"], hp["n_head_kv"], rope=False, rng=rng), mlp(),
                                          eps=1e-5)}
        pattern = "".join("A" if hybrid and i % hp["attn_every"] == hp["attn_every"] - 1 else "M"
                          for i in range(hp["n_layer"]))
        model = nn.Model(nn.Embedding(hp["n_vocab"], D, rng=rng), nn.Stack(pattern, blocks), nn.RMSNorm(D, eps=1e-5))
        model.save(f32)
        say(f"  wrote {f32.name} ({pattern}, lmblocks {lb.__version__})")
        check_decodes(f32)
    make_quants(f32, stem, out, {"q8_0": QUANTS["q8_0"], "q4_0": QUANTS["q4_0"]})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    ap.add_argument("--only", choices=["smollm2", "tinyllama", "olmoe", "mamba2", "hybrid"])
    ap.add_argument("--keep-f16", action="store_true",
                    help="keep tinyllama-shape-f16.gguf (2.1 GiB) and olmoe-shape-f16.gguf (13 GiB)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "smollm2"):
        make_smollm2(args.out)
    if args.only in (None, "tinyllama"):
        make_tinyllama(args.out, args.keep_f16)
    if args.only in (None, "olmoe"):
        make_olmoe(args.out, args.keep_f16)
    if args.only in (None, "mamba2"):
        make_ssm(args.out, "mamba2-shape", hybrid=False)
    if args.only in (None, "hybrid"):
        make_ssm(args.out, "granitehybrid-shape", hybrid=True)
    for path in sorted(args.out.glob("*.gguf")):
        say(f"{path.stat().st_size / 2**20:9.1f} MiB  {path}")


if __name__ == "__main__":
    main()

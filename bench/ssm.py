"""State-space models: lmblocks against transformers' CPU path on the same Mamba2 checkpoint, and the
memory a pure SSM keeps against a transformer's KV cache.

    python bench/ssm.py [--threads 1 2] [--rounds 3] [--quick]

1. A random-weight Mamba2-130M-shaped checkpoint (D=768, 24 layers, 24 heads of 64, state 128, one
   group, vocab 50280) made with transformers (`Mamba2ForCausalLM(config)`, `save_pretrained`) and
   loaded by both engines in this process, float32. Prefill of 512 and 2048 tokens (one call, last
   logits) and greedy decode of 32 tokens after a 512-token prompt, interleaved rounds, medians.
   transformers runs its torch path (no mamba_ssm / causal_conv1d kernels on CPU), the one a
   researcher gets. Issue 6's bars: prefill >= 20x, decode >= 10x. lmblocks also runs the same
   checkpoint with its projections and embedding quantized to q8_0 and to q4_0 (`lb.quantize_model`),
   columns of their own (and each one's prefill once more with int8 activations,
   lb.set_activation_bits(8), llama.cpp's precision), as issue 4 compares our Q4_1 SmolLM2 with
   transformers' float32: the float32 column compares like with like. The machine's ceilings are measured in the same
   run (peak FMA rate, DRAM read bandwidth), and the report says what each bar would need of them.
2. Memory: the recurrent state of that Mamba2 model per sequence against the KV cache of an
   equal-width Llama-style transformer (24 layers, 12 heads of 64, f16 cache) at 1k, 8k and 32k tokens,
   from lmblocks' own summaries.

Writes bench/results/ssm-<UTC>.json and its section of bench/RESULTS.md. llama.cpp runs Mamba2 too:
that comparison is bench/llm.py on the Mamba2-shaped GGUFs (`--models mamba2-shape-f32 mamba2-shape-q8_0
mamba2-shape-q4_0 --torch none --section llm_mamba2`).
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402

SHAPE = dict(hidden_size=768, num_hidden_layers=24, num_heads=24, head_dim=64, state_size=128, n_groups=1,
             expand=2, conv_kernel=4, vocab_size=50280, chunk_size=256, tie_word_embeddings=True)
QUANTS = ("q8_0", "q4_0")  # our quantized copies of the checkpoint (lb.quantize_model), each a column
QUICK = dict(SHAPE, hidden_size=256, num_hidden_layers=4, num_heads=8, vocab_size=8192)


def make_checkpoint(shape: dict, folder: pathlib.Path):
    import torch
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(0)
    model = Mamba2ForCausalLM(Mamba2Config(**shape)).eval()
    model.save_pretrained(folder)
    return model


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_engines(shape: dict, threads: int, rounds: int, prefills, n_decode: int) -> dict:
    import torch

    import lmblocks as lb

    lb.set_num_threads(threads)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        ref = make_checkpoint(shape, pathlib.Path(tmp))
        ours = lb.load(tmp, verbose=False)
        quantized = {q: lb.quantize_model(ours, q, verbose=False) for q in QUANTS}
    # our engines: float32, each quantized copy, and each quantized copy's prefill with int8 activations
    # (llama.cpp's activation precision; decode stays int16, where it is bandwidth-bound anyway)
    engines = {"lmblocks": (ours, 16), **{f"lmblocks_{q}": (m, 16) for q, m in quantized.items()}}
    prefill_engines = {**engines, **{f"lmblocks_{q}_int8": (m, 8) for q, m in quantized.items()}}
    V = shape["vocab_size"]
    rng = np.random.default_rng(0)

    def with_bits(bits, fn):
        lb.set_activation_bits(bits)
        try:
            return fn()
        finally:
            lb.set_activation_bits(16)

    out: dict = {}
    for T in prefills:
        ids = rng.integers(0, V, T).astype(np.int32)
        runs: dict = {k: [] for k in (*prefill_engines, "transformers")}
        for _ in range(rounds):
            for name, (m, bits) in prefill_engines.items():
                runs[name].append(T / with_bits(bits, lambda: timed(lambda: m.forward(m.new_cache(1, T), ids))))
            with torch.no_grad():
                runs["transformers"].append(T / timed(lambda: ref(torch.from_numpy(ids).long()[None], logits_to_keep=1)))
        out[f"prefill{T}"] = {k: statistics.median(v) for k, v in runs.items()}
    prompt = rng.integers(0, V, 512)

    def ours_decode(model):
        cache = model.new_cache(1, 512 + n_decode + 1)
        lg = model.forward(cache, prompt.astype(np.int32))[0]
        t0 = time.perf_counter()
        for _ in range(n_decode):
            lg = model.forward(cache, np.asarray([int(lg.argmax())], np.int32))[0]
        return n_decode / (time.perf_counter() - t0)

    @torch.no_grad()
    def torch_decode():
        r = ref(torch.from_numpy(prompt)[None], use_cache=True, logits_to_keep=1)
        cache, tok = r.cache_params, r.logits[0, -1].argmax()
        t0 = time.perf_counter()
        for _ in range(n_decode):
            r = ref(tok.view(1, 1), cache_params=cache, use_cache=True)
            cache, tok = r.cache_params, r.logits[0, -1].argmax()
        return n_decode / (time.perf_counter() - t0)

    runs = {k: [] for k in (*engines, "transformers")}
    for _ in range(rounds):
        for name, (m, _) in engines.items():
            runs[name].append(ours_decode(m))
        runs["transformers"].append(torch_decode())
    out["decode"] = {k: statistics.median(v) for k, v in runs.items()}
    for v in out.values():
        for k in [k for k in v if k.startswith("lmblocks")]:
            v["ratio" + k[len("lmblocks"):]] = v[k] / v["transformers"]
    return out


def per_token(shape: dict) -> dict:
    """FLOPs of the weight matmuls per prompt token (the head runs for the last token only) and bytes of
    float32 weights a decode step reads (every projection, the norms, the tied head), from the shape."""
    D, L, H, P, G, N, K, V = (shape[k] for k in ("hidden_size", "num_hidden_layers", "num_heads", "head_dim",
                                                 "n_groups", "state_size", "conv_kernel", "vocab_size"))
    di = H * P
    cd = di + 2 * G * N
    proj = L * ((di + cd + H) * D + D * di)
    small = L * (cd * (K + 1) + 3 * H + di + D) + D
    return {"prefill_flops": 2 * proj, "decode_bytes": 4 * (proj + small + V * D)}


def memory(shape: dict) -> dict:
    """Mamba2 state per sequence vs an equal-width transformer's f16 KV cache, from lmblocks' summaries."""
    from lmblocks import nn

    D, L = shape["hidden_size"], shape["num_hidden_layers"]
    rng = np.random.default_rng(0)
    ssm = nn.Model(nn.Embedding(16, D, rng=rng), nn.Stack("M" * L, {"M": lambda i: nn.Layer(nn.Mamba2(
        D, shape["num_heads"], shape["head_dim"], state_size=shape["state_size"], rng=rng))}), nn.RMSNorm(D),
        kv_dtype="f16")
    attn = nn.Model(nn.Embedding(16, D, rng=rng), nn.Stack("A" * L, {"A": lambda i: nn.Layer(nn.Attention(
        D, D // 64, rng=rng), nn.MLP(D, 4 * D, rng=rng))}), nn.RMSNorm(D), kv_dtype="f16")
    out = {}
    for n in (1024, 8192, 32768):
        s = ssm.summary(context=n, print_table=False)["totals"]
        a = attn.summary(context=n, print_table=False)["totals"]
        out[str(n)] = {"ssm_state_bytes": s["state_bytes"] + s["kv_bytes"], "transformer_kv_bytes": a["kv_bytes"]}
    return out


def render(rec: dict) -> str:
    c, need = rec["ceilings"], per_token(rec["shape"])
    quants = rec.get("quants", ["q8_0"])
    lines = [f"## State-space models (`{rec.get('command', 'bench/ssm.py')}`, {rec['utc']})", "",
             f"{rec['cpu']}; Mamba2 {rec['shape']['hidden_size']}x{rec['shape']['num_hidden_layers']} "
             f"random weights; median of {rec['rounds']} interleaved rounds; transformers' torch path in float32. "
             "Measured in the same run: peak FMA " + ", ".join(f"{v:.0f} GFLOP/s at {n}T" for n, v in c["fma_gflops"].items())
             + "; DRAM read " + ", ".join(f"{v:.1f} GB/s at {n}T" for n, v in c["dram_read_gbs"].items()) + ".", "",
             "| threads | figure | transformers f32 tok/s | lmblocks f32 tok/s | ratio (bar) | "
             + " | ".join(f"{q} (ratio) | {q}, int8 act. (ratio)" for q in quants) + " | what the bar needs in f32 |",
             "|---" * (6 + 2 * len(quants)) + "|"]

    def cell(v, key):
        return f"{v['lmblocks' + key]:.1f} ({v['ratio' + key]:.1f}x)" if "lmblocks" + key in v else "–"

    for n, res in rec["threads"].items():
        for k, v in res.items():
            bar = 10 if k == "decode" else 20
            want = bar * v["transformers"]
            if k == "decode":
                needs = f"{want * need['decode_bytes'] / 1e9:.0f} GB/s of weights (DRAM {c['dram_read_gbs'][n]:.0f})"
            else:
                needs = f"{want * need['prefill_flops'] / 1e9:.0f} GFLOP/s in matmuls (peak {c['fma_gflops'][n]:.0f})"
            lines.append(f"| {n} | {k} | {v['transformers']:.1f} | {v['lmblocks']:.1f} | {v['ratio']:.1f}x (>= {bar}x) | "
                         + " | ".join(f"{cell(v, '_' + q)} | {cell(v, '_' + q + '_int8')}" for q in quants)
                         + f" | {needs} |")
    lines += ["", "| context | Mamba2 state (per sequence) | equal-width transformer KV (f16) |", "|---|---|---|"]
    for n, m in rec["memory"].items():
        lines.append(f"| {n} | {m['ssm_state_bytes'] / 2**20:.2f} MiB | {m['transformer_kv_bytes'] / 2**20:.1f} MiB |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a small model, one round: a smoke run")
    args = ap.parse_args(argv)
    import lmblocks as lb
    from lmblocks import ceilings

    shape = QUICK if args.quick else SHAPE
    rounds = 1 if args.quick else args.rounds
    prefills = (128,) if args.quick else (512, 2048)
    rec = {"utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "cpu": lb.cpu_info().get("model"), "shape": shape, "rounds": rounds, "quants": list(QUANTS), "threads": {},
           "command": "bench/ssm.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print("measuring the machine's ceilings ...", flush=True)
    ceil = ceilings.measure(threads=tuple(args.threads), quick=args.quick)
    rec["ceilings"] = {k: {str(n): v for n, v in ceil[k].items()} for k in ("fma_gflops", "dram_read_gbs")}
    for n in args.threads:
        rec["threads"][str(n)] = bench_engines(shape, n, rounds, prefills, 8 if args.quick else 32)
        print(n, rec["threads"][str(n)], flush=True)
    rec["memory"] = memory(shape)
    md = render(rec)
    print(md)
    report.write("ssm", rec, md)


if __name__ == "__main__":
    main()

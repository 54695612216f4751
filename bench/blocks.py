"""Costs of composing: hooks when unused, and Mixture-of-Experts decode against a dense model of the
same active parameters.

    python bench/blocks.py [--threads 1 2] [--rounds 5] [--quick]

1. Hooks (SmolLM2-135M Q4_1, the real file): decode tok/s of one native call per token with no hooks,
   with a hook set whose pattern matches no block on the way (every block then runs its glob test:
   strictly more work than the no-hook pointer test), capturing every layer's output, and capturing
   every layer's attention probabilities. "set, unused / none" near 1.00 is the zero-cost claim.
2. MoE (random weights, q8_0, built with lmblocks.nn): a dense model against an MoE whose experts
   hold >= 8x the active parameters in total (same attention, same active MLP width: top_k experts
   of hidden F/top_k). Decode of 64 tokens from a 256-token context, and prefill of 256 tokens.
   Bar (issue 5): dense decode tok/s / MoE decode tok/s <= 1.3.

Rounds interleave the variants; figures are medians. Writes bench/results/blocks-<UTC>.json and the
section between the blocks.py markers of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402


def decode_tok_s(model, n_tokens: int, context: list[int], hooks=None) -> float:
    """Greedy decode of n_tokens after a prefilled context (untimed), one native call per token, with
    ``hooks`` (an lmblocks.nn.Hooks, or None) on every call."""
    lm = model.lm
    cache = model.new_cache(1, len(context) + n_tokens + 1)
    logits = lm.forward(cache, np.asarray(context, np.int32), None, "last", hooks)[0]
    t0 = time.perf_counter()
    for _ in range(n_tokens):
        logits = lm.forward(cache, np.asarray([int(np.argmax(logits))], np.int32), None, "last", hooks)[0]
    return n_tokens / (time.perf_counter() - t0)


def prefill_tok_s(model, ids: list[int]) -> float:
    cache = model.new_cache(1, len(ids))
    t0 = time.perf_counter()
    model.forward(cache, np.asarray(ids, np.int32))
    return len(ids) / (time.perf_counter() - t0)


def bench_hooks(rounds: int, n_tokens: int) -> list[dict]:
    import lmblocks as lb

    model = lb.load(lb.assets.smollm2_135m(), n_ctx=512, kv_dtype="f16", verbose=False)
    ctx = model.tokenizer.encode("The history of the printing press begins")
    variants = {
        "none": None,
        "set, unused": ("layers.999.out",),  # every block runs its glob test; none matches
        "capture layers.*.out": ("layers.*.out",),
        "capture layers.*.attn.probs": ("layers.*.attn.probs",),
    }

    def hooks(pats):
        if pats is None:
            return None
        h = lb.nn.Hooks()
        for p in pats:
            h.capture(p)
        return h

    decode_tok_s(model, 8, ctx)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, pats in variants.items():
            times[name].append(decode_tok_s(model, n_tokens, ctx, hooks(pats)))
    base = statistics.median(times["none"])
    return [{"variant": k, "decode_tok_s": statistics.median(v), "vs_none": statistics.median(v) / base}
            for k, v in times.items()]


def moe_pair(D: int, L: int, V: int, F: int, E: int, k: int, dtype: str):
    from lmblocks import nn

    def model(moe: bool):
        rng = np.random.default_rng(0)
        attn = lambda: nn.Attention(D, D // 64, max(1, D // 256), dtype=dtype, rng=rng)  # noqa: E731
        mlp = (lambda: nn.MoE(D, F // k, n_experts=E, top_k=k, dtype=dtype, rng=rng)) if moe else \
            (lambda: nn.MLP(D, F, dtype=dtype, rng=rng))
        return nn.Model(nn.Embedding(V, D, rng=rng, dtype=dtype), nn.Stack("L" * L, {"L": lambda i: nn.Layer(attn(), mlp())}),
                        nn.RMSNorm(D), n_ctx=1024, kv_dtype="f16")

    return model(False), model(True)


def bench_moe(rounds: int, n_tokens: int, quick: bool) -> dict:
    D, L, V, F, E, k = (512, 4, 8192, 1408, 16, 2) if quick else (1024, 8, 32000, 2816, 32, 2)
    dense, moe = moe_pair(D, L, V, F, E, k, "q8_0")
    sd, sm = dense.summary(print_table=False)["totals"], moe.summary(print_table=False)["totals"]
    ctx = list(np.random.default_rng(1).integers(0, V, 256))
    out = {"shape": dict(D=D, layers=L, vocab=V, dense_F=F, experts=E, top_k=k, expert_F=F // k, dtype="q8_0"),
           "dense_params": sd["params"], "moe_params": sm["params"]}
    for m in (dense, moe):
        decode_tok_s(m, 4, ctx[:16])
    dec = {"dense": [], "moe": []}
    pre = {"dense": [], "moe": []}
    for _ in range(rounds):
        for name, m in (("dense", dense), ("moe", moe)):
            dec[name].append(decode_tok_s(m, n_tokens, ctx))
            pre[name].append(prefill_tok_s(m, ctx))
    out |= {f"{n}_decode_tok_s": statistics.median(v) for n, v in dec.items()}
    out |= {f"{n}_prefill_tok_s": statistics.median(v) for n, v in pre.items()}
    out["dense_over_moe_decode"] = out["dense_decode_tok_s"] / out["moe_decode_tok_s"]
    # Active parameters of the MoE: what a decode step multiplies (FLOPs / 2 at context 0).
    out["moe_total_over_active"] = sm["params"] / (sm["flops"] / 2)
    return out


def render(rec: dict) -> str:
    lines = [f"## Blocks: hooks and MoE (bench/blocks.py, {rec['utc']})", "",
             f"{rec['cpu']}; median of {rec['rounds']} interleaved rounds.", ""]
    for n, res in rec["threads"].items():
        lines += [f"### {n} thread{'s' * (int(n) > 1)}", "",
                  "| hooks on SmolLM2-135M Q4_1 | decode tok/s | vs none |", "|---|---|---|"]
        lines += [f"| {h['variant']} | {h['decode_tok_s']:.1f} | {h['vs_none']:.3f} |" for h in res["hooks"]]
        m = res["moe"]
        s = m["shape"]
        lines += ["", f"MoE: D={s['D']}, {s['layers']} layers, vocab {s['vocab']}, {s['dtype']}; dense MLP {s['dense_F']} "
                  f"vs {s['experts']} experts of {s['expert_F']}, top-{s['top_k']} (total / active parameters "
                  f"{m['moe_total_over_active']:.1f}x).", "",
                  "| model | params | decode tok/s @256 | prefill 256 tok/s |", "|---|---|---|---|",
                  f"| dense | {m['dense_params'] / 1e6:.1f} M | {m['dense_decode_tok_s']:.1f} | {m['dense_prefill_tok_s']:.0f} |",
                  f"| MoE | {m['moe_params'] / 1e6:.1f} M | {m['moe_decode_tok_s']:.1f} | {m['moe_prefill_tok_s']:.0f} |",
                  "", f"dense / MoE decode: **{m['dense_over_moe_decode']:.2f}x** (bar <= 1.3)", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small shapes, 1 round: a smoke run")
    args = ap.parse_args(argv)
    import lmblocks as lb

    rounds = 1 if args.quick else args.rounds
    n_tokens = 16 if args.quick else 64
    rec = {"utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "cpu": lb.cpu_info().get("model"), "platform": platform.platform(), "rounds": rounds,
           "lmblocks": lb.__version__, "threads": {}}
    for n in args.threads:
        lb.set_num_threads(n)
        rec["threads"][str(n)] = {"hooks": bench_hooks(rounds, n_tokens), "moe": bench_moe(rounds, n_tokens, args.quick)}
        print(json.dumps(rec["threads"][str(n)], indent=1), flush=True)
    md = render(rec)
    print(md)
    report.write("blocks", rec, md)

if __name__ == "__main__":
    main()

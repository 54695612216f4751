"""lmblocks against llama.cpp and transformers on the same GGUF files: prefill and decode speed, peak
RSS, and decode's use of the DRAM bandwidth measured in the same run.

    python bench/llm.py [--quick] [--threads 1 2] [--models smollm2-q4_1 gemma3-q4_k_m ...]
                        [--rounds 5] [--torch smollm2-q4_1 gemma3-q4_k_m | --torch none]
    lmblocks bench ...   (the same)

Peers: llama.cpp through llama-cpp-python built from source with -DGGML_NATIVE=ON
(`make llamacpp`, i.e. bench/install_llamacpp.sh), and transformers on PyTorch CPU float32 (only for
the models `--torch` names: it dequantizes a whole GGUF to f32 at each load).

Protocol (bench/peers.py): every (model, threads) pair runs `--rounds` rounds; in each round every
engine runs once in a fresh process (so peak RSS is its own and no allocator or mapping is shared),
the engines interleaved, and a figure is the median over rounds. One process measures, after a
warm-up: prefill of 128 and of 512 tokens (one call from an empty cache to the last token's logits),
decode of 64 tokens from an empty context and from a 1024-token context (one token per call, greedy,
the context's prefill untimed). Decode bandwidth = bytes of weights read per token x tok/s, as a
fraction of the DRAM read bandwidth `lmblocks.ceilings` measures at the same thread count.
Writes bench/results/llm-<UTC time>.json and the table between the LLM markers of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import peers  # noqa: E402
import report  # noqa: E402

PREFILL_LENS = (128, 512)
DECODE_LEN = 64
CONTEXTS = (0, 1024)
N_CTX = 2048


# ---- lmblocks under the peers' protocol ----------------------------------------------------------

class LmblocksRunner:
    """lmblocks: one model, one KV cache reused (cleared) between runs, greedy argmax on the logits."""

    def __init__(self, path: str | pathlib.Path, n_threads: int, n_ctx: int = N_CTX) -> None:
        import lmblocks as lb

        lb.set_num_threads(n_threads)
        # An f16 KV cache, as llama.cpp's default: at 1024 tokens of context an f32 cache is read
        # as many bytes per token as SmolLM2's weights.
        self.model = lb.load(path, n_ctx=n_ctx, kv_dtype="f16", verbose=False)
        self.n_vocab = self.model.args.vocab_size
        self.cache = self.model.new_cache(1, n_ctx)

    def _forward(self, tokens: list[int]) -> int:
        return int(np.argmax(self.model.lm.forward(self.cache, np.asarray(tokens, np.int32))[0]))

    def prefill(self, tokens: list[int]) -> float:
        self.cache.clear()
        t0 = time.perf_counter()
        self._forward(tokens)
        return time.perf_counter() - t0

    def decode(self, n: int, ctx_tokens: int = 0) -> float:
        self.cache.clear()
        token = self._forward(peers.bench_tokens(ctx_tokens, self.n_vocab)) if ctx_tokens else 1
        t0 = time.perf_counter()
        for _ in range(n):
            token = self._forward([token])
        return time.perf_counter() - t0

    def close(self) -> None:
        del self.cache, self.model


class LmblocksInt8Runner(LmblocksRunner):
    """lmblocks with lb.set_activation_bits(8): prefill's activations quantized to int8 per 32 elements, as
    llama.cpp's are (q8_0), not int16 (the default). Prefill only: decode stays int16 either way."""

    def __init__(self, path: str | pathlib.Path, n_threads: int, n_ctx: int = N_CTX) -> None:
        import lmblocks as lb

        lb.set_activation_bits(8)
        super().__init__(path, n_threads, n_ctx)


RUNNERS = {"lmblocks": LmblocksRunner, "lmblocks-int8": LmblocksInt8Runner, **peers.RUNNERS}
PREFILL_ONLY = {"lmblocks-int8"}


def busy_seconds() -> tuple[float, float]:
    """(CPU seconds all processes spent busy, CPU seconds this process used) so far."""
    fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    ours = os.times()
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK"), ours.user + ours.system


def wait_for_quiet(max_wait_s: float = 120.0) -> None:
    """Wait (up to max_wait_s) until other processes use less than 0.2 cores over a second."""
    deadline = time.perf_counter() + max_wait_s
    while time.perf_counter() < deadline:
        (b0, o0), t0 = busy_seconds(), time.perf_counter()
        time.sleep(1.0)
        (b1, o1), dt = busy_seconds(), time.perf_counter() - t0
        if (b1 - b0 - (o1 - o0)) / dt < 0.2:
            return


def measure(kind: str, path: str, n_threads: int) -> dict:
    """Every figure of one engine on one file, in this process (the --worker side). `others_cores`:
    the cores other processes kept busy meanwhile; well above 0 means the figures are tainted."""
    t0 = time.perf_counter()
    runner = RUNNERS[kind](path, n_threads)
    load_s = time.perf_counter() - t0
    prompts = {n: peers.bench_tokens(n, runner.n_vocab) for n in PREFILL_LENS}
    runner.prefill(prompts[PREFILL_LENS[0]])  # warm-up: first-touch of weights, thread start
    decode = kind not in PREFILL_ONLY
    if decode:
        runner.decode(4, 0)
    out = {"kind": kind, "threads": n_threads, "load_s": load_s}
    (busy0, ours0), t0 = busy_seconds(), time.perf_counter()
    for n, p in prompts.items():
        out[f"prefill{n}_tok_s"] = n / runner.prefill(p)
    for c in CONTEXTS if decode else ():
        out[f"decode_ctx{c}_tok_s"] = DECODE_LEN / runner.decode(DECODE_LEN, c)
    (busy1, ours1), wall = busy_seconds(), time.perf_counter() - t0
    out["others_cores"] = max(0.0, (busy1 - busy0 - (ours1 - ours0)) / wall)
    runner.close()
    out["peak_rss_bytes"] = peak_rss()
    return out


def peak_rss() -> int:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that over
    from the parent through fork + exec, so every worker would report at least the driver's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def run_isolated(kind: str, path: pathlib.Path, n_threads: int) -> dict:
    wait_for_quiet()
    cmd = [sys.executable, __file__, "--worker", kind, str(path), str(n_threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} on {path.name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the files -----------------------------------------------------------------------------------

def model_files(out_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """Name -> GGUF path of every model the issue names (bench/make_models.py makes the derived ones)."""
    import lmblocks.assets as assets

    files = {"smollm2-q4_1": assets.smollm2_135m()}
    files.update({f"smollm2-{q}": out_dir / f"smollm2-135m-{q}.gguf" for q in ("q4_0", "q4_k_m", "q8_0", "f16")})
    files["gemma3-q4_k_m"] = assets.gemma3_270m()
    files.update({f"tinyllama-{q}": out_dir / f"tinyllama-shape-{q}.gguf" for q in ("q4_0", "q4_k_m", "q8_0")})
    files["olmoe-shape-q4_0"] = out_dir / "olmoe-shape-q4_0.gguf"
    files.update({f"{m}-shape-{q}": out_dir / f"{m}-shape-{q}.gguf" for m in ("mamba2", "granitehybrid")
                  for q in ("f32", "q8_0", "q4_0")})
    return files


def weight_bytes_per_token(path: pathlib.Path) -> int:
    """Bytes of weights one decode step reads: every tensor, except an untied embedding table (of
    which one row is read) and stacked experts (`*_exps`, of which the expert_used_count chosen of
    expert_count are read)."""
    from lmblocks.io import read_gguf

    f = read_gguf(path)
    arch = f.metadata.get("general.architecture")
    n_expert = f.metadata.get(f"{arch}.expert_count", 0)
    used = f.metadata.get(f"{arch}.expert_used_count", 0) / n_expert if n_expert else 1.0
    total = sum(t.nbytes * (used if "_exps." in name else 1.0) for name, t in f.tensors.items())
    if "output.weight" in f.tensors:
        emb = f.tensors["token_embd.weight"]
        total -= emb.nbytes - emb.nbytes // emb.shape[0]
    return int(total)


# ---- the report ----------------------------------------------------------------------------------

def median_record(records: list[dict]) -> dict:
    keys = [k for k, v in records[0].items() if isinstance(v, float | int) and k != "threads"]
    return {**records[0], **{k: statistics.median(r[k] for r in records) for k in keys}}


def table(results: list[dict], bandwidth: dict) -> str:
    """One row per engine. lmblocks-int8 (prefill only) is lmblocks with int8 activations in prefill, as
    llama.cpp's; a peer's speed-up column gives lmblocks' prefill 512 (int16, and int8 where measured) and
    decode over the peer's."""
    lines = ["| model | threads | engine | prefill 128 | prefill 512 | decode | decode @1024 | decode GB/s (of DRAM) "
             "| peak RSS MiB | lmblocks speed-up: p512 (int8 p512), decode | others' cores |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        same = {x["kind"]: x for x in results if x["model"] == r["model"] and x["threads"] == r["threads"]}
        ours, int8 = same["lmblocks"], same.get("lmblocks-int8")
        ratio = ""
        if r["kind"] not in ("lmblocks", "lmblocks-int8"):
            ratio = (f"{ours['prefill512_tok_s'] / r['prefill512_tok_s']:.2f}x"
                     + (f" ({int8['prefill512_tok_s'] / r['prefill512_tok_s']:.2f}x)" if int8 else "")
                     + f", {ours['decode_ctx0_tok_s'] / r['decode_ctx0_tok_s']:.2f}x")
        if "decode_ctx0_tok_s" in r:
            gbs = r["decode_ctx0_tok_s"] * r["bytes_per_token"] / 1e9
            frac = gbs / bandwidth[str(r["threads"])]
            decode = f"{r['decode_ctx0_tok_s']:.1f} | {r['decode_ctx1024_tok_s']:.1f} | {gbs:.1f} ({frac:.0%})"
        else:
            decode = "– | – | –"
        lines.append(f"| {r['model']} | {r['threads']} | {r['kind']} | {r['prefill128_tok_s']:.0f} | "
                     f"{r['prefill512_tok_s']:.0f} | {decode} | {r['peak_rss_bytes'] / 2**20:.0f} | {ratio} | "
                     f"{r['others_cores']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", nargs="+", default=None, help="names (default: all); see model_files()")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--torch", nargs="+", default=["smollm2-q4_1", "gemma3-q4_k_m"],
                    help="models also run with transformers ('none' for none)")
    ap.add_argument("--no-int8", dest="int8", action="store_false",
                    help="skip the lmblocks-int8 engine (prefill with int8 activations, as llama.cpp's)")
    ap.add_argument("--quick", action="store_true", help="SmolLM2 Q4_1 only, 1 round, no torch: a smoke run")
    ap.add_argument("--models-dir", type=pathlib.Path, default=pathlib.Path.home() / ".cache/lmblocks/bench-models")
    ap.add_argument("--report", type=pathlib.Path, help="only rewrite bench/RESULTS.md from a saved results JSON")
    ap.add_argument("--section", default="llm",
                    help="the RESULTS.md section (and results/ file prefix) to write: a run over a subset of the "
                         "models, e.g. --models mamba2-shape-q8_0 --section llm_mamba2, keeps the full run's table")
    ap.add_argument("--worker", nargs=3, metavar=("KIND", "PATH", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        kind, path, n = args.worker
        print(json.dumps(measure(kind, path, int(n))))
        return
    if args.report:
        record = json.loads(args.report.read_text())
        report.write(args.section, record, render(record))
        return
    if args.quick:
        args.models, args.rounds, args.torch = ["smollm2-q4_1"], 1, ["none"]

    import lmblocks as lb
    from lmblocks import ceilings

    files = model_files(args.models_dir)
    names = args.models or list(files)
    missing = [n for n in names if not files[n].exists()]
    if missing:
        subprocess.run([sys.executable, str(HERE / "make_models.py"), "--out", str(args.models_dir)], check=True)
    print("measuring the machine's ceilings ...", flush=True)
    ceil = ceilings.measure(threads=tuple(args.threads), quick=args.quick)
    results = []
    for name in names:
        path = files[name]
        int8 = args.int8 and not any(t in name for t in ("-f16", "-f32"))  # int8 applies to ggml blocks only
        kinds = ["lmblocks"] + (["lmblocks-int8"] if int8 else []) + ["llama.cpp"] + (["torch"] if name in args.torch else [])
        bpt = weight_bytes_per_token(path)
        for n in args.threads:
            rounds: dict[str, list[dict]] = {k: [] for k in kinds}
            for _ in range(args.rounds):
                for k in kinds:
                    rounds[k].append(run_isolated(k, path, n))
            for k in kinds:
                r = median_record(rounds[k]) | {"model": name, "file": path.name, "bytes_per_token": bpt}
                results.append(r)
                decode = f"{r['decode_ctx0_tok_s']:.1f} tok/s" if "decode_ctx0_tok_s" in r else "-"
                print(f"{name} x{n} {k}: prefill512 {r['prefill512_tok_s']:.0f} tok/s, decode {decode}, "
                      f"RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB, others' cores {r['others_cores']:.2f}", flush=True)
    import llama_cpp

    record = {"utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "machine": {"platform": platform.platform(), "cpu": ceil["cpu"].get("model"),
                          "ceilings": json.loads(json.dumps(ceil))},
              "versions": {"lmblocks": lb.__version__, "llama_cpp_python": llama_cpp.__version__,
                           "numpy": np.__version__},
              "threads": args.threads, "rounds": args.rounds, "results": results,
              "command": "bench/llm.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    md = render(record)
    print(md)
    report.write(args.section, record, md)


def render(record: dict) -> str:
    """The Markdown section of a run: header (machine, ceilings, versions) and the table."""
    gbs = record["machine"]["ceilings"]["dram_read_gbs"]
    threads = record.get("threads") or sorted({r["threads"] for r in record["results"]})
    bandwidth = {str(n): gbs[str(n)] for n in threads}
    command = record.get("command", "bench/llm.py")
    return (f"## LLM inference (`{command}`, {record['utc']})\n\n{record['machine']['cpu']}; DRAM read "
            + ", ".join(f"{bandwidth[str(n)]:.1f} GB/s at {n} thread{'s' * (n > 1)}" for n in threads)
            + f"; llama-cpp-python {record['versions']['llama_cpp_python']}; median of {record['rounds']} "
            f"interleaved rounds.\n\n" + table(record["results"], bandwidth))


if __name__ == "__main__":
    main()

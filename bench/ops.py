"""lmblocks kernels against NumPy, with the machine's ceilings measured in the same run.

    python bench/ops.py [--quick] [--threads 1 2]

For every kernel and shape: check ours against what a NumPy user would write (float32, same
inputs), then time both, interleaved, as the median of several repetitions. Each row reports the
ratio NumPy/ours (> 1: we are faster) and how close ours gets to the hardware: GB/s moved (bytes
read + written) against the measured DRAM read bandwidth, and for matmul/linear GFLOP/s against
the measured FMA peak. Prints a Markdown table and writes bench/results/ops-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time

# NumPy's OpenBLAS workers busy-wait for ~0.1 s after each call (THREAD_TIMEOUT 2^28 cycles). On a
# machine with few cores that spinning is charged to whichever kernel runs next in the interleaved
# timing (it halved our 2-thread matmul on 2 cores), so let them sleep at once. This must precede
# NumPy's import; lmblocks' own OpenBLAS runs single-threaded and has no workers to spin.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

import lmblocks as lb  # noqa: E402
from lmblocks import ceilings, ops  # noqa: E402

try:
    import threadpoolctl
except ImportError:
    threadpoolctl = None
try:
    from scipy.special import erf as scipy_erf
except ImportError:
    scipy_erf = None

FULL = dict(dims=(576, 2048, 4096), tokens=(1, 128, 512), matmul_n=1024, reps=7, min_batch_s=0.005)
QUICK = dict(dims=(576, 2048), tokens=(1, 128), matmul_n=512, reps=3, min_batch_s=0.002)
VOCAB = 32000
EPS = 1e-6
THETA = 10000.0
# The bars this bench exists to watch: (kernel, shape, minimum NumPy/ours).
BARS = [(k, "T=512 D=4096", 1.5) for k in ("rms_norm", "softmax", "silu", "rope")] + [("matmul", "1024x1024x1024", 0.9)]


# ---- NumPy baselines: what a NumPy user would write ----------------------------------------------

def np_rms_norm(x, w):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + EPS) * w


def np_layer_norm(x, w, b):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + EPS) * w + b


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_silu(x):
    return x / (1 + np.exp(-x))


def np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x * x * x)))


def np_gelu_erf(x):
    return 0.5 * x * (1 + scipy_erf(x * np.float32(0.7071067811865476)))


def np_swiglu(gate, up):
    return gate / (1 + np.exp(-gate)) * up


def np_rope(x, pos, inv_freq):
    """Half-split (NeoX / Hugging Face) rope; cos/sin computed per call, as lmblocks does."""
    ang = pos[:, None].astype(np.float32) * inv_freq  # (T, hd/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]  # (T, 1, hd/2)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


# ---- Cases: inputs, both implementations, bytes moved, FLOPs, tolerance --------------------------

def case(kernel, shape, ours, numpy, nbytes, flops=0.0, rtol=1e-4, atol=1e-5):
    return dict(kernel=kernel, shape=shape, ours=ours, numpy=numpy, nbytes=nbytes, flops=flops, rtol=rtol, atol=atol)


def row_cases(D, T, rng):
    """The per-token kernels at model width D and T tokens (4 bytes per float32)."""
    x, y = (rng.standard_normal((T, D), dtype=np.float32) for _ in range(2))
    w, b = rng.standard_normal(D, dtype=np.float32), rng.standard_normal(D, dtype=np.float32)
    shape, n = f"T={T} D={D}", T * D
    cases = [
        case("rms_norm", shape, lambda: ops.rms_norm(x, w, eps=EPS), lambda: np_rms_norm(x, w), 4 * (2 * n + D)),
        case("layer_norm", shape, lambda: ops.layer_norm(x, w, b, eps=EPS), lambda: np_layer_norm(x, w, b),
             4 * (2 * n + 2 * D), atol=1e-4),
        case("softmax", shape, lambda: ops.softmax(x), lambda: np_softmax(x), 4 * 2 * n, atol=1e-6),
        case("silu", shape, lambda: ops.silu(x), lambda: np_silu(x), 4 * 2 * n),
        case("gelu_tanh", shape, lambda: ops.gelu(x, approximate="tanh"), lambda: np_gelu_tanh(x), 4 * 2 * n),
    ]
    if scipy_erf is not None:  # NumPy has no erf; the exact GELU needs SciPy's
        cases.append(case("gelu_erf", shape, lambda: ops.gelu(x), lambda: np_gelu_erf(x), 4 * 2 * n))
    cases += [
        case("swiglu", shape, lambda: ops.swiglu(x, y), lambda: np_swiglu(x, y), 4 * 3 * n),
        rope_case(D, T, rng),
        case("add", shape, lambda: ops.add(x, y), lambda: x + y, 4 * 3 * n),
    ]
    return cases


def rope_case(D, T, rng):
    hd = 64 if D == 576 else 128
    H = D // hd
    x = rng.standard_normal((T, H, hd), dtype=np.float32)
    pos = np.arange(T, dtype=np.int64)
    inv_freq = (THETA ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)).astype(np.float32)  # a model constant
    return case("rope", f"T={T} D={D}", lambda: ops.rope(x, pos, theta=THETA), lambda: np_rope(x, pos, inv_freq),
                4 * 2 * T * D + 8 * T, atol=5e-4)


def embedding_cases(D, tokens, rng):
    table = rng.standard_normal((VOCAB, D), dtype=np.float32)  # (V, D)
    for T in tokens:
        ids = rng.integers(0, VOCAB, T)
        yield case("embedding", f"T={T} D={D}", lambda ids=ids: ops.embedding(ids, table),
                   lambda ids=ids: table[ids], 4 * 2 * T * D + 8 * T, rtol=0, atol=0)


def linear_cases(D, tokens, rng):
    w = rng.standard_normal((4 * D, D), dtype=np.float32) / np.float32(np.sqrt(D))  # (4D, D), as stored (out, in)
    for T in tokens:
        x = rng.standard_normal((T, D), dtype=np.float32)
        yield case("linear", f"({T}, {D}) x ({4 * D}, {D})", lambda x=x: ops.linear(x, w), lambda x=x: x @ w.T,
                   4 * (T * D + 4 * D * D + T * 4 * D), flops=2.0 * T * D * 4 * D, rtol=1e-3, atol=1e-3)


def matmul_case(n, rng):
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    return case("matmul", f"{n}x{n}x{n}", lambda: ops.matmul(a, b), lambda: a @ b, 4 * 3 * n * n,
                flops=2.0 * n ** 3, rtol=1e-3, atol=1e-3 * np.sqrt(n))


def all_cases(cfg, rng):
    """Cases one at a time, so big inputs (a 32000 x 4096 table is 0.5 GB) are freed as we go."""
    for D in cfg["dims"]:
        for T in cfg["tokens"]:
            yield from row_cases(D, T, rng)
        yield from embedding_cases(D, cfg["tokens"], rng)
        yield from linear_cases(D, cfg["tokens"], rng)
    yield matmul_case(cfg["matmul_n"], rng)


# ---- Threads ------------------------------------------------------------------------------------

def numpy_blas():
    """threadpoolctl handles on NumPy's BLAS only: lmblocks' OpenBLAS (scipy_openblas32) must stay
    single-threaded, since lmblocks splits its matmuls over its own pool."""
    if threadpoolctl is None:
        return []
    libs = threadpoolctl.ThreadpoolController().lib_controllers
    return [c for c in libs if c.user_api == "blas" and "scipy_openblas32" not in c.filepath]


def set_threads(n, blas):
    lb.set_num_threads(n)
    for c in blas:
        c.set_num_threads(n)


# ---- Checking and timing ------------------------------------------------------------------------

def check(c):
    """None when ours matches NumPy, else what went wrong."""
    try:
        got, want = np.asarray(c["ours"]()), c["numpy"]()
        np.testing.assert_allclose(got, want, rtol=c["rtol"], atol=c["atol"])
        return None
    except Exception as e:  # a missing or wrong kernel is reported, not fatal
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def per_call(fn, number):
    fn()  # untimed: wakes this library's threads and warms caches after the other library's run
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def calls_per_rep(fn, min_s):
    """Calls per repetition so one repetition lasts about min_s."""
    return max(1, min(100_000, round(min_s / max(per_call(fn, 1), 1e-7))))


def time_pair(ours, numpy, reps, min_s):
    """Median seconds per call of ours and NumPy's, their repetitions interleaved."""
    n_ours, n_np = calls_per_rep(ours, min_s), calls_per_rep(numpy, min_s)
    t_ours, t_np = [], []
    for _ in range(reps):
        t_ours.append(per_call(ours, n_ours))
        t_np.append(per_call(numpy, n_np))
    return statistics.median(t_ours), statistics.median(t_np)


def measure_case(c, threads, ceil, cfg, blas):
    rows = []
    for n in threads:
        set_threads(n, blas)
        row = dict(kernel=c["kernel"], shape=c["shape"], threads=n, error=check(c))
        if row["error"] is None:
            t_ours, t_np = time_pair(c["ours"], c["numpy"], cfg["reps"], cfg["min_batch_s"])
            gbs = c["nbytes"] / t_ours * 1e-9
            row.update(ours_us=t_ours * 1e6, numpy_us=t_np * 1e6, ratio=t_np / t_ours,
                       gbs=gbs, of_dram=gbs / ceil["dram_read_gbs"][n])
            if c["flops"]:
                gflops = c["flops"] / t_ours * 1e-9
                row.update(gflops=gflops, of_fma=gflops / ceil["fma_gflops"][n])
        rows.append(row)
    return rows


# ---- Report -------------------------------------------------------------------------------------

def fmt(v, spec):
    return "" if v is None else format(v, spec)


def table(rows):
    lines = ["| threads | kernel | shape | ours (us) | NumPy (us) | NumPy/ours | GB/s | of DRAM | GFLOP/s | of FMA peak |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r["threads"]):  # stable: cases keep their order
        if r["error"]:
            lines.append(f"| {r['threads']} | {r['kernel']} | {r['shape']} | FAILED CHECK: {r['error'][:120]} | | | | | | |")
            continue
        lines.append(f"| {r['threads']} | {r['kernel']} | {r['shape']} | {r['ours_us']:.1f} | {r['numpy_us']:.1f} | "
                     f"{r['ratio']:.2f}x | {r['gbs']:.1f} | {r['of_dram']:.2f} | {fmt(r.get('gflops'), '.1f')} | "
                     f"{fmt(r.get('of_fma'), '.2f')} |")
    return "\n".join(lines)


def bars(rows):
    """Each bar at each thread count: met, missed, or not measured."""
    out = []
    for kernel, shape, minimum in BARS:
        for r in (r for r in rows if r["kernel"] == kernel and r["shape"] == shape):
            ratio = r.get("ratio")
            status = "not measured" if ratio is None else ("met" if ratio >= minimum else "MISSED")
            out.append(dict(kernel=kernel, shape=shape, threads=r["threads"], minimum=minimum, ratio=ratio, status=status))
    return out


def write_results_section(path, name, markdown):
    """Replace this bench's section of bench/RESULTS.md (between HTML-comment markers), keeping the
    sections other benches write."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n\nWritten by the scripts in bench/; each section by its own script.\n"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def machine():
    try:
        blas_config = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas")
    except Exception:
        blas_config = None
    return dict(cpu=lb.cpu_info(), lmblocks=lb.__version__, numpy=np.__version__, numpy_blas=blas_config,
                python=platform.python_version(), platform=platform.platform(), cores=os.cpu_count())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions and sizes: a smoke run")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to run at")
    args = p.parse_args()
    cfg, threads = (QUICK if args.quick else FULL), sorted(set(args.threads))
    saved_threads = lb.get_num_threads()
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"warning: load average {load_before:.1f} on {os.cpu_count()} cores before the run; other processes "
              "share the CPU, so timings and ceilings (2-thread ones most) may read low")

    ceil = ceilings.measure(threads, quick=args.quick)
    print(f"# lmblocks {lb.__version__} ops vs NumPy {np.__version__} on {ceil['cpu'].get('model', '?')}, "
          f"isa {ceil['cpu'].get('isa', '?')}")
    for n in threads:
        print(f"ceilings at {n} thread(s): FMA peak {ceil['fma_gflops'][n]:.1f} GFLOP/s, "
              f"DRAM read {ceil['dram_read_gbs'][n]:.1f} GB/s")
    blas = numpy_blas()
    env = os.environ.get("OPENBLAS_NUM_THREADS")
    numpy_threads = ("set to match ours with threadpoolctl" if blas else
                     f"fixed by OPENBLAS_NUM_THREADS={env} for the whole run" if env else
                     "its default (threadpoolctl not importable; set OPENBLAS_NUM_THREADS to fix it)")
    print(f"NumPy BLAS threads: {numpy_threads}")
    if scipy_erf is None:
        print("gelu_erf skipped: NumPy has no erf and SciPy is not importable")

    rows, t0 = [], time.perf_counter()
    for c in all_cases(cfg, np.random.default_rng(0)):
        rows += measure_case(c, threads, ceil, cfg, blas)
    lb.set_num_threads(saved_threads)
    elapsed = time.perf_counter() - t0

    print()
    print(table(rows))
    print("\nFractions are of the DRAM read bandwidth; rows whose data fits in cache can exceed 1.")
    result_bars = bars(rows)
    print("\n## Bars")
    if not result_bars:
        print("(none of the bar shapes ran; drop --quick)")
    for b in result_bars:
        print(f"- {b['kernel']} {b['shape']} at {b['threads']} thread(s): NumPy/ours {fmt(b['ratio'], '.2f')} "
              f"(needs >= {b['minimum']}): {b['status']}")
    failed = [r for r in rows if r["error"]]
    if failed:
        print(f"\n{len(failed)} row(s) FAILED their check against NumPy and were not timed.")

    out = pathlib.Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"ops-{stamp}.json"
    path.write_text(json.dumps(dict(machine=machine(), settings=dict(cfg, quick=args.quick, threads=threads,
                                                                     numpy_threads=numpy_threads,
                                                                     openblas_thread_timeout=os.environ["OPENBLAS_THREAD_TIMEOUT"]),
                                    ceilings=ceil, rows=rows, bars=result_bars, seconds=elapsed,
                                    load_average=dict(before=load_before, after=os.getloadavg()[0])),
                               indent=1, default=str))
    print(f"\nwrote {path} ({elapsed:.0f} s)")
    if not args.quick:
        cpu = ceil["cpu"]
        md = [f"## Kernels against NumPy (`python bench/ops.py --threads {' '.join(map(str, threads))}`)", "",
              f"{stamp}, lmblocks {lb.__version__}, NumPy {np.__version__}, {cpu.get('model', '?')} "
              f"({os.cpu_count()} cores), ISA {cpu.get('isa', '?')}; NumPy BLAS threads: {numpy_threads}; "
              f"load average {load_before:.1f} before the run. Raw data: `bench/results/{path.name}`.", "",
              "Ceilings measured in the same run: " + "; ".join(
                  f"{n} thread(s): FMA {ceil['fma_gflops'][n]:.0f} GFLOP/s, DRAM read {ceil['dram_read_gbs'][n]:.1f} GB/s"
                  for n in threads) + ".", "", "Bars:", ""]
        md += [f"- {b['kernel']} {b['shape']}, {b['threads']} thread(s): NumPy/ours {fmt(b['ratio'], '.2f')} "
               f"(needs >= {b['minimum']}): **{b['status']}**" for b in result_bars]
        md += ["", table(rows), ""]
        write_results_section(out.parent / "RESULTS.md", "ops", "\n".join(md))
        print(f"updated {out.parent / 'RESULTS.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

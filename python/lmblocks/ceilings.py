"""The machine's measured ceilings: what a kernel's speed is a fraction of.

Every benchmark in ``bench/`` measures these once, in the same run as its timings, so its tables
say both "how much faster than a peer" and "how close to the hardware". Both loops run in C++ on
the lmblocks thread pool with the active ISA's widest vectors (see :func:`lmblocks.cpu_info`).
"""

from __future__ import annotations

from . import _core

__all__ = ["measure", "fma_peak", "read_bandwidth"]

_CPU_KEYS = ("arch", "vendor", "model", "isa", "best_isa", "blas", "num_threads")


def fma_peak(threads=1, seconds=0.3):
    """fp32 GFLOP/s of a register-resident FMA loop on ``threads`` threads (an FMA is 2 FLOPs).

    >>> import lmblocks as lb
    >>> lb.ceilings.fma_peak(1, seconds=0.05) > 0
    True
    """
    return _core.bench.fma_peak(int(threads), float(seconds))


def read_bandwidth(nbytes=1 << 30, threads=1, reps=3):
    """GB/s (1e9 bytes/s) of a streaming read of an ``nbytes`` buffer on ``threads`` threads.

    Keep ``nbytes`` well above the last-level cache (the default 1 GiB) to measure DRAM.

    >>> import lmblocks as lb
    >>> lb.ceilings.read_bandwidth(1 << 26, threads=1, reps=1) > 0
    True
    """
    return _core.bench.read_bandwidth(int(nbytes), int(threads), int(reps))


def measure(threads=(1, 2), quick=False):
    """Peak FMA throughput and DRAM read bandwidth at each thread count, plus what CPU this was.

    ``quick`` shortens the FMA loop and reads 256 MiB instead of 1 GiB (still far above any L3)
    for smoke runs. Returns::

        {"fma_gflops": {1: ..., 2: ...}, "dram_read_gbs": {1: ..., 2: ...},
         "cpu": {"arch", "vendor", "model", "isa", "best_isa", "blas", "num_threads"},
         "settings": {"fma_seconds", "read_nbytes", "read_reps"}}

    >>> import lmblocks as lb
    >>> c = lb.ceilings.measure(threads=(1,), quick=True)
    >>> sorted(c["fma_gflops"]), c["dram_read_gbs"][1] > 0
    ([1], True)
    """
    seconds, nbytes, reps = (0.1, 1 << 28, 2) if quick else (0.3, 1 << 30, 3)
    threads = sorted({int(n) for n in threads})
    info = _core.cpu_info()
    return {
        "fma_gflops": {n: fma_peak(n, seconds) for n in threads},
        "dram_read_gbs": {n: read_bandwidth(nbytes, n, reps) for n in threads},
        "cpu": {k: info[k] for k in _CPU_KEYS if k in info},
        "settings": {"fma_seconds": seconds, "read_nbytes": nbytes, "read_reps": reps},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(measure(), indent=2))

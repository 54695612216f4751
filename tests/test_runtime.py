"""The runtime: one thread pool, OpenBLAS kept single-threaded, CPU features against /proc/cpuinfo,
ISA forcing through LMBLOCKS_ISA and lb.set_isa, the GIL released during kernels, the version."""

import os
import subprocess
import sys
import textwrap
import threading
from importlib import metadata

import numpy as np
import pytest

import lmblocks as lb


def run_py(code, **env):
    e = dict(os.environ, **{k: str(v) for k, v in env.items()})
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=e)
    assert r.returncode == 0, r.stderr
    return r


def test_version_comes_from_one_place():
    assert lb.__version__ == lb._core.__version__ == metadata.version("lmblocks")


def test_set_and_get_num_threads():
    before = lb.get_num_threads()
    try:
        lb.set_num_threads(1)
        assert lb.get_num_threads() == 1
        lb.set_num_threads(3)
        assert lb.get_num_threads() == 3
    finally:
        lb.set_num_threads(before)
    for bad in (0, -2, 100000):
        with pytest.raises(ValueError, match="set_num_threads"):
            lb.set_num_threads(bad)


def test_env_sets_the_default_thread_count():
    r = run_py("import lmblocks as lb; print(lb.get_num_threads())", LMBLOCKS_NUM_THREADS=1)
    assert r.stdout.strip() == "1"
    r = run_py("import os, lmblocks as lb; print(lb.get_num_threads(), len(os.sched_getaffinity(0)))")
    n, cores = map(int, r.stdout.split())
    assert n == cores


THREAD_SHARES = """
import os, time, numpy as np, lmblocks as lb
lb.set_num_threads({n})
rng = np.random.default_rng(0)
a = rng.standard_normal((1536, 1536), dtype=np.float32)
x = rng.standard_normal((2048, 4096), dtype=np.float32)

def utimes():  # per-thread user CPU ticks, from the kernel
    out = {{}}
    for t in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{{t}}/stat") as f:
            out[t] = int(f.read().rsplit(")", 1)[1].split()[11])
    return out

lb.ops.matmul(a, a); lb.ops.rms_norm(x)                      # start the pools
before, t0 = utimes(), time.perf_counter()
while time.perf_counter() - t0 < 0.5:                        # CPU ticks are 10 ms: run long enough
    lb.ops.{op}
after = utimes()
work = [after[t] - before.get(t, 0) for t in after]
print(sum(w > 0.15 * sum(work) for w in work))
"""


@pytest.mark.parametrize("op", ["matmul(a, a)", "rms_norm(x)", "softmax(x)", "silu(x)"])
def test_one_thread_means_one_thread_works(op):
    # Count the threads that did a real share of the work (per-thread CPU time, which other load on
    # the machine does not distort): with one thread neither OpenBLAS nor TBB may run in parallel.
    assert run_py(THREAD_SHARES.format(n=1, op=op)).stdout.strip() == "1"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
@pytest.mark.parametrize("op", ["matmul(a, a)", "softmax(x)"])
def test_two_threads_share_the_work(op):
    assert run_py(THREAD_SHARES.format(n=2, op=op)).stdout.strip() == "2"


def test_kernels_release_the_gil():
    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    done = threading.Event()

    def work():
        for _ in range(20):
            lb.ops.matmul(a, a)
        done.set()

    th = threading.Thread(target=work)
    th.start()
    ticks = 0
    while not done.is_set():  # pure Python: runs only if the kernel thread let go of the GIL
        ticks += 1
    th.join()
    assert ticks > 10000


def proc_cpuinfo_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def test_cpu_features_agree_with_the_kernel():
    info = lb.cpu_info()
    flags = proc_cpuinfo_flags()
    if flags is None or info["arch"] != "x86_64":
        pytest.skip("no /proc/cpuinfo x86 flags to compare with")
    for ours, linux in [("avx2", "avx2"), ("fma", "fma"), ("f16c", "f16c"), ("avx512f", "avx512f"),
                        ("avx512bw", "avx512bw"), ("avx512_vnni", "avx512_vnni"), ("avx512_bf16", "avx512_bf16")]:
        assert info["features"][ours] == (linux in flags), ours


def test_cpu_info_reports_every_family_and_follows_set_isa():
    info = lb.cpu_info()
    assert {"arch", "model", "features", "isa", "best_isa", "available_isas", "kernels", "blas",
            "num_threads"} <= set(info)
    assert "OpenBLAS" in info["blas"]
    assert {"rms_norm", "layer_norm", "softmax", "rope", "attention", "matmul", "embedding", "convert"} <= set(info["kernels"])
    before = lb.get_isa()
    try:
        for isa in info["available_isas"]:
            lb.set_isa(isa)
            assert lb.get_isa() == isa
            assert lb.cpu_info()["kernels"]["rms_norm"].startswith(isa)
    finally:
        lb.set_isa(before)


def test_set_isa_rejects_unavailable_paths():
    with pytest.raises(ValueError, match="unknown ISA"):
        lb.set_isa("sse9")
    other = "neon" if lb.cpu_info()["arch"] == "x86_64" else "avx512"
    with pytest.raises(ValueError, match="not available"):
        lb.set_isa(other)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_env_forces_a_lower_isa(isa):
    if isa not in lb.cpu_info()["available_isas"]:
        pytest.skip(f"{isa} is not available on this CPU")
    r = run_py("import lmblocks as lb; print(lb.get_isa(), lb.cpu_info()['kernels']['rms_norm'])", LMBLOCKS_ISA=isa)
    assert r.stdout.split() == [isa, isa]


def test_env_with_a_bad_isa_warns_and_keeps_the_best():
    r = run_py("""
        import warnings
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import lmblocks as lb
        print(lb.get_isa() == lb.cpu_info()["best_isa"], any("LMBLOCKS_ISA" in str(x.message) or "unknown ISA" in str(x.message) for x in w))
    """, LMBLOCKS_ISA="pentium")
    assert r.stdout.split() == ["True", "True"]


def test_interpreter_exits_cleanly_after_using_cached_python_objects(tmp_path):
    # Regression: Python objects cached in C++ statics (numpy, the bf16 dtype) were destroyed by
    # static destructors after the interpreter had finalized: SIGSEGV at exit. A plain script did not
    # show it (numpy's refcount stayed up); a pytest run did, every time, so that is what this runs.
    (tmp_path / "test_statics.py").write_text(
        "import numpy as np, lmblocks as lb\n"
        "def test_it():\n"
        "    lb.asarray([1, 2, 3])  # a list: converted through the cached numpy module\n"
        "    np.asarray(lb.asarray(np.ones(3, np.float32)).astype('bf16'))  # the cached bfloat16 dtype\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, f"exit status {r.returncode}: {r.stdout[-1500:]} {r.stderr[-1500:]}"


def test_freed_buffers_are_kept_for_reuse_and_released():
    """Freed tensors, large or small, wait for the next allocation of their size instead of going back to
    malloc (or being unmapped); release_buffers() hands them all back."""
    core = lb._core
    core.release_buffers()
    assert core.cached_buffer_bytes() == 0
    for shape, nbytes in (((1000, 100), 400_000), ((10,), 40)):
        before = core.cached_buffer_bytes()
        t = lb.empty(*shape)
        addr = np.asarray(t).ctypes.data
        del t
        kept = core.cached_buffer_bytes() - before
        assert kept >= nbytes
        u = lb.empty(*shape)
        assert np.asarray(u).ctypes.data == addr and core.cached_buffer_bytes() == before  # the kept block, reused
        del u
    assert core.cached_buffer_bytes() > 400_000
    core.release_buffers()
    assert core.cached_buffer_bytes() == 0


def resident_bytes_of_mapping(path) -> int:
    """Bytes of this process's mappings of `path` that are present in its page tables (/proc/self/pagemap)."""
    total = 0
    with open("/proc/self/pagemap", "rb") as pm, open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) < 6 or not parts[-1].startswith("/") or not os.path.samefile(parts[-1], path):
                continue
            a, b = (int(x, 16) for x in parts[0].split("-"))
            pm.seek(a // 4096 * 8)
            entries = np.frombuffer(pm.read((b - a) // 4096 * 8), np.uint64)
            total += int((entries >> np.uint64(63)).sum()) * 4096
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/pagemap")
def test_packed_matrices_stay_released_after_a_forward_pass(tmp_path):
    """A model's repacked matrices are resident once: load() drops their pages from the file mapping, and a
    forward pass must not bring them back. It did where the page cache holds the file in 2 MiB folios
    (left there by any reader that mapped it with huge pages, as here): the first read of a norm's
    weights mapped the whole folio around it, packed neighbours included (46 MiB of SmolLM2 Q4_K_M's
    100 after one token; 18 MiB of this file's 20). Bound: the unpacked tensors, two pages per tensor
    for the partial pages at their ends, and 1 MiB. (A kernel or file system without large folios
    passes either way.)"""
    import gc
    import mmap

    from lmblocks import nn
    from lmblocks.io import read_gguf

    rng = np.random.default_rng(0)
    D, F = 512, 1536
    layer = lambda i: nn.Layer(nn.Attention(D, 8, 4, rng=rng), nn.MLP(D, F, rng=rng))  # noqa: E731
    nn.Model(nn.Embedding(256, D, rng=rng), nn.Stack("A" * 6, {"A": layer}), nn.RMSNorm(D)).save(tmp_path / "f32.gguf")
    path = tmp_path / "q8_0.gguf"
    lb.quantize_model(lb.load(tmp_path / "f32.gguf", verbose=False), "q8_0", verbose=False).save(path)
    f = read_gguf(path)
    packed = sum(t.nbytes for t in f.tensors.values()
                 if len(t.shape) == 2 and lb._core.quant.packable(str(t.dtype)))
    n_tensors = len(f.tensors)
    del f
    gc.collect()  # its mapping of the file too
    if packed == 0:
        pytest.skip("no matrix is repacked on this CPU (the avx512 kernels do not run)")
    with open(path, "rb") as fh:  # out of the page cache, then back in through a huge-page mapping
        os.fsync(fh.fileno())
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        with mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as m:
            if hasattr(mmap, "MADV_HUGEPAGE"):
                m.madvise(mmap.MADV_HUGEPAGE)
            sum(m[i] for i in range(0, len(m), 4096))
    back = lb.load(path, verbose=False)
    back.logits([1, 2, 3])
    unpacked = os.path.getsize(path) - packed
    got = resident_bytes_of_mapping(path)
    assert got <= unpacked + 2 * 4096 * n_tensors + (1 << 20), (got >> 10, unpacked >> 10, packed >> 10)

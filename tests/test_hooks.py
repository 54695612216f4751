"""Hooks: captured activations and replaced outputs against transformers' own (forward hooks and
output_attentions on the same tiny random checkpoints), and the errors of bad patterns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hf_models
import lmblocks as lb

T = 13  # awkward: not a multiple of any tile
NAMES = ["llama", "mistral", "gemma3_text", "phi3"]  # plain, sliding window, sandwich norms + mixed windows, fused qkv


@pytest.fixture(scope="module", params=NAMES)
def tiny(request, tmp_path_factory):
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    ref = hf_models.build(name, folder)
    model = lb.load(folder, verbose=False)
    ids = np.random.default_rng(sum(map(ord, name)) + 7).integers(3, model.args.vocab_size, T).tolist()
    return name, ref, model, ids


@torch.no_grad()
def hf_run(ref, ids, hooks=()):
    """transformers' forward with output_attentions, plus module outputs seen by forward hooks:
    hooks = [(module, key)] -> {key: (T, ...) array}."""
    seen, handles = {}, []
    for mod, key in hooks:
        def hook(m, args, out, key=key):
            o = out[0] if isinstance(out, tuple) else out
            seen[key] = o[0].detach().numpy().copy()
        handles.append(mod.register_forward_hook(hook))
    try:
        out = ref(input_ids=torch.tensor([ids]), output_attentions=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out, seen


def test_attention_probs_equal_transformers(tiny):
    name, ref, model, ids = tiny
    L = model.args.num_hidden_layers
    with model.capture("layers.*.attn.probs") as acts:
        model.logits(ids)
    out, _ = hf_run(ref, ids)
    for i in range(L):
        want = out.attentions[i][0].numpy().transpose(1, 0, 2)  # (H, T, S) -> (T, H, S)
        got = acts[f"layers.{i}.attn.probs"]
        assert got.shape == want.shape, (name, i)
        np.testing.assert_allclose(got, want, atol=2e-6, err_msg=f"{name} layer {i}")


def test_block_outputs_equal_transformers_modules(tiny):
    name, ref, model, ids = tiny
    L = model.args.num_hidden_layers
    layers = ref.model.layers
    hooks = [(layers[i], f"layers.{i}.out") for i in range(L)]
    hooks += [(layers[i].self_attn, f"layers.{i}.attn.out") for i in range(L)]
    hooks += [(layers[i].mlp, f"layers.{i}.mlp.out") for i in range(L)]
    seen = {}
    h = layers[1].mlp.register_forward_pre_hook(lambda m, args: seen.update({"layers.1.mlp.in": args[0][0].numpy().copy()}))
    try:
        _, got_hf = hf_run(ref, ids, hooks)
    finally:
        h.remove()
    got_hf.update(seen)
    with model.capture("layers.*.out", "layers.*.attn", "layers.*.mlp", "layers.1.mlp.in") as acts:
        model.logits(ids)
    for key, want in got_hf.items():
        got = acts[key]
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, atol=2e-5 * scale, rtol=0, err_msg=f"{name} {key}")


def test_capture_leaves_logits_bit_identical(tiny):
    _, _, model, ids = tiny
    plain = model.logits(ids)
    with model.capture("**.in", "**.out", "layers.*.attn.probs"):
        hooked = model.logits(ids)
    np.testing.assert_array_equal(hooked, plain)


def test_decode_steps_capture_the_same_rows_as_one_pass(tiny):
    """Prefill + token-by-token decode records the same activations (probs padded) as a single pass."""
    name, _, model, ids = tiny
    with model.capture("layers.0.attn.probs", "layers.1.out") as full:
        model.logits(ids)
    cache = model.new_cache(1, T)
    with model.capture("layers.0.attn.probs", "layers.1.out") as steps:
        model.forward(cache, np.asarray(ids[:5], np.int32))
        for t in ids[5:]:
            model.forward(cache, np.asarray([t], np.int32))
    assert len(steps.calls("layers.1.out")) == 1 + T - 5
    np.testing.assert_array_equal(steps.positions("layers.1.out"), np.arange(T))
    np.testing.assert_allclose(steps["layers.0.attn.probs"], full["layers.0.attn.probs"], atol=1e-6, err_msg=name)
    np.testing.assert_allclose(steps["layers.1.out"], full["layers.1.out"], atol=1e-5, err_msg=name)


def test_intervention_equals_transformers_with_the_same_change(tiny):
    """Zeroing layer 0's MLP and scaling layer 1's attention output, in both engines."""
    name, ref, model, ids = tiny
    layers = ref.model.layers
    hs = [layers[0].mlp.register_forward_hook(lambda m, a, out: torch.zeros_like(out)),
          layers[1].self_attn.register_forward_hook(lambda m, a, out: (out[0] * 0.5,) + tuple(out[1:]))]
    try:
        want = hf_models.hf_logits(ref, ids)
    finally:
        for h in hs:
            h.remove()

    def half(out, info):  # in place, with the info form
        assert info.path == "layers.1.attn" and len(info.positions) == out.shape[0]
        out *= 0.5

    with model.intervene({"layers.0.mlp": lambda out: np.zeros_like(out), "layers.1.attn": half}):
        got = model.logits(ids)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), err_msg=name)


def test_intervention_is_removed_after_the_block(tiny):
    _, _, model, ids = tiny
    before = model.logits(ids)
    with model.intervene({"layers.*.mlp": lambda out: out * 0}):
        changed = model.logits(ids)
    assert not np.allclose(changed, before)
    np.testing.assert_array_equal(model.logits(ids), before)


# ---- patterns and errors ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hooks_llama")
    hf_models.build("llama", folder)
    return lb.load(folder, verbose=False)


def test_globs_stay_within_a_name_unless_doubled(llama):
    ids = [5, 6, 7]
    with llama.capture("layers.*") as one, llama.capture("**.attn_norm") as deep:
        llama.logits(ids)
    assert sorted(one) == ["layers.0.out", "layers.1.out"]
    assert sorted(deep) == ["layers.0.attn_norm.out", "layers.1.attn_norm.out"]
    assert sorted(one["layers.*.out"]) == ["layers.0.out", "layers.1.out"]


@pytest.mark.parametrize("pattern, msg", [
    ("layers.7.attn", "matches no block"),
    ("layers.0.mlp.probs", "belongs to Attention blocks"),
    ("layers.0.attn.router", "belongs to MoE blocks"),
    ("", "non-empty"),
])
def test_bad_capture_patterns_raise_at_once(llama, pattern, msg):
    with pytest.raises(ValueError, match=msg):
        with llama.capture(pattern):
            pass


def test_missing_name_lists_what_was_captured(llama):
    with llama.capture("layers.0.out") as acts:
        llama.logits([4, 5])
    with pytest.raises(KeyError, match="layers.0.out"):
        acts["layers.1.out"]


def test_bad_interventions(llama):
    with pytest.raises(ValueError, match="only a block's output"):
        with llama.intervene({"layers.0.attn.probs": lambda o: o}):
            pass
    with pytest.raises(TypeError, match="not callable"):
        with llama.intervene({"layers.0.mlp": 3}):
            pass
    with llama.intervene({"layers.0.mlp": lambda o: o[:, :3]}):
        with pytest.raises(ValueError, match="shape"):
            llama.logits([4, 5, 6])

    def boom(out):
        raise RuntimeError("from the hook")

    with llama.intervene({"layers.1.mlp": boom}):
        with pytest.raises(RuntimeError, match="from the hook"):
            llama.logits([4, 5, 6])
    llama.logits([4, 5, 6])  # the model still runs

"""The native decoder against Hugging Face transformers (PyTorch CPU, float32) on tiny random-weight
models of every architecture (tests/hf_models.py), and against itself: decode step by step, in
chunks, with an f16 cache and with several sequences in one batch must equal the full recompute.
llama2.c's stories260K runs through lb.load too: its greedy text must equal run.c's."""

import numpy as np
import pytest

import hf_models
import lmblocks as lb

pytest.importorskip("torch")
pytest.importorskip("transformers")

T = 40  # longer than every sliding window in CONFIGS (4 and 5), so the rings wrap


@pytest.fixture(scope="module", params=sorted(hf_models.CONFIGS))
def tiny(request, tmp_path_factory):
    """(name, transformers model, our model, ids) for one architecture config."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    ref = hf_models.build(name, folder)
    model = lb.load(folder, verbose=False)
    ids = np.random.default_rng(sum(map(ord, name))).integers(0, model.args.vocab_size, T).tolist()
    return name, ref, model, ids


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def test_logits_equal_transformers(tiny):
    name, ref, model, ids = tiny
    want = hf_models.hf_logits(ref, ids)
    got = model.logits(ids)
    assert got.shape == want.shape and got.dtype == np.float32
    assert rel_err(got, want) <= 1e-4, name


@pytest.mark.parametrize("prefill,n_batch", [(1, 512), (7, 3), (T // 2, 16), (T, 5)])
def test_decode_step_by_step_equals_full_recompute(tiny, prefill, n_batch):
    """A prefill of `prefill` tokens (run in chunks of n_batch) then one token per call; small n_batch
    makes sliding-window layers keep rings of window + n_batch - 1 slots that wrap many times."""
    name, _, model, ids = tiny
    full = model.logits(ids)
    cache = model.new_cache(1, T, n_batch=n_batch)
    rows = [model.lm.forward(cache, np.array(ids[:prefill], np.int32), logits="all")]
    rows += [model.lm.forward(cache, np.array([t], np.int32), logits="all") for t in ids[prefill:]]
    assert cache.length(0) == T
    assert rel_err(np.concatenate(rows), full) <= 1e-5, name


def test_f16_cache_is_close(tiny):
    name, ref, model, ids = tiny
    want = hf_models.hf_logits(ref, ids)
    half = lb.load(model.path, kv_dtype="f16", verbose=False)
    assert rel_err(half.logits(ids), want) <= 2e-3, name


def test_sequences_of_different_lengths_in_one_batch(tiny):
    """Three sequences in one call (lengths 40, 1 and 23), then a decode step for two of them
    in one call: each row equals its sequence run alone."""
    name, _, model, ids = tiny
    seqs = [ids, ids[5:6], ids[::-1][:23]]
    cache = model.new_cache(3, T + 1)
    tokens = np.concatenate([np.array(s, np.int32) for s in seqs])
    seq_ids = np.concatenate([np.full(len(s), i, np.int32) for i, s in enumerate(seqs)])
    out = model.lm.forward(cache, tokens, seq_ids, logits="all")
    last = model.lm.forward(model.new_cache(3, T + 1), tokens, seq_ids, logits="last")
    at = 0
    for i, s in enumerate(seqs):
        alone = model.logits(s)
        assert rel_err(out[at: at + len(s)], alone) <= 1e-5, (name, i)
        assert rel_err(last[i: i + 1], alone[-1:]) <= 1e-5, (name, i)
        at += len(s)
        assert cache.length(i) == len(s)
    step = model.lm.forward(cache, np.array([7, 9], np.int32), np.array([2, 0], np.int32), logits="last")
    assert rel_err(step[0], model.logits(seqs[2] + [7])[-1]) <= 1e-5
    assert rel_err(step[1], model.logits(seqs[0] + [9])[-1]) <= 1e-5


def test_greedy_generation_equals_transformers(tiny):
    """20 tokens by argmax, transformers recomputing the whole sequence each step; ours decodes from the
    cache. (transformers' generate() would also ban EOS before min_new_tokens: not plain greedy.)"""
    name, ref, model, ids = tiny
    seq = ids[:6]
    for _ in range(20):
        seq.append(int(np.argmax(hf_models.hf_logits(ref, seq)[-1])))
    assert model.generate_ids(ids[:6], 20, stop_at_eos=False) == seq[6:], name


def test_blocks_are_reachable_from_python(tiny):
    """The composed model is inspectable: blocks, their kinds and weights as zero-copy arrays."""
    name, ref, model, _ = tiny
    layer0 = model.lm.body[0]
    attn = layer0.mixer
    assert attn.kind == "Attention" and attn.n_heads == ref.config.num_attention_heads
    assert attn.path == "layers.0.attn" and layer0.mlp.path == "layers.0.mlp"
    q = np.asarray(attn.weights()["q_proj"])
    if name.startswith("phi3"):  # a row view of the fused qkv_proj
        want = ref.model.layers[0].self_attn.qkv_proj.weight.detach().numpy()[: q.shape[0]]
    else:
        want = ref.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    np.testing.assert_array_equal(q, want)


# ---- llama2.c ------------------------------------------------------------------------------------


def test_stories260k_greedy_text_equals_run_c(shared_data):
    """run.c's text from BOS at temperature 0 (../shared/data/README.md), now from the native engine."""
    from test_ref_models import STEPS, readme_text

    model = lb.load(shared_data / "stories260K.bin", verbose=False)
    assert model.tokenizer.vocab_size == 512  # tok512.bin found beside the checkpoint
    ids = model.generate_ids([1], STEPS, stop_at_eos=False)
    ids = ids[: ids.index(1)] if 1 in ids else ids
    assert model.tokenizer.decode(ids) == readme_text(shared_data)


def test_stories260k_logits_equal_transformers(shared_data):
    """Our logits (interleaved rope on the file's rows) against transformers' Llama given the same
    weights with q/k rows permuted to its half-split layout, on 200 tokens of real text."""
    import torch
    import transformers

    from lmblocks.io.llama2c import Llama2cFile
    from test_ref_models import hf_permute

    f = Llama2cFile(shared_data / "stories260K.bin")
    c = f.config
    cfg = transformers.LlamaConfig(**{k: v for k, v in c.items() if k != "rope_interleaved"})
    ref = transformers.LlamaForCausalLM(cfg).eval()
    sd = {}
    for name in f.tensors:
        w = np.asarray(f.tensor(name)).copy()
        if name.endswith("q_proj.weight"):
            w = hf_permute(w, c["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            w = hf_permute(w, c["num_key_value_heads"])
        sd[name] = torch.from_numpy(w)
    if "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    ref.load_state_dict(sd, strict=True)
    model = lb.load(shared_data / "stories260K.bin", verbose=False)
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:2000]
    ids = model.tokenizer.encode(text)[:200]
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
    assert rel_err(model.logits(ids), want) <= 1e-4

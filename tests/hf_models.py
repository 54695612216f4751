"""Tiny random-weight Hugging Face causal LMs used as references by the tests.

Not a test module: tests import it. ``CONFIGS`` maps a name to config kwargs
(including ``model_type``); ``build(name, folder)`` creates the model with a
fixed seed, re-initialises *every* parameter with ``randn * 0.2`` (norm
weights included, so norms are not all ones / all zeros), saves it with
``save_pretrained(folder, safe_serialization=True)`` (config.json,
generation_config.json, model.safetensors) and returns it in eval mode.
``hf_logits(model, ids)`` runs one plain forward (no KV cache) and returns a
float32 numpy array of shape (T, V).

All models: float32, ``attn_implementation="eager"``, max_position_embeddings 128.

Facts for implementers (read from transformers 5.23 sources in the venv)
--------------------------------------------------------------------------
Rope config: in transformers 5 every one of these configs stores rope in
``config.rope_parameters`` (a dict).  ``rope_theta=`` / ``rope_scaling=``
kwargs are still accepted and folded in; config.json is written with
``rope_parameters`` only (no top-level ``rope_theta`` / ``rope_scaling``).
  llama/mistral/qwen2: rope_parameters = {"rope_type": ..., "rope_theta": ..., + scaling keys}
    e.g. {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}
         {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
  phi3: rope_parameters = {"rope_type": "default"|"longrope", "rope_theta": ..., "partial_rotary_factor": f}
  gemma3_text: rope_parameters = {"sliding_attention": {"rope_type": "default", "rope_theta": <rope_local_base_freq>},
                                  "full_attention":    {"rope_type": "default", "rope_theta": <rope_theta>}}
    (legacy kwargs: rope_theta -> full_attention, rope_local_base_freq -> sliding_attention;
     defaults 1e6 global / 1e4 local; rope_scaling applies to full_attention only.)
Rope is always NeoX/"rotate_half" style on HF-layout weights: x*cos + rotate_half(x)*sin,
rotate_half(x) = cat(-x[d/2:], x[:d/2]); inv_freq = 1/base**(arange(0,d,2)/d).
Attention scale = head_dim**-0.5 for llama/mistral/qwen2/phi3; GQA via repeat_kv
(kv head j serves q heads j*g .. j*g+g-1, g = H/Hkv).  RMSNorm (non-gemma):
w * (x.float() * rsqrt(mean(x^2)+eps)).to(dtype).

Masks (transformers.masking_utils): causal = kv_idx <= q_idx; sliding overlay =
``kv_idx > q_idx - sliding_window``, i.e. key j is visible from query i iff
0 <= i - j < W (W keys including self; i-j == W is masked).  Same function is used
by mistral, qwen2 (if use_sliding_window), phi3 (if sliding_window set) and
gemma3 sliding layers.

llama: model.embed_tokens.weight, model.layers.N.{input_layernorm,post_attention_layernorm}.weight,
  model.layers.N.self_attn.{q,k,v,o}_proj.weight (+ .bias on q/k/v/o if attention_bias),
  model.layers.N.mlp.{gate,up,down}_proj.weight, model.norm.weight, lm_head.weight
  (absent when tie_word_embeddings). MLP: down(silu(gate(x)) * up(x)). head_dim may be set explicitly.
mistral: same names as llama, no biases.  MistralModel uses create_sliding_window_causal_mask
  for ALL layers whenever config.sliding_window is not None (verified numerically below in
  _self_check: with W=5, T=12 the eager logits differ from a sliding_window=None copy from
  position 5 on and are identical for positions 0..4).
qwen2: llama names; q_proj/k_proj/v_proj ALWAYS have bias (hard-coded bias=True), o_proj no bias.
  sliding window only if use_sliding_window=True (default False -> sliding_window=None).
  tie_word_embeddings=True -> no lm_head.weight in the safetensors; logits = h @ embed^T.
phi3: model.layers.N.self_attn.qkv_proj.weight [(H + 2*Hkv)*hd, D]: rows [0:H*hd]=q,
  [H*hd : H*hd+Hkv*hd]=k, [H*hd+Hkv*hd :]=v.  self_attn.o_proj.weight.
  mlp.gate_up_proj.weight [2*I, D]: first I rows = gate, last I rows = up;
  out = down(up * silu(gate)).  mlp.down_proj.weight.  Norm names as llama.
  Partial rotary supported: rotary_dim = int(head_dim * partial_rotary_factor); only the
  first rotary_dim dims of each head are rotated (rotate_half within those dims,
  inv_freq uses dim = rotary_dim); remaining dims pass through.
gemma3_text (Gemma3ForCausalLM + Gemma3TextConfig): names as llama plus
  self_attn.{q_norm,k_norm}.weight [head_dim] and per layer input_layernorm,
  post_attention_layernorm, pre_feedforward_layernorm, post_feedforward_layernorm; model.norm.
  lm_head tied to embed_tokens by default (tie_word_embeddings=True).
  Block: h = x + post_attn_norm(attn(input_norm(x))); h = h + post_ff_norm(mlp(pre_ff_norm(h))).
  Embedding: embed(ids) * embed_scale, embed_scale = torch.tensor(hidden_size**0.5) (a float32
    tensor) cast to weight dtype (so sqrt(D) rounded to bf16 if the model is bf16; exact fp32 here).
  RMSNorm: computed in float32: y = x.float()*rsqrt(mean(x^2)+eps) * (1.0 + w.float()), then cast
    back.  Weight init is zeros (i.e. scale 1).  Same (1+w) norm for q_norm/k_norm.
  q_norm/k_norm applied per head to q and k BEFORE rope.
  Attention scale = query_pre_attn_scalar**-0.5 (NOT head_dim).  head_dim is an explicit config
    field (may differ from D/H); config validation still requires D % H == 0.
  layer_types: list of "sliding_attention"/"full_attention" per layer; sliding layers use
    sliding_window (mask above) and rope_parameters["sliding_attention"]["rope_theta"]
    (= rope_local_base_freq); full layers use causal mask and rope_parameters["full_attention"].
    Default when layer_types is None: layer i sliding iff (i+1) % 6 != 0.
  MLP activation: hidden_activation = "gelu_pytorch_tanh" (tanh-approx GELU), down(act(gate)*up).
  final_logit_softcapping and attn_logit_softcapping exist but default None for Gemma3
    (logits = tanh(l/c)*c if set; attn scores likewise, applied after scaling, before mask).
"""

from __future__ import annotations

import copy
import pathlib

import numpy as np
import torch

SEED = 1234

_COMMON = dict(
    vocab_size=300,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

CONFIGS: dict[str, dict] = {
    "llama": dict(
        model_type="llama", hidden_size=48, intermediate_size=88, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, rope_theta=10000.0,
        tie_word_embeddings=False, **_COMMON,
    ),
    "llama_mqa": dict(
        model_type="llama", hidden_size=40, intermediate_size=72, num_hidden_layers=3,
        num_attention_heads=5, num_key_value_heads=1, rope_theta=500000.0,
        tie_word_embeddings=False, **_COMMON,
    ),
    "llama_headdim": dict(  # explicit head_dim != hidden_size / heads
        model_type="llama", hidden_size=48, intermediate_size=88, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=10, rope_theta=10000.0,
        tie_word_embeddings=True, **_COMMON,
    ),
    "llama_rope_linear": dict(
        model_type="llama", hidden_size=48, intermediate_size=88, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=False,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
        **_COMMON,
    ),
    "llama_rope_llama3": dict(
        model_type="llama", hidden_size=48, intermediate_size=88, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        **_COMMON,
    ),
    "mistral": dict(
        model_type="mistral", hidden_size=48, intermediate_size=88, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, sliding_window=5, rope_theta=10000.0,
        tie_word_embeddings=False, **_COMMON,
    ),
    "qwen2": dict(
        model_type="qwen2", hidden_size=48, intermediate_size=88, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, rope_theta=1000000.0,
        tie_word_embeddings=True, use_sliding_window=False, **_COMMON,
    ),
    "phi3": dict(
        model_type="phi3", hidden_size=48, intermediate_size=88, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, rope_theta=10000.0,
        tie_word_embeddings=False, original_max_position_embeddings=128, **_COMMON,
    ),
    "phi3_partial": dict(  # partial rotary: rotary_dim = int(16 * 0.5) = 8 of head_dim 16
        model_type="phi3", hidden_size=48, intermediate_size=88, num_hidden_layers=2,
        num_attention_heads=3, num_key_value_heads=1, tie_word_embeddings=False,
        original_max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        **_COMMON,
    ),
    "gemma3_text": dict(
        model_type="gemma3_text", hidden_size=48, intermediate_size=88, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, head_dim=12,  # D/H would be 8
        query_pre_attn_scalar=20, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        },
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        vocab_size=300, max_position_embeddings=128, rms_norm_eps=1e-6,
        bos_token_id=2, eos_token_id=1, pad_token_id=0,
    ),
}


def make_config(name: str):
    from transformers import AutoConfig

    kw = copy.deepcopy(CONFIGS[name])
    model_type = kw.pop("model_type")
    return AutoConfig.for_model(model_type, **kw)


def build(name: str, folder: pathlib.Path) -> torch.nn.Module:
    """Create the tiny model ``name`` with random weights, save it to ``folder``, return it (eval)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = make_config(name)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.2)
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, do_sample=False,
    )
    model.save_pretrained(folder, safe_serialization=True)
    return model


@torch.no_grad()
def hf_logits(model: torch.nn.Module, ids: list[int]) -> np.ndarray:
    """Plain full-sequence forward without KV cache -> float32 (T, V)."""
    x = torch.tensor([list(ids)], dtype=torch.long)
    out = model(input_ids=x, use_cache=False)
    return out.logits[0].to(torch.float32).cpu().numpy()


def _self_check(tmp: str = "/tmp/helper_hf/models") -> None:  # pragma: no cover - manual use
    ids = [5, 17, 250, 3, 99, 42, 7, 8, 123, 200, 11, 299]
    for name in CONFIGS:
        m = build(name, pathlib.Path(tmp) / name)
        lg = hf_logits(m, ids)
        print(name, lg.shape, float(np.abs(lg).mean()))


if __name__ == "__main__":  # pragma: no cover
    _self_check()

"""Zamba2 (Zyphra, 2024): a stack of Mamba2 layers, some of which ("hybrid" in ``layers_block_type``)
first run one of ``num_mem_blocks`` shared transformer blocks, reused round-robin.

Mamba layer: ``x += mamba(rms_norm(x))``. Hybrid layer, with ``e`` the token embeddings and use ``j`` of
shared block ``j % num_mem_blocks``::

    t = rms_norm([x | e])                   (2D features)
    t = attn(t)                             (2D -> D, rope, score scale 1 / sqrt(head_dim / 2))
    t = mlp(rms_norm(t))                    (no residual inside the shared block)
    x += mamba(rms_norm(x + linear_j(t)))

The shared blocks' weights are one set of tensors, held by every use (zero-copy); each use is its own
Attention and MLP object, so each keeps its own keys and values in the cache, and carries its own
low-rank adapters (``adapter_rank``) on q/k/v (``use_shared_attention_adapter``) and on the MLP's gate and
up projections (transformers' fused ``gate_up_proj``, split into its gate and up rows).

The composition, per hybrid layer: ``Layer(mamba, attn_norm=Sequential([Parallel([identity, branch]),
rms_norm]))`` with ``branch = Sequential([ConcatEmbeddings, rms_norm, attn, rms_norm, mlp, linear])``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..io import FormatError
from . import mamba2
from .base import ModelArgs, Weights, check_positive_int, nn, rope_kwargs

MODEL_TYPES = ("zamba2",)
GGUF_ARCHS: tuple[str, ...] = ()
_MAMBA, _HYBRID = ("mamba", "linear_attention"), "hybrid"


@dataclass
class Zamba2Args(ModelArgs):
    rms_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    tie_word_embeddings: bool = True
    layers_block_type: list | None = None
    mamba_d_state: int = 64
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_ngroups: int = 1
    n_mamba_heads: int = 8
    time_step_min: float = 0.001
    chunk_size: int = 256
    add_bias_linear: bool = False
    num_mem_blocks: int = 1
    use_shared_attention_adapter: bool = False
    adapter_rank: int = 128
    use_mem_rope: bool = False

    @classmethod
    def from_config(cls, config: dict, where: str = "config"):
        config = dict(config)
        if config.get("intermediate_size") is None and isinstance(config.get("hidden_size"), int):
            config["intermediate_size"] = 4 * config["hidden_size"]
        return super().from_config(config, where)

    def validate(self, where: str) -> None:
        D, H = self.hidden_size, self.num_attention_heads
        if isinstance(D, int) and isinstance(H, int) and H > 0:
            if (2 * D) % H:
                raise FormatError(f"{where}: 2 * hidden_size = {2 * D} (the shared attention's width) is not a multiple "
                                  f"of num_attention_heads {H}")
            self.head_dim = 2 * D // H  # transformers' attention_head_dim, whatever head_dim says
        super().validate(where)
        for k in ("mamba_d_state", "mamba_d_conv", "mamba_expand", "mamba_ngroups", "n_mamba_heads", "num_mem_blocks"):
            check_positive_int(where, k, getattr(self, k))
        types = self.layers_block_type
        if not (isinstance(types, list) and len(types) == self.num_hidden_layers
                and all(t in _MAMBA or t == _HYBRID for t in types)):
            raise FormatError(f"{where}: field 'layers_block_type' is {types!r:.200}; expected {self.num_hidden_layers} "
                              f"entries, each 'mamba' (or 'linear_attention') or 'hybrid'")
        if self.use_shared_attention_adapter and self.num_key_value_heads != H:
            raise FormatError(f"{where}: num_key_value_heads {self.num_key_value_heads} differs from num_attention_heads "
                              f"{H}; Zamba2's k/v adapters need them equal")
        if any(t == _HYBRID for t in types):
            check_positive_int(where, "adapter_rank", self.adapter_rank)
        if (self.mamba_expand * D) % self.n_mamba_heads:
            raise FormatError(f"{where}: mamba_expand * hidden_size = {self.mamba_expand * D} is not a multiple of "
                              f"n_mamba_heads {self.n_mamba_heads}")
        self.ssm = mamba2.Mamba2Args(
            model_type="mamba2", hidden_size=D, num_hidden_layers=self.num_hidden_layers, vocab_size=self.vocab_size,
            num_heads=self.n_mamba_heads, head_dim=self.mamba_expand * D // self.n_mamba_heads,
            state_size=self.mamba_d_state, n_groups=self.mamba_ngroups, expand=self.mamba_expand,
            conv_kernel=self.mamba_d_conv, chunk_size=self.chunk_size, layer_norm_epsilon=1e-5,  # fixed in transformers
            use_bias=self.add_bias_linear, use_conv_bias=True, time_step_limit=(float(self.time_step_min), float("inf")))
        self.ssm.validate(where)


ARGS = Zamba2Args


def build(args: Zamba2Args, w: Weights, progress=iter) -> "nn.CausalLM":
    D, V, F, H, hd, r = (args.hidden_size, args.vocab_size, args.intermediate_size, args.num_attention_heads,
                         args.head_dim, args.adapter_rank)
    Hkv, eps = args.num_key_value_heads, float(args.rms_norm_eps)
    hybrid = [i for i, t in enumerate(args.layers_block_type) if t == _HYBRID]
    bias = args.add_bias_linear

    def norm(name, n):
        return nn.RMSNorm(w.take(name, (n,)), eps=eps)

    def source(j, i):
        """The layer whose shared_transformer tensors use j (in layer i) reads: transformers saves each shared
        block once, under its first use, when it ties them (it does so with tied embeddings only); a file that
        holds layer i's own copy is read as it is."""
        own = w.has(f"model.layers.{i}.shared_transformer.input_layernorm.weight")
        return i if own else hybrid[j % args.num_mem_blocks]

    def shared(src):
        """The shared block's tensors stored under layer src; every use reading them holds these (zero-copy)."""
        p = f"model.layers.{src}.shared_transformer."
        a, f = p + "self_attn.", p + "feed_forward."
        gate_up = w.take(f + "gate_up_proj.weight", (2 * F, D))
        gate_up_b = w.take(f + "gate_up_proj.bias", (2 * F,)) if bias else None
        return dict(
            in_norm=w.take(p + "input_layernorm.weight", (2 * D,)), ff_norm=w.take(p + "pre_ff_layernorm.weight", (D,)),
            q=w.take(a + "q_proj.weight", (H * hd, 2 * D)), k=w.take(a + "k_proj.weight", (Hkv * hd, 2 * D)),
            v=w.take(a + "v_proj.weight", (Hkv * hd, 2 * D)), o=w.take(a + "o_proj.weight", (D, H * hd)),
            gate=gate_up[:F], up=gate_up[F:], down=w.take(f + "down_proj.weight", (D, F)),
            gate_b=gate_up_b[:F] if bias else None, up_b=gate_up_b[F:] if bias else None,
            down_b=w.take(f + "down_proj.bias", (D,)) if bias else None)

    blocks: dict[int, dict] = {}

    def branch(j, i):
        """Use j of its shared block (in hybrid layer i): [x | e] -> norm -> attention -> norm -> MLP -> linear."""
        src = source(j, i)
        if src not in blocks:
            blocks[src] = shared(src)
        s, p = blocks[src], f"model.layers.{src}.shared_transformer."
        lora = lambda name, rows, cols: (w.take(f"{name}.{j}.0.weight", (r, cols)),  # noqa: E731
                                         w.take(f"{name}.{j}.1.weight", (rows, r)))
        attn_ad = {}
        if args.use_shared_attention_adapter:
            attn_ad = {f"{x}_proj": lora(p + f"self_attn.linear_{x}_adapter_list", 2 * D, 2 * D) for x in "qkv"}
        gA, gB = lora(p + "feed_forward.gate_up_proj_adapter_list", 2 * F, D)
        attn = nn.Attention(H, Hkv, hd, s["q"], s["k"], s["v"], s["o"], scale=(hd / 2) ** -0.5, adapters=attn_ad,
                            rope=bool(args.use_mem_rope),
                            **rope_kwargs(args.rope, args.rotary_dim, args.rope_interleaved, w.where))
        mlp = nn.MLP(s["gate"], s["up"], s["down"], activation=args.hidden_act, gate_bias=s["gate_b"],
                     up_bias=s["up_b"], down_bias=s["down_b"], adapters={"gate_proj": (gA, gB[:F]), "up_proj": (gA, gB[F:])})
        return nn.Sequential([nn.ConcatEmbeddings(D, D), nn.RMSNorm(s["in_norm"], eps=eps), attn,
                              nn.RMSNorm(s["ff_norm"], eps=eps), mlp,
                              nn.Linear(w.take(f"model.layers.{i}.linear.weight", (D, D)))])

    def layer(i):
        if i not in hybrid:
            p = f"model.layers.{i}."
            return nn.Layer(mamba2.mixer(args.ssm, w, p + "mamba."), None, attn_norm=norm(p + "input_layernorm.weight", D))
        p = f"model.layers.{i}.mamba_decoder."
        # x + linear(shared(...)) goes into the Mamba layer's norm; the residual is x itself.
        pre = nn.Sequential([nn.Parallel([nn.Sequential([]), branch(hybrid.index(i), i)]),
                             norm(p + "input_layernorm.weight", D)])
        return nn.Layer(mamba2.mixer(args.ssm, w, p + "mamba."), None, attn_norm=pre)

    embed = w.take("model.embed_tokens.weight", (V, D))
    head = None if args.tie_word_embeddings else w.take("lm_head.weight", (V, D))
    layers = nn.Sequential([layer(i) for i in progress(range(args.num_hidden_layers))])
    # A file holding each layer's own copy of the shared block (untied) stores every use's adapters in each
    # copy; a layer reads only its own use's, as transformers does. The others are not "unused" by mistake.
    for name in w.unused():
        if ".shared_transformer." in name and "_adapter_list." in name:
            w.take(name)
    return nn.CausalLM(embed, 1.0, layers, norm("model.final_layernorm.weight", D), head)

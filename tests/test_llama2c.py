"""lmblocks.io.llama2c: the stories260K checkpoint against the same weights as GGUF (read by the gguf
package), its tokenizers against the GGUF vocabulary and SentencePiece, and damaged files."""

import struct

import numpy as np
import pytest

from lmblocks.io import FormatError
from lmblocks.io.llama2c import Llama2cFile, read_llama2c_tokenizer

gguf = pytest.importorskip("gguf")

# Hugging Face name -> llama.cpp GGUF name
GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
PER_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.down_proj": "ffn_down", "mlp.up_proj": "ffn_up"}


def gguf_name(hf):
    if hf in GGUF_NAMES:
        return GGUF_NAMES[hf]
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{PER_LAYER[rest.removesuffix('.weight')]}.weight"


def test_stories260k_equals_its_gguf(shared_data):
    f = Llama2cFile(shared_data / "stories260K.bin")
    assert f.header == dict(dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512, seq_len=512)
    assert f.shared_classifier and f.config["tie_word_embeddings"] and "lm_head.weight" not in f.tensors
    reader = gguf.GGUFReader(shared_data / "stories260K.gguf")
    ref = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert len(f.tensors) == 2 + 9 * 5
    for name in f.tensors:
        got = np.asarray(f.tensor(name))
        np.testing.assert_array_equal(got, ref[gguf_name(name)], err_msg=name)
    np.testing.assert_array_equal(ref["output.weight"], np.asarray(f.tensor("model.embed_tokens.weight")))
    t = f.tensor("model.layers.3.mlp.up_proj.weight")
    assert t.readonly and t.shape == (172, 64)


def test_tok512_equals_the_gguf_vocabulary(shared_data):
    pieces, scores, max_len = read_llama2c_tokenizer(shared_data / "tok512.bin", vocab_size=512)
    reader = gguf.GGUFReader(shared_data / "stories260K.gguf")
    field = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode() for i in field.data]
    gscores = np.array(reader.fields["tokenizer.ggml.scores"].contents(), np.float32)
    assert len(pieces) == 512 and max_len == max(len(p) for p in pieces)
    for i in range(3, 512):  # 0..2 are <unk>, <s>, </s>, spelled differently in the two files
        assert pieces[i].decode().replace(" ", "\u2581") == tokens[i], i
    np.testing.assert_array_equal(scores[3:], gscores[3:])


def test_llama2_tokenizer_bin_equals_its_sentencepiece_model(shared_data):
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(shared_data / "llama2-tokenizer.model"))
    pieces, scores, _ = read_llama2c_tokenizer(shared_data / "llama2c-tokenizer.bin")
    assert len(pieces) == sp.get_piece_size() == 32000
    for i in range(3, 32000):
        assert pieces[i].decode().replace(" ", "\u2581") == sp.id_to_piece(i), i
    np.testing.assert_array_equal(scores[3:], np.array([sp.get_score(i) for i in range(3, 32000)], np.float32))


def write_checkpoint(path, header, n_floats):
    path.write_bytes(struct.pack("<7i", *header) + np.zeros(n_floats, np.float32).tobytes())
    return path


GOOD = (8, 12, 1, 2, 1, 10, 4)  # dim, hidden, layers, heads, kv heads, vocab, seq
GOOD_FLOATS = 10 * 8 + 8 + 8 * 8 + 2 * 4 * 8 + 8 * 8 + 8 + 3 * 12 * 8 + 8 + 4 * 4


def test_minimal_checkpoint_reads_and_an_unshared_classifier(tmp_path):
    f = Llama2cFile(write_checkpoint(tmp_path / "m.bin", GOOD, GOOD_FLOATS))
    assert f.shared_classifier and f.tensors["model.layers.0.self_attn.k_proj.weight"].shape == (4, 8)
    g = Llama2cFile(write_checkpoint(tmp_path / "u.bin", (8, 12, 1, 2, 1, -10, 4), GOOD_FLOATS + 80))
    assert not g.shared_classifier and g.tensor("lm_head.weight").shape == (10, 8)


@pytest.mark.parametrize("header,floats,match", [
    (GOOD, GOOD_FLOATS - 1, "describes"),                      # one float short
    ((8, 12, 1, 2, 1, -10, 4), GOOD_FLOATS, "describes"),      # unshared classifier missing
    ((0, 12, 1, 2, 1, 10, 4), 0, "dim"),
    ((8, 12, -1, 2, 1, 10, 4), 0, "n_layers"),
    ((8, 12, 1, 3, 1, 10, 4), 0, "multiple"),
    ((8, 12, 1, 2, 3, 10, 4), 0, "multiple"),
    ((6, 12, 1, 2, 1, 10, 4), 0, "odd"),
    ((2 ** 30, 2 ** 30, 2 ** 30, 2, 1, 10, 4), 0, "describes"),  # absurd sizes: refused before any allocation
])
def test_damaged_checkpoints_raise(tmp_path, header, floats, match):
    with pytest.raises(FormatError, match=match):
        Llama2cFile(write_checkpoint(tmp_path / "bad.bin", header, floats))
    (tmp_path / "short.bin").write_bytes(b"\0" * 20)
    with pytest.raises(FormatError, match="too short"):
        Llama2cFile(tmp_path / "short.bin")


def test_damaged_tokenizers_raise(tmp_path):
    good = struct.pack("<i", 4) + struct.pack("<fi", 0.5, 2) + b"ab" + struct.pack("<fi", -1.0, 1) + b"c"
    p = tmp_path / "tok.bin"
    p.write_bytes(good)
    assert read_llama2c_tokenizer(p)[0] == [b"ab", b"c"]
    for bad, match in [(good[:-1], "length"), (good[:10], "cut off|length"), (struct.pack("<i", 0), "max_token"),
                       (struct.pack("<i", 4) + struct.pack("<fi", 0.5, 9) + b"x" * 9, "length"),
                       (struct.pack("<i", 4) + struct.pack("<fi", 0.5, -3), "length")]:
        p.write_bytes(bad)
        with pytest.raises(FormatError, match=match):
            read_llama2c_tokenizer(p)
    p.write_bytes(good)
    with pytest.raises(FormatError, match="needs 3"):
        read_llama2c_tokenizer(p, vocab_size=3)

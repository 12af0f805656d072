"""Byte-level BPE: pinned outputs, fast trainer == reference, tiktoken == reference encoder,
round trips, special tokens, files on disk, and the errors a user can run into."""
import json
import pickle
import random

import pytest

from nbcore import bpe_reference as ref
from nbcore.tokenizer import (EOT, FORMAT_VERSION, GPT2_PATTERN, GPT4_PATTERN, BPETokenizer, TokenizerFileError,
                              count_chunks, render_bytes, train_bpe)

# ------------------------------------------------------------------ test corpora (made here, deterministic)
WORDS = ("the of and to in is was he for it with as his on be at by had not are but from or have an they "
         "which one you were her all she there would their we him been has when who will more no if out so "
         "said what up its about into than them can only other new some could time these two may then do first "
         "any my now such like our over man me even most made after also did many before must through back "
         "years where much your way well down should because each just those people Mr how too little state "
         "good very make world still own see men work long get here between both life being under never day "
         "same another know while last might us great old year off come since against go came right used take "
         "three don't it's he'll we've I'm they're Paris Zürich naïve café").split()


def english_like(n_words: int, seed: int) -> str:
    """Sentences of common words with punctuation, numbers and newlines (skewed frequencies)."""
    rng = random.Random(seed)
    out = []
    for i in range(n_words):
        w = WORDS[min(int(rng.expovariate(1 / 25)), len(WORDS) - 1)]
        out.append(w.capitalize() if rng.random() < 0.08 else w)
        r = rng.random()
        if r < 0.06:
            out.append(rng.choice([",", ".", ";", "!", "?"]))
        elif r < 0.08:
            out.append(str(rng.randint(0, 99999)))
        elif r < 0.1:
            out.append("\n" * rng.randint(1, 3))
    return " ".join(out)


def small_alphabet(n: int, seed: int, alphabet="ab") -> str:
    """Runs over a tiny alphabet: many equal counts, so tie-breaking decides most merges."""
    rng = random.Random(seed)
    return " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))) for _ in range(n))


MULTILINGUAL = ("Größe und Straße, déjà vu. 東京は日本の首都です。北京是中国的首都。 Привет, мир! "
                "مرحبا بالعالم  नमस्ते दुनिया 🙂🙂 👍🏽 🇫🇷 e\u0301 ﬁ  \t\t  \n\n\n   x = 1234567 + 89;  "
                "I'm you're it's WE'LL DON'T   \r\n  ")

ADVERSARIAL = [
    "", " ", "  ", "\n", "\r\n", "\t", " " * 100, "\n" * 50 + "x", "  \n  \n\t x",
    "a" * 1000, "ab" * 300, "1234567890" * 20, "3.14159 2,718 1e-10 0x1f",
    "'s 's's 'S 'll 've 're 'd 'm 't", "don't won't y'all rock'n'roll",
    "🙂" * 30, "👨‍👩‍👧‍👦 family 🏳️‍🌈", "漢字かなカナ한국어" * 5, "\u0000\u0001\u007f\u0080\u00ff",
    "\ud800", "a\udfffb", "\ud83d\ude00", "x\ud83dy", "\udc00\ud800",  # lone / paired surrogates
    "<|endoftext|>", "a<|endoftext|>b", "\ufeffBOM", "\u200b\u200d zero width", "tab\tsep\tvalues\n",
] + [MULTILINGUAL]


def random_unicode(rng: random.Random, n: int) -> str:
    ranges = [(0x20, 0x7E), (0x0, 0x20), (0xA0, 0x24F), (0x400, 0x4FF), (0x3040, 0x30FF), (0x4E00, 0x4FFF),
              (0x1F300, 0x1F64F), (0xD800, 0xDFFF), (0x10000, 0x10FFFF)]
    weights = [50, 8, 8, 5, 5, 5, 5, 2, 2]
    out = []
    for _ in range(n):
        lo, hi = rng.choices(ranges, weights)[0]
        out.append(chr(rng.randint(lo, hi)))
        if rng.random() < 0.1:
            out.append(" " * rng.randint(1, 4))
    return "".join(out)


@pytest.fixture(scope="module")
def tok():
    text = english_like(6000, seed=1) + "\n" + MULTILINGUAL * 20 + small_alphabet(300, seed=2, alphabet="xyz ")
    return train_bpe([text], 700, name="test-700", workers=1)


# ------------------------------------------------------------------ pinned outputs (minbpe style)
def test_wikipedia_example_pinned():
    # https://en.wikipedia.org/wiki/Byte_pair_encoding: aa -> Z, ab -> Y, ZY -> X
    assert ref.train_reference("aaabdaaabac", 259) == [(97, 97), (97, 98), (256, 257)]
    t = train_bpe("aaabdaaabac", 259, special_tokens=())
    assert t.merges == [(97, 97), (97, 98), (256, 257)]
    assert t.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert t.decode([258, 100, 258, 97, 99]) == "aaabdaaabac"
    assert t.token_bytes(258) == b"aaab"


def test_small_text_pinned():
    text = "hello hello world, hello there"
    want = [(104, 101), (108, 108), (256, 257), (258, 111), (32, 259), (32, 116)]
    assert ref.train_reference(text, 262) == want
    assert train_bpe(text, 262).merges == want
    assert train_bpe(text, 262).encode(text) == [259, 260, 32, 119, 111, 114, 108, 100, 44, 260, 261, 256, 114, 101]


def test_overlaps_ties_and_chunk_boundaries():
    # 'aaa' holds (a, a) twice, and merges left to right
    assert ref.get_stats([[97, 97, 97]]) == {(97, 97): 2}
    assert ref.merge([97, 97, 97], (97, 97), 256) == [256, 97]
    assert ref.merge([97, 97, 97, 97], (97, 97), 256) == [256, 256]
    # all pairs count 1: the smallest (left, right) wins; chunks are 'ab', ' cd' so (98, 32) is never counted
    assert ref.train_reference("ab cd", 257) == [(32, 99)]
    assert train_bpe("ab cd", 257).merges == [(32, 99)]
    # chunk weights: ' b' occurs 3 times as a chunk, 'ab' once inside one chunk 'aab'
    assert train_bpe("aab b b b", 257).merges == [(32, 98)]


# ------------------------------------------------------------------ fast trainer == reference
CASES = [
    ("english-gpt4", lambda: english_like(2500, seed=3), GPT4_PATTERN, 420),
    ("english-gpt2", lambda: english_like(2500, seed=4), GPT2_PATTERN, 420),
    ("ties-ab", lambda: small_alphabet(400, seed=5), GPT4_PATTERN, 330),
    ("ties-abc-gpt2", lambda: small_alphabet(400, seed=6, alphabet="abc"), GPT2_PATTERN, 340),
    ("multilingual", lambda: MULTILINGUAL * 3, GPT4_PATTERN, 400),
    ("whitespace-pattern", lambda: english_like(1500, seed=7), r"\S+|\s+", 380),
]


@pytest.mark.parametrize("name,make,pattern,vocab", CASES, ids=[c[0] for c in CASES])
def test_fast_trainer_equals_reference(name, make, pattern, vocab):
    text = make()
    want = ref.train_reference([text], vocab, pattern)
    assert len(want) == vocab - 256
    assert train_bpe([text], vocab, pattern=pattern, workers=1).merges == want
    # the torch recount path (what runs on a GPU with device='cuda') gives the same merges on CPU
    assert train_bpe([text], vocab, pattern=pattern, method="torch", device="cpu").merges == want


def test_streamed_documents_equal_one_text():
    docs = [english_like(300, seed=s) for s in range(10)]
    want = ref.train_reference(docs, 350)
    assert train_bpe(iter(docs), 350, workers=1).merges == want
    # a generator is consumed once, lazily
    assert train_bpe((d for d in docs), 350, workers=1).merges == want


@pytest.mark.parametrize("pattern", [GPT4_PATTERN, GPT2_PATTERN], ids=["gpt4", "gpt2"])
def test_parallel_pretokenization_equals_serial(pattern):
    # one big document with many lines: it gets cut between processes at safe boundaries only
    big = english_like(20000, seed=8) + "\nword \nWord\n\nNext  \nline.\nEnd" * 50
    docs = [big, MULTILINGUAL, "tail text"]
    serial, info1 = count_chunks(docs, pattern, workers=1)
    parallel, info2 = count_chunks(docs, pattern, workers=2, batch_chars=5000)
    assert parallel == serial == ref.count_chunks(docs, pattern)
    assert info1["workers"] == 1 and info2["workers"] == 2
    assert {**info1, "workers": 2} == info2 and info1["chars"] == sum(map(len, docs))


# ------------------------------------------------------------------ tiktoken encoding == reference encoder
def test_tiktoken_equals_reference_adversarial(tok):
    for text in ADVERSARIAL:
        assert tok.encode_ordinary(text) == ref.encode_reference(text, tok.merges, tok.pattern), repr(text)
        assert tok.encode(text) == tok.encode_ordinary(text)


def test_tiktoken_equals_reference_random(tok):
    rng = random.Random(0)
    texts = [random_unicode(rng, rng.randint(1, 200)) for _ in range(200)]
    texts += [english_like(50, seed=100 + i) for i in range(30)]
    texts += [small_alphabet(20, seed=200 + i, alphabet="xyz ") for i in range(30)]
    for text in texts:
        assert tok.encode_ordinary(text) == ref.encode_reference(text, tok.merges, tok.pattern), repr(text)
    assert tok.encode_ordinary_batch(texts, num_threads=2) == [tok.encode_ordinary(t) for t in texts]


def test_tiktoken_equals_reference_on_tie_heavy_tokenizers():
    # tokenizers trained on tiny alphabets have many tokens with several splits: the hardest case
    rng = random.Random(1)
    for seed, alphabet, vocab in [(10, "ab", 400), (11, "abc", 500), (12, "ab ", 350)]:
        t = train_bpe(small_alphabet(1500, seed, alphabet), vocab, workers=1)
        for _ in range(300):
            s = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
            assert t.encode(s) == ref.encode_reference(s, t.merges, t.pattern), (seed, s)


def test_lone_surrogates_follow_tiktoken(tok):
    # decided: lone surrogates become U+FFFD (tiktoken's own cleaning), a valid pair becomes its character
    assert ref.clean_text("a\ud800b") == "a\ufffdb"
    assert ref.clean_text("\ud83d\ude00") == "😀"
    assert tok.encode("a\ud800b") == tok.encode("a\ufffdb")
    assert tok.decode(tok.encode("x\udfffy")) == "x\ufffdy"
    assert tok.encode("\ud83d\ude00") == tok.encode("😀")


def test_round_trips(tok):
    rng = random.Random(2)
    texts = [t for t in ADVERSARIAL] + [random_unicode(rng, 100) for _ in range(50)]
    for text in texts:
        assert tok.decode(tok.encode(text)) == ref.clean_text(text)
        assert tok.decode_bytes(tok.encode(text)) == ref.clean_text(text).encode("utf-8")
        assert ref.decode_reference(tok.encode(text), tok.merges) == ref.clean_text(text)
    # a cut through a multi-byte character decodes with U+FFFD, never raises
    ids = tok.encode("🙂")
    assert tok.decode_bytes(ids) == "🙂".encode()
    assert tok.decode([0xF0, 0x9F]) == "\ufffd"


# ------------------------------------------------------------------ special tokens and sizes
def test_special_tokens_and_sizes(tok):
    assert tok.vocab_size == 700 and len(tok.merges) == 444
    assert tok.eot_id == 700 and tok.n_vocab == 701
    assert tok.special_tokens == {EOT: 700}
    text = "a<|endoftext|>b"
    assert tok.eot_id not in tok.encode(text)                      # not allowed: ordinary text
    assert tok.encode(text) == tok.encode_ordinary(text)
    ids = tok.encode(text, allowed_special="all")
    assert ids == tok.encode("a") + [700] + tok.encode("b")
    assert tok.encode(text, allowed_special={EOT}) == ids
    assert tok.decode(ids) == text and tok.token_bytes(700) == EOT.encode()
    assert tok.encode_batch([text, "b"], allowed_special="all") == [ids, tok.encode("b")]
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode(text, allowed_special={"<|pad|>"})
    for bad in ([701], [-1], [10**20], [1, 2, 5000]):
        with pytest.raises(ValueError, match=f"token id {bad[-1]} out of range"):
            tok.decode(bad)
    many = train_bpe("hello hello", 258, special_tokens=(EOT, "<|pad|>"))
    assert many.special_tokens == {EOT: 258, "<|pad|>": 259} and many.n_vocab == 260
    none = train_bpe("hello hello", 258, special_tokens=())
    with pytest.raises(ValueError, match="no <\\|endoftext\\|>"):
        none.eot_id


def test_all_ids_below_vocab_and_meta(tok):
    ids = tok.encode(MULTILINGUAL)
    assert max(ids) < tok.vocab_size and min(ids) >= 0
    assert tok.meta["vocab_size"] == 700 and tok.meta["sample_chars"] > 0
    assert set(tok.meta["seconds"]) == {"pretokenize", "merges", "total"}
    assert len(tok.merges_hash) == 64 and tok.merges_hash != train_bpe("hello hello", 258).merges_hash


def test_pickle_rebuilds_encoder(tok):
    tok.encode("warm the encoder")
    again = pickle.loads(pickle.dumps(tok))
    assert again._enc is None and again.encode(MULTILINGUAL) == tok.encode(MULTILINGUAL)


# ------------------------------------------------------------------ files
def test_save_load_round_trip(tok, tmp_path):
    folder = tok.save(tmp_path / "tok")
    assert sorted(p.name for p in folder.iterdir()) == ["merges.txt", "meta.json", "tokenizer.json"]
    d = json.loads((folder / "tokenizer.json").read_text())
    assert d["format_version"] == FORMAT_VERSION and d["merges"][0] == list(tok.merges[0])
    assert d["special_tokens"] == {EOT: 700} and d["pattern"] == GPT4_PATTERN
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["vocab_size"] == 700 and meta["merges_hash"] == tok.merges_hash and "versions" in meta
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + len(tok.merges)
    a, b = tok.merges[0]
    assert lines[1].split("\t")[:3] == ["256", str(a), str(b)]
    back = BPETokenizer.load(folder)
    assert back.merges == tok.merges and back.pattern == tok.pattern and back.name == "test-700"
    assert back.special_tokens == tok.special_tokens and back.merges_hash == tok.merges_hash
    assert back.meta["sample_chars"] == tok.meta["sample_chars"]
    assert back.encode(MULTILINGUAL, allowed_special="all") == tok.encode(MULTILINGUAL, allowed_special="all")


def test_render_bytes():
    assert render_bytes(b" the") == " the"
    assert render_bytes(b"\n\t") == "\\n\\t"
    assert render_bytes("é".encode()[:1]) == "\\xc3"
    assert render_bytes(b"a\\b") == "a\\\\b"
    assert render_bytes("東".encode()) == "東"


# ------------------------------------------------------------------ errors
def test_vocab_too_small():
    with pytest.raises(ValueError, match="minimum is 257"):
        train_bpe("hello", 256)
    with pytest.raises(ValueError, match="more than 256"):
        ref.train_reference("hello", 100)


def test_corpus_too_small_says_how_far():
    with pytest.raises(ValueError, match=r"after 4 merges \(vocab 260\).*larger sample.*vocab_size <= 260"):
        train_bpe("hello", 300)
    with pytest.raises(ValueError, match=r"after 4 merges"):
        train_bpe("hello", 300, method="torch")
    with pytest.raises(ValueError, match=r"after 4 merges"):
        ref.train_reference("hello", 300)


def test_bad_pattern_and_arguments():
    with pytest.raises(ValueError, match="not a valid regex"):
        train_bpe("hello", 300, pattern="(unclosed")
    with pytest.raises(ValueError, match="empty string"):
        train_bpe("hello", 300, pattern=r"\w*")
    with pytest.raises(ValueError, match="method"):
        train_bpe("hello", 300, method="magic")
    with pytest.raises(TypeError, match="must yield str"):
        train_bpe([b"bytes"], 300)
    with pytest.raises(ValueError, match="distinct"):
        train_bpe("hello hello", 258, special_tokens=(EOT, EOT))


def test_load_errors(tok, tmp_path):
    with pytest.raises(TokenizerFileError, match="no tokenizer folder"):
        BPETokenizer.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerFileError, match="no tokenizer.json"):
        BPETokenizer.load(tmp_path / "empty")
    folder = tok.save(tmp_path / "t")
    path = folder / "tokenizer.json"
    good = json.loads(path.read_text())

    def write(d):
        path.write_text(json.dumps(d) if isinstance(d, dict) else d)

    write("{not json")
    with pytest.raises(TokenizerFileError, match="unreadable"):
        BPETokenizer.load(folder)
    write({**good, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(TokenizerFileError, match="newer nbcore"):
        BPETokenizer.load(folder)
    write({**good, "merges": good["merges"][:-1]})
    with pytest.raises(TokenizerFileError, match="inconsistent"):
        BPETokenizer.load(folder)
    write({**good, "merges": [[600, 1]] + good["merges"][1:]})
    with pytest.raises(TokenizerFileError, match="does not exist yet"):
        BPETokenizer.load(folder)
    write({**good, "merges": [good["merges"][1], good["merges"][0]] + good["merges"][2:]})
    with pytest.raises(TokenizerFileError, match="merges_hash"):
        BPETokenizer.load(folder)
    write({**good, "special_tokens": {EOT: 5}})
    with pytest.raises(TokenizerFileError, match="special token ids"):
        BPETokenizer.load(folder)
    write(good)
    assert BPETokenizer.load(folder).merges == tok.merges


def test_cuda_is_guarded_and_progress_works():
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            train_bpe("hello hello", 258, device="cuda")
    assert train_bpe("hello hello", 258, progress=True).merges == ref.train_reference("hello hello", 258)

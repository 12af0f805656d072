"""Token shards: the file format, its validation, and the sharder (manifest, workers, resume)."""
import json
import random
import struct

import numpy as np
import pytest

from nbcore import shards
from nbcore.shards import ShardError, make_shards, read_shard, write_shard
from nbcore.tokenizer import BPETokenizer, train_bpe

WORDS = ("the a of to and in is it that for on with as was at by this be are from or an which one had "
         "river stone light window garden morning letter music winter number 42 7 1999 café naïve 東京").split()


def make_text(seed: int, n_docs: int) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))).capitalize() + "."
                     for _ in range(rng.randint(1, 6))]
        docs.append(" ".join(sentences))
    return docs


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """A tiny tokenizer (vocab 300) trained on text this test writes."""
    d = tmp_path_factory.mktemp("tok")
    train_bpe(make_text(0, 300), vocab_size=300, name="tiny300", workers=1).save(d)
    return d


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """400 documents separated by blank lines."""
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n\n".join(make_text(1, 400)), encoding="utf-8")
    return path


def spec(path):
    return f"local:{path}"


OPTS = {"split": "blank_lines"}


# ---------------------------------------------------------------- format
def test_write_read_round_trip_uint16(tmp_path):
    toks = np.array([300, 1, 2, 65535, 0], dtype=np.int64)
    p = write_shard(tmp_path / "a.bin", toks, vocab_size=65536)
    raw = p.read_bytes()
    assert raw[:12] == struct.pack("<3i", 20240520, 1, 5)  # magic, version 1, token count
    assert raw[12:1024] == bytes(1012)
    assert len(raw) == 1024 + 5 * 2
    got = read_shard(p)
    assert isinstance(got, np.memmap) and got.dtype == np.uint16
    assert got.tolist() == toks.tolist()
    assert list(tmp_path.iterdir()) == [p]  # no temp file left behind


def test_write_read_round_trip_uint32(tmp_path):
    toks = np.array([70000, 5, 65536], dtype=np.int64)
    p = write_shard(tmp_path / "b.bin", toks, vocab_size=70001)
    assert p.read_bytes()[:12] == struct.pack("<3i", 20240520, shards.VERSION_U32, 3)
    assert shards.VERSION_U32 != 1
    got = read_shard(p)
    assert got.dtype == np.uint32 and got.tolist() == toks.tolist()
    assert p.stat().st_size == 1024 + 3 * 4


def test_write_refuses_ids_outside_vocab_and_keeps_old_file(tmp_path):
    p = write_shard(tmp_path / "a.bin", [1, 2, 3], vocab_size=10)
    before = p.read_bytes()
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        write_shard(p, [1, 10], vocab_size=10)
    assert p.read_bytes() == before
    assert list(tmp_path.iterdir()) == [p]


def test_truncated_file_is_named_and_explained(tmp_path):
    p = write_shard(tmp_path / "t.bin", np.arange(100), vocab_size=100)
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ShardError, match=r"t\.bin.*100 tokens.*truncated"):
        read_shard(p)
    q = tmp_path / "short.bin"
    q.write_bytes(b"\x00" * 100)
    with pytest.raises(ShardError, match=r"short\.bin.*shorter than the 1024-byte header"):
        read_shard(q)


def test_trailing_bytes_bad_magic_and_unknown_version(tmp_path):
    p = write_shard(tmp_path / "x.bin", np.arange(10), vocab_size=100)
    good = p.read_bytes()
    p.write_bytes(good + b"\x00\x00")
    with pytest.raises(ShardError, match="trailing bytes"):
        read_shard(p)
    p.write_bytes(struct.pack("<i", 12345) + good[4:])
    with pytest.raises(ShardError, match=r"x\.bin: bad magic number 12345.*not a token shard"):
        read_shard(p)
    p.write_bytes(good[:4] + struct.pack("<i", 9) + good[8:])
    with pytest.raises(ShardError, match="unknown version 9"):
        read_shard(p)


def test_token_ids_checked_against_vocab_on_request(tmp_path):
    p = write_shard(tmp_path / "v.bin", [1, 2, 299], vocab_size=1000)
    assert read_shard(p, vocab_size=300).tolist() == [1, 2, 299]
    with pytest.raises(ShardError, match=r"v\.bin: token id 299 is outside .* 200 ids"):
        read_shard(p, vocab_size=200)


def test_reads_modded_nanogpt_style_files(tmp_path):
    """A file written the way llm.c / Modded-NanoGPT write them is read as is."""
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (20240520, 1, 4)
    p = tmp_path / "fineweb_train_000001.bin"
    p.write_bytes(header.tobytes() + np.array([50256, 1, 2, 3], dtype=np.uint16).tobytes())
    assert read_shard(p).tolist() == [50256, 1, 2, 3]
    assert shards.shard_files(tmp_path, "train") == [p]


# ---------------------------------------------------------------- the sharder
def test_make_shards_layout_manifest_and_content(tmp_path, tok_dir, corpus_file):
    tok = BPETokenizer.load(tok_dir)
    out = tmp_path / "s"
    m = make_shards(spec(corpus_file), tok_dir, out, shard_size=2000, num_shards=3, seed=5, workers=1,
                    corpus_options=OPTS, progress=False)
    assert [s["file"] for s in m["shards"]] == ["val_000000.bin", "train_000001.bin", "train_000002.bin",
                                                "train_000003.bin"]
    assert [s["split"] for s in m["shards"]] == ["val", "train", "train", "train"]
    assert all(s["tokens"] == 2000 for s in m["shards"])
    assert m["complete"] and not m["exhausted"]
    assert m["tokenizer"]["name"] == "tiny300" and m["tokenizer"]["merges_hash"] == tok.merges_hash
    assert m["corpus"] == spec(corpus_file) and m["seed"] == 5 and m["dtype"] == "uint16"
    assert json.loads((out / "manifest.json").read_text()) == m
    # the shards, concatenated and decoded, are the corpus (shuffled with the seed), each doc after an eot
    from nbcore.corpus import iter_corpus

    docs = list(iter_corpus(spec(corpus_file), seed=5, shuffle_buffer=10_000, **OPTS))
    assert docs != list(iter_corpus(spec(corpus_file), **OPTS))  # the seed did shuffle
    stream = np.concatenate([read_shard(out / s["file"], tok.n_vocab) for s in m["shards"]])
    text = tok.decode(stream.tolist())
    assert text == "".join("<|endoftext|>" + d for d in docs)[:len(text)]
    assert stream[0] == tok.eot_id
    for s in m["shards"]:
        t = read_shard(out / s["file"])
        assert s["documents"] == int((t == tok.eot_id).sum())
        text_bytes = tok.decode_bytes([i for i in t.tolist() if i != tok.eot_id])
        assert s["bytes"] == len(text_bytes)
    assert m["splits"]["val"]["tokens"] == 2000 and m["splits"]["train"]["tokens"] == 6000
    bpt = shards.bytes_per_token(m, "val")
    assert bpt == m["shards"][0]["bytes"] / 2000 and 1.0 < bpt < 8.0
    assert shards.shard_files(out, "train") == [out / f"train_{i:06d}.bin" for i in (1, 2, 3)]
    assert shards.load_manifest(out) == m


def test_workers_give_identical_shards(tmp_path, tok_dir, corpus_file):
    kw = dict(shard_size=1500, num_shards=3, seed=2, corpus_options=OPTS, progress=False)
    a = make_shards(spec(corpus_file), tok_dir, tmp_path / "one", workers=1, **kw)
    b = make_shards(spec(corpus_file), tok_dir, tmp_path / "two", workers=2, batch_chars=2000, **kw)
    for sa, sb in zip(a["shards"], b["shards"]):
        assert sa == sb
        assert (tmp_path / "one" / sa["file"]).read_bytes() == (tmp_path / "two" / sb["file"]).read_bytes()


def test_interrupted_run_resumes_to_identical_result(tmp_path, tok_dir, corpus_file, monkeypatch):
    kw = dict(shard_size=1200, num_shards=4, seed=9, corpus_options=OPTS, progress=False, workers=1)
    full = make_shards(spec(corpus_file), tok_dir, tmp_path / "full", **kw)

    real_write, calls = shards.write_shard, []

    def crash_on_third(path, tokens, vocab_size):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted while writing the third shard
        return real_write(path, tokens, vocab_size)

    monkeypatch.setattr(shards, "write_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        make_shards(spec(corpus_file), tok_dir, tmp_path / "cut", **kw)
    monkeypatch.setattr(shards, "write_shard", real_write)
    cut = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert not cut["complete"] and len(cut["shards"]) == 2
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["manifest.json", "train_000001.bin",
                                                                     "val_000000.bin"]
    again = make_shards(spec(corpus_file), tok_dir, tmp_path / "cut", batch_chars=3000, **kw)
    assert again["shards"] == full["shards"] and again["complete"]
    for s in full["shards"]:
        assert (tmp_path / "cut" / s["file"]).read_bytes() == (tmp_path / "full" / s["file"]).read_bytes()
    # a damaged shard is rebuilt, not trusted
    (tmp_path / "cut" / "train_000002.bin").write_bytes(b"junk")
    again["complete"] = False
    (tmp_path / "cut" / "manifest.json").write_text(json.dumps(again))
    make_shards(spec(corpus_file), tok_dir, tmp_path / "cut", **kw)
    assert (tmp_path / "cut" / "train_000002.bin").read_bytes() == (tmp_path / "full" / "train_000002.bin").read_bytes()
    # asking for more shards extends the folder with what an uninterrupted longer run makes
    more = make_shards(spec(corpus_file), tok_dir, tmp_path / "cut", **{**kw, "num_shards": 6})
    longer = make_shards(spec(corpus_file), tok_dir, tmp_path / "long", **{**kw, "num_shards": 6})
    assert more["shards"] == longer["shards"]


def test_other_parameters_in_same_folder_are_refused(tmp_path, tok_dir, corpus_file):
    kw = dict(shard_size=1000, num_shards=1, corpus_options=OPTS, progress=False, workers=1)
    make_shards(spec(corpus_file), tok_dir, tmp_path / "s", seed=1, **kw)
    before = (tmp_path / "s" / "train_000001.bin").read_bytes()
    with pytest.raises(ValueError, match=r"other parameters \(seed: 1 there, 2 now\)"):
        make_shards(spec(corpus_file), tok_dir, tmp_path / "s", seed=2, **kw)
    assert (tmp_path / "s" / "train_000001.bin").read_bytes() == before


def test_val_fraction_holds_out_the_end_of_the_text(tmp_path, tok_dir, corpus_file):
    tok = BPETokenizer.load(tok_dir)
    m = make_shards(spec(corpus_file), tok_dir, tmp_path / "s", shard_size=100_000, num_shards=2, seed=0,
                    val_fraction=0.1, corpus_options={"split": "file"}, workers=1, progress=False)
    text = corpus_file.read_text(encoding="utf-8")
    cut = len(text) - round(len(text) * 0.1)
    val = tok.decode(read_shard(tmp_path / "s" / "val_000000.bin").tolist())
    assert val == "<|endoftext|>" + text[cut:]
    train = tok.decode(read_shard(tmp_path / "s" / "train_000001.bin").tolist())
    assert train == "<|endoftext|>" + text[:cut]
    assert m["exhausted"]  # the corpus ran out before 2 shards of 100k tokens
    assert [s["file"] for s in m["shards"]] == ["val_000000.bin", "train_000001.bin"]


def test_corpus_too_small_for_train_is_a_clear_error(tmp_path, tok_dir, corpus_file):
    with pytest.raises(ValueError, match="nothing is left for training"):
        make_shards(spec(corpus_file), tok_dir, tmp_path / "s", shard_size=10_000_000, num_shards=1,
                    corpus_options=OPTS, workers=1, progress=False)
    with pytest.raises(ValueError, match="val_fraction"):
        make_shards(spec(corpus_file), tok_dir, tmp_path / "t", shard_size=100, num_shards=1, val_fraction=1.5)


def test_manifest_and_tokenizer_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match="make the shards first"):
        shards.load_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="no train shards"):
        shards.shard_files(tmp_path, "train")
    m = {"tokenizer": {"name": "a", "merges_hash": "abc"}}
    shards.check_tokenizer(m, "abc")
    with pytest.raises(ShardError, match="made with tokenizer 'a'"):
        shards.check_tokenizer(m, "def")


def test_endless_stream_is_read_only_as_far_as_needed(tmp_path, tok_dir, monkeypatch):
    """FineWeb never ends: the sharder stops reading once its shards are full (2 workers)."""
    from nbcore import corpus

    taken = []

    def endless(spec, **kw):
        def gen():
            i = 0
            while True:
                taken.append(i)
                yield make_text(i, 1)[0]
                i += 1
        return gen()

    monkeypatch.setattr(corpus, "iter_corpus", endless)
    m = make_shards("fineweb:10Bedu", tok_dir, tmp_path / "s", shard_size=500, num_shards=2, workers=2,
                    batch_chars=300, progress=False)
    assert [s["tokens"] for s in m["shards"]] == [500, 500, 500] and not m["exhausted"]
    used = m["shards"][-1]["end"][0] + 1
    assert used <= len(taken) < used + 40  # a few batches in flight, not the whole stream


def test_token_stream_order_with_pool_and_main_sharing_the_work(tok_dir):
    """3 processes (2 in the pool, this one encoding when they are busy and taking the last
    waiting batches itself) give the same batches, in order, as 1; a batch holding the eot
    text travels as a list and still comes out right."""
    docs = [f"document {i}: " + "word " * (i % 17) for i in range(400)]
    docs[123] = "a literal <|endoftext|> inside"
    one = list(shards._token_stream(iter(docs), str(tok_dir), 1, batch_chars=200))
    three = list(shards._token_stream(iter(docs), str(tok_dir), 3, batch_chars=200))
    assert len(one) == len(three) > 30
    for (ta, la), (tb, lb) in zip(one, three):
        assert ta.tolist() == tb.tolist() and la.tolist() == lb.tolist()
    assert sum(len(la) for _, la in one) == len(docs)


def test_batch_encoding_equals_encoding_each_document(tok_dir):
    """The one-call fast path gives [eot] + encode_ordinary(doc) per document, and the
    documents it cannot take (the eot text inside, lone surrogates) go the slow way, same result."""
    tok = BPETokenizer.load(tok_dir)
    shards._worker_init(str(tok_dir))
    plain = ["  leading spaces", "trailing spaces   ", "", "\n\nnewlines\n\n", "emoji 🙂 and 東京 42 1999", "x"]
    tricky = plain + ["a literal <|endoftext|> inside", "lone \ud800 surrogate"]
    for docs in (plain, plain + ["lone \ud800 surrogate"], tricky):
        toks, lengths = _encode_batch_checked(docs)
        want = [t for d in docs for t in [tok.eot_id] + tok.encode_ordinary(d)]
        assert toks.tolist() == want
        assert lengths.tolist() == [1 + len(tok.encode_ordinary(d)) for d in docs]


def _encode_batch_checked(docs):
    toks, lengths = shards._encode_batch(docs)
    assert toks.dtype == np.uint16 and lengths.sum() == toks.size
    return toks, lengths


def test_tiktoken_named_tokenizer(tmp_path, corpus_file, monkeypatch):
    """'tiktoken:<name>' shards with a tiktoken encoding (here a byte-level one built locally)."""
    import tiktoken

    from nbcore.tokenizer import GPT4_PATTERN

    byte_level = tiktoken.Encoding("bytes", pat_str=GPT4_PATTERN, mergeable_ranks={bytes([i]): i for i in range(256)},
                                   special_tokens={"<|endoftext|>": 256})
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: byte_level)
    m = make_shards(spec(corpus_file), "tiktoken:bytes", tmp_path / "s", shard_size=1000, num_shards=1, workers=1,
                    corpus_options=OPTS, progress=False)
    assert m["tokenizer"]["name"] == "tiktoken:bytes" and m["tokenizer"]["eot_id"] == 256
    val = read_shard(tmp_path / "s" / "val_000000.bin")
    assert m["shards"][0]["bytes"] == int((val != 256).sum())  # one byte per token

"""Corpora: built-in, local files, FineWeb (through `datasets`, on local data), val splits, shuffling."""
import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nbcore import corpus
from nbcore.corpus import CorpusUnavailable, iter_corpus


@pytest.fixture
def files(tmp_path):
    (tmp_path / "a.txt").write_text("First doc.\n\nSecond doc,\nline two.\n\n\n\nThird.", encoding="utf-8")
    (tmp_path / "b.txt").write_text("Bee file.", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": t, "n": i}) for i, t in
                                                enumerate(["j one", "j two", "j three"])) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"content": ["p one", "", "p two"]}), tmp_path / "d.parquet")
    return tmp_path


# ---------------------------------------------------------------- local files
def test_txt_one_document_per_file_or_blank_lines(files):
    assert list(iter_corpus(f"local:{files}/*.txt")) == [
        "First doc.\n\nSecond doc,\nline two.\n\n\n\nThird.", "Bee file."]
    assert list(iter_corpus(f"local:{files}/a.txt", split="blank_lines")) == [
        "First doc.", "Second doc,\nline two.", "Third."]
    with pytest.raises(ValueError, match="blank_lines"):
        list(iter_corpus(f"local:{files}/a.txt", split="paragraphs"))


def test_jsonl_and_parquet(files):
    assert list(iter_corpus(f"local:{files}/c.jsonl")) == ["j one", "j two", "j three"]
    assert list(iter_corpus(f"local:{files}/d.parquet", text_field="content")) == ["p one", "p two"]
    with pytest.raises(ValueError, match=r"no column 'text' \(columns: \['content'\]\)"):
        list(iter_corpus(f"local:{files}/d.parquet"))
    with pytest.raises(ValueError, match=r"c\.jsonl:1: no field 'body'"):
        list(iter_corpus(f"local:{files}/c.jsonl", text_field="body"))
    (files / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        list(iter_corpus(f"local:{files}/bad.jsonl"))


def test_bad_local_specs_fail_at_once(files):
    with pytest.raises(FileNotFoundError, match="no file matches"):
        iter_corpus(f"local:{files}/nothing*.txt")  # at the call, not at the first next()
    (files / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="don't know how to read"):
        list(iter_corpus(f"local:{files}/x.csv"))
    with pytest.raises(ValueError, match="unknown corpus 'webtext'"):
        iter_corpus("webtext")


def test_take_chars(files):
    docs = ["abcd", "efgh", "ij"]
    assert list(corpus.take_chars(docs, 6)) == ["abcd", "ef"]
    assert list(corpus.take_chars(docs, 100)) == docs


# ---------------------------------------------------------------- val split and order
def test_val_fraction_cuts_the_last_characters(files):
    spec = f"local:{files}/*.txt"
    whole = "".join(iter_corpus(spec))
    train = list(iter_corpus(spec, val_fraction=0.25, part="train"))
    val = list(iter_corpus(spec, val_fraction=0.25, part="val"))
    assert "".join(train) + "".join(val) == whole
    assert len("".join(val)) == round(len(whole) * 0.25)
    assert val[-1] == "Bee file." and train[0].startswith("First doc.")
    with pytest.raises(ValueError, match="needs val_fraction"):
        iter_corpus(spec, part="val")
    with pytest.raises(ValueError, match="part='train' or part='val'"):
        iter_corpus(spec, val_fraction=0.1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        list(iter_corpus(spec, val_fraction=1.0, part="val"))


def test_shuffle_is_seeded_and_keeps_every_document():
    docs = [f"d{i}" for i in range(100)]
    a = list(corpus.shuffled(docs, seed=1, buffer_size=10))
    assert sorted(a) == sorted(docs) and a != docs
    assert a == list(corpus.shuffled(docs, seed=1, buffer_size=10))
    assert a != list(corpus.shuffled(docs, seed=2, buffer_size=10))
    assert list(corpus.shuffled(docs, seed=1, buffer_size=0)) == docs


def test_local_files_shuffle_after_the_split(files):
    spec = f"local:{files}/a.txt"
    plain = list(iter_corpus(spec, split="blank_lines"))
    mixed = list(iter_corpus(spec, split="blank_lines", seed=3, shuffle_buffer=100))
    assert sorted(mixed) == sorted(plain)


# ---------------------------------------------------------------- built-in
def test_builtin_is_deterministic_and_big_enough(tmp_path):
    info = corpus.builtin_info()
    assert info["bytes"] >= corpus.BUILTIN_MIN_BYTES
    assert [s["source"] for s in info["sources"]][:2] == ["pydoc", "stdlib"]
    again = corpus.build_builtin_corpus(tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == corpus.builtin_corpus_path().read_bytes()
    assert again["documents"] == info["documents"]
    first = next(iter_corpus("builtin"))
    assert isinstance(first, str) and first


# ---------------------------------------------------------------- FineWeb
@pytest.fixture
def fake_fineweb(tmp_path, monkeypatch):
    """Two parquet files laid out like FineWeb's (text, id, url, ...)."""
    import datasets

    # datasets waits 5 s after streaming several files (an Arrow thread workaround); not needed here
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    docs = [f"Web page {i}. " + "lorem ipsum " * (i % 7) for i in range(60)]
    for k in range(2):
        part = docs[k * 30:(k + 1) * 30]
        pq.write_table(pa.table({"text": part, "id": [f"<urn:{k}:{i}>" for i in range(30)],
                                 "url": ["https://example.org"] * 30}), tmp_path / f"{k:03d}_00000.parquet")
    return tmp_path, docs


def test_fineweb_streams_through_datasets_shuffled_by_seed(fake_fineweb):
    path, docs = fake_fineweb
    data = str(path / "*.parquet")
    a = list(iter_corpus("fineweb:10Bedu", data_files=data, seed=1, shuffle_buffer=16))
    assert sorted(a) == sorted(docs) and a != docs
    assert a == list(iter_corpus("fineweb:10Bedu", data_files=data, seed=1, shuffle_buffer=16))
    assert a != list(iter_corpus("fineweb:10Bedu", data_files=data, seed=2, shuffle_buffer=16))
    assert list(iter_corpus("fineweb:100B", data_files=data, shuffle_buffer=0)) == docs


def test_fineweb_versions_map_to_hub_configs():
    assert corpus.FINEWEB_VERSIONS["10Bedu"] == ("HuggingFaceFW/fineweb-edu", "sample-10BT")
    assert corpus.FINEWEB_VERSIONS["350B"] == ("HuggingFaceFW/fineweb", "sample-350BT")
    assert set(corpus.FINEWEB_VERSIONS) == {"10B", "100B", "350B", "10Bedu", "100Bedu", "350Bedu"}
    with pytest.raises(ValueError, match="unknown FineWeb version '20B'"):
        iter_corpus("fineweb:20B")
    with pytest.raises(ValueError, match="val_fraction/part do not apply"):
        iter_corpus("fineweb:10Bedu", val_fraction=0.1, part="train")


def test_fineweb_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    t = time.time()
    with pytest.raises(CorpusUnavailable, match=r"cannot reach the Hugging Face hub.*local:.*builtin"):
        iter_corpus("fineweb:10Bedu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CorpusUnavailable, match="HF_HUB_OFFLINE is set"):
        iter_corpus("fineweb:10B")
    assert time.time() - t < 10


def test_fineweb_through_the_sharder(tmp_path, fake_fineweb):
    """make_shards takes FineWeb's path end to end (corpus_options hands it the local files)."""
    from nbcore.shards import make_shards, read_shard
    from nbcore.tokenizer import train_bpe

    path, docs = fake_fineweb
    tok = train_bpe(docs, vocab_size=280, workers=1)
    tok.save(tmp_path / "tok")
    m = make_shards("fineweb:10Bedu", tmp_path / "tok", tmp_path / "s", shard_size=200, num_shards=2, seed=0,
                    workers=1, corpus_options={"data_files": str(path / "*.parquet")}, progress=False)
    assert [s["tokens"] for s in m["shards"]] == [200, 200, 200]
    text = tok.decode(read_shard(tmp_path / "s" / "val_000000.bin").tolist())
    assert text.startswith("<|endoftext|>Web page ")
    assert os.path.exists(tmp_path / "s" / "manifest.json")


def test_take_chars_leaves_the_next_document_in_a_shared_iterator():
    docs = iter(["abcd", "efgh", "ijkl"])
    assert list(corpus.take_chars(docs, 6)) == ["abcd", "ef"]
    assert next(docs) == "ijkl"  # "efgh" was cut, nothing further was pulled
    assert list(corpus.take_chars(iter(["abc"]), 0)) == []


def test_text_that_is_not_utf8_is_refused_with_the_offset_or_read_with_an_encoding(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Caf\u00e9 au lait.\n\nNa\u00efve.".encode("latin-1"))  # 0xe9 at byte 3
    with pytest.raises(ValueError, match=r"not utf-8 text: byte 0xe9 at byte offset 3 .*encoding='latin-1'"):
        list(iter_corpus(f"local:{latin}"))
    assert list(iter_corpus(f"local:{latin}", split="blank_lines", encoding="latin-1")) == ["Café au lait.", "Naïve."]
    binary = tmp_path / "model.txt"
    binary.write_bytes(b"PK\x03\x04" + bytes(range(256)))  # a binary renamed .txt
    with pytest.raises(ValueError, match="byte offset"):
        list(iter_corpus(f"local:{binary}"))
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match="byte 0xe9 at byte offset 28"):
        list(iter_corpus(f"local:{rows}"))


def test_an_empty_file_is_reported_as_empty(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        iter_corpus(f"local:{tmp_path}/empty.txt")
    (tmp_path / "full.txt").write_text("Some text.")
    with pytest.warns(UserWarning, match="empty.txt is empty"):
        assert list(iter_corpus(f"local:{tmp_path}/*.txt")) == ["Some text."]

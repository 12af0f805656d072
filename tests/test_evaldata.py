"""Evaluation sets: parsing, the checked download, caching, and the offline error."""
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nbcore import evaldata
from nbcore.evaldata import DatasetUnavailable, MultipleChoiceItem

ROOF = {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
        "ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain", "label": 3,
        "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                    "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
        "source_id": "activitynet~v_-JhWjGDPHMY"}
WIKIHOW = {"ind": 7, "activity_label": "Food and Entertaining", "ctx_a": "[header] How to make tea [title] Boil water.",
           "ctx_b": "", "ctx": "[header] How to make tea [title] Boil water. ", "split": "val", "split_type": "zeroshot",
           "label": "0", "endings": ["[step] Pour it  over the leaves.", "Eat the kettle."], "source_id": "wikihow~1"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_hellaswag_harness_rendering():
    item = evaldata.hellaswag_item(ROOF)
    assert item.context == "Roof shingle removal: A man is sitting on a roof. He"
    assert item.endings[3] == " starts pulling up roofing on a roof."
    assert item.label == 3 and item.id == "24"
    wiki = evaldata.hellaswag_item(WIKIHOW)
    # ' [title]' -> '. ', other [brackets] removed, double spaces collapsed (lm-evaluation-harness)
    assert wiki.context == "Food and Entertaining: How to make tea. Boil water."
    assert wiki.endings == ["  Pour it over the leaves.", " Eat the kettle."]
    assert wiki.label == 0


def test_hellaswag_raw_rendering_like_the_original_lab():
    item = evaldata.hellaswag_item(ROOF, style="raw")
    assert item.context == "A man is sitting on a roof. he"
    assert item.endings[0] == " is using wrap to wrap a pair of skis."
    with pytest.raises(ValueError, match="style="):
        evaldata.hellaswag_item(ROOF, style="fancy")


def test_hellaswag_from_local_path(tmp_path):
    items = evaldata.load_hellaswag(path=write_jsonl(tmp_path / "h.jsonl", [ROOF, WIKIHOW]))
    assert [i.label for i in items] == [3, 0] and all(i.source == "hellaswag/validation" for i in items)
    bad = write_jsonl(tmp_path / "bad.jsonl", [ROOF, {"ctx": "no endings"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not a HellaSwag item"):
        evaldata.load_hellaswag(path=bad)


@pytest.fixture
def served_hellaswag(tmp_path, monkeypatch):
    """A small HellaSwag file 'online' (a file:// URL) with its size, hash and count pinned."""
    src = write_jsonl(tmp_path / "served.jsonl", [ROOF, WIKIHOW, ROOF])
    data = src.read_bytes()
    monkeypatch.setitem(evaldata.HELLASWAG_URLS, "validation", src.as_uri())
    monkeypatch.setitem(evaldata.HELLASWAG_FILES, "validation", (len(data), hashlib.sha256(data).hexdigest(), 3))
    return src


def test_hellaswag_download_is_checked_and_cached(tmp_path, served_hellaswag):
    cache = tmp_path / "cache"
    items = evaldata.load_hellaswag(cache_dir=cache)
    assert len(items) == 3
    cached = cache / "hellaswag" / "served.jsonl"
    assert cached.read_bytes() == served_hellaswag.read_bytes()
    served_hellaswag.unlink()  # "offline" now: the cached copy is used
    assert len(evaldata.load_hellaswag(cache_dir=cache)) == 3
    cached.write_bytes(cached.read_bytes().replace(b"roof", b"ROOF"))  # same size, other content
    with pytest.raises(ValueError, match="sha256 .* expected .*delete it"):
        evaldata.load_hellaswag(cache_dir=cache)


def test_hellaswag_download_of_wrong_file_leaves_nothing(tmp_path, served_hellaswag, monkeypatch):
    size, sha, n = evaldata.HELLASWAG_FILES["validation"]
    monkeypatch.setitem(evaldata.HELLASWAG_FILES, "validation", (size + 1, sha, n))
    with pytest.raises(ValueError, match="bytes, expected"):
        evaldata.load_hellaswag(cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c" / "hellaswag").iterdir())


def test_hellaswag_offline_is_dataset_unavailable(tmp_path, monkeypatch):
    monkeypatch.setitem(evaldata.HELLASWAG_URLS, "validation", "http://127.0.0.1:9/hellaswag_val.jsonl")
    with pytest.raises(DatasetUnavailable, match="could not download"):
        evaldata.load_hellaswag(cache_dir=tmp_path)
    with pytest.raises(ValueError, match="test split has no labels"):
        evaldata.load_hellaswag(split="test")


def test_pinned_hellaswag_record():
    size, sha, n = evaldata.HELLASWAG_FILES["validation"]
    assert (size, n) == (12_246_618, 10_042) and len(sha) == 64


ARC_ROWS = [
    {"id": "Mercury_1", "question": "Which is a gas?", "answerKey": "B",
     "choices": {"text": ["rock", "steam", "wood"], "label": ["A", "B", "C"]}},
    {"id": "NYSED_2", "question": "Pick two.", "answerKey": "2",
     "choices": {"text": ["one", "two", "three", "four"], "label": ["1", "2", "3", "4"]}},
]
PIQA_ROWS = [{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0},
             {"goal": "Dry hair", "sol1": "use water", "sol2": "use a towel", "label": 1}]


def test_arc_easy_through_datasets_from_local_file(tmp_path):
    items = evaldata.load_arc_easy(data_files=write_jsonl(tmp_path / "arc.jsonl", ARC_ROWS), cache_dir=tmp_path)
    assert items[0] == MultipleChoiceItem(context="Question: Which is a gas?\nAnswer:",
                                          endings=[" rock", " steam", " wood"], label=1, id="Mercury_1",
                                          source="arc_easy/test")
    assert items[1].label == 1 and len(items[1].endings) == 4
    assert not (tmp_path / "arc_easy_test.jsonl").exists()  # local files are not cached


def test_piqa_through_datasets_from_parquet(tmp_path):
    pq.write_table(pa.Table.from_pylist(PIQA_ROWS), tmp_path / "piqa.parquet")
    items = evaldata.load_piqa(data_files=tmp_path / "piqa.parquet")
    assert [i.label for i in items] == [0, 1]
    assert items[1].context == "Question: Dry hair\nAnswer:" and items[1].endings == [" use water", " use a towel"]
    write_jsonl(tmp_path / "t.jsonl", [{**PIQA_ROWS[0], "label": -1}])
    with pytest.raises(ValueError, match="no answers"):
        evaldata.load_piqa(data_files=tmp_path / "t.jsonl")


def test_cached_items_are_used_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailable, match="HF_HUB_OFFLINE"):
        evaldata.load_arc_easy(cache_dir=tmp_path)
    with pytest.raises(DatasetUnavailable):
        evaldata.load_piqa(cache_dir=tmp_path)
    item = evaldata.arc_item(ARC_ROWS[0], "arc_easy/test")
    (tmp_path / "arc_easy_test.jsonl").write_text(json.dumps(evaldata.asdict(item)) + "\n")
    assert evaldata.load_arc_easy(cache_dir=tmp_path) == [item]


def test_item_checks():
    with pytest.raises(ValueError, match="label 2 is not an index"):
        MultipleChoiceItem("c", [" a", " b"], 2)
    with pytest.raises(ValueError, match="answerKey 'E'"):
        evaldata.arc_item({**ARC_ROWS[0], "answerKey": "E"})
    with pytest.raises(ValueError, match="split="):
        evaldata.load_arc_easy(split="dev")

"""02_data runs headless through papermill with tiny parameters and leaves usable shards."""
import json
import random

import pytest

from nbcore import notebooks, shards
from nbcore.params import ParameterError
from nbcore.tokenizer import train_bpe

WORDS = ("the a of to and in is it that for on with as was at by river stone light window garden morning "
         "letter music winter number 42 7 1999").split()


def documents(seed, n):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 120))).capitalize() + "." for _ in range(n)]


@pytest.mark.slow
def test_notebook_02_makes_shards_headless(tmp_path):
    tok_dir = tmp_path / "tok"
    train_bpe(documents(0, 200), vocab_size=300, name="tiny300", workers=1).save(tok_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(documents(1, 300)), encoding="utf-8")
    out = tmp_path / "shards"
    executed = notebooks.execute("02_data", tmp_path / "02_data.ipynb", parameters={
        "corpus": f"local:{corpus}", "tokenizer": str(tok_dir), "out_dir": str(out), "shard_size": 3000,
        "num_shards": 3, "val_fraction": 0.1, "workers": 2, "txt_split": "blank_lines", "demo_seq_len": 8})
    m = shards.load_manifest(out)
    assert [s["file"] for s in m["shards"]] == ["val_000000.bin", "train_000001.bin", "train_000002.bin",
                                                "train_000003.bin"]
    assert m["tokenizer"]["name"] == "tiny300" and m["complete"]
    assert all(shards.read_shard(out / s["file"], 301).size == s["tokens"] for s in m["shards"])
    nb = json.loads(executed.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert "x: (B, T) = (2, 8)" in text and "magic 20240520, version 1" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # the histogram and the batch picture


def test_notebook_02_refuses_unknown_parameter(tmp_path):
    with pytest.raises(ParameterError, match="Did you mean 'shard_size'"):
        notebooks.execute("02_data", tmp_path / "x.ipynb", parameters={"shard_sise": 10})


def test_notebook_02_is_committed_without_outputs():
    assert notebooks.has_outputs(notebooks.notebook_path("02_data")) == []
    assert set(notebooks.declared_parameters("02_data")) >= {"corpus", "tokenizer", "out_dir", "shard_size",
                                                              "num_shards", "data_seed", "val_fraction", "workers"}

"""The course's plumbing (nbcore.course) and the ablation (nbcore.ablation) on tiny local shards."""
import json

import pytest

from nbcore import ablation, compare, course, fileio, shards
from tests.test_evaluate import make_tiny_shards, make_tokenizer, write_texts


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("course"), 6, 80, shard_size=6000, val_tokens=2000)


SMALL = {"num_layers": 2, "model_dim": 32, "seq_len": 32, "batch_size": 4, "val_tokens": 512}


def test_train_for_budget_records_a_run_06_can_read(tiny_shards, tmp_path):
    rec = tmp_path / "baseline_s0"
    rec.mkdir()
    r = ablation.train_for_budget(tiny_shards, 4, seed=0, val_every=2, record=rec, name="baseline", **SMALL)
    assert [s for s, _ in r["curve"]] == [0, 2, 4]
    assert r["curve"][-1][1] == r["val_bpb"] and r["val_bpb"] < r["curve"][0][1]  # it learns
    run = compare.load_run(rec)
    assert run.name == "baseline_s0" and run.get("seed") == 0 and run.get("num_steps") == 4
    x, y = run.curve("val_bpb", "step")
    assert x.tolist() == [0, 2, 4] and y[-1] == pytest.approx(r["val_bpb"])
    again = ablation.train_for_budget(tiny_shards, 4, seed=0, val_every=2, **SMALL)
    assert again["curve"] == r["curve"]  # same seed, same switches: the same numbers (CPU)


def test_run_ablation_table_and_records(tiny_shards, tmp_path):
    res = ablation.run_ablation(tiny_shards, 2, seeds=(0, 1), variants=["adamw", "no-softcap"],
                                record_dir=tmp_path / "abl", progress=None, **SMALL)
    assert [(r["name"], r["seed"]) for r in res] == [("baseline", 0), ("baseline", 1), ("adamw", 0), ("adamw", 1),
                                                     ("no-softcap", 0), ("no-softcap", 1)]
    rows = ablation.results_table(res)
    assert [r["variant"] for r in rows] == ["baseline", "adamw", "no-softcap"]
    base = sum(r["val_bpb"] for r in res[:2]) / 2
    assert rows[0]["diff"] == 0 and rows[1]["diff"] == pytest.approx(
        sum(r["val_bpb"] for r in res[2:4]) / 2 - base)
    assert rows[1]["val_bpb"] != rows[0]["val_bpb"]  # the switch changed something
    text = ablation.format_table(rows)
    assert text.count("\n") == 4 and "| adamw | Muon: hidden matrices trained by AdamW |" in text
    saved = fileio.read_json(tmp_path / "abl" / "results.json")
    assert saved["steps"] == 2 and len(saved["runs"]) == 6
    assert course.ablation_pair(tmp_path / "abl") == ("baseline", "adamw")
    with pytest.raises(ValueError, match="unknown ablation variants"):
        ablation.run_ablation(tiny_shards, 1, variants=["no-such-trick"])


def _fake_run(d, name, checkpoint=True):
    d.mkdir(parents=True)
    (d / "metrics.csv").write_text("step,val_loss\n0,5.0\n")
    fileio.write_json(d / "summary.json", {"parameters": {"name": name}})
    if checkpoint:
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "step_000001.pt").write_bytes(b"x")
    return d


def test_newest_run_and_newest_runs(runs_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="train one with 04_train"):
        course.newest_run()
    a = _fake_run(runs_dir / "20260101_000000_base", "base")
    _fake_run(runs_dir / "20260102_000000_base_s1", "base", checkpoint=False)
    assert course.newest_run() == a
    # one configuration only, no ablation: every run
    assert course.newest_runs() == compare.find_run_dirs()
    # one configuration + an ablation record: the ablation's baseline and first variant, baseline first
    rec = runs_dir / "ablation_20260103_000000"
    for n in ("adamw_s0", "adamw_s1", "baseline_s0", "baseline_s1", "gelu_s0"):
        _fake_run(rec / n, n, checkpoint=False)
    fileio.write_json(rec / "results.json", {"variants": [{"name": "baseline"}, {"name": "adamw"}, {"name": "gelu"}]})
    assert [p.name for p in course.newest_runs()] == ["baseline_s0", "baseline_s1", "adamw_s0", "adamw_s1"]
    # two configurations of real runs: those, the ablation is not used
    _fake_run(runs_dir / "20260104_000000_other", "other")
    assert len(course.newest_runs()) == 3


def test_default_shards_are_made_with_the_chapters_defaults(runs_dir, tmp_path, monkeypatch):
    write_texts(tmp_path / "text", 3, 40, prefix="d")
    defaults = {
        "01_tokenizer": {"corpus": f"local:{tmp_path / 'text' / '*.txt'}", "sample_chars": 20000, "vocab_size": 300,
                         "pattern": "gpt4", "name": "tok-x", "workers": 1},
        "02_data": {"corpus": f"local:{tmp_path / 'text' / '*.txt'}", "tokenizer": "tok-x", "name": "shards-x",
                    "shard_size": 3000, "num_shards": 1, "seed": 0, "workers": 1, "val_tokens": 1000,
                    "shuffle_buffer": 10},
    }
    monkeypatch.setattr(course, "_defaults", lambda chapter: defaults[chapter])
    assert course.default_shards(build=False) == runs_dir / "shards" / "shards-x"
    monkeypatch.setenv("RANK", "1")  # under torchrun, a rank other than 0 never builds
    with pytest.raises(FileNotFoundError, match="run 02_data first"):
        course.default_shards()
    monkeypatch.delenv("RANK")
    out = course.default_shards()
    m = shards.load_manifest(out)
    assert out == runs_dir / "shards" / "shards-x" and m["complete"]
    assert (runs_dir / "tokenizers" / "tok-x" / "tokenizer.json").exists()
    assert m["tokenizer"]["n_vocab"] == 301
    assert course.default_shards() == out  # complete: not rebuilt


def test_the_chapters_defaults_name_the_chain():
    """04's default shards are 02's output and 02's default tokenizer is 01's output."""
    from nbcore import notebooks

    p01, p02 = notebooks.declared_parameters("01_tokenizer"), notebooks.declared_parameters("02_data")
    assert p02["tokenizer"] == p01["name"]
    assert notebooks.declared_parameters("04_train")["data_dir"] == ""
    assert notebooks.declared_parameters("05_eval")["run_dir"] == ""


def test_show_environment(capsys):
    env = course.show_environment()
    out = capsys.readouterr().out
    assert f"torch {env['torch']}" in out and "device: cpu" in out and f"Python {env['python']}" in out
    assert json.dumps(env)  # plain values


def test_each_prompt_draws_its_own_random_numbers():
    """Two prompts with the same text but different ids sample differently (one seed for all made them equal)."""
    from nbcore import evaluate
    from tests.test_evaluate import tiny_model

    tok = make_tokenizer()
    model = tiny_model("gpt", tok.n_vocab, eot_id=tok.eot_id)
    prompts = [{"id": "a", "prompt": "The cat"}, {"id": "b", "prompt": "The cat"}]
    out = evaluate.generate_samples(model, tok, prompts, max_new_tokens=12, temperature=1.0, top_k=0, seed=7)
    assert out[0]["output"] != out[1]["output"]
    assert evaluate.prompt_seed(7, "a") == evaluate.prompt_seed(7, "a") != evaluate.prompt_seed(7, "b")
    # the seed stays reproducible: one prompt alone gives the same output
    assert evaluate.generate_samples(model, tok, prompts[1:], max_new_tokens=12, temperature=1.0, top_k=0,
                                     seed=7)[0] == out[1]


def test_a_skipped_benchmark_reads_as_one_line():
    from nbcore import evaluate

    reason = "DatasetUnavailable: hellaswag: could not download https://example.org/x.jsonl: <urlopen error [Errno -3]>"
    table = evaluate.benchmarks_table({"hellaswag": {"skipped": reason}})
    assert "http" not in table and "urlopen" not in table
    assert "no data: it could not be downloaded (offline?)" in table and "benchmark_files={'hellaswag': PATH}" in table

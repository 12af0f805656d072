"""05_eval runs headless through papermill on a tiny run folder and writes eval.json and generations.jsonl."""
import importlib.util
import json

import nbformat
import pytest

from nbcore import evaluate, notebooks, shards
from tests.test_evaluate import make_run, make_tiny_shards, write_benchmark_files

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder as 04_train leaves it (tiny tokenizer, shards, a checkpoint) + benchmark files."""
    root = tmp_path_factory.mktemp("nb05")
    make_tiny_shards(root, 6, 60, shard_size=4000, val_tokens=3000)
    make_run(root / "run", root / "tok", arch="gpt", seq_len=64, step=6, data_dir=str(root / "shards"))
    files = write_benchmark_files(root / "bench", n=6)
    prompts = root / "prompts.json"
    prompts.write_text(json.dumps([{"id": "p1", "prompt": "The cat"}, {"id": "p2", "prompt": "A dog ran"}]))
    return {"root": root, "run": root / "run", "files": {k: str(v) for k, v in files.items()},
            "prompts": str(prompts)}


def _outputs(nb_path) -> str:
    nb = nbformat.read(nb_path, as_version=4)
    return "\n".join(o.get("text", "") + json.dumps(o.get("data", {})) for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))


def test_eval_notebook_writes_scores_and_generations(tiny_run, tmp_path):
    run = tiny_run["run"]
    params = {"run_dir": str(run), "device": "cpu", "benchmarks": ["hellaswag", "arc_easy", "piqa"],
              "benchmark_files": {"hellaswag": tiny_run["files"]["hellaswag"], "arc_easy": tiny_run["files"]["arc_easy"]},
              "max_items": 5, "mc_batch_size": 4, "val_tokens": 2048, "val_batch_size": 4,
              "prompts_file": tiny_run["prompts"], "max_new_tokens": 8, "temperature": 0.0, "check_items": 3,
              "export": True}
    lm_eval_ok = all(importlib.util.find_spec(m) for m in ("lm_eval", "transformers", "accelerate"))
    if lm_eval_ok:  # lm-evaluation-harness scores the export on the same local HellaSwag file
        params["lm_eval_tasks"] = {"hellaswag": tiny_run["files"]["hellaswag"]}
    out = notebooks.execute("05_eval", tmp_path / "05.ipynb", params)
    evals = json.loads((run / "eval.json").read_text())
    assert len(evals) == 1
    e = evals[0]
    assert e["checkpoint"] == "checkpoints/step_000006.pt" and e["step"] == 6
    assert e["val_tokens"] == 2048 and e["val_loss"] > 0
    manifest = shards.load_manifest(tiny_run["root"] / "shards")
    assert e["val_bpb"] == pytest.approx(evaluate.bits_per_byte(e["val_loss"], shards.bytes_per_token(manifest)))
    for name in ("hellaswag", "arc_easy"):
        b = e["benchmarks"][name]
        assert b["n"] == 5 and 0 <= b["acc"] <= 1 and b["acc_ci95"][0] <= b["acc"] <= b["acc_ci95"][1]
        assert b["acc_norm_unit"] == "char" and {"acc_bytes", "acc_per_token", "acc_per_token_ci95"} <= set(b)
    # PIQA has no local file and the hub is out of reach here: skipped with the reason, no crash
    assert set(e["benchmarks"]["piqa"]) == {"skipped"} and "DatasetUnavailable" in e["benchmarks"]["piqa"]["skipped"]
    gens = evaluate.read_generations(run / "generations.jsonl")
    assert [g["prompt_id"] for g in gens] == ["p1", "p2"]
    assert gens[0]["settings"] == {"temperature": 0.0, "top_k": 50, "seed": 1337, "max_new_tokens": 8,
                                   "checkpoint": "checkpoints/step_000006.pt"}
    assert (run / "generations_step_000006.jsonl").exists()
    assert (run / "export" / "step_000006" / "model.safetensors").exists()
    text = _outputs(out)
    assert "x: (B, T) = (4, 64)" in text and "val bpb" in text and "HellaSwag" in text
    assert "reloaded export gives the checkpoint's logits" in text
    assert "acc_norm (per char)" in text and "acc_per_token" in text and "/char" in text
    hf = run / "export" / "step_000006" / "hf"
    assert (hf / "tokenizer.json").exists() and (hf / "modeling_nbcore_gpt.py").exists()
    if importlib.util.find_spec("transformers"):
        assert "transformers loads hf/ (NbcoreGPTForCausalLM): same tokens" in text
    if lm_eval_ok:
        rec = json.loads((run / "lm_eval.json").read_text())[-1]["tasks"]["hellaswag"]
        assert rec["n"] == 5 and rec["agreement"]["same"] == {"acc": 5, "acc_norm": 5, "acc_bytes": 5}
        assert rec["acc_norm"] == e["benchmarks"]["hellaswag"]["acc_norm"]



def test_eval_notebook_under_torchrun_matches_one_process(tiny_run, tmp_path):
    """Two ranks (gloo), every rank executing the notebook as the launcher runs it: same scores."""
    from nbcore import launch

    run = tiny_run["run"]
    nb = notebooks.notebook_path("05_eval")
    params = {"checkpoint": str(run / "checkpoints" / "step_000006.pt"), "device": "cpu",
              "benchmarks": ["hellaswag"], "benchmark_files": {"hellaswag": tiny_run["files"]["hellaswag"]},
              "max_items": 5, "mc_batch_size": 4, "val_tokens": 2048, "val_batch_size": 2, "max_new_tokens": 0,
              "check_items": 0}
    before = len(evaluate.read_evals(run))
    launch.run_distributed(nb, tmp_path / "05_dist.ipynb", params, 2, tmp_path / "logs")
    evals = evaluate.read_evals(run)
    assert len(evals) == before + 1  # rank 0 alone wrote
    two = evals[-1]
    assert two["settings"]["world_size"] == 2 and two["val_tokens"] == 2048 and two["step"] == 6
    # the same numbers computed here in one process
    from nbcore.loader import val_batches

    one = evaluate.load_run(params["checkpoint"])
    val = evaluate.val_loss(one.model, val_batches(shards.shard_files(one.data_dir, "val"), 4, 64, max_tokens=2048))
    assert two["val_loss"] == pytest.approx(val["val_loss"], rel=1e-5)
    hs = evaluate.run_benchmark(one.model, one.tokenizer, "hellaswag", path=tiny_run["files"]["hellaswag"],
                                max_items=5, max_len=64)["summary"]
    assert {k: v for k, v in two["benchmarks"]["hellaswag"].items() if k != "seconds"} == \
        {k: v for k, v in hs.items() if k != "seconds"}

"""lm-evaluation-harness, run as it is (its `hf` model, its HellaSwag task code) on our exported model
and a local HellaSwag-format file, agrees with our scorer on every item: acc, acc_norm, acc_bytes.
Skips when lm_eval (the `lmeval` extra, with accelerate for its hf model) is not installed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nbcore import evaluate, export, lmeval
from tests.test_evaluate import make_run, make_tokenizer, write_benchmark_files

N_ITEMS = 24


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    for mod in ("lm_eval", "transformers", "accelerate"):
        pytest.importorskip(mod)
    old = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    try:
        root = tmp_path_factory.mktemp("lmeval")
        tok = make_tokenizer(root / "tok")
        model = make_run(root / "run", root / "tok", arch="gpt", step=3)  # seq_len 64: some rows get cut
        folder = export.export_checkpoint(root / "run")["hf"]
        files = write_benchmark_files(root / "bench", n=N_ITEMS, seed=1)
        ours = evaluate.run_benchmark(model, tok, "hellaswag", path=files["hellaswag"], max_len=model.seq_len + 1)
        tasks = lmeval.write_local_tasks({"hellaswag": files["hellaswag"]}, root / "tasks")
        theirs = lmeval.evaluate_export(folder, tasks, task_dir=root / "tasks", batch_size=8)["hellaswag"]
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"root": root, "ours": ours, "theirs": theirs, "tasks": tasks, "folder": folder}


def test_local_task_is_lm_evals_own_task_on_a_local_file(scored):
    cfg = yaml.safe_load((scored["root"] / "tasks" / "hellaswag_local.yaml").read_text())
    assert cfg["include"].endswith("hellaswag/hellaswag.yaml") and cfg["dataset_path"] == "json"
    assert list(cfg["dataset_kwargs"]["data_files"]) == ["validation"] and cfg["training_split"] is None
    assert [m["metric"] for m in cfg["metric_list"]] == ["acc", "acc_norm", "acc_bytes"]
    with pytest.raises(ValueError, match="knows no task"):
        lmeval.write_local_tasks({"no_such_task_xyz": scored["root"] / "tasks" / "hellaswag_local.yaml"},
                                 scored["root"] / "t2")


def test_lm_eval_and_our_scorer_agree_on_every_item(scored):
    ours, theirs = scored["ours"], scored["theirs"]
    assert len(theirs["items"]) == len(ours["results"]) == N_ITEMS
    for r, t in zip(ours["results"], theirs["items"]):
        assert t["target"] == r["label"]
        assert [-ll for ll in t["lls"]] == pytest.approx(r["sum_losses"], abs=1e-4)  # the same log-likelihoods
        assert (t["acc"], t["acc_norm"], t["acc_bytes"]) == (r["correct"], r["correct_norm"], r["correct_bytes"])
    s = ours["summary"]
    for key in ("acc", "acc_norm", "acc_bytes"):
        assert theirs["metrics"][key] == pytest.approx(s[key], abs=1e-12)
    agree = lmeval.agreement(ours["results"], theirs["items"])
    assert agree["same"] == {"acc": N_ITEMS, "acc_norm": N_ITEMS, "acc_bytes": N_ITEMS}
    # the old per-token rule is a different number on these items: the test tells the rules apart
    assert sum(r["pred_per_token"] != r["pred_norm"] for r in ours["results"]) > 0


def test_lm_eval_command_line_on_the_export_gives_our_numbers(scored):
    """What a researcher types, with no nbcore code in between: lm-eval's own command line on the
    exported folder and the local task file gives the acc, acc_norm and acc_bytes of our table."""
    out = scored["root"] / "cli"
    exe = Path(sys.executable).parent / "lm_eval"
    p = subprocess.run([str(exe), "--model", "hf", "--model_args",
                        f"pretrained={scored['folder']},trust_remote_code=True,dtype=float32",
                        "--tasks", "hellaswag_local", "--include_path", str(scored["root"] / "tasks"),
                        "--device", "cpu", "--batch_size", "8", "--output_path", str(out)],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    (results,) = out.rglob("results_*.json")
    got = json.loads(results.read_text())["results"]["hellaswag_local"]
    s = scored["ours"]["summary"]
    for key in ("acc", "acc_norm", "acc_bytes"):
        assert got[f"{key},none"] == pytest.approx(s[key], abs=1e-12), key
    assert "|hellaswag_local|" in p.stdout.replace(" ", "")  # lm-eval's own table on the terminal

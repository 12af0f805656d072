"""lm-evaluation-harness, run as it is (its `hf` model, its HellaSwag task code) on our exported model
and a local HellaSwag-format file, agrees with our scorer on every item: acc, acc_norm, acc_bytes.
Skips when lm_eval (the `lmeval` extra, with accelerate for its hf model) is not installed."""
import os

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
    return {"root": root, "ours": ours, "theirs": theirs, "tasks": tasks}


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

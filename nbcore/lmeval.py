"""lm-evaluation-harness as a second scorer of an exported model, on local data files.

    folder = export.export_checkpoint(run)["hf"]          # model + tokenizer, Hugging Face layout
    tasks = write_local_tasks({"hellaswag": "hellaswag_val.jsonl"}, "lm_eval_tasks/")
    res = evaluate_export(folder, tasks)                   # lm_eval's own HFLM and task code
    res["hellaswag"]["metrics"]  -> {'acc': ..., 'acc_norm': ..., 'acc_bytes': ...}
    res["hellaswag"]["items"]    -> per item: log-likelihoods of each ending and the picks

The same from a shell, with nothing of nbcore (the task folder holds plain YAML):

    lm_eval --model hf --model_args pretrained=FOLDER,trust_remote_code=True,dtype=float32 \\
            --tasks hellaswag_local --include_path lm_eval_tasks/

A local task is lm-eval's own task (`include:` of its YAML: the same prompt, choices, metrics and
preprocessing code) with the dataset swapped for a local file in the hub dataset's row format
(HellaSwag's original jsonl rows work too), read by `datasets`' json builder: no network.
Multiple-choice tasks also report acc_bytes. `agreement(ours, theirs)` compares our scorer's
item results (nbcore.evaluate.score_items) with lm-eval's item by item.

lm_eval is an optional extra (pip install -e '.[lmeval]'); this module imports it only inside
functions.
"""
from pathlib import Path

import yaml

from . import fileio

SUFFIX = "_local"


def _task_yaml(task: str) -> Path:
    """The YAML file of lm-eval's task `task`: a file whose `task:` key is that name (read as text;
    building lm-eval's whole task index takes a minute)."""
    import re

    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    key = re.compile(rf"^task:\s*['\"]?{re.escape(task)}['\"]?\s*$", re.M)
    named = sorted(root.rglob(f"{task}.yaml"))
    for path in named + [p for p in sorted(root.rglob("*.yaml")) if p not in named]:
        try:
            if key.search(path.read_text(encoding="utf-8", errors="replace")):
                return path
        except OSError:
            continue
    raise ValueError(f"lm-eval knows no task {task!r} defined by a YAML file; list them with `lm_eval ls tasks`")


def write_local_tasks(files: dict, out_dir) -> dict:
    """{lm-eval task: local data file} -> {task: local task name}; writes <task>_local.yaml files into
    out_dir (pass it as lm_eval's --include_path). The file feeds the split the task is scored on
    (its test split if it has one, else validation); few-shot and training splits are dropped
    (zero-shot, as our scorer). `datasets` caches the parsed file under out_dir/datasets_cache."""
    from lm_eval.tasks._yaml_loader import load_yaml

    out_dir = Path(out_dir)
    names = {}
    for task, path in files.items():
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{task}: local data file {path} does not exist")
        src = _task_yaml(task)
        cfg = load_yaml(src, resolve_func=False)
        split = cfg.get("test_split") or cfg.get("validation_split")
        if not split:
            raise ValueError(f"lm-eval task {task!r} names no test or validation split to score")
        name = task + SUFFIX
        local = {"include": str(src.resolve()), "task": name, "tag": [], "dataset_path": "json", "dataset_name": None,
                 "dataset_kwargs": {"data_files": {split: str(path.resolve())},
                                    "cache_dir": str((out_dir / "datasets_cache").resolve())},
                 "training_split": None, "fewshot_split": None,
                 "validation_split": split if split == cfg.get("validation_split") else None,
                 "test_split": split if split == cfg.get("test_split") else None}
        if cfg.get("output_type") == "multiple_choice":
            metrics = [m for m in cfg.get("metric_list", []) if m.get("metric") != "acc_bytes"]
            local["metric_list"] = metrics + [{"metric": "acc_bytes", "aggregation": "mean", "higher_is_better": True}]
        fileio.write_text(out_dir / f"{name}.yaml", yaml.safe_dump(local, sort_keys=False))
        names[task] = name
    return names


def evaluate_export(folder, tasks: dict, task_dir=None, batch_size=16, device="cpu", limit=None) -> dict:
    """Score an exported Hugging Face folder with lm-eval's `hf` model on local tasks.

    tasks: {task: local task name} from write_local_tasks, task_dir: the folder it wrote them to.
    Zero-shot, float32. Returns {task: {'metrics': {'acc', 'acc_norm', 'acc_bytes'}, 'items':
    [{'doc_id', 'target', 'lls' (log-likelihood of each ending), 'pred', 'acc', 'acc_norm', ...}]}}.
    """
    import numpy as np
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if task_dir is None:
        raise ValueError("pass task_dir: the folder write_local_tasks wrote the task YAML files into")
    tm = TaskManager(include_path=str(task_dir), include_defaults=False)  # our YAMLs include lm-eval's
    model_args = {"pretrained": str(folder), "trust_remote_code": True, "dtype": "float32", "backend": "causal"}
    out = simple_evaluate(model="hf", model_args=model_args, tasks=list(tasks.values()), batch_size=batch_size,
                          device=device, limit=limit, task_manager=tm, log_samples=True, bootstrap_iters=0,
                          num_fewshot=0)
    res = {}
    for task, name in tasks.items():
        metrics = {k.split(",")[0]: v for k, v in out["results"][name].items()
                   if k.split(",")[0] in ("acc", "acc_norm", "acc_bytes") and not k.startswith("alias")}
        items = []
        for s in sorted(out["samples"][name], key=lambda s: s["doc_id"]):
            lls = [float(r[0]) for r in s["filtered_resps"]]
            row = {"doc_id": int(s["doc_id"]), "target": s.get("target"), "lls": lls,
                   "pred": int(np.argmax(lls))}
            row.update({k: float(s[k]) for k in ("acc", "acc_norm", "acc_bytes") if k in s})
            items.append(row)
        res[task] = {"metrics": metrics, "items": items, "task": name}
    return res


def agreement(ours: list, theirs: list) -> dict:
    """Item-by-item comparison of our item results (evaluate.score_items) with lm-eval's items
    (evaluate_export(...)[task]['items']): how many items agree on each of acc / acc_norm / acc_bytes,
    and the largest difference between our summed losses and lm-eval's -log-likelihoods."""
    if len(ours) != len(theirs):
        raise ValueError(f"{len(ours)} items scored by nbcore, {len(theirs)} by lm-eval: score the same file")
    same = {"acc": 0, "acc_norm": 0, "acc_bytes": 0}
    worst = 0.0
    for r, t in zip(ours, theirs):
        for key, mine in (("acc", "correct"), ("acc_norm", "correct_norm"), ("acc_bytes", "correct_bytes")):
            if key in t:
                same[key] += float(r[mine]) == t[key]
        worst = max([worst] + [abs(s + ll) for s, ll in zip(r["sum_losses"], t["lls"])])
    return {"n": len(ours), "same": same, "max_abs_loglik_diff": worst}


__all__ = ["write_local_tasks", "evaluate_export", "agreement"]

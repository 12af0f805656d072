"""The course's plumbing: what a learner sees first, and how each chapter finds the previous one's output.

- `environment()` / `show_environment()`: versions of Python, torch and the key packages, and the
  device, printed by the first code cell of every chapter (a result is only reproducible with them).
- `default_tokenizer()` / `default_shards()`: the tokenizer and shards that 01's and 02's *defaults*
  make, built on demand (with those same defaults, read from the notebooks' parameter cells) when a
  chapter needs them and they are missing. 04_train reads them when `data_dir` is left empty.
- `newest_run()`: the newest run folder with a checkpoint (05_eval's default); `newest_runs()`: the
  runs 06_compare takes by default.
"""
import datetime
import importlib.metadata
import logging
import os
import platform
import sys
from pathlib import Path

from . import notebooks, paths

# The packages a result depends on, in the order printed.
KEY_PACKAGES = ("numpy", "matplotlib", "papermill", "ipywidgets", "tiktoken", "safetensors", "scipy")


def environment(device=None) -> dict:
    """{'python', 'torch', <package>: version or None, 'device', 'threads'} of this kernel."""
    import torch

    from .model import pick_device

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in KEY_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    quiet = logging.getLogger("nbcore.model")
    was, quiet.disabled = quiet.disabled, True  # pick_device's "no CUDA" warning: said below instead
    try:
        dev = pick_device(device)
    finally:
        quiet.disabled = was
    if dev.type == "cuda":
        name = f"cuda ({torch.cuda.get_device_name(dev)}, CUDA {torch.version.cuda})"
    elif dev.type == "mps":
        name = "mps (Apple GPU)"
    else:
        name = f"cpu ({platform.processor() or platform.machine()}; no GPU found)"
    out["device"] = name
    out["threads"] = torch.get_num_threads()
    return out


def show_environment(device=None) -> dict:
    """Print `environment()` as three short lines; return it."""
    env = environment(device)
    pk = ", ".join(f"{k} {v}" for k, v in env.items() if k in KEY_PACKAGES and v)
    missing = [k for k in KEY_PACKAGES if env.get(k) is None]
    print(f"Python {env['python']} ({sys.executable}), torch {env['torch']}")
    print(f"packages: {pk}" + (f"; not installed: {', '.join(missing)}" if missing else ""))
    print(f"device: {env['device']}, {env['threads']} torch threads")
    return env


# ---------------------------------------------------------------- the chain's defaults
def _defaults(chapter) -> dict:
    return notebooks.declared_parameters(chapter)


def default_tokenizer(build: bool = True, progress: bool = False) -> Path:
    """The folder 01_tokenizer's defaults write (runs/tokenizers/<name>); trained with those defaults if missing."""
    from . import tokenizer as tk
    from .corpus import iter_corpus

    p = _defaults("01_tokenizer")
    out = paths.tokenizers_dir() / p["name"]
    if (out / "tokenizer.json").exists() or not build:
        return out
    print(f"{out} is missing: training it with 01_tokenizer's defaults "
          f"({p['sample_chars']:,} characters, vocab_size {p['vocab_size']})", flush=True)

    def sample(docs, n):
        for doc in docs:
            if len(doc) >= n:
                yield doc[:n]
                return
            yield doc
            n -= len(doc)

    tok = tk.train_bpe(sample(iter_corpus(p["corpus"]), p["sample_chars"]), p["vocab_size"],
                       pattern=tk.PATTERNS[p["pattern"]], workers=p["workers"] or None, name=p["name"],
                       meta={"corpus": p["corpus"], "sample_chars_requested": p["sample_chars"],
                             "built_by": "nbcore.course.default_tokenizer"})
    tok.save(out)
    return out


def default_shards(build: bool = True) -> Path:
    """The folder 02_data's defaults write (runs/shards/<name>); made with those defaults if missing.

    Its tokenizer is 02's default tokenizer (01's default output), trained first if it is missing too.
    """
    from . import shards

    p = _defaults("02_data")
    out = paths.shards_dir() / p["name"]
    manifest = out / "manifest.json"
    if not build or (manifest.exists() and shards.load_manifest(out).get("complete")):
        return out
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 may build; the others would race it
        raise FileNotFoundError(f"{out} is missing: run 02_data first (or 04_train in one process), or pass data_dir")
    tok = Path(p["tokenizer"]) if "/" in p["tokenizer"] else paths.tokenizers_dir() / p["tokenizer"]
    if not (tok / "tokenizer.json").exists():
        tok = default_tokenizer()
    print(f"{out} is missing: making it with 02_data's defaults ({p['num_shards']} x {p['shard_size']:,} tokens)",
          flush=True)
    shards.make_shards(p["corpus"], tok, out, shard_size=p["shard_size"], num_shards=p["num_shards"],
                       seed=p["seed"], workers=p["workers"] or None, val_tokens=p["val_tokens"] or None,
                       shuffle_buffer=p["shuffle_buffer"], progress=False)
    return out


def _has_checkpoint(run: Path) -> bool:
    return any((run / "checkpoints").glob("step_*.pt"))


def newest_run(root=None) -> Path:
    """The newest run folder under runs/ that holds a checkpoint (what 05_eval evaluates by default)."""
    from .compare import find_run_dirs

    found = [r for r in find_run_dirs(root) if _has_checkpoint(r)]
    if not found:
        raise FileNotFoundError(f"no run with a checkpoint under {Path(root) if root else paths.runs_dir()}: "
                                f"train one with 04_train first, or pass run_dir")
    return max(found, key=lambda r: (r.stat().st_mtime, r.name))


def newest_runs(root=None) -> list[Path]:
    """The runs 06_compare takes when none are named: every run folder under runs/, newest first, when they
    form at least two groups (configurations); otherwise the newest ablation record of 03_model (its baseline
    and its first switch, two seeds each), so that the chapter has something real to compare."""
    from .compare import find_run_dirs, group_runs, load_run

    found = find_run_dirs(root)
    if len(group_runs([load_run(p) for p in found], "name")) >= 2:
        return found
    records = newest_ablation(root)
    if records is None:
        return found
    return [p for name in ablation_pair(records) for p in sorted(records.glob(f"{name}_s*"))
            if (p / "metrics.csv").exists()]


def newest_ablation(root=None) -> Path | None:
    """The newest `runs/ablation_<stamp>/` folder that 03_model's ablation left, or None."""
    root = Path(root) if root is not None else paths.runs_dir()
    found = sorted(root.glob("ablation_*/results.json")) if root.is_dir() else []
    return found[-1].parent if found else None


def ablation_pair(record_dir) -> tuple[str, str]:
    """(baseline, experiment) run names of an ablation record: its baseline and the first variant measured."""
    from . import fileio

    names = [v["name"] for v in fileio.read_json(Path(record_dir) / "results.json")["variants"]]
    return names[0], names[1]


def stamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d_%H%M%S")


__all__ = ["KEY_PACKAGES", "environment", "show_environment", "default_tokenizer", "default_shards",
           "newest_run", "newest_runs", "newest_ablation", "ablation_pair"]

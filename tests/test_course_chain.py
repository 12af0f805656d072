"""The learner's path: 01 -> 06 run in order with their defaults, nothing injected, in a fresh checkout-like
folder (empty runs/; the built-in corpus cache is the session's). Each chapter must find the previous one's
output by itself: 02 the tokenizer 01 saved, 04 the shards 02 made, 05 the newest run, 06 the newest runs."""
import json
import os
import shutil
import time

import nbformat
import pytest

from nbcore import notebooks, paths

# About 5 minutes of one core pair (01 ~0.4, 02 ~0.2, 03 ~2 with its ablation, 04 ~1.5, 05 ~0.6, 06 ~0.3):
# the defaults are sized for a laptop, and this test is also 03's check at its default sizes.
pytestmark = pytest.mark.slow

CHAPTERS = ("01_tokenizer", "02_data", "03_model", "04_train", "05_eval", "06_compare")


def _text(nb_path) -> str:
    nb = nbformat.read(nb_path, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    return "\n".join(o.get("text", "") + json.dumps(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def _rich(nb_path, mime: str) -> list:
    nb = nbformat.read(nb_path, as_version=4)
    return [o["data"][mime] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if mime in o.get("data", {})]


def _check_03(out, text):
    """03 at its default sizes (V=512, L=4, H=4, D=128, T=64, B=2): hand-built pieces equal nbcore's, shapes
    in the shared notation, the tables, the pictures, the slider, and the ablation's 22 runs and table."""
    assert "the block by hand equals nbcore's block" in text and "identical tokens" in text  # KV cache == recompute
    for line in ("q: (B, T, H, Dh) = (2, 64, 4, 32)", "scores: (B, H, T, T) = (2, 4, 64, 64)",
                 "logits: (B, T, V) = (2, 64, 512)", "qkv: (B, T, 3·H·Dh) = (2, 64, 384)"):
        assert line in text, line
    assert "GPT-2 small: 124,439,808   Llama-3.2-1B shape: 1,235,814,400" in text
    for preset in ("XS", "S", "M", "gpt2-small"):                        # the preset table
        assert f"\n{preset:>10} " in "\n" + text
    for arch in ("gpt", "nanogpt", "llama3"):                            # comparison and training rows
        assert f"{arch:>8}: loss" in text
    assert len(_rich(out, "image/png")) >= 2                             # the masks, the ablation curves
    assert _rich(out, "application/vnd.jupyter.widget-view+json")        # the slider rendered headless
    assert "22 runs in" in text and "30 steps x B=8 x T=64 = 15,360 training tokens" in text
    md = "\n".join(_rich(out, "text/markdown"))
    assert "| baseline | nothing: every trick on |" in md and "| adamw | Muon: hidden matrices trained by AdamW |" in md


def test_the_course_runs_top_to_bottom_with_its_defaults(runs_dir, tmp_path):
    checkout = tmp_path / "checkout"
    shutil.copytree(paths.NOTEBOOKS, checkout / "notebooks")   # the notebooks as a fresh clone has them
    seconds, texts = {}, {}
    for ch in CHAPTERS:
        t0 = time.perf_counter()
        out = notebooks.execute(checkout / "notebooks" / f"{ch}.ipynb", tmp_path / "executed" / f"{ch}.ipynb",
                                cwd=checkout / "notebooks")
        seconds[ch] = round(time.perf_counter() - t0, 1)
        texts[ch] = _text(out)
        assert "torch " in texts[ch] and "device: " in texts[ch]           # the versions cell
    print("chapter seconds:", seconds)
    assert (runs_dir / "tokenizers" / "builtin-4k" / "tokenizer.json").exists()
    assert (runs_dir / "shards" / "builtin-4k" / "manifest.json").exists()
    assert "02_data's default shards" in texts["04_train"]
    [run] = [p for p in runs_dir.iterdir() if p.name.endswith("_train")]
    assert (run / "summary.json").exists() and any((run / "checkpoints").glob("step_*.pt"))
    assert f"run_dir: {run}" in texts["05_eval"] and (run / "eval.json").exists()
    # one val number per run: 05's whole split scores exactly the tokens of 04's last validation
    final = json.loads((run / "summary.json").read_text())["final"]
    [ev] = json.loads((run / "eval.json").read_text())
    assert final["val_split"] == "whole" and ev["val_tokens"] == final["val_tokens"]
    assert ev["val_loss"] == pytest.approx(final["val_loss"], abs=1e-5)
    [ablation] = runs_dir.glob("ablation_*")                                  # 03's ablation record
    assert (ablation / "results.json").exists() and len(list(ablation.glob("*_s[01]/metrics.csv"))) == 22
    _check_03(tmp_path / "executed" / "03_model.ipynb", texts["03_model"])
    compares = list(runs_dir.glob("compare_*/paper.tex"))
    assert len(compares) == 1 and "taking 4 runs" in texts["06_compare"]     # ablation baseline vs adamw, 2 seeds

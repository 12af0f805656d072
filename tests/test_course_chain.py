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

# With today's laptop-sized defaults the chain costs about 18 CPU-minutes (01 ~1, 02 ~0.3, 03 ~4 with its
# ablation, 04 ~7, 05 ~5 scoring the whole 1M-token val split, 06 ~0.3), too much for CI's 15-minute suite:
# it runs when NBCORE_COURSE_CHAIN=1 (e.g. before a release), like the browser test needs its switch.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("NBCORE_COURSE_CHAIN") != "1",
                                 reason="the 01->06 default chain takes ~10 min on 2 cores; set NBCORE_COURSE_CHAIN=1")]

CHAPTERS = ("01_tokenizer", "02_data", "03_model", "04_train", "05_eval", "06_compare")


def _text(nb_path) -> str:
    nb = nbformat.read(nb_path, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    return "\n".join(o.get("text", "") + json.dumps(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


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
    assert len(list(runs_dir.glob("ablation_*/results.json"))) == 1          # 03's ablation record
    compares = list(runs_dir.glob("compare_*/paper.tex"))
    assert len(compares) == 1 and "taking 4 runs" in texts["06_compare"]     # ablation baseline vs adamw, 2 seeds

"""The main job (`make demo`): the whole workbook on the built-in corpus, on CPU, in minutes.

    python -m nbcore.demo [--seconds 45] [--seeds 2] [--nproc 1]

1. `papermill_params/demo_cpu.yaml` as the **baseline**: 01 tokenizer -> 02 shards -> 04 train
   (the speedrun architecture, Muon) -> 05 eval, once per seed (`--seeds`, 2 by default: the
   fewest that give a test, an interval and a difference plot).
2. The same parameter set with **one change** as the experiment: `model_options={"x0_mix": False}`
   (no x0 mixing), with the same seeds; the tokenizer and shards are reused, not rebuilt.
3. 06 compare on all runs, grouped by name (`demo-base-<tag>-s0`, `-s1` -> `demo-base-<tag>`):
   curves, tables, Welch's test with its interval, the difference plot, the filled paper, and the
   PDF when `pdflatex` is installed; the LLM judge only when JUDGE_API_KEY is set.

Sized for under 15 minutes on 2 CPU cores: 4 runs of 45 s of training each, plus the tokenizer
and the shards (built once), validation (a 131,072-token val split), evaluation and the comparison.
"""
import argparse
import copy
import os
import shutil
import sys
import time

from . import compare as compare_lib
from . import launch, notebooks, paths

EXPERIMENT_CHANGE = {"model_options": {"x0_mix": False}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nbcore.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=45.0, help="training budget of each run (max_seconds)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per arm (at least 2 for a test and an interval)")
    ap.add_argument("--nproc", type=int, default=None, help="training processes (default: the parameter set's)")
    ap.add_argument("--tag", default=time.strftime("%H%M%S"), help="suffix that keeps run names apart")
    a = ap.parse_args(argv)

    if a.seeds < 1:
        print("[demo] --seeds must be >= 1 (2 or more for a test and an interval)", file=sys.stderr)
        return 2
    t0 = time.time()
    plan = launch.load_plan(paths.PARAMS_DIR / "demo_cpu.yaml")
    base_name, exp_name = f"demo-base-{a.tag}", f"demo-nox0-{a.tag}"
    arms = [(base_name, {}), (exp_name, EXPERIMENT_CHANGE)]
    total = len(arms) * a.seeds
    made = {name: [] for name, _ in arms}
    try:
        k = 0
        for seed in range(a.seeds):  # seed-major: an interrupted demo still has both arms of the first seeds
            for name, change in arms:
                k += 1
                what = "baseline" if not change else f"experiment {change}"
                print(f"[demo] run {k}/{total}: {name}-s{seed}, {what}, seed {seed}", flush=True)
                p = launch.apply_overrides(plan, {"name": f"{name}-s{seed}", "max_seconds": a.seconds, **change})
                p = with_training_seed(p, seed)
                made[name].append(launch.run_plan(p, nproc=a.nproc))
        print("[demo] 06_compare on all runs", flush=True)
        out_name = f"demo-{a.tag}"
        compare = paths.runs_dir() / f"compare_{out_name}"
        notebooks.execute("06_compare", compare / "06_compare.ipynb", {
            "runs": [str(r) for rs in made.values() for r in rs], "baseline": base_name, "experiment": exp_name,
            "out_name": out_name, "use_judge": bool(os.environ.get("JUDGE_API_KEY")),
            "title": "Does x0 mixing help a tiny GPT on Python's documentation?"})
    except (launch.LaunchError, ValueError, FileNotFoundError) as e:
        print(f"[demo] failed: {e}", file=sys.stderr)
        return 1
    pdf_line = paper_pdf(compare / "paper.tex")
    minutes = (time.time() - t0) / 60
    runs_text = "\n".join(f"  {'baseline' if i == 0 else 'experiment':<10} runs  " + "  ".join(r.name for r in rs)
                          for i, rs in enumerate(made.values()))
    print(f"""
[demo] done in {minutes:.1f} min. Where to look:
{runs_text}
                    (each: 04_train.ipynb, metrics.csv, summary.json, eval.json, generations.jsonl)
  comparison        {compare}/  (06_compare.ipynb, results_*.md, figures/, paper.tex)
  {pdf_line}
  open them all     .venv/bin/jupyter lab
""")
    return 0


def with_training_seed(plan: dict, seed: int) -> dict:
    """A copy of `plan` with 04_train's seed set (only there: 02's shuffling seed keeps the shards reused)."""
    plan = copy.deepcopy(plan)
    for ch in plan["chapters"]:
        if launch.chapter_id(ch["notebook"]) == "04":
            ch["parameters"]["seed"] = seed
    return plan


def paper_pdf(tex) -> str:
    """The demo's last line about the paper: where its PDF is, or why there is none."""
    if not shutil.which("pdflatex"):
        return (f"paper             {tex} (no pdflatex here: apt-get install texlive-latex-recommended lmodern, "
                "or upload the folder to Overleaf)")
    try:
        return f"paper (PDF)       {compare_lib.compile_pdf(tex)}"
    except (compare_lib.LatexError, OSError) as e:
        return f"paper             {tex} (pdflatex failed: {e})"


if __name__ == "__main__":
    sys.exit(main())

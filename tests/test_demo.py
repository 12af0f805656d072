"""nbcore.demo's plan: two arms x two seeds (04's seed only), 06 on all four runs, the PDF line.

The chapters themselves are replaced by recorders here (they are tested in test_train and
test_notebook_06); this checks what `make demo` asks them to do and what it prints.
"""
from pathlib import Path

from nbcore import demo, launch, notebooks


def test_demo_runs_two_seeds_per_arm_and_compares_them_all(monkeypatch, runs_dir, capsys):
    plans, compared = [], {}

    def fake_run_plan(plan, nproc=None, **kw):
        plans.append(plan)
        d = runs_dir / f"20260101_00000{len(plans)}_{plan['name']}"
        d.mkdir()
        return d

    def fake_execute(nb, out, params, **kw):
        compared.update(params, notebook=nb)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        (Path(out).parent / "paper.tex").write_text("x")
        return out

    monkeypatch.setattr(launch, "run_plan", fake_run_plan)
    monkeypatch.setattr(notebooks, "execute", fake_execute)
    monkeypatch.setattr(demo.shutil, "which", lambda exe: None)  # no pdflatex: say so
    assert demo.main(["--tag", "t", "--seconds", "5"]) == 0
    names = [p["name"] for p in plans]
    assert names == ["demo-base-t-s0", "demo-nox0-t-s0", "demo-base-t-s1", "demo-nox0-t-s1"]
    for p in plans:
        seeds = {ch["notebook"]: ch["parameters"].get("seed", ch["parameters"].get("data_seed"))
                 for ch in p["chapters"]}
        assert seeds["04_train"] == int(p["name"][-1]) and seeds["02_data"] == 0  # the shards stay shared
        train = [ch["parameters"] for ch in p["chapters"] if ch["notebook"] == "04_train"][0]
        assert train["max_seconds"] == 5 and train.get("model_options", {}) == (
            {"x0_mix": False} if "nox0" in p["name"] else {})
    assert compared["notebook"] == "06_compare" and len(compared["runs"]) == 4
    assert compared["baseline"] == "demo-base-t" and compared["experiment"] == "demo-nox0-t"
    out = capsys.readouterr().out
    assert "run 4/4: demo-nox0-t-s1" in out and "no pdflatex here" in out and "paper.tex" in out

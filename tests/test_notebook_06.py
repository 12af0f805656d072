"""06_compare.ipynb executed headless through papermill on fake runs, with a fake judge server."""
import json
import struct

import nbformat
import pytest

from nbcore import compare, notebooks
from nbcore.params import ParameterError
from test_compare import make_fake_experiment
from test_judge import FakeJudge

pytestmark = pytest.mark.slow


def test_06_compare_headless_writes_tables_figures_paper_and_judge(runs_dir, tmp_path, monkeypatch):
    make_fake_experiment(runs_dir, n_seeds=2)
    srv = FakeJudge("openai")
    monkeypatch.setenv("JUDGE_API", "openai")
    monkeypatch.setenv("JUDGE_BASE_URL", srv.url)
    monkeypatch.setenv("JUDGE_MODEL", "fake-judge")
    monkeypatch.setenv("JUDGE_API_KEY", "sk-fake")
    try:
        out = notebooks.execute("06_compare", tmp_path / "06_compare.ipynb",
                                {"runs": [], "group_by": "name", "baseline": "baseline", "experiment": "muon",
                                 "out_name": "nbtest", "title": "Muon vs AdamW", "judge_workers": 2,
                                 "judge_price_in_per_m": 1.0, "record_target": 3.40, "target_sigma": 0.0013})
    finally:
        srv.close()
    d = runs_dir / "compare_nbtest"
    for f in ("results_groups.md", "results_groups.tex", "results_runs.md", "results_runs.tex",
              "significance.json", "paper.tex", "compare.json", "judge.json"):
        assert (d / f).exists(), f
    for stem in ("val_bpb_vs_tokens", "val_loss_vs_step", "val_bpb_vs_elapsed_s", "val_loss_vs_flops"):
        pdf, png = d / "figures" / f"{stem}.pdf", d / "figures" / f"{stem}.png"
        assert b"/FontFile2" in pdf.read_bytes()
        w, _ = struct.unpack(">II", png.read_bytes()[16:24])
        assert w == round(compare.COLUMN_WIDTH_IN * compare.DPI)
    md = (d / "results_groups.md").read_text()
    table, note = md.split("\n\n")
    assert table.count("\n") == 3 and "| muon | 2 |" in md and "| baseline | 2 |" in md
    assert "**" in table.splitlines()[2 if "muon" in table.splitlines()[2] else 3]  # significant: bold
    assert "whole val split" not in note or "tokens per run" in note  # the split and its tokens are stated
    assert "val loss and bpb:" in note and "Bold: significantly better" in note
    assert (d / "figures" / "diff_val_bpb.pdf").exists() and (d / "figures" / "diff_val_bpb.png").exists()
    rec = json.loads((d / "record_tests.json").read_text())
    assert [r["group"] for r in rec] == ["baseline", "muon"] and rec[1]["t_test"]["passed"]
    tex = (d / "paper.tex").read_text()
    assert compare.check_latex(tex) == [] and "<<" not in tex and r"\title{Muon vs AdamW}" in tex
    sig = json.loads((d / "significance.json").read_text())
    assert [s["metric"] if "metric" in s else s["y"] for s in sig] == ["val_bpb", "val_loss"]
    assert sig[0]["significant"] and sig[0]["p"] < 0.01
    # the judge's record lives in the experiment run's folder; muon's outputs are not "GOOD": all ties
    exp_dir = runs_dir / "20260101_110000_muon_seed0"
    assert len((exp_dir / "judge.jsonl").read_text().splitlines()) == 6
    j = json.loads((d / "judge.json").read_text())
    assert j["n_prompts"] == 3 and j["ties"] == 6 and j["win_rate"] == 0.5 and j["cost_usd"] == pytest.approx(600 / 1e6)
    rec = json.loads((d / "compare.json").read_text())
    assert rec["groups"]["muon"] == ["20260101_110000_muon_seed0", "20260101_110001_muon_seed1"]
    executed = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "nothing selected: taking 4 runs" in text and "by hand: t =" in text and "scipy.stats.ttest_ind" in text
    assert "bootstrap 95%" in text and "Hedges' g" in text and "difference plot: diff_val_bpb.pdf" in text
    assert "diff_val_bpb.pdf" in tex


def test_06_rejects_a_mistyped_parameter_before_running(tmp_path):
    with pytest.raises(ParameterError, match="Did you mean 'group_by'"):
        notebooks.execute("06_compare", tmp_path / "x.ipynb", {"group_bye": "arch"})

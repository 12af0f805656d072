"""The filled paper compiles: pdflatex on a demo-like comparison (booktabs tables, PDF figures).

Skipped where pdflatex is missing, unless NBCORE_REQUIRE_PDFLATEX=1 (.ci/run sets it after
installing Debian's texlive-latex-recommended and lmodern): there a skip is a failure.
"""
import json
import os
import re
import shutil

import pytest

from nbcore import compare
from test_compare import _x0_pair

REQUIRED = os.environ.get("NBCORE_REQUIRE_PDFLATEX") == "1"


@pytest.fixture
def pdflatex():
    if shutil.which("pdflatex") is None:
        if REQUIRED:
            pytest.fail("NBCORE_REQUIRE_PDFLATEX=1 but pdflatex is not installed (apt-get install "
                        "texlive-latex-recommended lmodern)")
        pytest.skip("pdflatex is not installed (apt-get install texlive-latex-recommended lmodern)")


def test_demo_like_paper_compiles_without_errors_or_undefined_references(runs_dir, tmp_path, pdflatex):
    groups = _x0_pair(runs_dir, n_seeds=2, gap=0.01, val_tokens=(65536, 200704))
    out = tmp_path / "compare_demo"
    figs = compare.export_curves(groups, out / "figures", ys=("val_bpb",), xs=("tokens", "elapsed_s"))
    figs.update(compare.export_difference(groups, "base", out / "figures"))
    sig = [compare.significance(groups, "base", "nox0", "val_bpb"),
           compare.time_to_target_significance(groups, "base", "nox0")]
    judge = {"win_rate": 0.5, "win_rate_ci95": [0.2, 0.8], "n_prompts": 8, "ties": 2, "judge_model": "gpt-4o_mini"}
    tex = compare.fill_paper(out, groups, "base", "nox0", figures=figs, significance_results=sig, judge_summary=judge,
                             title="Does x0 mixing help a tiny GPT? 100% & $5", target_results=compare.target_tests(
                                 groups, 3.40, sigma=0.0013))
    pdf = compare.compile_pdf(tex)
    assert pdf.read_bytes().startswith(b"%PDF")
    log = tex.with_suffix(".log").read_text(errors="replace")
    assert int(re.search(r"Output written on paper\.pdf \((\d+) pages", log).group(1)) >= 3
    assert "undefined" not in log.lower().replace("undefined control", "") and "! " not in log
    assert "booktabs.sty" in log and "diff_val_bpb.pdf" in log and "val_bpb_vs_tokens.pdf" in log
    assert compare.latex_problems(log) == []


def test_compile_pdf_reports_errors_and_undefined_references(tmp_path, pdflatex):
    bad_ref = tmp_path / "ref.tex"
    bad_ref.write_text("\\documentclass{article}\\begin{document}See Table~\\ref{tab:nowhere}.\\end{document}\n")
    with pytest.raises(compare.LatexError, match="tab:nowhere.*undefined"):
        compare.compile_pdf(bad_ref)
    broken = tmp_path / "broken.tex"
    broken.write_text("\\documentclass{article}\\begin{document}\\badmacro\\end{document}\n")
    with pytest.raises(compare.LatexError, match="Undefined control sequence"):
        compare.compile_pdf(broken)
    assert json.dumps(compare.latex_problems("all fine\n")) == "[]"

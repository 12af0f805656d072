"""nbcore.compare: loading and grouping run folders, tables, curves, significance, the filled paper.

`make_fake_run` writes a run folder in the layout nbcore.runs / nbcore.evaluate produce
(metrics.csv, summary.json, eval.json, generations.jsonl); test_notebook_06 reuses it.
"""
import json
import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from nbcore import compare, runs, stats

BYTES_PER_TOKEN = 4.0


def make_fake_run(root, name, seed=0, final=3.0, speed=1.0, arch="gpt", lr=0.02, steps=60, val_every=10,
                  stamp=None, bench=(0.30, 0.45), generations=None, flops=True, evals=True, val_tokens=None,
                  params_extra=None):
    """A run folder `root/<stamp>_<name>` whose val loss decays towards `final` (+ seed noise),
    written with nbcore.runs / nbcore.evaluate's own writers where they have one.

    speed > 1 makes it reach a given loss in fewer seconds (elapsed_s = step * 0.5 / speed).
    val_tokens=(interval, whole): the val_tokens column as 04 writes it, its last validation on the
    whole split (recorded in summary.json's final, as 04 does).
    """
    rng = np.random.default_rng(seed + 1000 * int(final * 100))
    stamp = stamp or f"20260101_{120000 + seed:06d}"
    d = Path(root) / f"{stamp}_{name}"
    d.mkdir(parents=True)
    log = runs.MetricsLog(d, enabled=False)  # the producer's own writer: same columns, same formatting
    for step in range(0, steps + 1):
        train = final + 3.0 * math.exp(-step / 15) + 0.01 * rng.standard_normal()
        row = {"step": step, "tokens": step * 8192, "train_loss": round(train, 6), "lr": 0.02,
               "elapsed_s": round(step * 0.5 / speed, 4), "tokens_per_s": 16384.0 * speed}
        if step % val_every == 0:
            val = final + 3.0 * math.exp(-step / 15) + 0.002 * rng.standard_normal()
            row["val_loss"], row["val_bpb"] = round(val, 6), round(val / math.log(2) / BYTES_PER_TOKEN, 6)
            if val_tokens:
                row["val_tokens"] = val_tokens[1] if step == steps else val_tokens[0]
            last_val = row["val_loss"]
        log.add(**row)
    log.enabled = True
    log.flush()
    params = {"name": name, "arch": arch, "seed": seed, "lr": lr, "num_layers": 4, "model_dim": 128,
              "num_heads": 4, "vocab_size": 4096, "seq_len": 256, "batch_size": 32, "max_steps": steps,
              "gpu_hourly_price": 2.0, **(params_extra or {})}
    model_config = {"vocab_size": 4096, "num_layers": 4, "model_dim": 128, "num_heads": 4, "head_dim": 32,
                    "seq_len": 256}
    summary = {"parameters": params, "versions": {"python": "3.11.7", "torch": "2.13.0"},
               "git": {"commit": "0123456789abcdef", "dirty": False},
               "hardware": {"cpu": "x86_64", "cpu_count": 2, "gpus": []}, "world_size": 1,
               "final": {"val_loss": last_val, "val_bpb": last_val / math.log(2) / BYTES_PER_TOKEN,
                         "tokens_seen": steps * 8192, "wall_seconds": steps * 0.5 / speed,
                         "peak_mem_bytes": 2 ** 30 + seed},
               "estimated_cost_usd": round(steps * 0.5 / speed / 3600 * 2.0, 4), "gpu_hourly_price": 2.0,
               "model_config": model_config, "num_params": 1_234_567}
    if flops:
        summary["flops_per_token"] = 7_400_000
    if val_tokens:
        summary["final"].update(val_tokens=val_tokens[1], val_split="whole",  # the numbers metrics.csv ends on
                                val_bpb=round(last_val / math.log(2) / BYTES_PER_TOKEN, 6))
    (d / "summary.json").write_text(json.dumps(summary))
    if evals:  # eval.json and generations.jsonl through nbcore.evaluate's own writers
        from nbcore import evaluate

        hs, arc = bench
        v = last_val - 0.001
        benchmarks = {"hellaswag": {"n": 100, "acc": hs - 0.02, "acc_norm": hs + 0.001 * seed,
                                    "acc_ci95": [0.2, 0.4], "acc_norm_ci95": [0.2, 0.4]},
                      "arc_easy": {"n": 50, "acc": arc, "acc_norm": arc, "acc_ci95": [0.3, 0.6],
                                   "acc_norm_ci95": [0.3, 0.6]},
                      "piqa": {"skipped": "data not found: put piqa.jsonl in the cache"}}
        evaluate.append_eval(d, evaluate.make_entry("final", steps, {"val_loss": v, "val_tokens": 65536},
                                                    v / math.log(2) / BYTES_PER_TOKEN, benchmarks))
        # an earlier entry for another checkpoint, written after it: the latest step must win, not the last line
        evaluate.append_eval(d, evaluate.make_entry("mid", steps // 2, {"val_loss": 9.9, "val_tokens": 65536}, 9.9, {}))
    from nbcore import evaluate

    gens = generations if generations is not None else [f"{name} says something about prompt {i}" for i in range(3)]
    settings = {"temperature": 0.8, "top_k": 50, "seed": 1337, "max_new_tokens": 64, "checkpoint": "final"}
    evaluate.write_generations(d / "generations.jsonl", [
        {"prompt_id": f"p{i}", "prompt": f"Prompt number {i}.", "output": out, "settings": settings}
        for i, out in enumerate(gens)])
    return d


def make_fake_experiment(root, n_seeds=3, gap=0.05):
    """n_seeds of `baseline` (final 3.30) and of `muon` (final 3.30 - gap, 1.5x faster)."""
    out = []
    for s in range(n_seeds):
        out.append(make_fake_run(root, f"baseline_seed{s}", seed=s, final=3.30, arch="nanogpt", lr=0.001,
                                 stamp=f"20260101_{100000 + s:06d}", bench=(0.30, 0.45)))
        out.append(make_fake_run(root, f"muon_seed{s}", seed=s, final=3.30 - gap, speed=1.5, arch="gpt",
                                 stamp=f"20260101_{110000 + s:06d}", bench=(0.32, 0.47)))
    return out


@pytest.fixture
def fake(runs_dir):
    make_fake_experiment(runs_dir)
    return runs_dir


def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------- loading and grouping
def test_load_runs_by_glob_relative_to_runs_dir_and_by_folder(fake):
    got = compare.load_runs(["*_baseline_seed*"])
    assert [r.name for r in got] == ["baseline_seed0", "baseline_seed1", "baseline_seed2"]
    one = compare.load_runs([str(fake / "20260101_110001_muon_seed1")])
    assert one[0].name == "muon_seed1" and one[0].params["arch"] == "gpt"
    both = compare.load_runs(["*_muon_seed0", "*_muon_seed*"])  # duplicates kept once, order kept
    assert [r.name for r in both] == ["muon_seed0", "muon_seed1", "muon_seed2"]


def test_metrics_columns_keep_nan_off_val_steps(fake):
    r = compare.load_runs(["*_muon_seed0"])[0]
    assert r.metrics["val_loss"].shape == (61,) and np.isnan(r.metrics["val_loss"][1])
    x, y = r.curve("val_loss", "step")
    assert x.tolist() == [0, 10, 20, 30, 40, 50, 60] and y.shape == (7,)
    fx, _ = r.curve("val_loss", "flops")
    assert fx[1] == 10 * 8192 * 7_400_000  # flops_per_token already counts forward + backward


def test_a_spec_matching_nothing_is_a_clear_error(fake):
    with pytest.raises(FileNotFoundError, match=r"no run folder matches '\*_adam\*'.*muon_seed"):
        compare.load_runs(["*_adam*"])


def test_compare_and_tokenizer_folders_are_not_runs(fake):
    (fake / "compare_x").mkdir()
    (fake / "compare_x" / "summary.json").write_text("{}")
    (fake / "tokenizers").mkdir()
    assert len(compare.find_run_dirs()) == 6
    assert len(compare.load_runs(["*"])) == 6


def test_group_by_name_drops_the_seed_suffix_and_by_parameter(fake):
    rs = compare.load_runs(["*"])
    g = compare.group_runs(rs, "name")
    assert list(g) == ["muon", "baseline"] or set(g) == {"muon", "baseline"}
    assert all(len(v) == 3 for v in g.values())
    g2 = compare.group_runs(rs, "arch")
    assert set(g2) == {"arch=gpt", "arch=nanogpt"}
    g3 = compare.group_runs(rs, "arch,lr")
    assert set(g3) == {"arch=gpt,lr=0.02", "arch=nanogpt,lr=0.001"}
    with pytest.raises(KeyError, match="did you mean 'arch'"):
        compare.group_runs(rs, "archh")


def test_summary_from_nbcore_runs_is_read(runs_dir):
    """A summary.json written by nbcore.runs.write_summary itself is understood."""
    d = make_fake_run(runs_dir, "real", evals=False)
    (d / "summary.json").unlink()
    runs.write_summary(d, {"name": "real", "arch": "gpt", "seed": 0},
                       {"val_loss": 3.1, "val_bpb": 1.1, "tokens_seen": 1000, "wall_seconds": 7200.0,
                        "peak_mem_bytes": 2 ** 31}, world_size=2, extra={"flops_per_token": 10.0},
                       gpu_hourly_price=3.0)
    f = compare.final_metrics(compare.load_run(d))
    assert f["val_loss"] == 3.1 and f["val_bpb"] == 1.1 and f["tokens"] == 1000
    assert f["wall_seconds"] == 7200.0 and f["peak_mem_gib"] == 2.0 and f["cost_usd"] == 12.0


# ---------------------------------------------------------------- tables
def test_final_metrics_prefer_the_latest_eval(fake):
    r = compare.load_runs(["*_muon_seed1"])[0]
    f = compare.final_metrics(r)
    assert f["val_loss"] == pytest.approx(r.summary["final"]["val_loss"] - 0.001)
    assert f["val_loss_source"] == "eval.json"
    assert f["bench:hellaswag"] == pytest.approx(0.321) and f["bench:arc_easy"] == 0.47
    assert "bench:piqa" not in f  # skipped, so absent rather than zero
    assert f["tokens"] == 60 * 8192 and f["peak_mem_gib"] == pytest.approx(1.0, abs=1e-6)


def test_group_table_has_mean_and_std_over_seeds(fake):
    rs = compare.load_runs(["*"])
    groups = compare.group_runs(rs, "name")
    rows = {r["group"]: r for r in compare.groups_table(groups)}
    vals = [compare.final_metrics(r)["val_bpb"] for r in groups["muon"]]
    assert rows["muon"]["val_bpb"] == pytest.approx(np.mean(vals))
    assert rows["muon"]["val_bpb:std"] == pytest.approx(np.std(vals, ddof=1))
    assert rows["muon"]["val_bpb:n"] == 3 and rows["muon"]["n"] == 3
    assert rows["muon"]["bench:hellaswag"] == pytest.approx(0.321)


def test_markdown_and_latex_tables(fake, tmp_path):
    rs = compare.load_runs(["*"])
    groups = compare.group_runs(rs, "name")
    rows = compare.groups_table(groups)
    md = compare.to_markdown(rows)
    lines = md.strip().splitlines()
    assert len(lines) == 2 + 2 and all(l.count("|") == lines[0].count("|") for l in lines)
    assert "val bpb ↓" in lines[0] and "HellaSwag ↑" in lines[0] and "PIQA" not in lines[0]
    muon = [l for l in lines if l.startswith("| muon")][0]
    mean = rows[[r["group"] for r in rows].index("muon")]["val_bpb"]
    assert f"| {mean:.4f} ± " in muon and "**" not in md  # no test, no bold
    bold = compare.significant_winners([compare.significance(groups, "baseline", "muon")])
    assert bold == {"val_bpb": "muon"}
    assert f"**{mean:.4f}** ± " in [l for l in compare.to_markdown(rows, bold=bold).splitlines() if l.startswith("| muon")][0]
    tex = compare.to_latex(rows, caption="Results", label="tab:r", bold=bold)
    assert tex.count(r"\toprule") == tex.count(r"\midrule") == tex.count(r"\bottomrule") == 1
    assert r"$\pm$" in tex and r"\textbf{" in tex and compare.check_latex(tex) == []
    body = [l for l in tex.splitlines() if l.startswith("muon")][0]
    assert body.count("&") == len(compare.default_columns(rows)) + 1  # group, n, then the columns
    written = compare.write_tables(tmp_path, rs, groups)
    assert sorted(p.name for p in written.values()) == ["results_groups.md", "results_groups.tex",
                                                         "results_runs.md", "results_runs.tex"]
    assert r"20260101\_110002\_muon\_seed2" in (tmp_path / "results_runs.tex").read_text()


def test_latex_escape():
    assert compare.latex_escape("a_b & 50% $x #1 {y} ~^\\") == \
        r"a\_b \& 50\% \$x \#1 \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{}"


# ---------------------------------------------------------------- curves and figures
def test_mean_curve_exact_and_interpolated(fake):
    rs = compare.load_runs(["*_muon_*"])
    x, m = compare.mean_curve(rs, "val_loss", "step")
    assert x.tolist() == [0, 10, 20, 30, 40, 50, 60]
    assert m == pytest.approx(np.mean([r.curve("val_loss", "step")[1] for r in rs], axis=0))
    a, b = compare.Run(Path("a")), compare.Run(Path("b"))
    a.metrics = {"step": np.array([0, 10, 20.0]), "val_loss": np.array([4.0, 3.0, 2.0])}
    b.metrics = {"step": np.array([5, 15, 25.0]), "val_loss": np.array([5.0, 4.0, 3.0])}
    x, m = compare.mean_curve([a, b], "val_loss", "step")
    assert x.tolist() == [5, 10, 15, 20]  # the range both cover
    assert m.tolist() == pytest.approx([(3.5 + 5.0) / 2, (3.0 + 4.5) / 2, (2.5 + 4.0) / 2, (2.0 + 3.5) / 2])


def test_figures_are_pdf_with_embedded_truetype_and_png_at_column_width(fake, tmp_path):
    groups = compare.group_runs(compare.load_runs(["*"]), "name")
    figs = compare.export_curves(groups, tmp_path)
    stems = {f"{y}_vs_{x}" for y in ("val_loss", "val_bpb") for x in ("step", "tokens", "elapsed_s", "flops")}
    assert set(figs) == stems
    for stem in stems:
        pdf, png = tmp_path / f"{stem}.pdf", tmp_path / f"{stem}.png"
        data = pdf.read_bytes()
        assert data.startswith(b"%PDF") and b"/FontFile2" in data and b"/Type3" not in data
        w, h = png_size(png)
        assert w == round(compare.COLUMN_WIDTH_IN * compare.DPI) and h == round(compare.FIG_HEIGHT_IN * compare.DPI)


def test_figure_draws_thin_seeds_and_bold_means(fake):
    import matplotlib

    matplotlib.use("Agg")
    groups = compare.group_runs(compare.load_runs(["*"]), "name")
    fig = compare.curve_figure(groups, "val_bpb", "tokens")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 6 + 2
    bold = [l for l in lines if l.get_linewidth() > 1.0]
    assert len(bold) == 2 and len({l.get_color() for l in bold}) == 2
    assert sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts()) == ["baseline (n=3)", "muon (n=3)"]


def test_missing_flops_per_token_skips_only_that_axis(runs_dir, tmp_path):
    make_fake_run(runs_dir, "a", flops=False)
    groups = compare.group_runs(compare.load_runs(["*"]), "name")
    figs = compare.export_curves(groups, tmp_path, ys=("val_loss",))
    assert set(figs) == {"val_loss_vs_step", "val_loss_vs_tokens", "val_loss_vs_elapsed_s", "skipped"}
    assert "flops_per_token" in figs["skipped"]["val_loss_vs_flops"]


# ---------------------------------------------------------------- significance
def test_significance_of_lower_bpb(fake):
    groups = compare.group_runs(compare.load_runs(["*"]), "name")
    s = compare.significance(groups, "baseline", "muon", "val_bpb")
    ref = stats.welch_test(s["experiment_values"], s["baseline_values"], "less")
    assert s["p"] == pytest.approx(ref.p) and s["significant"] and s["p"] < 0.01 and s["seeds_needed"] == 0
    assert "significant." in s["text"]
    back = compare.significance(groups, "muon", "baseline", "val_bpb")
    assert back["p"] > 0.99 and not back["significant"] and back["seeds_needed"] is None
    hs = compare.significance(groups, "baseline", "muon", "bench:hellaswag")
    assert hs["alternative"] == "greater" and hs["diff"] > 0


def test_significance_falls_short_and_says_how_many_seeds(runs_dir):
    for s in range(2):
        make_fake_run(runs_dir, f"base_s{s}", seed=s, final=3.300 + 0.004 * s, stamp=f"20260101_{100000 + s:06d}")
        make_fake_run(runs_dir, f"exp_s{s}", seed=s, final=3.299 + 0.004 * s, stamp=f"20260101_{110000 + s:06d}")
    groups = compare.group_runs(compare.load_runs(["*"]), "name")
    s = compare.significance(groups, "base", "exp", "val_loss")
    assert not s["significant"] and s["seeds_needed"] > 0
    assert f"about {s['seeds_needed']} more seed" in s["text"]


def test_time_to_target_interpolates(fake):
    r = compare.Run(Path("x"))
    r.metrics = {"elapsed_s": np.array([0, 10, 20.0]), "val_loss": np.array([5.0, 4.0, 3.0])}
    assert compare.time_to_target(r, 3.5) == pytest.approx(15.0)
    assert compare.time_to_target(r, 6.0) == 0.0 and compare.time_to_target(r, 2.0) is None
    groups = compare.group_runs(compare.load_runs(["*"]), "name")
    t = compare.time_to_target_significance(groups, "baseline", "muon")
    assert t["target"] == pytest.approx(max(r.curve("val_loss", "step")[1][-1] for g in groups.values() for r in g))
    assert t["significant"] and t["mean_x"] < t["mean_y"]
    fail = compare.time_to_target_significance(groups, "baseline", "muon", target=1.0)
    assert fail["p"] is None and "never reach" in fail["text"]


# ---------------------------------------------------------------- the paper
def test_fill_paper_fills_every_placeholder_and_balances(fake, tmp_path):
    groups = compare.group_runs(compare.load_runs(["*"]), "name")
    figs = compare.export_curves(groups, tmp_path / "figures")
    sig = [compare.significance(groups, "baseline", "muon")]
    judge = {"win_rate": 0.75, "win_rate_ci95": [0.5, 0.9], "n_prompts": 3, "ties": 1, "judge_model": "m_1"}
    path = compare.fill_paper(tmp_path, groups, "baseline", "muon", figures=figs, significance_results=sig,
                              judge_summary=judge, title="Muon beats AdamW_ish")
    tex = path.read_text()
    assert path == tmp_path / "paper.tex" and compare.check_latex(tex) == []
    assert "<<" not in tex and r"\title{Muon beats AdamW\_ish}" in tex
    for stem in ("val_bpb_vs_tokens", "val_loss_vs_flops"):
        assert f"figures/{stem}.pdf" in tex and (tmp_path / "figures" / f"{stem}.pdf").exists()
    assert r"arch* & nanogpt & gpt" in tex or r"arch* & gpt & nanogpt" in tex  # the setup table marks differences
    assert "75.0\\%" in tex and "m\\_1" in tex
    assert "$L = 4$" in tex and "$D = 128$" in tex and "$D_h = 32$" in tex  # architecture appendix
    assert "Muon" in tex and "AdamW" in tex  # both architectures described
    assert "0123456789" in tex  # the git commit in the reproducibility appendix


def test_template_placeholders_are_all_known():
    tex = compare.TEMPLATE.read_text()
    names = set(re.findall(r"<<([A-Z_]+)>>", tex))
    assert {"TITLE", "ABSTRACT", "SETUP_TABLE", "RESULTS_TABLE", "FIGURES", "ARCHITECTURE"} <= names
    with pytest.raises(KeyError, match="placeholders without a value"):
        compare.fill_template(tex, {"TITLE": "x"})
    problems = compare.check_latex(compare.fill_template(tex, {n: "x" for n in names}))
    assert problems == []


def test_check_latex_finds_problems():
    assert compare.check_latex(r"\begin{table}\begin{tabular}{l}\end{table}") != []
    assert compare.check_latex(r"\textbf{x") == ["1 unclosed {"]
    assert compare.check_latex(r"50\% done {ok} % a comment with {") == []
    assert compare.check_latex("<<X>>") == ["placeholder <<X>> left"]


def test_figure_paths_in_the_paper_are_relative_to_the_tex(fake, tmp_path):
    groups = compare.group_runs(compare.load_runs(["*"]), "name")
    figs = compare.export_curves(groups, tmp_path / "elsewhere" / "figs", xs=("tokens",), ys=("val_bpb",))
    tex = compare.figures_tex(figs, tmp_path / "paper")
    assert "{../elsewhere/figs/val_bpb_vs_tokens.pdf}" in tex and "val_bpb_vs_elapsed_s" not in tex
    assert compare.check_latex(tex) == []


def test_select_runs_widget_lists_runs_newest_first(fake):
    w = compare.select_runs_widget()
    names = [label for label, _ in w.options]
    assert len(names) == 6 and names[0] == "20260101_110002_muon_seed2" and w.value == ()


def test_compare_dir_checks_the_name(runs_dir):
    assert compare.compare_dir("a_vs_b") == runs_dir / "compare_a_vs_b"
    assert (runs_dir / "compare_a_vs_b" / "figures").is_dir()
    with pytest.raises(ValueError, match="use letters, digits"):
        compare.compare_dir("a vs b/c")


def test_architecture_appendix_follows_the_config_switches():
    def run(name, arch, **cfg):
        r = compare.Run(Path(f"20260101_000000_{name}"))
        r.summary = {"parameters": {"arch": arch}, "num_params": 2_000_000, "flops_per_token": 12_000_000,
                     "model_config": {"arch": arch, "num_layers": 2, "model_dim": 64, "num_heads": 2, **cfg}}
        return r
    full = run("full", "gpt", value_embeds=2, sliding_window=True, window_long=256, window_short=128, softcap=15.0,
               qk_norm=True, mlp_act="relu2", mlp_ratio=4, tie_embeddings=False)
    ablated = run("novemb", "gpt", value_embeds=0, sliding_window=False, softcap=0.0, qk_norm=True,
                  mlp_act="relu2", mlp_ratio=4, tie_embeddings=False)
    tex = compare.architecture_text({"full": [full], "novemb": [ablated]})
    first, second = tex.split(r"\paragraph{novemb.}")
    assert "2 value-embedding table(s)" in first and "sliding-window attention (long 256, short 128 tokens)" in first
    assert "no value embeddings" in second and "full causal attention" in second and "no logit soft-cap" in second
    assert "$D_h = 32$" in first and "2.00M parameters" in first and "12.00M FLOPs per token" in first
    assert compare.check_latex(tex) == []


# ---------------------------------------------------------------- issue 14: the right change, agreeing numbers
def _x0_pair(runs_dir, n_seeds=1, gap=0.0, **kw):
    """The demo's experiment: runs that differ only inside model_options (and in run-specific fields)."""
    for s in range(n_seeds):
        for name, opts, final in (("base", {}, 3.30), ("nox0", {"x0_mix": False}, 3.30 + gap)):
            d = make_fake_run(runs_dir, f"{name}-s{s}", seed=s, final=final + 0.002 * s,
                              stamp=f"2026010{1 if name == 'base' else 2}_{100000 + s:06d}",
                              params_extra={"model_options": opts, "run_dir": f"/runs/2026_{name}{s}",
                                            "resume": "", "started": f"12:0{s}"}, **kw)
            summ = json.loads((d / "summary.json").read_text())
            summ["model_config"]["x0_mix"] = opts.get("x0_mix", True)  # what build_model resolved
            (d / "summary.json").write_text(json.dumps(summ))
    return compare.group_runs(compare.load_runs(["*"]), "name")


def test_setup_table_and_method_name_the_nested_change_not_run_specific_fields(runs_dir, tmp_path):
    groups = _x0_pair(runs_dir)
    assert compare.parameter_differences(groups) == ["model_options.x0_mix"]
    table = compare.setup_table(groups)
    assert r"model\_options.x0\_mix* & True & False \\" in table
    for field in ("run\\_dir", "resume", "started", "name*", "seed*"):
        assert field not in table, field
    assert compare.check_latex(table) == []
    tex = compare.fill_paper(tmp_path, groups, "base", "nox0").read_text()
    method = tex.split(r"\section{Method}")[1].split(r"\section")[0]
    assert r"\texttt{model\_options.x0\_mix} = False instead of True" in method and "run" not in method.lower()


def test_tables_bold_only_a_significant_winner(runs_dir, tmp_path):
    groups = _x0_pair(runs_dir, n_seeds=2, gap=0.0005)  # a tiny difference, 2 seeds: not significant
    sig = compare.significance(groups, "nox0", "base", "val_bpb")
    assert not sig["significant"] and compare.significant_winners([sig]) == {}
    written = compare.write_tables(tmp_path, [r for rs in groups.values() for r in rs], groups, claims=[sig])
    md = written["results_groups.md"].read_text()
    assert "**" not in md and "Nothing is bold" in md
    tex = compare.fill_paper(tmp_path, groups, "nox0", "base", significance_results=[sig]).read_text()
    assert r"\textbf{" not in tex.split(r"\label{tab:results}")[1].split(r"\end{table}")[0]
    assert "Nothing is bold" in tex


def test_significance_reports_intervals_effect_size_and_the_difference_plot(fake, tmp_path):
    groups = compare.group_runs(compare.load_runs(["*"]), "name")
    s = compare.significance(groups, "baseline", "muon", "val_bpb")
    lo, hi = s["welch_ci95"]
    blo, bhi = s["bootstrap_ci95"]
    assert lo < s["diff"] < hi and blo <= s["diff"] <= bhi and hi < 0 and s["hedges_g"] < -1
    assert "95% Welch interval" in s["text"] and "bootstrap" in s["text"] and "Hedges' g" in s["text"]
    figs = compare.export_difference(groups, "baseline", tmp_path)
    pdf, png = figs["diff_val_bpb"]
    assert pdf.read_bytes().startswith(b"%PDF") and png_size(png)[0] == round(compare.COLUMN_WIDTH_IN * compare.DPI)
    fig = compare.difference_figure(groups, "baseline", "val_bpb")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["muon (n=3)"]
    (mark,) = [l for l in ax.get_lines() if l.get_marker() == "o"]
    assert mark.get_xdata()[0] == pytest.approx(s["diff"])  # the point is the difference of means
    tex = compare.figures_tex(figs, tmp_path, baseline="baseline")
    assert "diff_val_bpb.pdf" in tex and "Welch interval" in tex and compare.check_latex(tex) == []


def test_difference_plot_needs_seeds(runs_dir, tmp_path):
    groups = _x0_pair(runs_dir)  # one seed per arm
    out = compare.export_difference(groups, "base", tmp_path)
    assert "2 or more seeds" in out["skipped"]["diff_val_bpb"]


def test_target_tests_apply_the_speedrun_rules(fake):
    groups = compare.group_runs(compare.load_runs(["*"]), "name")
    rows = {r["group"]: r for r in compare.target_tests(groups, 3.40, sigma=0.0013)}
    vals = compare.metric_values(groups["muon"], "val_loss")
    assert rows["muon"]["t_test"]["p"] == pytest.approx(stats.one_sample_test(vals, 3.40).p)
    assert rows["muon"]["t_test"]["passed"] and rows["muon"]["z_test"]["passed"] and "passes p < 0.01" in rows["muon"]["text"]
    far = {r["group"]: r for r in compare.target_tests(groups, 3.0)}
    assert not far["muon"]["t_test"]["passed"] and "z_test" not in far["muon"]


def test_curve_ends_on_the_tables_value_and_both_say_which_split(runs_dir, tmp_path):
    groups = _x0_pair(runs_dir, n_seeds=2, val_tokens=(65536, 200704))
    runs_ = [r for rs in groups.values() for r in rs]
    rows = {r["run"]: r for r in compare.runs_table(runs_, groups)}
    for r in runs_:
        assert r.latest_eval()["val_bpb"] != r.curve("val_bpb", "step")[1][-1]  # 05's number differs ...
        assert rows[r.path.name]["val_bpb"] == r.curve("val_bpb", "step")[1][-1]  # ... the table shows the curve's
        assert rows[r.path.name]["val_tokens"] == 200704
    assert compare.val_split_text(runs_) == "the whole val split (200,704 tokens per run)"
    note = compare.curve_split_note(runs_)
    assert note == "val: first 65.5k tokens; last point: whole split, 201k tokens"
    fig = compare.curve_figure(groups, "val_bpb", "step")
    assert fig.axes[0].get_title(loc="left") == note
    tex = compare.fill_paper(tmp_path, groups, "base", "nox0",
                             figures=compare.export_curves(groups, tmp_path / "figures", xs=("step",))).read_text()
    assert tex.count("the whole val split (200,704 tokens per run)") == 2  # both result tables' captions
    assert "Val: first 65.5k tokens; last point: whole split, 201k tokens" in tex

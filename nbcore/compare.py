"""Comparing runs: load run folders, group seeds, draw curves, write tables, test claims, fill the paper.

A run folder (`runs/<YYYYmmdd_HHMMSS>_<name>/`, see nbcore.runs) holds `metrics.csv`,
`summary.json`, and after 05_eval `eval.json` and `generations.jsonl`. Here:

- `load_runs(specs)`: folders or globs -> [Run]; `group_runs(runs, by)`: {group: [Run]} by the
  run name (a trailing `_seed3` / `-s3` dropped) or by any parameter (`by="arch"`).
- `export_curves(groups, out_dir)`: val loss and val bits per byte against step, tokens, wall
  time and estimated FLOPs; each group one colour, seeds thin, the group mean bold; PDF (fonts
  embedded) and PNG at column width, one style (`STYLE`).
- `runs_table` / `groups_table` + `to_markdown` / `to_latex`: final metrics per run and per group
  (mean ± std over seeds), bits per byte first: it is the number that compares tokenizers.
- `significance(...)`, `time_to_target_significance(...)`: one-sided Welch tests over seeds
  (nbcore.stats) for "the experiment is better" and "the experiment gets there sooner".
- `fill_paper(...)`: notebooks/paper_template.tex filled into the comparison's folder.
"""
import csv
import glob as globlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

from . import fileio, paths, stats

COLUMN_WIDTH_IN = 3.25      # one column of a two-column paper (ICML/NeurIPS-style); 6.75 for full width
FIG_HEIGHT_IN = 2.3
DPI = 300                   # PNG resolution: 3.25 in -> 975 px
# Okabe-Ito: readable in colour-blind vision and in greyscale print
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
STYLE = {
    "pdf.fonttype": 42, "ps.fonttype": 42,          # TrueType fonts embedded (arXiv and journals ask for it)
    "font.family": "DejaVu Sans", "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8,
    "legend.fontsize": 7, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25,
    "grid.linewidth": 0.5, "axes.linewidth": 0.6, "lines.linewidth": 1.0, "legend.frameon": False,
    "savefig.dpi": DPI, "figure.dpi": 100,
}
SKIP_DIRS = ("compare_", "tokenizers", "shards")
X_AXES = {"step": "step", "tokens": "tokens", "elapsed_s": "wall time (s)", "flops": "estimated training FLOPs"}
Y_AXES = {"val_loss": "val loss (nats/token)", "val_bpb": "val bits per byte", "train_loss": "train loss (nats/token)"}
BENCH_NAMES = {"hellaswag": "HellaSwag", "arc_easy": "ARC-Easy", "piqa": "PIQA"}


def metric_label(metric: str) -> str:
    """'val_bpb' -> 'val bits per byte', 'bench:hellaswag' -> 'HellaSwag accuracy'."""
    if metric.startswith("bench:"):
        return BENCH_NAMES.get(metric[6:], metric[6:]) + " accuracy"
    return {"val_bpb": "val bits per byte", "val_loss": "val loss"}.get(metric, metric)
_STAMP = re.compile(r"^\d{8}_\d{6}_(.+)$")
_SEED = re.compile(r"[_-](?:seed|s)\d+$")


def _style():
    import matplotlib.pyplot as plt
    from cycler import cycler

    return plt.rc_context({**STYLE, "axes.prop_cycle": cycler(color=PALETTE)})


# ---------------------------------------------------------------- loading
def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def read_metrics_columns(path) -> dict:
    """metrics.csv -> {column: float array}, NaN where a cell is empty (val columns off val steps)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = rows[0].keys() if rows else []
    return {c: np.array([_num(r.get(c)) for r in rows], dtype=np.float64) for c in cols}


@dataclass
class Run:
    """One run folder, read."""
    path: Path
    summary: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)    # column -> (N,) float array
    evals: list = field(default_factory=list)      # eval.json entries, oldest first

    @property
    def name(self) -> str:
        """The name given at launch: the folder name without its timestamp."""
        m = _STAMP.match(self.path.name)
        return m.group(1) if m else self.path.name

    @property
    def params(self) -> dict:
        s = self.summary
        return s.get("parameters") or s.get("params") or {}

    def get(self, key, default=None):
        """A fact about the run, looked up in summary.json's top level, `final`, `parameters`, then the model config."""
        for d in (self.summary, self.summary.get("final") or {}, self.params, self.model_config):
            if isinstance(d, dict) and d.get(key) is not None:
                return d[key]
        return default

    @property
    def model_config(self) -> dict:
        for k in ("model_config", "config", "model"):
            v = self.summary.get(k)
            if isinstance(v, dict):
                return v
        return {}

    @property
    def flops_per_token(self) -> float | None:
        v = self.get("flops_per_token")
        return float(v) if v else None

    def column(self, x: str) -> np.ndarray:
        """A metrics column; 'flops' is tokens x flops_per_token (training FLOPs: forward + backward)."""
        if x == "flops":
            fpt = self.flops_per_token
            if fpt is None or "tokens" not in self.metrics:
                raise KeyError(f"{self.path.name}: summary.json has no flops_per_token, so no FLOPs axis")
            return self.metrics["tokens"] * fpt
        if x not in self.metrics:
            raise KeyError(f"{self.path.name}: metrics.csv has no column {x!r} (has {sorted(self.metrics)})")
        return self.metrics[x]

    def curve(self, y: str = "val_loss", x: str = "step") -> tuple[np.ndarray, np.ndarray]:
        """(x, y) at the rows where both are recorded (val metrics only exist on val steps)."""
        xs, ys = self.column(x), self.column(y)
        ok = ~(np.isnan(xs) | np.isnan(ys))
        return xs[ok], ys[ok]

    def latest_eval(self) -> dict | None:
        """The evaluation of the latest step (newest if evaluated twice), or None."""
        if not self.evals:
            return None
        return max(enumerate(self.evals), key=lambda ie: (ie[1].get("step") or 0, ie[0]))[1]

    def __repr__(self):
        return f"Run({self.path.name})"


def load_run(path) -> Run:
    path = Path(path)
    has = {f: (path / f).exists() for f in ("summary.json", "metrics.csv", "eval.json")}
    if not (has["summary.json"] or has["metrics.csv"]):
        raise FileNotFoundError(f"{path} is not a run folder (no summary.json or metrics.csv): "
                                "train into it with 04_train first")
    summary = fileio.read_json(path / "summary.json") if has["summary.json"] else {}
    metrics = read_metrics_columns(path / "metrics.csv") if has["metrics.csv"] else {}
    evals = fileio.read_json(path / "eval.json") if has["eval.json"] else []
    if not isinstance(evals, list):
        raise ValueError(f"{path / 'eval.json'} should hold a list of evaluations (see nbcore.evaluate)")
    return Run(path=path, summary=summary, metrics=metrics, evals=evals)


def find_run_dirs(root=None) -> list[Path]:
    """Every run folder under runs/ (newest first), leaving out tokenizers, shards and comparisons."""
    root = Path(root) if root is not None else paths.runs_dir()
    if not root.is_dir():
        return []
    out = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(SKIP_DIRS)
           and ((p / "summary.json").exists() or (p / "metrics.csv").exists())]
    return sorted(out, key=lambda p: p.name, reverse=True)


def resolve_specs(specs, root=None) -> list[Path]:
    """Folders or globs (absolute, relative to the working folder, or to runs/) -> run folders, in order given."""
    root = Path(root) if root is not None else paths.runs_dir()
    if isinstance(specs, (str, Path)):
        specs = [specs]
    found: list[Path] = []
    for spec in specs:
        spec = str(spec)
        hits = []
        for base in ("", str(root)):
            pattern = spec if (not base or Path(spec).is_absolute()) else str(Path(base) / spec)
            hits = [Path(h) for h in sorted(globlib.glob(pattern)) if Path(h).is_dir()
                    and not Path(h).name.startswith(SKIP_DIRS)
                    and ((Path(h) / "summary.json").exists() or (Path(h) / "metrics.csv").exists())]
            if hits:
                break
        if not hits:
            have = ", ".join(p.name for p in find_run_dirs(root)[:12]) or "none"
            raise FileNotFoundError(f"no run folder matches {spec!r} (looked here and in {root}; runs there: {have})")
        for h in hits:
            if h.resolve() not in {f.resolve() for f in found}:
                found.append(h)
    return found


def load_runs(specs, root=None) -> list[Run]:
    """Run folders given as paths or globs (e.g. ["runs/*_baseline*", "runs/*_muon*"]) -> [Run]."""
    return [load_run(p) for p in resolve_specs(specs, root)]


# ---------------------------------------------------------------- grouping
def group_key(run: Run, by) -> str:
    if callable(by):
        return str(by(run))
    if not by:
        return run.name
    if by == "name":
        return _SEED.sub("", run.name)
    parts = []
    for key in [k.strip() for k in str(by).split(",") if k.strip()]:
        if key == "name":
            parts.append(_SEED.sub("", run.name))
            continue
        value = run.params.get(key, run.get(key))  # the parameter as given first, then recorded facts
        if value is None:
            have = sorted(run.params) or sorted(run.summary)
            hint = _closest(key, have)
            raise KeyError(f"run {run.path.name} has no parameter {key!r} to group by"
                           + (f" (did you mean {hint!r}?)" if hint else "") + f"; parameters: {', '.join(have)}")
        parts.append(f"{key}={value}")
    return ",".join(parts)


def _closest(name, valid):
    import difflib

    m = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return m[0] if m else None


def group_runs(runs, by="name") -> dict:
    """{group label: [Run, ...]} in order of first appearance.

    by="name": the run name with a trailing seed suffix removed (`muon_seed2` -> `muon`); runs
    launched under one name (distinct timestamps) share it. by="arch" (any parameter, or several
    comma-separated, or a function of the Run): one group per value, labelled `arch=gpt`.
    """
    groups: dict = {}
    for r in runs:
        groups.setdefault(group_key(r, by), []).append(r)
    return groups


# ---------------------------------------------------------------- final metrics
def final_metrics(run: Run, bench_metric: str = "acc_norm") -> dict:
    """The numbers a table shows for one run.

    val loss / bpb: 04's last validation when it scored the whole val split (summary.json's
    final, `val_split: "whole"`): the same number the run's curve ends on. Otherwise (runs
    from before 04 did that) the latest eval.json entry (05_eval, the whole val split), else
    the summary's last val. `val_tokens` says how many tokens that number scored.
    Benchmarks: `bench_metric` (acc_norm: the length-normalised accuracy, the usual HellaSwag
    number) and n; skipped ones are absent.
    """
    ev = run.latest_eval() or {}
    fin = run.summary.get("final") or {}
    out = {"run": run.path.name, "name": run.name}
    whole04 = fin.get("val_split") == "whole" and fin.get("val_loss") is not None
    for k in ("val_loss", "val_bpb"):
        if whole04:
            v, src = fin.get(k), "summary.json"
        elif ev.get(k) is not None:
            v, src = ev.get(k), "eval.json"
        else:
            v, src = fin.get(k, run.summary.get(k)), "summary.json"
        if v is None and k in run.metrics:
            col = run.metrics[k][~np.isnan(run.metrics[k])]
            v = float(col[-1]) if col.size else None
        out[k] = _num(v)
        out[k + "_source"] = src
    out["val_tokens"] = _num(fin.get("val_tokens") if whole04 else (ev.get("val_tokens") if ev.get("val_loss") is not None
                                                                    else fin.get("val_tokens")))
    out["val_split"] = "whole" if whole04 or ev.get("val_loss") is not None else (fin.get("val_split") or "unknown")
    for name, b in (ev.get("benchmarks") or {}).items():
        if isinstance(b, dict) and "skipped" not in b and bench_metric in b:
            out[f"bench:{name}"] = float(b[bench_metric])
            out[f"bench:{name}:n"] = int(b.get("n", 0))
    last = lambda c: float(run.metrics[c][~np.isnan(run.metrics[c])][-1]) if c in run.metrics and (~np.isnan(run.metrics[c])).any() else math.nan  # noqa: E731
    out["tokens"] = _num(run.get("tokens_seen")) if run.get("tokens_seen") is not None else last("tokens")
    out["wall_seconds"] = _num(run.get("wall_seconds")) if run.get("wall_seconds") is not None else last("elapsed_s")
    out["peak_mem_gib"] = _num(run.get("peak_mem_bytes")) / 2 ** 30
    cost = run.summary.get("estimated_cost_usd", run.get("estimated_cost_usd", run.get("cost_usd")))
    out["cost_usd"] = _num(cost)
    out["num_params"] = _num(run.get("num_params"))
    return out


@dataclass
class Column:
    key: str
    header: str
    fmt: str            # format spec for one value, e.g. ".4f"; "pct" for accuracies, "si" for counts
    better: str | None  # "lower", "higher" or None (not a score)


def default_columns(rows) -> list[Column]:
    cols = [Column("val_bpb", "val bpb", ".4f", "lower"), Column("val_loss", "val loss", ".4f", "lower")]
    benches = sorted({k.split(":")[1] for r in rows for k in r if k.startswith("bench:") and not k.endswith(":n")})
    cols += [Column(f"bench:{b}", BENCH_NAMES.get(b, b), "pct", "higher") for b in benches]
    cols += [Column("tokens", "tokens", "si", None), Column("wall_seconds", "time (s)", "sec", None),
             Column("peak_mem_gib", "peak mem (GiB)", ".2f", None), Column("cost_usd", "cost (\\$)", ".2f", None)]
    return cols


def _fmt(v, fmt) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if fmt == "sec":  # wall time: tenths below 100 s
        return f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}"
    if fmt == "pct":
        return f"{100 * v:.1f}"
    if fmt == "si":
        for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= div:
                return f"{v / div:.2f}{suf}"
        return f"{v:.0f}"
    return format(v, fmt)


def runs_table(runs, groups: dict | None = None, bench_metric="acc_norm") -> list[dict]:
    """One row per run: final_metrics plus its group label."""
    label = {id(r): g for g, rs in (groups or {}).items() for r in rs}
    return [{"group": label.get(id(r), r.name), **final_metrics(r, bench_metric)} for r in runs]


def groups_table(groups: dict, bench_metric="acc_norm") -> list[dict]:
    """One row per group: for every metric `key` -> mean, `key:std`, `key:n` over the group's seeds."""
    rows = []
    for g, rs in groups.items():
        finals = [final_metrics(r, bench_metric) for r in rs]
        keys = sorted({k for f in finals for k in f if k not in ("run", "name", "val_split") and not k.endswith("_source")
                       and not k.endswith(":n")})
        row = {"group": g, "n": len(rs)}
        for k in keys:
            m, s, n = stats.mean_std([f.get(k, math.nan) for f in finals])
            row[k], row[k + ":std"], row[k + ":n"] = m, s, n
        rows.append(row)
    return rows


def significant_winners(claims, label_key="group") -> dict:
    """{metric: group} for the claims (compare.significance results) that hold: what a table may bold.

    A winner is never the smallest number alone: with one seed, or a p-value above alpha, nothing is bold.
    """
    return {c["metric"]: c["experiment"] for c in claims or ()
            if c.get("significant") and c.get("metric") and c.get("experiment") is not None}


def _cell(row, col, bold, latex: bool, label_key="group") -> str:
    v = row.get(col.key)
    text = _fmt(v, col.fmt)
    if not text:
        return "--" if latex else "—"
    is_best = bool(bold) and bold.get(col.key) is not None and row.get(label_key) == bold.get(col.key)
    std = row.get(col.key + ":std")
    n = row.get(col.key + ":n", 0)
    if latex:
        body = rf"\textbf{{{text}}}" if is_best else text
        if std is not None and n and n > 1:
            body += rf" $\pm$ {_fmt(std, col.fmt)}"
        return body
    body = f"**{text}**" if is_best else text
    if std is not None and n and n > 1:
        body += f" ± {_fmt(std, col.fmt)}"
    return body


def to_markdown(rows, columns=None, label_key="group", extra_keys=("run",), bold=None) -> str:
    """A GitHub-flavoured Markdown table; arrows say which way is better.

    `bold` ({metric: group}, from `significant_winners`) marks a group's cell bold: only a
    significant test makes a winner, never the smallest number alone.
    """
    columns = columns or default_columns(rows)
    keys = [k for k in (label_key, *extra_keys) if any(k in r for r in rows)]
    if any("n" in r and not any(k == "run" for k in keys) for r in rows):
        keys.append("n")
    arrow = {"lower": " ↓", "higher": " ↑", None: ""}
    head = keys + [c.header.replace("\\$", "$") + arrow[c.better] for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":--"] * len(keys) + ["--:"] * len(columns)) + "|"]
    for r in rows:
        cells = [str(r.get(k, "")) for k in keys] + [_cell(r, c, bold, False, label_key) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def latex_escape(s) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "±": r"$\pm$", "×": r"$\times$", "≤": r"$\leq$", "≥": r"$\geq$", "—": "---", "–": "--"}
    return "".join(repl.get(ch, ch) for ch in str(s))


def to_latex(rows, columns=None, label_key="group", extra_keys=("run",), caption=None, label=None, bold=None) -> str:
    """A booktabs table (tabular; wrapped in a table float when `caption` is given); `bold` as in to_markdown."""
    columns = columns or default_columns(rows)
    keys = [k for k in (label_key, *extra_keys) if any(k in r for r in rows)]
    if any("n" in r and not any(k == "run" for k in keys) for r in rows):
        keys.append("n")
    arrow = {"lower": r" $\downarrow$", "higher": r" $\uparrow$", None: ""}
    head = [latex_escape(k) for k in keys] + [c.header + arrow[c.better] for c in columns]
    lines = [r"\begin{tabular}{" + "l" * len(keys) + "r" * len(columns) + "}", r"\toprule",
             " & ".join(head) + r" \\", r"\midrule"]
    for r in rows:
        cells = [latex_escape(r.get(k, "")) for k in keys] + [_cell(r, c, bold, True, label_key) for c in columns]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    body = "\n".join(lines) + "\n"
    if caption is None:
        return body
    lab = f"\\label{{{label}}}" if label else ""
    return (f"\\begin{{table}}[t]\n\\centering\n\\small\n\\caption{{{caption}}}{lab}\n"
            f"\\resizebox{{\\linewidth}}{{!}}{{%\n{body}}}\n\\end{{table}}\n")


def val_split_text(runs) -> str:
    """Which split and how many tokens the tables' val numbers scored, e.g.
    'the whole val split (118,784 tokens per run)'."""
    finals = [final_metrics(r) for r in runs]
    toks = sorted({int(f["val_tokens"]) for f in finals if not math.isnan(f.get("val_tokens", math.nan))})
    splits = {f.get("val_split") for f in finals}
    where = "the whole val split" if splits == {"whole"} else "the val split (" + ", ".join(sorted(map(str, splits))) + ")"
    if not toks:
        return where + " (token count not recorded)"
    n = f"{toks[0]:,}" if len(toks) == 1 else f"{toks[0]:,}--{toks[-1]:,}"
    return f"{where} ({n} tokens per run)"


def write_tables(out_dir, runs, groups, bench_metric="acc_norm", claims=()) -> dict:
    """results_runs.{md,tex} and results_groups.{md,tex} in out_dir; returns {name: path}.

    Each says under it which split its val numbers scored; a group's cell is bold only where
    one of `claims` (compare.significance results) found it significantly better.
    """
    out_dir = Path(out_dir)
    rr, gr = runs_table(runs, groups, bench_metric), groups_table(groups, bench_metric)
    cols = default_columns(rr)
    bold = significant_winners(claims)
    note = f"val loss and bpb: {val_split_text(runs)}."
    bold_note = (" Bold: significantly better than the baseline (" + "; ".join(
        f"{m}: p = {c['p']:.3g}" for c in claims for m in [c.get("metric")] if m in bold) + ")."
        if bold else " Nothing is bold: no difference was significant.")
    written = {}
    for stem, rows, extra, b in (("results_runs", rr, ("run",), None), ("results_groups", gr, (), bold)):
        tail = note + (bold_note if stem == "results_groups" else "")
        written[stem + ".md"] = fileio.write_text(out_dir / f"{stem}.md",
                                                  to_markdown(rows, cols, extra_keys=extra, bold=b) + "\n" + tail + "\n")
        written[stem + ".tex"] = fileio.write_text(out_dir / f"{stem}.tex", f"% {tail}\n"
                                                   + to_latex(rows, cols, extra_keys=extra, bold=b))
    return written


# ---------------------------------------------------------------- curves
def mean_curve(runs, y="val_loss", x="step") -> tuple[np.ndarray, np.ndarray]:
    """The seeds' mean curve on the x range they all cover (interpolated where their x differ)."""
    curves = [r.curve(y, x) for r in runs]
    curves = [(cx, cy) for cx, cy in curves if cx.size]
    if not curves:
        return np.array([]), np.array([])
    if all(cx.shape == curves[0][0].shape and np.allclose(cx, curves[0][0]) for cx, _ in curves):
        return curves[0][0], np.mean([cy for _, cy in curves], axis=0)
    lo, hi = max(cx.min() for cx, _ in curves), min(cx.max() for cx, _ in curves)
    grid = np.unique(np.concatenate([cx for cx, _ in curves]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    return grid, np.mean([np.interp(grid, cx, cy) for cx, cy in curves], axis=0)


def curve_split_note(runs) -> str:
    """Which val tokens a curve's points scored, from metrics.csv's val_tokens column, e.g.
    'val: first 65.5k tokens; last point: whole split, 1.2M tokens'."""
    from .progress import fmt_count

    inter, last, whole = set(), set(), True
    for r in runs:
        vl, vt = r.metrics.get("val_loss"), r.metrics.get("val_tokens")
        if vl is None:
            continue
        if vt is None:
            return "val: token counts not recorded"
        idx = np.nonzero(~np.isnan(vl))[0]
        if not idx.size:
            continue
        last |= {int(vt[idx[-1]])} if not np.isnan(vt[idx[-1]]) else set()
        inter |= {int(v) for v in vt[idx[:-1]] if not np.isnan(v)}
        whole &= (r.summary.get("final") or {}).get("val_split") == "whole"

    def span(vals):
        vals = sorted(vals)
        return fmt_count(vals[0]) if len(vals) == 1 else f"{fmt_count(vals[0])}-{fmt_count(vals[-1])}"

    head = f"val: first {span(inter)} tokens; " if inter else "val: "
    return head + (f"last point: {'whole split, ' if whole else ''}{span(last)} tokens" if last else "no points")


def plot_curves(groups: dict, y="val_loss", x="step", ax=None, log_x=None, note=True):
    """Each group in its colour: seeds as thin lines, their mean bold (a single run is drawn bold).
    With `note`, a line above the axes says which val tokens the points scored (`curve_split_note`)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, FIG_HEIGHT_IN), layout="constrained")
    for i, (g, rs) in enumerate(groups.items()):
        color = PALETTE[i % len(PALETTE)]
        if len(rs) > 1:
            for r in rs:
                ax.plot(*r.curve(y, x), color=color, lw=0.6, alpha=0.35)
        mx, my = mean_curve(rs, y, x)
        ax.plot(mx, my, color=color, lw=1.6, label=f"{g} (n={len(rs)})" if len(rs) > 1 else g)
    ax.set_xlabel(X_AXES.get(x, x))
    ax.set_ylabel(Y_AXES.get(y, y))
    if log_x if log_x is not None else x == "flops":
        ax.set_xscale("log")
    ax.legend(loc="best")
    if note and y.startswith("val"):
        ax.set_title(curve_split_note([r for rs in groups.values() for r in rs]), fontsize=5.5, loc="left")
    return ax


def save_figure(fig, out_dir, stem) -> list[Path]:
    """stem.pdf (TrueType fonts embedded) and stem.png (DPI dots per inch) in out_dir, both atomically."""
    out = []
    with _style():
        for ext in ("pdf", "png"):
            path = Path(out_dir) / f"{stem}.{ext}"
            with fileio.atomic_path(path) as tmp:
                fig.savefig(tmp, format=ext, dpi=DPI)
            out.append(path)
    return out


def curve_figure(groups, y="val_bpb", x="tokens", width=COLUMN_WIDTH_IN, height=FIG_HEIGHT_IN):
    import matplotlib.pyplot as plt

    with _style():
        fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
        plot_curves(groups, y, x, ax)
    return fig


def export_curves(groups, out_dir, ys=("val_loss", "val_bpb"), xs=("step", "tokens", "elapsed_s", "flops"),
                  close=True) -> dict:
    """One column-width figure per (y, x): `<y>_vs_<x>.pdf/.png` under out_dir. Returns {stem: [pdf, png]}.

    An axis some run cannot provide (no flops_per_token in its summary, a column missing) is
    skipped with a note in the returned dict under "skipped".
    """
    import matplotlib.pyplot as plt

    out, skipped = {}, {}
    runs = [r for rs in groups.values() for r in rs]
    for y in ys:
        for x in xs:
            try:
                for r in runs:
                    r.curve(y, x)
            except KeyError as e:
                skipped[f"{y}_vs_{x}"] = str(e).strip("'\"")
                continue
            fig = curve_figure(groups, y, x)
            out[f"{y}_vs_{x}"] = save_figure(fig, out_dir, f"{y}_vs_{x}")
            if close:
                plt.close(fig)
    if skipped:
        out["skipped"] = skipped
    return out


# ---------------------------------------------------------------- significance
def metric_values(runs, metric: str, bench_metric="acc_norm") -> list[float]:
    return [final_metrics(r, bench_metric).get(metric, math.nan) for r in runs]


def lower_is_better(metric: str) -> bool:
    return not metric.startswith("bench:")


def _pfmt(p: float) -> str:
    """A p-value as text: 0.0024, 3.1e-07, or < 1e-300 where it underflows."""
    return "< 1e-300" if p == 0 else f"= {p:.3g}"


def _claim_text(res: stats.WelchResult, needed, alpha, what, exp, base, fmt=".4f", boot=None, g=None) -> str:
    sig = res.p < alpha
    lo, hi = res.ci()
    s = (f"{what}: {exp} {res.mean_x:{fmt}} ± {res.std_x:{fmt}} (n={res.n_x}) vs {base} {res.mean_y:{fmt}} ± "
         f"{res.std_y:{fmt}} (n={res.n_y}); difference {res.diff:+{fmt}}, 95% Welch interval [{lo:+{fmt}}, {hi:+{fmt}}]"
         + (f", bootstrap [{boot[0]:+{fmt}}, {boot[1]:+{fmt}}]" if boot else "")
         + (f", Hedges' g = {g:.2f}" if g is not None and math.isfinite(g) else "")
         + f"; one-sided Welch t = {res.t:.2f}, df = {res.df:.1f}, p {_pfmt(res.p)} ")
    if sig:
        return s + f"< {alpha:g}: significant."
    if needed is None:
        return s + f">= {alpha:g}: not significant, and more seeds would not help (the difference points the other way)."
    return s + (f">= {alpha:g}: not significant yet; about {needed} more seed(s) per group would reach p < {alpha:g} "
                "if the means and spreads held.")


def significance(groups: dict, baseline: str, experiment: str, metric: str = "val_bpb", alpha: float = 0.01,
                 bench_metric="acc_norm") -> dict:
    """Is the experiment better than the baseline on `metric` over seeds? One-sided Welch test.

    Lower is better for losses and bpb; higher for benchmarks (`bench:hellaswag`). Returns the
    test, `seeds_needed` per group to reach p < alpha when it falls short, and a sentence.
    """
    for g in (baseline, experiment):
        if g not in groups:
            raise KeyError(f"no group {g!r}; groups: {list(groups)}")
    x = [v for v in metric_values(groups[experiment], metric, bench_metric) if not math.isnan(v)]
    y = [v for v in metric_values(groups[baseline], metric, bench_metric) if not math.isnan(v)]
    alt = "less" if lower_is_better(metric) else "greater"
    res = stats.welch_test(x, y, alternative=alt)
    needed = stats.seeds_needed(res.mean_x, res.std_x, res.n_x, res.mean_y, res.std_y, res.n_y, alpha, alt)
    boot = stats.bootstrap_diff_ci(x, y)
    g = stats.effect_size(x, y)
    return {"claim": f"{experiment} has {'lower' if alt == 'less' else 'higher'} {metric} than {baseline}",
            "metric": metric, "alpha": alpha, "experiment": experiment, "baseline": baseline,
            "experiment_values": x, "baseline_values": y, **res.to_dict(), "significant": res.p < alpha,
            "bootstrap_ci95": list(boot), "bootstrap_resamples": stats.BOOTSTRAP_RESAMPLES, "hedges_g": g,
            "seeds_needed": needed if res.p >= alpha else 0,
            "text": _claim_text(res, needed, alpha, metric_label(metric), experiment, baseline, boot=boot, g=g)}


def target_tests(groups: dict, target: float, y: str = "val_loss", sigma: float = 0.0,
                 alpha: float = stats.SPEEDRUN_ALPHA) -> list[dict]:
    """The speedrun's record rules for every group's final `y` against `target`: the main track's
    one-sided one-sample t-test (p < alpha, 0.01), and with a stated `sigma` the optimisation
    track's one-sided z-test (p < 0.001). Groups with one run get only the z-test."""
    out = []
    for g, rs in groups.items():
        vals = [v for v in metric_values(rs, y) if not math.isnan(v)]
        row = {"group": g, "metric": y, "target": target, "n": len(vals), "mean": float(np.mean(vals)) if vals else None}
        parts = []
        if len(vals) >= 2:
            t = stats.one_sample_test(vals, target, alpha=alpha)
            row["t_test"] = t.to_dict()
            parts.append(f"one-sided one-sample t = {t.statistic:.2f}, p {_pfmt(t.p)} "
                         f"({'passes' if t.passed else 'fails'} p < {alpha:g})")
        if sigma > 0 and vals:
            z = stats.z_test_vs_target(vals, target, sigma)
            row["z_test"] = z.to_dict()
            parts.append(f"z-test with stated sigma {sigma:g}: z = {z.statistic:.2f}, p {_pfmt(z.p)} "
                         f"({'passes' if z.passed else 'fails'} p < {z.alpha:g})")
        row["text"] = (f"{g}: mean final {y} {row['mean']:.4f} (n={len(vals)}) against the target {target:.4f}: "
                       + ("; ".join(parts) if parts else "one run and no stated sigma: no test")) if vals else f"{g}: no values"
        out.append(row)
    return out


def difference_figure(groups: dict, baseline: str, metric: str = "val_bpb", width=COLUMN_WIDTH_IN,
                      height=None, level: float = 0.95, bench_metric="acc_norm", note: str | None = None):
    """Each arm's mean final `metric` minus the baseline's, with its 95% Welch interval (bar) and
    bootstrap interval (thin bar beside it); a dashed line at zero. An effect of 0.008 bpb that is
    invisible on the shared curves is plain here. Arms with fewer than 2 seeds are left out."""
    import matplotlib.pyplot as plt

    y = [v for v in metric_values(groups[baseline], metric, bench_metric) if not math.isnan(v)]
    arms = []
    for g, rs in groups.items():
        x = [v for v in metric_values(rs, metric, bench_metric) if not math.isnan(v)]
        if g == baseline or len(x) < 2 or len(y) < 2:
            continue
        res = stats.welch_test(x, y, "less" if lower_is_better(metric) else "greater")
        arms.append((g, res.diff, res.ci(level), stats.bootstrap_diff_ci(x, y, level), len(x)))
    if not arms:
        raise ValueError(f"no arm besides {baseline!r} has 2 or more seeds (and the baseline needs 2): "
                         "a difference plot needs seeds to show an interval")
    height = height or max(1.3, 0.45 * len(arms) + 0.9)
    with _style():
        fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
        for i, (g, d, (lo, hi), (blo, bhi), n) in enumerate(arms):
            color = PALETTE[(list(groups).index(g)) % len(PALETTE)]
            ax.errorbar([d], [i], xerr=[[d - lo], [hi - d]], fmt="o", color=color, ms=3.5, capsize=2.5, lw=1.4)
            ax.errorbar([d], [i - 0.25], xerr=[[d - blo], [bhi - d]], fmt="none", color=color, lw=0.6, capsize=1.5,
                        alpha=0.8)
        ax.axvline(0.0, color="0.3", lw=0.7, ls="--")
        ax.set_yticks(range(len(arms)), [f"{g} (n={n})" for g, *_, n in arms])
        ax.set_ylim(-0.7, len(arms) - 0.4)
        ax.set_xlabel(f"{metric_label(metric)}: arm minus {baseline} (n={len(y)})")
        ax.grid(axis="y", visible=False)
        if note:
            ax.set_title(note, fontsize=5.5, loc="left")
    return fig


def export_difference(groups, baseline, out_dir, metric="val_bpb", close=True) -> dict:
    """figures/diff_<metric>.pdf/.png (see difference_figure); {} with a reason under "skipped" when it cannot be drawn."""
    import matplotlib.pyplot as plt

    stem = f"diff_{metric.replace(':', '_')}"
    try:
        fig = difference_figure(groups, baseline, metric,
                                note=f"val: {val_split_text([r for rs in groups.values() for r in rs])}"
                                if metric in ("val_bpb", "val_loss") else None)
    except ValueError as e:
        return {"skipped": {stem: str(e)}}
    out = {stem: save_figure(fig, out_dir, stem)}
    if close:
        plt.close(fig)
    return out


def time_to_target(run: Run, target: float, y: str = "val_loss", x: str = "elapsed_s") -> float | None:
    """The x (seconds, tokens, steps) at which the y curve first reaches <= target, linearly
    interpolated between the val points around the crossing; None if it never does."""
    xs, ys = run.curve(y, x)
    hit = np.nonzero(ys <= target)[0]
    if hit.size == 0:
        return None
    i = int(hit[0])
    if i == 0:
        return float(xs[0])
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0)) if y1 != y0 else float(x1)


def default_target(groups, baseline, experiment, y="val_loss") -> float:
    """The worst final val value among both groups' runs: a target every run reached."""
    vals = []
    for g in (baseline, experiment):
        for r in groups[g]:
            _, cy = r.curve(y, "step")
            if cy.size:
                vals.append(float(cy[-1]))
    if not vals:
        raise ValueError(f"no run of {baseline!r} or {experiment!r} has {y} values in metrics.csv")
    return max(vals)


def time_to_target_significance(groups, baseline, experiment, target=None, y="val_loss", x="elapsed_s",
                                alpha=0.01) -> dict:
    """Does the experiment reach `target` sooner (in x) than the baseline? One-sided Welch test on the times.

    A baseline run that never reaches the target counts with its last x (a lower bound, which
    favours the baseline); an experiment run that never reaches it makes the claim fail.
    """
    target = default_target(groups, baseline, experiment, y) if target is None else float(target)
    res_rows = {}
    for g in (baseline, experiment):
        res_rows[g] = []
        for r in groups[g]:
            t = time_to_target(r, target, y, x)
            res_rows[g].append({"run": r.path.name, "reached": t is not None,
                                "value": t if t is not None else (float(r.curve(y, x)[0][-1]) if r.curve(y, x)[0].size else math.nan)})
    out = {"claim": f"{experiment} reaches {y} <= {target:.4f} in less {x} than {baseline}", "target": target,
           "y": y, "x": x, "alpha": alpha, "baseline": baseline, "experiment": experiment, "runs": res_rows}
    if not all(row["reached"] for row in res_rows[experiment]):
        missing = [row["run"] for row in res_rows[experiment] if not row["reached"]]
        return {**out, "p": None, "significant": False, "seeds_needed": None,
                "text": f"{experiment} runs {missing} never reach {y} <= {target:.4f}: the claim fails."}
    xv = [row["value"] for row in res_rows[experiment]]
    yv = [row["value"] for row in res_rows[baseline]]
    res = stats.welch_test(xv, yv, alternative="less")
    needed = stats.seeds_needed(res.mean_x, res.std_x, res.n_x, res.mean_y, res.std_y, res.n_y, alpha, "less")
    return {**out, **res.to_dict(), "significant": res.p < alpha, "seeds_needed": needed if res.p >= alpha else 0,
            "text": _claim_text(res, needed, alpha, f"{X_AXES.get(x, x)} to reach {y} <= {target:.4f}",
                                experiment, baseline, fmt=".4g", g=stats.effect_size(xv, yv))}


# ---------------------------------------------------------------- paper
TEMPLATE = paths.NOTEBOOKS / "paper_template.tex"
_PLACEHOLDER = re.compile(r"<<([A-Z_]+)>>")
ARCH_TEXT = {  # the family; the switches below then say what this config turns on or off
    "gpt": ("a decoder-only Transformer in the style of the modded-NanoGPT speedrun; its hidden matrices are "
            "trained with Muon (momentum orthogonalised by a Newton--Schulz iteration), embeddings, head and "
            "scalars with Adam"),
    "nanogpt": "a GPT-2-style decoder-only Transformer (learned position embeddings, pre-LayerNorm) trained with AdamW, as in nanoGPT",
    "llama3": "a Llama-3-style decoder-only Transformer (RMSNorm, rotary position embeddings, SwiGLU MLPs) trained with AdamW",
}


def _features(arch: str, cfg: dict) -> list[str]:
    """Phrases for the switches a model config sets (model.py's GPT/NANOGPT/LLAMA3 defaults)."""
    f = []
    g = cfg.get
    if arch == "gpt":
        act = {"relu2": "ReLU$^2$", "gelu": "GELU"}.get(g("mlp_act"), latex_escape(g("mlp_act", "")))
        if g("mlp_act"):
            f.append(f"{act} MLPs" + (f" of width {g('mlp_ratio')}$D$" if g("mlp_ratio") else ""))
        if g("rotary_fraction") is not None:
            f.append(f"rotary position embeddings on {float(g('rotary_fraction')):g} of each head's dimensions"
                     if g("rotary_fraction") else "no position signal (rotary fraction 0)")
        if "qk_norm" in cfg:
            f.append("QK-normalisation" if g("qk_norm") else "no QK-normalisation")
        if "value_embeds" in cfg:
            f.append(f"{g('value_embeds')} value-embedding table(s)" if g("value_embeds") else "no value embeddings")
        if "unet_skips" in cfg:
            f.append("U-net-style skip connections" if g("unet_skips") else "no U-net skips")
        if g("x0_mix"):
            f.append("the input embedding mixed back into every block")
        if "sliding_window" in cfg:
            f.append(f"sliding-window attention (long {g('window_long')}, short {g('window_short')} tokens)"
                     if g("sliding_window") else "full causal attention in every layer")
        if "softcap" in cfg:
            f.append(f"output logits soft-capped at {float(g('softcap')):g}" if g("softcap") else "no logit soft-cap")
    if arch == "nanogpt" and g("mlp_ratio"):
        f.append(f"GELU MLPs of width {g('mlp_ratio')}$D$" + (", with biases" if g("bias") else ", without biases"))
    if arch == "llama3":
        if g("num_kv_heads") and g("num_kv_heads") != g("num_heads"):
            f.append(f"grouped-query attention with {g('num_kv_heads')} key/value heads")
        if g("ffn_dim"):
            f.append(f"SwiGLU width {g('ffn_dim')}")
        if g("rope_theta"):
            f.append(f"RoPE base {float(g('rope_theta')):g}")
    if "tie_embeddings" in cfg:
        f.append("input and output embeddings tied" if g("tie_embeddings") else "untied input and output embeddings")
    return [x for x in f if x]


CONFIG_NAMES = {  # notation -> keys a config may use for it
    "L": ("num_layers", "n_layer", "n_layers", "layers"), "D": ("model_dim", "n_embd", "dim", "d_model"),
    "H": ("num_heads", "n_head", "n_heads", "heads"), "Dh": ("head_dim",),
    "V": ("vocab_size", "n_vocab", "vocab"), "T": ("seq_len", "block_size", "max_seq_len", "sequence_length"),
}
SETUP_KEYS = ("arch", "size", "num_layers", "model_dim", "num_heads", "vocab_size", "seq_len", "batch_size",
              "grad_accum", "num_steps", "max_seconds", "lr_hidden_matrices", "lr_embed", "lr_head", "lr_scalars",
              "lr_adamw", "weight_decay", "cooldown_frac", "window_max", "dtype", "compile", "data_dir", "tokenizer")
PATH_KEYS = ("data_dir", "tokenizer", "run_dir", "resume")  # shown by their last part in tables
# Facts of one run, not of its configuration: never a "difference" between groups.
RUN_SPECIFIC = ("seed", "name", "run_name", "run_dir", "resume", "out_dir", "out_name", "live_plot", "sample_tokens")
_RUN_SPECIFIC_PATTERN = re.compile(r"(^|_)(time|timestamp|stamp|date|started|finished|written|path|file|host|pid)s?$")


def is_run_specific(key: str) -> bool:
    """True for keys naming the run itself (its folder, name, seed, resume point, timestamps, file paths)."""
    leaf = key.split(".")[-1]
    return key.split(".")[0] in RUN_SPECIFIC or bool(_RUN_SPECIFIC_PATTERN.search(leaf))


def flat_params(run: Run) -> dict:
    """The run's parameters with nested dicts flattened key by key: {"model_options": {"x0_mix": False}}
    -> {"model_options.x0_mix": False}. An empty dict leaves no key."""
    out = {}

    def walk(prefix, d):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(key + ".", v)
            else:
                out[key] = v
    walk("", run.params)
    return out


def _param_value(run: Run, key: str):
    """A flattened parameter; a model_options.X the run did not set is the model's default, from its config."""
    flat = flat_params(run)
    if key in flat:
        v = flat[key]
        return Path(v).name if key in PATH_KEYS and isinstance(v, str) and v else v
    if key.startswith("model_options."):
        return run.model_config.get(key.split(".", 1)[1])
    return None


def parameter_differences(groups: dict) -> list[str]:
    """The flattened parameters whose values differ between the groups' first runs, run-specific ones left out."""
    firsts = [rs[0] for rs in groups.values()]
    keys = []
    for r in firsts:
        keys += [k for k in flat_params(r) if k not in keys]
    return [k for k in keys if not is_run_specific(k)
            and len({json.dumps(_param_value(r, k), sort_keys=True, default=str) for r in firsts}) > 1]


def change_text(groups: dict, baseline: str, experiment: str) -> str:
    """The Method paragraph's list of changes: `model_options.x0_mix` = False instead of True, ..."""
    b, e = groups[baseline][0], groups[experiment][0]
    diff = [k for k in parameter_differences({baseline: [b], experiment: [e]})]

    def show(v):
        return "--" if v is None else _tex_value(v)
    return ", ".join(f"\\texttt{{{latex_escape(k)}}} = {show(_param_value(e, k))} instead of {show(_param_value(b, k))}"
                     for k in diff) or "nothing but the seed"


def _cfg(run: Run, notation: str):
    for k in CONFIG_NAMES[notation]:
        v = run.model_config.get(k, run.params.get(k))
        if v is not None:
            return v
    return None


def _tex_value(v) -> str:
    if isinstance(v, float):
        return latex_escape(f"{v:.4g}")
    if isinstance(v, (list, tuple)):
        return latex_escape(", ".join(map(str, v)))
    return latex_escape(v)


def setup_table(groups: dict, keys=SETUP_KEYS) -> str:
    """Parameters per group (first run of each): the ones that differ between groups first and
    marked with *, nested ones key by key (`model_options.x0_mix`), never run-specific ones
    (folder, name, seed, resume, timestamps, paths); then the usual ones that exist."""
    firsts = {g: rs[0] for g, rs in groups.items()}
    all_keys = []
    for r in firsts.values():
        all_keys += [k for k in r.params if k not in all_keys]
    differ = parameter_differences(groups)
    usual = [k for k in keys if k in all_keys and k not in differ and not isinstance(firsts[next(iter(firsts))].params.get(k), dict)]
    rows = [(k + "*", k) for k in differ] + [(k, k) for k in usual]
    extra = [("world size", "world_size"), ("hardware", "_hardware"), ("seeds", "_seeds")]
    lines = [r"\begin{tabular}{l" + "r" * len(firsts) + "}", r"\toprule",
             "parameter & " + " & ".join(latex_escape(g) for g in firsts) + r" \\", r"\midrule"]
    def value(r, k):
        if "." in k:
            v = _param_value(r, k)
            return "--" if v is None else _tex_value(v)
        v = r.params.get(k, "--")
        if k in PATH_KEYS and isinstance(v, str) and v:
            v = Path(v).name
        # what "auto" (or 0 / empty) resolved to, when the run recorded it (batch_size, vocab_size ...)
        resolved = r.summary.get(k, r.model_config.get(k))
        if v in ("auto", 0, "", None) and resolved not in (None, "", v) and not isinstance(resolved, (dict, list)):
            return _tex_value(resolved)
        return _tex_value(v) if v not in ("", None) else "--"

    for shown, k in rows:
        lines.append(latex_escape(shown) + " & " + " & ".join(value(r, k) for r in firsts.values()) + r" \\")
    for shown, k in extra:
        vals = []
        for g, r in firsts.items():
            if k == "_seeds":
                vals.append(str(len(groups[g])))
            elif k == "_hardware":
                hw = r.summary.get("hardware") or {}
                gpus = hw.get("gpus") or []
                vals.append(latex_escape(gpus[0]["name"] if gpus else (hw.get("cpu") or "CPU")))
            else:
                vals.append(_tex_value(r.get(k, "--")))
        lines.append(shown + " & " + " & ".join(vals) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def architecture_text(groups: dict) -> str:
    """Appendix prose and a config table per distinct architecture among the groups (from summary.json)."""
    seen, parts = {}, []
    for g, rs in groups.items():
        r = rs[0]
        key = json.dumps(r.model_config or {k: _cfg(r, k) for k in CONFIG_NAMES}, sort_keys=True, default=str) + str(r.get("arch"))
        seen.setdefault(key, []).append((g, r))
    for items in seen.values():
        names = ", ".join(latex_escape(g) for g, _ in items)
        r = items[0][1]
        arch = r.get("arch") or "gpt"
        dims = {k: _cfg(r, k) for k in CONFIG_NAMES}
        if dims["Dh"] is None and dims["D"] and dims["H"]:
            dims["Dh"] = int(dims["D"]) // int(dims["H"])
        known = ", ".join(f"${k if k != 'Dh' else 'D_h'} = {v}$" for k, v in dims.items() if v is not None)
        n = r.get("num_params")
        fpt = r.flops_per_token
        feats = _features(arch, r.model_config)
        text = (f"\\paragraph{{{names}.}} The model ({latex_escape(arch)}) is "
                f"{ARCH_TEXT.get(arch, 'a decoder-only Transformer')}. "
                + (f"This configuration has {', '.join(feats[:-1]) + ' and ' + feats[-1] if len(feats) > 1 else feats[0]}. "
                   if feats else "")
                + (f"Its dimensions: {known}. " if known else "")
                + (f"It has {_fmt(float(n), 'si')} parameters" if n else "")
                + (f" and training costs about {_fmt(fpt, 'si')} FLOPs per token (forward and backward)"
                   if fpt else "") + (". " if n or fpt else ""))
        cfg = r.model_config
        if cfg:
            text += ("\n\n\\begin{center}\\small\n\\begin{tabular}{lr}\n\\toprule\nconfig & value \\\\\n\\midrule\n"
                     + "".join(f"{latex_escape(k)} & {_tex_value(v)} \\\\\n" for k, v in cfg.items()
                               if not isinstance(v, dict))
                     + "\\bottomrule\n\\end{tabular}\n\\end{center}\n")
        parts.append(text)
    return "\n\n".join(parts)


def reproducibility_text(runs) -> str:
    items = []
    for r in runs:
        git = r.summary.get("git") or {}
        ver = r.summary.get("versions") or {}
        commit = (git.get("commit") or "unknown")[:10] + (" (dirty)" if git.get("dirty") else "")
        items.append(f"\\item \\texttt{{{latex_escape(r.path.name)}}}: commit \\texttt{{{latex_escape(commit)}}}, "
                     f"PyTorch {latex_escape(ver.get('torch', '?'))}, Python {latex_escape(ver.get('python', '?'))}, "
                     f"world size {latex_escape(r.get('world_size', '?'))}, seed {latex_escape(r.params.get('seed', '?'))}.")
    return "\\begin{itemize}\n" + "\n".join(items) + "\n\\end{itemize}\n" if items else "No runs."


FIGURE_PAIRS = (("val_bpb_vs_tokens", "val_bpb_vs_elapsed_s"), ("val_loss_vs_flops", "val_loss_vs_step"))


def figures_tex(figures: dict, tex_dir=None, pairs=FIGURE_PAIRS, note: str = "", baseline: str = "") -> str:
    """Figure floats, two column-width panels side by side each, for the curve stems that were exported,
    and one for each difference plot (`diff_<metric>`, from export_difference).

    `figures` is export_curves' {stem: [pdf, png]}; PDFs are referenced relative to `tex_dir`
    (the folder the .tex goes to), or as figures/<stem>.pdf when a stem has no path. `note`
    (curve_split_note) goes into the curves' captions: which val tokens the points scored.
    """
    def where(stem):
        files = figures.get(stem) or []
        pdf = next((Path(f) for f in files if str(f).endswith(".pdf")), None)
        if pdf is None or tex_dir is None:
            return f"figures/{stem}.pdf"
        return Path(os.path.relpath(pdf, tex_dir)).as_posix()

    def caption(stem):
        y, x = stem.split("_vs_")
        return f"{Y_AXES.get(y, y)} against {X_AXES.get(x, x)}"

    parts = []
    for pair in pairs:
        stems = [s for s in pair if s in figures]
        if not stems:
            continue
        panels = "\\hfill\n".join(f"\\begin{{minipage}}[t]{{0.49\\linewidth}}\n\\centering\n"
                                  f"\\includegraphics[width=\\linewidth]{{{where(s)}}}\n\\end{{minipage}}\n"
                                  for s in stems)
        which = ["Left", "right"] if len(stems) == 2 else ["Shown"]
        cap = "; ".join(f"{w}: {caption(s)}" for w, s in zip(which, stems))
        parts.append(f"\\begin{{figure}}[!htb]\n\\centering\n{panels}\\caption{{{latex_escape(cap)}. Thin lines are "
                     f"single seeds, bold lines the mean of each group."
                     + (f" {latex_escape(note[0].upper() + note[1:])}." if note else "")
                     + f"}}\\label{{fig:{stems[0].replace('_', '-')}}}\n\\end{{figure}}\n")
    for stem in [s for s in figures if s.startswith("diff_") and s != "skipped"]:
        metric = stem[len("diff_"):]
        parts.append(f"\\begin{{figure}}[!htb]\n\\centering\n\\includegraphics[width=0.6\\linewidth]{{{where(stem)}}}\n"
                     f"\\caption{{{latex_escape(metric_label(metric))}: each arm's mean minus "
                     f"{latex_escape(baseline or 'the baseline')}'s over seeds, with its 95\\% Welch interval "
                     f"(thick) and a seeded bootstrap interval ({stats.BOOTSTRAP_RESAMPLES:,} resamples, thin). An interval "
                     f"that excludes 0 is a difference the seeds support."
                     + (f" {latex_escape(note[0].upper() + note[1:])}." if note else "")
                     + f"}}\\label{{fig:{stem.replace('_', '-')}}}\n\\end{{figure}}\n")
    return "\n".join(parts) if parts else "% no figures were exported\n"


def fill_template(template_text: str, values: dict) -> str:
    """Replace every <<NAME>>; an unfilled or unknown placeholder is an error naming it."""
    missing = sorted(set(_PLACEHOLDER.findall(template_text)) - set(values))
    if missing:
        raise KeyError(f"placeholders without a value: {missing}; pass them to fill_paper(extra={{...}})")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template_text)


def fill_paper(out_dir, groups: dict, baseline: str, experiment: str, figures: dict | None = None,
               significance_results=(), judge_summary: dict | None = None, title: str | None = None,
               authors: str = "Anonymous", abstract: str | None = None, template=None, extra: dict | None = None,
               bench_metric="acc_norm", target_results=()) -> Path:
    """Fill notebooks/paper_template.tex with the comparison and write out_dir/paper.tex.

    Setup table from the runs' parameters, results table (per group, mean ± std), the figures
    (expected as out_dir/figures/<stem>.pdf), significance and judge sentences, and an appendix
    describing the architecture from the runs' config. Prose the data cannot write is left as
    a marked TODO for the author. `extra` overrides or adds placeholder values.
    """
    out_dir = Path(out_dir)
    template = Path(template) if template else TEMPLATE
    runs = [r for rs in groups.values() for r in rs]
    gtab = groups_table(groups, bench_metric)
    cols = default_columns(runs_table(runs, groups, bench_metric))
    sig_list = list(significance_results)
    results_text = ""
    items = [s["text"] for s in sig_list] + [t["text"] for t in target_results or ()]
    if items:
        results_text += "\\begin{itemize}\n" + "".join(f"\\item {latex_escape(t)}\n" for t in items) + "\\end{itemize}\n"
    if judge_summary and judge_summary.get("win_rate") is not None:  # None: the judge gave no valid verdict
        lo, hi = judge_summary["win_rate_ci95"]
        results_text += (f"\nAn LLM judge ({latex_escape(judge_summary.get('judge_model', ''))}) preferred "
                         f"{latex_escape(experiment)}'s continuations over {latex_escape(baseline)}'s in "
                         f"{100 * judge_summary['win_rate']:.1f}\\% of {judge_summary['n_prompts']} prompts "
                         f"(95\\% Wilson interval {100 * lo:.1f}--{100 * hi:.1f}\\%; 50\\% means no preference; "
                         f"each pair judged in both orders; ties, {judge_summary['ties']} of them, count as half"
                         + (f"; {judge_summary['invalid']} answers without a verdict are not counted"
                            if judge_summary.get("invalid") else "") + ").\n")
    diff_text = change_text(groups, baseline, experiment)
    headline = [s for s in sig_list if s.get("metric") == "val_bpb"] or sig_list
    abstract = abstract or (
        f"\\textbf{{TODO: one paragraph: the question, the method, the result.}} We compare "
        f"{latex_escape(experiment)} against {latex_escape(baseline)} ({len(groups[experiment])} and "
        f"{len(groups[baseline])} seeds). " + (latex_escape(headline[0]["text"]) if headline else ""))
    values = {
        "TITLE": latex_escape(title or f"{experiment} vs. {baseline}"),
        "AUTHORS": latex_escape(authors), "DATE": date.today().isoformat(),
        "ABSTRACT": abstract,
        "METHOD": (f"\\textbf{{TODO: describe the idea.}} The experiment changes, relative to the baseline: {diff_text}. "
                   "Everything else (data, tokenizer, evaluation) is shared."),
        "SETUP_TABLE": setup_table(groups),
        "RESULTS_TABLE": to_latex(gtab, cols, extra_keys=(), bold=significant_winners(sig_list)),
        "VAL_SPLIT": latex_escape(val_split_text(runs)),
        "BOLD_NOTE": ("Bold: significantly better than the baseline (one-sided Welch test, $p < "
                      f"{sig_list[0]['alpha']:g}$)." if significant_winners(sig_list) else
                      "Nothing is bold: no difference was significant."),
        "RUN_TABLE": to_latex(runs_table(runs, groups, bench_metric), cols),
        "RESULTS_TEXT": results_text or "No significance tests were run.",
        "FIGURES": figures_tex(figures or {}, out_dir, note=curve_split_note(runs), baseline=baseline),
        "ARCHITECTURE": architecture_text(groups),
        "REPRODUCIBILITY": reproducibility_text(runs),
        "BASELINE": latex_escape(baseline), "EXPERIMENT": latex_escape(experiment),
        "BENCH_METRIC": latex_escape(bench_metric),
    }
    values.update(extra or {})
    text = fill_template(template.read_text(encoding="utf-8"), values)
    return fileio.write_text(out_dir / "paper.tex", text)


def check_latex(text: str) -> list[str]:
    """Problems a LaTeX run would hit first: unbalanced \\begin/\\end, unbalanced braces, placeholders left."""
    problems = []
    stack = []
    for m in re.finditer(r"\\(begin|end)\{([^}]+)\}", text):
        if m.group(1) == "begin":
            stack.append(m.group(2))
        elif not stack or stack.pop() != m.group(2):
            problems.append(f"\\end{{{m.group(2)}}} without its \\begin")
    problems += [f"\\begin{{{env}}} never ended" for env in stack]
    depth = 0
    clean = re.sub(r"\\[{}%$&#_]", "", text)
    clean = "\n".join(line.split("%")[0] for line in clean.splitlines())
    for ch in clean:
        depth += ch == "{"
        depth -= ch == "}"
        if depth < 0:
            problems.append("a } closes nothing")
            depth = 0
    if depth:
        problems.append(f"{depth} unclosed {{")
    problems += [f"placeholder <<{p}>> left" for p in _PLACEHOLDER.findall(text)]
    return problems


class LatexError(RuntimeError):
    """pdflatex stopped on an error, or the PDF has undefined references."""


def latex_problems(log_text: str) -> list[str]:
    """Errors and undefined references in a pdflatex log (what a reader would see as ?? or a missing page)."""
    out = []
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("!") or re.match(r"^[^:\s]+\.tex:\d+: ", line):
            out.append(" ".join(l.strip() for l in lines[i:i + 3] if l.strip()))
        elif re.search(r"(Reference|Citation) `[^']*' on page \d+ undefined", line):
            out.append(line.strip())
    if "There were undefined references" in log_text and not any("undefined" in p for p in out):
        out.append("There were undefined references.")
    return out


def compile_pdf(tex_path, passes: int = 2, timeout: float = 120.0) -> Path:
    """pdflatex `tex_path` in its folder (`passes` times, so references resolve); returns the PDF.

    Raises LatexError with the log's errors and undefined references, FileNotFoundError when
    pdflatex is not installed (Debian: texlive-latex-recommended and lmodern).
    """
    import shutil
    import subprocess

    tex_path = Path(tex_path)
    exe = shutil.which("pdflatex")
    if exe is None:
        raise FileNotFoundError("pdflatex is not installed (Debian/Ubuntu: apt-get install texlive-latex-recommended "
                                "lmodern); or upload the folder to Overleaf")
    for _ in range(passes):
        done = subprocess.run([exe, "-interaction=nonstopmode", "-halt-on-error", "-file-line-error", tex_path.name],
                              cwd=tex_path.parent, capture_output=True, text=True, timeout=timeout,
                              errors="replace")
        if done.returncode != 0:
            break
    log = tex_path.with_suffix(".log")
    problems = latex_problems(log.read_text(errors="replace") if log.exists() else done.stdout)
    if done.returncode != 0 and not problems:
        problems = [f"pdflatex exited with {done.returncode}: " + done.stdout[-500:]]
    if problems:
        raise LatexError(f"{tex_path}: " + "; ".join(problems[:8]) + f" (log: {log})")
    return tex_path.with_suffix(".pdf")


# ---------------------------------------------------------------- interactive
def select_runs_widget(root=None):
    """An ipywidgets multi-select of the run folders under runs/ (newest first); read `.value` after choosing."""
    import ipywidgets as widgets

    dirs = find_run_dirs(root)
    return widgets.SelectMultiple(options=[(p.name, str(p)) for p in dirs], rows=min(12, max(3, len(dirs))),
                                  description="runs", layout=widgets.Layout(width="90%"))


def compare_dir(name: str) -> Path:
    """runs/compare_<name>/ (made if needed; a comparison is derived data, so re-running refreshes it)."""
    if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"comparison name {name!r}: use letters, digits, '.', '_' or '-'")
    d = paths.runs_dir() / f"compare_{name}"
    (d / "figures").mkdir(parents=True, exist_ok=True)
    return d


__all__ = ["Run", "load_run", "load_runs", "find_run_dirs", "resolve_specs", "group_runs", "group_key",
           "final_metrics", "Column", "default_columns", "runs_table", "groups_table", "to_markdown", "to_latex",
           "latex_escape", "write_tables", "mean_curve", "plot_curves", "curve_figure", "save_figure",
           "export_curves", "significance", "time_to_target", "default_target", "time_to_target_significance",
           "setup_table", "architecture_text", "fill_template", "fill_paper", "check_latex", "select_runs_widget",
           "compare_dir", "STYLE", "PALETTE", "COLUMN_WIDTH_IN", "DPI", "significant_winners", "val_split_text",
           "curve_split_note", "target_tests", "difference_figure", "export_difference", "flat_params",
           "parameter_differences", "change_text", "is_run_specific", "RUN_SPECIFIC", "compile_pdf", "latex_problems",
           "LatexError"]

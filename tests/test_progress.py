"""nbcore.progress: the launcher's live lines, 04's bar under a time budget, rounded summaries;
and what a user sees in the terminal on a tiny headless run."""
import io
import json
import os
import re

import pytest

from nbcore import compare, launch, progress, runs


# ---------------------------------------------------------------- units (fast)
def test_units_round_with_units():
    assert progress.fmt_duration(12.34) == "12.3s" and progress.fmt_duration(125) == "2m05s"
    assert progress.fmt_duration(7384) == "2h03m"
    assert progress.fmt_count(1026301952) == "1.03B" and progress.fmt_count(52_100, "tok/s") == "52.1k tok/s"
    assert progress.fmt_count(999) == "999" and progress.fmt_count(123_456_789) == "123M"
    assert progress.fmt_bytes(1026301952) == "0.96 GiB" and progress.fmt_bytes(50 * 2 ** 20) == "50.0 MiB"


def test_summary_lines_are_rounded_with_units():
    final = {"val_loss": 3.123456789, "val_bpb": 1.2345678, "val_tokens": 1_048_576, "tokens_seen": 1026301952,
             "steps": 500, "wall_seconds": 3725.4, "compile_seconds": 41.27, "peak_mem_bytes": 12_884_901_888,
             "tokens_per_s": 275_512.3, "mfu": 0.41234, "stopped_by": "max_seconds", "checkpoint": None}
    text = "\n".join(progress.summary_lines(final))
    assert "val loss 3.1235 nats/token, 1.2346 bits/byte on the whole val split (1.05M tokens)" in text
    assert "500 steps, 1.03B tokens in 1h02m of training (+ 41.3s compile/warm-up), stopped by max_seconds" in text
    assert "276k tokens/s, MFU 41.2%, peak memory 12.00 GiB" in text
    assert "1026301952" not in text and "12884901888" not in text


def _rows(run_dir, rows):
    log = runs.MetricsLog(run_dir)
    for r in rows:
        log.add(**r)


def test_printer_prints_each_validation_and_otherwise_at_most_every_30_s(tmp_path):
    now = [1000.0]
    out = io.StringIO()
    p = progress.ProgressPrinter(tmp_path, total_steps=100, gpu_hourly_price=3.6, num_gpus=2, out=out,
                                 clock=lambda: now[0])
    assert p.poll() == []  # no metrics.csv yet
    _rows(tmp_path, [{"step": 0, "tokens": 0, "val_loss": 5.0, "val_bpb": 2.0, "elapsed_s": 0.0, "val_tokens": 4096}])
    now[0] += 10
    (line,) = p.poll()
    assert line.startswith("[progress] step 0/100") and "val 5.000" in line and "bpb 2.000" in line
    _rows(tmp_path, [{"step": 0, "tokens": 0, "val_loss": 5.0, "val_bpb": 2.0, "elapsed_s": 0.0},
                     {"step": 1, "tokens": 1000, "train_loss": 4.5, "elapsed_s": 1.0},
                     {"step": 2, "tokens": 2000, "train_loss": 4.4, "elapsed_s": 2.0}])
    now[0] += 5
    assert p.poll() == []  # train rows only, 5 s after the last line: nothing
    now[0] += 30
    (line,) = p.poll()  # 35 s: one line
    assert "step 2/100" in line and "2.0%" in line and "train 4.400" in line and "val 5.000" in line
    assert "1k tok/s" in line and "elapsed 45.0s" in line
    # 45 s of 2 GPUs at $3.60/h = $0.09; ETA = 98 steps at 1 s, stretched by wall/train time (capped at 3x)
    assert line.endswith("$0.09") and "ETA 4m54s" in line
    _rows(tmp_path, [{"step": 0, "tokens": 0, "val_loss": 5.0, "val_bpb": 2.0, "elapsed_s": 0.0},
                     {"step": 10, "tokens": 10000, "train_loss": 4.0, "elapsed_s": 10.0},
                     {"step": 10, "tokens": 10000, "val_loss": 4.1, "val_bpb": 1.6, "elapsed_s": 10.0,
                      "tokens_per_s": 1000.0, "mfu": 0.25}])
    now[0] += 1
    (line,) = p.poll()  # a validation: printed at once
    assert "step 10/100" in line and "10.0%" in line and "val 4.100" in line and "MFU 25.0%" in line
    assert out.getvalue().count("[progress]") == 3


def test_a_resumed_runs_earlier_validations_are_not_news(tmp_path):
    _rows(tmp_path, [{"step": 0, "tokens": 0, "val_loss": 5.0, "val_bpb": 2.0, "elapsed_s": 0.0}])
    p = progress.ProgressPrinter(tmp_path, max_seconds=60, out=io.StringIO())
    assert p.poll() == []


def test_quiet_means_no_printer_and_the_flag_exists():
    assert progress.start_for_chapter("/tmp/x", {}, 1, quiet=True) is None
    assert launch.parse_args(["p.yaml", "--quiet"]).quiet and not launch.parse_args(["p.yaml"]).quiet


def test_time_budget_bar_has_a_total_percent_and_eta():
    secs = [0.0]
    buf = io.StringIO()
    bar = progress.training_bar(0, 10.0, 0, seconds=lambda: secs[0], file=buf, mininterval=0, ascii=True)
    for _ in range(4):
        secs[0] += 2.5
        bar.update(1)
    bar.close()
    text = buf.getvalue()
    assert bar.total == 10.0 and bar.n == 10.0 and "100%" in text and "10/10 s" in text and "step 4" in text
    steps = progress.training_bar(20, 10.0, 5, seconds=lambda: 0.0, file=io.StringIO())
    assert steps.total == 20 and steps.n == 5 and steps.unit == "step"
    with pytest.raises(ValueError, match="seconds="):
        progress.training_bar(0, 10.0, 0)


# ---------------------------------------------------------------- what the terminal shows (a tiny run)
# a stand-in for wandb on the launcher's path: it writes each call to $FAKE_TRACKER_LOG
FAKE_WANDB = '''import json, os, time
from pathlib import Path


class _Run:
    summary = {}


def _note(*call):
    with open(os.environ["FAKE_TRACKER_LOG"], "a") as f:
        f.write(json.dumps([time.time(), *call]) + "\\n")


def init(**kwargs):
    global _dir
    _dir = Path(kwargs["config"]["run_dir"])
    _note("init", kwargs)
    return _Run()


def log(values, step=None):
    _note("log", step, values, (_dir / "summary.json").exists())  # did the run still train then?


def finish():
    _note("finish", dict(_Run.summary))
'''


@pytest.mark.slow
def test_launcher_terminal_shows_progress_and_no_kernel_warnings(tmp_path, tiny_data, runs_dir):
    y = _flat_yaml(tmp_path, tiny_data, num_steps=0, max_seconds=4.0, val_interval=20, gpu_hourly_price=3.6)
    fake = tmp_path / "fake" / "wandb"  # and --tracker wandb streams the same rows to "W&B" as it trains
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_WANDB)
    calls_file = tmp_path / "calls.jsonl"
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(fake.parent), os.environ.get("PYTHONPATH")])),
           "FAKE_TRACKER_LOG": str(calls_file), "NBCORE_TRACKER_POLL_S": "0.2"}
    p = _launch(y, "-p", "name", "live", "--tracker", "wandb", "--tracker-project", "q1", env=env)
    out, err = p.stdout, p.stderr
    print(out)
    assert "without encryption" not in out + err and "Kernel is running" not in out + err
    lines = [ln for ln in out.splitlines() if ln.startswith("[progress]")]
    assert len(lines) >= 2, out
    assert lines[0].startswith("[progress] step 0 ") and "val " in lines[0]  # before any training: no train loss yet
    for ln in lines[1:]:
        for part in ("step ", "%", "train ", "val ", "bpb ", "tok/s", "elapsed ", "$"):
            assert part in ln, (part, ln)
    assert "100.0%" in lines[-1] and "ETA 0s" in lines[-1]
    assert float(re.search(r"\$(\d+\.\d\d)$", lines[-1]).group(1)) > 0  # $3.60/h for the seconds it ran
    (run,) = runs_dir.glob("*_live")
    s = json.loads((run / "summary.json").read_text())["final"]
    assert f"val {s['val_loss']:.3f}" in lines[-1] and f"bpb {s['val_bpb']:.3f}" in lines[-1]
    assert f"(on {progress.fmt_count(s['val_tokens'])} val tokens)" in lines[-1]  # not the interval ones' 2048
    assert all("val tokens)" not in ln for ln in lines[:-1])
    # 04's last validation scored the whole val split; the interval ones val_tokens; the table shows the curve's end
    rows = [r for r in runs.read_metrics(run) if r["val_loss"] is not None]
    assert s["val_split"] == "whole" and rows[-1]["val_tokens"] == s["val_tokens"] > 2048
    assert all(r["val_tokens"] == 2048 for r in rows[:-1])
    r = compare.load_run(run)
    assert compare.final_metrics(r)["val_bpb"] == r.curve("val_bpb", "step")[1][-1] == s["val_bpb"]
    # the tracker got 04's parameters and every metrics row in order, the first ones while it still trained
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
    kinds = [c[1] for c in calls]
    assert kinds[0] == "init" and kinds[-1] == "finish" and set(kinds[1:-1]) == {"log"}
    init = calls[0][2]
    assert (init["project"], init["name"], init["id"], init["resume"]) == ("q1", run.name, run.name, "allow")
    assert init["config"]["max_seconds"] == 4.0 and init["config"]["run_dir"] == str(run)
    all_rows = [(r["step"], {k: v for k, v in r.items() if v is not None and k != "step"})
                for r in runs.read_metrics(run)]
    logged = [(c[2], c[3]) for c in calls if c[1] == "log"]
    # every row, in order; the last validation may go twice: first on val_tokens, then replaced by the
    # whole split's (the later values of a step win in W&B)
    assert logged[:len(all_rows) - 1] == all_rows[:-1] and logged[-1] == all_rows[-1]
    assert not calls[1][4]  # the first rows went while 04 was still training (no summary.json yet)
    assert calls[-1][2]["final/val_loss"] == s["val_loss"]
    # launch.json keeps the tracker, so `--resume RUN` alone streams to the same one
    assert launch.recorded_tracker(run) == {"kind": "wandb", "project": "q1", "group": None}
    # inside the notebook: the bar runs over the time budget, the summary is rounded with units
    nb = json.loads((run / "04_train.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert re.search(r"100%\|.*\| 4/4 s", text), text[-2000:]
    assert "on the whole val split (" in text and " tokens in " in text and "s of training" in text


from test_train import _flat_yaml, _launch, tiny_data  # noqa: E402,F401  (the tiny data fixture and helpers)


@pytest.mark.slow
def test_log_output_streams_the_notebook_and_kernel_warnings_stay_away(tmp_path):
    """notebooks.execute(log_output=True), as `launch --log-output` calls it: cell output reaches stdout."""
    import subprocess
    import sys

    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x = 1")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("print('hello from the kernel', x)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "t.ipynb")
    code = (f"from nbcore import notebooks; notebooks.execute({str(tmp_path / 't.ipynb')!r}, "
            f"{str(tmp_path / 'out.ipynb')!r}, {{'x': 5}}, log_output=True)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "hello from the kernel 5" in p.stdout
    assert "without encryption" not in p.stdout + p.stderr

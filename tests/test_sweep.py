"""Sweeps (variants x seeds, kill and restart), the forecast (--plan) and SkyPilot task files (--emit).

The slow test runs a real sweep of tiny CPU runs through the launcher: 3 variants x 2 seeds (one
variant fails on purpose), killed after its first run and started again with 2 runs at a time.
"""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nbcore import forecast, launch, sweep
from nbcore.params import ParameterError

REPO = Path(__file__).resolve().parents[1]
SHIPPED_SETS = sorted((REPO / "papermill_params").glob("*.yaml"))
SHIPPED_SWEEPS = sorted((REPO / "papermill_params" / "sweeps").glob("*.yaml"))
TRAIN = dict(num_layers=2, num_heads=2, model_dim=32, seq_len=64, batch_size=4, num_steps=40, val_interval=0,
             val_tokens=2048, sample_tokens=0, live_plot=False, checkpoint_interval=0)


def _tiny_set(root: Path) -> Path:
    """01 -> 02 -> 04 on a ~200 kB text the test writes (Python's pydoc topics)."""
    from pydoc_data.topics import topics

    text = root / "text.txt"
    text.write_text("\n\n".join(topics[k] for k in sorted(topics))[:200_000])
    plan = {"name": "tiny", "vars": {"text": str(text)}, "chapters": [
        {"notebook": "01_tokenizer", "parameters": {"corpus": "local:${text}", "sample_chars": "${text_chars*0.9}",
                                                    "heldout_chars": 20000, "vocab_size": 300, "name": "tiny",
                                                    "workers": 1}},
        {"notebook": "02_data", "parameters": {"corpus": "local:${text}", "val_fraction": 0.1, "shard_size": 40000,
                                               "num_shards": 2, "workers": 1, "txt_split": "file"}},
        {"notebook": "04_train", "parameters": dict(TRAIN)}]}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def _sweep_file(root: Path, variants=None, **extra) -> Path:
    _tiny_set(root)
    sw = {"sweep": "tsw", "parameter_set": "tiny.yaml",
          "variants": variants or [{"name": "base"}, {"name": "nox0", "parameters": {"model_options.x0_mix": False}}],
          "seeds": [0, 1], "compare": {"use_judge": False}, **extra}
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(sw, sort_keys=False))
    return path


# ---------------------------------------------------------------- the sweep file (fast)
def test_sweep_plans_nested_keys_seeds_and_names(tmp_path):
    sw = sweep.load_sweep(_sweep_file(tmp_path, parameters={"num_steps": 7}))
    plans = sweep.run_plans(sw)
    assert [e["run"] for e in plans] == ["tsw-base_seed0", "tsw-base_seed1", "tsw-nox0_seed0", "tsw-nox0_seed1"]
    by = {e["run"]: {launch.chapter_id(c["notebook"]): c["parameters"] for c in e["plan"]["chapters"]} for e in plans}
    assert by["tsw-nox0_seed1"]["04"]["model_options"] == {"x0_mix": False}
    assert "model_options" not in by["tsw-base_seed0"]["04"]
    assert by["tsw-nox0_seed1"]["04"]["seed"] == 1 and by["tsw-nox0_seed1"]["04"]["num_steps"] == 7
    assert "seed" not in by["tsw-nox0_seed1"]["02"]  # the seed is the training chapter's: shards are shared
    assert len({e["data"] for e in plans}) == 1 and len({e["key"] for e in plans}) == 4
    # a dotted key merges into the dict the set already gives
    (tmp_path / "b").mkdir()
    sw2 = sweep.load_sweep(_sweep_file(tmp_path / "b", parameters={"model_options": {"softcap": 0.0}}))
    opts = sweep.run_plans(sw2)[3]["plan"]["chapters"][2]["parameters"]["model_options"]
    assert opts == {"softcap": 0.0, "x0_mix": False}


@pytest.mark.parametrize("change, message", [
    ({"seedz": [0]}, "did you mean 'seeds'"),
    ({"variants": [{"name": "a_b"}]}, "no '_'"),
    ({"variants": [{"name": "a"}, {"name": "a"}]}, "two variants are named 'a'"),
    ({"variants": [{"name": "a", "parameters": {"num_step": 3}}]}, "Did you mean 'num_steps'"),
    ({"variants": [{"name": "a", "parameters": {"model_option.x0_mix": False}}]}, "Did you mean 'model_options'"),
    ({"seeds": [0, 0]}, "distinct integers"),
    ({"baseline": "nope"}, "baseline 'nope' is not a variant"),
    ({"compare": {"alpah": 0.1}}, "did you mean 'alpha'"),
])
def test_sweep_file_errors_say_what_to_change(tmp_path, change, message):
    base = yaml.safe_load(_sweep_file(tmp_path).read_text())
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({**base, **change}))
    with pytest.raises((sweep.SweepError, ParameterError), match=message):
        sweep.run_plans(sweep.load_sweep(tmp_path / "sweep.yaml"))


def test_device_slices_split_the_visible_gpus():
    assert sweep.device_slices(4, 2, visible="0,1,2,3,4,5,6,7") == ["0,1", "2,3", "4,5", "6,7"]
    assert sweep.device_slices(8, 2, visible="3,5,6") == ["3,5"]          # only one slice of 2 fits
    assert sweep.device_slices(2, 1, visible="", count=0) == [None, None]  # CPU: runs share the cores
    with pytest.raises(sweep.SweepError, match="only 1 are visible"):
        sweep.device_slices(1, 2, visible="0")


# ---------------------------------------------------------------- the forecast (fast)
@pytest.mark.parametrize("path", SHIPPED_SETS + SHIPPED_SWEEPS, ids=lambda p: p.name)
def test_plan_forecasts_every_shipped_set_and_sweep(path):
    f = forecast.forecast(path, "H100", gpus=8, price=2.5)
    text = forecast.format_forecast(f)
    assert f["runs"] and all(r["num_params"] > 0 and r["tokens"] > 0 and r["seconds"] > 0 for r in f["runs"])
    assert f["total"]["dollars"] == pytest.approx(sum(r["seconds"] for r in f["runs"]) / 3600 * 2.5 * 8)
    assert "8 x H100-SXM" in text and "assumed MFU 35%" in text and "total (" in text


def test_forecast_arithmetic_memory_and_cards(tmp_path):
    plan = launch.load_plan(REPO / "papermill_params" / "speedrun_8xh100.yaml")
    r = forecast.forecast_run(plan, "H100-SXM", 8, price=3.0, rows=[])
    assert r["tokens"] == 1770 * 8 * 24 * 2048 and r["train_flops"] == r["tokens"] * r["flops_per_token"]
    assert r["train_seconds"] == pytest.approx(r["train_flops"] / (989e12 * 0.35 * 8))
    assert r["dollars"] == pytest.approx(r["seconds"] / 3600 * 3.0 * 8) and r["fits"]
    assert not forecast.forecast_run(plan, "T4", 8, rows=[])["fits"]  # B=24 at T=2048 is far over 16 GB
    auto = forecast.forecast_run(launch.load_plan(REPO / "papermill_params" / "xs_1x8gb.yaml"), "L4", 1, rows=[])
    assert auto["batch_from"] == "auto" and auto["fits"] and auto["batch_size"] >= 1
    step_s = auto["tokens_per_step"] * auto["flops_per_token"] / (121e12 * 0.35)  # a time budget: 3 h, to one step
    assert auto["stops_by"] == "max_seconds" and 10800 <= auto["train_seconds"] < 10800 + step_s
    # a measured row wins over peak x MFU, and the output says so
    row = {"card": "H100-SXM", "commit": "abc1234", "date": "2026-12-01", "flops_per_s_per_device": 400e12,
           "num_params": r["num_params"], "source": "gpucheck"}
    m = forecast.forecast_run(plan, "H100-SXM", 8, rows=[row])
    assert m["train_seconds"] == pytest.approx(r["train_flops"] / (400e12 * 8))
    assert m["time_from"].startswith("measured") and "abc1234" in m["time_from"]
    for name, key in (("h100", "H100-SXM"), ("A100 40GB", "A100-40GB"), ("rtx-4090", "RTX4090"), ("M2 Max", "M2-MAX"),
                      ("3090", "RTX3090"), ("H100 PCIe", "H100-PCIE"), ("t4", "T4"), ("a10g", "A10G")):
        assert forecast.card(name) == key
    with pytest.raises(forecast.ForecastError, match="did you mean 'H200'"):
        forecast.card("H2000")
    assert forecast.card_of_device("NVIDIA H100 80GB HBM3") == "H100-SXM"
    assert forecast.card_of_device("NVIDIA A100-SXM4-40GB") == "A100-40GB"


def test_plan_command_prints_the_forecast(tmp_path):
    p = subprocess.run([sys.executable, "-m", "nbcore.launch", str(SHIPPED_SWEEPS[0]), "--plan", "--gpu", "H100",
                        "--gpus", "8", "--price", "2.5"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert lines[0].startswith("forecast: sweep") and "at $2.50 per GPU-hour" in lines[0]
    assert "time from: peak 989 TFLOP/s x assumed MFU 35%" in p.stdout
    assert sum(1 for ln in lines if "_seed" in ln) == len(sweep.run_plans(sweep.load_sweep(SHIPPED_SWEEPS[0]),
                                                                          check=False))


# ---------------------------------------------------------------- SkyPilot (fast; parsing needs the extra)
def test_emit_skypilot_tasks_parse_with_skypilot(tmp_path):
    from nbcore import skypilot

    written = []
    for path in SHIPPED_SETS:
        extra = {"text_path": "data/input.txt"} if "text_path" in launch.load_plan(path)["vars"] else {}
        written += skypilot.emit(path, tmp_path / "sets", "A100-80GB", gpus=None, bucket="s3://my-runs", spot=True,
                                 overrides=extra)
    for path in SHIPPED_SWEEPS:
        extra = {"text_path": "data/input.txt"} if "shakespeare" in path.name else {}
        written += skypilot.emit(path, tmp_path / "sweeps", "H100", gpus=1, volume="runs-vol", overrides=extra,
                                 parallel=8)
    multi = skypilot.emit(SHIPPED_SETS[0], tmp_path / "multi", "L4", gpus=4, bucket="gs://b", nodes=2)[0]
    assert len(written) == len(SHIPPED_SETS) + len(SHIPPED_SWEEPS)
    xs = yaml.safe_load((tmp_path / "sets" / "xs.yaml").read_text())
    assert xs["resources"]["accelerators"] == "A100-80GB:1" and xs["resources"]["use_spot"] is True
    assert xs["file_mounts"] == {skypilot.MOUNT: {"source": "s3://my-runs", "mode": "MOUNT_CACHED"}}
    assert "conda env create -n nbcore -f environment.yml" in xs["setup"]
    assert "python -m nbcore.launch papermill_params/xs_1x8gb.yaml --nproc $NPROC $RESUME $MULTI" in xs["run"]
    assert "/checkpoints/step_*.pt" in xs["run"] and xs["workdir"] == str(REPO)
    sw = yaml.safe_load((tmp_path / "sweeps" / "x0mix.yaml").read_text())
    assert sw["volumes"] == {skypilot.MOUNT: "runs-vol"} and sw["resources"]["accelerators"] == "H100:8"
    assert "papermill_params/sweeps/x0_mix_xs.yaml --parallel 8 --nproc 1 $MULTI" in sw["run"]
    m = yaml.safe_load(multi.read_text())
    assert m["num_nodes"] == 2 and "--rdzv-endpoint $HEAD:29400" in m["run"] and "SKYPILOT_NODE_RANK" in m["run"]
    with pytest.raises(skypilot.EmitError, match="exactly one"):
        skypilot.emit(SHIPPED_SETS[0], tmp_path / "x", "H100")
    # SkyPilot's own parser, offline: in this environment (the skypilot extra) or in its own one,
    # named by $NBCORE_SKYPILOT_PYTHON (.ci/run makes .venv-sky: skypilot pins click<8.2, which the
    # test extra's huggingface-hub refuses); CI sets NBCORE_REQUIRE_SKYPILOT, so there a skip fails
    python = os.environ.get("NBCORE_SKYPILOT_PYTHON")
    if not python and importlib.util.find_spec("sky") is None:
        if os.environ.get("NBCORE_REQUIRE_SKYPILOT"):
            pytest.fail("NBCORE_REQUIRE_SKYPILOT is set but skypilot is not installed here and "
                        "NBCORE_SKYPILOT_PYTHON names no interpreter that has it")
        pytest.skip("skypilot is an optional extra: pip install -e '.[skypilot]', or set NBCORE_SKYPILOT_PYTHON")
    parsed = skypilot.parse_with_skypilot(written + [multi], python=python)
    assert [p["path"] for p in parsed] == [str(p) for p in written + [multi]]
    for task in parsed:
        assert task["run"] and task["setup"] and task["envs"]["NBCORE_RUNS"] == skypilot.MOUNT
        assert task["workdir"] == str(REPO)
    by_name = {t["name"]: t for t in parsed}
    assert by_name["nbcore-xs"]["num_nodes"] == 1 and by_name["nbcore-xs"]["accelerators"] == [{"A100-80GB": 1}]
    assert by_name["nbcore-xs"]["use_spot"] == [True] and by_name["nbcore-sweep-x0mix"]["accelerators"] == [{"H100": 8}]
    assert parsed[-1]["num_nodes"] == 2 and parsed[-1]["accelerators"] == [{"L4": 4}]
    bad = tmp_path / "bad.yaml"
    bad.write_text("resources:\n  accelerators: H100:8\nnot_a_field: 1\nrun: echo\n")
    with pytest.raises(RuntimeError, match="not_a_field"):  # the parser is strict: a wrong field fails
        skypilot.parse_with_skypilot([bad], python=python)


# ---------------------------------------------------------------- a real sweep, killed and restarted (slow)
def _state(runs_dir):
    p = runs_dir / "sweep_tsw" / "state.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_sweep_kill_restart_skips_finished_reports_failure_and_compares(tmp_path, runs_dir):
    y = _sweep_file(tmp_path, variants=[{"name": "base"}, {"name": "nox0", "parameters": {"model_options.x0_mix": False}},
                                        {"name": "bad", "parameters": {"num_heads": 3}}])
    env = dict(os.environ, NBCORE_RUNS=str(runs_dir), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "nbcore.launch", str(y)]
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.time() + 400
    try:
        while time.time() < deadline:
            st = _state(runs_dir)
            if st and st["runs"].get("tsw-base_seed0", {}).get("status") == "done":
                break
            assert first.poll() is None, "the sweep ended before its first run finished"
            time.sleep(0.2)
        else:
            pytest.fail("the first run did not finish in time")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the launcher and every run it started
        first.wait()
    done_dir = _state(runs_dir)["runs"]["tsw-base_seed0"]["run_dir"]
    time.sleep(2)  # the killed run's kernel notices its parent is gone
    p = subprocess.run(cmd + ["--parallel", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out[-4000:]  # the bad variant failed, so the launcher says so
    assert "tsw-base_seed0: finished before with the same parameters, skipped" in out
    st = _state(runs_dir)
    status = {n: e["status"] for n, e in st["runs"].items()}
    assert status == {"tsw-base_seed0": "done", "tsw-base_seed1": "done", "tsw-nox0_seed0": "done",
                      "tsw-nox0_seed1": "done", "tsw-bad_seed0": "failed", "tsw-bad_seed1": "failed"}, out[-4000:]
    assert "num_heads (3) must divide model_dim (32)" in st["runs"]["tsw-bad_seed0"]["error"]
    assert "tsw-bad_seed0: FAILED" in out and "num_heads (3) must divide model_dim (32)" in out
    first_run = st["runs"]["tsw-base_seed0"]
    assert first_run["run_dir"] == done_dir and len(first_run["attempts"]) == 1
    assert sorted(p.name for p in Path(done_dir).glob("04_train*.ipynb")) == ["04_train.ipynb"]
    # tokenizer and shards built once, by the first run; every other run reused them
    assert len(list((runs_dir / "tokenizers").iterdir())) == 1 and len(list((runs_dir / "shards").iterdir())) == 1
    for name in ("tsw-base_seed1", "tsw-nox0_seed0", "tsw-nox0_seed1"):
        ch = json.loads((Path(st["runs"][name]["run_dir"]) / "launch.json").read_text())["launches"][-1]["chapters"]
        assert ch[0]["status"].startswith("reused") and ch[1]["status"].startswith("reused")
        assert ch[2]["parameters"]["seed"] == int(name[-1])
    # the sweep folder: the file as launched, its state, one plan per run, and 06's comparison
    folder = runs_dir / "sweep_tsw"
    assert (folder / "sweep.yaml").read_text() == y.read_text()
    assert len(list((folder / "plans").glob("*.yaml"))) == 6
    groups = (folder / "compare" / "nox0_vs_base" / "results_groups.md").read_text()
    assert "| tsw-nox0 | 2 |" in groups and "| tsw-base | 2 |" in groups
    assert f"comparison nox0_vs_base: {folder / 'compare' / 'nox0_vs_base'}" in out
    assert st["comparisons"]["bad_vs_base"]["status"].startswith("skipped: no finished run of bad")
    # the forecast of a CPU run made here: measured from one run, checked against another that ran beside it
    table = tmp_path / "throughput.json"
    rows = []
    a, b = (Path(st["runs"][n]["run_dir"]) for n in ("tsw-base_seed1", "tsw-nox0_seed0"))  # ran at the same time
    rows.append(forecast.add_row(forecast.row_from_run(a), table))
    plan = launch.load_plan(folder / "plans" / "tsw-nox0_seed0.yaml")
    predicted = forecast.forecast_run(plan, "CPU", 1, rows=rows)
    measured = json.loads((b / "summary.json").read_text())["final"]["wall_seconds"]
    assert predicted["time_from"].startswith("measured") and predicted["tokens"] == 40 * 4 * 64
    print(f"forecast {predicted['train_seconds']:.2f} s, measured {measured:.2f} s")
    # the arithmetic: run a's measured FLOP rate turned into seconds for the plan's tokens and FLOPs per token
    fpt_plan = json.loads((b / "summary.json").read_text())["flops_per_token"]
    by_hand = predicted["tokens"] * fpt_plan / rows[0]["flops_per_s_per_device"]
    assert predicted["train_seconds"] == pytest.approx(by_hand, rel=0.01)
    # and the run beside it agrees within a factor of 2 (both are wall times on a shared CPU, so not tighter)
    assert 0.5 < predicted["train_seconds"] / measured < 2, (predicted["train_seconds"], measured)


# ---------------------------------------------------------------- optional trackers (fast)
def _fake_tracker(calls):
    import types

    run = types.SimpleNamespace(summary={})
    return types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or run,
                                 log=lambda values, step=None: calls.append(("log", step, values)),
                                 finish=lambda: calls.append(("finish", dict(run.summary))))


def _lines_to(lines):
    import types

    return types.SimpleNamespace(write=lines.append, flush=lambda: None)


def test_tracker_is_optional_and_logs_every_metrics_row(tmp_path, monkeypatch):
    from nbcore import runs, tracker

    run = tmp_path / "20260101_000000_tsw-base_seed0"
    log = runs.MetricsLog(run)
    log.add(step=0, tokens=0, val_loss=5.0, elapsed_s=0.0)
    log.add(step=1, tokens=256, train_loss=4.5, lr=0.01, elapsed_s=0.5)
    (run / "summary.json").write_text(json.dumps({"parameters": {"seed": 0}, "final": {"val_loss": 4.0}}))
    calls = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_tracker(calls))
    assert tracker.log_run(run, "wandb", "proj", group="tsw-base") == 2
    assert calls[0] == ("init", {"project": "proj", "name": run.name, "id": run.name, "resume": "allow",
                                 "group": "tsw-base", "config": {"seed": 0, "run_dir": str(run)}})
    assert calls[1] == ("log", 0, {"tokens": 0, "val_loss": 5.0, "elapsed_s": 0.0})
    assert calls[-1] == ("finish", {"final/val_loss": 4.0})
    calls.clear()
    assert tracker.log_run(run, "wandb", "proj") == 0  # tracker.json: every row went already
    monkeypatch.setitem(sys.modules, "trackio", None)  # not installed: a clear message before any run
    with pytest.raises(sweep.SweepError, match="trackio package is not installed: pip install trackio"):
        sweep.load_sweep(_sweep_file(tmp_path, tracker="trackio"))
    with pytest.raises(sweep.SweepError, match="use 'wandb' or 'trackio'"):
        sweep.load_sweep(_sweep_file(tmp_path, tracker="tensorboard"))


def test_live_tracker_sends_each_row_once_across_a_resume(tmp_path, monkeypatch):
    from nbcore import runs, tracker

    run = tmp_path / "20260101_000000_live"
    calls = []
    monkeypatch.setitem(sys.modules, "trackio", _fake_tracker(calls))
    live = tracker.LiveRun(run, "trackio", "proj", config={"seed": 1})
    assert live.poll() == 0 and calls == []  # nothing to send yet: no tracker run is started
    log = runs.MetricsLog(run)
    log.add(step=0, val_loss=5.0)
    log.add(step=2, train_loss=4.0)
    assert live.poll() == 2
    log.add(step=2, val_loss=4.1)  # a second row at the same step (the validation after the train row)
    log.add(step=4, train_loss=3.5)
    assert live.poll() == 2 and live.poll() == 0
    assert live.finish() == 4
    assert [c[1] for c in calls if c[0] == "log"] == [0, 2, 2, 4]
    assert calls[0][1]["resume"] == "allow" and "id" not in calls[0][1]  # trackio resumes by name
    # the run stopped; its checkpoint was at step 2, so the resume cuts the step-4 row and trains it again
    calls.clear()
    log = runs.MetricsLog(run, resume_step=2)
    log.flush()
    again = tracker.LiveRun(run, "trackio", "proj")
    log.add(step=4, train_loss=3.4)
    log.add(step=6, train_loss=3.0)
    assert again.finish() == 2  # steps 0 and 2 are not sent again; step 4's new row replaces the old one
    assert [c for c in calls if c[0] == "log"] == [("log", 4, {"train_loss": 3.4}), ("log", 6, {"train_loss": 3.0})]
    calls.clear()
    log.add(step=6, train_loss=3.0)  # the same row again (as after a resume at step 6): not sent twice
    assert tracker.LiveRun(run, "trackio", "proj").finish() == 0 and calls == []

    # a failing tracker stops logging with one line; it never raises into the run
    def offline(values, step=None):
        raise ConnectionError("offline")

    monkeypatch.setattr(sys.modules["trackio"], "log", offline)
    log.add(step=8, train_loss=2.9)
    lines = []
    bad = tracker.LiveRun(run, "trackio", "proj", out=_lines_to(lines))
    assert bad.poll() == 0 and bad.failed == "ConnectionError: offline"
    assert "trackio logging stopped (ConnectionError: offline); the run folder is the record" in "".join(lines)
    assert bad.finish() == 0

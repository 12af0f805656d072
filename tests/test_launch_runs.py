"""Runs that survive what rented GPUs do to them: signals, kill -9, two launches on one run folder,
and parameters that mean what they say. The launcher runs as a subprocess in its own process
group, as a terminal or a cloud VM runs it; the model is tiny and trains for a few dozen steps.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nbcore import checkpoint, launch, runs
from nbcore.params import ParameterError

REPO = Path(__file__).resolve().parents[1]
TINY = dict(num_layers=2, num_heads=2, model_dim=32, seq_len=64, batch_size=4, val_interval=0, val_tokens=2048,
            sample_tokens=0, live_plot=False, model_options={"zero_init": False})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """{'text', 'tokenizer', 'shards'}: 300 kB of Python's docs, a 300-token BPE, 3 train shards (~2 s)."""
    from pydoc_data.topics import topics

    from nbcore.shards import make_shards
    from nbcore.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("launch_data")
    text = "\n\n".join(topics[k] for k in sorted(topics))[:300_000]
    (root / "text.txt").write_text(text)
    train_bpe([text[:270_000]], 300, name="tiny", workers=1).save(root / "tok")
    make_shards(f"local:{root / 'text.txt'}", root / "tok", root / "shards", shard_size=40_000, num_shards=3,
                val_fraction=0.1, workers=1, progress=False, corpus_options={"split": "blank_lines"})
    return {"text": root / "text.txt", "tokenizer": root / "tok", "shards": root / "shards"}


def _flat(tmp_path, data, **extra) -> Path:
    p = dict(TINY, data_dir=str(data["shards"]), name="flat", **extra)
    path = tmp_path / "flat.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def _start(*args, cwd=REPO) -> subprocess.Popen:
    """The launcher in its own session: its process group is what a terminal's Ctrl-C reaches."""
    return subprocess.Popen([sys.executable, "-m", "nbcore.launch", *map(str, args)], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _run(*args, cwd=REPO, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbcore.launch", *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _wait_for(cond, proc=None, timeout=240, what="condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"launcher ended ({proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _one_run(runs_dir, name):
    found = list(runs_dir.glob(f"*_{name}"))
    return found[0] if found else None


def _train_rows(run):
    return [(r["step"], r["train_loss"]) for r in runs.read_metrics(run) if r["train_loss"] is not None]


def _descendants(pid: int) -> set[int]:
    children = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# ---------------------------------------------------------------- signals (items 1 and 2)
linux = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process groups and /proc (Linux)")


@linux
@pytest.mark.slow
# each signal once and each rank count once: the launcher forwards both signals by one path, and the
# kernels handle SIGINT and SIGTERM alike (tests/test_train.py also stops a 1-rank kernel by SIGINT)
@pytest.mark.parametrize("signame, nproc", [("SIGINT", 1), ("SIGTERM", 2)])
def test_signal_to_the_launchers_group_ends_in_a_checkpoint_and_a_resume_command(tmp_path, data, runs_dir,
                                                                                 signame, nproc):
    """Ctrl-C (SIGINT to the terminal's process group) and preemption (SIGTERM) during training."""
    y = _flat(tmp_path, data, num_steps=100000, checkpoint_interval=0)
    name = f"{signame.lower()}{nproc}"
    p = _start(y, "--nproc", nproc, "-p", "name", name)
    _wait_for(lambda: (r := _one_run(runs_dir, name)) and len(_train_rows(r)) >= 3, p, what="3 training steps")
    os.killpg(p.pid, getattr(signal, signame))
    out, err = p.communicate(timeout=240)
    run = _one_run(runs_dir, name)
    assert p.returncode == 128 + getattr(signal, signame), err[-3000:]
    final = json.loads((run / "summary.json").read_text())["final"]
    assert final["stopped_by"] == "interrupt" and final["stop_reason"] == signame
    (ckpt,) = checkpoint.list_checkpoints(run)
    assert checkpoint.read(ckpt)["step"] == final["steps"] >= 3
    assert f"interrupted by {signame}" in err and f"python -m nbcore.launch --resume {run}" in err
    entry = json.loads((run / "launch.json").read_text())["launches"][0]["chapters"][0]
    assert entry["status"] == f"interrupted ({signame})"
    assert not (run / launch.STOP_FILE).exists()  # a later resume is not stopped by this one's request


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """An uninterrupted 2-rank run of 16 steps (checkpoints every 2): the curve to match."""
    root = tmp_path_factory.mktemp("reference")
    os.environ["NBCORE_RUNS"], old = str(root / "runs"), os.environ["NBCORE_RUNS"]
    try:
        y = _flat(root, data, num_steps=16, checkpoint_interval=2)
        p = _run(y, "--nproc", 2, "-p", "name", "ref")
        assert p.returncode == 0, p.stderr[-3000:]
        return _one_run(root / "runs", "ref")
    finally:
        os.environ["NBCORE_RUNS"] = old


@linux
@pytest.mark.slow
def test_kill_9_then_resume_alone_matches_an_uninterrupted_run_and_a_second_resume_is_refused(
        tmp_path, data, runs_dir, reference):
    y = _flat(tmp_path, data, num_steps=16, checkpoint_interval=2)
    p = _start(y, "--nproc", 2, "-p", "name", "killed")
    _wait_for(lambda: (r := _one_run(runs_dir, "killed")) and checkpoint.checkpoint_path(r, 4).exists(), p,
              what="the step-4 checkpoint")
    family = _descendants(p.pid)
    os.kill(p.pid, signal.SIGKILL)  # the launcher alone: torchrun, the rank workers and kernels must follow
    p.wait()
    run = _one_run(runs_dir, "killed")
    assert not (run / "summary.json").exists(), "the run ended before the kill: the test proves nothing"
    _wait_for(lambda: not any(_alive(q) for q in family), timeout=20, what="the ranks to exit with the launcher")
    assert not (run / "summary.json").exists()  # no orphan trained on to the end

    first = _start("--resume", run)  # no parameter set: launch.json holds the plan
    _wait_for(lambda: f"pid {first.pid} " in (run / ".lock").read_text(), first, what="the first resume's lock")
    second = _run("--resume", run, timeout=120)
    assert second.returncode == 1 and "is in use" in second.stderr and f"pid {first.pid}" in second.stderr
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert _train_rows(run) == _train_rows(reference)  # bit for bit
    val = lambda r: [(x["step"], x["val_loss"]) for x in runs.read_metrics(r) if x["val_loss"] is not None]  # noqa
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["steps"] == 16 and summary["resumed_from"]
    resumed_at = int(Path(summary["resumed_from"]).stem.split("_")[1])  # (since rotated away: keep_checkpoints)
    assert [v for v in val(run) if v[0] != resumed_at] == val(reference)  # (a resume validates where it starts)
    launches = json.loads((run / "launch.json").read_text())["launches"]
    assert len(launches) == 2 and launches[1]["chapters"][0]["status"] == "ran"  # the refused one left no entry


# ---------------------------------------------------------------- failures (item 8)
@pytest.mark.slow
def test_a_failing_chapter_names_its_cell_and_copy_and_leaves_no_empty_run_folder(tmp_path, data, runs_dir):
    plan = {"name": "broken", "chapters": [
        {"notebook": "01_tokenizer", "parameters": {"corpus": f"local:{data['text']}", "vocab_size": 100,
                                                    "sample_chars": 1000, "heldout_chars": 100, "workers": 1}},
        {"notebook": "04_train", "parameters": dict(TINY, num_steps=2)}]}
    y = tmp_path / "broken.yaml"
    y.write_text(yaml.safe_dump(plan))
    p = _run(y)
    assert p.returncode == 1
    msg = p.stderr
    assert "01_tokenizer failed in cell" in msg and "Traceback" not in msg and "PapermillExecutionError" not in msg
    assert "ParameterError: vocab_size=100: must be more than 256" in msg
    copy = Path(msg.split("executed copy: ")[1].split()[0])
    assert copy.exists() and copy.name == "01_tokenizer.ipynb"
    assert [d.name for d in runs_dir.iterdir() if d.name not in ("tokenizers", "shards")] == []


def test_device_cuda_without_cuda_stops_at_once(tmp_path, data, runs_dir, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    t0 = time.time()
    assert launch.main([str(_flat(tmp_path, data, num_steps=2)), "-p", "device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "sees no CUDA GPU" in err and "-p device auto" in err
    assert time.time() - t0 < 30 and not list(runs_dir.iterdir())  # no kernel started, no run folder


# ---------------------------------------------------------------- parameters that mean what they say (items 3, 6)
def _chain(tmp_path, data) -> Path:
    plan = {"name": "chain", "vars": {"text": str(data["text"])}, "chapters": [
        {"notebook": "01_tokenizer", "parameters": {"corpus": "local:${text}", "vocab_size": 300, "workers": 1}},
        {"notebook": "02_data", "parameters": {"corpus": "local:${text}", "val_fraction": 0.1, "shard_size": 40000,
                                               "num_shards": 3, "workers": 1}},
        {"notebook": "04_train", "parameters": dict(TINY, num_steps=2)},
        {"notebook": "05_eval", "parameters": {"max_new_tokens": 4}}]}
    y = tmp_path / "chain.yaml"
    y.write_text(yaml.safe_dump(plan))
    return y


def test_each_seed_and_vocab_size_goes_only_where_it_means_the_same(tmp_path, data):
    plan = launch.load_plan(_chain(tmp_path, data))
    by = lambda p: {launch.chapter_id(c["notebook"]): c["parameters"] for c in p["chapters"]}  # noqa: E731
    p = by(launch.apply_overrides(plan, {"seed": 7, "vocab_size": 512, "device": "cpu"}))
    assert p["04"]["seed"] == 7 and "seed" not in p["02"] and "seed" not in p["05"]
    assert p["01"]["vocab_size"] == 512 and "vocab_size" not in p["04"]
    assert p["04"]["device"] == p["05"]["device"] == "cpu" and "device" not in p["01"]
    p = by(launch.apply_overrides(plan, {"data_seed": 3, "generation_seed": 5, "04_train.vocab_size": 320,
                                         "02.val_tokens": 4096}))
    assert p["02"]["data_seed"] == 3 and p["05"]["generation_seed"] == 5 and p["04"]["vocab_size"] == 320
    assert p["02"]["val_tokens"] == 4096 and p["04"]["val_tokens"] == 2048
    with pytest.raises(ParameterError, match="01_tokenizer.out_dir"):
        launch.apply_overrides(plan, {"out_dir": "x"})
    with pytest.raises(ParameterError, match="not a chapter"):
        launch.apply_overrides(plan, {"03.seed": 1})
    # runs that differ in seed read the same shards: 02's parameters, hence its folder, do not change
    a, b = (launch.resolve_chapters(launch.apply_overrides(plan, {"seed": s}), 1) for s in (1, 2))
    assert a[1]["folder"] == b[1]["folder"] and a[2]["params"]["data_dir"] == b[2]["params"]["data_dir"]


def test_every_name_shared_by_chapters_has_a_routing_decision():
    """A new parameter declared by two chapters must be listed as meaning the same, or routed."""
    from nbcore import notebooks

    seen = {}
    for nb in sorted((REPO / "notebooks").glob("0*.ipynb")):
        for n in notebooks.declared_parameters(nb):
            seen.setdefault(n, []).append(nb.stem)
    shared = {n for n, where in seen.items() if len(where) > 1}
    assert shared <= launch.SAME_MEANING | set(launch.ROUTES), shared - launch.SAME_MEANING - set(launch.ROUTES)


@pytest.mark.slow
def test_runs_differing_in_seed_share_byte_identical_val_shards(tmp_path, data, runs_dir):
    plan = {"name": "s", "chapters": [
        {"notebook": "02_data", "parameters": {"corpus": f"local:{data['text']}", "tokenizer": str(data["tokenizer"]),
                                               "val_fraction": 0.1, "shard_size": 40000, "num_shards": 2,
                                               "workers": 1, "txt_split": "blank_lines"}},
        {"notebook": "04_train", "parameters": dict(TINY, num_steps=2)}]}
    y = tmp_path / "s.yaml"
    y.write_text(yaml.safe_dump(plan))
    folders = []
    for seed in (1, 2):
        p = _run(y, "--only", "02", "-p", "seed", seed, "-p", "name", f"seed{seed}")
        assert p.returncode == 0, p.stderr[-3000:]
        entry = json.loads((_one_run(runs_dir, f"seed{seed}") / "launch.json").read_text())["launches"][0]
        folders.append(Path(entry["chapters"][1]["parameters"]["data_dir"]))
        assert entry["chapters"][1]["parameters"]["seed"] == seed
    assert folders[0] == folders[1]
    assert (folders[0] / "val_000000.bin").read_bytes() == (folders[1] / "val_000000.bin").read_bytes()


def test_parameter_files_read_values_as_the_command_line_does(tmp_path):
    # PyYAML alone (YAML 1.1) reads 007 as 7, 12:30 as 750, no/on as booleans and 1e-3 as text
    text = ("name: '007'\nchapters:\n- notebook: 04_train\n  parameters:\n    run_dir: 007\n    note: 12:30\n"
            "    arch: no\n    device: on\n    lr_scale: 1e-3\n    seed: 3\n    compile: false\n")
    assert yaml.safe_load(text)["chapters"][0]["parameters"]["run_dir"] == 7
    y = tmp_path / "set.yaml"
    y.write_text(text)
    params = launch.load_plan(y)["chapters"][0]["parameters"]
    assert params == {"run_dir": "007", "note": "12:30", "arch": "no", "device": "on", "lr_scale": 0.001,
                      "seed": 3, "compile": False}
    for name, value in params.items():  # the same value given with -p reads the same
        assert launch.parse_value(str(value).lower() if value is False else str(value)) == value, name


def test_values_on_the_command_line_mean_what_they_say(tmp_path, data, monkeypatch):
    assert launch.parse_value("007") == "007" and launch.parse_value("12:30") == "12:30"
    assert launch.parse_value("no") == "no" and launch.parse_value("1e-3") == 0.001
    assert launch.parse_value("60") == 60 and launch.parse_value("true") is True
    plan = launch.load_plan(_chain(tmp_path, data))
    with pytest.raises(ParameterError, match="empty"):
        launch.apply_overrides(plan, {"name": ""})
    with pytest.raises(ParameterError, match="empty"):
        launch.apply_overrides(plan, {"": "x"})
    # relative paths resolve from where the launcher runs, not from notebooks/
    (tmp_path / "mydata").mkdir()
    (tmp_path / "mydata" / "ts.txt").write_text("hello")
    p = launch.apply_overrides(plan, {"text": "mydata/ts.txt", "tokenizer": "tok/x"}, cwd=tmp_path)
    assert p["vars"]["text"] == str(tmp_path / "mydata" / "ts.txt")
    assert p["chapters"][2]["parameters"]["tokenizer"] == str(tmp_path / "tok" / "x")
    monkeypatch.chdir(tmp_path)
    p = launch.apply_overrides(plan, {"02_data.corpus": "local:mydata/*.txt", "name": "007", "04.arch": "gpt"})
    assert p["chapters"][1]["parameters"]["corpus"] == f"local:{tmp_path}/mydata/*.txt"
    assert p["chapters"][2]["parameters"]["arch"] == "gpt" and p["name"] == "007"


def test_model_options_are_checked_against_the_switches_types(tmp_path, data, runs_dir, capsys):
    from nbcore.params import check_model_options

    assert check_model_options("gpt", {"x0_mix": False, "softcap": 30}) == {"x0_mix": False, "softcap": 30.0}
    with pytest.raises(ParameterError, match="x0_mix.*should be bool"):
        check_model_options("gpt", {"x0_mix": "no"})
    with pytest.raises(ParameterError, match="softcap.*should be float"):
        check_model_options("gpt", {"softcap": "15"})
    with pytest.raises(ParameterError, match="Did you mean 'x0_mix'"):
        check_model_options("gpt", {"x0mix": True})
    # through the launcher: refused before any kernel starts
    assert launch.main([str(_flat(tmp_path, data, num_steps=2)), "-p", "model_options", '{"x0_mix": "no"}']) == 1
    assert "should be bool" in capsys.readouterr().err and not list(runs_dir.iterdir())


# ---------------------------------------------------------------- checkpoints a crash left behind (item 8)
def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one_and_temp_files_go(tmp_path):
    import torch

    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    for step in (2, 4):
        checkpoint.save(checkpoint.checkpoint_path(tmp_path, step), model, [opt], step)
    newest = checkpoint.checkpoint_path(tmp_path, 4)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # the machine died mid-copy
    leftover = tmp_path / "checkpoints" / ".step_000006.pt.x1y2z3.tmp"  # a write killed before its rename
    leftover.write_bytes(b"half a checkpoint")
    with pytest.warns(UserWarning, match="step_000004.pt cannot be read.*Falling back"):
        assert checkpoint.latest(tmp_path) == checkpoint.checkpoint_path(tmp_path, 2)
    assert not leftover.exists()
    leftover.write_bytes(b"again")
    checkpoint.save(checkpoint.checkpoint_path(tmp_path, 6), model, [opt], 6)
    assert not leftover.exists() and checkpoint.latest(tmp_path).name == "step_000006.pt"
    assert checkpoint.healthy_loss(5.0, 301) and not checkpoint.healthy_loss(3.8e11, 301)
    assert not checkpoint.healthy_loss(float("nan"), 301)


# ---------------------------------------------------------------- --tracker (the streaming itself: test_progress)
def test_a_tracker_that_is_not_installed_is_named_before_anything_runs(tmp_path, data, runs_dir):
    p = _run(_flat(tmp_path, data), "-p", "name", "trk2", "--tracker", "trackio")
    assert p.returncode == 1 and "trackio package is not installed: pip install trackio" in p.stderr
    assert _one_run(runs_dir, "trk2") is None

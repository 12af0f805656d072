"""04_train and the launcher, executed through papermill on tiny data (CPU, 1 and 2 processes).

A session fixture trains a tiny tokenizer and writes shards from a small text the test makes
(Python's own pydoc topics), so every run here takes seconds.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nbcore import checkpoint, notebooks, runs
from nbcore.params import ParameterError

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

TINY = dict(num_layers=2, num_heads=2, model_dim=32, seq_len=64, batch_size=4, num_steps=6, val_interval=3,
            val_tokens=2048, sample_tokens=4, live_plot=True)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """{'text': file, 'tokenizer': folder, 'shards': folder}: ~300 kB of text, vocab 300, 3 train shards."""
    from pydoc_data.topics import topics

    from nbcore.shards import make_shards
    from nbcore.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("tiny_data")
    text = "\n\n".join(topics[k] for k in sorted(topics))[:300_000]
    (root / "text.txt").write_text(text)
    tok = train_bpe([text[:270_000]], 300, name="tiny", workers=1)
    tok.save(root / "tok")
    make_shards(f"local:{root / 'text.txt'}", root / "tok", root / "shards", shard_size=40_000, num_shards=3,
                val_fraction=0.1, workers=1, progress=False, corpus_options={"split": "blank_lines"})
    return {"text": root / "text.txt", "tokenizer": root / "tok", "shards": root / "shards"}


def _train(tmp_path, data, out_name="out.ipynb", **overrides):
    p = dict(TINY, data_dir=str(data["shards"]), **overrides)
    return notebooks.execute("04_train", tmp_path / out_name, p)


def _error_text(exc) -> str:
    return f"{getattr(exc, 'ename', '')}: {getattr(exc, 'evalue', '')} {exc}"


def _outputs(nb_path):
    nb = json.loads(Path(nb_path).read_text())
    text, images = [], 0
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream":
                text.append("".join(o["text"]))
            images += "image/png" in o.get("data", {})
            if "text/plain" in o.get("data", {}):
                text.append("".join(o["data"]["text/plain"]))
    return "\n".join(text), images


# ---------------------------------------------------------------- parameters
def test_unknown_parameter_fails_before_running(tmp_path, tiny_data):
    with pytest.raises(ParameterError, match="max_seconds"):
        _train(tmp_path, tiny_data, max_second=5)
    assert not (tmp_path / "out.ipynb").exists()


@pytest.mark.parametrize("bad, message", [
    (dict(num_heads=3), "num_heads (3) must divide model_dim (32)"),
    (dict(vocab_size=100), "smaller than the tokenizer's n_vocab=301"),
    (dict(num_steps="many"), "should be int"),
])
def test_bad_values_fail_with_a_clear_message(tmp_path, tiny_data, runs_dir, bad, message):
    with pytest.raises(Exception) as e:
        _train(tmp_path, tiny_data, **bad)
    assert message in _error_text(e.value)
    # nothing was trained: no run folder holds metrics
    assert not list(runs_dir.glob("*/metrics.csv"))


# ---------------------------------------------------------------- one process: record and exact resume
def test_single_process_record_and_exact_resume(tmp_path, tiny_data, runs_dir):
    # batch_stages: B = 2 for steps 1-3, 4 for steps 4-6, so the resume below starts in the later stage
    out = _train(tmp_path, tiny_data, checkpoint_interval=3, name="full", batch_stages=[2, 4])
    (run,) = runs_dir.glob("*_full")
    rows = runs.read_metrics(run)
    train = [(r["step"], r["train_loss"]) for r in rows if r["train_loss"] is not None]
    val = [(r["step"], r["val_loss"], r["val_bpb"]) for r in rows if r["val_loss"] is not None]
    assert [s for s, _ in train] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _, _ in val] == [0, 3, 6]
    assert val[-1][1] < val[0][1]  # it learned something
    m = json.loads((tiny_data["shards"] / "manifest.json").read_text())
    bpt = m["splits"]["val"]["bytes"] / m["splits"]["val"]["tokens"]
    assert val[-1][2] == pytest.approx(val[-1][1] / 0.6931471805599453 / bpt)
    s = json.loads((run / "summary.json").read_text())
    f = s["final"]
    assert f["tokens_seen"] == 3 * 2 * 64 + 3 * 4 * 64 and f["val_loss"] == pytest.approx(val[-1][1])
    assert [r["tokens"] for r in rows if r["train_loss"] is not None] == [128, 256, 384, 640, 896, 1152]
    assert f["wall_seconds"] > 0 and f["peak_mem_bytes"] > 0 and s["world_size"] == 1
    assert s["parameters"]["num_heads"] == 2 and s["versions"]["torch"] and "dirty" in s["git"]
    assert s["estimated_cost_usd"] == 0.0
    assert (run / "nbcore_src" / "optim.py").exists() and (run / "figures" / "loss.png").exists()
    assert json.loads((run / "tokenizer.json").read_text())["merges_hash"] == m["tokenizer"]["merges_hash"]
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["step_000003.pt", "step_000006.pt"]
    text, images = _outputs(out)
    assert "x: (B, T) = (4, 64)" in text and "logits: (B, T, V) = (4, 64, 301)" in text
    assert images >= 2  # schedules and the live loss plot

    # interrupted at step 3: a copy of the run without what came after its step-3 checkpoint
    cut = runs_dir / "cut"
    shutil.copytree(run, cut)
    (cut / "checkpoints" / "step_000006.pt").unlink()
    (cut / "summary.json").unlink()
    runs.MetricsLog(cut, resume_step=3).flush()
    # a notebook run by hand (no launcher) locks its run folder too: while another process writes
    # into it, the resume stops before touching it
    held = runs.lock_run(cut)
    before = (cut / "metrics.csv").read_bytes()
    with pytest.raises(Exception) as e:
        _train(tmp_path, tiny_data, "refused.ipynb", resume=str(cut), checkpoint_interval=3, name="full",
               batch_stages=[2, 4])
    assert f"run folder {cut.resolve()} is in use: pid {os.getpid()}" in _error_text(e.value)
    assert (cut / "metrics.csv").read_bytes() == before and not (cut / "summary.json").exists()
    held.close()
    _train(tmp_path, tiny_data, "resumed.ipynb", resume=str(cut), checkpoint_interval=3, name="full",
           batch_stages=[2, 4])
    again = runs.read_metrics(cut)
    assert [(r["step"], r["train_loss"]) for r in again if r["train_loss"] is not None] == train  # bit for bit
    assert [(r["step"], r["val_loss"]) for r in again if r["val_loss"] is not None] == [(s, v) for s, v, _ in val]
    assert json.loads((cut / "summary.json").read_text())["resumed_from"].endswith("step_000003.pt")
    assert [r["tokens"] for r in again if r["train_loss"] is not None] == [128, 256, 384, 640, 896, 1152]


def test_existing_run_is_never_overwritten(tmp_path, tiny_data, runs_dir):
    run = runs_dir / "20260101_000000_old"
    run.mkdir()
    (run / "metrics.csv").write_text("step\n1\n")
    with pytest.raises(Exception) as e:
        _train(tmp_path, tiny_data, run_dir=str(run), num_steps=1)
    assert "never overwritten" in _error_text(e.value)
    assert (run / "metrics.csv").read_text() == "step\n1\n"


def test_nan_guard_names_step_and_last_good_checkpoint(tmp_path, tiny_data, runs_dir):
    with pytest.raises(Exception) as e:
        _train(tmp_path, tiny_data, arch="nanogpt", lr_adamw=1e30, checkpoint_interval=1, name="nan",
               sample_tokens=0, live_plot=False, batch_size="auto")
    msg = _error_text(e.value)
    text, _ = _outputs(tmp_path / "out.ipynb")
    assert "B=8 per rank (auto)" in text  # the memory estimate fits easily; CPU caps auto at 8
    assert "FloatingPointError" in msg and "at step 2" in msg
    (run,) = runs_dir.glob("*_nan")
    # step 1's checkpoint holds the weights after the first 1e30 update: the loss after it is not finite,
    # so it is not called good
    assert str(run / "checkpoints" / "step_000001.pt") not in msg
    assert "Last good checkpoint (finite, non-diverging loss after it): none" in msg
    assert checkpoint.read(run / "checkpoints" / "step_000001.pt")["step"] == 1


# ---------------------------------------------------------------- the launcher
def _launch(*args, env=None, check=True):
    import os

    e = dict(os.environ, **(env or {}))
    p = subprocess.run([sys.executable, "-m", "nbcore.launch", *map(str, args)], cwd=REPO, env=e,
                       capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"launch failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def _flat_yaml(tmp_path, data, **extra):
    import yaml

    p = dict(TINY, data_dir=str(data["shards"]), sample_tokens=0, live_plot=False, name="flat",
             model_options={"zero_init": False}, **extra)
    path = tmp_path / "flat.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def _chain_yaml(tmp_path, data):
    """01 -> 02 -> 04 on the test's small text (tokenizer and shards built by the chapters)."""
    import yaml

    train = {k: v for k, v in TINY.items() if k != "batch_size"}
    plan = {"name": "chain", "vars": {"text": str(data["text"])}, "chapters": [
        {"notebook": "01_tokenizer", "parameters": {"corpus": "local:${text}", "sample_chars": "${text_chars*0.9}",
                                                    "heldout_chars": 20000, "vocab_size": 300, "name": "tiny",
                                                    "workers": 1}},
        {"notebook": "02_data", "parameters": {"corpus": "local:${text}", "val_fraction": 0.1, "shard_size": 40000,
                                               "num_shards": 3, "workers": 1, "txt_split": "file"}},
        {"notebook": "04_train", "parameters": dict(train, sample_tokens=0, live_plot=False,
                                                    model_options={"zero_init": False})}]}
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_launcher_chain_two_processes_match_one_and_reuse(tmp_path, tiny_data, runs_dir):
    """01 -> 02 -> 04 with 2 gloo ranks (B=2 each), then again with 1 rank (B=4): the second
    launch reuses the tokenizer and shards, and the loss curves agree (same global batch).

    zero_init is off here: with zero-initialised projections some scalar gradients are exactly
    zero in exact arithmetic, and Adam turns their rounding noise (which depends on how the
    batch is split) into full-size steps, so only a well-conditioned start compares closely.
    """
    y = _chain_yaml(tmp_path, tiny_data)
    _launch(y, "--nproc", 2, "-p", "batch_size", 2, "-p", "name", "two")
    _launch(y, "--nproc", 1, "-p", "batch_size", 4, "-p", "name", "one")
    (two,) = runs_dir.glob("*_two")
    (one,) = runs_dir.glob("*_one")
    for run in (two, one):
        assert {"01_tokenizer.ipynb", "02_data.ipynb", "04_train.ipynb", "launch.json", "metrics.csv",
                "summary.json"} <= {p.name for p in run.iterdir()}
    assert (two / "logs" / "04_train.rank1.ipynb").exists()
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2
    first = json.loads((two / "launch.json").read_text())["launches"][0]["chapters"]
    second = json.loads((one / "launch.json").read_text())["launches"][0]["chapters"]
    assert [c["status"] for c in first] == ["ran", "ran", "ran"] and first[2]["processes"] == 2
    assert second[0]["status"].startswith("reused") and second[1]["status"].startswith("reused")
    assert first[2]["parameters"]["data_dir"] == second[2]["parameters"]["data_dir"]
    a, b = runs.read_metrics(two), runs.read_metrics(one)
    assert [r["step"] for r in a] == [r["step"] for r in b] and [r["tokens"] for r in a] == [r["tokens"] for r in b]
    for ra, rb in zip(a, b):
        for k in ("train_loss", "val_loss"):
            if ra[k] is not None:
                assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-5), (ra, rb)
    # --resume continues the run in place (nothing left to do: it ends at once) and keeps the record
    _launch("--resume", one, "--only", "04")
    assert (one / "04_train.resume1.ipynb").exists() and (one / "04_train.ipynb").exists()
    assert len(json.loads((one / "launch.json").read_text())["launches"]) == 2


def test_launcher_rejects_unknown_override_and_shows_rank_errors(tmp_path, tiny_data, runs_dir):
    y = _flat_yaml(tmp_path, tiny_data)
    p = _launch(y, "-p", "max_secnds", 5, check=False)
    assert p.returncode == 1 and "Did you mean 'max_seconds'" in p.stderr
    assert not list(runs_dir.iterdir())  # nothing was started
    p = _launch(y, "--nproc", 2, "-p", "num_heads", 3, check=False)
    assert p.returncode == 1
    assert "failed on rank" in p.stderr and "num_heads (3) must divide model_dim (32)" in p.stderr


def _kernel_children():
    """PIDs of ipykernel processes started by this test process (papermill's kernel)."""
    import os

    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"ipykernel_launcher" in cmd:
            out.append(int(d.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the kernel through /proc (Linux)")
def test_ctrl_c_leaves_a_resumable_checkpoint(tmp_path, tiny_data, runs_dir):
    import os
    import signal
    import threading
    import time

    def interrupt_when_training():
        deadline = time.time() + 120
        while time.time() < deadline:
            rows = list(runs_dir.glob("*_intr/metrics.csv"))
            if rows and len(runs.read_metrics(rows[0].parent)) >= 4:  # val at 0 and 3 train steps
                for pid in _kernel_children():
                    os.kill(pid, signal.SIGINT)  # what JupyterLab's stop button sends
                return
            time.sleep(0.2)

    t = threading.Thread(target=interrupt_when_training)
    t.start()
    _train(tmp_path, tiny_data, num_steps=100000, max_seconds=90.0, val_interval=0, name="intr",
           sample_tokens=0, live_plot=False)
    t.join()
    (run,) = runs_dir.glob("*_intr")
    final = json.loads((run / "summary.json").read_text())["final"]
    assert final["stopped_by"] == "interrupt" and final["stop_reason"] == "SIGINT"
    (ckpt,) = checkpoint.list_checkpoints(run)
    assert checkpoint.read(ckpt)["step"] == final["steps"] >= 3
    text, _ = _outputs(tmp_path / "out.ipynb")
    assert f"resume='{run}'" in text


# ---------------------------------------------------------------- out of memory in the first step
def _inject_oom(tmp_path, monkeypatch, above: int):
    """The kernel's forward raises torch.OutOfMemoryError for batches above `above` rows (with grad),
    through a sitecustomize.py on the kernel's PYTHONPATH."""
    import os

    hook = tmp_path / "oom_hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import torch\nfrom nbcore import model as _m\n_forward = _m.LanguageModel.forward\n\n\n"
        "def forward(self, idx, *args, **kwargs):\n"
        f"    if torch.is_grad_enabled() and idx.size(0) > {above}:\n"
        "        raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 1.00 GiB (injected)')\n"
        "    return _forward(self, idx, *args, **kwargs)\n\n\n"
        "_m.LanguageModel.forward = forward\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))


def test_first_step_out_of_memory_auto_halves_b_given_b_names_one_that_fits(tmp_path, tiny_data, runs_dir,
                                                                           monkeypatch):
    _inject_oom(tmp_path, monkeypatch, above=2)
    out = _train(tmp_path, tiny_data, batch_size="auto", grad_accum=1, num_steps=1, val_interval=0, name="oom",
                 sample_tokens=0, live_plot=False)
    text, _ = _outputs(out)
    assert "B=8 per rank (auto)" in text  # the estimate's choice on CPU (capped at 8) ...
    assert "out of memory with B=8: trying B=4 with grad_accum=2" in text  # ... halved until it fits
    assert "out of memory with B=4: trying B=2 with grad_accum=4" in text and "first step fits: B=2" in text
    (run,) = runs_dir.glob("*_oom")
    s = json.loads((run / "summary.json").read_text())
    assert s["batch_size"] == 2 and s["final"]["tokens_seen"] == 8 * 64 == s["tokens_per_step"]
    with pytest.raises(Exception) as e:
        _train(tmp_path, tiny_data, "given.ipynb", batch_size=8, num_steps=1, name="oom2", sample_tokens=0,
               live_plot=False)
    msg = _error_text(e.value)
    assert "batch_size=8 does not fit" in msg and "batch_size=2 fits: use batch_size=2 with grad_accum=4" in msg


def test_float16_with_loss_scaling_runs_in_04(tmp_path, tiny_data, runs_dir):
    """dtype='float16': the pre-Ampere GPU path (float16 autocast + LossScaler over Muon and Adam), on CPU."""
    out = _train(tmp_path, tiny_data, dtype="float16", num_steps=3, val_interval=0, name="fp16", sample_tokens=0,
                 live_plot=False)
    text, _ = _outputs(out)
    assert "compute float16" in text and "loss scaler" in text
    (run,) = runs_dir.glob("*_fp16")
    rows = runs.read_metrics(run)
    assert [r["step"] for r in rows if r["train_loss"] is not None] == [1, 2, 3]
    assert all(r["train_loss"] > 0 for r in rows if r["train_loss"] is not None)
    # the checkpoint keeps the loss scale reached, and a resume starts from it (not from 65536 again)
    (ckpt,) = checkpoint.list_checkpoints(run)
    state = checkpoint.read(ckpt)["extra"]["loss_scaler"]
    assert state["scale"] > 0 and state["growth_interval"] == 2000
    out = _train(tmp_path, tiny_data, "fp16_resumed.ipynb", dtype="float16", num_steps=4, val_interval=0, name="fp16",
                 sample_tokens=0, live_plot=False, resume=str(run))
    text, _ = _outputs(out)
    assert f"loss scaler resumed at scale {state['scale']:g}" in text

"""Fast unit tests for the training chapter's plumbing: nbcore.checkpoint, nbcore.runs, nbcore.dist."""
import datetime
import json

import numpy as np
import pytest
import torch

from nbcore import checkpoint, dist, optim, runs


class _Loader:
    """Stand-in with the TokenLoader state interface: a seeded stream of batches."""

    def __init__(self, seed=0):
        self.seed, self.step = seed, 0

    def next_batch(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.step)
        self.step += 1
        x = torch.randint(0, 17, (4, 6), generator=g)
        return x, (x + 1) % 17

    def state_dict(self):
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, s):
        self.seed, self.step = s["seed"], s["step"]


def _model():
    from tests.test_optim import TinyGPTLike

    torch.manual_seed(0)
    return TinyGPTLike()


def _train(model, opts, loader, steps):
    losses = []
    for _ in range(steps):
        x, y = loader.next_batch()
        loss = model(x, y) + 0.01 * torch.randn(()).abs()  # touches the torch RNG, like dropout would
        optim.zero_grad(opts)
        loss.backward()
        optim.step_all(opts)
        losses.append(loss.item())
    return losses


def test_checkpoint_resume_is_bit_exact(tmp_path):
    m = _model()
    opts = optim.build_optimizers(m.configure_optimizers(), optim.default_lrs("gpt"))
    loader = _Loader(3)
    _train(m, opts, loader, 4)
    path = checkpoint.save(checkpoint.checkpoint_path(tmp_path, 4), m, opts, step=4, loader=loader,
                           extra={"note": "x", "arr": np.float32(1.5)})
    assert path.name == "step_000004.pt" and path.exists()
    np.random.seed(5)
    ahead = _train(m, opts, loader, 5)
    after_np = np.random.rand()

    m2 = _model()
    torch.nn.init.zeros_(m2.w1.weight)  # make sure weights really come from the file
    opts2 = optim.build_optimizers(m2.configure_optimizers(), optim.default_lrs("gpt"))
    loader2 = _Loader(99)
    torch.manual_seed(1234)
    blob = checkpoint.load(path, m2, opts2, loader2)
    assert blob["step"] == 4 and blob["extra"]["note"] == "x" and loader2.step == 4
    np.random.seed(5)
    resumed = _train(m2, opts2, loader2, 5)
    assert resumed == ahead  # bit for bit
    assert np.random.rand() == after_np


def test_checkpoint_listing_keep_and_errors(tmp_path):
    m = _model()
    opts = optim.build_optimizers(m.configure_optimizers(), optim.default_lrs("gpt"))
    for s in (1, 2, 3):
        checkpoint.save(checkpoint.checkpoint_path(tmp_path, s), m, opts, step=s, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_000002.pt", "step_000003.pt"]
    assert checkpoint.latest(tmp_path).name == "step_000003.pt"
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    bad = tmp_path / "checkpoints" / "step_000009.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        checkpoint.load(bad, m, opts)
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "nope.pt", m, opts)
    with pytest.raises(ValueError, match="optimisers"):
        checkpoint.load(checkpoint.checkpoint_path(tmp_path, 3), m, opts[:1])


def test_new_run_dir_never_overwrites(runs_dir):
    now = datetime.datetime(2026, 1, 2, 3, 4, 5)
    run = runs.new_run_dir("demo", now=now)
    assert run == runs_dir / "20260102_030405_demo" and run.is_dir()
    (run / "metrics.csv").write_text("keep me")
    with pytest.raises(FileExistsError, match="never overwritten"):
        runs.new_run_dir("demo", now=now)
    assert (run / "metrics.csv").read_text() == "keep me"
    with pytest.raises(FileExistsError, match="never overwritten"):
        runs.claim_run_dir(run)
    for bad in ("", "a b", "../x", "a/b"):
        with pytest.raises(ValueError, match="run name"):
            runs.new_run_dir(bad)
    assert runs.open_run("20260102_030405_demo") == run
    with pytest.raises(FileNotFoundError):
        runs.open_run("missing")


def test_metrics_log_round_trip_and_resume(tmp_path):
    log = runs.MetricsLog(tmp_path)
    for s in range(1, 5):
        log.add(step=s, tokens=s * 100, train_loss=5.0 - s, lr=0.01, elapsed_s=s * 0.5, tokens_per_s=200.0)
    log.add(step=4, tokens=400, val_loss=2.5, val_bpb=1.25)
    rows = runs.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 4]
    assert rows[0]["train_loss"] == 4.0 and rows[0]["val_loss"] is None and rows[-1]["val_bpb"] == 1.25
    assert open(tmp_path / "metrics.csv").readline().strip() == ",".join(runs.METRICS_COLUMNS)
    resumed = runs.MetricsLog(tmp_path, resume_step=2)
    assert [r["step"] for r in resumed.rows] == [1, 2]
    with pytest.raises(ValueError, match="unknown"):
        log.add(step=1, loss=3.0)


def test_summary_snapshot_and_cost(tmp_path):
    path = runs.write_summary(tmp_path, {"lr": 0.1, "name": "x"},
                              {"val_loss": 3.2, "val_bpb": 1.1, "tokens_seen": 1000, "wall_seconds": 3600.0,
                               "peak_mem_bytes": 5, "bad": float("nan")}, world_size=8, gpu_hourly_price=2.5)
    s = json.loads(path.read_text())
    assert s["estimated_cost_usd"] == pytest.approx(20.0)
    assert s["versions"]["torch"] == torch.__version__ and s["world_size"] == 8
    assert {"commit", "dirty"} <= set(s["git"]) and "cpu_count" in s["hardware"]
    assert s["final"]["bad"] == "nan"
    snap = runs.snapshot_source(tmp_path)
    assert (snap / "optim.py").read_bytes() == (runs.paths.REPO_ROOT / "nbcore" / "optim.py").read_bytes()


def test_mfu_and_peak_flops():
    assert runs.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert runs.peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert runs.peak_flops("cpu") is None and runs.mfu(1e9, 1e5, 1, None) is None
    assert runs.mfu(1e9, 1e5, 2, "H100") == pytest.approx(1e9 * 1e5 / (2 * 989e12))  # training FLOPs/token already fwd+bwd


def test_dist_single_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = dist.setup("cpu")
    assert (info.rank, info.world_size, info.device, info.is_main) == (0, 1, "cpu", True)
    assert dist.pick_device("auto") in ("cpu", "cuda", "mps")
    assert dist.all_reduce([1.0, 2.0]) == [1.0, 2.0] and dist.gather_objects("x") == ["x"]
    assert dist.any_rank(True) and not dist.any_rank(False)
    with pytest.raises(ValueError, match="device"):
        dist.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            dist.pick_device("cuda")


def test_stop_request_turns_ctrl_c_into_a_flag():
    import os
    import signal

    with runs.StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested  # no KeyboardInterrupt: the loop stops at a step boundary
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C aborts at once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---------------------------------------------------------------- launcher helpers (no notebooks run)
def test_launch_values_vars_and_keys(tmp_path):
    from nbcore import launch

    assert launch.parse_value("1e-3") == 0.001 and launch.parse_value("60") == 60
    assert launch.parse_value("true") is True and launch.parse_value("gpt") == "gpt"
    assert launch.parse_value("[1, 2]") == [1, 2]
    f = tmp_path / "t.txt"
    f.write_text("x" * 1000)
    v = {"text": str(f), "empty": ""}
    assert launch.substitute("local:${text}", v) == f"local:{f}"
    assert launch.substitute("${text_chars*0.9}", v) == 900
    assert launch.substitute({"a": ["${text_chars}"]}, v) == {"a": [1000]}
    with pytest.raises(ValueError, match="-p empty"):
        launch.substitute("${empty}", v)
    with pytest.raises(ValueError, match="not defined"):
        launch.substitute("${nope}", v)
    p = {"corpus": f"local:{f}", "vocab_size": 300}
    k = launch.reuse_key("01_tokenizer", p)
    assert k == launch.reuse_key("01_tokenizer", {**p, "out_dir": "/elsewhere"})
    assert k != launch.reuse_key("01_tokenizer", {**p, "vocab_size": 301})
    f.write_text("y" * 1001)  # an edited corpus file is not reused
    assert k != launch.reuse_key("01_tokenizer", p)


def test_launch_plan_and_overrides(tmp_path):
    from nbcore import launch
    from nbcore.params import ParameterError

    y = tmp_path / "p.yaml"
    y.write_text("name: x\nvars: {text_path: ''}\nchapters:\n"
                 "  - notebook: 01_tokenizer\n    parameters: {vocab_size: 300, name: tok}\n"
                 "  - notebook: 04_train\n    parameters: {lr_adamw: 1e-3}\n")
    plan = launch.load_plan(y)
    assert plan["chapters"][1]["parameters"]["lr_adamw"] == 0.001
    p = launch.apply_overrides(plan, {"max_seconds": 5.0, "name": "run1", "vocab_size": 512, "text_path": "a"})
    tok, train = p["chapters"][0]["parameters"], p["chapters"][1]["parameters"]
    assert train["max_seconds"] == 5.0 and tok["vocab_size"] == 512
    assert "vocab_size" not in train  # 04's vocab_size (embedding rows) follows the tokenizer it is given
    assert p["name"] == "run1" and train["name"] == "run1" and tok["name"] == "tok"  # run name: not the tokenizer's
    assert p["vars"]["text_path"] == "a" and plan["vars"]["text_path"] == ""  # the plan itself is untouched
    with pytest.raises(ParameterError, match="Did you mean 'max_seconds'"):
        launch.apply_overrides(plan, {"max_secs": 5})
    flat = tmp_path / "flat.yaml"
    flat.write_text("num_steps: 3\n")
    assert launch.load_plan(flat)["chapters"] == [{"notebook": "04_train", "parameters": {"num_steps": 3}}]
    bad = tmp_path / "bad.yaml"
    bad.write_text("chapter: []\n")
    with pytest.raises(ValueError, match="unknown parameter 'chapter'"):
        launch.load_plan(bad)
    bad.write_text("chapters: []\nnprocs: 2\n")
    with pytest.raises(ValueError, match="unknown top-level"):
        launch.load_plan(bad)
    with pytest.raises(FileNotFoundError, match="papermill_params"):
        launch.load_plan(tmp_path / "missing.yaml")


def test_every_parameter_set_names_real_parameters():
    """Each papermill_params/*.yaml loads, and its chapters' parameters exist in those notebooks."""
    from nbcore import launch, notebooks, paths

    sets = sorted(paths.PARAMS_DIR.glob("*.yaml"))
    assert {p.stem for p in sets} >= {"demo_cpu", "xs_1x8gb", "s_2x16gb", "m_4x48gb", "speedrun_8xh100",
                                      "shakespeare_cpu"}
    for path in sets:
        plan = launch.load_plan(path)
        assert path.read_text().lstrip().startswith("#"), f"{path.name}: start with a comment on time/memory/cost"
        for ch in plan["chapters"]:
            notebooks.check_names(ch["parameters"], notebooks.declared_parameters(ch["notebook"]))


def test_run_plan_checks_every_chapter_before_running(tmp_path, runs_dir):
    from nbcore import launch
    from nbcore.params import ParameterError

    y = tmp_path / "p.yaml"
    y.write_text("chapters:\n  - notebook: 01_tokenizer\n    parameters: {vocab_size: 300}\n"
                 "  - notebook: 04_train\n    parameters: {num_step: 3}\n")
    with pytest.raises(ParameterError, match="Did you mean 'num_steps'"):
        launch.run_plan(launch.load_plan(y))
    assert not list(runs_dir.iterdir())  # not even the tokenizer was started

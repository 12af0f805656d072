"""Two "nodes" on this machine: torchrun --nnodes 2 with c10d rendezvous on 127.0.0.1, through the launcher.

Node 1 gets its own runs/ folder, as a second machine without a shared filesystem would: node 0
owns the run folder, the tokenizer and the shards; node 1 receives them (tested on the store
directly, fast), and on --resume rank 0 reads the checkpoint and broadcasts it (node 1 has no copy).
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nbcore import nodes, runs
from tests.test_train import REPO, _flat_yaml, tiny_data  # noqa: F401  (session fixture)

pytestmark = pytest.mark.slow


def _free_port_pair():
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        try:
            with socket.socket() as b:
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two free neighbouring ports")


def _two_nodes(args, roots, job):
    port = _free_port_pair()
    procs = []
    for rank, root in enumerate(roots):
        env = dict(os.environ, NBCORE_RUNS=str(root), OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "nbcore.launch", *map(str, args), "--nproc", "1", "--nnodes", "2",
               "--node-rank", str(rank), "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", job]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"node {rank} failed ({p.returncode}):\n{out[-4000:]}"
    return outs


def test_two_nodes_share_one_run_and_resume(tmp_path, tiny_data, runs_dir):  # noqa: F811
    """One run folder (node 0's), one record; --resume from the run's name on both nodes, where node 1
    has neither launch.json nor the checkpoint: rank 0 reads it and broadcasts it."""
    other = tmp_path / "node1_runs"  # node 1's own disk
    other.mkdir()
    y = _flat_yaml(tmp_path, tiny_data)
    _two_nodes([y, "-p", "batch_size", 2, "-p", "num_steps", 2, "-p", "val_interval", 0, "-p", "name", "nodes"],
               [runs_dir, other], "job1")
    (run,) = runs_dir.glob("*_nodes")  # one run, made by node 0
    mine = other / run.name  # node 1: the same run folder name, with its rank's log and its part of the record
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    assert (mine / "logs" / "04_train.rank1.ipynb").exists() and (mine / "logs" / "launch.node1.json").exists()
    assert not (mine / "metrics.csv").exists() and not list(mine.rglob("*.pt"))
    _two_nodes(["--resume", run.name, "-p", "num_steps", 3], [runs_dir, other], "job2")
    assert (run / "04_train.resume1.ipynb").exists() and (mine / "logs" / "04_train.resume1.rank1.ipynb").exists()
    assert [r["step"] for r in runs.read_metrics(run) if r["train_loss"] is not None] == [1, 2, 3]
    assert json.loads((run / "summary.json").read_text())["resumed_from"].endswith("step_000002.pt")


def _store_pair(job="t"):
    from torch.distributed import TCPStore
    import datetime

    port = _free_port_pair()
    server = TCPStore("127.0.0.1", port, 2, True, datetime.timedelta(seconds=30), wait_for_workers=False)
    client = TCPStore("127.0.0.1", port, 2, False, datetime.timedelta(seconds=30))
    return nodes.Nodes(0, 2, server, job), nodes.Nodes(1, 2, client, job)


def test_node0_owns_the_run_folder_and_products(tmp_path, monkeypatch):
    """Node 1 (its own runs/) gets node 0's run folder name, receives a product it lacks, finds one
    it has, and stops with node 0's error instead of waiting when node 0 fails."""
    import threading

    owner, other = _store_pair()
    roots = {0: tmp_path / "n0", 1: tmp_path / "n1"}
    local = threading.local()
    monkeypatch.setattr(nodes.paths, "runs_dir", lambda: roots[getattr(local, "node", 0)])
    got = {}

    def node1():
        local.node = 1
        got["run"] = other.run_folder(lambda: 1 / 0)
        got["tok"] = other.product("01", "launch_done.json", "the tokenizer")
        got["shards"] = other.product("02", "launch_done.json", "the shards")
        try:
            other.product("03", "launch_done.json", "nothing")
        except nodes.NodeError as e:
            got["error"] = str(e)

    t = threading.Thread(target=node1)
    t.start()
    run = owner.run_folder(lambda: roots[0] / "20260101_000000_x")
    tok = roots[0] / "tokenizers" / "tiny-abc"
    (tok / "sub").mkdir(parents=True)
    (tok / "merges.txt").write_bytes(bytes(range(256)) * 1000)
    (tok / "sub" / "x.json").write_text("{}")
    (tok / "launch_done.json").write_text(json.dumps({"key": "abc"}))
    owner.publish_product("01", tok, "abc")
    shards = roots[0] / "shards" / "s-def"
    shards.mkdir(parents=True)
    (shards / "launch_done.json").write_text(json.dumps({"key": "def"}))
    (roots[1] / "shards" / "s-def").mkdir(parents=True)  # node 1 built these before (same key)
    (roots[1] / "shards" / "s-def" / "launch_done.json").write_text(json.dumps({"key": "def"}))
    monkeypatch.setattr(nodes, "RECEIVE_LIMIT", 10)  # too big to send: node 1 must find its own
    owner.publish_product("02", shards, "def")
    owner.fail("02_data failed: disk full")
    t.join(timeout=60)
    assert got["run"] == roots[1] / run.name and got["run"].is_dir()
    assert got["tok"] == (roots[1] / "tokenizers" / "tiny-abc", "received")
    for f in ("merges.txt", "sub/x.json", "launch_done.json"):
        assert (roots[1] / "tokenizers" / "tiny-abc" / f).read_bytes() == (tok / f).read_bytes()
    assert got["shards"] == (roots[1] / "shards" / "s-def", "found")
    assert "node 0 failed" in got["error"] and "disk full" in got["error"]


def test_what_node0_published_before_it_failed_still_arrives(monkeypatch):
    """Node 0 publishes the run folder and then fails, both between two looks of a waiting node:
    the waiting node gets the run folder (the failure stops it at the next thing it waits for)."""
    owner, other = _store_pair()
    real = other.store

    class FirstLookMissesIt:  # the first look at the run folder comes before node 0 publishes anything
        looks = 0

        def check(self, keys):
            self.looks += 1
            if self.looks == 1:
                owner.publish("run_dir", {"name": "r", "absolute": "/x/r"})
                owner.fail("02_data failed: disk full")
                return False
            return real.check(keys)

        def get(self, key):
            return real.get(key)

    other.store = FirstLookMissesIt()
    assert other.wait_for("run_dir", "the run folder") == {"name": "r", "absolute": "/x/r"}
    with pytest.raises(nodes.NodeError, match="disk full"):
        other.wait_for("plan", "the parameter set")


def test_a_product_too_big_to_send_says_what_to_do(tmp_path, monkeypatch):
    owner, other = _store_pair()
    monkeypatch.setattr(nodes.paths, "runs_dir", lambda: tmp_path / "n1")
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "train_000000.bin").write_bytes(b"x" * 100)
    monkeypatch.setattr(nodes, "RECEIVE_LIMIT", 10)
    owner.publish_product("02", folder, "k")
    with pytest.raises(nodes.NodeError, match="shared filesystem|share, or build it on every node"):
        other.product("02", "launch_done.json", "the shards")


def test_node_options_are_checked():
    assert nodes.connect(1, None, None) is None
    with pytest.raises(nodes.NodeError, match="--node-rank"):
        nodes.connect(2, None, "127.0.0.1:29400")
    with pytest.raises(nodes.NodeError, match="must lie in 0..1"):
        nodes.connect(2, 2, "127.0.0.1:29400")
    with pytest.raises(nodes.NodeError, match="HOST:PORT"):
        nodes.connect(2, 0, "127.0.0.1")


def _load_worker(rank, port, run, tok, out):
    import torch.distributed as td

    from nbcore import checkpoint, evaluate

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    td.init_process_group("gloo", rank=rank, world_size=2)
    try:
        if rank == 1:  # another node: the run folder holds no checkpoint here
            def no_file(*a, **k):
                raise AssertionError("rank 1 read a checkpoint file")
            checkpoint.read = no_file
            evaluate.resolve_checkpoint = no_file
        loaded = evaluate.load_run(run, tokenizer=tok)
        if rank == 1:
            import torch

            torch.save({"step": loaded.step, "ckpt": loaded.checkpoint.name,
                        "weights": {k: v.clone() for k, v in loaded.model.state_dict().items()}}, out)
    finally:
        td.destroy_process_group()


def test_eval_loads_the_checkpoint_on_rank0_and_broadcasts(tmp_path, tiny_data, runs_dir):  # noqa: F811
    """05's load_run across nodes: rank 0 reads the run's checkpoint, the other ranks receive it."""
    import torch
    import torch.multiprocessing as mp

    from nbcore import checkpoint
    from nbcore.model import build_model

    model = build_model("gpt", 301, 2, 2, 32, 64, device="cpu", seed=3)
    run = runs_dir / "20260101_000000_x"
    checkpoint.save(checkpoint.checkpoint_path(run, 5), model, [], step=5, extra={"model_config": model.config})
    port = _free_port_pair()
    mp.spawn(_load_worker, args=(port, str(run), str(tiny_data["tokenizer"]), tmp_path / "r1.pt"), nprocs=2,
             join=True)
    got = torch.load(tmp_path / "r1.pt", weights_only=True)
    assert got["step"] == 5 and got["ckpt"] == "step_000005.pt"
    for k, v in model.state_dict().items():
        assert torch.equal(got["weights"][k], v), k

"""The CUDA code path of 04's training loop and 05's scoring, forced on a CPU.

No GPU here, so the test makes the notebook believe it has one: `dist.setup` reports a "cuda"
device type (the notebook's CUDA branches run: compile, synchronize, MFU), the model is built
with compiled FlexAttention (`attn_backend="flex"`, `compile=True`), torch.compile uses the
`aot_eager` backend (`NBCORE_COMPILE_BACKEND`: the same graphs and guards, no kernel codegen),
and FlexAttention's backward runs through its dense reference (CPU flex has no backward kernel).

The chapter's cells run in this process (as papermill would run them, parameters injected after
the parameters cell), so the test can count what the program does: Dynamo compiles and cache
entries (issue 12, item 3) and host reads per training step (item 4).
"""
import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from nbcore import dist, evaluate, hostsync, optim
from nbcore import model as model_lib
from tests.test_train import tiny_data  # noqa: F401  (the session fixture: tokenizer and shards)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RECOMPILE_BUDGET = 4  # block graphs: {with, without value embedding} x {grad, no grad}


class _CudaLike(dist.DistInfo):
    """What dist.setup returns on a CUDA machine, with the tensors still on the CPU."""

    @property
    def device_type(self):
        return "cuda"


def _cpu_flex_with_backward(monkeypatch):
    """Let FlexAttention take gradients on CPU tensors: aot_eager runs its dense reference
    forward and backward (the fused kernels exist only for CUDA)."""
    import torch.nn.attention.flex_attention as fa

    from nbcore import attention

    real = fa._validate_device

    def validate(q, k, v):
        if q.device.type != "cpu":
            real(q, k, v)
    monkeypatch.setattr(fa, "_validate_device", validate)
    plain = model_lib.attend

    def attend(q, k, v, mask=None, **kw):  # skip nbcore's own "no flex backward on CPU" guard
        if isinstance(mask, attention.BlockMask):
            return attention.flex(q, k, v, mask, kw.get("compiled_flex", False), kw.get("scale"))
        return plain(q, k, v, mask, **kw)
    monkeypatch.setattr(model_lib, "attend", attend)


def run_cells(notebook, parameters, before=None):
    """Execute a chapter's code cells here, papermill-style; `before[cell_id](ns)` runs first."""
    nb = json.loads((REPO / "notebooks" / f"{notebook}.ipynb").read_text())
    ns = {"__name__": "__main__"}
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        if before and cell.get("id") in before:
            before[cell["id"]](ns)
        exec(compile("".join(cell["source"]), f"<{notebook} cell {i}>", "exec"), ns)
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            ns.update(parameters)
    return ns


def _block_entries():
    """Dynamo cache entries of the (shared) compiled block code."""
    return len(torch._dynamo.eval_frame._debug_get_cache_entry_list(model_lib.GPTBlock.forward.__code__))


def test_cuda_path_training_and_scoring_on_cpu(tmp_path, tiny_data, runs_dir, monkeypatch):  # noqa: F811
    from torch._dynamo.utils import counters

    monkeypatch.setenv("NBCORE_COMPILE_BACKEND", "aot_eager")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    _cpu_flex_with_backward(monkeypatch)
    real_setup = dist.setup
    monkeypatch.setattr(dist, "setup", lambda device="auto", **kw: _CudaLike(**vars(real_setup(device, **kw))))
    for name, value in (("reset_peak_memory_stats", lambda *a, **k: None), ("synchronize", lambda *a, **k: None),
                        ("get_device_name", lambda *a, **k: "NVIDIA H100 80GB HBM3"),
                        ("get_device_capability", lambda *a, **k: (9, 0))):
        monkeypatch.setattr(torch.cuda, name, value)
    # what 04 chooses on an H100 (flex, compiled blocks), computing in float32 on this CPU
    from nbcore import precision
    monkeypatch.setattr(precision, "for_device", lambda device, requested="auto": dataclasses.replace(
        precision.choose((9, 0), "NVIDIA H100 80GB HBM3", "auto", device_type="cuda"), dtype="float32",
        grad_scaler=False))
    real_build = optim.build_optimizers  # on CUDA, Adam is fused (no host read of its step count)
    monkeypatch.setattr(optim, "build_optimizers", lambda *a, **k: real_build(*a, **dict(k, fused=True)))
    torch._dynamo.reset()
    counters.clear()

    log_interval, num_steps = 3, 7
    params = dict(data_dir=str(tiny_data["shards"]), num_layers=4, num_heads=2, model_dim=32, seq_len=128,
                  batch_size=2, num_steps=num_steps, val_interval=0, val_tokens=512, log_interval=log_interval,
                  window_min=64, window_max=128, window_block=64, device="cpu", dtype="float32", compile=True,
                  model_options={"attn_backend": "flex"}, sample_tokens=0, live_plot=False,
                  save_checkpoint=False, name="cudalike")
    state = {"phase": "setup"}

    def count_loop(ns):  # before the loop cell: count host reads per step, validation apart
        validate = ns["validate"]

        def counted_validate(window, *args, **kw):
            state["phase"] = "val"
            try:
                return validate(window, *args, **kw)
            finally:
                state["phase"] = "train"
        ns["validate"] = counted_validate
        state["phase"] = "train"
        state["reads"] = counting.enter_context(hostsync.count_reads(key=lambda: (state["phase"], ns.get("step"))))

    with contextlib.ExitStack() as counting:  # counts from the loop cell to the summary cell
        ns = run_cells("04_train", params, before={"1d2282fb": count_loop, "48e0c8aa": lambda ns: counting.close()})
    reads = state["reads"]
    # the loop ran on the compiled flex path
    model = ns["model"]
    assert model.config["attn_backend"] == "flex" and model.config["compile"] and model.flex_compiled
    assert ns["stopped_by"] == "steps" and ns["step"] == num_steps
    # item 4: one host read at each sync point (log steps; the end), none on the other steps
    train = {step: n for (phase, step), n in reads.by_key.items() if phase == "train"}
    for step in range(num_steps + 1):
        synced = step > 0 and (step % log_interval == 0 or step == num_steps)
        assert train.get(step, 0) == (1 if synced else 0), (step, train, reads.calls)
    rows = [r for r in ns["metrics"].rows if r.get("train_loss") is not None]
    assert [r["step"] for r in rows] == [3, 6] and all(r["train_loss"] > 0 for r in rows)
    assert ns["train_seconds"] > 0 and ns["final"]["tokens_per_s"] > 0

    # item 3: training and validation fit the compiled blocks' budget
    entries = _block_entries()
    assert entries <= RECOMPILE_BUDGET < torch._dynamo.config.recompile_limit, entries
    graphs = counters["stats"]["unique_graphs"]  # every Dynamo compile so far: the blocks' variants only
    assert graphs <= RECOMPILE_BUDGET, graphs

    # 05's scoring: rows of many lengths, batched and one at a time: nothing more compiles
    g = torch.Generator().manual_seed(0)
    items = []
    for n_ctx in (5, 9, 14, 20, 27, 33, 41, 50, 64, 90):
        ctx = torch.randint(1, 300, (n_ctx,), generator=g).tolist()
        ends = [torch.randint(1, 300, (1 + (n_ctx + j) % 7,), generator=g).tolist() for j in range(3)]
        items.append(evaluate.EncodedItem(rows=[ctx + e for e in ends], starts=[n_ctx] * 3, label=0,
                                          chars=[len(e) for e in ends], n_bytes=[len(e) for e in ends]))
    batched = evaluate.score_items(model, items, pad_id=0, shared_context=False)
    shared = evaluate.score_items(model, items, pad_id=0)
    one = evaluate.score_items_one_at_a_time(model, items)
    for a, b, c in zip(batched, shared, one):
        assert a["sum_losses"] == pytest.approx(c["sum_losses"], rel=1e-4)
        assert b["sum_losses"] == pytest.approx(c["sum_losses"], rel=1e-4)
    assert counters["stats"]["unique_graphs"] == graphs and _block_entries() == entries

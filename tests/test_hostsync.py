"""Host reads (nbcore.hostsync), agreeing across ranks in one collective (dist.agree), and the
compiled attention pieces made once (issue 12, items 3, 4 and 7). Fast; the training loop itself
is counted in test_gpu_paths.py."""
import math
import warnings

import pytest
import torch

from nbcore import attention, dist, hostsync


def test_device_loss_reads_once_and_names_the_first_bad_step():
    tracker = hostsync.DeviceLoss()
    assert tracker.read() == (None, None, None)
    with hostsync.count_reads() as reads:
        for step, loss in enumerate([2.0, 1.5, float("nan"), float("inf"), 1.0], start=1):
            tracker.add(torch.tensor(loss), step)
    assert reads.total == 0  # adding never reads
    with hostsync.count_reads() as reads:
        last, bad_step, bad_loss = tracker.read()
    assert reads.total == 1 and reads.calls == [(None, "tolist")]
    assert last == 1.0 and bad_step == 3 and math.isnan(bad_loss)
    ok = hostsync.DeviceLoss()
    ok.add(torch.tensor(0.5), 7)
    assert ok.read() == (0.5, None, None)


def test_count_reads_sees_every_kind_of_read_once():
    t = torch.arange(4.0)
    state = {"step": 0}
    with hostsync.count_reads(key=lambda: state["step"]) as reads:
        t.sum().item()
        state["step"] = 1
        float(t[0])
        t.tolist()
        bool(t[1] > 0)
        int(t[2])
        torch.cuda.synchronize()
        t + 1  # not a read
    assert reads.by_key == {0: 1, 1: 5}
    assert [w for _, w in reads.calls] == ["item", "__float__", "tolist", "__bool__", "__int__", "cuda.synchronize"]
    assert torch.Tensor.item is hostsync.torch.Tensor.item and float(t[3]) == 3.0  # restored


def test_agree_alone_and_bad_ops():
    assert dist.agree([1.5, 2, True], ["mean", "max", "max"]) == [1.5, 2.0, 1.0]
    with pytest.raises(ValueError, match="one of 'mean'"):
        dist.agree([1.0], ["avg"])
    with pytest.raises(ValueError):
        dist.agree([1.0, 2.0], ["sum"])


def test_compiled_pieces_are_made_once_and_block_mask_has_no_deprecated_flag(monkeypatch):
    monkeypatch.setenv("NBCORE_COMPILE_BACKEND", "aot_eager")
    monkeypatch.setattr(attention, "_COMPILED", {})
    assert attention.compile_backend() == "aot_eager"
    make = attention.compiled("create_block_mask")
    assert attention.compiled("create_block_mask") is make
    rule = attention.mask_rule(None, torch.tensor(64))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # create_block_mask(_compile=True) warns
        eager = attention.block_mask(rule, None, 256, "cpu")
        compiled = make(rule, None, None, 256, 256, device="cpu")
    assert torch.equal(eager.kv_num_blocks, compiled.kv_num_blocks)
    assert torch.equal(eager.to_dense(), compiled.to_dense())
    monkeypatch.delenv("NBCORE_COMPILE_BACKEND")
    assert attention.compile_backend() == "inductor"

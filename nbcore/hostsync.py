"""Host syncs: the moments the CPU waits for the GPU, kept to one per logged step.

A CUDA GPU runs the work the CPU queues; the CPU can run ahead and queue the next step while
the GPU still computes this one, unless something asks for a value on the host: `loss.item()`,
`float(loss)`, `.tolist()`, `bool(t)`, `torch.cuda.synchronize()`, a collective whose result is
read. Each such read drains the queue, and the GPU idles while the CPU catches up.

- `DeviceLoss`: the training loop's loss and its non-finite guard, kept on the device; `read()`
  brings both to the host in one read, at log steps only.
- `count_reads()`: counts host reads (by patching the calls above), so a test or `gpucheck`
  can show how many a training step makes.
"""
import contextlib
from dataclasses import dataclass, field

import torch


class DeviceLoss:
    """This step's training loss, and the first step whose loss was not finite, on the device.

        tracker.add(loss, step)       # every step: device ops only, no host read
        loss, bad_step, bad_loss = tracker.read()   # at a log step: one host read

    bad_step is None while every loss so far was finite; else the first step whose loss was
    nan or inf, and that loss (so a guard names the exact step even between log steps).
    """

    def __init__(self):
        self.last = None       # 0-d float32: the latest step's loss
        self.state = None      # (2,) float64: [first bad step or -1, its loss]

    def add(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach().float().reshape(())
        if self.state is None:
            self.state = torch.tensor([-1.0, 0.0], dtype=torch.float64, device=loss.device)
        new = (self.state[0] < 0) & ~torch.isfinite(loss)  # first non-finite loss: remember it
        fresh = torch.stack([torch.full_like(self.state[0], float(step)), loss.double()])
        self.state = torch.where(new, fresh, self.state)
        self.last = loss

    def read(self):
        """(loss, bad_step or None, bad_loss or None) as Python numbers: one host read."""
        if self.last is None:
            return None, None, None
        loss, bad_step, bad_loss = torch.cat([self.last.double().reshape(1), self.state]).tolist()
        if bad_step < 0:
            return loss, None, None
        return loss, int(bad_step), bad_loss


# ----------------------------------------------------------------------------------------------
# Counting host reads

READ_METHODS = ("item", "tolist", "__float__", "__int__", "__bool__")
_PLAIN = (torch.Tensor, torch.nn.Parameter)  # not the fake tensors torch.compile traces with


@dataclass
class ReadCount:
    """Host reads seen while counting: `total`, and `by_key[key]` for the key function's value."""
    total: int = 0
    by_key: dict = field(default_factory=dict)
    calls: list = field(default_factory=list)  # (key, what) in order

    def add(self, key, what):
        self.total += 1
        self.by_key[key] = self.by_key.get(key, 0) + 1
        self.calls.append((key, what))


@contextlib.contextmanager
def count_reads(key=lambda: None, include_cpu: bool = True):
    """Count host reads of tensors (Tensor.item, .tolist, float(), int(), bool()) and calls of
    torch.cuda.synchronize inside the block; `key()` names the current moment (e.g. the
    training step), so the counts come per key. Reads of CPU tensors count too unless
    include_cpu=False (on CPU they are free; the test uses them to stand in for CUDA ones).

        with count_reads(key=lambda: ns["step"]) as reads:
            ...
        reads.by_key  ->  {step: number of reads}

    Nested reads (tolist calling item) count once. torch.cuda.synchronize is replaced by a
    counter (it does nothing on a machine without CUDA anyway).
    """
    count = ReadCount()
    depth = [0]
    saved = {name: getattr(torch.Tensor, name) for name in READ_METHODS}
    saved_sync = torch.cuda.synchronize

    def wrap(name, fn):
        def read(self, *args, **kwargs):
            if depth[0] == 0 and type(self) in _PLAIN and (include_cpu or self.device.type != "cpu") \
                    and not _is_tracing():
                count.add(key(), name)
            depth[0] += 1
            try:
                return fn(self, *args, **kwargs)
            finally:
                depth[0] -= 1
        return read

    def synchronize(device=None):
        count.add(key(), "cuda.synchronize")
        if torch.cuda.is_available():
            saved_sync(device)

    for name, fn in saved.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    torch.cuda.synchronize = synchronize
    try:
        yield count
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        torch.cuda.synchronize = saved_sync


def _is_tracing() -> bool:
    """True while torch.compile traces (its reads are not the running program's)."""
    return torch.compiler.is_compiling()


__all__ = ["DeviceLoss", "count_reads", "ReadCount", "READ_METHODS"]

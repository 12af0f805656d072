"""Measuring training memory without a GPU: peak live tensor storage, counted op by op.

`PeakMemory` is a `TorchDispatchMode`: every tensor an op returns is looked at, its storage is
counted once while it lives (a weak reference says when it dies), and the running total's maximum
is the peak. That is what `torch.cuda.max_memory_allocated()` reports on a GPU, less the caching
allocator's rounding (blocks of 512 bytes) and the kernels' workspaces.

`cuda_autocast_rules()` makes a CPU run allocate as a CUDA run would: CUDA's autocast computes
`layer_norm` and `rms_norm` in float32 (their outputs are float32 copies), CPU's autocast keeps them
in bfloat16. `measure_step` runs one optimiser step of a model under both and reports the peak,
which `runs.estimate_memory` is tested against (tests/test_memory.py) and `nbcore.gpucheck` compares
with the GPU's own allocator.
"""
import contextlib
import weakref

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakMemory(TorchDispatchMode):
    """Peak bytes of live tensor storage while active (views and aliases counted once).

        with PeakMemory(track=model.parameters()) as mem:
            model(x, targets=y).backward()
        mem.peak, mem.current   # bytes

    `track`: tensors that exist before the mode starts (weights, optimiser state) to count from
    the start; tensors made inside the mode are found by themselves.
    """

    def __init__(self, track=()):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live = {}  # storage key -> (weakref, nbytes)
        for t in track:
            self.add(t)

    def add(self, t) -> None:
        """Count tensor `t`'s storage (once) until it is freed."""
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. sparse or wrapper tensors
            return
        key = (st.data_ptr(), st.device.type)
        if st.nbytes() == 0 or key in self._live:
            return
        nbytes = st.nbytes()
        self._live[key] = (weakref.ref(st, lambda _r, k=key: self._free(k)), nbytes)
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def _free(self, key) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.current -= entry[1]

    def reset_peak(self) -> None:
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            self.add(t)
        return out


_LOW = (torch.bfloat16, torch.float16)


@contextlib.contextmanager
def cuda_autocast_rules():
    """On CPU, run `F.layer_norm` and `F.rms_norm` in float32 under autocast, as CUDA's autocast does.

    Nothing changes outside autocast or for float32 inputs; the functions are restored on exit.
    """
    orig_rms, orig_ln = F.rms_norm, F.layer_norm

    def _up(t):
        return t.float() if isinstance(t, torch.Tensor) and t.dtype in _LOW else t

    def rms_norm(x, normalized_shape, weight=None, eps=None):
        if torch.is_autocast_enabled(x.device.type) and x.dtype in _LOW:
            with torch.autocast(x.device.type, enabled=False):
                return orig_rms(_up(x), normalized_shape, _up(weight), eps)
        return orig_rms(x, normalized_shape, weight, eps)

    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        if torch.is_autocast_enabled(x.device.type) and x.dtype in _LOW:
            with torch.autocast(x.device.type, enabled=False):
                return orig_ln(_up(x), normalized_shape, _up(weight), _up(bias), eps)
        return orig_ln(x, normalized_shape, weight, bias, eps)

    F.rms_norm, F.layer_norm = rms_norm, layer_norm
    try:
        yield
    finally:
        F.rms_norm, F.layer_norm = orig_rms, orig_ln


def _optimizer_tensors(optimizers):
    for opt in optimizers:
        for state in opt.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    yield v


def state_bytes(optimizers) -> int:
    """Bytes of optimiser state (moments, momentum buffers, step counters) held now."""
    seen, total = set(), 0
    for t in _optimizer_tensors(optimizers):
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def measure_step(model, optimizers, batch_size: int, seq_len: int, *, window=None, seed: int = 0,
                 emulate_cuda: bool = True) -> dict:
    """Peak live bytes of one training step (forward, backward, optimiser step, zero_grad).

    A first step, not measured, creates the optimisers' state (as in a real run from step 1 on);
    the second is measured with weights and state counted from the start. Returns bytes:
    {"peak", "static" (weights + optimiser state), "forward_backward" (peak up to the end of
    backward), "step" (peak during the optimiser step), "optimizer_state"}.
    Tokens are random ids without <|endoftext|> when the model knows its id.
    """
    g = torch.Generator().manual_seed(seed)
    V = model.vocab_size
    eot = model.config.get("eot_id")
    dev = next(model.parameters()).device

    def batch():
        x = torch.randint(0, V, (batch_size, seq_len), generator=g)
        if eot is not None:
            x[x == eot] = (eot + 1) % V
        return x.to(dev)

    rules = cuda_autocast_rules() if emulate_cuda else contextlib.nullcontext()
    was_training = model.training
    model.train()
    try:
        with rules:
            for measured in (False, True):
                x, y = batch(), batch()
                tracked = list(model.parameters()) + list(_optimizer_tensors(optimizers)) if measured else []
                with (PeakMemory(track=tracked) if measured else contextlib.nullcontext()) as mem:
                    static = mem.current if measured else 0
                    model(x, targets=y, window=window).backward()
                    fwd_bwd = mem.peak if measured else 0
                    if measured:
                        mem.reset_peak()
                    for opt in optimizers:
                        opt.step()
                    for opt in optimizers:
                        opt.zero_grad(set_to_none=True)
                    step = mem.peak if measured else 0
    finally:
        model.train(was_training)
    return {"peak": max(fwd_bwd, step), "static": static, "forward_backward": fwd_bwd, "step": step,
            "optimizer_state": state_bytes(optimizers)}


__all__ = ["PeakMemory", "cuda_autocast_rules", "measure_step", "state_bytes"]

"""Processes and devices: torch.distributed as torchrun sets it up, or one process alone.

torchrun (and the launcher, through papermill kernels that inherit the environment) sets
RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. `setup()` reads them: with
WORLD_SIZE > 1 it joins the process group (nccl on CUDA, gloo on CPU); otherwise it runs
alone on the best device (cuda, then Apple mps, then cpu) or the one asked for.
"""
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]


def pick_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' if available, else 'mps', else 'cpu'; an explicit choice is checked."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' asked for but torch sees no CUDA GPU; use device='auto' or 'cpu'")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device='mps' asked for but Apple MPS is not available; use device='auto' or 'cpu'")
    if kind not in ("cuda", "mps", "cpu"):
        raise ValueError(f"device {device!r}: use 'auto', 'cuda', 'cuda:N', 'mps' or 'cpu'")
    return device


def env_world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the environment torchrun sets; (0, 0, 1) alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, local, world


def setup(device: str = "auto", backend: str | None = None, timeout_s: float = 600) -> DistInfo:
    """Join the process group if torchrun started us (idempotent: safe to re-run a cell)."""
    import datetime

    rank, local, world = env_world()
    device = pick_device(device)
    if os.environ.get("NBCORE_LAUNCH_WORKER"):
        _die_with_parent()
    if world > 1:
        if device == "mps":
            raise RuntimeError("multi-process training on Apple mps is not supported; use one process")
        if device.startswith("cuda"):
            device = f"cuda:{local}"
            torch.cuda.set_device(local)
        backend = backend or ("nccl" if device.startswith("cuda") else "gloo")
        if not torch_dist.is_initialized():
            kwargs = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
            if device.startswith("cuda"):
                kwargs["device_id"] = torch.device(device)
            torch_dist.init_process_group(**kwargs)
    else:
        backend = None
    return DistInfo(rank=rank, local_rank=local, world_size=world, device=device, backend=backend)


def _die_with_parent() -> None:
    """Under the launcher, end this kernel when the papermill process that started it dies
    (torchrun stops every rank when one fails; a kernel left waiting in a collective would hang)."""
    if sys.platform != "linux":
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (SIGTERM would read as a stop request)
    except OSError:
        pass


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def cleanup() -> None:
    """Leave the process group (end of the notebook), all ranks together.

    The barrier keeps a fast rank from tearing down gloo while another still talks to it
    (which aborts the slower process with 'terminate called without an active exception').
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


def all_reduce_grads(params) -> None:
    """Average gradients over ranks (sum, then divide: gloo has no AVG), flattened into one buffer."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    world = torch_dist.get_world_size()
    by_dtype = {}
    for g in grads:
        by_dtype.setdefault((g.dtype, g.device), []).append(g)
    for gs in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in gs])
        torch_dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for g in gs:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n


def all_reduce(values, op: str = "mean", device="cpu") -> list[float]:
    """Reduce a list of floats over ranks ('mean', 'sum', 'max', 'min'); alone, returns them."""
    values = [float(v) for v in values]
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    ops = {"mean": torch_dist.ReduceOp.SUM, "sum": torch_dist.ReduceOp.SUM,
           "max": torch_dist.ReduceOp.MAX, "min": torch_dist.ReduceOp.MIN}
    torch_dist.all_reduce(t, op=ops[op])
    if op == "mean":
        t /= torch_dist.get_world_size()
    return t.tolist()


def agree(values, ops, device="cpu") -> list[float]:
    """Reduce a few floats over ranks, each with its own op ('mean', 'sum', 'max', 'min'), in one
    collective and one host read (an all_gather of a (k,) tensor, reduced on the host). Alone:
    the values as they are, with no tensor made."""
    values = [float(v) for v in values]
    if len(ops) != len(values) or any(op not in ("mean", "sum", "max", "min") for op in ops):
        raise ValueError(f"need one of 'mean', 'sum', 'max', 'min' per value, got {ops!r}")
    if not is_distributed():
        return values
    mine = torch.tensor(values, dtype=torch.float64, device=device)
    parts = [torch.empty_like(mine) for _ in range(torch_dist.get_world_size())]
    torch_dist.all_gather(parts, mine)
    columns = list(zip(*torch.stack(parts).tolist()))  # one tuple per value, one entry per rank
    reduce = {"mean": lambda c: sum(c) / len(c), "sum": sum, "max": max, "min": min}
    return [reduce[op](c) for op, c in zip(ops, columns)]


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s Python object on every rank (e.g. the run folder rank 0 made)."""
    if not is_distributed():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's object, in rank order, on every rank (alone: [obj])."""
    if not is_distributed():
        return [obj]
    out = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, device="cpu") -> bool:
    """True on every rank if `flag` is True on any rank (so all ranks stop together)."""
    return all_reduce([1.0 if flag else 0.0], "max", device)[0] > 0


__all__ = ["DistInfo", "pick_device", "env_world", "setup", "is_distributed", "cleanup", "barrier",
           "all_reduce_grads", "all_reduce", "agree", "broadcast_object", "gather_objects", "any_rank"]

"""Checkpoints that resume exactly: model, optimisers, every rank's loader position and RNG states, step.

A checkpoint is one file `checkpoints/step_000123.pt` in the run folder, written by rank 0
atomically (temp file, then rename), so a crash mid-save never leaves a broken file under the
real name. Loading restores everything, so on CPU the resumed loss curve equals the
uninterrupted one bit for bit. Files hold tensors and plain Python values; they are loaded
with `weights_only=True`, so a checkpoint from someone else cannot run code.
"""
import io
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from . import dist, fileio

FORMAT = 1
_NAME = re.compile(r"^step_(\d+)\.pt$")


def unwrap(model):
    """The module under torch.compile / DDP wrappers (whose state_dict keys carry no prefix)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        else:
            return model


def rng_state() -> dict:
    """All random states a training step can touch: Python, NumPy, torch CPU and CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    np.random.set_state(_tuples(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _tuples(x):
    """weights_only loading may turn tuples into lists; RNG setters want tuples back."""
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def _plain(x):
    """Convert numpy arrays/scalars inside RNG/loader states to lists/Python numbers for safe loading."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.copy())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    return x


def _numpy_back(state):
    """Undo `_plain` for NumPy's RNG state (its key array)."""
    kind, keys, pos, has_gauss, cached = state
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys, dtype=np.uint32)
    return (kind, keys, int(pos), int(has_gauss), float(cached))


def checkpoint_path(run_dir, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}.pt"


def list_checkpoints(run_dir) -> list[Path]:
    """The run's checkpoints, oldest first (`run_dir` may also be its checkpoints/ folder)."""
    folder = Path(run_dir)
    if folder.name != "checkpoints":
        folder = folder / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def readable(path) -> str | None:
    """Why a checkpoint file cannot be loaded (truncated, not a torch zip file), or None if it looks whole.

    Cheap: reads the zip's central directory at the end of the file (a write cut short lacks it)
    and checks that every member lies inside the file, without reading the tensors.
    """
    import zipfile

    try:
        size = os.path.getsize(path)
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.header_offset + info.compress_size > size:
                    return f"member {info.filename} runs past the end of the file"
            if not any(n.endswith("data.pkl") for n in z.namelist()):
                return "no data.pkl inside (not a torch checkpoint)"
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def latest(run_dir, warn: bool = True) -> Path | None:
    """The newest checkpoint that can be read; a truncated newer one is skipped with a warning."""
    folder = Path(run_dir) if Path(run_dir).name == "checkpoints" else Path(run_dir) / "checkpoints"
    clean_temp(folder)
    for path in reversed(list_checkpoints(run_dir)):
        why = readable(path)
        if why is None:
            return path
        if warn:
            import warnings

            warnings.warn(f"checkpoint {path.name} cannot be read ({why}); it was probably cut short by a "
                          f"crash. Falling back to the previous one.", stacklevel=2)
    return None


def clean_temp(folder) -> list[Path]:
    """Delete temporary files a killed checkpoint write left (`.step_*.pt.*.tmp`); returns them.

    Only one process writes a run folder at a time (the launcher locks it), so a temp file
    found here belongs to a write that will never finish.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = [p for p in folder.glob(".step_*.pt.*.tmp") if p.is_file()]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


DIVERGED_MARGIN = 2.0  # nats above ln(V) (uniform guessing) that count as diverged


def healthy_loss(loss: float, vocab_size: int) -> bool:
    """A training loss that is finite and not diverging: at most max(1.5 ln V, ln V + 2) nats.

    A fresh model predicts about uniformly (ln V); a loss far above that means the weights blew up.
    """
    import math

    if loss is None or not math.isfinite(loss):
        return False
    ln_v = math.log(max(int(vocab_size), 2))
    return loss <= max(1.5 * ln_v, ln_v + DIVERGED_MARGIN)


def save(path, model, optimizers, step: int, loader=None, extra: dict | None = None, keep: int = 0) -> Path | None:
    """Write a checkpoint (every rank must call it: each contributes its loader and RNG state).

    Rank 0 writes; `keep` > 0 deletes all but the newest `keep` checkpoints in that folder.
    Returns the path on rank 0, None on the others.
    """
    path = Path(path)
    mine = {"rng": _plain(rng_state()), "loader": _plain(loader.state_dict()) if loader is not None else None}
    buf = io.BytesIO()
    torch.save(mine, buf)  # tensors travel as bytes (objects holding tensors do not gather reliably)
    per_rank = [torch.load(io.BytesIO(b), weights_only=True) for b in dist.gather_objects(buf.getvalue())]
    rank = int(os.environ.get("RANK", "0")) if dist.is_distributed() else 0
    if rank == 0:
        clean_temp(path.parent)  # left by a write that was killed
        blob = {
            "format": FORMAT,
            "step": int(step),
            "model": unwrap(model).state_dict(),
            "optimizers": [opt.state_dict() for opt in optimizers],
            "optimizer_types": [type(opt).__name__ for opt in optimizers],
            "ranks": per_rank,
            "world_size": len(per_rank),
            "extra": _plain(extra or {}),
        }
        with fileio.atomic_path(path) as tmp:
            torch.save(blob, tmp)
        if keep > 0:
            for old in list_checkpoints(path.parent)[:-keep]:
                if old != path:
                    old.unlink(missing_ok=True)
    dist.barrier()
    return path if rank == 0 else None


def load(path, model, optimizers=(), loader=None, rank: int = 0, map_location="cpu",
         restore_rng: bool = True) -> dict:
    """Restore a checkpoint into `model`, `optimizers`, `loader` and the RNGs; return its dict.

    A checkpoint saved by N ranks resumes only on N ranks (each rank's loader position is its own).
    Distributed, rank 0 alone reads the file and broadcasts it: other nodes need no copy.
    """
    path = Path(path)
    if dist.is_distributed():
        blob = _read_on_rank0(path, map_location)
    else:
        blob = _read_checked(path, map_location)
    if blob.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} has format {blob.get('format')}, this nbcore reads {FORMAT}")
    world = dist.env_world()[2]
    if blob["world_size"] != world and (loader is not None or restore_rng):
        raise ValueError(f"checkpoint {path} was written by {blob['world_size']} ranks; resume it with "
                         f"--nproc {blob['world_size']} (now {world})")
    if len(optimizers) != len(blob["optimizers"]):
        raise ValueError(f"checkpoint has {len(blob['optimizers'])} optimisers ({blob['optimizer_types']}), "
                         f"this run built {len(optimizers)}: same arch and groups are needed to resume")
    unwrap(model).load_state_dict(blob["model"])
    for opt, sd in zip(optimizers, blob["optimizers"]):
        opt.load_state_dict(sd)
    mine = blob["ranks"][rank] if rank < len(blob["ranks"]) else blob["ranks"][0]
    if loader is not None and mine["loader"] is not None:
        loader.load_state_dict(mine["loader"])
    if restore_rng:
        rng = dict(mine["rng"])
        rng["numpy"] = _numpy_back(rng["numpy"])
        set_rng_state(rng)
    return blob


def _read_checked(path: Path, map_location) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                         f"pick another one from {path.parent}") from e


def _read_on_rank0(path: Path, map_location) -> dict:
    """Rank 0 reads the checkpoint; every rank gets it (or rank 0's error, raised everywhere)."""
    payload = None
    if torch.distributed.get_rank() == 0:
        try:
            buf = io.BytesIO()
            torch.save(_read_checked(path, "cpu"), buf)
            payload = ("ok", buf.getvalue())
        except (FileNotFoundError, ValueError) as e:
            payload = (type(e).__name__, str(e))
    kind, data = dist.broadcast_object(payload)
    if kind != "ok":
        raise (FileNotFoundError if kind == "FileNotFoundError" else ValueError)(data)
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def read(path, map_location="cpu") -> dict:
    """The raw checkpoint dict (model weights, step, extra) without restoring anything."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


__all__ = ["unwrap", "rng_state", "set_rng_state", "checkpoint_path", "list_checkpoints", "latest", "readable",
           "clean_temp", "healthy_loss",
           "save", "load", "read"]

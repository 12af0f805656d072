"""Run folders and what they record.

`runs/<YYYYmmdd_HHMMSS>_<name>/` (under `nbcore.paths.runs_dir()`) receives the executed
notebook, `metrics.csv`, `summary.json`, a snapshot of the nbcore source, checkpoints.
A folder that exists is never reused for a new run; resuming goes through `open_run`.

Also here: versions / git / hardware facts for the summary, the cost estimate, model FLOPs
utilisation, and the memory estimate that picks a batch size when it is left on `auto`.
"""
import csv
import datetime
import io
import math
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from . import fileio, paths

METRICS_COLUMNS = ["step", "tokens", "train_loss", "val_loss", "val_bpb", "lr", "elapsed_s", "tokens_per_s"]
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# ---------------------------------------------------------------- folders
def new_run_dir(name: str, root=None, now: datetime.datetime | None = None) -> Path:
    """Create `root/<YYYYmmdd_HHMMSS>_<name>/`; an existing folder is an error, never overwritten."""
    if not name or not _SAFE_NAME.match(name):
        raise ValueError(f"run name {name!r}: use letters, digits, '.', '_' or '-' (no spaces or slashes)")
    root = Path(root) if root is not None else paths.runs_dir()
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d_%H%M%S")
    run = root / f"{stamp}_{name}"
    root.mkdir(parents=True, exist_ok=True)
    try:
        run.mkdir()
    except FileExistsError:
        raise FileExistsError(f"run folder {run} already exists; it is never overwritten. Choose another "
                              f"name, wait a second, or resume it (--resume {run})") from None
    return run


def open_run(run) -> Path:
    """An existing run folder to resume: a path, or a folder name under runs_dir()."""
    p = Path(run)
    if not p.is_dir():
        p = paths.runs_dir() / str(run)
    if not p.is_dir():
        raise FileNotFoundError(f"no run folder {run!r} (looked in {paths.runs_dir()})")
    return p


class RunLocked(FileExistsError):
    """Another live process holds the run folder."""


def lock_run(run_dir):
    """Hold the run folder for this process: an exclusive `fcntl.flock` on `run_dir/.lock`.

    The lock dies with the process holding it (however it ends: exit, kill -9, a crash), so it
    is never stale. A second process asking for it is refused with the holder's pid. Returns
    the open lock file (close it to release), or None where flock does not exist (Windows).
    """
    try:
        import fcntl
    except ImportError:
        return None
    import socket

    path = Path(run_dir) / ".lock"
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "a process"
        f.close()
        raise RunLocked(f"run folder {run_dir} is in use: {holder} is writing into it. Two processes must "
                        f"never write one run; wait for it to end (or stop it: Ctrl-C, or kill its pid), then "
                        f"resume") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
    f.flush()
    return f


def claim_run_dir(run_dir) -> Path:
    """Use a folder the launcher made for this run; refuse one that already holds a run's record."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "metrics.csv").exists() or (run_dir / "summary.json").exists():
        raise FileExistsError(f"{run_dir} already holds a run (metrics.csv/summary.json); it is never "
                              f"overwritten. Resume it (resume='{run_dir}') or choose a new run folder")
    return run_dir


# ---------------------------------------------------------------- metrics
def read_metrics(run_dir) -> list[dict]:
    """metrics.csv as a list of dicts with floats (ints for step and tokens), empty if missing."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                if v in ("", None):
                    row[k] = None
                elif k in ("step", "tokens"):
                    row[k] = int(float(v))
                else:
                    row[k] = float(v)
            rows.append(row)
    return rows


class MetricsLog:
    """metrics.csv, rewritten atomically on every `add` (small: one row per logged step).

    On resume, rows after the checkpoint's step are dropped so the curve continues cleanly.
    """

    def __init__(self, run_dir, resume_step: int | None = None, enabled: bool = True):
        self.path = Path(run_dir) / "metrics.csv"
        self.enabled = enabled
        self.rows = read_metrics(run_dir) if resume_step is not None else []
        if resume_step is not None:
            self.rows = [r for r in self.rows if r["step"] <= resume_step]

    def add(self, **row) -> dict:
        unknown = set(row) - set(METRICS_COLUMNS)
        if unknown:
            raise ValueError(f"metrics columns are {METRICS_COLUMNS}; got unknown {sorted(unknown)}")
        row = {k: row.get(k) for k in METRICS_COLUMNS}
        self.rows.append(row)
        self.flush()
        return row

    def flush(self) -> None:
        if not self.enabled:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) and k == "lr" else v))
                        for k, v in r.items()})
        fileio.write_text(self.path, buf.getvalue())

    def column(self, name: str) -> list:
        return [r[name] for r in self.rows]


# ---------------------------------------------------------------- facts for the summary
def versions() -> dict:
    import numpy
    import torch

    import nbcore

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "cuda": torch.version.cuda, "cudnn": (torch.backends.cudnn.version() if torch.cuda.is_available() else None),
            "nbcore": nbcore.__version__, "platform": platform.platform()}


def git_info(repo=None) -> dict:
    """{'commit': sha or None, 'dirty': bool or None} of the repo holding nbcore."""
    repo = Path(repo or paths.REPO_ROOT)

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "HEAD")
        commit = head.stdout.strip() if head.returncode == 0 else None
        status = git("status", "--porcelain", "--untracked-files=no")
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def hardware_info() -> dict:
    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "ram_bytes": total_ram_bytes(), "gpus": []}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": p.name, "memory_bytes": p.total_memory,
                                 "capability": f"{p.major}.{p.minor}"})
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        info["gpus"].append({"name": "Apple MPS", "memory_bytes": None})
    return info


def total_ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# Dense bf16 tensor-core peaks (FLOP/s) for MFU; unknown GPUs get no MFU rather than a wrong one.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "GH200": 989e12, "A100": 312e12,
                   "A800": 312e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10G": 70e12,
                   "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "RTX A6000": 155e12, "V100": 125e12,
                   "T4": 65e12, "B200": 2250e12}


def peak_flops(device_name: str | None) -> float | None:
    """Peak bf16 FLOP/s for a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3'), None if unknown."""
    if not device_name:
        return None
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_BF16_FLOPS[key]
    return None


def mfu(flops_per_token: float, tokens_per_s: float, world_size: int, device_name: str | None) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak of all devices.

    `flops_per_token` is the model's training cost per token (forward + backward, as
    `model.flops_per_token()` returns it), so no further factor is applied.
    """
    peak = peak_flops(device_name)
    if peak is None or not flops_per_token:
        return None
    return flops_per_token * tokens_per_s / (peak * world_size)


def estimate_cost(wall_seconds: float, gpu_hourly_price: float, num_gpus: int) -> float:
    """Dollars for `num_gpus` GPUs at `gpu_hourly_price` each for `wall_seconds`."""
    return round(wall_seconds / 3600 * gpu_hourly_price * num_gpus, 4)


def write_summary(run_dir, parameters: dict, final: dict, world_size: int, extra: dict | None = None,
                  gpu_hourly_price: float = 0.0) -> Path:
    """summary.json: parameters, versions, git, hardware, world size, final metrics and cost."""
    wall = float(final.get("wall_seconds") or 0.0)
    summary = {
        "parameters": parameters,
        "versions": versions(),
        "git": git_info(),
        "hardware": hardware_info(),
        "world_size": world_size,
        "final": final,
        "estimated_cost_usd": estimate_cost(wall, gpu_hourly_price, world_size),
        "gpu_hourly_price": gpu_hourly_price,
        "written": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    summary.update(extra or {})
    return fileio.write_json(Path(run_dir) / "summary.json", _jsonable(summary))


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, Path):
        return str(x)
    try:
        return x.item()
    except AttributeError:
        return str(x)


def snapshot_source(run_dir) -> Path:
    """Copy nbcore/*.py into run_dir/nbcore_src/ so the record shows the code that ran."""
    src = Path(__file__).resolve().parent
    dst = Path(run_dir) / "nbcore_src"
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.py")):
        fileio.write_bytes(dst / f.name, f.read_bytes())
    return dst


# ---------------------------------------------------------------- memory and batch size
def estimate_memory(num_params: int, num_layers: int, model_dim: int, vocab_size: int, seq_len: int,
                    batch_size: int, dtype_bytes: int = 2, optimizer_bytes_per_param: int = 8,
                    mlp_ratio: float = 4.0, flash_attention: bool = True, num_heads: int = 1) -> dict:
    """Rough training memory in bytes for one rank: weights + grads + optimiser state + activations.

    Weights and grads are kept in float32 (4 + 4 bytes per parameter); Adam keeps two moments
    (8 bytes), Muon one (4). Activations per token and layer follow Korthikanti et al. (2022):
    about D * (10 + 4 * mlp_ratio) values saved for backward (attention with a fused kernel saves
    no T x T scores; without one add H * T), plus the float32 logits and their gradient (2 * 4 * V).
    """
    per_layer_values = model_dim * (10 + 4 * mlp_ratio) + (0 if flash_attention else num_heads * seq_len)
    act_per_token = num_layers * per_layer_values * dtype_bytes + 2 * 4 * vocab_size + 4 * model_dim
    tokens = batch_size * seq_len
    out = {"weights": num_params * 4, "grads": num_params * 4,
           "optimizer": num_params * optimizer_bytes_per_param,
           "activations_per_token": int(act_per_token), "activations": int(act_per_token * tokens)}
    out["total"] = out["weights"] + out["grads"] + out["optimizer"] + out["activations"]
    return out


def device_memory_bytes(device: str) -> int | None:
    import torch

    if device.startswith("cuda"):
        idx = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        return torch.cuda.get_device_properties(idx).total_memory
    return total_ram_bytes()


def auto_batch_size(budget_bytes: int, max_batch: int = 1024, fraction: float = 0.85, **estimate_kwargs) -> int:
    """The largest power-of-two batch (sequences per rank) whose estimate fits `fraction` of budget.

    Raises if even one sequence does not fit, saying how much it needs.
    """
    best = 0
    b = 1
    while b <= max_batch:
        if estimate_memory(batch_size=b, **estimate_kwargs)["total"] <= fraction * budget_bytes:
            best = b
        else:
            break
        b *= 2
    if best == 0:
        need = estimate_memory(batch_size=1, **estimate_kwargs)["total"]
        raise MemoryError(f"one sequence needs about {need / 2**30:.1f} GiB, more than {fraction:.0%} of "
                          f"{budget_bytes / 2**30:.1f} GiB: use a smaller model or seq_len")
    return best


def copy_into(run_dir, src, name: str | None = None) -> Path:
    """Copy a file into the run folder (e.g. the tokenizer's meta.json as its reference)."""
    dst = Path(run_dir) / (name or Path(src).name)
    fileio.write_bytes(dst, Path(src).read_bytes())
    return dst


def is_run_dir(p) -> bool:
    return Path(p).is_dir() and ((Path(p) / "metrics.csv").exists() or (Path(p) / "checkpoints").is_dir())




# ---------------------------------------------------------------- during the loop
def peak_memory_bytes(device: str) -> int | None:
    """Peak memory of this process: CUDA allocator peak on GPU, max resident set size on CPU."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(kb * (1 if sys.platform == "darwin" else 1024))
    except (ImportError, OSError):
        return None


class StopRequest:
    """Ctrl-C (SIGINT), SIGTERM (a spot/preemptible GPU being taken back) or the launcher's stop
    file ask the loop to stop at the next step boundary.

    Use as `with runs.StopRequest() as stop: ... if stop.requested: break` (checking it every
    few steps is fine). The loop then saves a usable checkpoint instead of dying mid-update.
    A second signal interrupts at once. The launcher, which gets the terminal's Ctrl-C and the
    machine's SIGTERM, writes the file named by $NBCORE_STOP_FILE; every rank sees it.
    Outside the main thread (where signals cannot be caught) only the file is watched.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, stop_file=None):
        self._requested = False
        self.reason = None  # "SIGINT", "SIGTERM" or what the stop file says
        self.stop_file = stop_file if stop_file is not None else (os.environ.get("NBCORE_STOP_FILE") or None)
        self._old = {}

    @property
    def requested(self) -> bool:
        if not self._requested and self.stop_file and os.path.exists(self.stop_file):
            self._requested = True
            try:
                self.reason = Path(self.stop_file).read_text().strip() or "stop file"
            except OSError:
                self.reason = "stop file"
        return self._requested

    @requested.setter
    def requested(self, value: bool) -> None:
        self._requested = bool(value)

    def _handler(self, signum, frame):
        import signal

        if self._requested:  # second signal: give up at once
            raise KeyboardInterrupt
        self._requested = True
        self.reason = signal.Signals(signum).name
        print(f"\n{self.reason}: finishing this step and saving a checkpoint (send it again to abort)", flush=True)

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        return False


class LivePlot:
    """Train and val loss against tokens, redrawn in place in the notebook (IPython display handle)."""

    def __init__(self, title: str = "", enabled: bool = True):
        self.enabled = enabled
        self.title = title
        self.handle = None

    def figure(self, rows):
        import matplotlib

        if "inline" not in matplotlib.get_backend().lower() and "ipympl" not in matplotlib.get_backend().lower():
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.6))
        tr = [(r["tokens"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
        va = [(r["tokens"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        if tr:
            ax.plot(*zip(*tr), lw=1, alpha=0.7, label="train")
        if va:
            ax.plot(*zip(*va), "o-", ms=3, label="val")
        ax.set_xlabel("tokens seen (all ranks)")
        ax.set_ylabel("loss (nats per token)")
        ax.set_title(self.title)
        ax.grid(alpha=0.3)
        if tr or va:
            ax.legend()
        fig.tight_layout()
        plt.close(fig)  # shown through the display handle only
        return fig

    def update(self, rows):
        if not self.enabled:
            return None
        fig = self.figure(rows)
        try:
            from IPython.display import display
        except ImportError:
            return fig
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        return fig

    def save(self, rows, path) -> Path:
        fig = self.figure(rows)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with fileio.atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
        return path


__all__ = ["METRICS_COLUMNS", "new_run_dir", "open_run", "claim_run_dir", "read_metrics", "MetricsLog",
           "versions", "git_info", "hardware_info", "peak_flops", "mfu", "estimate_cost", "write_summary",
           "snapshot_source", "estimate_memory", "device_memory_bytes", "auto_batch_size", "copy_into",
           "is_run_dir", "peak_memory_bytes", "StopRequest", "LivePlot", "lock_run", "RunLocked"]

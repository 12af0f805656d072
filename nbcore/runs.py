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

METRICS_COLUMNS = ["step", "tokens", "train_loss", "val_loss", "val_bpb", "lr", "elapsed_s", "tokens_per_s", "val_tokens",
                   "mfu"]
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


_HELD_LOCKS = {}  # lock path -> this process's open lock file (a notebook cell run twice reuses it)


def lock_run(run_dir):
    """Hold the run folder for this process: an exclusive `fcntl.flock` on `run_dir/.lock`.

    The lock dies with the process holding it (however it ends: exit, kill -9, a crash), so it
    is never stale. A second process asking for it is refused with the holder's pid; this process
    asking again gets the lock it holds. Returns the open lock file (close it to release), or None
    where flock does not exist (Windows).
    """
    try:
        import fcntl
    except ImportError:
        return None
    import socket

    path = Path(run_dir).resolve() / ".lock"
    held = _HELD_LOCKS.get(path)
    if held is not None and not held.closed:
        return held
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
    _HELD_LOCKS[path] = f
    return f


def hold_run(run_dir):
    """The training chapter's lock on its run folder: `lock_run`, unless the launcher that started
    this kernel already holds it ($NBCORE_LAUNCH_WORKER), in which case None. A notebook run by hand
    (JupyterLab, or papermill alone) thus locks its run folder as a launch does."""
    if os.environ.get("NBCORE_LAUNCH_WORKER"):
        return None
    return lock_run(run_dir)


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


# Dense (no sparsity) tensor-core peaks in FLOP/s per GPU, by the dtype the matmuls run in, from
# NVIDIA's data sheets. "float32" is plain FP32 (no TF32), "tf32" TF32 tensor cores, "float8" e4m3.
# Unknown GPUs get no MFU rather than a wrong one. Names are matched longest first, so "H100 PCIe"
# and "H100 NVL" win over "H100" (the SXM card: "NVIDIA H100 80GB HBM3").
PEAK_FLOPS = {
    "B200":      {"bfloat16": 2250e12, "float16": 2250e12, "tf32": 1100e12, "float32": 80e12, "float8": 4500e12},
    "H200":      {"bfloat16": 989e12, "float16": 989e12, "tf32": 494e12, "float32": 67e12, "float8": 1979e12},
    "GH200":     {"bfloat16": 989e12, "float16": 989e12, "tf32": 494e12, "float32": 67e12, "float8": 1979e12},
    "H100":      {"bfloat16": 989e12, "float16": 989e12, "tf32": 494e12, "float32": 67e12, "float8": 1979e12},
    "H100 SXM":  {"bfloat16": 989e12, "float16": 989e12, "tf32": 494e12, "float32": 67e12, "float8": 1979e12},
    "H100 NVL":  {"bfloat16": 835e12, "float16": 835e12, "tf32": 418e12, "float32": 60e12, "float8": 1671e12},
    "H100 PCIe": {"bfloat16": 756e12, "float16": 756e12, "tf32": 378e12, "float32": 51e12, "float8": 1513e12},
    "H800":      {"bfloat16": 989e12, "float16": 989e12, "tf32": 494e12, "float32": 67e12, "float8": 1979e12},
    "A100":      {"bfloat16": 312e12, "float16": 312e12, "tf32": 156e12, "float32": 19.5e12},
    "A800":      {"bfloat16": 312e12, "float16": 312e12, "tf32": 156e12, "float32": 19.5e12},
    "L40S":      {"bfloat16": 362e12, "float16": 362e12, "tf32": 183e12, "float32": 91.6e12, "float8": 733e12},
    "L40":       {"bfloat16": 181e12, "float16": 181e12, "tf32": 90.5e12, "float32": 90.5e12, "float8": 362e12},
    "L4":        {"bfloat16": 121e12, "float16": 121e12, "tf32": 60e12, "float32": 30.3e12, "float8": 242e12},
    "A10G":      {"bfloat16": 70e12, "float16": 70e12, "tf32": 35e12, "float32": 31.2e12},
    "A10":       {"bfloat16": 125e12, "float16": 125e12, "tf32": 62.5e12, "float32": 31.2e12},
    "RTX 4090":  {"bfloat16": 165e12, "float16": 165e12, "tf32": 82.6e12, "float32": 82.6e12, "float8": 330e12},
    "RTX 3090":  {"bfloat16": 71e12, "float16": 71e12, "tf32": 35.6e12, "float32": 35.6e12},
    "RTX A6000": {"bfloat16": 155e12, "float16": 155e12, "tf32": 77.4e12, "float32": 38.7e12},
    "V100":      {"float16": 125e12, "float32": 15.7e12},
    "V100-PCIE": {"float16": 112e12, "float32": 14e12},
    "T4":        {"float16": 65e12, "float32": 8.1e12},
}
PEAK_BF16_FLOPS = {k: v["bfloat16"] for k, v in PEAK_FLOPS.items() if "bfloat16" in v}  # older name, bf16 only


def peak_flops(device_name: str | None, dtype: str = "bfloat16", tf32: bool = False) -> float | None:
    """Peak FLOP/s of a CUDA device (e.g. 'NVIDIA H100 80GB HBM3') for matmuls in `dtype`.

    dtype: "bfloat16", "float16", "float32" (TF32 tensor cores if `tf32`) or "float8"; a torch dtype
    works too. None if the device or its peak for that dtype is unknown (a V100 has no bfloat16).
    """
    if not device_name:
        return None
    dtype = str(dtype).removeprefix("torch.")
    if dtype == "float32" and tf32:
        dtype = "tf32"
    name = device_name.upper()
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key.upper() in name:
            return PEAK_FLOPS[key].get(dtype)
    return None


def mfu(flops_per_token: float, tokens_per_s: float, world_size: int, device_name: str | None,
        dtype: str = "bfloat16", tf32: bool = False) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak of all devices for `dtype`.

    `flops_per_token` is the model's training cost per token (forward + backward, as
    `model.flops_per_token()` returns it), so no further factor is applied. `dtype` is the
    dtype the matmuls really ran in (float16 on a T4 or V100, bfloat16 from Ampere on).
    """
    peak = peak_flops(device_name, dtype, tf32)
    if peak is None or not flops_per_token or not tokens_per_s:
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
# Bytes saved for backward per token, counted with nbcore.memory.PeakMemory under CUDA's autocast
# rules (tests/test_memory.py checks every arch and size preset against such a measurement).
# Per layer: c_D·D + c_A·A + c_F·F (+ c_KV·A_kv for llama3) with A = H·Dh the attention width,
# F the MLP hidden width; "rest" is the embeddings and the final norm (c·D); "ve" is one value
# embedding table and the two layers it feeds (c·A); "skip" one U-net skip (c·D).
# 2-byte compute (bfloat16/float16) and float32 differ: the residual stream is float32 either way.
ACTIVATION_BYTES = {
    ("gpt", 2): {"D": 16, "A": 24, "F": 4, "rest": 10, "ve": 8, "skip": 2},
    ("gpt", 4): {"D": 20, "A": 28, "F": 8, "rest": 12, "ve": 12, "skip": 2},
    ("nanogpt", 2): {"D": 20, "A": 0, "F": 4, "rest": 6},
    ("nanogpt", 4): {"D": 32, "A": 0, "F": 8, "rest": 8},
    ("llama3", 2): {"D": 26, "A": 4, "KV": 4, "F": 8, "rest": 10},
    ("llama3", 4): {"D": 24, "A": 8, "KV": 8, "F": 16, "rest": 12},
}


def activation_bytes_per_token(arch: str, num_layers: int, model_dim: int, vocab_size: int, seq_len: int, *,
                               num_heads: int = 1, head_dim: int | None = None, num_kv_heads: int | None = None,
                               mlp_dim: int | None = None, dtype_bytes: int = 2, value_embeds: int = 0,
                               unet_skips: int = 0, softcap: bool = True, dense_masks: bool = False,
                               fp8_head: bool = False) -> int:
    """Bytes kept per token between forward and backward, at the start of backward (the peak).

    Per layer (see ACTIVATION_BYTES): the residual stream in float32, the normalised inputs of each
    matmul in the compute dtype, q/k/v (and k/v norms and rotary in float32 under CUDA's autocast),
    attention output and its log-sum-exp (4·H), the MLP's hidden activations. Attention kernels that
    take a dense (B, 1, T, T) mask (SDPA with sliding windows or documents; not FlexAttention, not
    the causal kernel) also keep it as a bias in the compute dtype: dtype_bytes·T per layer.
    The logits: V-sized float32 buffers, four at the start of backward with the soft-cap (tanh's
    output, log-softmax's output, and the two gradients being formed), three without.
    """
    key = (arch, 2 if dtype_bytes <= 2 else 4)
    if key not in ACTIVATION_BYTES:
        raise ValueError(f"no activation model for arch={arch!r}; known: {sorted({a for a, _ in ACTIVATION_BYTES})}")
    c = ACTIVATION_BYTES[key]
    D, L, H = model_dim, num_layers, num_heads
    A = H * (head_dim or D // H)
    A_kv = (num_kv_heads or H) * (head_dim or D // H)
    F = mlp_dim or 4 * D
    per_layer = c["D"] * D + c["A"] * A + c.get("KV", 0) * A_kv + c["F"] * F + (12 if arch == "gpt" else 4) * H + 8
    if dense_masks:
        per_layer += dtype_bytes * seq_len
    out = L * per_layer + c["rest"] * D + 16
    if arch == "gpt":
        out += c["ve"] * A * value_embeds + c["skip"] * D * unet_skips + (2 * D if fp8_head else 0)
    out += (16 if arch == "gpt" and softcap else 12) * vocab_size
    return int(out)


def estimate_memory(num_params: int, num_layers: int, model_dim: int, vocab_size: int, seq_len: int,
                    batch_size: int, dtype_bytes: int = 2, optimizer_bytes_per_param: int = 8, *,
                    arch: str = "gpt", num_heads: int = 1, head_dim: int | None = None,
                    num_kv_heads: int | None = None, mlp_dim: int | None = None, muon_params: int = 0,
                    head_params: int = 0, value_embeds: int = 0, unet_skips: int = 0, softcap: bool = True,
                    dense_masks: bool = False, fp8_head: bool = False, tied_embeddings: bool = False,
                    newton_schulz_bytes: int = 0, cast_params: int = 0, adam_decay_params: int = 0,
                    adam_decay_largest: int = 0) -> dict:
    """Peak training memory of one rank in bytes, with its parts (nbcore.model's eager code).

    weights and grads: float32, 4 bytes per parameter each. optimizer: Muon keeps one momentum
    buffer (4 bytes) per parameter it trains (`muon_params`), Adam/AdamW two moments (8 bytes) for
    the rest (`optimizer_bytes_per_param`). activations: `activation_bytes_per_token` x B·T.
    The peak is the largest of three moments of a step, each on top of weights and optimiser state:
    the start of backward (every activation, the head's gradient, the first one formed:
    `head_params`, and under 2-byte autocast the cached low-precision copies of the matmul
    weights, 2 bytes per `cast_params`); the end of backward (all gradients; tied embeddings add
    the lookup's gradient and its sum with the head's: two V x D float32 buffers); the optimiser
    step (all gradients, and Muon's update and its orthogonalised copy: 8 bytes per Muon
    parameter, and `newton_schulz_bytes`, the iteration's
    work space for the largest matrix; or, when Adam's groups decay (`optim.DecoupledAdam`), its copy of
    the weights before its step, 4 bytes per `adam_decay_params`, and one buffer the size of the largest
    of them for the cautious mask: whichever is larger, as the optimisers step one after the other).
    `memory_kwargs(model)` fills in the arguments.
    """
    act = activation_bytes_per_token(arch, num_layers, model_dim, vocab_size, seq_len, num_heads=num_heads,
                                     head_dim=head_dim, num_kv_heads=num_kv_heads, mlp_dim=mlp_dim,
                                     dtype_bytes=dtype_bytes, value_embeds=value_embeds, unet_skips=unet_skips,
                                     softcap=softcap, dense_masks=dense_masks, fp8_head=fp8_head)
    tokens = batch_size * seq_len
    out = {"weights": num_params * 4, "grads": num_params * 4,
           "optimizer": muon_params * 4 + (num_params - muon_params) * optimizer_bytes_per_param,
           "activations_per_token": act, "activations": act * tokens, "step_temporaries": max(muon_params * 8 + newton_schulz_bytes, (adam_decay_params + adam_decay_largest) * 4)}
    base = out["weights"] + out["optimizer"]
    out["backward_start"] = base + out["activations"] + head_params * 4 + (2 * cast_params if dtype_bytes == 2 else 0)
    out["backward_end"] = base + out["grads"] + (8 * vocab_size * model_dim if tied_embeddings else 0)
    out["step"] = base + out["grads"] + out["step_temporaries"]
    out["total"] = max(out["backward_start"], out["backward_end"], out["step"])
    return out


def memory_kwargs(model, world_size: int = 1, dense_masks: bool | None = None, adam_weight_decay: float = 0.0) -> dict:
    """estimate_memory's arguments (all but batch_size) for a built model of nbcore.model.

    dense_masks: None = as the model runs on its device (SDPA with sliding windows or document
    masks keeps (B, 1, T, T) biases; FlexAttention does not).
    adam_weight_decay: 04's parameter; > 0 makes Adam's decaying groups copy their weights each step.
    """
    import torch

    cfg = model.config
    arch = cfg["arch"]
    dtype_bytes = 4 if cfg["dtype"] == "float32" else 2
    groups = model.configure_optimizers()
    muon_shapes = [p.shape for g in groups if g["optimizer"] == "muon" for p in g["params"]]
    muon = sum(math.prod(s) for s in muon_shapes)
    # Newton-Schulz on an (m, n) matrix, m <= n: X and its next value (m·n each), A, A·A and B (m·m each)
    ns = max((4 * (2 * s[-2] * s[-1] + 3 * min(s[-2], s[-1]) ** 2) for s in muon_shapes), default=0)
    head = getattr(model, "head", None) if arch == "gpt" else getattr(model, "lm_head", None)
    cast = sum(mod.weight.numel() for mod in model.modules() if isinstance(mod, torch.nn.Linear))
    tied = head is None
    if tied:  # the embedding's gradient comes first, from the head's matmul
        head = model.embed if arch == "gpt" else (model.wte if arch == "nanogpt" else model.embed_tokens)
    decayed = [p.numel() for g in groups if g["optimizer"] == "adam" and g.get("weight_decay") is True
               for p in g["params"]] if adam_weight_decay > 0 else []  # optim.DecoupledAdam's copies
    kw = dict(num_params=model.num_params(), num_layers=cfg["num_layers"], model_dim=cfg["model_dim"],
              vocab_size=cfg["vocab_size"], seq_len=cfg["seq_len"], dtype_bytes=dtype_bytes, arch=arch,
              num_heads=cfg["num_heads"], head_dim=cfg.get("head_dim"), muon_params=muon,
              head_params=head.weight.numel(), tied_embeddings=tied, newton_schulz_bytes=ns,
              cast_params=cast + (head.weight.numel() if tied else 0),
              adam_decay_params=sum(decayed), adam_decay_largest=max(decayed, default=0))
    if arch == "gpt":
        if dense_masks is None:
            dense_masks = cfg["attn_backend"] != "flex" and (cfg["sliding_window"] or cfg["eot_id"] is not None)
        kw.update(mlp_dim=int(cfg["mlp_ratio"] * cfg["model_dim"]), value_embeds=cfg["value_embeds"],
                  unet_skips=cfg["num_layers"] // 2 if cfg["unet_skips"] else 0, softcap=bool(cfg["softcap"]),
                  dense_masks=bool(dense_masks), fp8_head=bool(cfg["fp8_head"]))
    elif arch == "nanogpt":
        kw.update(mlp_dim=int(cfg["mlp_ratio"] * cfg["model_dim"]), softcap=False)
    else:
        kw.update(mlp_dim=cfg["ffn_dim"], num_kv_heads=cfg["num_kv_heads"], softcap=False)
    return kw


def device_memory_bytes(device: str) -> int | None:
    import torch

    if device.startswith("cuda"):
        idx = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        return torch.cuda.get_device_properties(idx).total_memory
    return total_ram_bytes()


def auto_batch_cap(device_type: str) -> int:
    """The largest B `batch_size="auto"` picks: memory is the limit on a GPU; on CPU (and mps) time is, and
    100 steps of 8 x 256 tokens take a minute or two."""
    return 1024 if device_type == "cuda" else 8


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


def _is_oom(exc) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def _free_memory(clear=None) -> None:
    import gc

    import torch

    if clear is not None:
        clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fit_batch(try_step, batch_size: int, grad_accum: int, auto: bool, *, clear=None, say=print) -> tuple:
    """Run the first step, `try_step(B)`, inside an out-of-memory guard; returns (B, grad_accum).

    auto (batch_size="auto"): on out-of-memory halve B and double grad_accum, so the global batch
    (and every schedule) stays the same, say so, and try again. A given B is never changed: the
    smaller B that fits is searched the same way and named in the MemoryError. `clear()` drops what
    a failed try left (gradients) before the next.
    """
    B, accum = int(batch_size), int(grad_accum)
    failed = []  # batch sizes that ran out of memory
    while True:
        oom = None
        try:
            try_step(B)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised below
            if not _is_oom(e):
                raise
            oom = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'out of memory'}"
        if oom is None:  # fits
            if failed and not auto:
                raise MemoryError(
                    f"batch_size={failed[0]} does not fit in this device's memory ({oom_first}); "
                    f"batch_size={B} fits: use batch_size={B} with grad_accum={grad_accum * failed[0] // B} "
                    f"(the same global batch), or batch_size='auto'")
            return B, accum
        _free_memory(clear)  # outside the except block: the traceback no longer holds tensors
        if not failed:
            oom_first = oom
        failed.append(B)
        if B == 1:
            raise MemoryError(f"even batch_size=1 does not fit in this device's memory ({oom_first}): use a "
                              f"smaller model or seq_len, or more GPUs")
        B //= 2
        if auto:
            accum *= 2
            say(f"out of memory with B={failed[-1]}: trying B={B} with grad_accum={accum} "
                f"(same global batch)")


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
           "snapshot_source", "estimate_memory", "auto_batch_cap", "activation_bytes_per_token", "memory_kwargs", "ACTIVATION_BYTES",
           "PEAK_FLOPS", "device_memory_bytes", "auto_batch_size", "fit_batch", "copy_into",
           "is_run_dir", "peak_memory_bytes", "StopRequest", "LivePlot", "lock_run", "hold_run", "RunLocked"]

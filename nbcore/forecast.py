"""The forecast before renting: parameters, tokens, FLOPs, memory, time and dollars of a run.

    python -m nbcore.launch papermill_params/xs_1x8gb.yaml --plan --gpu T4 --price 0.35
    python -m nbcore.launch papermill_params/sweeps/x0_mix_xs.yaml --plan --gpu H100 --gpus 8 --price 2.5
    python -m nbcore.forecast record runs/20260101_120000_base      # add a measured row to the table
    python -m nbcore.forecast show                                   # the measured rows and the known cards

Time comes from a measurement where the project has one for that card (`nbcore/throughput.json`:
each row names the card, the commit and the date, and holds the training FLOP/s one device
achieved), else from the card's peak dense bf16/fp16 FLOP/s at an assumed MFU (`--mfu`, default
35%). The output says which. A measured rate is used as FLOP/s, so it carries over to another
model size only roughly (the closest model size measured is taken).

What is counted: the training loop (tokens x FLOPs per token, forward and backward), the
validations (forward only: a third of that per token), and a compile allowance on CUDA when
`compile` is on. Not counted: building the tokenizer and shards (reused once built), 05_eval,
machine start-up and environment set-up.
"""
import argparse
import datetime
import math
import os
import sys
from pathlib import Path

from . import fileio, launch, notebooks, optim, runs

TABLE = Path(__file__).with_name("throughput.json")
DEFAULT_MFU = 0.35
COMPILE_SECONDS = 180.0   # CUDA, compile=True: the speedrun set's ~3 min of compilation (an allowance, not measured)
WHOLE_VAL_TOKENS = 10 * 2**20  # val_tokens=0 validates on the whole val split: its size is not known before 02
MEMORY_FRACTION = 0.85    # runs.auto_batch_size's default: what fits leaves 15% for the allocator and kernels

# Peak dense (no sparsity) tensor FLOP/s in bf16 (fp16 where the card has no bf16), and memory, from vendor
# datasheets: NVIDIA T4 / L4 / A10 / A100 / H100 / H200 / L40S / RTX A6000 datasheets; GA102 (RTX 3090) and
# AD102 (RTX 4090) architecture whitepapers, FP16 tensor with FP32 accumulate. A10G: AWS publishes no tensor
# figure; 70 TFLOP/s is the value runs.PEAK_BF16_FLOPS uses. Apple M-series: Apple's announced GPU
# FP32 TFLOPS (04 trains in float32 on mps); memory is the largest unified-memory configuration.
CARDS = {
    "T4":         {"peak_flops": 65e12,   "memory_gb": 16,  "kind": "cuda", "note": "fp16 (no bf16)"},
    "L4":         {"peak_flops": 121e12,  "memory_gb": 24,  "kind": "cuda"},
    "A10":        {"peak_flops": 125e12,  "memory_gb": 24,  "kind": "cuda"},
    "A10G":       {"peak_flops": 70e12,   "memory_gb": 24,  "kind": "cuda"},
    "RTX3090":    {"peak_flops": 71e12,   "memory_gb": 24,  "kind": "cuda"},
    "RTX4090":    {"peak_flops": 165.2e12, "memory_gb": 24, "kind": "cuda"},
    "RTXA6000":   {"peak_flops": 154.8e12, "memory_gb": 48, "kind": "cuda"},
    "L40S":       {"peak_flops": 362e12,  "memory_gb": 48,  "kind": "cuda"},
    "V100":       {"peak_flops": 125e12,  "memory_gb": 32,  "kind": "cuda", "note": "fp16 (no bf16)"},
    "A100-40GB":  {"peak_flops": 312e12,  "memory_gb": 40,  "kind": "cuda"},
    "A100-80GB":  {"peak_flops": 312e12,  "memory_gb": 80,  "kind": "cuda"},
    "H100-PCIE":  {"peak_flops": 756e12,  "memory_gb": 80,  "kind": "cuda"},
    "H100-SXM":   {"peak_flops": 989e12,  "memory_gb": 80,  "kind": "cuda"},
    "H100-NVL":   {"peak_flops": 835e12,  "memory_gb": 94,  "kind": "cuda"},
    "H200":       {"peak_flops": 989e12,  "memory_gb": 141, "kind": "cuda"},
    "M1":         {"peak_flops": 2.6e12,  "memory_gb": 16,  "kind": "mps"},
    "M1-PRO":     {"peak_flops": 5.2e12,  "memory_gb": 32,  "kind": "mps"},
    "M1-MAX":     {"peak_flops": 10.4e12, "memory_gb": 64,  "kind": "mps"},
    "M1-ULTRA":   {"peak_flops": 21e12,   "memory_gb": 128, "kind": "mps"},
    "M2":         {"peak_flops": 3.6e12,  "memory_gb": 24,  "kind": "mps"},
    "M2-PRO":     {"peak_flops": 6.8e12,  "memory_gb": 32,  "kind": "mps"},
    "M2-MAX":     {"peak_flops": 13.6e12, "memory_gb": 96,  "kind": "mps"},
    "M2-ULTRA":   {"peak_flops": 27.2e12, "memory_gb": 192, "kind": "mps"},
    "CPU":        {"peak_flops": None,    "memory_gb": None, "kind": "cpu", "note": "measured rows only"},
}
ALIASES = {"H100": "H100-SXM", "A100": "A100-80GB", "A10080GB": "A100-80GB", "A10040GB": "A100-40GB",
           "H100SXM": "H100-SXM", "H100PCIE": "H100-PCIE", "H100NVL": "H100-NVL", "3090": "RTX3090",
           "4090": "RTX4090", "A6000": "RTXA6000", "M1PRO": "M1-PRO", "M1MAX": "M1-MAX", "M1ULTRA": "M1-ULTRA",
           "M2PRO": "M2-PRO", "M2MAX": "M2-MAX", "M2ULTRA": "M2-ULTRA"}


TIKTOKEN_VOCAB = {"gpt2": 50257, "r50k_base": 50257, "p50k_base": 50281, "cl100k_base": 100277,
                  "o200k_base": 200019}  # n_vocab of tiktoken's encodings (specials included)


class ForecastError(ValueError):
    """The forecast cannot be made; the message says what to give."""


def _squash(s: str) -> str:
    return "".join(ch for ch in str(s).upper() if ch.isalnum())


def card(name: str) -> str:
    """'h100', 'A100 80GB', 'rtx-4090', 'M2 Max' -> the key in CARDS."""
    sq = _squash(name)
    for key in CARDS:
        if _squash(key) == sq:
            return key
    if sq in ALIASES:
        return ALIASES[sq]
    import difflib

    hint = difflib.get_close_matches(str(name).upper(), list(CARDS) + list(ALIASES), n=1, cutoff=0.5)
    raise ForecastError(f"unknown card {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                        + f"; known: {', '.join(CARDS)}")


def card_of_device(device_name: str | None, device: str = "cuda") -> str | None:
    """A CUDA device name ('NVIDIA H100 80GB HBM3', 'Tesla T4') -> a CARDS key; 'cpu' -> 'CPU'."""
    if device.startswith("cpu") or not device_name:
        return "CPU" if device.startswith("cpu") else None
    n = device_name.upper()
    if "H100" in n:
        return "H100-PCIE" if "PCIE" in n else "H100-NVL" if "NVL" in n else "H100-SXM"
    if "A100" in n:
        return "A100-40GB" if "40GB" in n else "A100-80GB"
    for key in ("H200", "L40S", "A10G", "RTX 4090", "RTX 3090", "RTX A6000", "V100", "T4", "L4", "A10"):
        if key in n:
            return card(key)
    return None


# ---------------------------------------------------------------- the measured table
def table_path() -> Path:
    return Path(os.environ.get("NBCORE_THROUGHPUT", TABLE))


def load_table(path=None) -> list[dict]:
    path = Path(path or table_path())
    if not path.exists():
        return []
    return fileio.read_json(path).get("rows", [])


ROW_KEYS = ("card", "device_name", "commit", "date", "flops_per_s_per_device", "tokens_per_s_per_device",
            "flops_per_token", "num_params", "world_size", "batch_size", "seq_len", "dtype", "source")


def add_row(row: dict, path=None) -> dict:
    """Append a measurement (nbcore.gpucheck results and finished runs both come here); atomic write.

    Needs card, commit, date and flops_per_s_per_device (the training FLOP/s one device achieved).
    """
    missing = [k for k in ("card", "commit", "date", "flops_per_s_per_device") if not row.get(k)]
    if missing:
        raise ForecastError(f"a throughput row needs {', '.join(missing)}")
    row = {"card": card(row["card"]), **{k: v for k, v in row.items() if k != "card"}}
    path = Path(path or table_path())
    rows = load_table(path)
    rows = [r for r in rows if not (r.get("source") and r.get("source") == row.get("source"))] + [row]
    fileio.write_json(path, {"about": "measured training throughput per device: python -m nbcore.forecast record RUN",
                             "rows": rows})
    return row


def row_from_run(run_dir, card_name: str | None = None) -> dict:
    """A throughput row from a finished run's summary.json (its training loop, validation excluded)."""
    run_dir = Path(run_dir)
    s = fileio.read_json(run_dir / "summary.json")
    final, world = s.get("final") or {}, int(s.get("world_size") or 1)
    tps, fpt = final.get("tokens_per_s"), s.get("flops_per_token")
    if not tps or not fpt:
        raise ForecastError(f"{run_dir}: summary.json has no tokens_per_s / flops_per_token to measure")
    device = str(s.get("device") or "cpu")
    gpus = (s.get("hardware") or {}).get("gpus") or []
    hw = s.get("hardware") or {}
    dev_name = gpus[0]["name"] if gpus and not device.startswith("cpu") else \
        f"{hw.get('cpu') or 'cpu'}, {hw.get('torch_threads')} thread(s)"
    key = card(card_name) if card_name else card_of_device(dev_name, device)
    if key is None:
        raise ForecastError(f"{run_dir}: cannot tell the card from {dev_name!r}; pass --card")
    written = s.get("written") or datetime.datetime.now().isoformat(timespec="seconds")
    return {"card": key, "device_name": dev_name, "commit": (s.get("git") or {}).get("commit") or "unknown",
            "date": written[:10], "flops_per_s_per_device": round(fpt * tps / world),
            "tokens_per_s_per_device": round(tps / world, 1), "flops_per_token": fpt,
            "num_params": s.get("num_params"), "world_size": world, "batch_size": s.get("batch_size"),
            "seq_len": (s.get("parameters") or {}).get("seq_len"), "dtype": "bfloat16" if s.get("bf16") else "float32",
            "source": f"run {run_dir.name}"}


def measured_rate(card_key: str, num_params: int | None = None, rows=None) -> dict | None:
    """The table's row for this card, nearest in model size (log ratio); None without one."""
    rows = [r for r in (load_table() if rows is None else rows) if r.get("card") == card_key]
    if not rows:
        return None
    if num_params:
        return min(rows, key=lambda r: abs(math.log((r.get("num_params") or num_params) / num_params)))
    return rows[-1]


# ---------------------------------------------------------------- one run
def _training_chapter(plan: dict):
    for ch in plan["chapters"]:
        if launch.chapter_id(ch["notebook"]) == "04":
            return ch
    return None


def _substitute_loose(params: dict, variables: dict) -> dict:
    out = {}
    for k, v in params.items():
        try:
            out[k] = launch.substitute(v, variables)
        except ValueError:
            out[k] = None  # a ${var} not given yet (e.g. -p text_path): unknown here
    return out


def vocab_of(plan: dict, p04: dict) -> tuple[int, str]:
    """V the training chapter will use, and where it comes from."""
    if p04.get("vocab_size"):
        return int(p04["vocab_size"]), "vocab_size"
    for ch in plan["chapters"]:
        cid = launch.chapter_id(ch["notebook"])
        prm = _substitute_loose(ch["parameters"], plan["vars"])
        if cid == "01" and isinstance(prm.get("vocab_size"), int):
            return prm["vocab_size"] + 1, "01's vocab_size + <|endoftext|>"
        if cid == "02" and str(prm.get("tokenizer", "")).startswith("tiktoken:"):
            enc = prm["tokenizer"].split(":", 1)[1]
            if enc in TIKTOKEN_VOCAB:  # known without downloading the encoding
                return TIKTOKEN_VOCAB[enc], prm["tokenizer"]
            try:
                import tiktoken

                return tiktoken.get_encoding(enc).n_vocab, prm["tokenizer"]
            except Exception as e:  # offline: the encoding cannot be fetched
                raise ForecastError(f"{prm['tokenizer']}: vocabulary size unknown offline ({type(e).__name__}); "
                                    f"set vocab_size in the training chapter") from None
    return 50257, "assumed GPT-2's 50257 (no tokenizer in the set)"


def model_of(p: dict, V: int):
    """The model 04 would build, on the meta device (shapes only)."""
    from .model import SIZE_PRESETS, build_model

    L, H, D = p["num_layers"], p["num_heads"], p["model_dim"]
    if p.get("size"):
        pre = SIZE_PRESETS[p["size"]]
        L, H, D = pre["num_layers"], pre["num_heads"], pre["model_dim"]
    opts = dict(p.get("model_options") or {})
    if p["arch"] == "gpt":
        opts.setdefault("window_long", min(p["window_max"], p["seq_len"]))
    opts["compile"] = False
    return build_model(p["arch"], V, L, H, D, p["seq_len"], device="meta", **opts), (L, H, D)


def forecast_run(plan: dict, card_key: str, gpus: int, price: float = 0.0, mfu: float | None = None,
                 rows=None, memory_gb: float | None = None, nodes: int = 1) -> dict:
    """Everything --plan prints for one run of `plan` on `gpus` x `card_key`."""
    ch = _training_chapter(plan)
    if ch is None:
        raise ForecastError(f"{plan.get('source')}: no training chapter (04_train) to forecast")
    p = {**notebooks.declared_parameters("04_train"), **_substitute_loose(ch["parameters"], plan["vars"])}
    spec = CARDS[card_key]
    V, v_from = vocab_of(plan, p)
    model, (L, H, D) = model_of(p, V)
    n_params, fpt = model.num_params(), model.flops_per_token()
    T = int(p["seq_len"])
    kind = spec["kind"]
    half = kind == "cuda" and p.get("dtype") in ("auto", "bfloat16", "float16")  # bf16, or fp16 before Ampere
    mem_gb = memory_gb or spec["memory_gb"] or ((runs.total_ram_bytes() or 0) / (0.995 * 2**30))
    budget = int(mem_gb * 0.995 * 2**30)  # the datasheet's "80 GB" HBM is what torch reports as ~79.6 GiB
    # the memory model 04 uses (runs.memory_kwargs); FlexAttention keeps no dense masks, which it runs on
    # Ampere and later; cards without bf16 (T4, V100) run SDPA with dense masks, as 04 chooses (nbcore.precision)
    flex = kind == "cuda" and "no bf16" not in spec.get("note", "")
    mem_kw = dict(runs.memory_kwargs(model, dense_masks=None if kind != "cuda" else not flex,
                                     adam_weight_decay=float(p.get("adam_weight_decay") or 0.0)),
                  dtype_bytes=2 if half else 4)
    out = {"run": plan["name"], "card": card_key, "gpus": gpus, "num_params": n_params, "flops_per_token": fpt,
           "vocab_size": V, "vocab_from": v_from, "L": L, "H": H, "D": D, "T": T}
    stages = [int(b) for b in p.get("batch_stages") or []]  # 04: B by stage, sized for the largest
    if stages:
        B, out["batch_from"] = max(stages), "batch_stages"
    elif p["batch_size"] == "auto":
        try:
            B = runs.auto_batch_size(budget, max_batch=runs.auto_batch_cap(kind), **mem_kw)
            out["batch_from"] = "auto"
        except MemoryError as e:
            B, out["batch_from"] = 1, f"does not fit: {e}"
    else:
        B, out["batch_from"] = int(p["batch_size"]), "given"
    need = runs.estimate_memory(batch_size=B, **mem_kw)["total"]
    out.update(batch_size=B, memory_bytes=need, memory_budget_bytes=budget,
               fits=bool(need <= MEMORY_FRACTION * budget) if budget else None)
    world = gpus * nodes  # data parallel over every GPU of every node (scaling assumed linear)
    tokens_per_step = world * int(p["grad_accum"]) * B * T  # (the largest stage's, with batch_stages)
    # the rate: measured for this card, else peak x MFU
    row = measured_rate(card_key, n_params, rows)
    if row is not None and mfu is None:
        rate = float(row["flops_per_s_per_device"])
        out["time_from"] = (f"measured: {row['flops_per_s_per_device'] / 1e12:.3g} TFLOP/s per device on "
                            f"{row.get('device_name') or card_key} ({row.get('source', '?')}, commit "
                            f"{str(row.get('commit'))[:10]}, {row.get('date')})")
    elif spec["peak_flops"]:
        m = DEFAULT_MFU if mfu is None else float(mfu)
        rate = spec["peak_flops"] * m
        out["time_from"] = (f"peak {spec['peak_flops'] / 1e12:.4g} TFLOP/s x assumed MFU {m:.0%} "
                            f"(no measured throughput for {card_key} in {table_path().name})")
    else:
        raise ForecastError(f"no measured throughput for {card_key} in {table_path()} and no peak FLOPs to assume: "
                            f"pass --gpu CARD for the card you will rent (python -m nbcore.forecast show lists them), "
                            f"or record a finished run made here (python -m nbcore.forecast record RUN)")
    out["flops_per_s_per_device"] = rate
    tokens_per_s = rate * world / fpt
    # the loop checks before each step: it stops at num_steps, or at the first step that ends past max_seconds
    n_steps, secs = int(p["num_steps"] or 0), float(p["max_seconds"] or 0.0)
    step_tokens = [tokens_per_step * b // B for b in stages or [B]]  # per stage, equal fractions of training
    stage_steps = [math.ceil(secs / len(step_tokens) * tokens_per_s / t) for t in step_tokens]
    by_time = max(1, sum(stage_steps)) if secs else None
    if n_steps and (by_time is None or n_steps <= by_time):
        steps, out["stops_by"] = n_steps, "num_steps"
    else:
        steps, out["stops_by"] = by_time, "max_seconds"
    tokens = steps * tokens_per_step
    if stages and out["stops_by"] == "num_steps":  # the loop's stage of each step: progress = step / num_steps
        tokens = sum(tokens_per_step * optim.batch_size_at(s / steps, stages, B) // B for s in range(steps))
    elif stages:  # each stage runs for an equal share of max_seconds
        tokens = sum(n * t for n, t in zip(stage_steps, step_tokens))
    out.update(steps=steps, tokens=tokens, tokens_per_step=tokens_per_step, train_flops=tokens * fpt)
    out["train_seconds"] = tokens / tokens_per_s
    n_val = 2 + (steps // int(p["val_interval"]) if p["val_interval"] else 0)
    val_tokens = int(p["val_tokens"]) or WHOLE_VAL_TOKENS
    out["val_tokens"], out["val_evals"] = val_tokens, n_val
    out["val_seconds"] = n_val * val_tokens * fpt / 3 / (rate * world)
    out["compile_seconds"] = COMPILE_SECONDS if kind == "cuda" and p.get("compile") else 0.0
    out["seconds"] = out["train_seconds"] + out["val_seconds"] + out["compile_seconds"]
    out["nodes"] = nodes
    out["dollars"] = out["seconds"] / 3600 * price * gpus * nodes
    return out


def forecast(source, card_name: str, gpus: int | None = None, price: float = 0.0, mfu: float | None = None,
             overrides: dict | None = None, nproc: int | None = None, rows=None, nodes: int = 1) -> dict:
    """The forecast for a parameter set or a sweep file: {'runs': [...], 'total': {...}, ...}."""
    from . import sweep

    key = card(card_name)
    if sweep.is_sweep_file(source):
        sw = sweep.load_sweep(source)
        if nproc:
            sw["nproc"] = nproc
        plans = [e["plan"] for e in sweep.run_plans(sw, overrides, check=False)]
        what = f"sweep {sw['name']} ({len(sw['variants'])} variant(s) x {len(sw['seeds'])} seed(s))"
    else:
        plans = [launch.apply_overrides(launch.load_plan(source), overrides or {})]
        what = f"parameter set {Path(source).name}"
    out = []
    for plan in plans:
        n = int(gpus or nproc or plan.get("nproc") or 1)
        out.append(forecast_run(plan, key, n, price, mfu, rows, nodes=nodes))
    total = {k: sum(r[k] for r in out) for k in ("tokens", "train_flops", "seconds", "dollars")}
    total["gpu_hours"] = sum(r["seconds"] * r["gpus"] * r["nodes"] for r in out) / 3600
    return {"what": what, "card": key, "price": price, "runs": out, "total": total}


# ---------------------------------------------------------------- printing
def _si(x: float, unit: str = "") -> str:
    for div, p in ((1e12, "T"), (1e9, "B" if unit == "tok" else "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{p}"
    return f"{x:.3g}"


def _dur(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


def format_forecast(f: dict) -> str:
    spec = CARDS[f["card"]]
    runs_ = f["runs"]
    gpus = sorted({r["gpus"] for r in runs_})
    mem = f"{spec['memory_gb']} GB" if spec["memory_gb"] else "RAM"
    nodes = runs_[0].get("nodes", 1)
    lines = [f"forecast: {f['what']} on {f'{nodes} nodes x ' if nodes > 1 else ''}{'/'.join(map(str, gpus))} x "
             f"{f['card']} ({mem}"
             + (f", {spec['note']}" if spec.get("note") else "") + f") at ${f['price']:.2f} per GPU-hour",
             f"time from: {runs_[0]['time_from']}"]
    head = f"{'run':34s} {'params':>7s} {'tokens':>7s} {'FLOPs':>8s} {'memory per GPU':>24s} {'time':>9s} {'$':>9s}"
    lines += [head, "-" * len(head)]
    for r in runs_:
        fit = "fits" if r["fits"] else "DOES NOT FIT"
        memtxt = f"{fit} B={r['batch_size']} {r['memory_bytes'] / 2**30:.2f}/{r['memory_budget_bytes'] / 2**30:.1f} GiB"
        lines.append(f"{r['run'][:34]:34s} {_si(r['num_params']):>7s} {_si(r['tokens'], 'tok'):>7s} "
                     f"{r['train_flops']:8.2e} {memtxt:>24s} {_dur(r['seconds']):>9s} {r['dollars']:9.2f}")
    t = f["total"]
    lines.append("-" * len(head))
    lines.append(f"{'total (' + str(len(runs_)) + ' run' + ('s' if len(runs_) > 1 else '') + ')':34s} {'':>7s} "
                 f"{_si(t['tokens'], 'tok'):>7s} {t['train_flops']:8.2e} {'':>24s} {_dur(t['seconds']):>9s} "
                 f"{t['dollars']:9.2f}")
    r0 = runs_[0]
    lines.append(f"per run: L={r0['L']} H={r0['H']} D={r0['D']} T={r0['T']} V={r0['vocab_size']} ({r0['vocab_from']}); "
                 f"{r0['flops_per_token']:,} training FLOPs per token; B per GPU {r0['batch_from']}; "
                 f"stops by {r0['stops_by']} after {r0['steps']:,} steps of {r0['tokens_per_step']:,} tokens"
                 + (" (the largest batch stage)" if r0.get("batch_from") == "batch_stages" else ""))
    lines.append(f"time = training {_dur(r0['train_seconds'])} + validation {_dur(r0['val_seconds'])} "
                 f"({r0['val_evals']:,} x {r0['val_tokens']:,} tokens"
                 + (", val_tokens=0: the whole split, assumed" if r0["val_tokens"] == WHOLE_VAL_TOKENS else "")
                 + ") + compile "
                 f"{_dur(r0['compile_seconds'])} per run; not counted: tokenizer/shards (built once, reused), "
                 f"05_eval, machine start-up")
    bad = [r["run"] for r in runs_ if not r["fits"]]
    if bad:
        lines.append(f"WARNING: {len(bad)} run(s) do not fit in {mem} per GPU at the B shown "
                     f"(memory model: nbcore.runs.estimate_memory): lower batch_size and raise grad_accum, or pick a bigger card")
    return "\n".join(lines)


def cli(a, overrides: dict) -> int:
    """--plan from nbcore.launch."""
    if a.params is None:
        print("--plan: give a parameter set or a sweep file", file=sys.stderr)
        return 2
    gpu = a.gpu or _this_machine()
    try:
        f = forecast(a.params, gpu, a.gpus, a.price or 0.0, a.mfu, overrides, a.nproc, nodes=int(a.nnodes or 1))
    except (ForecastError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"--plan failed: {e}", file=sys.stderr)
        return 1
    print(format_forecast(f))
    return 0


def _this_machine() -> str:
    import torch

    if torch.cuda.is_available():
        return card_of_device(torch.cuda.get_device_name(), "cuda") or "H100"
    return "CPU"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nbcore.forecast", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="add the measured throughput of finished runs to the table")
    rec.add_argument("runs", nargs="+")
    rec.add_argument("--card", default=None, help="the card's name when the run's record cannot tell it")
    sub.add_parser("show", help="print the measured rows and the known cards")
    a = ap.parse_args(argv)
    if a.cmd == "record":
        for r in a.runs:
            row = add_row(row_from_run(runs.open_run(r), a.card))
            print(f"{table_path()}: {row['card']} {row['flops_per_s_per_device'] / 1e9:.3g} GFLOP/s per device "
                  f"({row['source']}, {row['commit'][:10]}, {row['date']})")
        return 0
    for r in load_table():
        print(f"measured {r['card']:10s} {r['flops_per_s_per_device'] / 1e12:8.3g} TFLOP/s per device  "
              f"{r.get('device_name')}  {r.get('source')}  {str(r.get('commit'))[:10]}  {r.get('date')}")
    for k, c in CARDS.items():
        peak = f"{c['peak_flops'] / 1e12:7.4g} TFLOP/s" if c["peak_flops"] else "    measured only"
        print(f"card     {k:10s} {peak}  {c['memory_gb'] or '-'} GB  {c.get('note', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

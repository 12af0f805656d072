"""python -m nbcore.gpucheck [--out DIR] [--quick]: what a CPU cannot prove, checked on the GPU in minutes.

Run it first on a rented GPU (no network needed, random tokens and built-in shapes). It writes
`gpucheck.json` and `gpucheck.md` (one Markdown table) into --out (default: the current folder):

- device, compute capability, and the precision/attention nbcore.precision chooses (and why);
- for the tiny, XS, S and 124M shapes (GPT-2's vocabulary, T=1024): the batch size `auto` picks,
  the estimated peak memory (runs.estimate_memory) and the measured one
  (torch.cuda.max_memory_allocated over a training step at that batch) and their ratio;
- tokens/s and MFU of the 124M model at seq 1024 and 2048, compile time apart;
- recompiles over 50 steps with a growing sliding window (torch._dynamo counters);
- host synchronisations per training step (Tensor.item/tolist/__float__, cuda.synchronize);
- on sm89+: the FP8 head's speed and its loss difference against the bfloat16 head;
- 05's batched multiple-choice scoring against one ending per forward (speed ratio);
- with 2+ GPUs: a 2-rank nccl all-reduce.

Without CUDA it says so and runs the parts a CPU can (precision rules, the memory model against
nbcore.memory's tracker on the tiny shape, a float16 + loss-scaler step), then exits 0.
Every check runs on its own: one that fails is recorded with its error and the rest go on.
"""
import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from . import fileio, memory, optim, precision, runs
from .model import SIZE_PRESETS, build_model

SHAPES = {"tiny": SIZE_PRESETS["tiny"], "XS": SIZE_PRESETS["XS"], "S": SIZE_PRESETS["S"],
          "124M": {"num_layers": 12, "num_heads": 6, "model_dim": 768}}  # the speedrun's shape
GPT2_VOCAB = 50257


def _model(shape, T, device, prec, V=GPT2_VOCAB, **kw):
    p = SHAPES[shape]
    kw.setdefault("attn_backend", prec.attn_backend)
    return build_model("gpt", V, p["num_layers"], p["num_heads"], p["model_dim"], T, device=device,
                       dtype=prec.dtype, eot_id=V - 1, compile=kw.pop("compile", prec.compile), **kw)


def _opts(m):
    return optim.build_optimizers(m.configure_optimizers(), optim.default_lrs("gpt"))


def _batch(B, T, V, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (B, T + 1), generator=g)
    return x[:, :-1].to(device), x[:, 1:].to(device)


def _step(m, opts, scaler, x, y, window=None):
    loss = m(x, targets=y, window=window)
    scaler.scale(loss).backward()
    scaler.unscale(opts)
    scaler.step(opts)
    optim.zero_grad(opts)
    return loss.detach()


# ---------------------------------------------------------------- checks
def check_precision(device) -> dict:
    p = precision.for_device(device)
    out = {"dtype": p.dtype, "attn_backend": p.attn_backend, "fp8_head": p.fp8_head,
           "grad_scaler": p.grad_scaler, "compile": p.compile, "reasons": p.reasons}
    if torch.device(device).type == "cuda":
        out["device"] = torch.cuda.get_device_name()
        out["capability"] = "sm%d%d" % torch.cuda.get_device_capability()
        out["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return out


def check_memory_cpu() -> list:
    """The memory model against the tracker on the tiny shape (CPU, CUDA's autocast emulated)."""
    rows = []
    for dtype in ("float32", "bfloat16"):
        m = build_model("gpt", 1024, 4, 4, 128, 64, device="cpu", dtype=dtype)
        opts = _opts(m)
        kw = runs.memory_kwargs(m)
        for B in (1, 8):
            r = memory.measure_step(m, opts, B, 64)
            est = runs.estimate_memory(batch_size=B, **kw)["total"]
            rows.append({"shape": f"tiny V=1024 T=64 {dtype}", "B": B, "estimate_mib": round(est / 2**20, 1),
                         "measured_mib": round(r["peak"] / 2**20, 1), "ratio": round(est / r["peak"], 3)})
    return rows


def check_float16_cpu() -> dict:
    m = build_model("gpt", 256, 2, 2, 64, 32, device="cpu", dtype="float16")
    opts = _opts(m)
    scaler = precision.LossScaler(True, "cpu")
    x, y = _batch(4, 32, 256, "cpu")
    losses = [float(_step(m, opts, scaler, x, y)) for _ in range(5)]
    return {"losses": [round(v, 4) for v in losses], "scale": scaler.get_scale(), "skipped": scaler.skipped,
            "ok": losses[-1] < losses[0]}


def check_memory_gpu(device, prec, T=1024) -> list:
    rows = []
    budget = runs.device_memory_bytes(device)
    for shape in SHAPES:
        m = _model(shape, T, device, prec)
        opts = _opts(m)
        scaler = precision.LossScaler(prec.grad_scaler, "cuda")
        kw = runs.memory_kwargs(m)
        B = runs.auto_batch_size(budget, **kw)
        est = runs.estimate_memory(batch_size=B, **kw)["total"]
        row = {"shape": shape, "T": T, "auto_B": B, "estimate_gib": round(est / 2**30, 2)}
        try:
            for i in range(2):  # the second step has the optimiser state, as every later one
                x, y = _batch(B, T, GPT2_VOCAB, device, seed=i)
                if i == 1:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                _step(m, opts, scaler, x, y)
            torch.cuda.synchronize()
            meas = torch.cuda.max_memory_allocated()
            row.update(measured_gib=round(meas / 2**30, 2), ratio=round(est / meas, 3))
        except torch.OutOfMemoryError as e:
            row.update(measured_gib=None, ratio=None, error=f"out of memory at auto B={B}: {str(e)[:120]}")
        rows.append(row)
        del m, opts
        torch.cuda.empty_cache()
    return rows


def check_speed_gpu(device, prec, steps=20) -> list:
    rows = []
    name = torch.cuda.get_device_name()
    for T in (1024, 2048):
        m = _model("124M", T, device, prec)
        opts = _opts(m)
        scaler = precision.LossScaler(prec.grad_scaler, "cuda")
        B = max(1, min(runs.auto_batch_size(runs.device_memory_bytes(device), **runs.memory_kwargs(m)), 64))
        t0 = time.perf_counter()
        for i in range(2):  # compile + warm-up
            _step(m, opts, scaler, *_batch(B, T, GPT2_VOCAB, device, seed=i))
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - t0
        batches = [_batch(B, T, GPT2_VOCAB, device, seed=10 + i) for i in range(steps)]
        t0 = time.perf_counter()
        for x, y in batches:
            _step(m, opts, scaler, x, y)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tps = steps * B * T / dt
        rows.append({"shape": "124M", "T": T, "B": B, "compile_s": round(compile_s, 1), "tokens_per_s": round(tps),
                     "mfu": runs.mfu(m.flops_per_token(T), tps, 1, name, dtype=prec.dtype)})
        del m, opts
        torch.cuda.empty_cache()
    return rows


def check_recompiles(device, prec, steps=50, T=1024) -> dict:
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    m = _model("XS", T, device, prec)
    opts = _opts(m)
    scaler = precision.LossScaler(prec.grad_scaler, "cuda")
    for i in range(steps):
        w = optim.window_size(i / (steps - 1), 128, T, 128)
        _step(m, opts, scaler, *_batch(8, T, GPT2_VOCAB, device, seed=i), window=w)
    c = torch._dynamo.utils.counters
    return {"steps": steps, "unique_graphs": int(c["stats"].get("unique_graphs", 0)),
            "recompiles": int(sum(c["recompiles"].values())) if "recompiles" in c else None,
            "cache_size_limit": torch._dynamo.config.cache_size_limit}


class HostSyncs:
    """Counts host reads of device values: Tensor.item/tolist/__float__ and torch.cuda.synchronize."""

    def __enter__(self):
        self.count = 0
        self._saved = []
        for owner, name in ((torch.Tensor, "item"), (torch.Tensor, "tolist"), (torch.Tensor, "__float__"),
                            (torch.cuda, "synchronize")):
            orig = getattr(owner, name)

            def wrapped(*a, _orig=orig, **k):
                self.count += 1
                return _orig(*a, **k)
            setattr(owner, name, wrapped)
            self._saved.append((owner, name, orig))
        return self

    def __exit__(self, *exc):
        for owner, name, orig in self._saved:
            setattr(owner, name, orig)
        return False


def check_host_syncs(device, prec, steps=10, T=1024) -> dict:
    m = _model("XS", T, device, prec)
    opts = _opts(m)
    scaler = precision.LossScaler(prec.grad_scaler, "cuda")
    _step(m, opts, scaler, *_batch(8, T, GPT2_VOCAB, device))
    batches = [_batch(8, T, GPT2_VOCAB, device, seed=i) for i in range(steps)]
    with HostSyncs() as h:
        for x, y in batches:
            _step(m, opts, scaler, x, y)
    return {"steps": steps, "host_syncs_per_step": h.count / steps,
            "note": "model + optimiser step only (float16's loss scaler reads one flag per step)"}


def check_fp8(device, prec, steps=20, T=1024) -> dict:
    if not prec.fp8_head:
        return {"skipped": f"FP8 needs sm89+ with bfloat16 ({prec.reasons[0]})"}
    out = {}
    for fp8 in (False, True):
        m = _model("124M", T, device, prec, fp8_head=fp8)
        opts = _opts(m)
        scaler = precision.LossScaler(False, "cuda")
        batches = [_batch(16, T, GPT2_VOCAB, device, seed=i) for i in range(steps + 2)]
        for x, y in batches[:2]:
            _step(m, opts, scaler, x, y)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        losses = [_step(m, opts, scaler, x, y) for x, y in batches[2:]]
        torch.cuda.synchronize()
        out["fp8" if fp8 else "bf16"] = {"tokens_per_s": round(steps * 16 * T / (time.perf_counter() - t0)),
                                         "final_loss": float(losses[-1])}
        del m, opts
    out["speedup"] = round(out["fp8"]["tokens_per_s"] / out["bf16"]["tokens_per_s"], 3)
    out["loss_difference"] = round(out["fp8"]["final_loss"] - out["bf16"]["final_loss"], 4)
    return out


def check_scoring(device, prec, items=64) -> dict:
    from . import evaluate

    m = _model("XS", 1024, device, prec, compile=False)
    g = torch.Generator().manual_seed(0)
    encoded = []
    for i in range(items):
        ctx = torch.randint(0, GPT2_VOCAB - 1, (int(torch.randint(20, 120, (1,), generator=g)),), generator=g).tolist()
        rows, starts = [], []
        for _ in range(4):
            end = torch.randint(0, GPT2_VOCAB - 1, (int(torch.randint(3, 30, (1,), generator=g)),), generator=g).tolist()
            rows.append(ctx + end)
            starts.append(len(ctx))
        encoded.append(evaluate.EncodedItem(rows=rows, starts=starts, label=0))
    times = {}
    for name, fn in (("batched", lambda: evaluate.score_items(m, encoded, device=device)),
                     ("one_at_a_time", lambda: evaluate.score_items_one_at_a_time(m, encoded, device=device))):
        fn()  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times[name] = time.perf_counter() - t0
    return {"items": items, "endings": 4 * items, **{k + "_s": round(v, 3) for k, v in times.items()},
            "speedup": round(times["one_at_a_time"] / times["batched"], 2), "target": ">= 5x"}


def _nccl_worker(rank, world, port, q):
    import os

    import torch.distributed as td

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    td.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    t = torch.full((1024,), float(rank + 1), device="cuda")
    td.all_reduce(t)
    q.put((rank, float(t[0])))
    td.destroy_process_group()


def check_nccl() -> dict:
    n = torch.cuda.device_count()
    if n < 2:
        return {"skipped": f"{n} GPU: the 2-rank nccl check needs 2"}
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    procs = [ctx.Process(target=_nccl_worker, args=(r, 2, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    got = sorted(q.get() for _ in range(2)) if all(p.exitcode == 0 for p in procs) else []
    return {"ranks": 2, "sums": got, "ok": [v for _, v in got] == [3.0, 3.0]}


# ---------------------------------------------------------------- report
def markdown(report: dict) -> str:
    lines = ["# gpucheck", "", "| check | result |", "|---|---|"]
    for name, value in report["checks"].items():
        if isinstance(value, list):
            for row in value:
                lines.append(f"| {name} | " + ", ".join(f"{k} {v}" for k, v in row.items()) + " |")
        elif isinstance(value, dict):
            lines.append(f"| {name} | " + ", ".join(f"{k} {v}" for k, v in value.items()
                                                     if k != "reasons") + " |")
        else:
            lines.append(f"| {name} | {value} |")
    if report.get("errors"):
        lines += ["", "Errors:", ""] + [f"- {k}: {v}" for k, v in report["errors"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nbcore.gpucheck", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".", help="folder for gpucheck.json and gpucheck.md")
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke test of the script)")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    report = {"cuda": cuda, "torch": torch.__version__, "checks": {}, "errors": {}}
    t_start = time.perf_counter()

    def run(name, fn):
        t0 = time.perf_counter()
        try:
            report["checks"][name] = fn()
            print(f"[{time.perf_counter() - t0:6.1f} s] {name}: {json.dumps(report['checks'][name], default=str)[:300]}",
                  flush=True)
        except Exception as e:  # noqa: BLE001 - one failed check must not hide the others
            report["errors"][name] = f"{type(e).__name__}: {e}"
            print(f"[{time.perf_counter() - t0:6.1f} s] {name}: FAILED {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(limit=3)

    run("precision", lambda: check_precision(device))
    if not cuda:
        print("no CUDA GPU on this machine: running the CPU-runnable checks only (tiny model)")
        run("memory_cpu", check_memory_cpu)
        run("float16_loss_scaler_cpu", check_float16_cpu)
    else:
        prec = precision.for_device(device)
        run("memory", lambda: check_memory_gpu(device, prec))
        run("speed_124M", lambda: check_speed_gpu(device, prec, steps=5 if args.quick else 20))
        run("recompiles", lambda: check_recompiles(device, prec, steps=10 if args.quick else 50))
        run("host_syncs", lambda: check_host_syncs(device, prec))
        run("fp8_head", lambda: check_fp8(device, prec, steps=5 if args.quick else 20))
        run("scoring_05", lambda: check_scoring(device, prec, items=16 if args.quick else 64))
        run("nccl_2_ranks", check_nccl)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_json(out / "gpucheck.json", runs._jsonable(report))
    fileio.write_text(out / "gpucheck.md", markdown(report))
    print(markdown(report))
    print(f"wrote {out / 'gpucheck.json'} and {out / 'gpucheck.md'} in {report['seconds']} s"
          + ("" if cuda else " (no GPU: CPU checks only)"))
    return 1 if (cuda and report["errors"]) else 0


if __name__ == "__main__":
    sys.exit(main())

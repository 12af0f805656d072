"""Ablations: train the tiny model for a fixed budget with one trick switched off, and compare.

    results = run_ablation(shard_dir, steps=150, seeds=(0, 1))      # every VARIANTS entry, 2 seeds
    table = results_table(results)                                   # final val bpb against the baseline

`train_for_budget` is a short, plain version of 04_train's loop (the same nbcore pieces: TokenLoader,
build_model, build_optimizers, the LR / momentum / window schedules, val loss and bits per byte), without
checkpoints, guards or distribution: an ablation needs many small runs that differ in one switch only.
Everything but the switch is equal across variants of one seed: the initial weights (same seed), the
batches (same loader seed), the number of steps. The budget is counted in steps, not seconds, so the
numbers do not depend on how busy the machine was.

Each run can be recorded as a run folder (`metrics.csv`, `summary.json`) under `record_dir`, which
06_compare reads like any 04_train run.
"""
import math
import time
from pathlib import Path

import torch

from . import evaluate, fileio, optim, runs, shards
from .loader import TokenLoader, val_batches
from .model import build_model

# name -> (what is switched off, build_model options, optimiser). "muon" is the speedrun's split
# (Muon for hidden matrices, Adam for the rest); "adamw" gives the hidden matrices to AdamW instead.
VARIANTS = {
    "baseline": ("nothing: every trick on", {}, "muon"),
    "adamw": ("Muon: hidden matrices trained by AdamW", {}, "adamw"),
    "no-x0-mix": ("x0 mixing", {"x0_mix": False}, "muon"),
    "no-unet-skips": ("U-net skips", {"unet_skips": False}, "muon"),
    "no-value-embeds": ("value embeddings", {"value_embeds": 0}, "muon"),
    "no-qk-norm": ("QK-norm", {"qk_norm": False}, "muon"),
    "gelu": ("ReLU² (GELU instead)", {"mlp_act": "gelu"}, "muon"),
    "full-rotary": ("half rotary (all pairs rotate)", {"rotary_fraction": 1.0}, "muon"),
    "no-softcap": ("logit soft-cap", {"softcap": 0.0}, "muon"),
    "no-windows": ("sliding windows (full causal)", {"sliding_window": False}, "muon"),
    "no-zero-init": ("zero-init projections", {"zero_init": False}, "muon"),
}


def train_for_budget(shard_dir, steps: int, seed: int = 0, model_options=None, optimizer: str = "muon",
                     num_layers: int = 4, num_heads: int = 2, model_dim: int = 64, seq_len: int = 64,
                     batch_size: int = 8, val_every: int = 0, val_tokens: int = 4096, adamw_lr: float = 3e-3,
                     cooldown_frac: float = 0.4, device: str = "cpu", record: Path | None = None, name: str = "run") -> dict:
    """Train a small `gpt` on the shards for `steps` optimiser steps; return the val curve and the final numbers.

    The default model is the tiny preset's depth (L=4) at half its width (D=64, H=2, Dh=32): a third of
    its FLOPs per token, so that 22 runs fit in a few CPU minutes.

    Returns {"steps", "seconds", "curve": [(step, val_bpb)], "val_loss", "val_bpb", "num_params"}.
    val_every: steps between validations (0: about 6 points per run); every run validates at step 0
    and at the end on the same first `val_tokens` tokens of the val shard.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if optimizer not in ("muon", "adamw"):
        raise ValueError(f"optimizer {optimizer!r}: use 'muon' or 'adamw'")
    manifest = shards.load_manifest(shard_dir)
    tok = manifest["tokenizer"]
    V, eot = tok["n_vocab"], tok["eot_id"]
    bpt = shards.bytes_per_token(manifest, "val")
    train_files, val_files = shards.shard_files(shard_dir, "train"), shards.shard_files(shard_dir, "val")
    opts = {"eot_id": eot, "window_long": seq_len, **(model_options or {})}
    torch.manual_seed(seed)
    model = build_model("gpt", V, num_layers, num_heads, model_dim, seq_len, device=device,
                        seed=seed, compile=False, **opts)
    groups = model.configure_optimizers()
    lrs = dict(optim.SPEEDRUN_LRS)
    if optimizer == "adamw":
        for g in groups:
            if g["optimizer"] == "muon":
                g["optimizer"] = "adamw"
        lrs["hidden_matrices"] = adamw_lr
    opts_list = optim.build_optimizers(groups, lrs)
    loader = TokenLoader(train_files, batch_size, seq_len, seed=seed, eot_id=eot, device=device, verbose=False)
    val_every = val_every or max(1, math.ceil(steps / 6))
    window_min = max(1, seq_len // 4)

    def window_at(progress):  # the window grows with progress, as in 04_train
        return optim.window_size(progress, window_min, seq_len, window_min)

    def validate(step):
        res = evaluate.val_loss(model, val_batches(val_files, batch_size, seq_len, max_tokens=val_tokens,
                                                   device=device), device=device, window=window_at(step / steps))
        return res["val_loss"], evaluate.bits_per_byte(res["val_loss"], bpt)

    log = runs.MetricsLog(record, enabled=record is not None) if record is not None else None
    curve, seconds, tokens = [], 0.0, 0
    loss, bpb = validate(0)
    curve.append((0, bpb))
    if log:
        log.add(step=0, tokens=0, val_loss=loss, val_bpb=bpb, elapsed_s=0.0)
    model.train()
    for step in range(steps):
        progress = step / steps
        optim.apply_schedules(opts_list, optim.lr_factor(progress, cooldown_frac, 0.1),
                              optim.muon_momentum(step, 300, 0.85, 0.95))
        t0 = time.perf_counter()
        x, y = loader.next_batch()                       # (B, T), (B, T)
        train_loss = model(x, targets=y, window=window_at(progress))
        train_loss.backward()
        optim.step_all(opts_list)
        optim.zero_grad(opts_list)
        seconds += time.perf_counter() - t0
        tokens += batch_size * seq_len
        if not math.isfinite(train_loss.item()):
            raise FloatingPointError(f"{name}: the training loss became {train_loss.item()} at step {step + 1}")
        done = step + 1
        if done % val_every == 0 or done == steps:
            loss, bpb = validate(done)
            curve.append((done, bpb))
            if log:
                log.add(step=done, tokens=tokens, train_loss=train_loss.item(), val_loss=loss, val_bpb=bpb,
                        elapsed_s=round(seconds, 3))
    out = {"steps": steps, "seconds": round(seconds, 2), "curve": curve, "val_loss": loss, "val_bpb": bpb,
           "num_params": model.num_params()}
    if record is not None:
        params = {"name": name, "seed": seed, "arch": "gpt", "num_layers": num_layers, "num_heads": num_heads,
                  "model_dim": model_dim, "seq_len": seq_len,
                  "batch_size": batch_size, "num_steps": steps, "optimizer": optimizer,
                  "model_options": dict(model_options or {}), "data_dir": str(shard_dir), "val_tokens": val_tokens}
        runs.write_summary(record, params, {"val_loss": loss, "val_bpb": bpb, "steps": steps, "tokens_seen": tokens,
                                            "wall_seconds": round(seconds, 3)}, 1,
                           extra={"model_config": model.config, "num_params": model.num_params(),
                                  "flops_per_token": model.flops_per_token(), "ablation": True})
    return out


def run_ablation(shard_dir, steps: int, seeds=(0, 1), variants=None, record_dir=None, progress=print,
                 **train_kw) -> list[dict]:
    """Every variant (default: all of VARIANTS) for every seed; one dict per (variant, seed).

    record_dir: a folder that gets one run folder per (variant, seed), `<variant>_s<seed>`, and
    `results.json` with everything returned (06_compare reads the run folders).
    """
    names = list(variants or VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variants {unknown}: choose from {list(VARIANTS)}")
    if names[0] != "baseline":
        names = ["baseline"] + [n for n in names if n != "baseline"]
    out = []
    t0 = time.perf_counter()
    for name in names:
        what, model_options, opt = VARIANTS[name]
        for seed in seeds:
            rec = Path(record_dir) / f"{name}_s{seed}" if record_dir else None
            if rec is not None:
                rec.mkdir(parents=True, exist_ok=True)
            r = train_for_budget(shard_dir, steps, seed=seed, model_options=model_options, optimizer=opt,
                                 record=rec, name=name, **train_kw)
            out.append({"name": name, "off": what, "seed": seed, **r})
            if progress:
                progress(f"{name:>16} seed {seed}: val bpb {r['val_bpb']:.4f} after {steps} steps "
                         f"({r['seconds']:.1f} s training, {time.perf_counter() - t0:.0f} s so far)")
    if record_dir:
        fileio.write_json(Path(record_dir) / "results.json",
                          {"steps": steps, "seeds": list(seeds), "train": {k: v for k, v in train_kw.items()},
                           "variants": [{"name": n, "off": VARIANTS[n][0]} for n in names], "runs": out})
    return out


def results_table(results) -> list[dict]:
    """One row per variant: mean final val bpb over seeds, its difference from the baseline, the seeds' values,
    the difference to the baseline of the same seed ("paired": same initial weights and batches), and whether the
    mean difference is larger than the spread between seeds (a rough, conservative noise check)."""
    by = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)
    base = [r["val_bpb"] for r in by["baseline"]]
    base_mean = sum(base) / len(base)
    noise = max(base) - min(base)
    base_by_seed = {r["seed"]: r["val_bpb"] for r in by["baseline"]}
    rows = []
    for name, rs in by.items():
        vals = [r["val_bpb"] for r in rs]
        mean = sum(vals) / len(vals)
        diff = mean - base_mean
        paired = [r["val_bpb"] - base_by_seed[r["seed"]] for r in rs if r["seed"] in base_by_seed]
        rows.append({"variant": name, "off": rs[0]["off"], "val_bpb": mean, "diff": diff,
                     "seeds": vals, "spread": max(vals) - min(vals), "paired": paired,
                     "beyond_noise": name != "baseline" and abs(diff) > max(noise, max(vals) - min(vals))})
    return rows


def format_table(rows) -> str:
    """The table as Markdown: variant, what is off, mean val bpb, difference, per-seed values and differences."""
    lines = ["| variant | switched off | val bpb (mean) | vs baseline | seeds | vs baseline, per seed | "
             "beyond seed spread? |", "|---|---|---:|---:|---|---|---|"]
    for r in rows:
        base = r["variant"] == "baseline"
        diff = "—" if base else f"{r['diff']:+.4f}"
        mark = "—" if base else ("yes" if r["beyond_noise"] else "no")
        paired = "—" if base else ", ".join(f"{d:+.4f}" for d in r.get("paired", []))
        lines.append(f"| {r['variant']} | {r['off']} | {r['val_bpb']:.4f} | {diff} | "
                     f"{', '.join(f'{v:.4f}' for v in r['seeds'])} | {paired} | {mark} |")
    return "\n".join(lines)


__all__ = ["VARIANTS", "train_for_budget", "run_ablation", "results_table", "format_table"]

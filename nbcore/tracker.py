"""Optional: copy finished runs to Weights & Biases or trackio (off by default, never required).

The run folder stays the record; a tracker is a second view for researchers who already watch runs
there. A sweep logs each run when it finishes (`tracker: wandb` or `tracker: trackio` in the sweep
file, or `tracker: {kind: wandb, project: NAME}`); any finished run can be sent by hand:

    python -m nbcore.tracker wandb runs/20260101_120000_base --project my-question

Each run becomes one tracker run named like its folder, grouped by its sweep variant, with the
parameters from summary.json as its config and every metrics.csv row logged at its step.
"""
import argparse
import importlib
import sys
from pathlib import Path

from . import fileio, runs

KINDS = {"wandb": "wandb", "trackio": "trackio"}  # both offer init(project, name, group, config) / log / finish


class TrackerError(ValueError):
    """The tracker is unknown or its package is missing; the message says what to install."""


def parse(spec) -> dict | None:
    """`tracker:` of a sweep file -> {'kind', 'project'} or None (off)."""
    if spec in (None, "", "none", False):
        return None
    if isinstance(spec, str):
        spec = {"kind": spec}
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS or set(spec) - {"kind", "project"}:
        raise TrackerError(f"tracker {spec!r}: use 'wandb' or 'trackio', or {{kind: wandb, project: NAME}}")
    return {"kind": spec["kind"], "project": spec.get("project")}


def module(kind: str):
    """The tracker's package, imported only now; a clear message when it is not installed."""
    if kind not in KINDS:
        raise TrackerError(f"tracker {kind!r}: use one of {', '.join(KINDS)}")
    try:
        return importlib.import_module(KINDS[kind])
    except ImportError:
        raise TrackerError(f"tracker {kind!r} is set but the {kind} package is not installed: pip install {kind} "
                           f"(optional; remove 'tracker' to run without it)") from None


def log_run(run_dir, kind: str, project: str, group: str | None = None) -> int:
    """Send one finished run (its parameters and every metrics.csv row) to the tracker; returns rows sent."""
    run_dir = Path(run_dir)
    mod = module(kind)
    summary = fileio.read_json(run_dir / "summary.json") if (run_dir / "summary.json").exists() else {}
    config = {**(summary.get("parameters") or {}), "num_params": summary.get("num_params"),
              "world_size": summary.get("world_size"), "run_dir": str(run_dir)}
    kwargs = {"project": project, "name": run_dir.name, "config": config}
    if group:
        kwargs["group"] = group
    run = mod.init(**kwargs)
    n = 0
    try:
        for row in runs.read_metrics(run_dir):
            values = {k: v for k, v in row.items() if v is not None and k != "step"}
            if values:
                mod.log(values, step=row["step"]) if kind == "wandb" else mod.log(values)
                n += 1
        final = summary.get("final") or {}
        if final and kind == "wandb" and getattr(run, "summary", None) is not None:
            run.summary.update({f"final/{k}": v for k, v in final.items() if isinstance(v, (int, float))})
    finally:
        mod.finish()
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nbcore.tracker", description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=sorted(KINDS))
    ap.add_argument("runs", nargs="+", help="run folders (or names under runs/)")
    ap.add_argument("--project", default="nbcore")
    ap.add_argument("--group", default=None)
    a = ap.parse_args(argv)
    try:
        for r in a.runs:
            n = log_run(runs.open_run(r), a.kind, a.project, a.group)
            print(f"{a.kind}: {r}: {n} rows")
    except (TrackerError, FileNotFoundError) as e:
        print(f"tracker failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

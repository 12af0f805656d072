"""SkyPilot task files: the same launcher command on rented GPUs, with runs/ on a bucket or volume.

    python -m nbcore.launch papermill_params/sweeps/x0_mix_xs.yaml --emit skypilot sky/ \\
        --gpu A10G --gpus 1 --bucket s3://my-nbcore-runs --spot
    sky jobs launch sky/x0mix.yaml          # a managed job: recovered after a preemption

`--emit skypilot DIR` writes one task per parameter set (`<name>.yaml`) or one managed job per sweep
(`<sweep>.yaml`, running the whole sweep: its state file lives in runs/ on the bucket, so a
recovered job skips what finished and resumes what was interrupted). Each task:

- `workdir`: this repository, synced to the cluster (SkyPilot syncs it, honouring .gitignore);
- `setup`: the conda environment from environment.yml (created once, updated after);
- `file_mounts` (`--bucket s3://..., gs://..., r2://...`) or `volumes` (`--volume NAME`): runs/
  at /nbcore-runs on every node ($NBCORE_RUNS), so runs, checkpoints and shards outlive the cluster;
- `run`: `python -m nbcore.launch` with the same parameters; a single run resumes its newest run
  folder with a checkpoint (`--resume`), a sweep continues from its state file;
- several nodes (`--nnodes N`): SkyPilot's SKYPILOT_NODE_RANK, SKYPILOT_NODE_IPS (the first is the
  head) and SKYPILOT_NUM_NODES become the launcher's --nnodes/--node-rank/--rdzv-endpoint.

skypilot is an optional extra (`pip install -e '.[skypilot]'`); writing the files does not need it.
"""
import shlex
import sys
from pathlib import Path

import yaml

from . import fileio, forecast, launch, paths

MOUNT = "/nbcore-runs"       # runs/ on the cluster (bucket or volume)
RDZV_PORT = 29400
STORES = ("s3://", "gs://", "r2://", "https://", "cos://", "oci://")


class EmitError(ValueError):
    """The task files cannot be written; the message says what to give."""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (setup, run) as readable | blocks."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def accelerator(card_key: str) -> str:
    """CARDS key -> SkyPilot's accelerator name."""
    names = {"H100-SXM": "H100", "H100-PCIE": "H100", "H100-NVL": "H100-NVL", "A100-40GB": "A100",
             "A100-80GB": "A100-80GB", "RTX3090": "RTX3090", "RTX4090": "RTX4090", "RTXA6000": "RTXA6000"}
    if forecast.CARDS[card_key]["kind"] != "cuda":
        raise EmitError(f"--gpu {card_key}: SkyPilot rents CUDA GPUs; pick one of "
                        f"{', '.join(k for k, c in forecast.CARDS.items() if c['kind'] == 'cuda')}")
    return names.get(card_key, card_key)


def _storage(bucket: str | None, volume: str | None) -> dict:
    if bool(bucket) == bool(volume):
        raise EmitError("--emit skypilot needs where runs/ lives: --bucket s3://NAME (or gs://, r2://) "
                        "or --volume NAME (a SkyPilot volume); exactly one")
    if bucket:
        if not bucket.startswith(STORES):
            raise EmitError(f"--bucket {bucket!r}: give a URL such as s3://my-runs or gs://my-runs")
        return {"file_mounts": {MOUNT: {"source": bucket, "mode": "MOUNT_CACHED"}}}
    return {"volumes": {MOUNT: volume}}


SETUP = """\
set -e
conda --version >/dev/null 2>&1 || { echo "this image has no conda: install miniconda or use SkyPilot's default image"; exit 1; }
if conda env list | grep -q '^nbcore '; then
  conda env update -n nbcore -f environment.yml
else
  conda env create -n nbcore -f environment.yml
fi
"""

MULTINODE = """\
MULTI=""
if [ "${SKYPILOT_NUM_NODES:-1}" -gt 1 ]; then
  HEAD=$(echo "$SKYPILOT_NODE_IPS" | head -n1)
  MULTI="--nnodes $SKYPILOT_NUM_NODES --node-rank $SKYPILOT_NODE_RANK --rdzv-endpoint $HEAD:%d --rdzv-id $SKYPILOT_TASK_ID"
fi
""" % RDZV_PORT


def _run_script(launch_args: list[str], resume_name: str | None) -> str:
    """The run section: the launcher with the same arguments (+ --resume of the newest checkpointed folder)."""
    args = " ".join(shlex.quote(a) for a in launch_args)
    lines = ["set -e", "conda activate nbcore", f"export NBCORE_RUNS={MOUNT}", MULTINODE.rstrip(),
             "NPROC=${SKYPILOT_NUM_GPUS_PER_NODE:-1}"]
    if resume_name:  # a single run: after a preemption, continue its newest folder that has a checkpoint
        lines += [f"RESUME=$(ls -d {MOUNT}/*_{resume_name}/checkpoints/step_*.pt 2>/dev/null | sort | tail -n1 "
                  f"| xargs -r dirname | xargs -r dirname)",
                  'if [ -n "$RESUME" ]; then echo "resuming $RESUME"; RESUME="--resume $RESUME"; fi',
                  f"python -m nbcore.launch {args} --nproc $NPROC $RESUME $MULTI"]
    else:  # a sweep continues from its state file by itself
        lines += [f"python -m nbcore.launch {args} --nproc $NPROC $MULTI"]
    return "\n".join(lines) + "\n"


def task(name: str, launch_args: list[str], card_key: str, gpus: int, bucket=None, volume=None, spot=False,
         nodes: int = 1, resume_name: str | None = None, workdir=None) -> dict:
    """A SkyPilot task (a dict for YAML) running `python -m nbcore.launch <launch_args>`."""
    resources = {"accelerators": f"{accelerator(card_key)}:{int(gpus)}", "disk_size": 256}
    if spot:
        resources["use_spot"] = True
    # managed jobs: a preempted job is relaunched (another region if need be); a failing one is not retried
    resources["job_recovery"] = {"strategy": "EAGER_NEXT_REGION", "max_restarts_on_errors": 0}
    t = {"name": name, "workdir": str(workdir or paths.REPO_ROOT), "resources": resources}
    if nodes > 1:
        t["num_nodes"] = int(nodes)
    t.update(_storage(bucket, volume))
    t["envs"] = {"NBCORE_RUNS": MOUNT, "PYTHONPATH": "."}
    t["setup"] = SETUP
    t["run"] = _run_script(launch_args, resume_name)
    return t


def _rel(path) -> str:
    """The file's path relative to the repo (the workdir on the cluster), else as given."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(paths.REPO_ROOT))
    except ValueError:
        raise EmitError(f"{path} is outside the repository, so it would not reach the cluster with the workdir: "
                        f"put it under {paths.REPO_ROOT} (e.g. papermill_params/)") from None


def emit(source, out_dir, card_name: str, gpus: int | None = None, bucket=None, volume=None, spot=False,
         overrides: dict | None = None, nodes: int = 1, parallel: int | None = None) -> list[Path]:
    """Write the task file(s) for a parameter set or a sweep into `out_dir`; returns their paths."""
    from . import sweep

    key = forecast.card(card_name or "H100")
    out_dir = Path(out_dir)
    pargs = []
    for k, v in (overrides or {}).items():
        pargs += ["-p", str(k), v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip()
                  .removesuffix("...").strip()]
    if sweep.is_sweep_file(source):
        sw = sweep.load_sweep(source)
        sweep.run_plans(sw, overrides, check=False)  # names checked here, before renting anything
        n = int(gpus or sw["nproc"] or launch.load_plan(sw["parameter_set"]).get("nproc") or 1)
        _rel(sw["parameter_set"])
        args = [_rel(source), *pargs] + (["--parallel", str(parallel)] if parallel else [])
        name = sw["name"]
        total = n * max(1, int(parallel or sw["parallel"] or 1))
        t = task(f"nbcore-sweep-{name}", args, key, total, bucket, volume, spot, nodes, resume_name=None)
        if parallel or sw["parallel"] > 1:  # each run takes n GPUs of the machine's total
            t["run"] = t["run"].replace("--nproc $NPROC", f"--nproc {n}")
    else:
        plan = launch.apply_overrides(launch.load_plan(source), overrides or {})
        n = int(gpus or plan.get("nproc") or 1)
        name = launch._slug(plan["name"])
        t = task(f"nbcore-{name}", [_rel(source), *pargs], key, n, bucket, volume, spot, nodes, resume_name=name)
    path = out_dir / f"{name}.yaml"
    header = (f"# SkyPilot task written by: python -m nbcore.launch {' '.join(sys.argv[1:]) or _rel(source)}\n"
              f"# Launch as a managed job (recovers after preemptions): sky jobs launch {path}\n")
    fileio.write_text(path, header + yaml.dump(t, Dumper=_Dumper, sort_keys=False, width=120))
    return [path]


def cli(a, overrides: dict) -> int:
    """--emit skypilot DIR from nbcore.launch."""
    kind, out_dir = a.emit
    if kind != "skypilot":
        print(f"--emit {kind}: the only kind is skypilot", file=sys.stderr)
        return 2
    if a.params is None:
        print("--emit skypilot DIR: give a parameter set or a sweep file", file=sys.stderr)
        return 2
    try:
        written = emit(a.params, out_dir, a.gpu, a.gpus or a.nproc, a.bucket, a.volume, a.spot, overrides,
                       nodes=int(a.nnodes or 1), parallel=a.parallel)
    except (EmitError, forecast.ForecastError, ValueError, FileNotFoundError) as e:
        print(f"--emit failed: {e}", file=sys.stderr)
        return 1
    for p in written:
        print(f"wrote {p}\n  sky jobs launch {p}")
    return 0


def load_with_skypilot(path):
    """Parse a task file with SkyPilot's own parser (offline): sky.Task.from_yaml."""
    import sky

    return sky.Task.from_yaml(str(path))


_PARSE = """import json, sys
import sky
out = []
for p in sys.argv[1:]:
    t = sky.Task.from_yaml(p)
    out.append({"path": p, "name": t.name, "num_nodes": t.num_nodes, "run": t.run, "setup": t.setup,
                "envs": dict(t.envs), "workdir": str(t.workdir),
                "accelerators": [dict(r.accelerators or {}) for r in t.resources],
                "use_spot": [bool(r.use_spot) for r in t.resources]})
print(json.dumps(out))
"""


def parse_with_skypilot(paths, python=None) -> list:
    """What SkyPilot's own parser (sky.Task.from_yaml, offline) reads in each task file, as dicts
    (name, num_nodes, run, setup, envs, workdir, and accelerators and use_spot per resource).
    `python`: an interpreter with skypilot installed (default $NBCORE_SKYPILOT_PYTHON, else this
    one). SkyPilot may need its own environment: 0.14 pins click<8.2, which the Hugging Face hub's
    newest releases do not accept. Raises RuntimeError with SkyPilot's message when a file does not
    parse."""
    import json
    import os
    import subprocess

    python = python or os.environ.get("NBCORE_SKYPILOT_PYTHON") or sys.executable
    p = subprocess.run([python, "-c", _PARSE, *map(str, paths)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"})
    if p.returncode != 0:
        raise RuntimeError(f"SkyPilot ({python}) could not parse the task files:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


__all__ = ["accelerator", "task", "emit", "cli", "load_with_skypilot", "parse_with_skypilot", "EmitError", "MOUNT"]

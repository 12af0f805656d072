"""Run chapters headless from a parameter set: tokenizer -> shards -> training (torchrun) -> eval.

    python -m nbcore.launch papermill_params/demo_cpu.yaml -p max_seconds 60 -p name myrun --nproc 2
    python -m nbcore.launch papermill_params/demo_cpu.yaml --resume 20260101_120000_myrun

A parameter set (YAML) names chapters in order, each with its parameters:

    name: demo                        # the run name (runs/<YYYYmmdd_HHMMSS>_<name>/); -p name X
    nproc: 2                          # default processes for distributed chapters; --nproc N
    vars: {text_path: some.txt}       # values chapters use as ${text_path}; -p text_path X
    chapters:
      - notebook: 01_tokenizer
        parameters: {corpus: builtin, vocab_size: 2048, ...}
      - notebook: 02_data
        parameters: {corpus: builtin, ...}
      - notebook: 04_train            # distributed: runs under torchrun, every rank executes it
        parameters: {arch: gpt, ...}

`${var}` inside a string is replaced by the var's value; `${var_chars*0.9}` by 0.9 times the
number of characters of the file a var names (rounded down), e.g. to train a tokenizer on the
first 90% of a text. A YAML file without `chapters:` is a parameter set for 04_train alone.

What the launcher adds:
- The tokenizer (01) and the shards (02) go to `runs/tokenizers/<name>-<key>` and
  `runs/shards/<name>-<key>`, where key hashes the chapter's parameters (and the size and
  modification time of local corpus files). A later launch with identical parameters reuses
  them instead of rebuilding. Later chapters are wired to them: 02 gets `tokenizer`, 04 gets
  `data_dir` and `tokenizer`, 04 and 05 get the run folder.
- `-p NAME VALUE` goes to every chapter that declares NAME (or sets the var NAME); `name` is
  the run name and goes to the training/eval chapters only (01's `name` names the tokenizer).
  A NAME no chapter has is an error with the closest match.
- Distributed chapters (04, 05) run as `torchrun --nproc_per_node=N -m nbcore.launch
  --rank-worker SPEC`, so every rank executes the notebook through papermill; rank 0's executed
  copy is the record in the run folder, the others go to `logs/`. A failure on any rank fails
  the launch and prints that rank's error. Multi-node: pass torchrun's rendezvous options
  (`--nnodes 2 --node-rank 0 --rdzv-endpoint host:29400 --rdzv-id myjob`) and run the same
  command on every node.
- While 04 trains, a line per validation (and at most one per 30 s otherwise) with step, %, losses,
  tokens/s, MFU, elapsed, ETA and dollars so far, read from the run's metrics.csv (nbcore.progress);
  `--quiet` turns them off, `--log-output` streams the notebooks' own output as well.
- The run folder gets every executed notebook (copies of reused ones too) and `launch.json`
  (the parameter set, overrides, each chapter's parameters, status and time).
"""
import argparse
import copy
import difflib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from glob import glob
from pathlib import Path

import yaml

from . import fileio, nodes as nodes_lib, notebooks, paths, progress, runs
from .params import ParameterError

DISTRIBUTED_CHAPTERS = ("04", "05")   # run under torchrun (every rank executes the notebook)
PRODUCERS = {"01": paths.tokenizers_dir, "02": paths.shards_dir}  # chapters whose output is reused
DONE_MARKER = "launch_done.json"
LAUNCHER_NAMES = ("name",)            # launcher-level parameters (the run name)


class LaunchError(RuntimeError):
    """A chapter failed (on some rank), or the parameter set cannot be run."""


# ---------------------------------------------------------------- YAML with real floats
class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-3 as a string; read it as the float a researcher meant."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_value(text: str):
    """A -p value as YAML would read it (numbers, true/false, lists), else the string itself."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def load_plan(path) -> dict:
    """The parameter set: {'name', 'nproc', 'vars', 'chapters': [{'notebook', 'parameters'}]}."""
    path = Path(path)
    if not path.is_file():
        have = ", ".join(p.name for p in sorted(paths.PARAMS_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"parameter set {path} does not exist (papermill_params/ has: {have})")
    raw = yaml.load(path.read_text(), Loader=_Loader) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping (name, vars, chapters), got {type(raw).__name__}")
    if "chapters" not in raw:  # a flat parameter set for the training chapter
        name = raw.pop("name", path.stem)
        notebooks.check_names(raw, {**notebooks.declared_parameters("04_train"), "name": name})
        raw = {"name": name, "chapters": [{"notebook": "04_train", "parameters": raw}]}
    known = {"name", "nproc", "vars", "chapters", "description"}
    extra = set(raw) - known
    if extra:
        raise ValueError(f"{path}: unknown top-level key(s) {sorted(extra)}; use {sorted(known)}")
    chapters = []
    for i, ch in enumerate(raw["chapters"] or []):
        if isinstance(ch, str):
            ch = {"notebook": ch}
        bad = set(ch) - {"notebook", "parameters", "nproc"}
        if bad or "notebook" not in ch:
            raise ValueError(f"{path}: chapter {i} needs 'notebook' and may have 'parameters', 'nproc'; got {sorted(ch)}")
        chapters.append({"notebook": str(ch["notebook"]), "parameters": dict(ch.get("parameters") or {}),
                         **({"nproc": int(ch["nproc"])} if "nproc" in ch else {})})
    if not chapters:
        raise ValueError(f"{path}: no chapters to run")
    return {"name": str(raw.get("name") or path.stem), "nproc": int(raw.get("nproc") or 1),
            "vars": dict(raw.get("vars") or {}), "chapters": chapters, "source": str(path)}


def chapter_id(notebook: str) -> str:
    """'04_train' -> '04'."""
    return Path(notebook).stem[:2]


# ---------------------------------------------------------------- overrides and substitution
def apply_overrides(plan: dict, overrides: dict) -> dict:
    """A copy of `plan` with each -p override set where it applies; unknown names are errors."""
    plan = copy.deepcopy(plan)
    declared = {i: notebooks.declared_parameters(ch["notebook"]) for i, ch in enumerate(plan["chapters"])}
    valid = set(plan["vars"]) | set(LAUNCHER_NAMES) | {n for d in declared.values() for n in d}
    for name, value in overrides.items():
        if name not in valid:
            hint = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
            did = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ParameterError(f"-p {name}: no chapter of {Path(plan['source']).name} has a parameter {name!r}."
                                 f"{did} Valid: {', '.join(sorted(valid))}")
        if name in plan["vars"]:
            plan["vars"][name] = value
        if name == "name":
            plan["name"] = str(value)
        for i, ch in enumerate(plan["chapters"]):
            if name in declared[i] and (name not in LAUNCHER_NAMES or chapter_id(ch["notebook"]) not in PRODUCERS):
                ch["parameters"][name] = value
    return plan


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:\s*\*\s*([0-9.eE+-]+))?\}")


def substitute(value, variables: dict):
    """Replace ${var} (and ${var_chars*f}) in strings, recursively through lists and dicts."""
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def lookup(name):
        if name in variables:
            if variables[name] in ("", None):
                raise ValueError(f"${{{name}}} is empty: pass -p {name} VALUE")
            return variables[name]
        if name.endswith("_chars") and name[:-6] in variables:
            f = Path(str(lookup(name[:-6]))).expanduser()
            if not f.is_file():
                raise ValueError(f"${{{name}}}: var {name[:-6]!r} = {variables[name[:-6]]!r} is not a file")
            return len(f.read_text(encoding="utf-8", errors="replace"))
        raise ValueError(f"${{{name}}} is not defined; define it under vars: (have {sorted(variables)})")

    whole = _VAR.fullmatch(value)
    if whole:  # the whole string is one ${...}: keep the value's type
        v = lookup(whole.group(1))
        return int(v * float(whole.group(2))) if whole.group(2) else v
    return _VAR.sub(lambda m: str(int(lookup(m.group(1)) * float(m.group(2))) if m.group(2)
                                  else lookup(m.group(1))), value)


# ---------------------------------------------------------------- reuse keys
def _corpus_fingerprint(params: dict) -> list:
    """Size and mtime of the files a local: corpus names, so an edited file is not reused stale."""
    spec = params.get("corpus")
    if not isinstance(spec, str) or not spec.startswith("local:"):
        return []
    files = sorted(glob(os.path.expanduser(spec[len("local:"):]), recursive=True))
    return [[f, os.path.getsize(f), os.path.getmtime(f)] for f in files if os.path.isfile(f)]


def reuse_key(notebook: str, params: dict) -> str:
    """Hash of what a producing chapter's output depends on (its parameters, input files)."""
    p = {k: v for k, v in params.items() if k != "out_dir"}
    blob = json.dumps({"notebook": Path(notebook).stem, "params": p, "files": _corpus_fingerprint(params)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


# ---------------------------------------------------------------- running chapters
def _run_local(nb, out, params, log_output):
    notebooks.execute(nb, out, params, log_output=log_output)


def _torchrun_cmd(nproc: int, spec_path: Path, torchrun_args: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    cmd += torchrun_args if torchrun_args else ["--standalone"]
    return cmd + ["-m", "nbcore.launch", "--rank-worker", str(spec_path)]


def _rank_errors(logs: Path, stem: str) -> list[tuple[int, str]]:
    out = []  # the earliest error first: later ones are usually other ranks losing their peer
    for f in sorted(logs.glob(f"{stem}.rank*.error.txt"), key=lambda f: f.stat().st_mtime_ns):
        m = re.search(r"\.rank(\d+)\.error\.txt$", f.name)
        out.append((int(m.group(1)), f.read_text()))
    return out


def run_distributed(nb: Path, out: Path, params: dict, nproc: int, logs: Path, torchrun_args=(),
                    log_output=False) -> None:
    """Every rank executes `nb` with `params`; rank 0's copy goes to `out`, the others to `logs/`."""
    logs.mkdir(parents=True, exist_ok=True)
    stem = out.stem
    for f in logs.glob(f"{stem}.rank*.error.txt"):
        f.unlink()
    spec = {"notebook": str(nb), "output": str(out), "logs": str(logs), "parameters": params,
            "log_output": log_output}
    spec_path = logs / f"{stem}.spec.json"
    fileio.write_json(spec_path, spec)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    proc = subprocess.run(_torchrun_cmd(nproc, spec_path, list(torchrun_args)), env=env)
    errors = _rank_errors(logs, stem)
    if proc.returncode != 0 or errors:
        if errors:
            rank, text = errors[0]
            msg = f"{nb.name} failed on rank {rank} of {nproc}:\n{text.strip()}"
        else:
            msg = f"{nb.name}: torchrun exited with code {proc.returncode} (see the output above and {logs})"
        raise LaunchError(msg)


def rank_worker(spec_path) -> int:
    """Run by torchrun on every rank: execute the notebook, leave an error file on failure."""
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    out = Path(spec["output"])
    logs = Path(spec["logs"])
    if rank != 0:
        out = logs / f"{out.stem}.rank{rank}.ipynb"
    os.environ["NBCORE_LAUNCH_WORKER"] = "1"  # the kernel ends itself if this process dies
    try:
        notebooks.execute(spec["notebook"], out, spec["parameters"], log_output=spec.get("log_output", False))
    except Exception as e:  # papermill's error carries the cell's exception name and message
        ename, evalue = getattr(e, "ename", type(e).__name__), getattr(e, "evalue", str(e))
        text = f"{ename}: {evalue}\n(executed copy with the failing cell: {out})\n"
        fileio.write_text(logs / f"{Path(spec['output']).stem}.rank{rank}.error.txt", text)
        print(f"[rank {rank}] {text}", file=sys.stderr, flush=True)
        return 1
    return 0


def _copy(src: Path, dst: Path):
    if src.exists():
        fileio.write_bytes(dst, src.read_bytes())


def run_plan(plan: dict, nproc: int | None = None, resume=None, torchrun_args=(), log_output=False,
             only=None, dry_run=False, nodes=None, quiet=False) -> Path:
    """Run every chapter of `plan` in order; returns the run folder.

    nodes: a `nbcore.nodes.Nodes` in a multi-node launch (node 0 owns the run folder and the
    products of 01/02; the other nodes take them from it)."""
    nproc = int(nproc or plan.get("nproc") or 1)
    for ch in plan["chapters"]:  # every chapter's names and ${vars} are checked before anything runs
        notebooks.check_names(substitute(ch["parameters"], plan["vars"]), notebooks.declared_parameters(ch["notebook"]))
    if resume:
        run_dir = runs.open_run(resume) if not nodes else nodes.run_folder(lambda: runs.open_run(resume))
    elif nodes and not dry_run:
        run_dir = nodes.run_folder(lambda: runs.new_run_dir(_slug(plan["name"])))
    else:
        run_dir = None if dry_run else runs.new_run_dir(_slug(plan["name"]))
    record_path = (run_dir / "launch.json") if run_dir else None
    if nodes and not nodes.is_owner and run_dir:  # node 0 keeps the record; this node notes its own part
        record_path = run_dir / "logs" / f"launch.node{nodes.node_rank}.json"
    record = fileio.read_json(record_path) if resume and record_path.exists() else {}
    record.setdefault("launches", [])
    this = {"source": plan.get("source"), "vars": plan["vars"], "nproc": nproc, "resume": bool(resume),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "chapters": []}
    record["launches"].append(this)
    made = {}  # "tokenizer" / "shards" -> folder
    for ch in plan["chapters"]:
        nb = notebooks.notebook_path(ch["notebook"])
        cid = chapter_id(nb.name)
        declared = notebooks.declared_parameters(nb)
        params = substitute(ch["parameters"], plan["vars"])
        # wiring: what earlier chapters made
        if cid == "02" and "tokenizer" in declared and "tokenizer" in made and not params.get("tokenizer"):
            params["tokenizer"] = str(made["tokenizer"])
        if cid not in PRODUCERS and "name" in declared and "name" not in params:
            params["name"] = plan["name"]
        if cid in ("04", "05"):
            for name, kind in (("data_dir", "shards"), ("tokenizer", "tokenizer")):
                if name in declared and kind in made and (not params.get(name) or nodes and not nodes.is_owner):
                    params[name] = str(made[kind])  # another node: its own copy, not node 0's path
            if "run_dir" in declared and run_dir is not None:
                params["run_dir"] = str(run_dir)
            if cid == "04" and resume and "resume" in declared:
                params["resume"] = str(run_dir)
                params.pop("run_dir", None)
        notebooks.check_names(params, declared)  # a typo in the YAML fails before anything runs
        entry = {"notebook": nb.stem, "parameters": params}
        this["chapters"].append(entry)
        if only and cid not in only and cid not in PRODUCERS:
            entry["status"] = "skipped (--only)"
            continue
        if dry_run:
            entry["status"] = "dry run"
            continue
        t0 = time.time()
        if cid in PRODUCERS:
            key = reuse_key(nb.name, params)
            label = _slug(params.get("name") or Path(str(params.get("tokenizer", "x"))).name or cid)
            folder = Path(params["out_dir"]) if params.get("out_dir") else PRODUCERS[cid]() / f"{label}-{key}"
            kind = "tokenizer" if cid == "01" else "shards"
            marker = folder / DONE_MARKER
            if nodes and not nodes.is_owner:  # node 0 makes it; this node finds or receives it
                folder, how = nodes.product(cid, DONE_MARKER, f"the {kind} of {nb.stem}")
                entry["status"] = f"{how} from node 0: {folder}"
                print(f"[launch] {nb.stem}: {how} node 0's {kind} ({folder})", flush=True)
            elif marker.exists() and fileio.read_json(marker).get("key") == key:
                entry["status"] = f"reused {folder}"
                print(f"[launch] {nb.stem}: reusing {folder} (same parameters, key {key})", flush=True)
            elif only and cid not in only:
                raise LaunchError(f"--only {','.join(sorted(only))}: {nb.stem} has no finished output with these "
                                  f"parameters ({folder}); run without --only first")
            else:
                params["out_dir"] = str(folder)
                entry["parameters"] = params
                print(f"[launch] {nb.stem} -> {folder}", flush=True)
                _run_local(nb, folder / nb.name, params, log_output)
                fileio.write_json(marker, {"key": key, "notebook": nb.stem, "parameters": params,
                                           "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
                entry["status"] = "ran"
            made[kind] = folder
            if nodes and nodes.is_owner:
                nodes.publish_product(cid, folder, key)
            if not nodes or nodes.is_owner:
                _copy(folder / nb.name, run_dir / nb.name)
        else:
            n = int(ch.get("nproc", nproc)) if cid in DISTRIBUTED_CHAPTERS else 1
            out = run_dir / nb.name
            if out.exists():  # a resume (or a second eval) keeps the earlier record
                k = 1
                while (run_dir / f"{nb.stem}.resume{k}.ipynb").exists():
                    k += 1
                out = run_dir / f"{nb.stem}.resume{k}.ipynb"
            if nodes:  # node 0 names the executed copy (the other nodes' folders may lack the earlier ones)
                out = run_dir / nodes.same(f"output/{len(this['chapters'])}", out.name)
            print(f"[launch] {nb.stem} on {n} process(es) -> {out}", flush=True)
            printer = (progress.start_for_chapter(run_dir, {**declared, **params}, n * _num_nodes(torchrun_args), quiet)
                       if cid == "04" else None)  # live progress lines from metrics.csv (--quiet: none)
            try:
                if n > 1 or torchrun_args:
                    run_distributed(nb, out, params, n, run_dir / "logs", torchrun_args, log_output)
                else:
                    _run_local(nb, out, params, log_output)
            except Exception as e:
                entry["status"] = f"failed: {type(e).__name__}"
                entry["seconds"] = round(time.time() - t0, 2)
                fileio.write_json(record_path, record)
                if isinstance(e, LaunchError):
                    raise
                ename, evalue = getattr(e, "ename", type(e).__name__), getattr(e, "evalue", str(e))
                raise LaunchError(f"{nb.name} failed: {ename}: {evalue}\n(executed copy: {out})") from None
            finally:
                if printer is not None:
                    printer.stop()
            entry["status"] = "ran"
            entry["output"] = out.name
            entry["processes"] = n
        entry["seconds"] = round(time.time() - t0, 2)
        if run_dir is not None:
            fileio.write_json(record_path, record)
    if dry_run:
        print(json.dumps(this, indent=2, default=str))
    if nodes:
        nodes.finish()
    return run_dir


def _num_nodes(torchrun_args) -> int:
    nodes = [a.split("=", 1)[1] for a in torchrun_args if a.startswith("--nnodes=")]
    return int(nodes[0].split(":")[-1]) if nodes and nodes[0].split(":")[-1].isdigit() else 1


def recorded_plan(run) -> dict:
    """The plan a run was first launched with, from its launch.json (parameters as they ran)."""
    path = runs.open_run(run) / "launch.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give the parameter set too (launch PARAMS.yaml --resume RUN)")
    first = fileio.read_json(path)["launches"][0]
    chapters = []
    for ch in first["chapters"]:
        params = {k: v for k, v in ch["parameters"].items() if k not in ("run_dir", "resume")}
        chapters.append({"notebook": ch["notebook"], "parameters": params,
                         **({"nproc": ch["processes"]} if "processes" in ch else {})})
    return {"name": Path(run).name, "nproc": first.get("nproc", 1), "vars": first.get("vars", {}),
            "chapters": chapters, "source": str(path)}


# ---------------------------------------------------------------- command line
def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m nbcore.launch", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params", nargs="?", help="a parameter set, e.g. papermill_params/demo_cpu.yaml")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override a parameter in every chapter that has it (repeatable)")
    ap.add_argument("--nproc", type=int, default=None, help="processes (GPUs) for training: torchrun --nproc_per_node")
    ap.add_argument("--resume", default=None, metavar="RUN", help="continue this run folder from its last checkpoint")
    ap.add_argument("--only", default=None, help="comma-separated chapter numbers to run (e.g. 04,05)")
    ap.add_argument("--dry-run", action="store_true", help="print the chapters and their parameters, run nothing")
    ap.add_argument("--log-output", action="store_true", help="stream the notebooks' output to the terminal")
    ap.add_argument("--quiet", action="store_true", help="no live progress lines while 04_train runs")
    ap.add_argument("--nnodes", default=None, help="torchrun --nnodes (multi-node)")
    ap.add_argument("--node-rank", default=None, help="torchrun --node-rank")
    ap.add_argument("--rdzv-endpoint", default=None, help="torchrun --rdzv-endpoint host:port")
    ap.add_argument("--rdzv-id", default=None, help="torchrun --rdzv-id (same on every node)")
    ap.add_argument("--rank-worker", default=None, help=argparse.SUPPRESS)
    # sweeps, the forecast and SkyPilot (nbcore.sweep, nbcore.forecast, nbcore.skypilot)
    ap.add_argument("--parallel", type=int, default=None, help="sweeps: runs at once (each on its own GPUs)")
    ap.add_argument("--plan", action="store_true", help="print the forecast (tokens, FLOPs, memory, time, $); run nothing")
    ap.add_argument("--gpu", default=None, help="--plan/--emit: the card, e.g. H100, A100-80GB, RTX4090, T4, M2-Max, CPU")
    ap.add_argument("--gpus", type=int, default=None, help="--plan/--emit: GPUs per run (default --nproc, else the set's)")
    ap.add_argument("--price", type=float, default=None, help="--plan: dollars per GPU-hour")
    ap.add_argument("--mfu", type=float, default=None, help="--plan: model FLOPs utilisation to assume without a measurement")
    ap.add_argument("--emit", nargs=2, default=None, metavar=("KIND", "DIR"), help="write task files: skypilot DIR")
    ap.add_argument("--bucket", default=None, help="--emit skypilot: store runs/ on this bucket (s3://..., gs://...)")
    ap.add_argument("--volume", default=None, help="--emit skypilot: store runs/ on this SkyPilot volume")
    ap.add_argument("--spot", action="store_true", help="--emit skypilot: spot instances (managed jobs recover)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.rank_worker:
        return rank_worker(a.rank_worker)
    from . import sweep  # forecast (--plan), task files (--emit), or a sweep file (variants x seeds)
    if a.plan or a.emit or (a.params and sweep.is_sweep_file(a.params)):
        return sweep.cli(a)
    if a.params is None and a.resume is None:
        print("give a parameter set (papermill_params/*.yaml), or --resume RUN", file=sys.stderr)
        return 2
    coord = None
    try:
        coord = nodes_lib.connect(a.nnodes, a.node_rank, a.rdzv_endpoint, a.rdzv_id) if not a.dry_run else None
        if a.params is None and coord and not coord.is_owner:
            plan = None  # node 0 reads launch.json and sends its plan (below)
        elif a.params is None:  # resume with the parameters the run was launched with
            plan = recorded_plan(a.resume)
        else:
            plan = load_plan(a.params)
        overrides = {}
        for name, value in a.parameter:
            overrides[name] = parse_value(value)
        if coord:
            plan = coord.plan(plan)
        plan = apply_overrides(plan, overrides)
        trargs = []
        if a.nnodes:
            trargs += [f"--nnodes={a.nnodes}", "--rdzv-backend=c10d"]
            if a.node_rank is not None:
                trargs += [f"--node-rank={a.node_rank}"]
            if a.rdzv_endpoint:
                trargs += [f"--rdzv-endpoint={a.rdzv_endpoint}"]
            if a.rdzv_id:
                trargs += [f"--rdzv-id={a.rdzv_id}"]
        only = set(a.only.split(",")) if a.only else None
        run_dir = run_plan(plan, nproc=a.nproc, resume=a.resume, torchrun_args=trargs, log_output=a.log_output,
                           only=only, dry_run=a.dry_run, nodes=coord, quiet=a.quiet)
    except (LaunchError, ParameterError, FileNotFoundError, FileExistsError, ValueError, nodes_lib.NodeError) as e:
        if coord:
            coord.fail(str(e))
        print(f"launch failed: {e}", file=sys.stderr)
        return 1
    if run_dir is not None:
        print(f"[launch] done: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

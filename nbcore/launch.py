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
- `-p NAME VALUE` goes to every chapter where NAME means the same thing (or sets the var NAME);
  `name` is the run name and goes to the training/eval chapters only (01's `name` names the
  tokenizer). Names that mean different things in different chapters go where ROUTES says
  (`vocab_size` to 01: 04's follows the tokenizer); `-p 04_train.NAME VALUE` (or `04.NAME`)
  reaches one chapter. Seeds are separate: 02's `data_seed`, 04's `seed`, 05's `generation_seed`.
  A NAME no chapter has is an error with the closest match. VALUE, like every value in a parameter
  file, is read by YAML 1.2's rules ("007", "12:30", "no" stay strings; "1e-3" is a float);
  relative paths are made absolute from the current folder.
- Before anything runs: every chapter's parameters are worked out and checked (names, 04's
  `model_options` types, `device: cuda` on a machine without CUDA); the run folder is locked
  (a second launch on it is refused) and `launch.json` records the plan, so `--resume RUN`
  alone continues a run however it was stopped.
- Ctrl-C or SIGTERM (a spot GPU taken back) during training: every rank stops at the next
  step boundary, saves a checkpoint and a summary.json with `stopped_by: interrupt`, and the
  launcher prints the resume command (exit status 128 + the signal). A second signal aborts.
  If the launcher is killed outright, torchrun and every rank die with it.
- A failing chapter is named with its cell, the error's last line and the executed copy; a new
  run folder that received nothing but the plan is removed.
- Distributed chapters (04, 05) run as `torchrun --nproc_per_node=N -m nbcore.launch
  --rank-worker SPEC`, so every rank executes the notebook through papermill; rank 0's executed
  copy is the record in the run folder, the others go to `logs/`. A failure on any rank fails
  the launch and prints that rank's error. Multi-node: pass torchrun's rendezvous options
  (`--nnodes 2 --node-rank 0 --rdzv-endpoint host:29400 --rdzv-id myjob`) and run the same
  command on every node (node 0 owns the run folder, the tokenizer and the shards; nbcore.nodes).
- While 04 trains, a line per validation (and at most one per 30 s otherwise) with step, %, losses,
  tokens/s, MFU, elapsed, ETA and dollars so far, read from the run's metrics.csv (nbcore.progress);
  `--quiet` turns them off, `--log-output` streams the notebooks' own output as well.
  `--tracker wandb|trackio` (optional extras) streams the same rows to W&B or trackio.
- A sweep file (variants x seeds, nbcore.sweep), `--plan` (a cost forecast, nbcore.forecast) and
  `--emit skypilot DIR` (task files, nbcore.skypilot) go through the same command.
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
import signal
import subprocess
import sys
import time
from glob import glob
from pathlib import Path

import yaml

from . import fileio, nodes as nodes_lib, notebooks, paths, progress, runs, tracker as tracking
from .params import ParameterError

DISTRIBUTED_CHAPTERS = ("04", "05")   # run under torchrun (every rank executes the notebook)
PRODUCERS = {"01": paths.tokenizers_dir, "02": paths.shards_dir}  # chapters whose output is reused
DONE_MARKER = "launch_done.json"
LAUNCHER_NAMES = ("name",)            # launcher-level parameters (the run name)


class LaunchError(RuntimeError):
    """A chapter failed (on some rank), or the parameter set cannot be run."""


# ---------------------------------------------------------------- YAML read by 1.2's rules
_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")  # no leading zeros: "007" is a name, not 7
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X)
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class _Loader(yaml.SafeLoader):
    """Parameter files and -p values read alike, by YAML 1.2's rules rather than PyYAML's 1.1 ones.

    1.1 would read "1e-3" as a string, "no"/"on" as booleans, "007" as the octal 7 and "12:30" as
    the base-60 number 750. Here: "1e-3" is a float; "no", "on", "007" and "12:30" stay text.
    """

    yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag not in (
        "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}


_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_value(text: str):
    """A -p value as a researcher means it: numbers, true/false, null, [lists] and {maps}; else the text.

    YAML 1.2's rules, not 1.1's: "007" stays "007" (no octal), "12:30" stays "12:30" (no base-60
    number 750), "no"/"on" stay strings; "1e-3" is a float.
    """
    t = text.strip()
    if not t:
        return text
    try:
        value = yaml.load(t, Loader=_Loader)  # the rules parameter files are read by
    except yaml.YAMLError:
        return text
    if t[:1] in ("[", "{") or isinstance(value, (bool, int, float)):
        return value
    return None if value is None and t in ("null", "Null", "NULL", "~") else text


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
# Names several chapters declare with different meanings: an unqualified -p NAME goes only to these
# chapters; `-p 04_train.NAME V` (or `-p 04.NAME V`) reaches one chapter. Names declared by several
# chapters and listed in neither table mean the same thing everywhere (a test keeps this complete).
ROUTES = {
    "vocab_size": ("01",),        # 01: 256 bytes + merges; 04/03: embedding rows (0 = the tokenizer's)
    "device": ("04", "05"),       # the model's device; 01's is the BPE trainer's (cpu | cuda)
    "val_tokens": ("04", "05"),   # tokens scored per evaluation; 02's is the size of the val shard
    "val_batch_size": ("04", "05"),  # rows per validation forward (0: each chapter's own default)
    "out_dir": (),                # each producer's own folder: qualify it (01.out_dir, 02.out_dir)
}
SAME_MEANING = {"corpus", "encoding", "workers", "tokenizer", "seed", "num_layers", "num_heads", "model_dim", "seq_len",
                "batch_size", "data_dir", "run_dir", "name"}
PATH_NAMES = {"tokenizer", "data_dir", "run_dir", "resume", "out_dir", "checkpoint", "prompts_file",
              "data_files", "text_path"}


def _absolute(name: str, value, cwd: Path, is_var: bool = False):
    """A relative path given on the command line, made absolute from where the launcher was run.

    Chapters run with notebooks/ as their folder, so `mydata/ts.txt` must not reach them relative.
    Applies to path parameters (and `_path`/`_dir`/`_file` names), to vars naming an existing
    file or folder, and to `local:` corpora.
    """
    if not isinstance(value, str) or not value or "${" in value:
        return value
    if value.startswith("local:"):
        pattern = value[len("local:"):]
        if pattern and not os.path.isabs(os.path.expanduser(pattern)):
            return "local:" + str(cwd / pattern)
        return value
    p = Path(os.path.expanduser(value))
    if p.is_absolute() or ":" in value.split("/")[0]:  # absolute, or a scheme such as tiktoken:gpt2
        return value
    pathlike = name in PATH_NAMES or name.endswith(("_path", "_dir", "_file", "_files"))
    if (cwd / p).exists() and (pathlike or is_var or "/" in value):
        return str(cwd / p)
    if pathlike and ("/" in value or value.startswith(".")):  # a folder still to be made
        return str(cwd / p)
    return value


def _split_name(name: str, plan: dict) -> tuple[str | None, str]:
    """'04_train.vocab_size' or '04.vocab_size' -> ('04', 'vocab_size'); 'seed' -> (None, 'seed')."""
    if "." in name:
        head, rest = name.split(".", 1)
        ids = {chapter_id(ch["notebook"]): ch["notebook"] for ch in plan["chapters"]}
        cid = head[:2] if head[:2].isdigit() else None
        if cid is None or cid not in ids or (len(head) > 2 and Path(ids[cid]).stem != head):
            raise ParameterError(f"-p {name}: {head!r} is not a chapter of {Path(plan['source']).name} "
                                 f"(chapters: {', '.join(Path(c['notebook']).stem for c in plan['chapters'])})")
        return cid, rest
    return None, name


def apply_overrides(plan: dict, overrides: dict, cwd=None) -> dict:
    """A copy of `plan` with each -p override set where it means the same thing; unknown names are errors.

    `-p NAME V` goes to every chapter declaring NAME, except the names in ROUTES (different meanings
    in different chapters), which go to the chapters listed there; `-p 04_train.NAME V` reaches one
    chapter. Relative paths are made absolute from `cwd` (where the launcher was run).
    """
    plan = copy.deepcopy(plan)
    cwd = Path(cwd or os.getcwd())
    declared = {i: notebooks.declared_parameters(ch["notebook"]) for i, ch in enumerate(plan["chapters"])}
    valid = set(plan["vars"]) | set(LAUNCHER_NAMES) | {n for d in declared.values() for n in d}
    for full_name, value in overrides.items():
        if not full_name or not str(full_name).strip():
            raise ParameterError("-p: empty parameter name; write -p NAME VALUE")
        only, name = _split_name(full_name, plan)
        if name not in valid:
            hint = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
            did = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ParameterError(f"-p {full_name}: no chapter of {Path(plan['source']).name} has a parameter "
                                 f"{name!r}.{did} Valid: {', '.join(sorted(valid))}")
        if name == "name" and only is None and not str(value).strip():
            raise ParameterError("-p name: the run name is empty; give a name (letters, digits, '.', '_', '-')")
        if name in plan["vars"] and only is None:
            plan["vars"][name] = _absolute(name, value, cwd, is_var=True)
        if name == "name" and only is None:
            plan["name"] = str(value)
        targets = [i for i, ch in enumerate(plan["chapters"]) if name in declared[i]]
        if only is not None:
            targets = [i for i in targets if chapter_id(plan["chapters"][i]["notebook"]) == only]
            if not targets:
                raise ParameterError(f"-p {full_name}: chapter {only} has no parameter {name!r}")
        elif name in LAUNCHER_NAMES:
            targets = [i for i in targets if chapter_id(plan["chapters"][i]["notebook"]) not in PRODUCERS]
        elif name in ROUTES:
            targets = [i for i in targets if chapter_id(plan["chapters"][i]["notebook"]) in ROUTES[name]]
            if not targets and name not in plan["vars"]:
                where = ", ".join(f"{Path(plan['chapters'][i]['notebook']).stem}.{name}"
                                  for i in range(len(plan["chapters"])) if name in declared[i])
                raise ParameterError(f"-p {name} means different things in different chapters; say which: "
                                     f"-p {where.split(', ')[0]} VALUE (have: {where})")
        for i in targets:
            plan["chapters"][i]["parameters"][name] = _absolute(name, value, cwd)
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
    """Every rank executes `nb` with `params`; rank 0's copy goes to `out`, the others to `logs/`.

    torchrun runs in its own session (Ctrl-C at the terminal reaches the launcher only, which
    turns it into a stop request) and is killed if the launcher dies, so no rank outlives it.
    """
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
    proc = subprocess.Popen(_torchrun_cmd(nproc, spec_path, list(torchrun_args)), env=env,
                            start_new_session=True, preexec_fn=_die_with_parent)
    _live.torchrun = proc
    try:
        returncode = proc.wait()
    finally:
        _live.torchrun = None
    errors = _rank_errors(logs, stem)
    if _live.aborted:
        raise KeyboardInterrupt
    if returncode != 0 or errors:
        if errors:
            rank, text = errors[0]
            msg = text.strip()
        else:
            msg = f"{nb.stem}: torchrun exited with code {returncode} (see the output above and {logs})"
        raise LaunchError(msg)


def _die_with_parent() -> None:
    """In a child process: be killed when the launcher dies (Linux), so no rank trains on as an orphan."""
    if sys.platform != "linux":
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def describe_failure(notebook: str, exc: BaseException, executed, rank=None) -> str:
    """What failed, in a few lines: the notebook, the cell, the error's last line, the executed copy.

    (papermill's own traceback is long and mostly its machinery; the executed copy holds the rest.)
    """
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename is None:
        ename, evalue = type(exc).__name__, str(exc)
    lines = [ln for ln in f"{ename}: {evalue}".strip().splitlines() if ln.strip()]
    if not str(evalue or "").strip():  # no message: the last line of the exception's own text
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        lines += [ln.strip() for ln in plain.splitlines() if ln.strip()][-1:]
    cell = getattr(exc, "cell_index", None)
    count = getattr(exc, "exec_count", None)
    where = f" in cell {cell}" + (f" (execution count {count})" if count is not None else "") if cell is not None else ""
    on = f" on rank {rank[0]} of {rank[1]}" if rank else ""
    return f"{Path(notebook).stem} failed{on}{where}: {lines[-1] if lines else ename}\n  executed copy: {executed}"


def rank_worker(spec_path) -> int:
    """Run by torchrun on every rank: execute the notebook, leave an error file on failure."""
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    out = Path(spec["output"])
    logs = Path(spec["logs"])
    if rank != 0:
        out = logs / f"{out.stem}.rank{rank}.ipynb"
    os.environ["NBCORE_LAUNCH_WORKER"] = "1"  # the kernel ends itself if this process dies
    _die_with_parent()  # ... and this process if torchrun dies
    try:
        notebooks.execute(spec["notebook"], out, spec["parameters"], log_output=spec.get("log_output", False))
    except Exception as e:  # papermill's error carries the cell's exception name and message
        text = describe_failure(spec["notebook"], e, out, rank=(rank, int(os.environ.get("WORLD_SIZE", "1")))) + "\n"
        fileio.write_text(logs / f"{Path(spec['output']).stem}.rank{rank}.error.txt", text)
        print(f"[rank {rank}] {text}", file=sys.stderr, flush=True)
        return 1
    return 0


def _copy(src: Path, dst: Path):
    if src.exists():
        fileio.write_bytes(dst, src.read_bytes())


# ---------------------------------------------------------------- a live run: signals, stop requests
STOPPABLE = ("04",)   # chapters whose loop stops at a step boundary on request, saving a checkpoint
STOP_FILE = ".stop"   # in the run folder; runs.StopRequest in every rank's kernel watches it


class Interrupted(Exception):
    """SIGINT or SIGTERM ended the launch (after the training chapter saved a checkpoint)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class _Live:
    """What the signal handler needs to know about the launch in progress."""

    def __init__(self):
        self.signum = None        # the first SIGINT/SIGTERM received
        self.graceful = False     # True while a chapter runs that stops on request (the training loop)
        self.stop_file = None     # written on the first signal; the kernels' StopRequest sees it
        self.torchrun = None      # the torchrun process of a distributed chapter
        self.aborted = False


_live = _Live()


def _on_signal(signum, frame):
    """First SIGINT/SIGTERM during training: ask every rank to stop at the next step boundary
    (the loop then saves a checkpoint and summary.json). Elsewhere, or a second time: abort."""
    name = signal.Signals(signum).name
    if _live.signum is None and _live.graceful and _live.stop_file is not None:
        _live.signum = signum
        fileio.write_text(_live.stop_file, f"{name}\n")
        print(f"\n[launch] {name}: training stops at the next step boundary and saves a checkpoint "
              f"(send it again to abort at once)", file=sys.stderr, flush=True)
        return
    _live.signum = _live.signum or signum
    _live.aborted = True
    print(f"\n[launch] {name}: aborting", file=sys.stderr, flush=True)
    if _live.torchrun is not None:
        try:
            os.killpg(_live.torchrun.pid, signal.SIGKILL)  # the kernels follow (they die with their parent)
        except ProcessLookupError:
            pass
    else:
        raise KeyboardInterrupt


class _signals:
    """Route SIGINT and SIGTERM to `_on_signal` while a launch runs (main thread only)."""

    def __enter__(self):
        import threading

        self.old = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.old[s] = signal.signal(s, _on_signal)
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)
        return False


# ---------------------------------------------------------------- planning every chapter before running
def resolve_chapters(plan: dict, nproc: int) -> list[dict]:
    """Each chapter's final parameters and how it runs, worked out before anything runs.

    Producers (01, 02) get the folder their output goes to (from their reuse key); later chapters
    are wired to those folders. Returns [{'nb', 'cid', 'declared', 'params', ...}] in plan order.
    """
    made = {}  # "tokenizer" / "shards" -> folder
    steps = []
    for ch in plan["chapters"]:
        nb = notebooks.notebook_path(ch["notebook"])
        cid = chapter_id(nb.name)
        declared = notebooks.declared_parameters(nb)
        params = substitute(ch["parameters"], plan["vars"])
        # wiring: what earlier chapters make
        if cid == "02" and "tokenizer" in declared and "tokenizer" in made and not params.get("tokenizer"):
            params["tokenizer"] = str(made["tokenizer"])
        if cid not in PRODUCERS and "name" in declared and "name" not in params:
            params["name"] = plan["name"]
        if cid in ("04", "05"):
            for name, kind in (("data_dir", "shards"), ("tokenizer", "tokenizer")):
                if name in declared and kind in made and not params.get(name):
                    params[name] = str(made[kind])
        notebooks.check_names(params, declared)  # a typo in the YAML fails before anything runs
        step = {"nb": nb, "cid": cid, "declared": declared, "params": params}
        if cid in PRODUCERS:
            key = reuse_key(nb.name, params)
            label = _slug(params.get("name") or Path(str(params.get("tokenizer", "x"))).name or cid)
            folder = Path(params["out_dir"]) if params.get("out_dir") else PRODUCERS[cid]() / f"{label}-{key}"
            step.update(key=key, folder=folder, kind="tokenizer" if cid == "01" else "shards")
            made[step["kind"]] = folder
        else:
            step["nproc"] = int(ch.get("nproc", nproc)) if cid in DISTRIBUTED_CHAPTERS else 1
        steps.append(step)
    return steps


def check_devices(steps: list[dict]) -> None:
    """`device: cuda` on a machine without CUDA (or mps without MPS) stops before anything runs."""
    asked = [(s["nb"].stem, str(s["params"]["device"])) for s in steps
             if isinstance(s["params"].get("device"), str) and s["params"]["device"].split(":")[0] in ("cuda", "mps")]
    if not asked:
        return
    import torch

    for stem, dev in asked:
        kind = dev.split(":")[0]
        if kind == "cuda" and not torch.cuda.is_available():
            raise ParameterError(f"{stem}: device={dev!r}, but torch {torch.__version__} sees no CUDA GPU on this "
                                 f"machine (torch.cuda.is_available() is False). Use -p device auto (or cpu), "
                                 f"or run on a machine with a GPU and a CUDA build of torch")
        if kind == "cuda" and ":" in dev and int(dev.split(":")[1] or 0) >= torch.cuda.device_count():
            raise ParameterError(f"{stem}: device={dev!r}, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ParameterError(f"{stem}: device={dev!r}, but Apple MPS is not available here; use -p device auto")


def check_model_options(steps: list[dict]) -> None:
    """04's `model_options` names and types, checked before any kernel starts."""
    for s in steps:
        opts = s["params"].get("model_options")
        if s["cid"] == "04" and opts:
            from .params import check_model_options as check

            arch = s["params"].get("arch", s["declared"].get("arch", "gpt"))
            try:
                check(arch, opts)
            except ParameterError as e:
                raise ParameterError(f"{s['nb'].stem}: {e}") from None


def _has_progress(run_dir: Path) -> bool:
    return (run_dir / "metrics.csv").exists() or (run_dir / "checkpoints").is_dir()


def _remove_if_empty(run_dir: Path) -> None:
    """A new run folder that received nothing but the plan (a chapter before training failed) goes."""
    import shutil

    bookkeeping = {"launch.json", ".lock", STOP_FILE, "logs"}
    names = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    logs = run_dir / "logs"
    if names <= bookkeeping and not (logs.is_dir() and any(not p.name.endswith(".spec.json") for p in logs.iterdir())):
        shutil.rmtree(run_dir, ignore_errors=True)


def _resume_hint(run_dir: Path) -> str:
    return f"python -m nbcore.launch --resume {run_dir}"


def run_plan(plan: dict, nproc: int | None = None, resume=None, torchrun_args=(), log_output=False,
             only=None, dry_run=False, nodes=None, quiet=False, tracker=None) -> Path:
    """Run every chapter of `plan` in order; returns the run folder.

    nodes: a `nbcore.nodes.Nodes` in a multi-node launch (node 0 owns the run folder and the
    products of 01/02; the other nodes take them from it). quiet: no live progress lines.
    tracker: {'kind', 'project', 'group'} to stream 04's metrics to W&B or trackio (nbcore.tracker).

    Every chapter's parameters are worked out and checked first; the run folder is then locked
    (one launch at a time) and `launch.json` records the plan before any chapter runs, so
    `--resume RUN` alone can continue it after any kind of stop.
    """
    nproc = int(nproc or plan.get("nproc") or 1)
    for ch in plan["chapters"]:  # every chapter's names and ${vars} are checked before anything runs
        notebooks.check_names(substitute(ch["parameters"], plan["vars"]), notebooks.declared_parameters(ch["notebook"]))
    steps = resolve_chapters(plan, nproc)
    check_devices(steps)
    check_model_options(steps)
    if dry_run:
        this = {"source": plan.get("source"), "vars": plan["vars"], "nproc": nproc, "resume": bool(resume),
                "chapters": [{"notebook": s["nb"].stem, "parameters": s["params"], "status": "dry run"} for s in steps]}
        print(json.dumps(this, indent=2, default=str))
        return None
    make = (lambda: runs.open_run(resume)) if resume else (lambda: runs.new_run_dir(_slug(plan["name"])))
    run_dir = (nodes.run_folder(make) if nodes else make()).resolve()
    owner = not nodes or nodes.is_owner  # other nodes may share node 0's folder: node 0 alone locks it
    try:
        lock = runs.lock_run(run_dir) if owner else None
    except BaseException:
        if not resume and owner:
            _remove_if_empty(run_dir)
        raise
    stop_file = run_dir / STOP_FILE
    stop_file.unlink(missing_ok=True)  # a stop asked for in an earlier launch is not this one's
    old_env = {k: os.environ.get(k) for k in ("NBCORE_STOP_FILE", "NBCORE_LAUNCH_WORKER")}
    os.environ["NBCORE_STOP_FILE"] = str(stop_file)
    os.environ["NBCORE_LAUNCH_WORKER"] = "1"  # kernels end when the process running them dies
    _live.__init__()
    _live.stop_file = stop_file
    try:
        _run_steps(steps, plan, run_dir, nproc, resume, torchrun_args, log_output, only, nodes, quiet, tracker)
    except BaseException:
        if not resume and owner:
            if lock is not None:
                lock.close()
            _remove_if_empty(run_dir)
        raise
    finally:
        _live.__init__()
        stop_file.unlink(missing_ok=True)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if lock is not None:
            lock.close()
    if nodes:
        nodes.finish()
    return run_dir


def _run_steps(steps, plan, run_dir: Path, nproc, resume, torchrun_args, log_output, only, nodes=None,
               quiet=False, tracker=None) -> None:
    record_path = run_dir / "launch.json"
    if nodes and not nodes.is_owner:  # node 0 keeps the record; this node notes its own part
        record_path = run_dir / "logs" / f"launch.node{nodes.node_rank}.json"
    record = fileio.read_json(record_path) if resume and record_path.exists() else {}
    record.setdefault("launches", [])
    this = {"source": plan.get("source"), "vars": plan["vars"], "nproc": nproc, "resume": bool(resume),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "chapters": []}
    if tracker:
        this["tracker"] = tracker  # `--resume RUN` alone streams to it again
    record["launches"].append(this)
    has_progress = bool(resume) and _has_progress(run_dir)
    if nodes and resume:  # node 0's folder decides for every node (the others may have no checkpoint)
        has_progress = nodes.same("has_progress", has_progress)
    for s in steps:
        if s["cid"] in ("04", "05") and "run_dir" in s["declared"]:
            s["params"]["run_dir"] = str(run_dir)
        if s["cid"] == "04" and has_progress and "resume" in s["declared"]:
            s["params"]["resume"] = str(run_dir)
            s["params"].pop("run_dir", None)
        entry = {"notebook": s["nb"].stem, "parameters": s["params"], "status": "pending"}
        if "nproc" in s:
            entry["processes"] = s["nproc"]
        if only and s["cid"] not in only and s["cid"] not in PRODUCERS:
            entry["status"] = "skipped (--only)"
        s["entry"] = entry
        this["chapters"].append(entry)
    fileio.write_json(record_path, record)  # the plan is on disk before any chapter runs
    for i, s in enumerate(steps):
        entry = s["entry"]
        s["index"], s["later"] = i, steps[i + 1:]
        if entry["status"] != "pending":
            continue
        t0 = time.time()
        _live.graceful = s["cid"] in STOPPABLE
        try:
            _run_step(s, run_dir, only, torchrun_args, log_output, nodes, quiet, tracker)
        except BaseException as e:
            interrupted = isinstance(e, KeyboardInterrupt) or _live.aborted
            entry["status"] = "interrupted (aborted)" if interrupted else f"failed: {type(e).__name__}"
            entry["seconds"] = round(time.time() - t0, 2)
            fileio.write_json(record_path, record)
            if interrupted:
                name = signal.Signals(_live.signum).name if _live.signum else "SIGINT"
                raise Interrupted(f"[launch] {name}: {s['nb'].stem} aborted; the run's last checkpoint (if any) "
                                  f"stays. Continue with:\n  {_resume_hint(run_dir)}",
                                  _live.signum or signal.SIGINT) from None
            if isinstance(e, LaunchError):
                raise
            if isinstance(e, Exception) and hasattr(e, "ename"):  # papermill: the cell failed
                raise LaunchError(describe_failure(s["nb"].name, e, s.get("out"))) from None
            raise
        finally:
            _live.graceful = False
        entry["seconds"] = round(time.time() - t0, 2)
        if _live.signum is not None:  # the chapter stopped on request (and saved what it had)
            name = signal.Signals(_live.signum).name
            entry["status"] = f"interrupted ({name})"
            fileio.write_json(record_path, record)
            raise Interrupted(_interrupted_message(run_dir, name), _live.signum)
        fileio.write_json(record_path, record)


def _interrupted_message(run_dir: Path, name: str) -> str:
    from . import checkpoint

    last = checkpoint.latest(run_dir)
    saved = f"checkpoint {last}" if last else "no checkpoint"
    return (f"[launch] interrupted by {name}: {saved}; summary.json marks the run interrupted.\n"
            f"Continue with:\n  {_resume_hint(run_dir)}")


def _run_step(s: dict, run_dir: Path, only, torchrun_args, log_output, nodes=None, quiet=False,
              tracker=None) -> None:
    """Run (or reuse) one chapter; its entry in launch.json gets the status."""
    nb, cid, params, entry = s["nb"], s["cid"], s["params"], s["entry"]
    if cid in PRODUCERS:
        key, folder, kind = s["key"], s["folder"], s["kind"]
        marker = folder / DONE_MARKER
        s["out"] = folder / nb.name
        if nodes and not nodes.is_owner:  # node 0 makes it; this node finds or receives it
            got, how = nodes.product(cid, DONE_MARKER, f"the {kind} of {nb.stem}")
            entry["status"] = f"{how} from node 0: {got}"
            print(f"[launch] {nb.stem}: {how} node 0's {kind} ({got})", flush=True)
            for later in s["later"]:  # later chapters read this node's copy, not node 0's path
                for name in ("data_dir", "tokenizer"):
                    if later["params"].get(name) == str(folder):
                        later["params"][name] = str(got)
            return
        if marker.exists() and fileio.read_json(marker).get("key") == key:
            entry["status"] = f"reused {folder}"
            print(f"[launch] {nb.stem}: reusing {folder} (same parameters, key {key})", flush=True)
        elif only and cid not in only:
            raise LaunchError(f"--only {','.join(sorted(only))}: {nb.stem} has no finished output with these "
                              f"parameters ({folder}); run without --only first")
        else:
            params["out_dir"] = str(folder)
            print(f"[launch] {nb.stem} -> {folder}", flush=True)
            _run_local(nb, folder / nb.name, params, log_output)
            fileio.write_json(marker, {"key": key, "notebook": nb.stem, "parameters": params,
                                       "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
            entry["status"] = "ran"
        if nodes:
            nodes.publish_product(cid, folder, key)
        _copy(folder / nb.name, run_dir / nb.name)
        return
    n = s["nproc"]
    out = run_dir / nb.name
    if out.exists():  # a resume (or a second eval) keeps the earlier record
        k = 1
        while (run_dir / f"{nb.stem}.resume{k}.ipynb").exists():
            k += 1
        out = run_dir / f"{nb.stem}.resume{k}.ipynb"
    if nodes:  # node 0 names the executed copy (the other nodes' folders may lack the earlier ones)
        out = run_dir / nodes.same(f"output/{s['index']}", out.name)
    s["out"] = out
    print(f"[launch] {nb.stem} on {n} process(es) -> {out}", flush=True)
    printer = (progress.start_for_chapter(run_dir, {**s["declared"], **params}, n * _num_nodes(torchrun_args), quiet)
               if cid == "04" else None)  # live progress lines from metrics.csv (--quiet: none)
    live = (tracking.start_for_chapter(run_dir, tracker, {**s["declared"], **params}, group=tracker.get("group"),
                                       poll_s=float(os.environ.get("NBCORE_TRACKER_POLL_S", 5.0)))
            if cid == "04" and tracker and (not nodes or nodes.is_owner) else None)  # W&B / trackio, node 0 only
    try:
        if n > 1 or torchrun_args:
            run_distributed(nb, out, params, n, run_dir / "logs", torchrun_args, log_output)
        else:
            _run_local(nb, out, params, log_output)
    finally:
        if printer is not None:
            printer.stop()
        if live is not None:
            live.finish()
    entry["status"] = "ran"
    entry["output"] = out.name
    entry["processes"] = n


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


def recorded_tracker(run) -> dict | None:
    """The --tracker of the run's latest launch that had one (from launch.json), or None."""
    try:
        path = runs.open_run(run) / "launch.json"
    except FileNotFoundError:
        return None
    if not path.exists():
        return None
    return next((la["tracker"] for la in reversed(fileio.read_json(path)["launches"]) if la.get("tracker")), None)


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
    ap.add_argument("--tracker", default=None, choices=("wandb", "trackio"),
                    help="also stream 04's metrics to Weights & Biases or trackio (optional extras)")
    ap.add_argument("--tracker-project", default=None, help="--tracker: the project (default nbcore)")
    ap.add_argument("--tracker-group", default=None, help="--tracker: group runs under this name (sweeps: the variant)")
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
        tracker = None
        if a.tracker and not a.dry_run:
            tracking.module(a.tracker)  # a missing package is said now, before anything runs
            tracker = {"kind": a.tracker, "project": a.tracker_project or "nbcore", "group": a.tracker_group}
        elif a.resume and not a.dry_run and (coord is None or coord.is_owner):
            tracker = recorded_tracker(a.resume)  # the run keeps streaming where its first launch said
        with _signals():
            run_dir = run_plan(plan, nproc=a.nproc, resume=a.resume, torchrun_args=trargs,
                               log_output=a.log_output, only=only, dry_run=a.dry_run, nodes=coord, quiet=a.quiet,
                               tracker=tracker)
    except Interrupted as e:
        print(str(e), file=sys.stderr, flush=True)
        return 128 + int(e.signum)
    except KeyboardInterrupt:
        print("[launch] interrupted", file=sys.stderr, flush=True)
        return 130
    except (LaunchError, ParameterError, FileNotFoundError, FileExistsError, ValueError, nodes_lib.NodeError,
            tracking.TrackerError) as e:
        if coord:
            coord.fail(str(e))
        print(f"launch failed: {e}", file=sys.stderr)
        return 1
    if run_dir is not None:
        print(f"[launch] done: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

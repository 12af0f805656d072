"""Sweeps: every variant x seed of one parameter set, from one file, resumable.

    python -m nbcore.launch papermill_params/sweeps/x0_mix_xs.yaml                 # one run after another
    python -m nbcore.launch papermill_params/sweeps/x0_mix_xs.yaml --parallel 4    # 4 runs at once (GPU slices)

A sweep file (a YAML file with `variants:`):

    sweep: x0mix                      # name: runs/sweep_<name>/ and run names <name>-<variant>_seed<N>
    parameter_set: ../xs_1x8gb.yaml   # relative to this file (or to the repo root)
    parameters: {max_seconds: 3600}   # optional: set in every run, like -p NAME VALUE
    variants:                         # a name and the parameters it changes (nested keys with dots)
      - name: baseline
      - name: no_x0
        parameters: {model_options.x0_mix: false}
    seeds: [0, 1, 2]                  # the training chapter's `seed` (a number N means 0..N-1)
    baseline: baseline                # optional: the group 06 compares against (default: the first variant)
    nproc: 1                          # optional: processes per run (default: the set's nproc; --nproc)
    parallel: 1                       # optional: runs at once (--parallel)
    compare: {metric: val_bpb}        # optional: parameters for 06_compare
    tracker: wandb                    # optional, off by default: each run also streams its metrics to wandb or trackio

A variant's parameters go to every chapter that declares the name (as `-p` does); `a.b` sets
key `b` inside the dict parameter `a` (e.g. model_options). The seed goes to the training chapter
only, so every run of a sweep shares one tokenizer and one set of shards: the launcher reuses
identical tokenizer/shard builds (`launch.reuse_key`); with several runs at once, the first run of
each distinct data set goes alone until its tokenizer and shards are there.

The sweep folder `runs/sweep_<name>/` holds `sweep.yaml` (the file as launched), `state.json`
(every run's status, folder, attempts; written atomically after each change), `plans/<run>.yaml`
(the exact parameter set each run was launched with: `python -m nbcore.launch plans/<run>.yaml`
repeats it), `logs/<run>.log`, and the comparisons `06` made (`compare/<exp>_vs_<base>/`).

Launching the same sweep again continues: a run that finished with the same parameters is skipped,
an interrupted one resumes from its last checkpoint (`launch --resume`), or starts again when it
left none; a failed one is tried again (its error stays in state.json). A failure never stops the
other runs; the launcher reports it and exits 1 at the end.
"""
import copy
import datetime
import difflib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from . import checkpoint, fileio, launch, notebooks, paths
from .params import ParameterError

SWEEP_KEYS = {"sweep", "parameter_set", "parameters", "variants", "seeds", "baseline", "nproc", "parallel",
              "compare", "description", "tracker"}
TRAIN_CHAPTER = "04"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")  # no '_': 06 strips a trailing _seedN from run names


class SweepError(ValueError):
    """The sweep file cannot be run; the message says what to change."""


def is_sweep_file(path) -> bool:
    """A YAML mapping with a `variants:` key."""
    try:
        raw = yaml.load(Path(path).read_text(), Loader=launch._Loader)
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "variants" in raw


# ---------------------------------------------------------------- reading the sweep file
def load_sweep(path) -> dict:
    """The sweep, checked: {'name', 'parameter_set', 'parameters', 'variants': [{'name', 'parameters'}],
    'seeds', 'baseline', 'nproc', 'parallel', 'compare', 'source', 'text'}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    text = path.read_text()
    raw = yaml.load(text, Loader=launch._Loader) or {}
    if not isinstance(raw, dict) or "variants" not in raw:
        raise SweepError(f"{path}: a sweep file is a mapping with 'variants:' (see papermill_params/sweeps/)")
    extra = set(raw) - SWEEP_KEYS
    if extra:
        hint = {k: difflib.get_close_matches(k, sorted(SWEEP_KEYS), n=1) for k in extra}
        said = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in sorted(hint.items()))
        raise SweepError(f"{path}: unknown key(s) {said}; a sweep has {', '.join(sorted(SWEEP_KEYS))}")
    name = str(raw.get("sweep") or path.stem.replace("_", "-"))
    if not _NAME.match(name):
        raise SweepError(f"{path}: sweep name {name!r}: use letters, digits, '.' and '-' (no '_' or spaces)")
    if not raw.get("parameter_set"):
        raise SweepError(f"{path}: name the parameter set the variants change: parameter_set: ../xs_1x8gb.yaml")
    pset = Path(str(raw["parameter_set"])).expanduser()
    if not pset.is_absolute():
        pset = next((p for p in (path.parent / pset, paths.REPO_ROOT / pset, paths.PARAMS_DIR / pset) if p.is_file()),
                    path.parent / pset)
    if not pset.is_file():
        raise SweepError(f"{path}: parameter_set {raw['parameter_set']!r} not found (looked beside the sweep file, "
                         f"in the repo and in papermill_params/)")
    variants = raw["variants"]
    if isinstance(variants, dict):  # {name: {param: value}} is accepted too
        variants = [{"name": k, "parameters": v} for k, v in variants.items()]
    if not isinstance(variants, list) or not variants:
        raise SweepError(f"{path}: variants must be a non-empty list of {{name: ..., parameters: {{...}}}}")
    out = []
    for i, v in enumerate(variants):
        if isinstance(v, str):
            v = {"name": v}
        if not isinstance(v, dict) or "name" not in v or set(v) - {"name", "parameters", "description"}:
            raise SweepError(f"{path}: variant {i} needs 'name' and may have 'parameters'; got {v!r}")
        vname = str(v["name"])
        if not _NAME.match(vname):
            raise SweepError(f"{path}: variant name {vname!r}: use letters, digits, '.' and '-' (no '_' or spaces)")
        if vname in {o["name"] for o in out}:
            raise SweepError(f"{path}: two variants are named {vname!r}")
        params = v.get("parameters") or {}
        if not isinstance(params, dict):
            raise SweepError(f"{path}: variant {vname!r}: parameters must be a mapping")
        out.append({"name": vname, "parameters": dict(params)})
    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise SweepError(f"{path}: seeds must be a list of distinct integers (or a count), got {raw.get('seeds')!r}")
    baseline = str(raw.get("baseline") or out[0]["name"])
    if baseline not in {v["name"] for v in out}:
        raise SweepError(f"{path}: baseline {baseline!r} is not a variant ({', '.join(v['name'] for v in out)})")
    compare = dict(raw.get("compare") or {})
    declared06 = notebooks.declared_parameters("06_compare")
    for k in compare:
        if k in ("runs", "group_by", "baseline", "experiment", "out_name"):
            raise SweepError(f"{path}: compare.{k} is set by the sweep (one group per variant)")
        if k not in declared06:
            hint = difflib.get_close_matches(k, sorted(declared06), n=1)
            raise SweepError(f"{path}: compare.{k}: 06_compare has no such parameter"
                             + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    from . import tracker as tracking

    try:
        tracker = tracking.parse(raw.get("tracker"))
        if tracker:
            tracking.module(tracker["kind"])  # a missing package is said now, before any run
    except tracking.TrackerError as e:
        raise SweepError(f"{path}: {e}") from None
    return {"name": name, "parameter_set": str(pset), "parameters": dict(raw.get("parameters") or {}),
            "variants": out, "seeds": seeds, "baseline": baseline,
            "nproc": int(raw["nproc"]) if raw.get("nproc") else None,
            "parallel": int(raw.get("parallel") or 1), "compare": compare, "source": str(path), "text": text,
            "description": raw.get("description"), "tracker": tracker}


def run_name(sweep: dict, variant: str, seed: int) -> str:
    return f"{sweep['name']}-{variant}_seed{seed}"


def _set_nested(plan: dict, dotted: str, value) -> None:
    """`model_options.x0_mix: false` -> chapters declaring model_options get {'x0_mix': False} merged in."""
    head, *rest = dotted.split(".")
    hit = False
    for ch in plan["chapters"]:
        declared = notebooks.declared_parameters(ch["notebook"])
        if head not in declared:
            continue
        hit = True
        base = ch["parameters"].get(head, declared[head])
        if base is None:
            base = {}
        if not isinstance(base, dict):
            raise ParameterError(f"{dotted}: {head!r} of {ch['notebook']} is {type(base).__name__}, not a dict")
        d = node = copy.deepcopy(base)
        for k in rest[:-1]:
            node = node.setdefault(k, {})
        node[rest[-1]] = value
        ch["parameters"][head] = d
    if not hit:
        valid = {n for ch in plan["chapters"] for n in notebooks.declared_parameters(ch["notebook"])}
        hint = difflib.get_close_matches(head, sorted(valid), n=1)
        raise ParameterError(f"{dotted}: no chapter of {Path(plan['source']).name} has a parameter {head!r}"
                             + (f". Did you mean {hint[0]!r}?" if hint else ""))


def apply_parameters(plan: dict, params: dict) -> dict:
    """`plan` with `params` set: plain names through launch.apply_overrides, dotted ones inside dicts."""
    flat = {k: v for k, v in params.items() if "." not in str(k)}
    plan = launch.apply_overrides(plan, flat)
    for k, v in params.items():
        if "." in str(k):
            _set_nested(plan, str(k), v)
    return plan


def run_plans(sweep: dict, overrides: dict | None = None, check: bool = True) -> list[dict]:
    """One entry per variant x seed: {'run', 'variant', 'seed', 'plan', 'key'} (plans checked, nothing run).

    check=False leaves ${vars} that are not given yet unchecked (the forecast needs no data paths)."""
    base = launch.load_plan(sweep["parameter_set"])
    if not any(launch.chapter_id(ch["notebook"]) == TRAIN_CHAPTER for ch in base["chapters"]):
        raise SweepError(f"{sweep['parameter_set']}: a sweep needs a training chapter (04_train) to seed")
    base = apply_parameters(base, {**sweep["parameters"], **(overrides or {})})
    out = []
    for v in sweep["variants"]:
        for seed in sweep["seeds"]:
            name = run_name(sweep, v["name"], seed)
            plan = apply_parameters(base, v["parameters"])
            for ch in plan["chapters"]:
                if launch.chapter_id(ch["notebook"]) == TRAIN_CHAPTER:
                    ch["parameters"]["seed"] = seed
            plan = launch.apply_overrides(plan, {"name": name})
            plan["nproc"] = int(sweep["nproc"] or plan.get("nproc") or 1)
            for ch in plan["chapters"] if check else []:  # names and ${vars} checked before anything runs
                notebooks.check_names(launch.substitute(ch["parameters"], plan["vars"]),
                                      notebooks.declared_parameters(ch["notebook"]))
            body = {"name": plan["name"], "nproc": plan["nproc"], "vars": plan["vars"], "chapters": plan["chapters"]}
            key = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:12]
            out.append({"run": name, "variant": v["name"], "seed": seed, "plan": plan, "body": body, "key": key,
                        "data": _data_signature(plan)})
    return out


def _data_signature(plan: dict) -> str:
    """Runs with the same producer chapters (tokenizer, shards) share their outputs."""
    prod = [ch for ch in plan["chapters"] if launch.chapter_id(ch["notebook"]) in launch.PRODUCERS]
    blob = json.dumps({"vars": plan["vars"], "producers": prod}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def sweep_dir(name: str) -> Path:
    return paths.runs_dir() / f"sweep_{name}"


# ---------------------------------------------------------------- devices
def device_slices(parallel: int, nproc: int, visible: str | None = None, count: int | None = None) -> list:
    """CUDA_VISIBLE_DEVICES for each of up to `parallel` runs at once, `nproc` GPUs each.

    `visible`: $CUDA_VISIBLE_DEVICES (None reads it); `count`: GPUs torch sees (None asks torch).
    Without GPUs every slot is None (CPU runs share the cores).
    """
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() != "":
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        if count is None:
            try:
                import torch
                count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            except ImportError:
                count = 0
        devices = [str(i) for i in range(count)]
    if not devices:
        return [None] * max(1, parallel)
    if nproc > len(devices):
        raise SweepError(f"each run wants {nproc} GPU(s) (--nproc) but only {len(devices)} are visible "
                         f"({','.join(devices)}); lower --nproc")
    slots = min(max(1, parallel), len(devices) // nproc)
    if slots < parallel:
        print(f"[sweep] {len(devices)} GPU(s), {nproc} per run: {slots} run(s) at once, not {parallel}", flush=True)
    return [",".join(devices[i * nproc:(i + 1) * nproc]) for i in range(slots)]


# ---------------------------------------------------------------- state
class SweepState:
    """state.json in the sweep folder, rewritten atomically on every change; one launcher at a time."""

    def __init__(self, folder: Path, node_rank: int = 0):
        self.folder = Path(folder)
        self.path = self.folder / ("state.json" if not node_rank else f"state.node{node_rank}.json")
        self.lock = self.folder / (".lock" if not node_rank else f".lock.node{node_rank}")
        self.data = fileio.read_json(self.path) if self.path.exists() else {"runs": {}, "comparisons": {}}

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                host, pid = _lock_owner(self.lock)
                if pid and host == socket.gethostname() and _alive(pid):
                    raise SweepError(f"another launcher (pid {pid}) is running this sweep ({self.folder}); "
                                     f"wait for it or stop it first") from None
                if host and host != socket.gethostname():  # e.g. a preempted machine: runs/ on a bucket
                    print(f"[sweep] taking over from {host} (pid {pid}), which left {self.lock}", flush=True)
                self.lock.unlink(missing_ok=True)  # left by a launcher that was killed
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{socket.gethostname()} {os.getpid()}")
            return

    def release(self) -> None:
        if _lock_owner(self.lock) == (socket.gethostname(), os.getpid()):
            self.lock.unlink(missing_ok=True)

    def run(self, name: str) -> dict:
        return self.data["runs"].setdefault(name, {"status": "pending", "attempts": []})

    def save(self) -> None:
        self.data["updated"] = _now()
        fileio.write_json(self.path, self.data)


def _lock_owner(lock: Path) -> tuple:
    try:
        host, pid = lock.read_text().split()
        return host, int(pid)
    except (OSError, ValueError):
        return None, 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


_STAMPED = re.compile(r"^(\d{8}_\d{6})_(.+)$")


def find_run_dir(name: str, since: str, taken=()) -> Path | None:
    """The run folder `<stamp>_<name>` the launcher made at or after `since` (YYYYmmdd_HHMMSS)."""
    root = paths.runs_dir()
    if not root.is_dir():
        return None
    taken = {str(Path(t)) for t in taken if t}
    hits = []
    for p in root.iterdir():
        m = _STAMPED.match(p.name)
        if m and m.group(2) == name and m.group(1) >= since and p.is_dir() and str(p) not in taken:
            hits.append(p)
    return sorted(hits)[0] if hits else None


# ---------------------------------------------------------------- running
class _Child:
    """One run's launcher process; its output goes to logs/<run>.log (and the terminal, prefixed)."""

    def __init__(self, entry, cmd, env, log_path, echo, since):
        self.entry, self.since, self.run_dir = entry, since, None
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "a", encoding="utf-8")
        self.log.write(f"\n===== {_now()}: {' '.join(map(str, cmd))}\n")
        self.log.flush()
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     errors="replace", bufsize=1)
        self.tail: list[str] = []
        self.thread = threading.Thread(target=self._pump, args=(echo,), daemon=True)
        self.thread.start()

    def _pump(self, echo):
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            self.tail = (self.tail + [line.rstrip("\n")])[-40:]
            if echo:
                print(f"[{self.entry['run']}] {line}", end="", flush=True)

    def finish(self) -> int:
        rc = self.proc.wait()
        self.thread.join(timeout=10)
        self.log.close()
        return rc


def _failure_text(tail: list[str]) -> str:
    """The launcher's own message ('launch failed: ...') if there is one, else the last lines."""
    for i, line in enumerate(tail):
        if line.startswith("launch failed:"):
            return "\n".join(tail[i:])[-2000:]
    return "\n".join(tail[-12:])[-2000:]


def run_sweep(path, parallel: int | None = None, nproc: int | None = None, overrides: dict | None = None,
              torchrun_args=(), compare: bool = True, echo: bool = True, node_rank: int = 0) -> dict:
    """Run (or continue) every variant x seed of the sweep file at `path`; returns the state."""
    sw = load_sweep(path)
    if nproc:
        sw["nproc"] = int(nproc)
    entries = run_plans(sw, overrides)
    folder = sweep_dir(sw["name"])
    state = SweepState(folder, node_rank)
    state.acquire()
    stop = {"signal": None}
    children: list[_Child] = []

    def on_signal(signum, frame):  # stop the runs (they keep their checkpoints), record, exit
        stop["signal"] = signum
        for c in children:
            if c.proc.poll() is None:
                c.proc.terminate()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        fileio.write_text(folder / "sweep.yaml", sw["text"])
        state.data.update({"sweep": sw["name"], "source": sw["source"], "parameter_set": sw["parameter_set"],
                           "variants": [v["name"] for v in sw["variants"]], "seeds": sw["seeds"],
                           "baseline": sw["baseline"], "runs_folder": str(paths.runs_dir())})
        todo = []
        for e in entries:
            st = state.run(e["run"])
            plan_file = folder / "plans" / f"{e['run']}.yaml"
            fileio.write_text(plan_file, f"# {e['run']}: variant {e['variant']}, seed {e['seed']} of sweep "
                                         f"{sw['name']} ({sw['source']})\n" + yaml.safe_dump(e["body"], sort_keys=False))
            e["plan_file"] = plan_file
            if st.get("key") not in (None, e["key"]):  # the sweep file changed this run's parameters
                if st.get("run_dir"):
                    st.setdefault("superseded", []).append({"key": st["key"], "run_dir": st["run_dir"],
                                                            "status": st["status"]})
                st.update(status="pending", run_dir=None)
                st.pop("error", None)
            st.update(variant=e["variant"], seed=e["seed"], key=e["key"], data=e["data"],
                      plan=str(plan_file.relative_to(folder)))
            done = st["status"] == "done" and st.get("run_dir") and (Path(st["run_dir"]) / "summary.json").exists()
            if done:
                print(f"[sweep] {e['run']}: finished before with the same parameters, skipped ({st['run_dir']})",
                      flush=True)
            else:
                todo.append(e)
        for name in set(state.data["runs"]) - {e["run"] for e in entries}:
            state.data["runs"][name]["status"] = "not in the sweep any more"
        state.save()
        want = int(parallel or sw["parallel"] or 1)
        if torchrun_args and want > 1:
            raise SweepError("a multi-node sweep (--nnodes) runs one run at a time on all nodes: drop --parallel")
        slots = device_slices(want, int(sw["nproc"] or entries[0]["plan"]["nproc"]))
        print(f"[sweep] {sw['name']}: {len(entries)} run(s) ({len(sw['variants'])} variant(s) x {len(sw['seeds'])} "
              f"seed(s)), {len(todo)} to run, {len(slots)} at a time; state: {state.path}", flush=True)
        _schedule(todo, slots, state, folder, sw, torchrun_args, echo and len(slots) == 1, children, stop)
        if stop["signal"] is not None:
            raise KeyboardInterrupt
        if compare and not node_rank:
            compare_sweep(sw, state, folder)
        _report(sw, state)
        return state.data
    finally:
        state.save()
        state.release()
        for s, h in old.items():
            signal.signal(s, h)


def _schedule(todo, slots, state, folder, sw, torchrun_args, echo, children, stop):
    free = list(range(len(slots)))
    running: dict[int, _Child] = {}
    # data signatures whose tokenizer and shards exist (a finished run built or reused them)
    ready_data = {r.get("data") for r in state.data["runs"].values() if r.get("status") == "done"}
    n_cpu = os.cpu_count() or 1
    while (todo or running) and stop["signal"] is None:
        # start what fits
        started = True
        while free and todo and started and stop["signal"] is None:
            started = False
            busy = {c.entry["data"] for c in running.values()}
            for i, e in enumerate(todo):
                if e["data"] in ready_data or e["data"] not in busy:
                    slot = free.pop(0)
                    running[slot] = _start(e, slots[slot], len(slots), n_cpu, state, folder, torchrun_args, echo,
                                           tracker=sw.get("tracker"), sweep_name=sw["name"])
                    children.append(running[slot])
                    todo.pop(i)
                    started = True
                    break
        time.sleep(0.5)
        for slot, c in list(running.items()):
            st = state.run(c.entry["run"])
            if c.run_dir is None:
                taken = [a.get("run_dir") for r in state.data["runs"].values() for a in r.get("attempts", [])
                         if a is not st["attempts"][-1]]
                c.run_dir = Path(st["run_dir"]) if st["attempts"][-1].get("resumed") else \
                    find_run_dir(c.entry["run"], c.since, taken)
                if c.run_dir is not None:
                    st["run_dir"] = st["attempts"][-1]["run_dir"] = str(c.run_dir)
                    state.save()
            if c.run_dir is not None and c.entry["data"] not in ready_data and _has_data(c.run_dir, c.entry["plan"]):
                ready_data.add(c.entry["data"])
            if c.proc.poll() is None:
                continue
            rc = c.finish()
            ready_data.add(c.entry["data"])  # built, or failed trying: either way the next one may go
            if c.run_dir is None:
                c.run_dir = find_run_dir(c.entry["run"], c.since)
                if c.run_dir is not None:
                    st["run_dir"] = st["attempts"][-1]["run_dir"] = str(c.run_dir)
            att = st["attempts"][-1]
            att.update(ended=_now(), returncode=rc)
            if stop["signal"] is not None:
                st["status"] = "interrupted"
                print(f"[sweep] {c.entry['run']}: stopped (resumes on the next launch)", flush=True)
            elif rc == 0:
                st["status"] = "done"
                st.pop("error", None)
                print(f"[sweep] {c.entry['run']}: done ({st.get('run_dir')})", flush=True)
            else:
                st["status"] = "failed"
                st["error"] = _failure_text(c.tail)
                print(f"[sweep] {c.entry['run']}: FAILED (exit {rc}); the other runs go on. Log: {c.log_path}\n"
                      f"{_indent(st['error'])}", flush=True)
            state.save()
            del running[slot]
            free.append(slot)
            free.sort()
    for c in running.values():  # stopped by a signal: wait for the children to go
        try:
            c.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            c.proc.kill()
        c.finish()
        st = state.run(c.entry["run"])
        st["status"] = "interrupted"
        st["attempts"][-1].update(ended=_now(), returncode=c.proc.returncode)
    state.save()


def _has_data(run_dir: Path, plan: dict) -> bool:
    """The run got past its producer chapters: the launcher copied their notebooks into the run folder."""
    want = [notebooks.notebook_path(ch["notebook"]).name for ch in plan["chapters"]
            if launch.chapter_id(ch["notebook"]) in launch.PRODUCERS]
    return all((run_dir / w).exists() for w in want)


def _start(e, devices, n_slots, n_cpu, state, folder, torchrun_args, echo, tracker=None, sweep_name=None) -> _Child:
    st = state.run(e["run"])
    prev = Path(st["run_dir"]) if st.get("run_dir") else None
    resume = prev is not None and prev.is_dir() and checkpoint.latest(prev) is not None
    cmd = [sys.executable, "-m", "nbcore.launch", str(e["plan_file"]), "--nproc", str(e["plan"]["nproc"])]
    if resume:
        cmd += ["--resume", str(prev)]
    if tracker:  # the run's launcher streams its metrics to W&B / trackio, one group per variant
        cmd += ["--tracker", tracker["kind"], "--tracker-project", tracker.get("project") or f"nbcore-{sweep_name}",
                "--tracker-group", f"{sweep_name}-{e['variant']}"]
    cmd += list(torchrun_args)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(paths.REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["NBCORE_LAUNCH_WORKER"] = "1"  # kernels end when their launcher dies (a killed sweep leaves no orphans)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    elif n_slots > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, n_cpu // (n_slots * e["plan"]["nproc"])))
    since = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    if prev is not None and not resume:
        st.setdefault("abandoned", []).append(str(prev))  # interrupted before its first checkpoint
    st.update(status="running", run_dir=str(prev) if resume else None)
    st["attempts"].append({"started": _now(), "resumed": resume, "devices": devices,
                           "run_dir": str(prev) if resume else None, "command": cmd})
    state.save()
    how = f"resuming {prev.name}" if resume else "starting"
    print(f"[sweep] {e['run']}: {how}" + (f" on CUDA_VISIBLE_DEVICES={devices}" if devices else "")
          + f" (log: {folder / 'logs' / (e['run'] + '.log')})", flush=True)
    return _Child(e, cmd, env, folder / "logs" / f"{e['run']}.log", echo, since)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


# ---------------------------------------------------------------- comparison and report
def compare_sweep(sw: dict, state: SweepState, folder: Path) -> dict:
    """06_compare for each variant against the baseline (one group per variant, seeds within)."""
    import shutil

    runs_by_variant: dict = {}
    for name, st in state.data["runs"].items():
        if st.get("status") == "done" and st.get("run_dir") and st.get("variant") in {v["name"] for v in sw["variants"]}:
            runs_by_variant.setdefault(st["variant"], []).append(st["run_dir"])
    base = sw["baseline"]
    results = state.data.setdefault("comparisons", {})
    for v in sw["variants"]:
        if v["name"] == base:
            continue
        label = f"{v['name']}_vs_{base}"
        have = {k: runs_by_variant.get(k, []) for k in (base, v["name"])}
        if not all(have.values()):
            missing = [k for k, r in have.items() if not r]
            results[label] = {"status": f"skipped: no finished run of {', '.join(missing)}"}
            print(f"[sweep] comparison {label}: skipped, no finished run of {', '.join(missing)}", flush=True)
            continue
        out_name = f"{sw['name']}-{label}"
        params = {**sw["compare"], "runs": sorted(have[base]) + sorted(have[v["name"]]), "group_by": "name",
                  "baseline": f"{sw['name']}-{base}", "experiment": f"{sw['name']}-{v['name']}", "out_name": out_name}
        nb_out = folder / "compare" / f"{label}.ipynb"
        print(f"[sweep] 06_compare: {v['name']} against {base} ({len(have[v['name']])} + {len(have[base])} runs)",
              flush=True)
        try:
            notebooks.execute("06_compare", nb_out, params)
        except Exception as e:  # a comparison that fails does not undo the runs
            ename, evalue = getattr(e, "ename", type(e).__name__), getattr(e, "evalue", str(e))
            results[label] = {"status": f"failed: {ename}: {evalue}", "notebook": str(nb_out)}
            print(f"[sweep] comparison {label} FAILED: {ename}: {evalue} (executed copy: {nb_out})", flush=True)
            continue
        src = paths.runs_dir() / f"compare_{out_name}"
        dst = folder / "compare" / label
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        results[label] = {"status": "done", "folder": str(dst), "source": str(src), "notebook": str(nb_out),
                          "runs": params["runs"], "finished": _now()}
        state.save()
    return results


def _report(sw: dict, state: SweepState) -> None:
    runs = state.data["runs"]
    counts: dict = {}
    for e in runs.values():
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    print(f"[sweep] {sw['name']}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), flush=True)
    for name, e in sorted(runs.items()):
        if e["status"] == "failed":
            print(f"[sweep]   failed: {name}: {e.get('error', '').splitlines()[0] if e.get('error') else ''}",
                  flush=True)
    for label, c in state.data.get("comparisons", {}).items():
        where = c.get("folder") or c.get("status")
        print(f"[sweep] comparison {label}: {where}", flush=True)
    print(f"[sweep] state: {state.path}", flush=True)


def failed_runs(state: dict) -> list[str]:
    return sorted(n for n, e in state["runs"].items() if e.get("status") == "failed")


# ---------------------------------------------------------------- command line (from nbcore.launch)
def torchrun_args(a) -> list[str]:
    """launch's multi-node options passed on to every run of the sweep."""
    out = []
    for opt in ("nnodes", "node_rank", "rdzv_endpoint", "rdzv_id"):
        if getattr(a, opt, None) is not None:
            out += [f"--{opt.replace('_', '-')}", str(getattr(a, opt))]
    return out


def cli(a) -> int:
    """`python -m nbcore.launch` with --plan, --emit, or a sweep file."""
    overrides = {name: launch.parse_value(value) for name, value in a.parameter}
    try:
        if a.plan:
            from . import forecast
            return forecast.cli(a, overrides)
        if a.emit:
            from . import skypilot
            return skypilot.cli(a, overrides)
        if a.params is None:
            raise SweepError("give a sweep file")
        for opt in ("resume", "only"):
            if getattr(a, opt):
                raise SweepError(f"--{opt} does not apply to a sweep: launch the sweep again and it continues "
                                 f"(finished runs are skipped, interrupted ones resume)")
        if a.dry_run:
            sw = load_sweep(a.params)
            for e in run_plans(sw, overrides):
                changed = next(v["parameters"] for v in sw["variants"] if v["name"] == e["variant"])
                print(f"{e['run']:40s} seed {e['seed']:<4d} {json.dumps(changed)}  key {e['key']}")
            return 0
        state = run_sweep(a.params, parallel=a.parallel, nproc=a.nproc, overrides=overrides,
                          torchrun_args=torchrun_args(a), echo=True,
                          node_rank=int(a.node_rank or 0))
    except KeyboardInterrupt:
        print("[sweep] stopped: launch the same command again to continue", file=sys.stderr, flush=True)
        return 130
    except (SweepError, ParameterError, launch.LaunchError, FileNotFoundError, ValueError, MemoryError) as e:
        print(f"launch failed: {e}", file=sys.stderr)
        return 1
    return 1 if failed_runs(state) else 0


__all__ = ["SweepError", "is_sweep_file", "load_sweep", "run_name", "apply_parameters", "run_plans", "sweep_dir",
           "device_slices", "SweepState", "find_run_dir", "run_sweep", "compare_sweep", "failed_runs"]

"""Optional: runs also logged to Weights & Biases or trackio (off by default, never required).

The run folder stays the record; a tracker is a second view for researchers who already watch runs
there. While 04 trains, the launcher streams each new metrics.csv row to the tracker (a thread
that reads the file every few seconds, as the progress lines do):

    python -m nbcore.launch papermill_params/xs_1x8gb.yaml --tracker wandb --tracker-project my-question

A sweep does the same for every run with `tracker: wandb` (or `trackio`, or
`{kind: wandb, project: NAME}`) in its file, grouped by variant. A run made without one can be sent
afterwards:

    python -m nbcore.tracker wandb runs/20260101_120000_base --project my-question

Each run becomes one tracker run named (and, for W&B, identified) by its folder, with 04's
parameters as its config. `tracker.json` in the run folder says how far the rows were sent, so a
resumed run continues the same tracker run without sending earlier steps again. A tracker that fails
(network, account) prints one line and stops logging; the run goes on.
"""
import argparse
import importlib
import sys
from pathlib import Path

from . import fileio, progress, runs

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


class LiveRun:
    """One run folder's metrics.csv sent to the tracker as it grows.

    `poll()` sends the rows not sent yet and returns how many (a row is sent again only when the
    last step sent changed: W&B keeps the later values of a step); `finish()` sends the rest and the final numbers of summary.json,
    then ends the tracker run. `start()` polls every `poll_s` seconds in a thread until `finish()`.
    """

    STATE = "tracker.json"

    def __init__(self, run_dir, kind: str, project: str, group: str | None = None, config: dict | None = None,
                 poll_s: float = 5.0, out=None):
        self.run_dir = Path(run_dir)
        self.kind, self.project, self.group = kind, project, group
        self.config = config
        self.poll_s = float(poll_s)
        self.out = out or sys.stdout
        self.mod = module(kind)
        self.run = None
        self.failed = None
        state = self._read_state()
        self.last_step = state.get("last_step", -1)
        self.sent_at_last = list(state.get("sent_at_last_step", []))  # digests of the rows sent at last_step
        self.sent = 0
        self._poller = progress.PollThread(self.poll, self.poll_s, "nbcore-tracker")  # poll() never raises

    def _read_state(self) -> dict:
        path = self.run_dir / self.STATE
        try:
            st = fileio.read_json(path) if path.exists() else {}
        except (OSError, ValueError):
            return {}
        return st if (st.get("kind"), st.get("project")) == (self.kind, self.project) else {}

    def _init(self) -> None:
        summary = fileio.read_json(self.run_dir / "summary.json") if (self.run_dir / "summary.json").exists() else {}
        config = dict(self.config if self.config is not None else (summary.get("parameters") or {}))
        config.update({k: summary[k] for k in ("num_params", "world_size") if summary.get(k) is not None})
        config["run_dir"] = str(self.run_dir)
        kwargs = {"project": self.project, "name": self.run_dir.name, "config": config, "resume": "allow"}
        if self.kind == "wandb":
            kwargs["id"] = self.run_dir.name  # a resumed run continues the same W&B run
        if self.group:
            kwargs["group"] = self.group
        self.run = self.mod.init(**kwargs)

    @staticmethod
    def _digest(row: dict) -> str:
        import hashlib
        import json

        return hashlib.sha1(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _new_rows(self, rows: list) -> list:
        """Rows after the last step sent, and rows of that step not sent as they are now (04 replaces
        the last interval validation by the whole split's; a resume may write that step again).
        Earlier steps never change, so they are never sent twice."""
        return [r for r in rows if r["step"] > self.last_step
                or (r["step"] == self.last_step and self._digest(r) not in self.sent_at_last)]

    def poll(self) -> int:
        if self.failed:
            return 0
        try:
            rows = self._new_rows(runs.read_metrics(self.run_dir))
            if not rows:
                return 0
            if self.run is None:
                self._init()
            for r in rows:
                values = {k: v for k, v in r.items() if v is not None and k != "step"}
                if values:
                    self.mod.log(values, step=r["step"])
                if r["step"] != self.last_step:
                    self.last_step, self.sent_at_last = r["step"], []
                self.sent_at_last.append(self._digest(r))
                self.sent += 1
            fileio.write_json(self.run_dir / self.STATE, {"kind": self.kind, "project": self.project,
                                                         "last_step": self.last_step,
                                                         "sent_at_last_step": self.sent_at_last})
            return len(rows)
        except Exception as e:  # the tracker's network or account: the run itself goes on
            self._fail(e)
            return 0

    def _fail(self, e) -> None:
        self.failed = f"{type(e).__name__}: {e}"
        print(f"[tracker] {self.kind} logging stopped ({self.failed}); the run folder is the record",
              file=self.out, flush=True)

    def start(self) -> "LiveRun":
        self._poller.start()
        return self

    def finish(self) -> int:
        """Stop the thread, send the last rows and the final numbers, end the tracker run; -> rows sent."""
        self._poller.stop(timeout=30)
        self.poll()
        if self.run is not None and not self.failed:
            try:
                summary = (fileio.read_json(self.run_dir / "summary.json")
                           if (self.run_dir / "summary.json").exists() else {})
                final = summary.get("final") or {}
                if final and getattr(self.run, "summary", None) is not None:
                    self.run.summary.update({f"final/{k}": v for k, v in final.items() if isinstance(v, (int, float))})
                self.mod.finish()
            except Exception as e:
                self._fail(e)
        return self.sent


def start_for_chapter(run_dir, spec: dict | None, params: dict, group: str | None = None, **kwargs):
    """The launcher's hook for 04_train: a started LiveRun, or None when no tracker is set.
    spec: {'kind', 'project'} (see `parse`). A tracker that cannot start says so; the run goes on."""
    if not spec:
        return None
    try:
        return LiveRun(run_dir, spec["kind"], spec.get("project") or "nbcore", group=group, config=params,
                       **kwargs).start()
    except TrackerError as e:
        print(f"[tracker] not logging: {e}", flush=True)
        return None


def log_run(run_dir, kind: str, project: str, group: str | None = None) -> int:
    """Send one run (its parameters and the metrics.csv rows not sent yet) to the tracker; -> rows sent."""
    live = LiveRun(run_dir, kind, project, group=group)
    n = live.finish()
    if live.failed:
        raise RuntimeError(f"{kind}: {live.failed}")
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
    except (TrackerError, FileNotFoundError, RuntimeError) as e:
        print(f"tracker failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

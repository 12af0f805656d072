"""Progress a person can read: the launcher's live lines, 04's progress bar, rounded summaries.

- `ProgressPrinter(run_dir, ...)`: while 04_train runs headless, the launcher tails the run's
  `metrics.csv` (04 rewrites it atomically at every logged step) and prints one line per
  validation, and otherwise at most one every `every_s` seconds:

      [progress] step 150/600  25.0%  train 3.412  val 3.501  bpb 1.812  52.1k tok/s  MFU 31.2%  elapsed 2m05s  ETA 6m15s  $0.42

  The last line's validation scores the whole val split, and says on how many tokens when that
  differs from the interval validations': `val 3.287  bpb 1.702  (on 10.5M val tokens)`.

  Cost is wall-clock time since the chapter started x `gpu_hourly_price` x GPUs: what a rented
  machine bills, start-up and validation included.
- `training_bar(...)`: 04's tqdm bar. With `num_steps` it counts steps; under a time budget
  alone (`num_steps=0`, `max_seconds`) its total is the budget in seconds, so it shows a
  percentage and an ETA instead of `0step [00:00, ?step/s]`.
- `fmt_duration`, `fmt_count`, `fmt_bytes`, `summary_lines`: numbers rounded, with units.
"""
import math
import sys
import threading
import time
from pathlib import Path

from . import runs

PREFIX = "[progress]"


# ---------------------------------------------------------------- units
def fmt_duration(seconds) -> str:
    """12.3 -> '12.3s', 125 -> '2m05s', 7384 -> '2h03m'."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def fmt_count(n, unit: str = "") -> str:
    """1026301952 -> '1.03B', 52_100 -> '52.1k' (3 significant digits), with an optional unit."""
    if n is None or not math.isfinite(n):
        return "?"
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            v = n / div
            text = f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
            return f"{text}{suf}" + (f" {unit}" if unit else "")
    return f"{n:.0f}" + (f" {unit}" if unit else "")


def fmt_bytes(n) -> str:
    """1026301952 -> '0.96 GiB', 52428800 -> '50.0 MiB'."""
    if n is None or not math.isfinite(n):
        return "?"
    if n >= 2 ** 30 * 0.5:
        return f"{n / 2 ** 30:.2f} GiB"
    if n >= 2 ** 20:
        return f"{n / 2 ** 20:.1f} MiB"
    return f"{n / 2 ** 10:.1f} KiB"


def summary_lines(final: dict) -> list[str]:
    """04's final numbers, rounded and with units (the exact values stay in summary.json)."""
    f = final.get
    out = []
    if f("val_loss") is not None:
        split = (f" on the whole val split ({fmt_count(f('val_tokens'))} tokens)" if f("val_tokens") else "")
        out.append(f"val loss {f('val_loss'):.4f} nats/token, {f('val_bpb'):.4f} bits/byte{split}")
    out.append(f"{f('steps')} steps, {fmt_count(f('tokens_seen'))} tokens in {fmt_duration(f('wall_seconds'))} of "
               f"training (+ {fmt_duration(f('compile_seconds') or 0.0)} compile/warm-up)"
               + (f", stopped by {f('stopped_by')}" if f("stopped_by") else ""))
    speed = [fmt_count(f("tokens_per_s"), "tokens/s")] if f("tokens_per_s") else []
    if f("mfu") is not None:
        speed.append(f"MFU {100 * f('mfu'):.1f}%")
    if f("peak_mem_bytes"):
        speed.append(f"peak memory {fmt_bytes(f('peak_mem_bytes'))}")
    if speed:
        out.append(", ".join(speed))
    if f("checkpoint"):
        out.append(f"checkpoint {f('checkpoint')}")
    return out


# ---------------------------------------------------------------- 04's progress bar
def training_bar(num_steps: int, max_seconds: float, step: int = 0, seconds=None, **tqdm_kwargs):
    """A tqdm bar over steps (num_steps > 0) or over the time budget in seconds (max_seconds alone).

    `seconds` is a callable returning the training seconds so far; the time bar reads it at every
    `update()`, so the loop calls `bar.update(1)` once per step either way.
    """
    from tqdm import tqdm

    if num_steps or not max_seconds:
        return tqdm(total=num_steps or None, initial=step, unit="step", **tqdm_kwargs)
    if seconds is None:
        raise ValueError("training_bar under a time budget needs seconds=, a callable giving the training seconds")

    class _TimeBar(tqdm):
        def update(self, n=1):  # n counts steps; the bar shows seconds of the budget
            self._steps = getattr(self, "_steps", step) + n
            self.set_postfix_str(f"step {self._steps}", refresh=False)
            return super().update(min(float(seconds()), self.total) - self.n)

        def close(self):  # the training seconds grow at sync points: show the last value before closing
            if not self.disable and getattr(self, "_steps", None) is not None:
                super().update(min(float(seconds()), self.total) - self.n)
            return super().close()

    bar = _TimeBar(total=float(max_seconds), initial=min(float(seconds()), float(max_seconds)), unit="s",
                   bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]", **tqdm_kwargs)
    bar._steps = step
    return bar


# ---------------------------------------------------------------- the launcher's live lines
class PollThread:
    """Call `fn()` every `every_s` seconds in a daemon thread until `stop()`. Exceptions of the types
    in `retry` (a file half-written when read) are skipped: the next call tries again."""

    def __init__(self, fn, every_s: float, name: str, retry=()):
        self.fn, self.every_s, self.retry = fn, float(every_s), tuple(retry)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def _loop(self):
        while not self._stop.wait(self.every_s):
            try:
                self.fn()
            except self.retry:
                pass

    def start(self) -> "PollThread":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)


class ProgressPrinter:
    """Tails `run_dir/metrics.csv` in a thread and prints progress lines to `out` (stdout).

    total_steps / max_seconds: 04's num_steps and max_seconds (either may be 0); num_gpus:
    processes on this node x nodes, for the cost; every_s: the most seconds between lines
    when no validation happens.
    """

    def __init__(self, run_dir, total_steps: int = 0, max_seconds: float = 0.0, gpu_hourly_price: float = 0.0,
                 num_gpus: int = 1, every_s: float = 30.0, poll_s: float = 2.0, out=None, clock=time.monotonic):
        self.run_dir = Path(run_dir)
        self.total_steps = int(total_steps or 0)
        self.max_seconds = float(max_seconds or 0.0)
        self.price = float(gpu_hourly_price or 0.0)
        self.num_gpus = max(1, int(num_gpus))
        self.every_s = float(every_s)
        self.poll_s = float(poll_s)
        self.out = out or sys.stdout
        self.clock = clock
        self.t0 = clock()
        self._last_print = None
        self._last_row = None
        old = runs.read_metrics(self.run_dir)  # a resumed run's earlier rows are not news
        self._seen_val = {r["step"] for r in old if r.get("val_loss") is not None}
        self._seen_rows = len(old)
        self._pending = False
        self._first = None  # (clock, training seconds) when the first row was seen
        self._poller = PollThread(self.poll, self.poll_s, "nbcore-progress", retry=(OSError, ValueError, KeyError))
        self.lines: list[str] = []

    # -- one look at the file
    def _fraction(self, step, train_s):
        fr = ([step / self.total_steps] if self.total_steps else []) + \
             ([train_s / self.max_seconds] if self.max_seconds and train_s is not None else [])
        return min(max(fr), 1.0) if fr else None

    def format_line(self, rows: list[dict], val_row: dict | None, now: float) -> str:
        last = rows[-1]
        step = last["step"]
        train_s = next((r["elapsed_s"] for r in reversed(rows) if r.get("elapsed_s") is not None), None)
        frac = self._fraction(step, train_s)
        parts = [f"step {step}/{self.total_steps}" if self.total_steps else f"step {step}"]
        if frac is not None:
            parts.append(f"{100 * frac:5.1f}%")
        tl = next((r["train_loss"] for r in reversed(rows) if r.get("train_loss") is not None), None)
        if tl is not None:
            parts.append(f"train {tl:.3f}")
        v = val_row or next((r for r in reversed(rows) if r.get("val_loss") is not None), None)
        if v is not None:
            parts.append(f"val {v['val_loss']:.3f}")
            if v.get("val_bpb") is not None:
                parts.append(f"bpb {v['val_bpb']:.3f}")
            # 04's last validation scores the whole val split, the interval ones `val_tokens`: a number on
            # other tokens than the earlier ones says how many, so the two are not read as one curve
            first = next((r.get("val_tokens") for r in rows if r.get("val_loss") is not None), None)
            if v.get("val_tokens") and v["val_tokens"] != first:
                parts.append(f"(on {fmt_count(v['val_tokens'])} val tokens)")
        tps = next((r["tokens_per_s"] for r in reversed(rows) if r.get("tokens_per_s")), None)
        if tps is None and train_s and last.get("tokens"):
            tps = last["tokens"] / train_s
        if tps:
            parts.append(f"{fmt_count(tps)} tok/s")
        mfu = next((r["mfu"] for r in reversed(rows) if r.get("mfu") is not None), None)
        if mfu is not None:
            parts.append(f"MFU {100 * mfu:.1f}%")
        wall = now - self.t0
        parts.append(f"elapsed {fmt_duration(wall)}")
        if self._first is None:
            self._first = (now, train_s or 0.0)
        if frac is not None and 0 < frac < 1 and train_s:
            # remaining training seconds, stretched by what validation and logging add to wall time
            # since the first row (the kernel's start-up and compilation are behind us by then)
            rest = train_s * (1 - frac) / frac
            d_wall, d_train = now - self._first[0], train_s - self._first[1]
            overhead = min(max(d_wall / d_train, 1.0), 3.0) if d_train > 0 else 1.0
            parts.append(f"ETA {fmt_duration(rest * overhead)}")
        elif frac is not None and frac >= 1:
            parts.append("ETA 0s")
        parts.append(f"${wall / 3600 * self.price * self.num_gpus:.2f}")
        return f"{PREFIX} " + "  ".join(parts)

    def poll(self, force: bool = False) -> list[str]:
        """Read metrics.csv once; print (and return) the lines due now."""
        rows = runs.read_metrics(self.run_dir)
        if not rows:
            return []
        now = self.clock()
        self._pending |= len(rows) != self._seen_rows  # rows came (or a resume cut some) since the last line
        self._seen_rows = len(rows)
        lines = []
        for i, r in enumerate(rows):
            if r.get("val_loss") is not None and r["step"] not in self._seen_val:
                self._seen_val.add(r["step"])
                lines.append(self.format_line(rows[:i + 1], r, now))
        due = self._last_print is None or now - self._last_print >= self.every_s
        if not lines and self._pending and (due or force):
            lines.append(self.format_line(rows, None, now))
        for line in lines:
            print(line, file=self.out, flush=True)
        if lines:
            self._last_print, self._pending = now, False
        self.lines += lines
        return lines

    # -- the thread
    def start(self) -> "ProgressPrinter":
        self._poller.start()
        return self

    def stop(self) -> None:
        """Stop the thread, then print what the last look finds (the final validation)."""
        self._poller.stop(timeout=10)
        try:
            self.poll(force=True)
        except (OSError, ValueError, KeyError):
            pass


def start_for_chapter(run_dir, params: dict, num_gpus: int, quiet: bool = False, **kwargs) -> ProgressPrinter | None:
    """The launcher's hook: a started printer for 04_train's run folder, or None when quiet."""
    if quiet or run_dir is None:
        return None
    return ProgressPrinter(run_dir, total_steps=params.get("num_steps", 0) or 0,
                           max_seconds=params.get("max_seconds", 0.0) or 0.0,
                           gpu_hourly_price=params.get("gpu_hourly_price", 0.0) or 0.0,
                           num_gpus=num_gpus, **kwargs).start()


__all__ = ["PollThread", "ProgressPrinter", "start_for_chapter", "training_bar", "fmt_duration", "fmt_count", "fmt_bytes",
           "summary_lines", "PREFIX"]

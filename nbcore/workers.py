"""Helper processes for the CPU-bound text work of 01 (pre-tokenizing) and 02 (encoding shards).

Two rules, both learned the hard way:

- Never fork a Jupyter kernel. A kernel has threads (its output and heartbeat threads), and a
  forked child inherits their locks in whatever state they were; a child that then prints or
  flushes can wait forever on a lock no thread will release. On Linux the helpers come from a
  fork server (a fresh, single-threaded Python; Python 3.14's default for this reason), elsewhere
  they are spawned. Like spawned ones, they import the caller's main module first: a script that
  calls `train_bpe` or `make_shards` needs the usual `if __name__ == "__main__":` guard.
- Never wait forever on a helper. `concurrent.futures.ProcessPoolExecutor` fails every pending
  result with BrokenProcessPool when a helper dies (out of memory, killed), where
  `multiprocessing.Pool` would wait for the lost result for ever.
"""
import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor


def default_workers(cap: int | None = None) -> int:
    """The cores this process may use (at most `cap`)."""
    if hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:
        n = os.cpu_count() or 1
    return max(1, min(n, cap) if cap else n)


def process_pool(workers: int, initializer=None, initargs=()) -> ProcessPoolExecutor:
    """`workers` helper processes, each running `initializer(*initargs)` once; use as a context
    manager, `pool.submit(fn, *args)` returns a Future. `fn`, `initializer` and the arguments
    must be picklable (module-level functions, plain data)."""
    method = "forkserver" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=int(workers), mp_context=mp.get_context(method),
                               initializer=initializer, initargs=tuple(initargs))


__all__ = ["default_workers", "process_pool"]

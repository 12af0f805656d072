"""The helper processes of 01 and 02 (nbcore.workers): never forked from a threaded caller (a kernel),
and a helper that dies fails the work instead of leaving it waiting for ever."""
import os
import sys
import threading
from concurrent.futures.process import BrokenProcessPool

import pytest

from nbcore import workers

_LOCK = threading.Lock()


def _lock_is_free() -> bool:
    """In a helper: can it take this module's lock? (A forked helper inherits it held.)"""
    got = _LOCK.acquire(timeout=3)
    if got:
        _LOCK.release()
    return got


def _square(x):
    return x * x


def test_helpers_work_and_run_their_initializer():
    with workers.process_pool(2) as pool:
        assert [f.result(timeout=60) for f in [pool.submit(_square, i) for i in range(5)]] == [0, 1, 4, 9, 16]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fork server is Linux's method")
def test_a_lock_held_by_another_thread_does_not_reach_the_helpers():
    """What froze a kernel's pool: a thread (the kernel's output thread) held a lock when the helpers
    were forked, and a helper that needed it waited for ever. Fork-server helpers start clean."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with _LOCK:
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    held.wait(10)
    try:
        with workers.process_pool(1) as pool:
            assert pool.submit(_lock_is_free).result(timeout=60) is True
            assert pool.submit(os.getppid).result(timeout=60) != os.getpid()  # not our fork
    finally:
        release.set()
        t.join(10)


def test_a_helper_that_dies_fails_the_work_instead_of_hanging():
    with workers.process_pool(1) as pool:
        with pytest.raises(BrokenProcessPool):
            pool.submit(os._exit, 3).result(timeout=60)  # a helper killed (out of memory, kill -9)


def test_default_workers_counts_usable_cores_with_a_cap():
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    assert workers.default_workers() == n
    assert workers.default_workers(cap=1) == 1

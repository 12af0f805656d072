"""Shared fixtures. Every test writes under a temporary folder, never into the repo's runs/."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session", autouse=True)
def _isolated_dirs(tmp_path_factory):
    """Point runs/ and the cache at temporary folders for the whole session.

    The built-in corpus is built once per session into the temporary cache (about 10 s).
    """
    old = {k: os.environ.get(k) for k in ("NBCORE_RUNS", "NBCORE_CACHE")}
    os.environ["NBCORE_RUNS"] = str(tmp_path_factory.mktemp("runs"))
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:  # pytest-xdist: one cache for all workers of this run (their temp folders share a parent)
        shared = tmp_path_factory.getbasetemp().parent / "cache"
        shared.mkdir(exist_ok=True)
        os.environ.setdefault("NBCORE_CACHE", str(shared))
    else:
        os.environ.setdefault("NBCORE_CACHE", str(tmp_path_factory.mktemp("cache")))
    if os.environ.get("NBCORE_TEST_CACHE"):  # reuse a cache between local runs
        os.environ["NBCORE_CACHE"] = os.environ["NBCORE_TEST_CACHE"]
    if worker:  # the first worker builds the built-in corpus (~20 s); the others wait for it instead of building it too
        import fcntl

        from nbcore import corpus

        with open(Path(os.environ["NBCORE_CACHE"]) / ".builtin.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            corpus.builtin_corpus_path()
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """A fresh, empty runs/ folder for one test."""
    d = tmp_path / "runs"
    d.mkdir()
    monkeypatch.setenv("NBCORE_RUNS", str(d))
    return d


# The suite's wall time on CI's 2 cores. pytest-xdist's worksteal hands each worker a contiguous part
# of the collection, then moves tests from the end of the busiest queue. A long test that starts late
# makes a long tail (the 01->06 chain alone is 7-9 minutes), so the longest files open the two halves:
# the chain the first, the launcher-driven files the second. These files move whole, so their module
# fixtures are still built once; the other files keep their order around them.
_OPENS_FIRST_HALF = ("test_course_chain.py",)
_OPENS_SECOND_HALF = ("test_sweep.py", "test_nodes.py", "test_launch_runs.py", "test_train.py")


def pytest_collection_modifyitems(config, items):
    def file_of(item):
        return Path(str(item.fspath)).name

    first = [i for i in items if file_of(i) in _OPENS_FIRST_HALF]
    second = [i for i in items if file_of(i) in _OPENS_SECOND_HALF]
    rest = [i for i in items if file_of(i) not in _OPENS_FIRST_HALF + _OPENS_SECOND_HALF]
    if not first and not second:
        return
    half = len(items) // 2  # worksteal's first share: len // workers (2 on CI)
    head = first + rest[:max(0, half - len(first))]
    items[:] = head + second + rest[len(head) - len(first):]

"""JupyterLab in a real (headless) browser: open 01_tokenizer, run it, find the token explorer widget.

Needs Debian's `chromium` (/usr/bin/chromium, or $CHROMIUM) and the `playwright` Python package
(its core library only: it drives the system Chromium, nothing is downloaded).
`make test-browser` runs only this file; `.ci/run` installs Chromium so CI runs it too.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("NBCORE_REQUIRE_BROWSER") == "1"  # make test-browser: a skip is a failure

if REQUIRED:
    from playwright import sync_api as playwright_api
else:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (test extra)")

if not CHROMIUM:
    if REQUIRED:
        raise RuntimeError("Chromium not found: install Debian's `chromium` package or set $CHROMIUM")
    pytest.skip("Chromium not installed (apt-get install chromium); `make test-browser` requires it",
                allow_module_level=True)


def _shrink_parameters(path: Path, **values):
    """Edit the copy's parameters cell so the run takes seconds (JupyterLab injects nothing)."""
    import json
    import re

    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    src = "".join(cell["source"])
    for name, value in values.items():
        src, n = re.subn(rf"^{name} = [^#\n]*", f"{name} = {value}  ", src, flags=re.M)
        assert n == 1, f"parameter {name} not found in {path.name}"
    cell["source"] = src
    path.write_text(json.dumps(nb))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a copy of notebooks/, runs/ in a temp folder."""
    root = tmp_path / "lab"
    shutil.copytree(REPO / "notebooks", root)
    _shrink_parameters(root / "01_tokenizer.ipynb", sample_chars="300_000", vocab_size="512")
    port, token = _free_port(), "nbcore-test"
    env = dict(os.environ, NBCORE_RUNS=str(tmp_path / "runs"), JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"), JUPYTER_DATA_DIR=str(tmp_path / "data"))
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False", "--allow-root",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            raise RuntimeError("JupyterLab did not start within 60 s")
        yield base, token, tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_01_tokenizer_runs_in_jupyterlab_and_shows_the_token_explorer(jupyterlab):
    base, token, tmp = jupyterlab
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/01_tokenizer.ipynb?token={token}", timeout=120_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            # wait for the kernel, then Run > Run All Cells through JupyterLab's own menu
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            page.wait_for_selector("text=Python 3 (ipykernel) | Idle", timeout=120_000)
            # Run > Run All Cells; a kernel that was still connecting can drop the requests
            # (every prompt stays "[ ]"), so check that execution began and ask again if not
            for attempt in range(3):
                page.click("#jp-MainMenu >> text=Run", timeout=30_000)
                page.click(".lm-Menu-content >> text=Run All Cells", timeout=30_000)
                try:
                    page.wait_for_function(
                        "() => [...document.querySelectorAll('.jp-InputPrompt')]"
                        ".some(e => /\\[(\\*|\\d+)\\]/.test(e.innerText))", timeout=20_000)
                    break
                except playwright_api.TimeoutError:
                    page.wait_for_timeout(2_000)
            try:
                explorer = page.wait_for_selector(".token-explorer textarea", timeout=240_000)
            except Exception:
                page.screenshot(path=str(tmp / "failure.png"), full_page=True)
                raise
            assert explorer.is_visible()
            # Run All reached the notebook's last cell (it stops at the first error)
            page.wait_for_selector("text=executed copy: pass", timeout=120_000)
            # the widget is live: typing re-renders the tokens below the box
            explorer.fill("hello hello")
            page.wait_for_function(
                "() => document.querySelector('.token-explorer').innerText.includes('11 characters')",
                timeout=30_000)
            page.screenshot(path=str(tmp / "01_tokenizer.png"), full_page=False)
        finally:
            browser.close()
    assert (tmp / "runs" / "tokenizers").is_dir(), "the notebook saved no tokenizer under NBCORE_RUNS"

"""The workbook's own hygiene: install files agree, notebooks are clean and runnable by papermill."""
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from nbcore import notebooks

REPO = Path(__file__).resolve().parents[1]


def _pyproject_deps():
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return sorted(data["project"]["dependencies"])


def _conda_pip_deps():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = [d for d in env["dependencies"] if isinstance(d, dict) and "pip" in d][0]["pip"]
    return sorted(p for p in pip if not p.startswith("-e"))


def test_environment_yml_and_pyproject_list_the_same_packages():
    assert _conda_pip_deps() == _pyproject_deps()


def test_torch_is_pinned():
    assert "torch==2.13.0" in _pyproject_deps()


def test_ci_runs_exactly_make_test():
    lines = [ln.strip() for ln in (REPO / ".ci/run").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    assert lines[-1] == "make test"


def _tracked_notebooks():
    out = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=REPO, capture_output=True, text=True)
    tracked = [REPO / f for f in out.stdout.split() if not f.startswith("runs/")]
    on_disk = sorted((REPO / "notebooks").glob("*.ipynb"))
    return sorted(set(tracked) | set(on_disk))


@pytest.mark.parametrize("nb", _tracked_notebooks(), ids=lambda p: p.name)
def test_notebook_is_clean_and_papermill_ready(nb):
    assert notebooks.has_outputs(nb) == [], f"{nb.name} has outputs: strip them before committing"
    meta = json.loads(nb.read_text())["metadata"]
    assert meta["kernelspec"]["name"] == "python3" and meta["language_info"]["name"] == "python"
    assert re.fullmatch(r"\d\d_[a-z_]+\.ipynb", nb.name)
    assert notebooks.declared_parameters(nb), f"{nb.name} needs a cell tagged 'parameters'"


def test_has_outputs_detects_a_dirty_notebook(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1")
    cell.execution_count = 1
    cell.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "2"}, execution_count=1)]
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), cell]
    path = tmp_path / "01_dirty.ipynb"
    nbformat.write(nb, path)
    assert notebooks.has_outputs(path) == [1]


def test_makefile_has_the_two_readme_commands():
    make = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", make, re.M) and re.search(r"^test:", make, re.M)
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


@pytest.mark.parametrize("nb", sorted((REPO / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_parameters_cell_parses_for_papermill_without_warnings(nb, caplog):
    """papermill reads each parameter line's comment as its help; a line it cannot parse (an `=` inside
    the comment) prints 'Unable to parse line ...' in the user's terminal at every launch."""
    import logging

    import nbformat
    from papermill.translators import PythonTranslator

    cell = next(c for c in json.loads(nb.read_text())["cells"] if "parameters" in c["metadata"].get("tags", []))
    src = "".join(cell["source"])
    with caplog.at_level(logging.WARNING):
        found = PythonTranslator.inspect(nbformat.v4.new_code_cell(src))
    assert not [r.getMessage() for r in caplog.records if "Unable to parse" in r.getMessage()]
    assert {p.name for p in found} - {"defaults"} == set(notebooks.declared_parameters(nb))

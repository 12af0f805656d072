"""The solutions notebooks (notebooks/solutions/0N_solutions.ipynb) run and check themselves."""
import nbformat
import papermill as pm
import pytest

from nbcore import paths

pytestmark = pytest.mark.slow

SOLUTIONS = sorted((paths.NOTEBOOKS / "solutions").glob("0*_solutions.ipynb"))


def test_every_chapter_has_a_solutions_notebook():
    assert [p.name[:2] for p in SOLUTIONS] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("notebook", SOLUTIONS, ids=lambda p: p.name[:2])
def test_solutions_run_and_check_themselves(notebook, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / notebook.name
    pm.execute_notebook(str(notebook), str(out), cwd=str(notebook.parent), progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    assert not any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert sum(c.cell_type == "code" for c in nb.cells) >= 5            # versions, parameters, at least 3 exercises
    raw = nbformat.read(notebook, as_version=4)
    assert all(not c.get("outputs") for c in raw.cells if c.cell_type == "code")   # stored without outputs

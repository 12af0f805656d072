"""Parameter checks shared by every chapter (nbcore.params) and the papermill runner (nbcore.notebooks)."""
import json

import nbformat
import pytest

from nbcore import notebooks, params
from nbcore.params import ParameterError


def test_collect_takes_only_the_parameters_cells_names():
    g = {"np": __import__("json"), "names_before": None}
    before = set(g)
    g.update(vocab_size=4096, corpus="builtin", _private=1)
    assert params.collect(g, before) == {"vocab_size": 4096, "corpus": "builtin"}


def test_unknown_name_names_the_closest_match():
    with pytest.raises(ParameterError, match=r"unknown parameter 'vocab_szie'.*Did you mean 'vocab_size'"):
        params.validate({"vocab_size": 1}, {"vocab_size": 1}, injected=["vocab_szie"])


def test_unknown_name_lists_valid_names_when_nothing_is_close():
    with pytest.raises(ParameterError, match=r"Valid parameters: corpus, vocab_size"):
        params.check_names({"zzz": 1}, {"vocab_size": 1, "corpus": "x"})


@pytest.mark.parametrize("default,given,expected", [
    (1.0, 3, 3.0), (4, 4.0, 4), ("run", 123, "123"), (None, [1], [1]), (True, False, False), ((1, 2), [3], (3,)),
])
def test_coerce_accepts_compatible_values(default, given, expected):
    out = params.coerce("p", given, default)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("default,given", [(4, "4"), (4, 4.5), (True, 1), (1.0, "x"), ("s", [1]), (4, True)])
def test_coerce_rejects_wrong_types_with_the_expected_type(default, given):
    with pytest.raises(ParameterError, match=f"should be {type(default).__name__}"):
        params.coerce("p", given, default)


def test_validate_writes_coerced_values_back():
    g = {"lr": 1, "name": 7}
    out = params.validate(g, {"lr": 0.1, "name": "x"}, injected=["lr", "name"])
    assert out == {"lr": 1.0, "name": "7"} and g["lr"] == 1.0


def test_require_raises_with_the_message():
    params.require(True, "fine")
    with pytest.raises(ParameterError, match="heads must divide"):
        params.require(False, "heads must divide the model dim")


def _tiny_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    p = nbformat.v4.new_code_cell("steps = 3  # how many\nname = 'demo'\ndefaults = params.collect(globals(), names_before)")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_code_cell("from nbcore import params\nnames_before = set(globals())"),
        p,
        nbformat.v4.new_code_cell("P = params.validate(globals(), defaults)\nresult = steps * 2"),
    ]
    nbformat.write(nb, path)
    return path


def test_declared_parameters_reads_the_parameters_cell(tmp_path):
    nb = _tiny_notebook(tmp_path / "99_tiny.ipynb")
    assert notebooks.declared_parameters(nb) == {"steps": 3, "name": "demo"}


def test_execute_refuses_an_unknown_parameter_before_starting_a_kernel(tmp_path):
    nb = _tiny_notebook(tmp_path / "99_tiny.ipynb")
    with pytest.raises(ParameterError, match="Did you mean 'steps'"):
        notebooks.execute(nb, tmp_path / "out.ipynb", {"stpes": 5})
    assert not (tmp_path / "out.ipynb").exists()


def test_injected_values_are_validated_inside_the_kernel(tmp_path):
    import papermill as pm

    nb = _tiny_notebook(tmp_path / "99_tiny.ipynb")
    out = notebooks.execute(nb, tmp_path / "ok.ipynb", {"steps": 5, "name": 42})
    cells = json.loads(out.read_text())["cells"]
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in cells)
    # papermill itself bypasses our pre-check: the kernel-side check still catches a typo
    with pytest.raises(pm.PapermillExecutionError, match="unknown parameter 'stepz'"):
        pm.execute_notebook(str(nb), str(tmp_path / "bad.ipynb"), parameters={"stepz": 5}, progress_bar=False)
    with pytest.raises(pm.PapermillExecutionError, match="should be int"):
        pm.execute_notebook(str(nb), str(tmp_path / "bad2.ipynb"), parameters={"steps": "five"}, progress_bar=False)

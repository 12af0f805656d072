"""Notebook 01_tokenizer runs headless with tiny parameters; its tokenizer folder and record land on disk."""
import json

import nbformat
import pytest

from nbcore import notebooks, paths
from nbcore.params import ParameterError
from nbcore.tokenizer import BPETokenizer

pytestmark = pytest.mark.slow


def test_notebook_01_trains_saves_and_records(runs_dir):
    name = "tiny-400"
    folder = paths.tokenizers_dir() / name
    out = notebooks.execute("01_tokenizer", folder / "01_tokenizer.ipynb",
                            parameters={"corpus": "builtin", "sample_chars": 150_000, "heldout_chars": 20_000,
                                        "vocab_size": 400, "name": name, "workers": 1})
    assert folder == runs_dir / "tokenizers" / name        # out_dir "" means runs/tokenizers/<name>
    assert sorted(p.name for p in folder.iterdir()) == ["01_tokenizer.ipynb", "merges.txt", "meta.json",
                                                         "tokenizer.json"]
    tok = BPETokenizer.load(folder)
    assert tok.vocab_size == 400 and tok.n_vocab == 401 and tok.eot_id == 400 and tok.name == name
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["corpus"] == "builtin" and meta["sample_chars"] == 150_000
    assert meta["heldout"]["heldout_chars"] == 20_000 and meta["heldout"]["chars_per_token"] > 1.5
    assert len((folder / "merges.txt").read_text(encoding="utf-8").splitlines()) == 1 + 144
    nb = nbformat.read(out, as_version=4)
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "the by-hand merges equal nbcore's" in text and "held-out ids: (T,) = (" in text
    assert not any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    html = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "text/html" in o.get("data", {})]
    assert html and "<sub" in html[0]["data"]["text/html"]     # the static explorer rendering


def test_notebook_01_rejects_unknown_parameter(tmp_path):
    # checked before any kernel starts ...
    with pytest.raises(ParameterError, match=r"unknown parameter 'vocab_szie'.*Did you mean 'vocab_size'"):
        notebooks.execute("01_tokenizer", tmp_path / "out.ipynb", parameters={"vocab_szie": 300})
    assert not (tmp_path / "out.ipynb").exists()


def test_notebook_01_validates_injected_names_inside_the_kernel(tmp_path):
    # ... and inside the notebook too, when papermill is called directly
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError, match=r"Did you mean 'sample_chars'"):
        pm.execute_notebook(str(notebooks.notebook_path("01_tokenizer")), str(tmp_path / "out.ipynb"),
                            parameters={"sample_char": 1000}, cwd=str(paths.NOTEBOOKS), progress_bar=False)

"""Notebook 03_model refuses bad parameters before it runs a cell. Its full run at the default sizes (the
hand-built block equals nbcore's, the shapes, masks, KV cache, size tables and the ablation) is checked
in tests/test_course_chain.py, the learner's path."""
import pytest

from nbcore import notebooks
from nbcore.params import ParameterError

pytestmark = pytest.mark.slow

TINY = {"vocab_size": 96, "num_layers": 2, "num_heads": 2, "model_dim": 32, "seq_len": 24, "batch_size": 2,
        "window_long": 12, "window_short": 6, "doc_lengths": [10, 6, 8], "compare_size": "tiny",
        "train_steps": 8, "ablation_steps": 0}


@pytest.fixture(autouse=True)
def _one_thread_kernel(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models; the kernel inherits the environment


def test_notebook_03_rejects_bad_parameters(tmp_path):
    with pytest.raises(ParameterError, match="Did you mean 'model_dim'"):
        notebooks.execute("03_model", tmp_path / "out.ipynb", parameters={"model_dims": 64})
    assert not (tmp_path / "out.ipynb").exists()
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError, match="must be divisible by num_heads"):
        notebooks.execute("03_model", tmp_path / "bad.ipynb", parameters={**TINY, "num_heads": 3})

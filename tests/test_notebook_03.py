"""Notebook 03_model runs headless with tiny parameters: the hand-built block equals nbcore's, and the
mask pictures, the KV-cache check and the size tables all come out."""
import nbformat
import pytest

from nbcore import notebooks
from nbcore.params import ParameterError

pytestmark = pytest.mark.slow

TINY = {"vocab_size": 96, "num_layers": 2, "num_heads": 2, "model_dim": 32, "seq_len": 24, "batch_size": 2,
        "window_long": 12, "window_short": 6, "doc_lengths": [10, 6, 8], "compare_size": "tiny",
        "train_steps": 8, "ablation_steps": 0}


def _outputs(nb):
    cells = [c for c in nb.cells if c.cell_type == "code"]
    text = "\n".join(o.get("text", "") for c in cells for o in c.get("outputs", []))
    return cells, text


@pytest.fixture(autouse=True)
def _one_thread_kernel(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models; the kernel inherits the environment


def test_notebook_03_runs_and_checks_itself(tmp_path):
    out = notebooks.execute("03_model", tmp_path / "03_model.ipynb", parameters=TINY)
    nb = nbformat.read(out, as_version=4)
    cells, text = _outputs(nb)
    assert not any(o.get("output_type") == "error" for c in cells for o in c.outputs)
    assert "the block by hand equals nbcore's block" in text
    # shapes in the shared notation, with the injected sizes
    for line in ("q: (B, T, H, Dh) = (2, 24, 2, 16)", "scores: (B, H, T, T) = (2, 2, 24, 24)",
                 "logits: (B, T, V) = (2, 24, 96)", "qkv: (B, T, 3·H·Dh) = (2, 24, 96)"):
        assert line in text, line
    assert "identical tokens" in text                                    # KV cache == recompute
    assert "GPT-2 small: 124,439,808   Llama-3.2-1B shape: 1,235,814,400" in text
    for preset in ("XS", "S", "M", "gpt2-small"):                        # the preset table
        assert f"\n{preset:>10} " in "\n" + text
    for arch in ("gpt", "nanogpt", "llama3"):                            # comparison and training rows
        assert f"{arch:>8}: loss" in text
    images = [o for c in cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 1                                              # the mask pictures
    widgets = [o for c in cells for o in c.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets                                                       # the slider rendered headless


def test_notebook_03_rejects_bad_parameters(tmp_path):
    with pytest.raises(ParameterError, match="Did you mean 'model_dim'"):
        notebooks.execute("03_model", tmp_path / "out.ipynb", parameters={"model_dims": 64})
    assert not (tmp_path / "out.ipynb").exists()
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError, match="must be divisible by num_heads"):
        notebooks.execute("03_model", tmp_path / "bad.ipynb", parameters={**TINY, "num_heads": 3})


def test_notebook_03_ablation_section_measures_every_switch(tmp_path, runs_dir):
    """The ablation at the end of 03 with a tiny budget on tiny shards: 11 variants x 2 seeds, a plot, the table."""
    from nbcore import shards
    from tests.test_evaluate import make_text, make_tokenizer

    make_tokenizer(tmp_path / "tok")
    (tmp_path / "text").mkdir()
    for i in range(4):
        (tmp_path / "text" / f"d{i}.txt").write_text(make_text(80, seed=i), encoding="utf-8")
    shards.make_shards(f"local:{tmp_path / 'text' / '*.txt'}", tmp_path / "tok", tmp_path / "shards", shard_size=6000,
                       num_shards=1, workers=1, val_tokens=1500, progress=False)
    out = notebooks.execute("03_model", tmp_path / "03.ipynb",
                            parameters={**TINY, "train_steps": 0, "ablation_steps": 2,
                                        "ablation_data": str(tmp_path / "shards")})
    cells, text = _outputs(nb := nbformat.read(out, as_version=4))
    assert "22 runs in" in text and "each run: " in text
    md = "\n".join(o.get("data", {}).get("text/markdown", "") for c in cells for o in c.outputs)
    assert "| baseline | nothing: every trick on |" in md and "| adamw | Muon: hidden matrices trained by AdamW |" in md
    [record] = list(runs_dir.glob("ablation_*"))
    assert len(list(record.glob("*_s[01]/metrics.csv"))) == 22 and (record / "results.json").exists()

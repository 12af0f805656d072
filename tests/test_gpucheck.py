"""python -m nbcore.gpucheck on a machine without CUDA: says so, runs the CPU checks, exits 0."""
import json

from nbcore import gpucheck


def test_gpucheck_without_cuda_runs_cpu_checks_and_writes_both_files(tmp_path, capsys, monkeypatch):
    # the memory check itself is tests/test_memory.py's; here a small stand-in keeps this fast
    monkeypatch.setattr(gpucheck, "check_memory_cpu", lambda: [{"shape": "tiny", "B": 1, "ratio": 1.0}])
    assert gpucheck.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no CUDA GPU on this machine" in out
    report = json.loads((tmp_path / "gpucheck.json").read_text())
    assert report["cuda"] is False and not report["errors"]
    assert report["checks"]["precision"]["dtype"] == "float32"
    assert report["checks"]["float16_loss_scaler_cpu"]["ok"] is True
    md = (tmp_path / "gpucheck.md").read_text()
    assert md.startswith("# gpucheck") and "| precision | dtype float32, attn_backend sdpa" in md

"""Precision and attention chosen by compute capability (mocked GPUs), the float16 + GradScaler path
on CPU with Muon, MFU against the dtype's peak, and the FP8 head kept out of evaluation."""
import pytest
import torch

from nbcore import model as model_mod, optim, precision, runs
from nbcore.model import build_model


@pytest.mark.parametrize("cap, name, dtype, attn, fp8, scaler", [
    ((7, 0), "Tesla V100-SXM2-16GB", "float16", "sdpa", False, True),
    ((7, 5), "Tesla T4", "float16", "sdpa", False, True),
    ((8, 0), "NVIDIA A100-SXM4-40GB", "bfloat16", "flex", False, False),
    ((8, 6), "NVIDIA GeForce RTX 3090", "bfloat16", "flex", False, False),
    ((8, 9), "NVIDIA L4", "bfloat16", "flex", True, False),
    ((9, 0), "NVIDIA H100 80GB HBM3", "bfloat16", "flex", True, False),
])
def test_choice_by_compute_capability(cap, name, dtype, attn, fp8, scaler):
    p = precision.choose(cap, name)
    assert (p.dtype, p.attn_backend, p.fp8_head, p.grad_scaler) == (dtype, attn, fp8, scaler)
    assert p.reasons and name in p.reasons[0] and precision.sm(cap) in p.reasons[0]


def test_requested_dtypes_and_no_cuda():
    assert precision.choose(None).dtype == "float32" and precision.choose(None).attn_backend == "sdpa"
    assert precision.choose(None, requested="bfloat16").dtype == "float32"
    p = precision.choose(None, requested="float16")  # CPU float16: the pre-Ampere path, testable here
    assert p.dtype == "float16" and p.grad_scaler
    t4 = precision.choose((7, 5), "Tesla T4", requested="bfloat16")
    assert t4.dtype == "float16" and any("no bfloat16" in r for r in t4.reasons)
    h = precision.choose((9, 0), "H100", requested="float32")
    assert h.dtype == "float32" and not h.fp8_head and not h.grad_scaler
    with pytest.raises(ValueError, match="float16"):
        precision.choose((9, 0), requested="fp64")


def test_build_model_follows_the_mocked_capability(monkeypatch):
    """dtype=None and attn_backend='auto' on a CUDA device ask precision (the GPU is mocked)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    dev = torch.device("cuda")
    assert model_mod.resolve_dtype(None, dev) == torch.float16
    cfg = {**model_mod.GPT_DEFAULTS, "arch": "gpt", "vocab_size": 64, "num_layers": 2, "num_heads": 2,
           "model_dim": 32, "seq_len": 16, "device": "cuda", "dtype": "float16", "seed": 0, "compile": False,
           "fp8_head": True}
    model_mod.GPT.resolve(cfg, dev)
    assert cfg["attn_backend"] == "sdpa" and cfg["fp8_head"] is False
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert model_mod.resolve_dtype(None, dev) == torch.bfloat16
    cfg.update(attn_backend="auto", fp8_head=True)
    model_mod.GPT.resolve(cfg, dev)
    assert cfg["attn_backend"] == "flex" and cfg["fp8_head"] is True


def test_mfu_uses_the_peak_of_the_dtype_really_used():
    assert runs.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert runs.peak_flops("NVIDIA H100 PCIe") == 756e12 and runs.peak_flops("NVIDIA H100 NVL") == 835e12
    assert runs.peak_flops("NVIDIA A100-SXM4-40GB", "float32", tf32=True) == 156e12
    assert runs.peak_flops("Tesla T4", "float16") == 65e12 and runs.peak_flops("Tesla T4", "bfloat16") is None
    assert runs.peak_flops("Tesla V100-PCIE-16GB", "float16") == 112e12
    assert runs.peak_flops("NVIDIA H100 80GB HBM3", torch.float8_e4m3fn) is None  # dtype names only
    assert runs.peak_flops("NVIDIA H100 80GB HBM3", "float8") == 1979e12
    assert runs.mfu(1e9, 1e5, 2, "Tesla T4", dtype="float16") == pytest.approx(1e14 / (2 * 65e12))
    assert runs.mfu(1e9, 1e5, 1, "cpu") is None


def test_float16_with_grad_scaler_trains_muon_and_adam_on_cpu():
    """The pre-Ampere path: float16 autocast, LossScaler over Muon + Adam, a few steps on CPU.
    An overflowing step is skipped by every optimiser and halves the scale."""
    torch.manual_seed(0)
    m = build_model("gpt", 128, 2, 2, 32, 16, device="cpu", dtype="float16")
    opts = optim.build_optimizers(m.configure_optimizers(), optim.default_lrs("gpt"))
    scaler = precision.LossScaler(True, "cpu", init_scale=2.0 ** 10)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 128, (4, 16), generator=g)
    losses = []
    for _ in range(6):
        loss = m(x, targets=x)
        scaler.scale(loss).backward()
        scaler.unscale(opts)
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())
        assert scaler.step(opts)
        optim.zero_grad(opts)
        losses.append(loss.item())
    assert losses[-1] < losses[0] and scaler.get_scale() == 2.0 ** 10
    before = [p.detach().clone() for p in m.parameters()]
    scaler.scale(m(x, targets=x)).backward()
    next(iter(m.blocks[0].parameters())).grad.view(-1)[0] = float("inf")  # an overflow in one group
    assert scaler.step(opts) is False and scaler.skipped == 1
    assert all(torch.equal(a, p) for a, p in zip(before, m.parameters()))  # nobody stepped
    assert scaler.get_scale() == 2.0 ** 9
    off = precision.LossScaler(False, "cpu")
    assert off.scale(loss) is loss and off.get_scale() == 1.0


def test_fp8_head_only_in_training_steps(monkeypatch):
    """With the FP8 switch on, eval logits are the exact float head; train-mode forward with grad
    goes through the FP8 matmul (its CUDA path run on CPU: torch._scaled_mm has a CPU kernel)."""
    torch.manual_seed(0)
    m = build_model("gpt", 256, 2, 2, 64, 32, device="cpu", dtype="bfloat16", zero_init=False)
    x = torch.randint(0, 256, (2, 32))
    m.eval()
    with torch.no_grad():
        exact = m(x)
    m.config["fp8_head"] = True
    monkeypatch.setattr(model_mod, "_fp8_device", lambda t: True)
    calls = []
    real = model_mod.fp8_linear
    monkeypatch.setattr(model_mod, "fp8_linear", lambda a, w: calls.append(1) or real(a, w))
    with torch.no_grad():
        assert torch.equal(m(x), exact)  # evaluation: exact
    m.train()
    with torch.no_grad():
        assert torch.equal(m(x), exact) and not calls  # no grad (validation inside training): exact
    train_logits = m(x)
    assert calls and not torch.equal(train_logits, exact)
    rel = (train_logits - exact).abs().max() / exact.abs().max()
    assert 0 < rel < 0.1

"""The memory model (runs.estimate_memory) against peak live tensor storage measured on CPU
(nbcore.memory.PeakMemory, CUDA's float32 norms under autocast emulated), and the OOM guard."""
import pytest
import torch
import torch.nn.functional as F

from nbcore import memory, model as model_mod, optim, runs
from nbcore.model import SIZE_PRESETS, build_model


def _within(est, meas):
    """The estimate is within 10% and never below the measurement by more than 5%."""
    assert 0.95 * meas <= est <= 1.10 * meas, f"estimate {est:,} vs measured {meas:,} ({est / meas:.3f})"


def _fb_peak(m, B, T):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, m.vocab_size, (B, T), generator=g)
    with memory.cuda_autocast_rules(), memory.PeakMemory(track=m.parameters()) as mem:
        m(x, targets=x).backward()
    for p in m.parameters():
        p.grad = None
    return mem.peak


def test_tracker_counts_each_storage_once_while_it_lives():
    with memory.PeakMemory() as mem:
        a = torch.zeros(1000)                # 4000 bytes
        v = a[:10]                           # a view: no new storage
        b = torch.ones(500, dtype=torch.bfloat16)  # 1000 bytes
        assert mem.current == 5000 and v.numel() == 10
        del a, v
        assert mem.current == 1000
        c = b.float()                        # 2000 bytes
    assert mem.peak == 5000 and mem.current == 3000 and c.dtype == torch.float32


def test_cuda_autocast_rules_make_norms_float32_only_under_autocast():
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.rms_norm(x, (8,)).dtype == torch.bfloat16  # CPU autocast keeps bf16
        with memory.cuda_autocast_rules():
            assert F.rms_norm(x, (8,)).dtype == torch.float32  # as CUDA's autocast does
            assert F.layer_norm(x, (8,)).dtype == torch.float32
    with memory.cuda_autocast_rules():
        assert F.rms_norm(x, (8,)).dtype == torch.bfloat16  # outside autocast: unchanged
    assert F.rms_norm is not None and F.rms_norm.__module__ == "torch.nn.functional"


# Bytes per token of activations: the slope of the peak in B (weights and grads cancel), small shapes.
CASES = [(a, d, fp8) for a in ("gpt", "nanogpt", "llama3") for d in ("float32", "bfloat16") for fp8 in (False,)]
CASES += [("gpt", "bfloat16", True)]


@pytest.mark.parametrize("arch, dtype, fp8", CASES)
def test_activation_bytes_per_token_match_the_measured_slope(arch, dtype, fp8, monkeypatch):
    T, V = 32, 384
    kw = {"head_dim": 48, "mlp_ratio": 3} if arch == "gpt" else ({"num_kv_heads": 1} if arch == "llama3" else {})
    m = build_model(arch, V, 3, 2, 64, T, device="cpu", dtype=dtype, **kw)
    if fp8:  # the FP8 head's CUDA path, run on CPU (torch._scaled_mm has a CPU kernel)
        m.config["fp8_head"] = True
        monkeypatch.setattr(model_mod, "_fp8_device", lambda x: True)
    slope = (_fb_peak(m, 6, T) - _fb_peak(m, 3, T)) / (3 * T)
    est = runs.activation_bytes_per_token(**{k: v for k, v in runs.memory_kwargs(m).items() if k in (
        "arch", "num_layers", "model_dim", "vocab_size", "seq_len", "num_heads", "head_dim", "num_kv_heads",
        "mlp_dim", "dtype_bytes", "value_embeds", "unet_skips", "softcap", "dense_masks", "fp8_head")})
    _within(est, slope)


@pytest.mark.parametrize("arch", ["gpt", "nanogpt", "llama3"])
def test_every_size_preset_peak_matches_the_estimate(arch):
    """Real L, H, D of the presets up to S (float32; a small V and T keep it fast): weights, gradients
    and the end-of-backward buffers, the part of the peak that does not scale with tokens. (M and
    gpt2-small: the same check in the note's run of /work/notes' script, too slow for CI.)"""
    for size in ("tiny", "XS", "S"):
        p = SIZE_PRESETS[size]
        m = build_model(arch, 256, p["num_layers"], p["num_heads"], p["model_dim"], 16, device="cpu",
                        dtype="float32")
        kw = runs.memory_kwargs(m)
        e = runs.estimate_memory(batch_size=2, **dict(kw, muon_params=0, optimizer_bytes_per_param=0))
        _within(max(e["backward_start"], e["backward_end"]), _fb_peak(m, 2, 16))
        del m


@pytest.mark.parametrize("arch, dtype", [("gpt", "bfloat16"), ("gpt", "float32"), ("nanogpt", "bfloat16"),
                                         ("llama3", "float32")])
def test_whole_step_peak_with_optimizer_state(arch, dtype):
    """A full step (forward, backward, Muon/Adam step) at two batch sizes: the optimiser's share
    (Muon 4 bytes per hidden weight, Adam 8 per other parameter) and the peak's moment both right."""
    m = build_model(arch, 512, 4, 4, 128, 32, device="cpu", dtype=dtype)
    opts = optim.build_optimizers(m.configure_optimizers(), optim.default_lrs(arch), fused=True)
    kw = runs.memory_kwargs(m)
    for B in (1, 12):
        r = memory.measure_step(m, opts, B, 32)
        e = runs.estimate_memory(batch_size=B, **kw)
        assert r["optimizer_state"] == pytest.approx(e["optimizer"], rel=0.01)
        _within(e["total"], r["peak"])


def test_step_peak_counts_the_decaying_adams_copy_of_the_weights():
    """adam_weight_decay > 0 (DecoupledAdam): Adam copies its decaying weights before its step; with a large
    V (embeddings and head) that copy is the step's peak, and the estimate must count it."""
    m = build_model("gpt", 8192, 2, 2, 128, 32, device="cpu", dtype="float32")
    opts = optim.build_optimizers(m.configure_optimizers(), optim.default_lrs("gpt"), adam_weight_decay=0.01,
                                  adam_cautious_wd=True, fused=True)
    assert any(isinstance(o, optim.DecoupledAdam) for o in opts)
    r = memory.measure_step(m, opts, 1, 32)
    kw = runs.memory_kwargs(m, adam_weight_decay=0.01)
    assert kw["adam_decay_params"] == m.embed.weight.numel() + m.head.weight.numel() + sum(
        v.weight.numel() for v in m.value_embeds)
    _within(runs.estimate_memory(batch_size=1, **kw)["total"], r["peak"])
    without = runs.estimate_memory(batch_size=1, **runs.memory_kwargs(m))["total"]
    assert without < 0.95 * r["peak"]  # the model before it counted the copy was too low


def test_estimate_parts_and_auto_batch():
    kw = dict(num_params=10_000_000, num_layers=4, model_dim=256, vocab_size=8192, seq_len=512, muon_params=4_000_000)
    a, b = runs.estimate_memory(batch_size=1, **kw), runs.estimate_memory(batch_size=2, **kw)
    assert b["activations"] == 2 * a["activations"] and b["weights"] == a["weights"] == 40_000_000
    assert a["optimizer"] == 4_000_000 * 4 + 6_000_000 * 8
    # the logits' four float32 V-sized buffers (soft-capped) are part of every token's bytes
    assert a["activations_per_token"] - runs.estimate_memory(batch_size=1, softcap=False, **kw)[
        "activations_per_token"] == 4 * 8192
    budget = 2**30
    B = runs.auto_batch_size(budget, **kw)
    assert B & (B - 1) == 0 and runs.estimate_memory(batch_size=B, **kw)["total"] <= 0.85 * budget
    assert runs.estimate_memory(batch_size=2 * B, **kw)["total"] > 0.85 * budget
    with pytest.raises(MemoryError, match="GiB"):
        runs.auto_batch_size(10_000_000, **kw)


# ---------------------------------------------------------------- the OOM guard
def _fake_step(limit, calls):
    def step(b):
        calls.append(b)
        if b > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return step


def test_fit_batch_auto_halves_b_and_keeps_the_global_batch(capsys):
    calls = []
    B, accum = runs.fit_batch(_fake_step(8, calls), 32, 2, auto=True)
    assert (B, accum) == (8, 8) and calls == [32, 16, 8] and B * accum == 32 * 2
    out = capsys.readouterr().out
    assert "out of memory with B=32: trying B=16 with grad_accum=4" in out and "B=8 with grad_accum=8" in out


def test_fit_batch_given_b_stops_and_names_the_b_that_fits():
    calls, cleared = [], []
    with pytest.raises(MemoryError) as e:
        runs.fit_batch(_fake_step(4, calls), 16, 1, auto=False, clear=lambda: cleared.append(1))
    msg = str(e.value)
    assert "batch_size=16 does not fit" in msg and "batch_size=4 fits" in msg and "grad_accum=4" in msg
    assert calls == [16, 8, 4] and len(cleared) == 2
    with pytest.raises(MemoryError, match="even batch_size=1"):
        runs.fit_batch(_fake_step(0, []), 4, 1, auto=True)
    with pytest.raises(ValueError):  # anything but out-of-memory passes through
        runs.fit_batch(lambda b: (_ for _ in ()).throw(ValueError("bad")), 4, 1, auto=True)
    assert runs.fit_batch(_fake_step(64, []), 16, 3, auto=False) == (16, 3)

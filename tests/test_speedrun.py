"""speedrun_8xh100 against the record it follows (Modded-NanoGPT #21, 2025-01-26), switch by switch, at
tiny size; and the maths of the later records' optimiser switches (Polar Express, NorMuon, cautious WD).

Each "record" side below is written from the record's own train_gpt.py (its shapes, its loader, its
Muon, its window formula), independently of nbcore, and compared with nbcore under the switches."""
import csv
import json
import math

import numpy as np
import pytest
import torch

from nbcore import launch, model as model_mod, optim, paths
from nbcore.loader import TokenLoader, pack_bos_bestfit, val_batches
from nbcore.model import build_model
from nbcore.shards import write_shard
from test_train import tiny_data  # noqa: F401  (the session fixture: tokenizer and shards)

V, EOT = 64, 63
L, H, D = 12, 2, 32  # the record's depth; tiny width (Dh = 16)
RECORD = {"qkv_split": True, "learn_attn_scale": False, "attn_off_layers": (7,), "v_lambda": True}


def tiny(**switches):
    return build_model("gpt", V, L, H, D, 64, device="cpu", seed=0, eot_id=EOT, **switches)


def record_param_count(V, L, D, hdim, vocab_multiple=128):
    """The record's GPT: embed, 3 value embeds, blocks (lambdas 2, MLP 4D, attention except block 7:
    qkv_w (3, hdim, D), lambdas 2, c_proj), skip weights for the L - L//2 decoder layers, padded head."""
    n = V * D + 3 * V * D
    for i in range(L):
        n += 2 + 2 * 4 * D * D
        if i != 7:
            n += 3 * hdim * D + 2 + D * hdim
    n += L - L // 2
    return n + -(-V // vocab_multiple) * vocab_multiple * D


def test_record_switches_give_the_record_architecture():
    m = tiny(**RECORD)
    assert m.num_params() == record_param_count(V, L, D, H * (D // H))
    assert [b.attn is not None for b in m.blocks] == [i != 7 for i in range(L)]
    assert m.ve_layers == [0, 1, 2] + [None] * 6 + [0, 1, 2]
    assert [i for i, x in enumerate(m.long_layers) if x] == [0, 4, 7, 11]
    for b in m.blocks:  # every attention layer has its (2,) lambdas; the scale is a constant 0.12
        if b.attn is not None:
            assert b.attn.v_mix.shape == (2,) and b.attn.scale == 0.12
            assert not isinstance(b.attn.scale, torch.nn.Parameter)
    # ours: layer 7 attends, a learned scale per layer, no v lambda where there is no value embedding
    ours = tiny()
    attn = 3 * H * (D // H) * D + D * H * (D // H)
    assert ours.num_params() - m.num_params() == attn + L - 5 * 2  # +layer 7, +12 scales, -lambdas of layers 3-6, 8
    assert m.attention_contexts(64)[7] == 0 and ours.attention_contexts(64)[7] > 0
    # a layer without value embedding really uses its lambda: lambda 0 -> v = 0 -> no attention output
    blk = m.blocks[4]
    x = torch.randn(1, 8, D)
    with torch.no_grad():
        blk.attn.proj.weight.normal_()
        assert blk.attn(x).abs().sum() > 0
        blk.attn.v_mix.zero_()
        assert blk.attn(x).abs().sum() == 0
    loss = m(torch.randint(0, V, (2, 64)), torch.randint(0, V, (2, 64)))
    loss.backward()
    assert math.isfinite(loss.item())


def _record_newton_schulz(G, steps=5):
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.float()
    tall = G.size(-2) > G.size(-1)
    X = X.mT if tall else X
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


@pytest.mark.parametrize("split", [True, False])
def test_muon_updates_q_k_v_separately_like_the_record(split):
    """One Muon step on a merged QKV weight: with qkv_split the record's update (each of Q, K, V
    orthogonalised, scale max(1, hdim/D)^0.5 = 1); without, one (3·hdim, D) matrix scaled by √3."""
    m = tiny(**RECORD) if split else tiny()
    W = m.blocks[0].attn.qkv.weight
    torch.manual_seed(1)
    G = torch.randn_like(W)
    W0 = W.detach().clone()
    opts = optim.build_optimizers(m.configure_optimizers(), optim.default_lrs("gpt"))
    W.grad = G.clone()
    opts[0].step()
    lr, mom = 0.05, 0.95
    buf = (1 - mom) * G  # momentum buffer from zeros
    U = G.lerp(buf, mom)  # Nesterov
    if split:
        O = torch.cat([_record_newton_schulz(u) for u in U.view(3, -1, D)])  # scale 1
    else:
        O = _record_newton_schulz(U) * math.sqrt(3)
    torch.testing.assert_close(W.detach(), W0 - lr * O, rtol=1e-4, atol=1e-6)


def test_record_window_ramp():
    """The record: window = next_multiple_of_n(1728 * step / 1770, n=128) tokens."""
    def record(step, n=128, steps=1770):
        v = 1728 * step / steps
        return next(x for x in range(n, int(v) + 1 + n, n) if x >= v)
    assert all(optim.window_size(s / 1770, 128, 1792, 128, ramp="record") == record(s) for s in range(1771))
    assert optim.window_size(0.5, 128, 1792, 128) != record(885)  # ours: 128 + p * 1664
    with pytest.raises(ValueError, match="window ramp"):
        optim.window_size(0.5, ramp="cosine")


def _record_stream(files, batch_size, rank, world_size):
    """The record's distributed_data_generator: shards in order, pos advances by the global batch."""
    local = batch_size // world_size
    it = iter(files)
    tokens, pos = np.fromfile(next(it), dtype="<u2", offset=1024).astype(np.int64), 0
    while True:
        if pos + batch_size + 1 >= len(tokens):
            tokens, pos = np.fromfile(next(it), dtype="<u2", offset=1024).astype(np.int64), 0
        buf = tokens[pos + rank * local:][:local + 1]
        yield buf[:-1], buf[1:]
        pos += batch_size


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for i, n in enumerate([300, 230]):  # 300 - 2 = 298 tokens: 4 global batches of 64, then shard 2
        toks = rng.integers(0, EOT, size=n)
        toks[rng.random(n) < 0.1] = EOT
        files.append(write_shard(tmp_path / f"train_{i + 1:06d}.bin", toks, V))
    write_shard(tmp_path / "val_000000.bin", rng.integers(0, V, size=1000), V)
    return tmp_path, files


def test_stream_layout_is_the_records_stream(shards):
    """layout='stream' with B=1: each rank's batch equals the record's loader's, across a shard change."""
    _, files = shards
    T, W = 32, 2
    for rank in range(W):
        ours = TokenLoader(files, 1, T, rank=rank, world_size=W, layout="stream", eot_id=EOT)
        ref = _record_stream(files, W * T, rank, W)
        for _ in range(12):  # 4 batches of shard 1 (298 // 64), 3 of shard 2, then an epoch wraps
            x, y = ours.next_batch()
            rx, ry = next(ref) if ours.epoch == 0 else (None, None)
            if rx is None:
                break
            assert x.shape == (1, T)
            assert np.array_equal(x[0].numpy(), rx) and np.array_equal(y[0].numpy(), ry)
    # B > 1: the same contiguous B*T tokens cut into rows
    a = TokenLoader(files, 2, 16, rank=1, world_size=2, layout="stream")
    b = _record_stream(files, 64, 1, 2)
    x, y = a.next_batch()
    rx, _ = next(b)
    assert np.array_equal(x.numpy().reshape(-1), rx)


def test_stream_layout_resumes_and_refuses_other_layout(shards):
    _, files = shards
    a = TokenLoader(files, 1, 32, layout="stream")
    for _ in range(3):
        a.next_batch()
    b = TokenLoader(files, 1, 32, layout="stream")
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.next_batch()[0], b.next_batch()[0])
    with pytest.raises(ValueError, match="layout"):
        TokenLoader(files, 1, 32).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="layout="):
        TokenLoader(files, 1, 32, layout="packed")


def test_bos_aligned_best_fit_by_hand():
    """Documents (eot first) of lengths 3, 2, 5, 2, 9 into rows of 5: row 1 takes the 5; row 2 the
    3 then the first 2; row 3 the other 2, then nothing fits 3 tokens: the 9 is cropped to 3."""
    toks = np.array([9, 1, 2, 9, 3, 9, 4, 5, 6, 7, 9, 8, 9, 1, 1, 1, 1, 1, 1, 1, 1])
    assert pack_bos_bestfit(toks, 9, 5).tolist() == [[9, 4, 5, 6, 7], [9, 1, 2, 9, 3], [9, 8, 9, 1, 1]]
    assert pack_bos_bestfit(toks, 9, 5, buffer_docs=1).tolist() == [[9, 1, 2, 9, 3], [9, 4, 5, 6, 7], [9, 8, 9, 1, 1]]


def test_bos_aligned_layout_rows_start_documents(shards):
    _, files = shards
    ld = TokenLoader(files, 2, 16, rank=0, world_size=2, layout="bos_aligned", eot_id=EOT, seed=3)
    packed = [pack_bos_bestfit(np.fromfile(f, dtype="<u2", offset=1024), EOT, 17) for f in files]
    rows = {tuple(r) for p in packed for r in p}
    for _ in range(4):
        x, y = ld.next_batch()
        assert x.shape == (2, 16) and (x[:, 0] == EOT).all() and torch.equal(x[:, 1:], y[:, :-1])
        assert all(tuple(np.append(x[b].numpy(), y[b, -1].item())) in rows for b in range(2))
    with pytest.raises(ValueError, match="eot_id"):
        TokenLoader(files, 2, 16, layout="bos_aligned")


def test_record_val_layout(shards):
    """val_batches with B=1 and T = the record's val_seq_len per rank is the record's val loader
    (contiguous per rank, from the start of the val shard): here 2 ranks, T=128."""
    d, _ = shards
    val = [d / "val_000000.bin"]
    for rank in range(2):
        ref = _record_stream(val, 2 * 128, rank, 2)
        for x, y in val_batches(val, 1, 128, rank=rank, world_size=2, max_tokens=3 * 256):
            rx, ry = next(ref)
            assert np.array_equal(x[0].numpy(), rx) and np.array_equal(y[0].numpy(), ry)


def test_long_val_sequences_chunked_loss_equals_full(monkeypatch):
    m = tiny(**RECORD, max_seq_len=256)
    idx, tgt = torch.randint(0, V, (1, 200)), torch.randint(0, V, (1, 200))
    tgt[0, :5] = -100
    with torch.no_grad():
        full = m(idx, tgt, reduction="none")
        monkeypatch.setattr(model_mod, "EVAL_CHUNK_TOKENS", 37)
        torch.testing.assert_close(m(idx, tgt, reduction="none"), full)
        torch.testing.assert_close(m(idx, tgt), full[0, 5:].mean())
    with pytest.raises(ValueError, match="exceeds"):
        m(torch.zeros(1, 257, dtype=torch.long))
    with pytest.raises(model_mod.ModelConfigError, match="attn_off_layers"):
        tiny(attn_off_layers=(12,))


def test_speedrun_yaml_names_the_record_and_sets_its_values():
    path = paths.PARAMS_DIR / "speedrun_8xh100.yaml"
    text = path.read_text()
    assert "#21" in text and "2025-01-26" in text and "Jan 27 16:55:02 2025" in text
    p = next(c for c in launch.load_plan(path)["chapters"] if c["notebook"] == "04_train")["parameters"]
    assert (p["num_steps"], p["window_ramp"], p["loader_layout"]) == (1770, "record", "stream")
    assert p["batch_size"] * p["seq_len"] * 8 == 8 * 48 * 1024
    assert (p["val_tokens"], p["val_seq_len"], p["val_batch_size"]) == (10485760, 4 * 64 * 1024, 1)
    assert p["val_tokens"] % (8 * p["val_seq_len"]) == 0
    opts = dict(p["model_options"])
    assert opts.pop("fp8_head") is True
    assert opts.pop("window_blocks") == 128  # the record's 128-token block masks
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()} == RECORD


# ---------------------------------------------------------------- the later records' optimiser switches
def test_polar_express_by_hand_and_closer_to_orthogonal_than_newton_schulz():
    torch.manual_seed(0)
    G = torch.randn(48, 160) * torch.logspace(0, -3, 48)[:, None]  # singular values over 3 decades
    X = G / (G.norm() * 1.02 + 1e-6)
    for a, b, c in optim.POLAR_EXPRESS_COEFFS:
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    torch.testing.assert_close(optim.polar_express(G), X, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(optim.polar_express(G.T), X.T, rtol=1e-4, atol=1e-5)  # tall: via the wide side
    pe, ns = torch.linalg.svdvals(X), torch.linalg.svdvals(optim.newton_schulz(G))
    assert (pe - 1).abs().max() < (ns - 1).abs().max()  # per-iteration coefficients land nearer 1
    assert (pe - 1).abs().median() < 0.15


def test_normuon_by_hand():
    torch.manual_seed(0)
    O = torch.randn(3, 6, 4)  # tall: one second moment per row
    buf = torch.zeros(3, 6, 1)
    out = optim.normuon_normalize(O, buf, beta2=0.9)
    m = 0.1 * O.square().mean(dim=-1, keepdim=True)
    torch.testing.assert_close(buf, m)
    ref = O / m.sqrt()
    ref = ref * O.norm(dim=(-2, -1), keepdim=True) / ref.norm(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(out, ref)
    row_rms = out.square().mean(dim=-1)  # rows now have equal mean squares within each matrix
    torch.testing.assert_close(row_rms, row_rms[..., :1].expand_as(row_rms))
    wide = torch.zeros(1, 6)
    optim.normuon_normalize(torch.randn(4, 6), wide, 0.9)  # wide: one per column
    assert (wide > 0).all()


def test_muon_cautious_weight_decay_and_normuon_steps_by_hand():
    torch.manual_seed(3)
    W = torch.nn.Parameter(torch.randn(8, 24))
    W0 = W.detach().clone()
    opt = optim.Muon([W], lr=0.1, momentum=0.9, weight_decay=0.5, cautious_wd=True, normuon=True, beta2=0.8,
                     orthogonalizer="polar_express")
    g = torch.randn(8, 24)
    W.grad = g.clone()
    opt.step()
    u = g.lerp(0.1 * g, 0.9)
    O = optim.normuon_normalize(optim.polar_express(u), torch.zeros(1, 24), 0.8)  # scale 1 (wide)
    mask = (O * W0) >= 0
    torch.testing.assert_close(W.detach(), W0 - 0.1 * 0.5 * mask * W0 - 0.1 * O, rtol=1e-5, atol=1e-6)
    assert 0 < mask.float().mean() < 1  # some weights decayed, some not
    assert opt.state[W]["second_moment"].shape == (1, 24)
    with pytest.raises(ValueError, match="orthogonalizer"):
        optim.Muon([W], orthogonalizer="svd")


# ---------------------------------------------------------------- 04 with every new switch on
@pytest.mark.slow
def test_04_runs_with_the_record_layout_and_the_new_switches(tmp_path, tiny_data, runs_dir):
    from test_train import _outputs, _train

    out = _train(tmp_path, tiny_data, name="rec", batch_size=2, batch_stages=[1, 2], seq_len=128, num_steps=4, val_interval=2,
                 val_tokens=1024, val_seq_len=256, val_batch_size=1, val_layout="bos_aligned", loader_layout="stream",
                 window_ramp="record",
                 window_min=32, window_max=128, window_block=32, muon_orthogonalizer="polar_express", normuon=True,
                 muon_cautious_wd=True, muon_weight_decay=0.1, adam_weight_decay=0.01, adam_cautious_wd=True,
                 model_options={"qkv_split": True, "learn_attn_scale": False, "attn_off_layers": [1], "v_lambda": True,
                                "mtp_tokens": 2, "tie_until": 0.5, "window_blocks": 32})
    (run,) = runs_dir.glob("*_rec")
    s = json.loads((run / "summary.json").read_text())
    cfg = s["model_config"]
    assert cfg["max_seq_len"] == 256 and cfg["attn_off_layers"] == [1] and cfg["qkv_split"] is True
    assert s["final"]["steps"] == 4 and math.isfinite(s["final"]["val_loss"])
    # batch_stages [1, 2]: steps 1-2 take 1 row of 128 tokens, steps 3-4 two (the second half of training)
    rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r["train_loss"]]
    assert [int(r["tokens"]) for r in rows] == [128, 256, 512, 768] and s["final"]["tokens_seen"] == 768
    assert cfg["window_blocks"] == 32
    text, _ = _outputs(out)
    assert "loader layout 'stream'; validation (bos_aligned)" in text and "(1, 256) per rank = 1,024 tokens" in text
    assert "x: (B, T) = (2, 128)" in text and "DecoupledAdam" in text
    blob = torch.load(sorted((run / "checkpoints").glob("step_*.pt"))[-1], map_location="cpu", weights_only=False)
    sd = blob["model"]
    assert not bool(sd["tied"])  # untied at half-way by progress_of -> set_progress
    assert not torch.equal(sd["embed.weight"], sd["head.weight"][:sd["embed.weight"].shape[0]])  # trained apart since


# ---------------------------------------------------------------- the later records' model and schedule switches
def test_window_stages():
    ws = [optim.window_size(p / 12, 128, 1792, 128, ramp="stages", stages=(384, 896, 1408)) for p in range(13)]
    assert ws == [384] * 4 + [896] * 4 + [1408] * 5
    assert optim.window_size(0.5, 128, 512, 128, ramp="stages", stages=(100, 700)) == 512  # block-rounded, capped
    with pytest.raises(ValueError, match="needs stages"):
        optim.window_size(0.5, ramp="stages")


def test_mtp_weights_are_the_records_schedule():
    def record(x):  # the 2025-12-22 record's schedule for 3 predicted tokens
        if x < 1 / 3:
            return [1.0, 0.5, 0.25 * (1 - 3 * x)]
        if x < 2 / 3:
            return [1.0, 0.5 * (1 - (3 * x - 1))]
        return [1.0]
    for s in range(0, 1001, 7):
        assert model_mod.mtp_weights(s / 1000, 3) == pytest.approx(record(s / 1000))
    assert model_mod.mtp_weights(0.3, 1) == [1.0]


def test_multi_token_loss_by_hand():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 6, 11), torch.randint(0, 11, (2, 6))
    w = [1.0, 0.5, 0.2]
    lse = logits.logsumexp(-1)  # (B, T)
    ref = 0.0
    for k, wk in enumerate(w):  # position t scored against targets[t + k], where that exists
        ce = lse[:, :6 - k] - logits[:, :6 - k].gather(-1, targets[:, k:, None])[..., 0]
        ref += wk * ce.mean()
    torch.testing.assert_close(model_mod.multi_token_loss(logits, targets, w), ref)
    m = tiny(mtp_tokens=3)
    idx, tgt = torch.randint(0, V, (2, 64)), torch.randint(0, V, (2, 64))
    m.set_progress(0.0)
    with torch.no_grad():
        lg = m(idx)
        torch.testing.assert_close(m(idx, tgt), model_mod.multi_token_loss(lg, tgt, [1.0, 0.5, 0.25]))
        m.eval()  # validation: next token only
        torch.testing.assert_close(m(idx, tgt), model_mod.multi_token_loss(lg, tgt, [1.0]))


def test_tie_until_ties_then_unties_and_resumes_untied():
    m = tiny(tie_until=0.5)
    assert m.tied_now and m.head.weight.abs().max() > 0  # tied: the head's rows start small, not zero
    idx = torch.randint(0, V, (2, 64))
    m(idx, idx).backward()
    assert m.embed.weight.grad is None and m.head.weight.grad[:V].abs().sum() > 0  # lookups train the head
    m.set_progress(0.4)
    assert m.tied_now
    m.set_progress(0.5)
    assert not m.tied_now and torch.equal(m.embed.weight, m.head.weight[:V])
    m.zero_grad()
    m(idx, idx).backward()
    assert m.embed.weight.grad.abs().sum() > 0
    again = tiny(tie_until=0.5)
    again.load_state_dict(m.state_dict())
    assert not again.tied_now  # a resumed run stays untied; set_progress copies nothing
    again.set_progress(0.9)
    assert torch.equal(again.embed.weight, m.embed.weight)
    with pytest.raises(model_mod.ModelConfigError, match="tie_until"):
        tiny(tie_until=1.5)


def test_fp8_mlp_guarded_and_close_to_full_precision(caplog):
    m = tiny(fp8_mlp=True)
    assert m.config["fp8_mlp"] is False and "Hopper" in caplog.text  # no CUDA here: plain matmuls
    torch.manual_seed(0)
    mlp = model_mod.MLP(32, 128, fp8=True)
    ref = model_mod.MLP(32, 128)
    ref.load_state_dict(mlp.state_dict())
    x = torch.randn(4, 16, 32, requires_grad=True)
    y = mlp(x)  # the FP8 path (torch._scaled_mm also runs on CPU)
    y_ref = ref(x)
    assert (y - y_ref).norm() / y_ref.norm() < 0.1 and y.dtype == x.dtype
    y.square().sum().backward()
    g = mlp.fc.weight.grad
    ref.zero_grad()
    y_ref.square().sum().backward()
    assert (g - ref.fc.weight.grad).norm() / ref.fc.weight.grad.norm() < 0.15
    mlp.eval()
    torch.testing.assert_close(mlp(x), ref(x))  # evaluation stays in full precision


def test_speedrun_2026_yaml_names_its_record_and_only_it_turns_the_tricks_on():
    sets = {p.stem: launch.load_plan(p) for p in paths.PARAMS_DIR.glob("*.yaml")}
    assert "#84" in (paths.PARAMS_DIR / "speedrun_2026_8xh100.yaml").read_text()
    tricks = {"muon_orthogonalizer": "newton_schulz", "normuon": False, "muon_cautious_wd": False,
              "window_ramp": ("linear", "record")}
    model_tricks = ("mtp_tokens", "tie_until", "fp8_mlp")
    for name, plan in sets.items():
        p = next((c["parameters"] for c in plan["chapters"] if c["notebook"] == "04_train"), {})
        on = name == "speedrun_2026_8xh100"
        for k, off in tricks.items():
            v = p.get(k, off[0] if isinstance(off, tuple) else off)
            assert (v not in (off if isinstance(off, tuple) else (off,))) == on, (name, k)
        opts = p.get("model_options") or {}
        assert all((k in opts) == on for k in model_tricks), name
    p = next(c["parameters"] for c in sets["speedrun_2026_8xh100"]["chapters"] if c["notebook"] == "04_train")
    assert p["model_options"]["mtp_tokens"] == 3 and p["window_stages"] == [384, 896, 1408]


def test_bench_train_can_switch_each_option_on():
    from nbcore import bench_train
    from nbcore.bench import main  # noqa: F401  (the CLI that registers --set)

    o = bench_train.gpt_overrides(["normuon=true", "muon_orthogonalizer=polar_express", "window_stages=[64, 128]",
                                   "model_options.mtp_tokens=3", "model_options.qkv_split=true"])
    assert o == {"normuon": True, "muon_orthogonalizer": "polar_express", "window_stages": [64, 128],
                 "model_options": {"mtp_tokens": 3, "qkv_split": True}}
    plan = launch.apply_overrides(launch.load_plan(paths.PARAMS_DIR / "shakespeare_cpu.yaml"), o)
    assert next(c for c in plan["chapters"] if c["notebook"] == "04_train")["parameters"]["normuon"] is True
    with pytest.raises(ValueError, match="NAME=VALUE"):
        bench_train.gpt_overrides(["normuon"])


def test_untied_embedding_continues_the_heads_adam_state():
    m = tiny(tie_until=0.5)
    groups = {g["name"]: g["params"] for g in m.configure_optimizers()}
    assert any(p is m.embed.weight for p in groups["head"])  # trains like the head (record #84)
    assert not any(p is m.embed.weight for p in groups["embed"])
    opts = optim.build_optimizers(m.configure_optimizers(), optim.default_lrs("gpt"))
    idx = torch.randint(0, V, (2, 64))
    for _ in range(2):
        m(idx, idx).backward()
        optim.step_all(opts)
        optim.zero_grad(opts)
    assert m.embed.weight not in opts[1].state  # tied: the embedding never stepped
    assert m.set_progress(0.5) and not m.set_progress(0.6)  # True once, at the untying
    assert optim.copy_state(opts, m.head.weight, m.embed.weight)
    st, sh = opts[1].state[m.embed.weight], opts[1].state[m.head.weight]
    assert torch.equal(st["exp_avg"], sh["exp_avg"][:V]) and st["exp_avg"].shape == m.embed.weight.shape
    assert st["exp_avg"] is not sh["exp_avg"] and int(st["step"]) == 2


def test_bos_aligned_val_layout(shards):
    d, _ = shards
    val = [d / "val_000000.bin"]
    toks = np.fromfile(val[0], dtype="<u2", offset=1024)
    toks[::37] = EOT  # documents in the val shard
    write_shard(val[0], toks, V)
    packed = pack_bos_bestfit(toks, EOT, 17)
    from nbcore.loader import IGNORE, val_batch_count
    n = val_batch_count(val, 2, 16, 2, layout="bos_aligned", eot_id=EOT)
    assert n == -(-len(packed) // 4)  # the whole split: every packed row, the last batch padded
    per_rank = [list(val_batches(val, 2, 16, rank=r, world_size=2, layout="bos_aligned", eot_id=EOT)) for r in range(2)]
    for k in range(n):
        x = torch.cat([per_rank[r][k][0] for r in range(2)])  # the global batch: 4 packed rows in order
        y = torch.cat([per_rank[r][k][1] for r in range(2)])
        real = min(4, len(packed) - 4 * k)
        assert torch.equal(x[:real], torch.from_numpy(packed[4 * k:4 * k + real, :-1].astype(np.int64)))
        assert (x[:real, 0] == EOT).all() and (y[real:] == IGNORE).all()
    with pytest.raises(ValueError, match="eot_id"):
        list(val_batches(val, 2, 16, layout="bos_aligned"))

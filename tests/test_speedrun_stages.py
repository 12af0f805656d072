"""The last three record switches of issue 17, each against a by-hand computation on CPU:

- block-granular sliding windows (`model_options.window_blocks`): the Jan-2025 record's FlexAttention
  block masks, rebuilt here from its create_block_masks (KV blocks nearest first, full ones capped at
  n - 1, partial ones at max(n - full, 1)), against our mask rule;
- cautious weight decay on Adam (`adam_cautious_wd`, the 2025-12-18 record): one step by hand;
- the batch-size schedule by stage (`batch_stages`, the 2026 records' 8 -> 16 -> 24): stage boundaries,
  the loader's rows per step, a state round trip at a later stage, and the recompiles a new B costs.
"""
import math

import numpy as np
import pytest
import torch

from nbcore import attention, launch, optim, paths
from nbcore.loader import TokenLoader
from nbcore.model import ModelConfigError, build_model
from nbcore.shards import write_shard

V, EOT = 64, 63


# ---------------------------------------------------------------- block-granular windows
def _record_block_mask(docs: torch.Tensor, n: int, blk: int) -> torch.Tensor:
    """The record's create_block_masks at block size `blk` for a window of n blocks: (T,) docs -> (T, T) bool.

    Per query block: KV blocks that are all causal and all one document ("full") or only partly so
    ("partial", the diagonal and document edges), each listed nearest first; it keeps the first
    min(full, n - 1) full blocks and min(partial, max(n - full, 1)) partial ones, where the
    document-causal rule applies inside."""
    T = len(docs)
    nb = T // blk
    bi = torch.arange(nb)
    lo, hi = docs.view(nb, blk)[:, 0], docs.view(nb, blk)[:, -1]
    any_bm = (bi[:, None] >= bi) & (lo[:, None] <= hi) & (hi[:, None] >= lo)
    all_bm = (bi[:, None] > bi) & (lo[:, None] == hi) & (hi[:, None] == lo)
    keep = torch.zeros(nb, nb, dtype=torch.bool)
    for q in range(nb):
        full = [k for k in range(q, -1, -1) if all_bm[q, k]]
        partial = [k for k in range(q, -1, -1) if any_bm[q, k] and not all_bm[q, k]]
        for k in full[:max(n - 1, 0)] + partial[:max(n - len(full), 1)]:
            keep[q, k] = True
    tok = keep.repeat_interleave(blk, 0).repeat_interleave(blk, 1)
    i = torch.arange(T)
    return tok & (i[:, None] >= i) & (docs[:, None] == docs)


def test_block_windows_are_the_records_block_masks():
    blk, T = 8, 64
    m = build_model("gpt", V, 4, 2, 32, T, device="cpu", eot_id=EOT, window_blocks=blk)
    idx = torch.randint(0, EOT, (2, T), generator=torch.Generator().manual_seed(0))
    idx[0, [5, 30, 31, 47]] = EOT  # documents starting inside blocks, and a one-token document
    idx[1, [16, 40]] = EOT  # documents starting on block edges
    docs = attention.document_ids(idx, EOT)
    long_layer, short_layer = m.long_layers.index(True), m.long_layers.index(False)
    for window in (8, 16, 24, 30, 40, 64):  # 30 tokens: 3 whole blocks
        n = window // blk
        assert m.windows(window) == (n * blk, max(1, n // 2) * blk)
        masks = m.layer_masks(idx, window)  # the SDPA path's dense masks (B, 1, T, T)
        for b in range(2):
            torch.testing.assert_close(masks[long_layer][b, 0], _record_block_mask(docs[b], n, blk))
            torch.testing.assert_close(masks[short_layer][b, 0], _record_block_mask(docs[b], max(1, n // 2), blk))
    # a query at the end of a block sees up to n·blk keys, one at its start (n-1)·blk + 1: not token-exact
    rule = attention.dense_mask(attention.mask_rule(None, 24, blk), 1, T, T)[0, 0]
    assert rule[31].sum() == 24 and rule[24].sum() == 17
    assert attention.dense_mask(attention.mask_rule(None, 24), 1, T, T)[0, 0][24].sum() == 24
    # the records' short windows: max(1, long blocks // 2) -- 3 -> 1, 7 -> 3, 11 -> 5, 13 -> 6 blocks of 128
    rec = build_model("gpt", V, 4, 2, 32, 2048, device="meta", window_blocks=128)
    assert [rec.windows(128 * n)[1] // 128 for n in (1, 3, 7, 11, 13)] == [1, 1, 3, 5, 6]
    assert build_model("gpt", V, 4, 2, 32, 2048, device="meta").windows(384)[1] == 192  # off: token-exact half
    with pytest.raises(ModelConfigError, match="window_blocks"):
        build_model("gpt", V, 4, 2, 32, T, device="meta", window_blocks=True)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # eager flex on CPU, on purpose
def test_block_windows_flex_equals_sdpa_and_decoding_uses_the_same_rule():
    kw = dict(device="cpu", eot_id=EOT, window_blocks=8, window_long=24, seed=1, zero_init=False)  # 3 blocks, 1
    sdpa = build_model("gpt", V, 2, 2, 32, 64, attn_backend="sdpa", **kw).eval()
    flex = build_model("gpt", V, 2, 2, 32, 64, attn_backend="flex", **kw).eval()
    exact = build_model("gpt", V, 2, 2, 32, 64, attn_backend="sdpa", **dict(kw, window_blocks=0)).eval()
    idx = torch.randint(0, EOT, (1, 64), generator=torch.Generator().manual_seed(2))
    idx[0, 21] = EOT
    with torch.no_grad():
        ref = sdpa(idx)  # (1, T, V)
        torch.testing.assert_close(flex(idx), ref, rtol=1e-4, atol=1e-4)  # FlexAttention's block mask
        assert (exact(idx) - ref).abs().max() > 1e-3  # token-exact windows attend differently
        cache = attention.KVCache(2)  # decoding token by token: the same rule on absolute positions
        steps = [sdpa.step(idx[:, :40], cache)] + [sdpa.step(idx[:, t:t + 1], cache) for t in range(40, 64)]
    torch.testing.assert_close(torch.cat(steps, dim=1)[0], ref[0, 39:], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- cautious weight decay on Adam
def test_adam_cautious_weight_decay_by_hand():
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(6, 5))
    s = torch.nn.Parameter(torch.randn(3))
    groups = [{"name": "embed", "optimizer": "adam", "params": [W], "weight_decay": True},
              {"name": "scalars", "optimizer": "adam", "params": [s], "weight_decay": False}]
    lrs = {"embed": 0.1, "scalars": 0.1}
    (opt,) = optim.build_optimizers(groups, lrs, adam_weight_decay=0.5, adam_cautious_wd=True)
    assert isinstance(opt, optim.DecoupledAdam) and [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    W0, s0 = W.detach().clone(), s.detach().clone()
    m = torch.zeros_like(W0)
    v = torch.zeros_like(W0)
    b1, b2, eps, lr, wd = 0.8, 0.95, 1e-10, 0.1, 0.5
    for t in (1, 2):  # two steps by hand: the record's Adam, then the decay where the step and W agree in sign
        g = torch.randn(6, 5)
        W.grad, s.grad = g.clone(), torch.ones(3)
        opt.step()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
        mask = (u * W0) >= 0
        W0 = W0 - lr * wd * mask * W0 - u
        torch.testing.assert_close(W.detach(), W0, rtol=1e-5, atol=1e-6)
        assert 0 < mask.float().mean() < 1  # some weights decayed, some not
    torch.testing.assert_close(s.detach(), s0 - 2 * 0.1 * torch.ones(3), rtol=1e-4, atol=1e-5)  # no decay
    # not cautious: AdamW's decoupled decay, the same as torch.optim.AdamW
    A = torch.nn.Parameter(W0.clone())
    B_ = torch.nn.Parameter(W0.clone())
    (ours,) = optim.build_optimizers([dict(groups[0], params=[A])], lrs, adam_weight_decay=0.5)
    ref = torch.optim.AdamW([B_], lr=0.1, betas=(b1, b2), eps=eps, weight_decay=0.5)
    for _ in range(2):
        g = torch.randn(6, 5)
        A.grad, B_.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(A.detach(), B_.detach())
    assert ours.param_groups[0]["weight_decay"] == 0.5  # kept for describe() and checkpoints


def test_gpt_adam_groups_decay_only_when_asked():
    m = build_model("gpt", V, 2, 2, 16, 32, device="cpu")
    opts = optim.build_optimizers(m.configure_optimizers(), optim.default_lrs("gpt"))
    assert [type(o).__name__ for o in opts] == ["Muon", "Adam"]  # default: plain Adam, as before
    opts = optim.build_optimizers(m.configure_optimizers(), optim.default_lrs("gpt"), adam_weight_decay=0.01,
                                  adam_cautious_wd=True)
    wd = {r["group"]: r["weight_decay"] for r in optim.describe(opts)}
    assert wd == {"hidden_matrices": 0.0, "embed": 0.01, "head": 0.01, "scalars": 0.0}  # as the records: not scalars
    assert opts[1].cautious


# ---------------------------------------------------------------- batch-size schedule by stage
def test_batch_stages_share_the_window_stages_boundaries():
    bs = [optim.batch_size_at(p / 12, [8, 16, 24], 24) for p in range(13)]
    ws = [optim.window_size(p / 12, 128, 1792, 128, ramp="stages", stages=(384, 896, 1408)) for p in range(13)]
    assert bs == [8] * 4 + [16] * 4 + [24] * 5
    assert [bs.index(b) for b in (8, 16, 24)] == [ws.index(w) for w in (384, 896, 1408)]
    assert optim.batch_size_at(0.7, [], 5) == 5  # off: the run's B
    # at num_steps=1485 the stages start at steps 0, 495 and 990 (progress = step / num_steps)
    starts = [next(s for s in range(1486) if optim.batch_size_at(s / 1485, [8, 16, 24], 24) == b) for b in (8, 16, 24)]
    assert starts == [0, 495, 990]


@pytest.fixture
def stream_shards(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for i, n in enumerate([1000, 700]):
        toks = rng.integers(0, EOT, size=n)
        files.append(write_shard(tmp_path / f"train_{i + 1:06d}.bin", toks, V))
    return files


@pytest.mark.parametrize("layout", ["stream", "rows"])
def test_loader_serves_each_stages_batch_and_resumes_mid_schedule(stream_shards, layout):
    T, W, Bmax = 16, 2, 3
    schedule = [1] * 5 + [2] * 5 + [3] * 8  # rows per rank at each step
    runs = {r: TokenLoader(stream_shards, Bmax, T, rank=r, world_size=W, layout=layout, seed=4, verbose=False)
            for r in range(W)}
    got = {r: [runs[r].next_batch(b) for b in schedule] for r in range(W)}
    assert [x.shape for x, _ in got[0]] == [(b, T) for b in schedule]
    if layout == "stream":  # by hand: one token stream; step k takes the next W·b rows, rank r its b of them
        toks = np.fromfile(stream_shards[0], dtype="<u2", offset=1024).astype(np.int64)
        usable = (len(toks) - 2) // (W * Bmax * T) * (W * Bmax * T)  # whole largest batches per shard
        pos = 0
        for k, b in enumerate(schedule):
            if pos + W * b * T > usable:
                toks = np.fromfile(stream_shards[1], dtype="<u2", offset=1024).astype(np.int64)
                usable, pos = (len(toks) - 2) // (W * Bmax * T) * (W * Bmax * T), 0
            for r in range(W):
                start = pos + r * b * T
                want = np.stack([toks[start + i * T:start + (i + 1) * T + 1] for i in range(b)])
                x, y = got[r][k]
                assert np.array_equal(x.numpy(), want[:, :-1]) and np.array_equal(y.numpy(), want[:, 1:]), (k, r)
            pos += W * b * T
    # b = B at every step: exactly the unscheduled loader
    plain = TokenLoader(stream_shards, Bmax, T, rank=1, world_size=W, layout=layout, seed=4, verbose=False)
    same = TokenLoader(stream_shards, Bmax, T, rank=1, world_size=W, layout=layout, seed=4, verbose=False)
    assert all(torch.equal(plain.next_batch()[0], same.next_batch(Bmax)[0]) for _ in range(9))
    # a state saved at a later stage (step 7, b = 2): a new loader continues with the same rows
    a = TokenLoader(stream_shards, Bmax, T, rank=1, world_size=W, layout=layout, seed=4, verbose=False)
    for b in schedule[:7]:
        a.next_batch(b)
    state = a.state_dict()
    b_ = TokenLoader(stream_shards, Bmax, T, rank=1, world_size=W, layout=layout, seed=4, verbose=False)
    b_.load_state_dict(state)
    for k, b in enumerate(schedule[7:], start=7):
        assert torch.equal(b_.next_batch(b)[0], got[1][k][0]), k
    with pytest.raises(ValueError, match="largest B"):
        a.next_batch(Bmax + 1)


def test_old_loader_states_resume_at_their_block(stream_shards):
    a = TokenLoader(stream_shards, 2, 16, seed=1, verbose=False)
    for _ in range(3):
        a.next_batch()
    state = a.state_dict()
    assert state["row_pos"] == 3 * 2 * 1 and state["block_pos"] == 3
    del state["row_pos"]  # as saved before row positions: block_pos counts whole global batches
    b = TokenLoader(stream_shards, 2, 16, seed=1, verbose=False)
    b.load_state_dict(state)
    assert torch.equal(a.next_batch()[0], b.next_batch()[0])


def test_a_new_batch_size_costs_one_recompile_then_none(monkeypatch):
    """Compiled blocks (aot_eager: Dynamo's graphs and guards, no kernels) warmed up at the largest B,
    then the stages' B: the first new B recompiles once (Dynamo makes the batch dimension dynamic),
    the later stages reuse that graph; B = 1 is a size Dynamo always specialises: one more graph.
    (With more layers, the first block, whose input is a view of x0, gets its own graph too.)
    04 compiles them all before the clock starts."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("NBCORE_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    m = build_model("gpt", V, 1, 1, 16, 16, device="cpu", compile=True, attn_backend="sdpa", eot_id=EOT)

    def graphs_after(bs):
        counters.clear()
        for b in bs:
            x = torch.randint(0, EOT, (b, 16))
            m(x, x, window=8).backward()
        return counters["stats"]["unique_graphs"]

    assert graphs_after([24]) == 1  # the warm-up's batch
    assert graphs_after([8]) == 1  # stage 1: a new B, one recompile (the batch dimension now dynamic)
    assert graphs_after([16, 24, 8, 16]) == 0  # later stages and a resumed run: no more
    assert graphs_after([1]) == 1  # B = 1: one graph of its own
    assert graphs_after([1, 2, 24]) == 0
    torch._dynamo.reset()


def test_speedrun_sets_turn_the_new_switches_on_only_where_their_record_does():
    sets = {p.stem: launch.load_plan(p) for p in paths.PARAMS_DIR.glob("*.yaml")}

    def p04(name):
        return next((c["parameters"] for c in sets[name]["chapters"] if c["notebook"] == "04_train"), {})
    for name in sets:
        p = p04(name)
        opts = p.get("model_options") or {}
        assert bool(p.get("batch_stages")) == (name == "speedrun_2026_8xh100"), name
        assert bool(p.get("adam_cautious_wd")) == (name == "speedrun_2026_8xh100"), name
        assert opts.get("window_blocks", 0) == (128 if name == "speedrun_8xh100" else 0), name
    p = p04("speedrun_2026_8xh100")
    # #84: 8, 16, 24 sequences of 2048 per rank (x 8 ranks) in the same three stages as its windows
    assert p["batch_stages"] == [8, 16, 24] and p["seq_len"] == 2048 and int(p["batch_size"]) == 24
    assert len(p["batch_stages"]) == len(p["window_stages"])
    assert p["adam_weight_decay"] > 0


def test_forecast_counts_the_tokens_of_each_batch_stage():
    from nbcore import forecast

    plan = launch.load_plan(paths.PARAMS_DIR / "speedrun_2026_8xh100.yaml")
    r = forecast.forecast_run(plan, "H100-SXM", 8, rows=[])
    assert r["batch_size"] == 24 and r["batch_from"] == "batch_stages" and r["tokens_per_step"] == 8 * 24 * 2048
    assert r["steps"] == 1770 and r["tokens"] == 590 * (8 + 16 + 24) * 8 * 2048  # three stages of 590 steps
    assert "(the largest batch stage)" in forecast.format_forecast(forecast.forecast(
        paths.PARAMS_DIR / "speedrun_2026_8xh100.yaml", "H100", gpus=8))
    # under a time budget each stage runs a third of it: more, smaller steps early, the same tokens per second
    timed = forecast.forecast_run(launch.apply_overrides(plan, {"num_steps": 0, "max_seconds": 300.0}),
                                  "H100-SXM", 8, rows=[])
    per_s = 989e12 * 0.35 * 8 / r["flops_per_token"]
    stage_steps = [math.ceil(100 * per_s / (8 * b * 2048)) for b in (8, 16, 24)]
    assert timed["stops_by"] == "max_seconds" and timed["steps"] == sum(stage_steps)
    assert timed["tokens"] == sum(n * 8 * b * 2048 for n, b in zip(stage_steps, (8, 16, 24)))

"""Muon, the optimiser builder and the schedules (nbcore.optim); distributed Muon over 2 gloo ranks."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from nbcore import dist, optim


def _svd_polar(G):
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return (U @ Vh).float()


@pytest.mark.parametrize("shape", [(32, 32), (16, 48), (48, 16), (3, 8, 24)])
def test_newton_schulz_orthogonalises_and_keeps_shape(shape):
    torch.manual_seed(0)
    G = torch.randn(shape)
    X = optim.newton_schulz(G, steps=5)
    assert X.shape == G.shape and X.dtype == G.dtype
    s = torch.linalg.svdvals(X)
    # the quintic is tuned for speed: singular values land near 1, not exactly on it
    assert s.min() > 0.5 and s.max() < 1.3, s
    # same singular vectors as the exact polar factor U V^T
    cos = torch.nn.functional.cosine_similarity(X.reshape(-1), _svd_polar(G).reshape(-1), dim=0)
    assert cos > 0.97


def test_newton_schulz_batch_equals_one_by_one():
    torch.manual_seed(1)
    G = torch.randn(4, 12, 20)
    batched = optim.newton_schulz(G)
    single = torch.stack([optim.newton_schulz(g) for g in G])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def test_newton_schulz_rejects_vectors():
    with pytest.raises(ValueError, match="matrix"):
        optim.newton_schulz(torch.randn(5))


def test_muon_scale_rules():
    assert optim.muon_scale((64, 16)) == 2.0  # sqrt(rows/cols) for tall
    assert optim.muon_scale((16, 64)) == 1.0
    assert optim.muon_scale((16, 64), "rms") == pytest.approx(0.2 * 8)
    assert optim.muon_scale((16, 64), "none") == 1.0
    with pytest.raises(ValueError, match="scale rule"):
        optim.muon_scale((2, 2), "bogus")


def test_muon_step_matches_hand_computation():
    torch.manual_seed(2)
    W = torch.nn.Parameter(torch.randn(24, 8))
    W0 = W.detach().clone()
    opt = optim.Muon([W], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    grads = [torch.randn(24, 8) for _ in range(3)]
    buf = torch.zeros(24, 8)
    ref = W0.clone()
    for g in grads:
        W.grad = g.clone()
        opt.step()
        buf = 0.9 * buf + 0.1 * g
        u = g + 0.9 * (buf - g)
        ref = ref * (1 - 0.1 * 0.01) - 0.1 * optim.newton_schulz(u) * (24 / 8) ** 0.5
    torch.testing.assert_close(W.detach(), ref, rtol=1e-5, atol=1e-6)


def test_muon_rejects_vectors_and_bad_momentum():
    with pytest.raises(ValueError, match="Adam"):
        optim.Muon([torch.nn.Parameter(torch.randn(4))])
    with pytest.raises(ValueError, match="momentum"):
        optim.Muon([torch.nn.Parameter(torch.randn(4, 4))], momentum=1.0)


class TinyGPTLike(torch.nn.Module):
    """Stand-in with the model contract's configure_optimizers() shape (speedrun groups)."""

    def __init__(self, V=17, D=8):
        super().__init__()
        self.embed = torch.nn.Embedding(V, D)
        self.w1 = torch.nn.Linear(D, 2 * D, bias=False)
        self.w2 = torch.nn.Linear(2 * D, D, bias=False)
        self.head = torch.nn.Linear(D, V, bias=False)
        self.gain = torch.nn.Parameter(torch.ones(2))

    def forward(self, idx, targets):
        x = self.embed(idx)
        x = x + self.w2(torch.relu(self.w1(x)).square()) * self.gain[0]
        logits = self.head(x * self.gain[1])
        return torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def configure_optimizers(self):
        return [{"name": "hidden_matrices", "optimizer": "muon", "params": [self.w1.weight, self.w2.weight],
                 "weight_decay": 0.0},
                {"name": "embed", "optimizer": "adam", "params": [self.embed.weight], "weight_decay": 0.0},
                {"name": "head", "optimizer": "adam", "params": [self.head.weight], "weight_decay": 0.0},
                {"name": "scalars", "optimizer": "adam", "params": [self.gain], "weight_decay": 0.0}]


def test_build_optimizers_speedrun_groups_and_lrs():
    m = TinyGPTLike()
    opts = optim.build_optimizers(m.configure_optimizers(), optim.default_lrs("gpt"))
    assert [type(o).__name__ for o in opts] == ["Muon", "Adam"]
    rows = {r["group"]: r for r in optim.describe(opts)}
    assert rows["hidden_matrices"]["lr"] == 0.05 and rows["embed"]["lr"] == 0.6
    assert rows["head"]["lr"] == 0.008 and rows["scalars"]["lr"] == 0.04
    assert rows["hidden_matrices"]["params"] == 2 * 8 * 16
    # every parameter is in exactly one optimiser
    ids = [id(p) for o in opts for g in o.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters())
    optim.apply_schedules(opts, 0.5, momentum=0.9)
    assert opts[0].param_groups[0]["lr"] == 0.025 and opts[0].param_groups[0]["momentum"] == 0.9
    assert opts[1].param_groups[0]["lr"] == 0.3


def test_build_optimizers_errors_name_the_group():
    m = TinyGPTLike()
    with pytest.raises(ValueError, match="'head'"):
        optim.build_optimizers(m.configure_optimizers(), {"hidden_matrices": 1, "embed": 1, "scalars": 1})
    bad = [{"name": "x", "optimizer": "sgd", "params": [m.gain]}]
    with pytest.raises(ValueError, match="sgd"):
        optim.build_optimizers(bad, {"x": 1.0})


def test_adamw_groups_for_baselines():
    lin = torch.nn.Linear(4, 4)
    groups = [{"name": "decay", "optimizer": "adamw", "params": [lin.weight], "weight_decay": 0.1},
              {"name": "no_decay", "optimizer": "adamw", "params": [lin.bias], "weight_decay": 0.0}]
    (opt,) = optim.build_optimizers(groups, optim.default_lrs("nanogpt"))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    # the model's groups say True/False; the rate comes from the builder's argument
    groups[0]["weight_decay"], groups[1]["weight_decay"] = True, False
    (opt,) = optim.build_optimizers(groups, optim.default_lrs("nanogpt"), adamw_weight_decay=0.05)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_real_model_groups_build():
    from nbcore.model import build_model

    for arch in ("gpt", "nanogpt", "llama3"):
        m = build_model(arch, 97, 2, 2, 16, 32, device="cpu")
        opts = optim.build_optimizers(m.configure_optimizers(), optim.default_lrs(arch))
        n = sum(r["params"] for r in optim.describe(opts))
        assert n == sum(p.numel() for p in m.parameters())
        wd = {r["group"]: r["weight_decay"] for r in optim.describe(opts)}
        if arch == "gpt":
            assert [type(o).__name__ for o in opts] == ["Muon", "Adam"] and wd["hidden_matrices"] == 0.0
        else:
            assert wd == {"decay": 0.1, "no_decay": 0.0}


def test_training_with_muon_lowers_the_loss():
    torch.manual_seed(3)
    m = TinyGPTLike()
    opts = optim.build_optimizers(m.configure_optimizers(), optim.default_lrs("gpt"))
    x = torch.randint(0, 17, (8, 12))
    y = (x + 1) % 17  # learnable: next id
    first = None
    for _ in range(30):
        loss = m(x, y)
        first = first if first is not None else loss.item()
        optim.zero_grad(opts)
        loss.backward()
        optim.step_all(opts)
    assert loss.item() < 0.5 * first


def test_lr_factor_stable_then_decay():
    assert optim.lr_factor(0.0) == 1.0
    assert optim.lr_factor(0.6) == 1.0  # cooldown starts at 1 - 0.4
    assert optim.lr_factor(0.8) == pytest.approx(0.5 + 0.5 * 0.1)
    assert optim.lr_factor(1.0) == pytest.approx(0.1)
    assert optim.lr_factor(2.0) == pytest.approx(0.1)  # clamped
    assert optim.lr_factor(0.05, warmup_frac=0.1) == pytest.approx(0.5)
    assert optim.lr_factor(0.9, cooldown_frac=0.0) == 1.0


def test_momentum_warmup_and_window_schedule():
    assert optim.muon_momentum(0) == pytest.approx(0.85)
    assert optim.muon_momentum(150) == pytest.approx(0.90)
    assert optim.muon_momentum(10_000) == pytest.approx(0.95)
    assert optim.muon_momentum(5, warmup_steps=0) == 0.95
    ws = [optim.window_size(p / 10) for p in range(11)]
    assert ws[0] == 128 and ws[-1] == 1792
    assert all(w % 128 == 0 for w in ws) and ws == sorted(ws)
    assert optim.window_size(0.5, 64, 256, 64) == 192


# ---------------------------------------------------------------- distributed Muon (2 gloo ranks)
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shapes():
    # 5 matrices of one shape (not a multiple of 2 ranks), 1 of another, 1 batched
    return [(12, 8)] * 5 + [(8, 20), (3, 8, 8)]


def _run_muon(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = dist.setup("cpu")
    try:
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s)) for s in _shapes()]
        opt = optim.Muon(params, lr=0.02, rank=info.rank, world_size=info.world_size)
        for step in range(3):
            g = torch.Generator().manual_seed(100 + step)
            for p in params:  # each rank sees half of the "gradient"; all_reduce_grads averages
                full = torch.randn(p.shape, generator=g)
                p.grad = full * (2.0 if rank == 0 else 0.0) if world > 1 else full
            dist.all_reduce_grads(params)
            opt.step()
        if rank == 0:
            out.put([p.detach().numpy().copy() for p in params])  # numpy: no shared-memory handles
    finally:
        dist.cleanup()


def test_distributed_muon_equals_single_process():
    ctx = mp.get_context("spawn")
    results = {}
    for world in (1, 2):
        q = ctx.Queue()
        port = _free_port()
        procs = [ctx.Process(target=_run_muon, args=(r, world, port, q)) for r in range(world)]
        for p in procs:
            p.start()
        results[world] = q.get(timeout=120)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    for a, b in zip(results[1], results[2]):
        torch.testing.assert_close(torch.from_numpy(a), torch.from_numpy(b), rtol=0, atol=0)  # same inputs, same Newton–Schulz: exact

"""Optimisers and schedules for the training chapter.

- `newton_schulz`: the quintic Newton–Schulz iteration that maps a gradient matrix G = U S V^T
  to (approximately) U V^T, in bf16 on CUDA and float32 elsewhere.
- `Muon`: SGD with Nesterov momentum whose update for each hidden matrix is orthogonalised by
  `newton_schulz` and scaled by its shape. Distributed: every rank keeps the (identical)
  momentum of every matrix, but orthogonalises only its share and all-gathers the rest.
- `build_optimizers`: the model's `configure_optimizers()` groups -> Muon / Adam / AdamW,
  one learning rate per group name (the speedrun's groupings for `gpt`, AdamW for baselines).
- Schedules as plain functions of progress in [0, 1] or of the step: `lr_factor`
  (stable, then linear decay), `muon_momentum` (warm-up 0.85 -> 0.95), `window_size`
  (sliding-window warm-up), `batch_size_at` (batch by stage), and `apply_schedules` to write
  them into the optimisers. `DecoupledAdam`: Adam with (cautious) decoupled weight decay.
"""
import math

import torch
import torch.distributed as torch_dist

# Quintic coefficients chosen (by the speedrun) to push singular values towards 1 quickly;
# they land in roughly [0.7, 1.2] after 5 steps rather than exactly 1, which trains as well.
NS_COEFFS = (3.4445, -4.7750, 2.0315)

# The speedrun's learning rates per group name (Muon for hidden matrices, Adam for the rest).
SPEEDRUN_LRS = {"hidden_matrices": 0.05, "embed": 0.6, "head": 0.008, "scalars": 0.04}
SPEEDRUN_ADAM_BETAS = (0.8, 0.95)
SPEEDRUN_ADAM_EPS = 1e-10


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype=None) -> torch.Tensor:
    """Orthogonalise the last two dims of G (..., m, n): returns X ~ U V^T, same shape and dtype.

    Works on a batch of matrices (leading dims). bf16 on CUDA (fast, accurate enough),
    float32 on CPU and MPS unless `dtype` says otherwise.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix (..., m, n), got shape {tuple(G.shape)}")
    if dtype is None:
        dtype = torch.bfloat16 if G.is_cuda else torch.float32
    a, b, c = NS_COEFFS
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:  # iterate on the wide orientation: X X^T is then the smaller (m, m) Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT  # (m, m)
        B = b * A + c * (A @ A)
        X = a * X + B @ X  # X <- a X + b (X X^T) X + c (X X^T)^2 X
    if tall:
        X = X.mT
    return X.to(G.dtype)


# Polar Express (Amsel, Persson, Musco & Gower 2025, arXiv:2505.16932): a different quintic per
# iteration, each the best for the range of singular values left after the previous ones. These
# five are the speedrun's (2025-09-29 record: 5 iterations, safety factor 2e-2, cushion 2).
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
ORTHOGONALIZERS = ("newton_schulz", "polar_express")


def polar_express(G: torch.Tensor, steps: int = 5, dtype=None, safety: float = 2e-2) -> torch.Tensor:
    """Orthogonalise the last two dims of G like `newton_schulz`, with per-iteration coefficients.

    X is scaled to Frobenius norm 1/(1 + safety) (so every singular value is below 1 even after
    bf16 rounding), then iteration i applies X <- a_i X + b_i (X X^T) X + c_i (X X^T)^2 X with
    POLAR_EXPRESS_COEFFS[i] (the last triple repeats if steps > 5). Singular values land closer
    to 1 than after Newton–Schulz's fixed quintic, in the same number of matrix products.
    """
    if G.ndim < 2:
        raise ValueError(f"polar_express needs a matrix (..., m, n), got shape {tuple(G.shape)}")
    if dtype is None:
        dtype = torch.bfloat16 if G.is_cuda else torch.float32
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * (1 + safety) + 1e-6)
    for i in range(steps):
        a, b, c = POLAR_EXPRESS_COEFFS[min(i, len(POLAR_EXPRESS_COEFFS) - 1)]
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    if tall:
        X = X.mT
    return X.to(G.dtype)


def orthogonalize(G: torch.Tensor, steps: int = 5, method: str = "newton_schulz") -> torch.Tensor:
    """`newton_schulz` or `polar_express` by name."""
    if method == "newton_schulz":
        return newton_schulz(G, steps)
    if method == "polar_express":
        return polar_express(G, steps)
    raise ValueError(f"orthogonalizer {method!r}: use one of {', '.join(ORTHOGONALIZERS)}")


def normuon_normalize(O: torch.Tensor, second_moment: torch.Tensor, beta2: float) -> torch.Tensor:
    """NorMuon (Li et al. 2025, arXiv:2510.05491): even out the orthogonalised update's rows.

    O (..., rows, cols). The mean square of O along its shorter side, per row (rows >= cols) or
    per column, updates `second_moment` (EMA with beta2, in place; shape (..., rows, 1) or
    (..., 1, cols)); O is divided by its square root and rescaled to its Frobenius norm before.
    """
    dim = -1 if O.size(-2) >= O.size(-1) else -2
    before = O.norm(dim=(-2, -1), keepdim=True)
    second_moment.lerp_(O.square().mean(dim=dim, keepdim=True).to(second_moment.dtype), 1 - beta2)
    O = O * second_moment.clamp_min(1e-10).rsqrt().to(O.dtype)
    return O * (before / O.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10))


def muon_scale(shape, rule: str = "speedrun") -> float:
    """Multiplier for an orthogonalised update of a (..., rows, cols) matrix.

    "speedrun": sqrt(max(1, rows/cols)), so tall matrices (MLP down-projections seen as
    (out, in)) get larger steps; "rms": 0.2 * sqrt(max(rows, cols)), which matches AdamW's
    update RMS (Moonshot's rule) so AdamW learning rates transfer; "none": 1.
    """
    rows, cols = shape[-2], shape[-1]
    if rule == "speedrun":
        return max(1.0, rows / cols) ** 0.5
    if rule == "rms":
        return 0.2 * max(rows, cols) ** 0.5
    if rule == "none":
        return 1.0
    raise ValueError(f"muon scale rule {rule!r}: use 'speedrun', 'rms' or 'none'")


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton–Schulz, for 2-D (or batched 2-D) hidden weights.

    Per step, for every parameter W with gradient G (already averaged over ranks):
        M <- momentum * M + (1 - momentum) * G                   # momentum buffer
        U <- G + momentum * (M - G)   (Nesterov)   or   U <- M
        O <- orthogonalize(U) * muon_scale(shape)               # Newton–Schulz or Polar Express
        W <- W * (1 - lr * weight_decay) - lr * O
    Switches (all off by default, as in the late-January-2025 record):
    - `splits` {param: k}: U (k·r, c) is orthogonalised as k separate (r, c) matrices and scaled
      by muon_scale((r, c)): a merged QKV weight updated as Q, K and V separately.
    - `orthogonalizer="polar_express"`: per-iteration coefficients instead of the fixed quintic.
    - `normuon=True`: NorMuon's per-row second moment evens out O's rows (`normuon_normalize`).
    - `cautious_wd=True`: decay only where O and W have the same sign (the step already shrinks
      |W| there): W <- W - lr * weight_decay * [O·W >= 0] * W - lr * O.
    With `world_size > 1`, parameters of one shape are cut into blocks of `world_size`;
    rank r orthogonalises the r-th matrix of each block and an all-gather hands every rank
    every result, so each rank does ~1/world_size of the orthogonalisation. Momentum
    buffers are kept on every rank (identical), so a checkpoint from rank 0 holds all state.
    """

    def __init__(self, params, lr=0.05, momentum=0.95, nesterov=True, weight_decay=0.0, ns_steps=5,
                 scale_rule="speedrun", rank=0, world_size=1, splits=None, orthogonalizer="newton_schulz",
                 normuon=False, beta2=0.95, cautious_wd=False):
        if lr < 0 or not 0 <= momentum < 1:
            raise ValueError(f"Muon needs lr >= 0 and 0 <= momentum < 1, got lr={lr}, momentum={momentum}")
        if not 0 <= beta2 < 1:
            raise ValueError(f"Muon needs 0 <= beta2 < 1 (NorMuon), got {beta2}")
        if orthogonalizer not in ORTHOGONALIZERS:
            raise ValueError(f"orthogonalizer {orthogonalizer!r}: use one of {', '.join(ORTHOGONALIZERS)}")
        muon_scale((1, 1), scale_rule)  # validate the rule name early
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_steps=ns_steps, scale_rule=scale_rule, orthogonalizer=orthogonalizer,
                        normuon=normuon, beta2=beta2, cautious_wd=cautious_wd)
        super().__init__(params, defaults)
        self.splits = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon is for matrices; got a parameter of shape {tuple(p.shape)} "
                                     "(give vectors and scalars to Adam)")
        for p, k in (splits or {}).items():
            if k < 1 or p.size(-2) % k:
                raise ValueError(f"cannot split a {tuple(p.shape)} matrix into {k} blocks of rows")
            if k > 1:
                self.splits[p] = int(k)
        self.rank, self.world_size = rank, world_size

    def _view(self, p, u):
        """The update as the matrices orthogonalised separately: (..., k, rows/k, cols) when split."""
        k = self.splits.get(p, 1)
        return u if k == 1 else u.view(*u.shape[:-2], k, u.size(-2) // k, u.size(-1))

    def _orthogonalised(self, updates, group):
        """{param: update view} -> {param: orthogonalised update view (not yet scaled)}, work shared by ranks."""
        out = {}
        steps, method = group["ns_steps"], group["orthogonalizer"]
        if self.world_size == 1:
            for p, u in updates.items():
                out[p] = orthogonalize(u, steps, method)
            return out
        by_shape = {}  # same shape -> same all-gather buffer size; order is identical on all ranks
        for p, u in updates.items():
            by_shape.setdefault((tuple(u.shape), u.dtype), []).append(p)
        for (shape, dtype), ps in by_shape.items():
            for start in range(0, len(ps), self.world_size):
                block = ps[start:start + self.world_size]
                mine = block[self.rank] if self.rank < len(block) else None
                o = (orthogonalize(updates[mine], steps, method) if mine is not None
                     else torch.zeros(shape, dtype=dtype, device=block[0].device))
                gathered = [torch.empty_like(o) for _ in range(self.world_size)]
                torch_dist.all_gather(gathered, o.contiguous())
                for p, g in zip(block, gathered):
                    out[p] = g
        return out

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            mom = group["momentum"]
            updates = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.lerp_(g, 1 - mom)
                updates[p] = self._view(p, g.lerp(buf, mom) if group["nesterov"] else buf.clone())
            lr, wd = group["lr"], group["weight_decay"]
            for p, o in self._orthogonalised(updates, group).items():
                if group["normuon"]:
                    state = self.state[p]
                    if "second_moment" not in state:
                        rows, cols = o.shape[-2:]
                        shape = (*o.shape[:-1], 1) if rows >= cols else (*o.shape[:-2], 1, cols)
                        state["second_moment"] = torch.zeros(shape, dtype=torch.float32, device=o.device)
                    o = normuon_normalize(o.float(), state["second_moment"], group["beta2"])
                o = (o * muon_scale(o.shape, group["scale_rule"])).reshape(p.shape).to(p.dtype)
                if wd and group["cautious_wd"]:
                    p.sub_(p * ((o * p) >= 0), alpha=lr * wd)
                elif wd:
                    p.mul_(1 - lr * wd)
                p.add_(o, alpha=-lr)
        return loss


class DecoupledAdam(torch.optim.Adam):
    """Adam with decoupled weight decay, optionally cautious (the 2025-12-18 record, "Cautious WD on Adam").

    Per step, with u the Adam step torch.optim.Adam takes (lr · m̂ / (sqrt(v̂) + eps)) and each group's
    `weight_decay` wd:
        W <- W - u - lr * wd * mask * W,   mask = [u · W >= 0] if cautious else 1
    (cautious: decay only the weights the step already moves towards zero; not cautious: AdamW's decay).
    torch's own (L2, gradient-coupled) weight decay is not used; its fused/foreach kernels do the Adam
    step, then the decay is applied from a copy of the weights before it (so u = W_before - W_after).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, cautious=False, fused=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
        self.cautious = bool(cautious)

    @torch.no_grad()
    def step(self, closure=None):
        decays = [g["weight_decay"] for g in self.param_groups]
        before = [[p.detach().clone() if wd and p.grad is not None else None for p in g["params"]]
                  for g, wd in zip(self.param_groups, decays)]
        for g in self.param_groups:
            g["weight_decay"] = 0.0  # the Adam step alone
        try:
            loss = super().step(closure)
        finally:
            for g, wd in zip(self.param_groups, decays):
                g["weight_decay"] = wd
        for g, wd, olds in zip(self.param_groups, decays, before):
            for i, p in enumerate(g["params"]):
                w0, olds[i] = olds[i], None  # each copy is freed once used: at most one extra weight-sized buffer
                if w0 is None:
                    continue
                if self.cautious:  # keep W_before only where u · W_before >= 0, with u = W_before - W_after
                    w0.mul_(torch.sub(w0, p).mul_(w0).ge_(0))
                p.sub_(w0, alpha=g["lr"] * wd)
        return loss


# ---------------------------------------------------------------- building from model groups
def default_lrs(arch: str) -> dict:
    """{group name: learning rate} the chapters start from for each arch."""
    if arch == "gpt":
        return dict(SPEEDRUN_LRS)
    return {"decay": 6e-4, "no_decay": 6e-4}


def build_optimizers(groups, lrs: dict, *, adam_betas=SPEEDRUN_ADAM_BETAS, adam_eps=SPEEDRUN_ADAM_EPS,
                     adamw_betas=(0.9, 0.95), adamw_eps=1e-8, muon_momentum=0.95, muon_nesterov=True,
                     muon_weight_decay=0.0, adam_weight_decay=0.0, adamw_weight_decay=0.1,
                     muon_scale_rule="speedrun", ns_steps=5, rank=0, world_size=1, fused=None,
                     muon_orthogonalizer="newton_schulz", normuon=False, normuon_beta2=0.95,
                     muon_cautious_wd=False, adam_cautious_wd=False) -> list:
    """Optimisers for `model.configure_optimizers()` groups, one learning rate per group name.

    groups: [{"name", "optimizer": "muon"|"adam"|"adamw", "params", "weight_decay"}, ...]
            where "weight_decay" is True/False (decay this group at the optimiser's
            `*_weight_decay` rate, or not) or a number (that rate).
    lrs:    {group name: lr}; every group name must be present (a missing one is an error
            naming it, so a typo never trains a group at a silent default).
            A Muon group may carry "splits" {param: k}: orthogonalise that (k·r, c) matrix as
            k separate (r, c) blocks (the model says which weights are several matrices in one).
    Returns [Muon?, Adam?, AdamW?] (only those used), each param group carrying "name" and
    "initial_lr" so schedules scale from it. muon_orthogonalizer, normuon, normuon_beta2 and
    muon_cautious_wd are Muon's switches (see Muon). Adam groups with a weight decay > 0 (the gpt's
    embed and head groups at `adam_weight_decay`) get `DecoupledAdam`: decoupled decay, cautious with
    `adam_cautious_wd` (the 2025-12-18 record); with none, plain torch Adam as before.
    """
    kinds = {"muon": [], "adam": [], "adamw": []}
    splits = {}
    for g in groups:
        if g["optimizer"] == "muon":
            splits.update(g.get("splits") or {})
        kind = g["optimizer"]
        if kind not in kinds:
            raise ValueError(f"group {g['name']!r} asks for optimizer {kind!r}; known: muon, adam, adamw")
        if g["name"] not in lrs:
            raise ValueError(f"no learning rate for group {g['name']!r}; pass lrs with keys "
                             f"{sorted(x['name'] for x in groups)}")
        params = [p for p in g["params"] if p.requires_grad]
        if not params:
            continue
        lr = float(lrs[g["name"]])
        wd = g.get("weight_decay", False)
        if isinstance(wd, bool) or wd is None:
            rate = {"muon": muon_weight_decay, "adam": adam_weight_decay, "adamw": adamw_weight_decay}[kind]
            wd = rate if wd else 0.0
        kinds[kind].append({"params": params, "lr": lr, "initial_lr": lr, "name": g["name"],
                            "weight_decay": float(wd)})
    fused_ok = fused if fused is not None else all(
        p.is_cuda for pg in kinds["adam"] + kinds["adamw"] for p in pg["params"]) and bool(kinds["adam"] + kinds["adamw"])
    out = []
    if kinds["muon"]:
        out.append(Muon(kinds["muon"], momentum=muon_momentum, nesterov=muon_nesterov, ns_steps=ns_steps,
                        scale_rule=muon_scale_rule, rank=rank, world_size=world_size, splits=splits,
                        orthogonalizer=muon_orthogonalizer, normuon=normuon, beta2=normuon_beta2,
                        cautious_wd=muon_cautious_wd))
    if kinds["adam"] and any(g["weight_decay"] for g in kinds["adam"]):
        out.append(DecoupledAdam(kinds["adam"], betas=adam_betas, eps=adam_eps, cautious=adam_cautious_wd,
                                 fused=fused_ok or None))
    elif kinds["adam"]:
        out.append(torch.optim.Adam(kinds["adam"], betas=adam_betas, eps=adam_eps, fused=fused_ok or None))
    if kinds["adamw"]:
        out.append(torch.optim.AdamW(kinds["adamw"], betas=adamw_betas, eps=adamw_eps, fused=fused_ok or None))
    return out


def describe(optimizers) -> list[dict]:
    """One row per param group: optimiser, name, tensors, parameters, lr, weight decay."""
    rows = []
    for opt in optimizers:
        for pg in opt.param_groups:
            rows.append({"optimizer": type(opt).__name__, "group": pg.get("name", "?"),
                         "tensors": len(pg["params"]), "params": sum(p.numel() for p in pg["params"]),
                         "lr": pg["lr"], "weight_decay": pg.get("weight_decay", 0.0)})
    return rows


# ---------------------------------------------------------------- schedules
def lr_factor(progress: float, cooldown_frac: float = 0.4, final_frac: float = 0.1,
              warmup_frac: float = 0.0) -> float:
    """Stable-then-decay: optional linear warm-up, flat at 1, then linear decay to `final_frac`.

    progress in [0, 1] (step / num_steps, or elapsed / max_seconds under a time budget);
    the last `cooldown_frac` of training decays linearly.
    """
    p = min(max(float(progress), 0.0), 1.0)
    if warmup_frac > 0 and p < warmup_frac:
        return p / warmup_frac
    if cooldown_frac <= 0 or p < 1 - cooldown_frac:
        return 1.0
    w = (1 - p) / cooldown_frac  # 1 at the start of the cooldown, 0 at the end
    return w + (1 - w) * final_frac


def muon_momentum(step: int, warmup_steps: int = 300, start: float = 0.85, end: float = 0.95) -> float:
    """Momentum warm-up: linear from `start` to `end` over the first `warmup_steps` steps."""
    if warmup_steps <= 0:
        return end
    frac = min(step / warmup_steps, 1.0)
    return (1 - frac) * start + frac * end


WINDOW_RAMPS = ("linear", "record", "stages")


def stage_index(progress: float, n_stages: int) -> int:
    """Which of `n_stages` equal stages of training `progress` in [0, 1] falls in: stage i covers
    [i/n, (i+1)/n), the last one also progress 1. Window and batch stages share these boundaries."""
    p = min(max(float(progress), 0.0), 1.0)
    return min(int(p * n_stages), n_stages - 1)


def batch_size_at(progress: float, stages, default: int) -> int:
    """Batch-size schedule by stage (the 2026 records' 8 -> 16 -> 24 sequences per rank): B of the
    stage `progress` falls in (`stage_index`), or `default` when `stages` is empty (no schedule)."""
    return int(stages[stage_index(progress, len(stages))]) if stages else int(default)


def window_size(progress: float, min_window: int = 128, max_window: int = 1792, block: int = 128,
                ramp: str = "linear", stages=()) -> int:
    """Sliding-window warm-up: the attention window grows linearly with progress, in whole blocks.

    Returns a multiple of `block` between `min_window` and `max_window` tokens (FlexAttention
    masks are built per 128-token block, so coarser steps also mean fewer recompilations).
    ramp "linear": min_window + progress * (max_window - min_window), rounded up to a block.
    ramp "record": the January-2025 records' progress * (max_window - block/2) rounded up
    (1728 * step / 1770 -> 128 ... 1792 there), at least min_window.
    ramp "stages": training cut into len(stages) equal stages, stage i using stages[i] tokens (the
    2025-26 records' window schedule by stage, e.g. 3, 7, 11 blocks of 128), rounded up to a block.
    """
    if ramp not in WINDOW_RAMPS:
        raise ValueError(f"window ramp {ramp!r}: use one of {', '.join(WINDOW_RAMPS)}")
    if ramp == "stages" and not stages:
        raise ValueError("window ramp 'stages' needs stages: the long window (tokens) of each stage")
    p = min(max(float(progress), 0.0), 1.0)
    if ramp == "stages":
        w = block * math.ceil(stages[stage_index(p, len(stages))] / block)
        return int(min(max(w, block), max_window))
    w = min_window + p * (max_window - min_window) if ramp == "linear" else p * (max_window - block / 2)
    w = block * math.ceil(w / block)
    return int(min(max(w, block * math.ceil(min_window / block)), max_window))


def apply_schedules(optimizers, lr_mult: float, momentum: float | None = None) -> None:
    """Write lr = initial_lr * lr_mult into every group, and Muon's momentum if given."""
    for opt in optimizers:
        for pg in opt.param_groups:
            pg["lr"] = pg["initial_lr"] * lr_mult
            if momentum is not None and isinstance(opt, Muon):
                pg["momentum"] = momentum


def copy_state(optimizers, src, dst) -> bool:
    """Give parameter `dst` a copy of `src`'s optimiser state (its first rows when dst has fewer),
    e.g. an embedding untied from the head part-way (tie_until) continues the head's Adam moments
    instead of starting with sign-sized steps. Returns whether any state was copied."""
    for opt in optimizers:
        if src in opt.state and any(dst is p for g in opt.param_groups for p in g["params"]):
            opt.state[dst] = {k: (v[:dst.shape[0]] if torch.is_tensor(v) and v.shape == src.shape else v).clone()
                              if torch.is_tensor(v) else v for k, v in opt.state[src].items()}
            return True
    return False


def zero_grad(optimizers) -> None:
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)


def step_all(optimizers) -> None:
    for opt in optimizers:
        opt.step()


__all__ = ["NS_COEFFS", "POLAR_EXPRESS_COEFFS", "ORTHOGONALIZERS", "WINDOW_RAMPS", "SPEEDRUN_LRS",
           "newton_schulz", "polar_express", "orthogonalize", "normuon_normalize", "muon_scale", "Muon", "default_lrs",
           "DecoupledAdam", "build_optimizers", "describe", "lr_factor", "muon_momentum", "window_size",
           "stage_index", "batch_size_at",
           "apply_schedules", "copy_state", "zero_grad", "step_all"]

"""Which number format and attention kernel a device gets, and the loss scaler float16 needs.

    p = precision.choose((7, 5), "Tesla T4")     # a plain function of capability and name
    p.dtype, p.attn_backend, p.fp8_head, p.grad_scaler, p.reasons
    # 'float16', 'sdpa', False, True, ['sm75 (Tesla T4) has no bfloat16 tensor cores ...', ...]

The rules (NVIDIA compute capability "smXY" = (X, Y)):
- sm80 and newer (A100, A10, L4, RTX 30xx/40xx, H100): bfloat16 autocast, compiled FlexAttention.
- older cards (V100 sm70, T4 sm75): no bfloat16 tensor cores, and Triton (which compiles
  FlexAttention) does not support bfloat16 there; FlexAttention is also far slower than SDPA's
  kernels on V100. So float16 autocast, whose narrow range needs a loss scaler
  (`torch.amp.GradScaler`), and SDPA with the same masks.
- FP8 matmuls (the optional FP8 head) need sm89 (Ada: L4, L40, RTX 40xx) or sm90+ (Hopper).
- no CUDA (CPU, Apple mps): float32 and SDPA.

`LossScaler` runs GradScaler over several optimisers (Muon and Adam) as one: gradients are
unscaled before any optimiser (Muon orthogonalises them, so the scale must be gone first), and a
step with an infinite or NaN gradient anywhere is skipped by every optimiser, as GradScaler does.
"""
from dataclasses import dataclass, field

import torch

DTYPES = ("float32", "bfloat16", "float16")


def sm(capability) -> str:
    return f"sm{capability[0]}{capability[1]}"


def fp8_supported(capability) -> bool:
    """FP8 tensor-core matmuls (torch._scaled_mm): Ada (sm89) and Hopper (sm90) or newer."""
    return capability is not None and tuple(capability) >= (8, 9)


def bf16_supported(capability) -> bool:
    """bfloat16 tensor cores (and Triton's bfloat16): Ampere (sm80) or newer."""
    return capability is not None and tuple(capability) >= (8, 0)


@dataclass
class Precision:
    """What to run with: compute `dtype`, `attn_backend` for the gpt arch, whether an FP8 head may be
    used, whether float16 needs a loss scaler, whether torch.compile is worth it; `reasons` says why."""
    dtype: str
    attn_backend: str
    fp8_head: bool
    grad_scaler: bool
    compile: bool
    reasons: list = field(default_factory=list)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def choose(capability=None, device_name: str = "", requested: str = "auto", device_type: str | None = None) -> Precision:
    """The precision for a device with CUDA `capability` (major, minor), or None for no CUDA.

    requested: "auto" (the rules above), or "float32" / "bfloat16" / "float16" (kept where the
    device can run it; bfloat16 on a card without it becomes float16, with the reason).
    device_type: "cuda", "cpu" or "mps"; default "cuda" when a capability is given, else "cpu".
    """
    if requested not in ("auto",) + DTYPES:
        raise ValueError(f"dtype={requested!r}: use 'auto', 'float32', 'bfloat16' or 'float16'")
    device_type = device_type or ("cuda" if capability is not None else "cpu")
    name = f" ({device_name})" if device_name else ""
    if device_type != "cuda":
        if requested == "float16":  # CPU autocast to float16 works: the GPU's float16 path, testable anywhere
            return Precision("float16", "sdpa", False, True, False,
                             [f"float16 asked on {device_type}: autocast to float16 with a loss scaler "
                              f"(slow; this is the pre-Ampere GPU path, for testing)"])
        reasons = [f"no CUDA device ({device_type}): float32 and SDPA attention"]
        if requested == "bfloat16":
            reasons.append(f"dtype='bfloat16' is for CUDA; {device_type} computes in float32")
        return Precision("float32", "sdpa", False, False, False, reasons)
    cap = tuple(capability)
    reasons = []
    if bf16_supported(cap):
        dtype, attn = "bfloat16", "flex"
        reasons.append(f"{sm(cap)}{name} has bfloat16 tensor cores: bfloat16 autocast, compiled FlexAttention")
    else:
        dtype, attn = "float16", "sdpa"
        reasons.append(f"{sm(cap)}{name} has no bfloat16 tensor cores (Triton cannot compile bfloat16 there): "
                       f"float16 autocast with a loss scaler (torch.amp.GradScaler)")
        reasons.append(f"FlexAttention is slower than SDPA's kernels before sm80: SDPA with the same masks")
    if requested == "float32":
        dtype = "float32"
        reasons.append("dtype='float32' asked: no autocast (TF32 matmuls where allowed)")
    elif requested == "float16" and dtype != "float16":
        dtype = "float16"
        reasons.append("dtype='float16' asked: float16 autocast with a loss scaler")
    elif requested == "bfloat16" and dtype != "bfloat16":
        reasons.append(f"dtype='bfloat16' asked, but {sm(cap)} has no bfloat16 tensor cores: float16 instead")
    fp8 = fp8_supported(cap) and dtype == "bfloat16"
    reasons.append(f"FP8 head {'possible' if fp8 else 'not available'} ({sm(cap)}; needs sm89+ and bfloat16)")
    compile_ok = cap >= (7, 0)
    if not compile_ok:
        reasons.append(f"{sm(cap)} is older than Triton supports: the blocks run eagerly")
    return Precision(dtype, attn, fp8, dtype == "float16", compile_ok, reasons)


def for_device(device, requested: str = "auto") -> Precision:
    """`choose` for a torch device (asks CUDA for its capability and name)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return choose(None, "", requested, device_type=dev.type)
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    return choose(torch.cuda.get_device_capability(idx), torch.cuda.get_device_name(idx), requested)


class LossScaler:
    """torch.amp.GradScaler for a list of optimisers, deciding for all of them at once.

        scaler = LossScaler(enabled=p.grad_scaler, device_type="cuda")
        scaler.scale(loss).backward()
        scaler.unscale(optimizers)        # before clipping and before Muon sees the gradients
        stepped = scaler.step(optimizers) # False: some gradient was inf/NaN, no optimiser stepped

    Disabled (bfloat16, float32), `scale` returns the loss, `unscale` does nothing and `step` steps
    every optimiser, with no host synchronisation.
    """

    def __init__(self, enabled: bool, device_type: str = "cuda", init_scale: float = 2.0 ** 16):
        self.enabled = bool(enabled)
        self.scaler = torch.amp.GradScaler(device_type, init_scale=init_scale, enabled=self.enabled)
        self._unscaled = False
        self.skipped = 0

    def scale(self, loss):
        return self.scaler.scale(loss) if self.enabled else loss

    def unscale(self, optimizers) -> None:
        if self.enabled and not self._unscaled:
            for opt in optimizers:
                self.scaler.unscale_(opt)
            self._unscaled = True

    def found_inf(self, optimizers) -> bool:
        states = self.scaler._per_optimizer_states
        return any(bool(v.item()) for opt in optimizers
                   for v in states[id(opt)]["found_inf_per_device"].values())

    def step(self, optimizers) -> bool:
        if not self.enabled:
            for opt in optimizers:
                opt.step()
            return True
        self.unscale(optimizers)
        ok = not self.found_inf(optimizers)
        if ok:
            for opt in optimizers:
                opt.step()
        else:
            self.skipped += 1
        self.scaler.update()  # halves the scale after an overflow, grows it after a run of good steps
        self._unscaled = False
        return ok

    def get_scale(self) -> float:
        return float(self.scaler.get_scale()) if self.enabled else 1.0

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.enabled else {}

    def load_state_dict(self, state: dict) -> None:
        if self.enabled and state:
            self.scaler.load_state_dict(state)


__all__ = ["DTYPES", "Precision", "choose", "for_device", "fp8_supported", "bf16_supported", "LossScaler", "sm"]

"""The workbook's language models: one constructor, three architectures, one interface.

    model = build_model("gpt", vocab_size, num_layers, num_heads, model_dim, seq_len, **switches)
    logits = model(idx)                  # idx (B, T) int64 -> (B, T, V) float32
    loss = model(idx, targets)           # scalar mean cross-entropy over targets != -100
    losses = model(idx, targets, reduction="none")   # (B, T) per-token losses

Architectures:
- "gpt" (default): the Modded-NanoGPT speedrun architecture made to work for any depth and
  width. Every trick is a switch whose default is the speedrun's choice (see GPT_DEFAULTS).
- "nanogpt": GPT-2 as nanoGPT builds it (learned positions, LayerNorm, GELU, tied embeddings).
- "llama3": Llama 3 (RMSNorm, SwiGLU, rotary, grouped-query attention) with the module names of
  Hugging Face `transformers`; `hf_state_dict()` gives the weights under LlamaForCausalLM's keys.

Shapes: B batch, T sequence, D model dim, H heads, Dh head dim, V vocab, L layers.

Precision: parameters are stored in float32; on CUDA the forward pass runs its matmuls under
autocast (`dtype`): bfloat16 from sm80 (Ampere), float16 before (nbcore.precision); on CPU and MPS
everything is float32. Logits are float32.
"""
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import (KVCache, Rotary, attend, block_mask, causal_mask_for, compile_backend, compiled,
                        dense_mask, document_ids, mask_rule, rotary_frequencies)

log = logging.getLogger("nbcore.model")

ARCHS = ("gpt", "nanogpt", "llama3")

# Every arch-specific name, with its default. None means "derived from the other arguments".
GPT_DEFAULTS = {
    "head_dim": None,          # Dh; None = model_dim // num_heads
    "mlp_ratio": 4,            # MLP hidden = mlp_ratio * D
    "tie_embeddings": False,   # speedrun: untied head
    "eot_id": None,            # <|endoftext|> id: documents split there (document-causal masking)
    "x0_mix": True,            # each block mixes the normalised embedding x0 back in (learned)
    "unet_skips": True,        # skip connections first half -> second half (learned weights)
    "value_embeds": None,      # number of value embeddings; None = depth rule (value_embeds_for)
    "qk_norm": True,           # RMS-norm queries and keys per head
    "rotary_fraction": 0.5,    # fraction of head-dim pairs rotated (0 = no position signal)
    "sliding_window": True,    # long/short sliding windows; False = full causal everywhere
    "window_long": None,       # tokens a long layer sees; None = seq_len
    "window_short": None,      # tokens a short layer sees; None = window_long // 2
    "softcap": 15.0,           # logits -> softcap * tanh(logits / softcap); 0 disables
    "zero_init": True,         # output projections and head start at zero
    "mlp_act": "relu2",        # "relu2" (ReLU squared) or "gelu"
    "fp8_head": False,         # FP8 head matmul in training steps (CUDA sm89+; evaluation stays exact)
    "attn_backend": "auto",    # "flex", "sdpa" or "auto" (flex on CUDA, sdpa elsewhere)
    "compile": None,           # torch.compile the blocks; None = on CUDA only
    "vocab_multiple": 128,     # head rows padded to a multiple (speed); extra logits cut off
    # The January-2025 record's choices, off here (each is a switch; speedrun_8xh100.yaml turns them on):
    "qkv_split": False,        # Muon orthogonalises Q, K and V as three matrices (record: True)
    "attn_scale": None,        # attention logit scale; None = 0.12 with QK-norm, else 1/sqrt(Dh)
    "learn_attn_scale": True,  # the scale is a parameter (Adam, scalars group); record: fixed (False)
    "attn_off_layers": (),     # layer indices with no attention at all, MLP only (record: (7,))
    "v_lambda": False,         # layers without a value embedding scale v by a learned lambda (record: True)
    "max_seq_len": None,       # longest sequence accepted (rotary tables); None = seq_len (record: 4x64K for val)
    "window_blocks": 0,        # > 0: windows in whole blocks of this many tokens, short = max(1, long blocks // 2)
                               #   blocks (record: 128, its block masks); 0 = token-exact windows
    # The 2025-26 records' tricks, off here (speedrun_2026_8xh100.yaml turns them on). Training progress
    # reaches the model through set_progress(progress), which 04 calls once per step.
    "mtp_tokens": 1,           # multi-token prediction: each position also scores the next mtp_tokens-1 targets,
                               #   weights annealed by stage (mtp_weights); 1 = next token only
    "tie_until": 0.0,          # head and embedding tied (the head's rows are looked up) until this fraction
                               #   of training, then the embedding starts from the head's rows; 0 = never tied
    "fp8_mlp": False,          # FP8 matmuls for the MLP projections in training (CUDA, Hopper or newer only)
}
NANOGPT_DEFAULTS = {
    "mlp_ratio": 4,
    "bias": True,              # biases in Linear and LayerNorm, like GPT-2
    "tie_embeddings": True,
    "dropout": 0.0,
    "compile": None,
}
LLAMA3_DEFAULTS = {
    "head_dim": None,          # None = model_dim // num_heads
    "num_kv_heads": None,      # None = num_heads (plain multi-head attention)
    "ffn_dim": None,           # None = 8/3 * D rounded up to a multiple of 256 (Llama's rule)
    "tie_embeddings": True,    # as Llama-3.2-1B/3B
    "bias": False,
    "rope_theta": 500000.0,
    "norm_eps": 1e-5,
    "compile": None,
}
ARCH_DEFAULTS = {"gpt": GPT_DEFAULTS, "nanogpt": NANOGPT_DEFAULTS, "llama3": LLAMA3_DEFAULTS}
EVAL_CHUNK_TOKENS = 32768  # without gradients, longer inputs get their logits this many positions at a time

# Named sizes: kwargs for build_model (add arch, vocab_size, seq_len). With arch="gpt",
# vocab_size=50257 and default switches they count (all parameters, embeddings included):
# XS 57.77M, S 117.75M, M 344.31M -- the original lab's baselines (57.8M, 117.7M, 342.5M).
SIZE_PRESETS = {
    "tiny": {"num_layers": 4, "num_heads": 4, "model_dim": 128},         # CPU demos
    "XS": {"num_layers": 8, "num_heads": 4, "model_dim": 256},           # Dh 64, 2 value embeds
    "S": {"num_layers": 12, "num_heads": 6, "model_dim": 384},           # Dh 64, 3 value embeds
    "M": {"num_layers": 11, "num_heads": 8, "model_dim": 1024},          # Dh 128, 2 value embeds
    "gpt2-small": {"num_layers": 12, "num_heads": 12, "model_dim": 768},  # nanogpt: 124,439,808
}


class ModelConfigError(ValueError):
    """A build_model argument is unknown or inconsistent; the message says what to change."""


# ----------------------------------------------------------------------------------------------
# Device, dtype and the constructor

def pick_device(device=None) -> torch.device:
    """`device` as given, else the best available: cuda > mps > cpu (logging any fallback)."""
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ModelConfigError("device='cuda' but this machine has no CUDA device; "
                                   "pass device=None (auto) or 'cpu'")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ModelConfigError("device='mps' but Apple's mps is not available; pass device=None (auto) or 'cpu'")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        log.warning("nbcore.model: no CUDA device; using Apple mps (float32, SDPA attention)")
        return torch.device("mps")
    log.warning("nbcore.model: no CUDA device; using cpu (float32, SDPA attention, no compile)")
    return torch.device("cpu")


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """Compute dtype: None -> bfloat16 on CUDA from sm80, float16 before, float32 elsewhere; strings ok."""
    if dtype is None:
        if device.type != "cuda":
            return torch.float32
        from .precision import for_device  # bfloat16 from sm80, float16 before (compute capability)
        return for_device(device).torch_dtype
    if isinstance(dtype, str):
        names = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}
        dtype = getattr(torch, names.get(dtype, dtype), None)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ModelConfigError(f"dtype must be float32, bfloat16 or float16 (or None), got {dtype!r}")
    return dtype


def build_model(arch, vocab_size, num_layers, num_heads, model_dim, seq_len, device=None, dtype=None,
                seed=0, **arch_specific) -> "LanguageModel":
    """Build one of ARCHS with its parameters initialised from `seed`.

    vocab_size: embedding rows (the tokenizer's n_vocab, specials included).
    device: None = cuda > mps > cpu; "meta" builds the shapes only (counting parameters).
    dtype: compute dtype (None = bfloat16 on CUDA, float32 elsewhere); weights stay float32.
    arch_specific: the names in GPT_DEFAULTS / NANOGPT_DEFAULTS / LLAMA3_DEFAULTS.
    Initialisation runs on the CPU under `seed` and is then moved, so it is the same everywhere.
    """
    if arch not in ARCHS:
        raise ModelConfigError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    defaults = ARCH_DEFAULTS[arch]
    unknown = sorted(set(arch_specific) - set(defaults))
    if unknown:
        raise ModelConfigError(f"unknown argument(s) {', '.join(map(repr, unknown))} for arch={arch!r}; "
                               f"valid ones: {', '.join(defaults)}")
    for name, value in (("vocab_size", vocab_size), ("num_layers", num_layers), ("num_heads", num_heads),
                        ("model_dim", model_dim), ("seq_len", seq_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelConfigError(f"{name} must be a positive int, got {value!r}")
    dev = pick_device(device)
    cfg = {"arch": arch, "vocab_size": vocab_size, "num_layers": num_layers, "num_heads": num_heads,
           "model_dim": model_dim, "seq_len": seq_len, "device": str(dev),
           "dtype": str(resolve_dtype(dtype, dev)).removeprefix("torch."), "seed": int(seed),
           **defaults, **arch_specific}
    cls = {"gpt": GPT, "nanogpt": NanoGPT, "llama3": Llama3}[arch]
    cls.resolve(cfg, dev)  # fills derived values, checks consistency (raises ModelConfigError)
    if dev.type == "meta":
        with torch.device("meta"):
            model = cls(cfg)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(cfg)
            model.init_weights()
        model = model.to(dev)
    if cfg.get("compile"):
        model.compile_blocks()
    return model


# Settings that depend on the machine: from_config chooses them afresh unless told.
MACHINE_SETTINGS = {"device": None, "dtype": None, "attn_backend": "auto", "compile": None}


def from_config(config: dict, **overrides) -> "LanguageModel":
    """Rebuild a model from `model.config` (e.g. a run's record) with the same architecture.

    device, dtype, attn_backend and compile are chosen for this machine (a run trained on CUDA
    rebuilds on a CPU), unless given in `overrides`; the seed and every switch are kept.
    """
    config = dict(config)
    for name, auto in MACHINE_SETTINGS.items():
        if name in config:
            config[name] = auto
    config.update(overrides)
    return build_model(**config)


# ----------------------------------------------------------------------------------------------
# The shared interface

class LanguageModel(nn.Module):
    """What every architecture offers: forward, num_params, flops_per_token, generate,
    configure_optimizers. Subclasses implement `hidden` (tokens -> final hidden states) and
    `logits_from` (hidden -> float32 logits)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.config = cfg
        self.vocab_size = cfg["vocab_size"]
        self.seq_len = cfg["seq_len"]
        self.num_layers = cfg["num_layers"]
        self.compute_dtype = getattr(torch, cfg["dtype"])

    # -- forward ---------------------------------------------------------------------------
    def forward(self, idx, targets=None, window=None, reduction="mean"):
        """idx (B, T) int64 -> logits (B, T, V) float32, or the loss against `targets` (B, T).

        reduction: "mean" (scalar over targets != -100), "sum", or "none" -> (B, T) losses
        (0 where the target is -100). window: the current long sliding window in tokens
        (None = the configured window_long); only "gpt" with sliding_window=True uses it.
        """
        self.check_input(idx, targets)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        with self.autocast():
            h = self.hidden(idx, window=window)  # (B, T, D)
            if targets is not None and not torch.is_grad_enabled() and idx.numel() > EVAL_CHUNK_TOKENS:
                return self.chunked_loss(h, targets, reduction)
            logits = self.logits_from(h)  # (B, T, V)
        if targets is None:
            return logits
        w = self.mtp_weights_now() if self.training and reduction == "mean" else None
        if w is not None and len(w) > 1:
            return multi_token_loss(logits, targets, w)
        B, T, V = logits.shape
        loss = F.cross_entropy(logits.view(B * T, V), targets.reshape(B * T), ignore_index=-100,
                               reduction=reduction)
        return loss.view(B, T) if reduction == "none" else loss

    def mtp_weights_now(self):
        """Weights of the next 1, 2, ... targets in the training loss (None = next token only)."""
        return None

    def chunked_loss(self, h, targets, reduction):
        """Loss without gradients from hidden states h (B, T, D), EVAL_CHUNK_TOKENS positions at a
        time: a long validation sequence (the record's 4 x 64K tokens) never holds all (B, T, V) logits."""
        h, t = h.reshape(-1, h.size(-1)), targets.reshape(-1)  # (B·T, D), (B·T,)
        losses = torch.cat([F.cross_entropy(self.logits_from(h[i:i + EVAL_CHUNK_TOKENS]), t[i:i + EVAL_CHUNK_TOKENS],
                                            ignore_index=-100, reduction="none")
                            for i in range(0, t.numel(), EVAL_CHUNK_TOKENS)])
        if reduction == "none":
            return losses.view(targets.shape)
        return losses.sum() if reduction == "sum" else losses.sum() / (t != -100).sum()

    def check_input(self, idx, targets=None, max_len=None):
        max_len = max_len or getattr(self, "max_seq_len", self.seq_len)
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype != torch.long:
            got = f"{tuple(idx.shape)} {idx.dtype}" if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"idx must be a (B, T) int64 tensor of token ids, got {got}")
        if idx.size(1) > max_len:
            raise ValueError(f"sequence length T={idx.size(1)} exceeds the model's seq_len={max_len}; "
                             f"crop the input or build the model with a larger seq_len")
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(f"targets must have idx's shape {tuple(idx.shape)}, got {tuple(targets.shape)}")

    def autocast(self):
        device_type = self.device_type()
        enabled = self.compute_dtype != torch.float32 and device_type in ("cuda", "cpu", "mps")
        return torch.autocast(device_type, dtype=self.compute_dtype, enabled=enabled)

    def device_type(self) -> str:
        return next(self.parameters()).device.type

    # -- counting ----------------------------------------------------------------------------
    def lookup_tables(self) -> list:
        """Embedding weights used only as lookups (not as a matmul): excluded from FLOPs."""
        return []

    def num_params(self, embeddings: bool = True) -> int:
        """Number of parameters, each shared (tied) tensor counted once.

        embeddings=True (default) counts everything: token, position and value embeddings and
        the head (for "gpt" including the head's padding rows). embeddings=False leaves out the
        tables used only as lookups (token embedding unless tied to the head, position and
        value embeddings): the N of the 6N FLOPs rule.
        """
        total = sum(p.numel() for p in self.parameters())
        if not embeddings:
            total -= sum(p.numel() for p in self.lookup_tables())
        return total

    def attention_contexts(self, seq_len: int, window=None) -> list:
        """Keys each layer's queries attend to in the FLOPs convention: min(T, window), per layer."""
        return [seq_len] * self.num_layers

    def attention_width(self) -> int:
        """H * Dh: width of the query/key/value heads together."""
        raise NotImplementedError

    def flops_per_token(self, seq_len: int | None = None, window=None) -> int:
        """Training FLOPs per token (forward + backward): 6N + 12 · Σ_layers H·Dh·ctx.

        N = num_params(embeddings=False): every weight used in a matmul costs 2 FLOPs per token
        forward and 4 backward. Attention scores and the weighted sum cost 2·2·H·Dh·ctx forward
        (x3 with backward) where ctx = T for a full causal layer and min(T, window) for a
        sliding-window one: the PaLM / nanoGPT convention, which counts the causally masked half
        as computed. Document masking is data-dependent and not discounted.
        """
        T = seq_len or self.seq_len
        ctx = self.attention_contexts(T, window)
        return 6 * self.num_params(embeddings=False) + 12 * self.attention_width() * sum(ctx)

    # -- generation ------------------------------------------------------------------------
    def hidden(self, idx, window=None, cache=None):
        raise NotImplementedError

    def logits_from(self, x):
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Append `max_new_tokens` sampled tokens to idx (B, T) -> (B, T + max_new_tokens).

        Uses a KV cache: each new token runs one position through the model. temperature 0
        (or top_k=1) is greedy decoding. Past seq_len tokens the context is cropped to the last
        seq_len (re-filling the cache), which equals recomputing on the cropped sequence.
        `generator`: a torch.Generator on the model's device for reproducible sampling.
        """
        self.check_input(idx, max_len=10**12)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        was_training = self.training
        self.eval()
        try:
            cache = KVCache(self.num_layers)
            logits = self.step(idx[:, -self.seq_len:], cache)
            for _ in range(max_new_tokens):
                nxt = sample(logits[:, -1], temperature, top_k, generator)  # (B, 1)
                idx = torch.cat([idx, nxt], dim=1)
                if cache.length + 1 > self.seq_len:  # full: crop and re-fill
                    cache = KVCache(self.num_layers)
                    logits = self.step(idx[:, -self.seq_len:], cache)
                else:
                    logits = self.step(nxt, cache)
        finally:
            self.train(was_training)
        return idx

    def step(self, idx, cache):
        """Run the new tokens idx (B, Tnew) through the model, extending `cache`; last logits (B, 1, V)."""
        with self.autocast():
            logits = self.logits_from(self.hidden(idx, cache=cache)[:, -1:])
        cache.length += idx.size(1)
        return logits

    # -- optimisers and compilation --------------------------------------------------------
    def configure_optimizers(self) -> list:
        """The baselines' rule (AdamW): "decay" = every weight with 2+ dims, "no_decay" = biases
        and norm weights. The gpt arch overrides this with the speedrun's Muon/Adam groups."""
        params = list(self.parameters())
        return self.check_groups([
            {"name": "decay", "optimizer": "adamw", "params": [p for p in params if p.dim() >= 2],
             "weight_decay": True},
            {"name": "no_decay", "optimizer": "adamw", "params": [p for p in params if p.dim() < 2],
             "weight_decay": False},
        ])

    def check_groups(self, groups: list) -> list:
        """Drop empty groups; every parameter must sit in exactly one group."""
        groups = [g for g in groups if g["params"]]
        seen = {}
        for g in groups:
            for p in g["params"]:
                if id(p) in seen:
                    raise RuntimeError(f"parameter in groups {seen[id(p)]!r} and {g['name']!r}")
                seen[id(p)] = g["name"]
        missing = [n for n, p in self.named_parameters() if id(p) not in seen]
        if missing:
            raise RuntimeError(f"parameters in no optimiser group: {missing}")
        return groups

    def compile_blocks(self):
        """torch.compile each block in place (parameter names unchanged); guarded by device.
        Generation (KV cache) runs the blocks eagerly: a growing cache would recompile each token.

        All blocks share one Dynamo cache (one code object). Its entries: each kind of block
        (e.g. with and without a value embedding) x grad / no-grad (training, validation), and
        one more each for a new shape (made dynamic). The limit is raised to fit them with room
        (a block past the limit would silently run eagerly). Backend: `compile_backend()`.
        """
        if self.device_type() == "mps":
            log.warning("nbcore.model: torch.compile is not used on mps; running eagerly")
            self.config["compile"] = False
            return
        needed = 2 * 2 * self.block_kinds() + 4
        import torch._dynamo.config as dynamo_config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, needed)
        for block in self.blocks:
            block.compile(backend=compile_backend())

    def block_kinds(self) -> int:
        """How many differently-shaped calls the blocks get (one Dynamo graph each)."""
        return 1

    def extra_repr(self) -> str:
        return f"arch={self.config['arch']!r}, params={self.num_params():,}"


def mtp_weights(progress: float, n: int) -> list:
    """The records' multi-token-prediction weights at `progress` for n predicted tokens.

    Training is cut into n equal stages; in stage s the targets 1 .. n-s count with weights
    1, 1/2, 1/4, ..., the last of them fading linearly to 0 across the stage (n=3, the
    records': [1, .5, .25 -> 0], then [1, .5 -> 0], then [1])."""
    p = min(max(float(progress), 0.0), 1.0)
    stage = min(int(p * n), n - 1)
    w = [0.5 ** k for k in range(n - stage)]
    if len(w) > 1:
        w[-1] *= 1 - (p * n - stage)
    return w


def multi_token_loss(logits, targets, weights):
    """sum_k weights[k] * mean CE(logits at t, targets at t + k): the same prediction also scored
    against the tokens after the next (targets past a row's end are ignored). (B, T, V), (B, T)."""
    B, T, V = logits.shape
    total = 0.0
    for k, w in enumerate(weights):
        if w == 0 or k >= T:
            continue
        t = F.pad(targets[:, k:], (0, k), value=-100)  # (B, T): the target k tokens later
        total = total + w * F.cross_entropy(logits.reshape(B * T, V), t.reshape(B * T), ignore_index=-100)
    return total


def sample(logits, temperature=1.0, top_k=None, generator=None):
    """Next token from last-position logits (B, V) -> (B, 1)."""
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)


def norm(x):
    """RMS norm without learned scale, over the last dim."""
    return F.rms_norm(x, (x.size(-1),))


def normal_init(module, std=0.02):
    """GPT-2's rule, shared by the baselines: every Linear and Embedding weight N(0, std), zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def init_linear(weight, zero=False):
    """Uniform with the std of 0.5/sqrt(fan_in) (the speedrun's rule), or zeros."""
    if zero:
        nn.init.zeros_(weight)
    else:
        bound = math.sqrt(3) * 0.5 * weight.size(1) ** -0.5
        nn.init.uniform_(weight, -bound, bound)


# ----------------------------------------------------------------------------------------------
# "gpt": the speedrun architecture

def long_window_layers(num_layers: int) -> list:
    """Which layers use the long window: those whose distance to the nearer end of the stack is a
    multiple of 4 (first and last always). 12 layers -> 0, 4, 7, 11 as in the speedrun."""
    return [min(i, num_layers - 1 - i) % 4 == 0 for i in range(num_layers)]


def value_embeds_for(num_layers: int) -> int:
    """Default number of value embeddings: one per 4 layers, at least 1, at most 3 (the speedrun's
    12 layers -> 3) and at most half the depth (1 layer -> 0)."""
    return min(3, num_layers // 2, max(1, num_layers // 4))


def value_embed_layers(num_layers: int, count: int) -> list:
    """Which value embedding each layer mixes in (None = none): embedding j feeds layer j and
    layer L - count + j, i.e. the first and last `count` layers share them (012...012)."""
    out = [None] * num_layers
    for j in range(count):
        out[j] = j
        out[num_layers - count + j] = j
    return out


class MLP(nn.Module):
    """x (B, T, D) -> (B, T, D) through a hidden layer of mlp_ratio·D with ReLU² or GELU."""

    def __init__(self, dim, hidden, act="relu2", fp8=False):
        super().__init__()
        self.fc = nn.Linear(dim, hidden, bias=False)
        self.proj = nn.Linear(hidden, dim, bias=False)
        self.act, self.fp8 = act, fp8

    def forward(self, x):
        fp8 = self.fp8 and self.training and (x.numel() // x.size(-1)) % 16 == 0  # fp8_mlp: checked in resolve
        h = fp8_linear(x, self.fc.weight) if fp8 else self.fc(x)  # (B, T, mlp_ratio·D)
        h = F.relu(h).square() if self.act == "relu2" else F.gelu(h)
        return fp8_linear(h, self.proj.weight).to(x.dtype) if fp8 else self.proj(h)


class GPTAttention(nn.Module):
    """Merged QKV, QK-norm, partial rotary, value-embedding mixing, learned attention scale."""

    def __init__(self, dim, num_heads, head_dim, seq_len, *, qk_norm, rotary_fraction, value_embed,
                 compiled_flex=False, scale=None, learn_scale=True, v_lambda=False):
        super().__init__()
        self.num_heads, self.head_dim, self.qk_norm = num_heads, head_dim, qk_norm
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim, bias=False)  # weight (3·H·Dh, D)
        self.proj = nn.Linear(num_heads * head_dim, dim, bias=False)
        # 0.12 is the speedrun's scale for QK-normed heads; without QK-norm the usual 1/sqrt(Dh)
        scale = scale or (0.12 if qk_norm else head_dim ** -0.5)
        self.scale = nn.Parameter(torch.tensor(scale)) if learn_scale else float(scale)
        # v_mix (2,): [λ_v, λ_ve]; with v_lambda a layer without value embedding keeps it and uses λ_v
        self.v_mix = nn.Parameter(torch.tensor([0.5, 0.5])) if value_embed or v_lambda else None
        self.rotary = (Rotary(head_dim, seq_len, rotary_frequencies(head_dim, fraction=rotary_fraction))
                       if rotary_fraction > 0 else None)
        self.compiled_flex = compiled_flex

    def forward(self, x, ve=None, mask=None, cache=None, layer=0):
        """x (B, T, D), ve (B, T, H·Dh) or None, mask for attend() -> (B, T, D)."""
        B, T, _ = x.shape
        H, Dh = self.num_heads, self.head_dim
        qkv = self.qkv(x)  # (B, T, 3·H·Dh)
        q, k, v = qkv.view(B, T, 3, H, Dh).unbind(dim=2)  # (B, T, H, Dh) each
        if self.qk_norm:
            q, k = norm(q), norm(k)
        offset = cache.length if cache is not None else 0
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        if ve is not None:
            v = self.v_mix[0] * v + self.v_mix[1] * ve.view(B, T, H, Dh)
        elif self.v_mix is not None:  # v_lambda: the record scales v by a learned lambda here too
            v = self.v_mix[0] * v
        q = q * self.scale
        q, k, v = (t.to(qkv.dtype).transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, Tk, Dh)
        y = attend(q, k, v, mask, scale=1.0, compiled_flex=self.compiled_flex)  # (B, H, T, Dh)
        return self.proj(y.transpose(1, 2).reshape(B, T, H * Dh))


class GPTBlock(nn.Module):
    """x ← λ0·x + λ1·x0;  x ← x + attn(norm(x));  x ← x + mlp(norm(x)).   (B, T, D) -> (B, T, D)"""

    def __init__(self, cfg, layer: int, value_embed: bool, compiled_flex=False):
        super().__init__()
        D, Dh = cfg["model_dim"], cfg["head_dim"]
        self.layer = layer
        self.x0_mix = nn.Parameter(torch.tensor([1.0, 0.0])) if cfg["x0_mix"] else None
        self.attn = None if layer in cfg["attn_off_layers"] else GPTAttention(
            D, cfg["num_heads"], Dh, cfg["max_seq_len"], qk_norm=cfg["qk_norm"],
            rotary_fraction=cfg["rotary_fraction"], value_embed=value_embed, compiled_flex=compiled_flex,
            scale=cfg["attn_scale"], learn_scale=cfg["learn_attn_scale"], v_lambda=cfg["v_lambda"])
        self.mlp = MLP(D, int(cfg["mlp_ratio"] * D), cfg["mlp_act"], cfg["fp8_mlp"])

    def forward(self, x, x0, ve=None, mask=None, cache=None):
        if self.x0_mix is not None:
            x = self.x0_mix[0] * x + self.x0_mix[1] * x0
        if self.attn is not None:  # attn_off_layers: MLP only
            x = x + self.attn(norm(x), ve, mask, cache, self.layer)
        return x + self.mlp(norm(x))


class GPT(LanguageModel):
    """The speedrun architecture for any depth and width.

        x = x0 = norm(embed(idx))                               (B, T, D)
        for layer i:  x += w_skip · output of layer L-1-i      (second half, U-net skips)
                      x = block_i(x, x0, value_embed(idx), mask_i)
        logits = softcap · tanh(head(norm(x)) / softcap)        (B, T, V)

    Depth rules: long_window_layers, value_embeds_for and value_embed_layers (documented there).
    """

    @staticmethod
    def resolve(cfg, device):
        L, H, D = cfg["num_layers"], cfg["num_heads"], cfg["model_dim"]
        cfg["head_dim"] = _head_dim(cfg)
        if cfg["head_dim"] % 2 and cfg["rotary_fraction"] > 0:
            raise ModelConfigError(f"rotary embeddings need an even head_dim, got {cfg['head_dim']}")
        if not 0 <= cfg["rotary_fraction"] <= 1:
            raise ModelConfigError(f"rotary_fraction must be in [0, 1], got {cfg['rotary_fraction']}")
        if cfg["value_embeds"] is None:
            cfg["value_embeds"] = value_embeds_for(L)
        if not 0 <= cfg["value_embeds"] <= L // 2:
            raise ModelConfigError(f"value_embeds must be between 0 and num_layers // 2 = {L // 2} "
                                   f"(the first and last value_embeds layers use them), got {cfg['value_embeds']}")
        if cfg["mlp_act"] not in ("relu2", "gelu"):
            raise ModelConfigError(f"mlp_act must be 'relu2' or 'gelu', got {cfg['mlp_act']!r}")
        if cfg["softcap"] is None or cfg["softcap"] < 0:
            raise ModelConfigError(f"softcap must be >= 0 (0 disables), got {cfg['softcap']!r}")
        if cfg["eot_id"] is not None and not 0 <= cfg["eot_id"] < cfg["vocab_size"]:
            raise ModelConfigError(f"eot_id {cfg['eot_id']} is outside the vocabulary (size {cfg['vocab_size']})")
        off = cfg["attn_off_layers"] = tuple(sorted({int(i) for i in cfg["attn_off_layers"] or ()}))
        if any(not 0 <= i < L for i in off):
            raise ModelConfigError(f"attn_off_layers {list(off)} must be layer indices in [0, {L})")
        if cfg["attn_scale"] is not None and not cfg["attn_scale"] > 0:
            raise ModelConfigError(f"attn_scale must be > 0 (or None for the default), got {cfg['attn_scale']!r}")
        cfg["max_seq_len"] = max(int(cfg["max_seq_len"] or cfg["seq_len"]), cfg["seq_len"])
        if not (isinstance(cfg["mtp_tokens"], int) and cfg["mtp_tokens"] >= 1):
            raise ModelConfigError(f"mtp_tokens must be an int >= 1 (1 = next token only), got {cfg['mtp_tokens']!r}")
        if not 0 <= cfg["tie_until"] < 1:
            raise ModelConfigError(f"tie_until must lie in [0, 1) (a fraction of training), got {cfg['tie_until']!r}")
        if cfg["tie_until"] and cfg["tie_embeddings"]:
            raise ModelConfigError("tie_until unties part-way and needs tie_embeddings=False")
        if cfg["fp8_mlp"] and not (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)):
            log.warning(f"nbcore.model: fp8_mlp needs a Hopper (or newer) CUDA GPU, not {device}; "
                        f"using {cfg['dtype']} MLP matmuls")
            cfg["fp8_mlp"] = False
        elif cfg["fp8_mlp"] and (D % 16 or int(cfg["mlp_ratio"] * D) % 16):
            raise ModelConfigError(f"fp8_mlp needs model_dim ({D}) and the MLP width to be multiples of 16")
        cfg["window_long"] = cfg["window_long"] or cfg["seq_len"]
        cfg["window_short"] = cfg["window_short"] or max(1, cfg["window_long"] // 2)
        if not 1 <= cfg["window_short"] <= cfg["window_long"]:
            raise ModelConfigError(f"need 1 <= window_short <= window_long, got {cfg['window_short']} "
                                   f"and {cfg['window_long']}")
        blk = cfg["window_blocks"]
        if isinstance(blk, bool) or not isinstance(blk, int) or blk < 0:
            raise ModelConfigError(f"window_blocks must be an int >= 0 (tokens per block, the record's 128; "
                                   f"0 = token-exact windows), got {blk!r}")
        if cfg["vocab_multiple"] < 1:
            raise ModelConfigError(f"vocab_multiple must be >= 1, got {cfg['vocab_multiple']}")
        if cfg["tie_embeddings"] and cfg["vocab_multiple"] != 1:
            cfg["vocab_multiple"] = 1  # a tied head has exactly the embedding's rows
        backend = cfg["attn_backend"]
        if backend not in ("flex", "sdpa", "auto"):
            raise ModelConfigError(f"attn_backend must be 'flex', 'sdpa' or 'auto', got {backend!r}")
        if backend == "auto":
            if device.type == "cuda":
                from .precision import for_device  # flex from sm80; SDPA is faster on older cards
                backend = for_device(device).attn_backend
            else:
                backend = "sdpa"
            if device.type not in ("cuda", "meta"):
                log.info("nbcore.model: FlexAttention is slow without CUDA; using SDPA with the same masks")
        elif backend == "flex" and device.type == "mps":
            log.warning("nbcore.model: FlexAttention does not run on mps; using SDPA with the same masks")
            backend = "sdpa"
        cfg["attn_backend"] = backend
        cfg["compile"] = _resolve_compile(cfg["compile"], device)
        if cfg["fp8_head"]:
            from .precision import fp8_supported
            ok = device.type == "cuda" and fp8_supported(torch.cuda.get_device_capability(device))
            if not ok:
                log.warning(f"nbcore.model: fp8_head needs a Hopper or Ada (sm89+) CUDA GPU, not {device}; "
                            f"using a {cfg['dtype']} head")
                cfg["fp8_head"] = False
            elif cfg["tie_embeddings"]:
                raise ModelConfigError("fp8_head needs an untied head; pass tie_embeddings=False")
            elif D % 16 or cfg["vocab_multiple"] % 16:
                raise ModelConfigError(f"fp8_head needs model_dim ({D}) and vocab_multiple ({cfg['vocab_multiple']}) "
                                       f"to be multiples of 16")

    def __init__(self, cfg):
        super().__init__(cfg)
        L, D, V, H, Dh = cfg["num_layers"], cfg["model_dim"], cfg["vocab_size"], cfg["num_heads"], cfg["head_dim"]
        self.ve_layers = value_embed_layers(L, cfg["value_embeds"])
        self.long_layers = long_window_layers(L)
        self.max_seq_len = cfg["max_seq_len"]
        self.tied_now = cfg["tie_until"] > 0  # tie_until: tied until set_progress passes it
        if self.tied_now:  # saved with the weights, so a resumed run knows whether it has untied
            self.register_buffer("tied", torch.tensor(True))
            self.register_load_state_dict_post_hook(lambda m, _: setattr(m, "tied_now", bool(m.tied)))
        self.mtp_now = mtp_weights(0.0, cfg["mtp_tokens"])
        self.embed = nn.Embedding(V, D)
        self.value_embeds = nn.ModuleList(nn.Embedding(V, H * Dh) for _ in range(cfg["value_embeds"]))
        flex_compiled = cfg["attn_backend"] == "flex" and (cfg["compile"] or torch.device(cfg["device"]).type == "cuda")
        if flex_compiled:
            compiled("flex_attention")  # made now, outside any compiled region (no guard on it later)
        self.flex_compiled = flex_compiled
        self._window_tensors = {}  # (window, device) -> 0-d tensor, made once per window (no copy per forward)
        self.blocks = nn.ModuleList(GPTBlock(cfg, i, self.ve_layers[i] is not None, flex_compiled) for i in range(L))
        self.num_skips = L // 2 if cfg["unet_skips"] else 0
        self.skip_weights = nn.Parameter(torch.ones(self.num_skips)) if self.num_skips else None
        padded = -(-V // cfg["vocab_multiple"]) * cfg["vocab_multiple"]
        self.head = None if cfg["tie_embeddings"] else nn.Linear(D, padded, bias=False)

    def init_weights(self):
        zero = self.config["zero_init"]
        nn.init.normal_(self.embed.weight)
        for emb in self.value_embeds:
            nn.init.normal_(emb.weight)
        for block in self.blocks:
            if block.attn is not None:
                init_linear(block.attn.qkv.weight)
                init_linear(block.attn.proj.weight, zero)
            init_linear(block.mlp.fc.weight)
            init_linear(block.mlp.proj.weight, zero)
        if self.head is not None:
            if self.tied_now:  # tie_until: the head's rows are the embedding for now (the records' std 0.005)
                nn.init.normal_(self.head.weight, std=0.005)
            else:
                init_linear(self.head.weight, zero)

    def lookup_tables(self):
        tables = [emb.weight for emb in self.value_embeds]
        return tables + ([self.embed.weight] if self.head is not None else [])

    def attention_width(self):
        return self.config["num_heads"] * self.config["head_dim"]

    def windows(self, window=None):
        """(long, short) window sizes in tokens for this step, or (None, None) without windows.

        window: the current long window (training grows it); short layers keep the configured
        window_short : window_long ratio. With window_blocks (the record's rule): long = n whole
        blocks, n = max(1, window // block), and short = max(1, n // 2) blocks."""
        if not self.config["sliding_window"]:
            return None, None
        long = int(window or self.config["window_long"])
        if long < 1:
            raise ValueError(f"window must be >= 1 token, got {window}")
        blk = self.config["window_blocks"]
        if blk:
            n = max(1, long // blk)
            return n * blk, max(1, n // 2) * blk
        short = max(1, round(long * self.config["window_short"] / self.config["window_long"]))
        return long, short

    def block_kinds(self):
        return len({v is None for v in self.ve_layers})  # with and without a value embedding

    def window_tensor(self, w, device):
        """The window as a 0-d tensor on `device` (compiled masks read it, so a growing window
        recompiles nothing); made once per value, not copied from the host at every forward."""
        if w is None:
            return None
        key = (int(w), str(device))
        if key not in self._window_tensors:
            self._window_tensors[key] = torch.tensor(int(w), device=device)
        return self._window_tensors[key]

    def compiled_shape(self, idx, cache=None) -> bool:
        """True when idx (B, T) runs the compiled path: blocks (compile=True) and fused FlexAttention.

        Compiled kernels are made for the training length T = seq_len. Other lengths (05's
        scoring, exported models) run the blocks eagerly with SDPA and dense masks: the same
        rule, no compile per length, no unfused fallback materialising every score."""
        return cache is None and idx.size(1) == self.seq_len

    def attention_contexts(self, seq_len, window=None):
        long, short = self.windows(window)
        off = self.config["attn_off_layers"]
        if long is None:
            return [0 if i in off else seq_len for i in range(self.num_layers)]
        return [0 if i in off else min(seq_len, long if is_long else short) for i, is_long in enumerate(self.long_layers)]

    def layer_masks(self, idx, window=None, cache=None) -> list:
        """One attention mask per layer for tokens idx (B, T): BlockMask (flex) or bool (B, 1, T, Tk)."""
        B, T = idx.shape
        long, short = self.windows(window)
        eot = self.config["eot_id"]
        blk = self.config["window_blocks"]  # window_blocks: block-granular windows (mask_rule's block)
        if cache is not None:  # decoding: new queries over cached + new keys, dense masks
            start = cache.docs[:, -1] if cache.docs is not None else None
            new_docs = document_ids(idx, eot, start)
            if eot is not None:
                cache.docs = new_docs if cache.docs is None else torch.cat([cache.docs, new_docs], dim=1)
            Tk = cache.length + T
            make = lambda w: dense_mask(mask_rule(cache.docs, w, blk), B, T, Tk, idx.device, q_offset=cache.length)
        else:
            docs = document_ids(idx, eot)
            if docs is not None and self.config["attn_backend"] != "flex" and idx.device.type != "cuda" \
                    and not bool((idx[:, 1:] == eot).any()):
                docs = None  # no row crosses a document boundary: plain causal masking (SDPA's causal kernel)
            if self.config["attn_backend"] == "flex" and (self.compiled_shape(idx) or not self.flex_compiled):
                make = lambda w: block_mask(mask_rule(docs, self.window_tensor(w, idx.device), blk),
                                            B if docs is not None else None, T, idx.device)
            elif docs is None and all(w is None or w >= T for w in (long, short)):
                make = lambda w: "causal"  # nothing beyond causality: SDPA's causal kernel
            else:
                make = lambda w: dense_mask(mask_rule(docs, w, blk), B, T, T, idx.device)
        masks = {w: make(w) for w in {long, short}}
        return [masks[long if is_long else short] for is_long in self.long_layers]

    def hidden(self, idx, window=None, cache=None):
        """idx (B, T) -> final normalised hidden states (B, T, D)."""
        masks = self.layer_masks(idx, window, cache)
        e = F.embedding(idx, self.head.weight) if self.tied_now else self.embed(idx)  # tie_until: the head's rows, for now
        x0 = norm(e)  # (B, T, D)
        x = x0.view_as(x0)  # the same values; a distinct tensor, so a compiled block guards on no alias
        ve = [emb(idx) for emb in self.value_embeds]  # each (B, T, H·Dh)
        eager = not self.compiled_shape(idx, cache)  # other lengths, decoding: no compile per shape
        skips = []
        L = self.num_layers
        for i, block in enumerate(self.blocks):
            if i >= L - self.num_skips:  # decoder half: add the mirror layer's output
                j = L - 1 - i
                x = x + self.skip_weights[j] * skips[j]
            v = ve[self.ve_layers[i]] if self.ve_layers[i] is not None else None
            x = (block.forward if eager else block)(x, x0, v, masks[i], cache)
            if i < self.num_skips:
                skips.append(x)
        return norm(x)

    def logits_from(self, x):
        """(B, T, D) -> (B, T, V) float32, padding rows cut off, soft-capped."""
        V = self.vocab_size
        if self.head is None:
            logits = F.linear(x, self.embed.weight)
        elif self.fp8_head_active(x):  # training only: evaluation gets the exact head
            logits = fp8_linear(x, self.head.weight)
        else:
            logits = self.head(x)
        logits = logits[..., :V].float()
        cap = self.config["softcap"]
        return cap * torch.tanh(logits / cap) if cap else logits

    def set_progress(self, progress: float) -> bool:
        """Move the switches that follow training progress in [0, 1]: the multi-token-prediction
        weights (mtp_tokens), and untying at tie_until (the embedding starts from the head's rows).
        Returns True at the call that unties (then give the embedding the head's optimiser state:
        optim.copy_state(optimizers, model.head.weight, model.embed.weight))."""
        self.mtp_now = mtp_weights(progress, self.config["mtp_tokens"])
        if self.tied_now and progress >= self.config["tie_until"]:
            with torch.no_grad():
                self.embed.weight.copy_(self.head.weight[:self.vocab_size])
                self.tied.fill_(False)
            self.tied_now = False
            return True
        return False

    def mtp_weights_now(self):
        return self.mtp_now
    def fp8_head_active(self, x) -> bool:
        """The FP8 head runs only in training steps (train mode with grad enabled) on CUDA: e4m3 keeps
        3 mantissa bits, so its logits are off by a few percent, fine for a gradient, not for a
        val loss or a score. Evaluation, scoring and generation use the head in the compute dtype."""
        return (bool(self.config["fp8_head"]) and self.training and torch.is_grad_enabled()
                and _fp8_device(x) and (x.numel() // x.size(-1)) % 16 == 0)

    def configure_optimizers(self):
        """hidden_matrices (Muon): every 2-D weight inside the blocks; embed (Adam): token and
        value embeddings; head (Adam); scalars (Adam): lambdas, skip weights, attention scales.
        With tie_until the token embedding trains in the head's group; with qkv_split the Muon group
        carries "splits" {qkv weight: 3}."""
        hidden = [p for p in self.blocks.parameters() if p.dim() == 2]
        # qkv_split: the merged (3·H·Dh, D) weight is Q, K and V; Muon orthogonalises them one by one
        splits = {b.attn.qkv.weight: 3 for b in self.blocks if b.attn is not None} if self.config["qkv_split"] else {}
        embed = [self.embed.weight] + [e.weight for e in self.value_embeds]
        head = [self.head.weight] if self.head is not None else []
        if self.config["tie_until"]:  # the embedding continues the head's rows: it trains like the head (as #84)
            embed, head = embed[1:], head + embed[:1]
        taken = {id(p) for p in hidden + embed + head}
        scalars = [p for p in self.parameters() if id(p) not in taken]
        return self.check_groups([
            {"name": "hidden_matrices", "optimizer": "muon", "params": hidden, "weight_decay": True, "splits": splits},
            # embed, head: build_optimizers' adam_weight_decay (0 by default; the records decay them, not scalars)
            {"name": "embed", "optimizer": "adam", "params": embed, "weight_decay": True},
            {"name": "head", "optimizer": "adam", "params": head, "weight_decay": True},
            {"name": "scalars", "optimizer": "adam", "params": scalars, "weight_decay": False},
        ])


class FP8Linear(torch.autograd.Function):
    """y = x Wᵀ with x and W cast to float8 (per-tensor scales); backward in x's dtype."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        x2 = x.reshape(-1, x.size(-1))
        x_scale = x2.abs().amax().float().clamp(min=1e-12) / 448.0
        w_scale = w.abs().amax().float().clamp(min=1e-12) / 448.0
        x8 = (x2 / x_scale).to(torch.float8_e4m3fn)
        w8 = (w / w_scale).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=torch.bfloat16)
        return y.view(*x.shape[:-1], w.size(0))

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad = grad.to(torch.bfloat16)
        grad_x = (grad @ w.to(torch.bfloat16)).to(x.dtype)
        grad_w = (grad.reshape(-1, grad.size(-1)).t() @ x.reshape(-1, x.size(-1)).to(torch.bfloat16)).to(w.dtype)
        return grad_x, grad_w


def fp8_linear(x, w):
    return FP8Linear.apply(x, w)


def _fp8_device(x) -> bool:
    """Whether x's device runs the FP8 head (CUDA; tests patch this to run it on CPU)."""
    return x.is_cuda


# ----------------------------------------------------------------------------------------------
# "nanogpt": GPT-2 as nanoGPT builds it

class NanoGPTBlock(nn.Module):
    """x ← x + attn(LN(x));  x ← x + mlp(LN(x)), GELU MLP, learned LayerNorms."""

    def __init__(self, cfg, layer):
        super().__init__()
        D, bias = cfg["model_dim"], cfg["bias"]
        self.layer, self.num_heads, self.dropout = layer, cfg["num_heads"], cfg["dropout"]
        self.ln_1 = nn.LayerNorm(D, bias=bias)
        self.c_attn = nn.Linear(D, 3 * D, bias=bias)
        self.c_proj = nn.Linear(D, D, bias=bias)
        self.ln_2 = nn.LayerNorm(D, bias=bias)
        self.c_fc = nn.Linear(D, int(cfg["mlp_ratio"] * D), bias=bias)
        self.mlp_proj = nn.Linear(int(cfg["mlp_ratio"] * D), D, bias=bias)
        self.drop = nn.Dropout(cfg["dropout"])

    def forward(self, x, cache=None):
        B, T, D = x.shape
        H = self.num_heads
        q, k, v = self.c_attn(self.ln_1(x)).view(B, T, 3, H, D // H).unbind(dim=2)  # (B, T, H, Dh)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        mask = causal_mask_for(T, k.size(2), x.device)
        y = attend(q, k, v, mask, dropout=self.dropout if self.training else 0.0)  # (B, H, T, Dh)
        x = x + self.drop(self.c_proj(y.transpose(1, 2).reshape(B, T, D)))
        return x + self.drop(self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)))))


class NanoGPT(LanguageModel):
    """GPT-2: token + learned position embeddings, pre-LayerNorm blocks, tied head."""

    @staticmethod
    def resolve(cfg, device):
        _head_dim(cfg, allow_override=False)
        if not 0 <= cfg["dropout"] < 1:
            raise ModelConfigError(f"dropout must be in [0, 1), got {cfg['dropout']}")
        cfg["compile"] = _resolve_compile(cfg["compile"], device)

    def __init__(self, cfg):
        super().__init__(cfg)
        V, D, T = cfg["vocab_size"], cfg["model_dim"], cfg["seq_len"]
        self.wte = nn.Embedding(V, D)
        self.wpe = nn.Embedding(T, D)
        self.drop = nn.Dropout(cfg["dropout"])
        self.blocks = nn.ModuleList(NanoGPTBlock(cfg, i) for i in range(cfg["num_layers"]))
        self.ln_f = nn.LayerNorm(D, bias=cfg["bias"])
        self.lm_head = None if cfg["tie_embeddings"] else nn.Linear(D, V, bias=False)

    def init_weights(self):
        """nanoGPT's: N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)), zero biases."""
        normal_init(self)
        for block in self.blocks:
            for w in (block.c_proj.weight, block.mlp_proj.weight):
                nn.init.normal_(w, std=0.02 / math.sqrt(2 * self.num_layers))

    def lookup_tables(self):
        return [self.wpe.weight] + ([self.wte.weight] if self.lm_head is not None else [])

    def attention_width(self):
        return self.config["model_dim"]

    def hidden(self, idx, window=None, cache=None):
        offset = cache.length if cache is not None else 0
        pos = torch.arange(offset, offset + idx.size(1), device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, D)
        for block in self.blocks:
            x = (block if cache is None else block.forward)(x, cache)  # eager when decoding
        return self.ln_f(x)

    def logits_from(self, x):
        w = self.wte.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(x, w).float()


# ----------------------------------------------------------------------------------------------
# "llama3": RMSNorm, SwiGLU, rotary, grouped-query attention (Hugging Face module names)

class RMSNorm(nn.Module):
    """Llama's RMS norm with a learned scale, computed in float32."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * F.rms_norm(x.float(), (x.size(-1),), eps=self.eps).type_as(x)


class LlamaAttention(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        D, H, Hkv, Dh, bias = cfg["model_dim"], cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"], cfg["bias"]
        self.layer, self.H, self.Hkv, self.Dh = layer, H, Hkv, Dh
        self.q_proj = nn.Linear(D, H * Dh, bias=bias)
        self.k_proj = nn.Linear(D, Hkv * Dh, bias=bias)
        self.v_proj = nn.Linear(D, Hkv * Dh, bias=bias)
        self.o_proj = nn.Linear(H * Dh, D, bias=bias)
        self.rotary = Rotary(Dh, cfg["seq_len"], rotary_frequencies(Dh, theta=cfg["rope_theta"]))

    def forward(self, x, cache=None):
        B, T, _ = x.shape
        offset = cache.length if cache is not None else 0
        q = self.rotary(self.q_proj(x).view(B, T, self.H, self.Dh), offset)  # (B, T, H, Dh)
        k = self.rotary(self.k_proj(x).view(B, T, self.Hkv, self.Dh), offset)  # (B, T, Hkv, Dh)
        v = self.v_proj(x).view(B, T, self.Hkv, self.Dh)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, Dh)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        y = attend(q, k, v, causal_mask_for(T, k.size(2), x.device))  # (B, H, T, Dh)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.H * self.Dh))


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg):
        super().__init__()
        D, F_, bias = cfg["model_dim"], cfg["ffn_dim"], cfg["bias"]
        self.gate_proj = nn.Linear(D, F_, bias=bias)
        self.up_proj = nn.Linear(D, F_, bias=bias)
        self.down_proj = nn.Linear(F_, D, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg["model_dim"], cfg["norm_eps"])
        self.self_attn = LlamaAttention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg["model_dim"], cfg["norm_eps"])
        self.mlp = LlamaMLP(cfg)

    def forward(self, x, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama3(LanguageModel):
    """Llama 3. Module names follow transformers' LlamaForCausalLM (see hf_state_dict). Rotary uses
    the rotate-half convention with theta=rope_theta and no Llama-3.1 frequency scaling."""

    @staticmethod
    def resolve(cfg, device):
        cfg["head_dim"] = _head_dim(cfg)
        if cfg["head_dim"] % 2:
            raise ModelConfigError(f"rotary embeddings need an even head_dim, got {cfg['head_dim']}")
        H = cfg["num_heads"]
        cfg["num_kv_heads"] = cfg["num_kv_heads"] or H
        if H % cfg["num_kv_heads"]:
            raise ModelConfigError(f"num_heads ({H}) must be a multiple of num_kv_heads ({cfg['num_kv_heads']})")
        if cfg["ffn_dim"] is None:
            cfg["ffn_dim"] = 256 * -(-int(8 * cfg["model_dim"] / 3) // 256)
        cfg["compile"] = _resolve_compile(cfg["compile"], device)

    def __init__(self, cfg):
        super().__init__(cfg)
        V, D = cfg["vocab_size"], cfg["model_dim"]
        self.embed_tokens = nn.Embedding(V, D)
        self.blocks = nn.ModuleList(LlamaBlock(cfg, i) for i in range(cfg["num_layers"]))
        self.norm = RMSNorm(D, cfg["norm_eps"])
        self.lm_head = None if cfg["tie_embeddings"] else nn.Linear(D, V, bias=False)

    @property
    def layers(self):
        return self.blocks

    def init_weights(self):
        """N(0, 0.02) for every matrix (transformers' initializer_range), zero biases, unit norms."""
        normal_init(self)

    def lookup_tables(self):
        return [self.embed_tokens.weight] if self.lm_head is not None else []

    def attention_width(self):
        return self.config["num_heads"] * self.config["head_dim"]

    def hidden(self, idx, window=None, cache=None):
        x = self.embed_tokens(idx)  # (B, T, D)
        for block in self.blocks:
            x = (block if cache is None else block.forward)(x, cache)  # eager when decoding
        return self.norm(x)

    def logits_from(self, x):
        w = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(x, w).float()

    def hf_state_dict(self) -> dict:
        """The weights under transformers' LlamaForCausalLM names. A tied head has no
        lm_head.weight (as in Meta's Llama-3.2 files; set tie_word_embeddings=True)."""
        out = {}
        for name, t in self.state_dict().items():
            name = name.replace("blocks.", "layers.", 1)
            out[name if name.startswith("lm_head") else "model." + name] = t
        return out


# ----------------------------------------------------------------------------------------------
# Small helpers

def _head_dim(cfg, allow_override=True) -> int:
    D, H = cfg["model_dim"], cfg["num_heads"]
    if allow_override and cfg.get("head_dim") is not None:
        if cfg["head_dim"] < 1:
            raise ModelConfigError(f"head_dim must be a positive int, got {cfg['head_dim']}")
        return cfg["head_dim"]
    if D % H:
        hint = " or pass head_dim" if allow_override else ""
        raise ModelConfigError(f"model_dim ({D}) must be divisible by num_heads ({H}); change one of them{hint}")
    return D // H


def _resolve_compile(compile_, device) -> bool:
    if compile_ is None:
        return device.type == "cuda"
    if compile_ and device.type == "mps":
        log.warning("nbcore.model: torch.compile is not used on mps; running eagerly")
        return False
    return bool(compile_)


__all__ = ["build_model", "from_config", "SIZE_PRESETS", "ARCHS", "ARCH_DEFAULTS", "GPT_DEFAULTS",
           "NANOGPT_DEFAULTS", "LLAMA3_DEFAULTS", "ModelConfigError", "LanguageModel", "GPT", "NanoGPT",
           "Llama3", "GPTBlock", "pick_device", "long_window_layers", "value_embeds_for", "value_embed_layers",
           "norm"]

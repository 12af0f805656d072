"""Attention pieces shared by the three architectures: rotary embeddings, masks, kernels, KV cache.

Shapes: B batch, T sequence (Tq queries, Tk keys), H heads, Dh head dim.

One mask rule serves every path. `mask_rule(docs, window)` returns a FlexAttention `mask_mod`
(b, h, q_idx, kv_idx) -> bool: a query may attend to a key when the key is not in its future
(causal), lies within `window` tokens (q - kv < window, the query itself included), and belongs
to the same document. The same function, evaluated on broadcast index tensors, gives the dense
boolean mask the scaled-dot-product (SDPA) fallback uses, so both kernels see identical masks.

Documents: a token equal to `<|endoftext|>` starts a new document (the shards put it at the start
of each document), so document ids are the running count of end-of-text tokens.
"""
import logging
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

log = logging.getLogger("nbcore.model")


# ----------------------------------------------------------------------------------------------
# Rotary position embeddings

def rotary_frequencies(head_dim: int, *, fraction: float = 1.0, theta: float | None = None,
                       min_freq: float = 1 / 1024) -> torch.Tensor:
    """Angular frequency per rotated pair, (Dh/2,). Pair i rotates dims (i, i + Dh/2).

    theta given: the classic RoPE spectrum theta^(-2i/Dh) over all pairs (Llama).
    theta None: the speedrun's spectrum, `fraction` of the pairs rotated with frequencies from 1
    down to `min_freq` (log-spaced), the rest left unrotated (frequency 0).
    """
    pairs = head_dim // 2
    if theta is not None:
        return 1.0 / theta ** (torch.arange(0, pairs, dtype=torch.float64) * 2 / head_dim)
    n_rot = round(fraction * pairs)
    freqs = torch.zeros(pairs, dtype=torch.float64)
    if n_rot > 0:
        freqs[:n_rot] = min_freq ** torch.linspace(0, 1, n_rot, dtype=torch.float64)
    return freqs


class Rotary(nn.Module):
    """Rotates query/key pairs by position-dependent angles. Tables are (T, Dh/2), not saved."""

    def __init__(self, head_dim: int, max_len: int, freqs: torch.Tensor):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), freqs)  # (T, Dh/2)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x (B, T, H, Dh), positions offset..offset+T-1 -> same shape and dtype."""
        T = x.size(1)
        cos = self.cos[offset:offset + T, None, :]  # (T, 1, Dh/2)
        sin = self.sin[offset:offset + T, None, :]
        x1, x2 = x.float().chunk(2, dim=-1)  # (B, T, H, Dh/2) each
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x)


# ----------------------------------------------------------------------------------------------
# Masks

def document_ids(idx: torch.Tensor, eot_id: int | None, start: torch.Tensor | None = None):
    """(B, T) token ids -> (B, T) document ids (None when there are no document boundaries).

    `start` (B,) continues the count from earlier tokens (KV-cache decoding).
    """
    if eot_id is None:
        return None
    docs = (idx == eot_id).cumsum(dim=-1)
    return docs if start is None else docs + start[:, None]


def mask_rule(docs: torch.Tensor | None = None, window=None, block: int = 0):
    """The attention rule as a FlexAttention mask_mod: causal, within `window`, same document.

    docs (B, Tk) document ids or None; window: int, 0-d tensor, or None for no window.
    A tensor window keeps compiled kernels from recompiling as the window grows in training.
    block > 0: the window is whole blocks of `block` tokens, as the Jan-2025 records' block masks:
    a query in block q // block sees the keys of the last window // block blocks, its own included
    (q // block - kv // block < window // block), so it sees between (n-1)·block+1 and n·block keys.
    """
    def mask_mod(b, h, q_idx, kv_idx):
        ok = q_idx >= kv_idx
        if window is not None and block:
            ok = ok & (q_idx // block - kv_idx // block < window // block)
        elif window is not None:
            ok = ok & (q_idx - kv_idx < window)
        if docs is not None:
            ok = ok & (docs[b, q_idx] == docs[b, kv_idx])
        return ok
    return mask_mod


def dense_mask(mask_mod, B: int, Tq: int, Tk: int, device=None, q_offset: int = 0) -> torch.Tensor:
    """Evaluate a mask_mod on every (query, key) pair: (B, 1, Tq, Tk) bool (True = may attend).

    Query i sits at position q_offset + i; keys at 0..Tk-1 (queries are the last Tq positions).
    """
    b = torch.arange(B, device=device)[:, None, None, None]
    q = torch.arange(q_offset, q_offset + Tq, device=device)[None, None, :, None]
    kv = torch.arange(Tk, device=device)[None, None, None, :]
    return mask_mod(b, 0, q, kv).expand(B, 1, Tq, Tk)


def block_mask(mask_mod, B: int | None, T: int, device) -> BlockMask:
    """FlexAttention's block-sparse form of the rule for T queries over T keys (compiled on CUDA)."""
    device = torch.device(device)
    make = compiled("create_block_mask") if device.type == "cuda" else create_block_mask
    return make(mask_mod, B, None, T, T, device=device)


# ----------------------------------------------------------------------------------------------
# Kernels

def compile_backend() -> str:
    """The torch.compile backend: $NBCORE_COMPILE_BACKEND, else "inductor" (Triton kernels on CUDA).

    "aot_eager" traces and runs the same graphs without generating kernels: the tests use it to
    prove the compiled (CUDA) code path on a CPU in seconds."""
    return os.environ.get("NBCORE_COMPILE_BACKEND", "") or "inductor"


_COMPILED = {}  # name -> the compiled function, made once per process


def compiled(name: str):
    """torch.compile(flex_attention) or torch.compile(create_block_mask), made once and reused.

    Made on first use (wrapping costs seconds of imports, too much for every `import nbcore`),
    never inside a compiled region: `flex` traces the plain function there, and GPT models with
    compiled flex call this when they are built. So no compiled block ever guards on it.
    """
    if name not in _COMPILED:
        fn = {"flex_attention": flex_attention, "create_block_mask": create_block_mask}[name]
        # flex: one fused kernel per shape (dynamic=False); the model sends only its training T here
        _COMPILED[name] = torch.compile(fn, dynamic=False if name == "flex_attention" else None,
                                        backend=compile_backend())
    return _COMPILED[name]


def flex(q, k, v, mask: BlockMask, compiled_: bool, scale: float | None = None) -> torch.Tensor:
    """FlexAttention, compiled (fused kernel) or eager (slow reference path)."""
    if compiled_ and not torch.compiler.is_compiling():
        return compiled("flex_attention")(q, k, v, block_mask=mask, scale=scale)
    # eager, or inside a compiled block: Dynamo traces flex_attention into the block's own graph
    return flex_attention(q, k, v, block_mask=mask, scale=scale)


def attend(q, k, v, mask=None, *, scale: float | None = None, compiled_flex: bool = False,
           dropout: float = 0.0) -> torch.Tensor:
    """softmax(q·kᵀ·scale + mask) v.  q (B, H, Tq, Dh), k/v (B, Hkv, Tk, Dh) -> (B, H, Tq, Dh).

    scale None = 1/sqrt(Dh).
    mask: a BlockMask (FlexAttention), a (B|1, 1, Tq, Tk) bool tensor (SDPA), the string
    "causal" (SDPA's built-in causal mask, Tq == Tk), or None (attend to every key).
    Grouped-query attention (Hkv < H) shares each key/value head among H/Hkv query heads.
    """
    if isinstance(mask, BlockMask):
        if q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
            raise RuntimeError("FlexAttention has no backward pass on CPU; train on CPU with "
                               "attn_backend='sdpa' (the same masks), or run this under torch.no_grad()")
        return flex(q, k, v, mask, compiled_flex, scale)
    gqa = k.size(1) != q.size(1)
    causal = isinstance(mask, str) and mask == "causal"
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal,
                                          dropout_p=dropout, scale=scale, enable_gqa=gqa)


def causal_mask_for(Tq: int, Tk: int, device):
    """The mask plain causal attention needs when the last Tq of Tk positions are queries."""
    if Tq == Tk:
        return "causal"
    if Tq == 1:
        return None  # one new token sees every cached key
    return dense_mask(mask_rule(), 1, Tq, Tk, device, q_offset=Tk - Tq)


# ----------------------------------------------------------------------------------------------
# KV cache for generation

class KVCache:
    """Keys and values of the tokens seen so far, per layer: k/v (B, Hkv, Tk, Dh).

    `length` is the number of cached positions (the position of the next token);
    `docs` (B, Tk) holds their document ids when the model masks documents.
    """

    def __init__(self, num_layers: int):
        self.k = [None] * num_layers
        self.v = [None] * num_layers
        self.length = 0
        self.docs = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Append this step's k/v (B, Hkv, T, Dh) to layer's cache; return all of it."""
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


__all__ = ["rotary_frequencies", "Rotary", "document_ids", "mask_rule", "dense_mask", "block_mask",
           "compile_backend", "compiled", "attend", "causal_mask_for", "KVCache"]

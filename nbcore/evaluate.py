"""Evaluating a trained model: val loss, bits per byte, multiple-choice benchmarks, generations.

What the evaluation chapter (05_eval) calls, in the order it calls it:

- `load_run(run_or_checkpoint)`: the model of a checkpoint 04_train wrote, with its tokenizer
  and shard folder.
- `val_loss(model, batches)`: mean next-token loss over the val batches (summed over ranks), and
  `bits_per_byte(loss, bytes_per_token)` from the manifest's bytes of text per token: the number
  that compares runs whose tokenizers differ, so it heads every table.
- `run_benchmark(model, tok, name)` -> `score_items(model, encoded_items)`: multiple-choice items
  scored completion-style. Each ending follows its context; the model's losses on the ending's
  tokens are summed, and four rules pick an ending (lm-evaluation-harness's definitions, so the
  numbers sit next to papers' numbers; `item_result`):
    `acc`            the smallest summed loss (the largest log-likelihood);
    `acc_norm`       the smallest loss per character of the ending (lm-eval's acc_norm);
    `acc_bytes`      the smallest loss per UTF-8 byte of the ending (lm-eval's acc_bytes);
    `acc_per_token`  the smallest mean loss per ending token (llm.c / build-nanogpt's "acc_norm").
  The ending's length is its text without the one separator space it carries (lm-eval's choice
  text; its target_delimiter " " is not counted).
  Batched: contexts run once into a KV cache, then the endings of many items run padded in one
  (R, Te) forward with a mask of the ending positions; items are split across ranks when
  distributed. The scores equal scoring one ending per forward (`score_items_one_at_a_time`).
- `wilson_interval(k, n)`: the 95% interval of an accuracy (nbcore.stats).
- `generate_samples(...)`: the fixed prompt list (`prompts.json`) continued with the KV cache,
  settable temperature/top-k, fixed seed; `write_generations` saves `generations.jsonl`.
- `append_eval(run_dir, entry)`: `eval.json` in the run folder, a list that only grows.

Shapes: B batch (rows), T sequence, D model dim, V vocab; R endings, Tc context, Te ending length.
"""
import datetime
import json
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint, dist, fileio, runs, stats
from .loader import IGNORE  # target id the model's loss skips (-100)

BENCHMARKS = ("hellaswag", "arc_easy", "piqa")
EVAL_FILE = "eval.json"
GENERATIONS_FILE = "generations.jsonl"
PROMPTS_FILE = Path(__file__).with_name("prompts.json")
Z95 = stats.Z95  # standard normal quantile for a two-sided 95% interval


class EvalFileError(ValueError):
    """eval.json exists but is not a list of evaluations; it is left untouched."""


# ---------------------------------------------------------------- loading a run's checkpoint
@dataclass
class LoadedRun:
    """A checkpoint ready to evaluate, and where it came from."""
    model: torch.nn.Module
    tokenizer: object
    run_dir: Path
    checkpoint: Path
    step: int
    data_dir: str | None
    parameters: dict


def resolve_checkpoint(run_or_checkpoint) -> tuple[Path, Path]:
    """(run folder, checkpoint file) from a run folder (its latest checkpoint) or a step_*.pt file.

    A run folder name alone is looked up under runs/ (nbcore.runs.open_run).
    """
    p = Path(run_or_checkpoint)
    if p.suffix == ".pt":
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint {p} does not exist")
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        return run_dir, p
    run_dir = runs.open_run(run_or_checkpoint)
    ckpt = checkpoint.latest(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoints/step_*.pt: train with checkpoint_interval > 0 "
                                f"(04_train writes one at the end), or pass a checkpoint file")
    return run_dir, ckpt


class _TiktokenAdapter:
    """A tiktoken encoding (e.g. 'tiktoken:gpt2') with the BPETokenizer methods evaluation uses."""

    def __init__(self, name):
        import tiktoken

        self.name = name
        self.enc = tiktoken.get_encoding(name.split(":", 1)[1])
        self.eot_id, self.n_vocab = self.enc.eot_token, self.enc.n_vocab

    def encode_ordinary(self, text):
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode(list(ids))


def load_tokenizer(ref):
    """A tokenizer folder (nbcore BPE) or 'tiktoken:<name>'."""
    if str(ref).startswith("tiktoken:"):
        return _TiktokenAdapter(str(ref))
    from .tokenizer import BPETokenizer

    return BPETokenizer.load(ref)


def load_run(run_or_checkpoint, device="cpu", tokenizer=None, data_dir=None, compile=False) -> LoadedRun:
    """Rebuild the model of a checkpoint that 04_train wrote, with its tokenizer and data folder.

    The model config is the checkpoint's `extra['model_config']`; it is rebuilt for `device`
    (compute dtype and attention kernel picked for that device, not the training machine's).
    The tokenizer and shard folder come from the run's tokenizer.json (written by 04_train),
    else from the shards' manifest; `tokenizer` / `data_dir` override them.
    """
    from . import model as model_lib
    from . import shards

    run_dir, ckpt, blob, ref = _read_run(run_or_checkpoint)
    extra = blob.get("extra") or {}
    cfg = extra.get("model_config")
    if not cfg:
        raise ValueError(f"checkpoint {ckpt} records no model_config in its extra dict; it was not written "
                         f"by 04_train (checkpoint.save(..., extra={{'model_config': model.config}}))")
    cfg = {k: v for k, v in cfg.items() if k not in ("device", "dtype", "compile")}
    if cfg.get("arch") == "gpt":
        cfg["attn_backend"] = "auto"
        cfg["fp8_head"] = False
    net = model_lib.build_model(**cfg, device=device, compile=compile)
    checkpoint.unwrap(net).load_state_dict(blob["model"])
    net.eval()
    parameters = dict(extra.get("parameters") or {})
    data_dir = data_dir or ref.get("data_dir") or parameters.get("data_dir") or None
    tok_ref = tokenizer or ref.get("tokenizer_dir") or parameters.get("tokenizer") or None
    if not tok_ref and data_dir:
        tok_ref = shards.load_manifest(data_dir).get("tokenizer_dir")
    if not tok_ref:
        raise ValueError(f"cannot tell which tokenizer {run_dir.name} was trained with (no tokenizer.json in the "
                         f"run folder, no tokenizer_dir in the shards' manifest): pass tokenizer=FOLDER")
    tok = load_tokenizer(tok_ref)
    if tok.n_vocab > cfg["vocab_size"]:
        raise ValueError(f"tokenizer {tok_ref} has {tok.n_vocab} ids but the model only {cfg['vocab_size']} "
                         f"embedding rows: pass the tokenizer this run was trained with")
    return LoadedRun(model=net, tokenizer=tok, run_dir=Path(run_dir), checkpoint=Path(ckpt), step=int(blob["step"]),
                     data_dir=str(data_dir) if data_dir else None, parameters=parameters)


def _read_run(run_or_checkpoint):
    """(run folder, checkpoint, its dict, the run's tokenizer.json or {}). Distributed, rank 0 reads
    them and broadcasts (other nodes may hold no copy of the run); its error is raised everywhere."""
    def read():
        run_dir, ckpt = resolve_checkpoint(run_or_checkpoint)
        ref = fileio.read_json(run_dir / "tokenizer.json") if (run_dir / "tokenizer.json").exists() else {}
        return run_dir, ckpt, checkpoint.read(ckpt, map_location="cpu"), ref

    if not dist.is_distributed():
        return read()
    import io

    payload = None
    if torch.distributed.get_rank() == 0:
        try:
            run_dir, ckpt, blob, ref = read()
            buf = io.BytesIO()
            torch.save(blob, buf)
            payload = ("ok", (str(run_dir), str(ckpt), buf.getvalue(), ref))
        except (FileNotFoundError, ValueError) as e:
            payload = (type(e).__name__, str(e))
    kind, data = dist.broadcast_object(payload)
    if kind != "ok":
        raise (FileNotFoundError if kind == "FileNotFoundError" else ValueError)(data)
    run_dir, ckpt, raw, ref = data
    return Path(run_dir), Path(ckpt), torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True), ref


# ---------------------------------------------------------------- val loss and bits per byte
def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    """Mean loss in nats per token -> bits per byte of UTF-8 text: loss / ln 2 / bytes per token."""
    if bytes_per_token <= 0:
        raise ValueError(f"bytes_per_token must be positive, got {bytes_per_token}")
    return loss_nats / math.log(2) / bytes_per_token


def _logit_budget(device) -> int:
    """Logits (rows x V floats) made at once by val_loss: cache-sized on a CPU, large on a GPU."""
    return 1 << 27 if torch.device(device).type == "cuda" else 1 << 21


def batch_nats(model, x, y, window=None, max_logits=None) -> torch.Tensor:
    """(sum of next-token losses in nats as float64, number of scored targets) of one batch, as a
    (2,) tensor on x's device: no host sync. x, y (B, T); targets equal to IGNORE are skipped.

    The hidden states come from one (B, T) forward; the head and its softmax then run on
    chunks of at most `max_logits` / V positions, so the (B, T, V) logits never exist at once
    (on a CPU the chunk stays in cache; on a GPU it bounds memory)."""
    model.check_input(x, y)  # (B, T) int64 ids, T <= seq_len, y shaped like x
    h = _hidden(model, x, window).flatten(0, 1)  # (B·T, D)
    t = y.reshape(-1)  # (B·T,)
    step = max(1, (max_logits or _logit_budget(x.device)) // model.vocab_size)
    nats = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, t.numel(), step):
        with model.autocast():
            logits = model.logits_from(h[i:i + step])  # (n, V) float32
        nats = nats + F.cross_entropy(logits.float(), t[i:i + step], ignore_index=IGNORE,
                                      reduction="none").double().sum()
    return torch.stack([nats, (t != IGNORE).sum().double()])


@torch.no_grad()
def val_loss(model, batches, device="cpu", window=None) -> dict:
    """Mean next-token loss over `batches` of (x, y), each (B, T), summed over all ranks.

    Every rank passes its own batches (e.g. `loader.val_batches(..., rank, world_size)`);
    returns {'val_loss': nats per token, 'val_tokens': tokens scored on all ranks}.
    The sums stay on the device until the end (one host sync per call, none per batch), and
    each batch's logits are made a chunk at a time (`batch_nats`).
    """
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of nats, tokens]
    was_training = model.training
    model.eval()
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        total += batch_nats(model, x, y, window)
    model.train(was_training)
    if dist.is_distributed():
        torch.distributed.all_reduce(total)
    nats, tokens = total.tolist()
    if tokens == 0:
        raise ValueError("no val tokens were scored: the val shard is empty or shorter than one "
                         "sequence; use a smaller batch_size/seq_len or make a bigger val split")
    return {"val_loss": nats / tokens, "val_tokens": int(tokens)}


# ---------------------------------------------------------------- multiple choice: encoding
@dataclass
class EncodedItem:
    """One multiple-choice item as token rows: rows[i] = context tokens + ending i's tokens."""
    rows: list            # list of list[int], one per ending
    starts: list          # starts[i]: index in rows[i] of ending i's first token
    label: int
    chars: list = None    # chars[i]: ending i's length in characters (for acc_norm; see choice_text)
    n_bytes: list = None  # n_bytes[i]: its length in UTF-8 bytes (for acc_bytes)


def join_ending(context: str, ending: str) -> str:
    """The ending's text as it follows the context: a space between them unless one is there."""
    if not context or context[-1].isspace() or ending[:1].isspace():
        return ending
    return " " + ending


def choice_text(ending: str) -> str:
    """The ending without the one separator space it carries: the text whose length acc_norm
    (characters) and acc_bytes (UTF-8 bytes) divide by, as lm-eval's choice strings."""
    return ending[1:] if ending.startswith(" ") else ending


def encode_item(tokenizer, item, bos_id=None, max_len=None) -> EncodedItem:
    """Tokenize an item: context once, each ending as it continues the context.

    lm-evaluation-harness's rule for a causal model: whitespace at the end of the context moves
    to the ending, then the ending's tokens are those of tokenize(context + ending) past the
    tokens of tokenize(context) (the same as tokenizing the ending alone whenever the join is a
    pre-tokenizer boundary, as it is after a space).
    `bos_id` (the tokenizer's <|endoftext|>, as every training document starts with it) goes
    first. A row longer than `max_len` (the model's sequence length) loses context tokens from
    the left; an ending that alone does not fit is an error.
    """
    context = item.context
    moved = context[len(context.rstrip()):]  # trailing whitespace goes with the ending
    context = context[:len(context) - len(moved)]
    ctx = list(tokenizer.encode_ordinary(context))
    if bos_id is not None:
        ctx = [bos_id] + ctx
    n_ctx = len(ctx) - (bos_id is not None)
    rows, starts = [], []
    for ending in item.endings:
        end = list(tokenizer.encode_ordinary(context + moved + join_ending(item.context, ending)))[n_ctx:]
        if not end:
            raise ValueError(f"an ending of item {item.context[:60]!r} encodes to no tokens")
        row = ctx + end
        if max_len is not None and len(row) > max_len:
            cut = len(row) - max_len
            if cut >= len(ctx):
                raise ValueError(f"an ending of {len(end)} tokens does not fit seq_len {max_len}; "
                                 f"evaluate with a model of longer seq_len")
            row = row[cut:]
        rows.append(row)
        starts.append(len(row) - len(end))
    texts = [choice_text(e) for e in item.endings]
    return EncodedItem(rows=rows, starts=starts, label=int(item.label), chars=[len(t) for t in texts],
                       n_bytes=[len(t.encode("utf-8")) for t in texts])


def encode_items(tokenizer, items, bos_id=None, max_len=None) -> list[EncodedItem]:
    return [encode_item(tokenizer, it, bos_id=bos_id, max_len=max_len) for it in items]


# ---------------------------------------------------------------- multiple choice: scoring
def pack_rows(rows, starts, pad_id: int, pad_multiple: int = 1):
    """Rows of different lengths -> inputs, targets (B, T) with the ending mask in the targets.

    A row of n tokens gives n-1 predictions: inputs row[:-1], targets row[1:]; targets
    outside the ending (and padding) are IGNORE, so the model's per-token loss is zero there.
    Padding goes on the right, where a causal model cannot see it from earlier positions.
    """
    T = max(len(r) for r in rows) - 1
    T = -(-T // pad_multiple) * pad_multiple
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for b, (row, s) in enumerate(zip(rows, starts)):
        n = len(row) - 1
        x[b, :n] = torch.tensor(row[:-1])
        y[b, s - 1:n] = torch.tensor(row[s:])  # position t predicts token t+1
    return x, y


def _hidden(model, idx, window, cache=None):
    """Final hidden states (B, T, D) under the model's autocast; extends `cache` by T positions."""
    with model.autocast():
        h = model.hidden(idx, window=window, cache=cache)
    if cache is not None:
        cache.length += idx.size(1)
    return h


def _token_losses(model, h, targets):
    """Cross-entropy of the next token from selected hidden states: h (N, D), targets (N,) -> (N,) float64.

    Logits are made only where a loss is needed (the ending's positions), not for the whole
    (B, T, V): the head and its softmax are a large part of a small model's forward."""
    if h.size(0) == 0:
        return torch.zeros(0, dtype=torch.float64, device=h.device)
    with model.autocast():
        logits = model.logits_from(h)  # (N, V) float32
    return F.cross_entropy(logits.float(), targets, reduction="none").double()


@torch.no_grad()
def _full_row_losses(model, rows, starts, device, pad_id, window, pad_multiple):
    """(sum, mean) of each row's ending-token losses, every row read whole in one padded (B, T) forward."""
    x, y = pack_rows(rows, starts, pad_id, pad_multiple)
    x, y = x.to(device), y.to(device)
    h = _hidden(model, x, window)  # (B, T, D)
    keep = y != IGNORE  # (B, T): the ending's positions
    losses = torch.zeros(y.shape, dtype=torch.float64, device=device)
    losses[keep] = _token_losses(model, h[keep], y[keep])
    sums = losses.sum(dim=1)
    return sums.cpu(), (sums / keep.sum(dim=1)).cpu()


def _repeat_cache(cache, counts):
    """Copy each item's cached keys/values once per ending: (B_items, ...) -> (sum(counts), ...)."""
    cache.k = [None if t is None else t.repeat_interleave(counts, dim=0) for t in cache.k]
    cache.v = [None if t is None else t.repeat_interleave(counts, dim=0) for t in cache.v]
    if getattr(cache, "docs", None) is not None:
        cache.docs = cache.docs.repeat_interleave(counts, dim=0)


@torch.no_grad()
def _shared_context_losses(model, encs, device, pad_id, window):
    """(sum, mean) per ending for items whose contexts have the same length Tc.

    The contexts run once, (B_items, Tc), filling a KV cache; the cache is copied per ending
    and all endings run as one right-padded (R, Te) batch on top of it. The ending's first
    token is predicted from the context's last position, the others from the ending's own.
    The same arithmetic as reading context + ending whole, with the context done once.
    """
    from .attention import KVCache

    Tc = encs[0].starts[0]
    ctx = torch.tensor([e.rows[0][:Tc] for e in encs], dtype=torch.long, device=device)  # (B_items, Tc)
    cache = KVCache(model.num_layers)
    h_ctx = _hidden(model, ctx, window, cache)  # (B_items, Tc, D)
    counts = torch.tensor([len(e.rows) for e in encs], device=device)
    endings = [row[Tc:] for e in encs for row in e.rows]
    R = len(endings)
    first = _token_losses(model, h_ctx[:, -1].repeat_interleave(counts, dim=0),  # (R, D): last context position
                          torch.tensor([end[0] for end in endings], device=device))  # (R,)
    Te = max(len(end) for end in endings) - 1  # an ending's last token predicts nothing: not fed
    rest = torch.zeros(R, dtype=torch.float64, device=device)
    n_tok = torch.ones(R, dtype=torch.float64, device=device)
    if Te > 0:
        x = torch.full((R, Te), pad_id, dtype=torch.long)
        y = torch.full((R, Te), IGNORE, dtype=torch.long)
        for r, end in enumerate(endings):
            x[r, :len(end) - 1] = torch.tensor(end[:-1])
            y[r, :len(end) - 1] = torch.tensor(end[1:])
        x, y = x.to(device), y.to(device)
        _repeat_cache(cache, counts)
        h = _hidden(model, x, window, cache)  # (R, Te, D)
        keep = y != IGNORE
        losses = torch.zeros(y.shape, dtype=torch.float64, device=device)
        losses[keep] = _token_losses(model, h[keep], y[keep])
        rest, n_tok = losses.sum(dim=1), n_tok + keep.sum(dim=1)
    sums = first + rest
    return sums.cpu(), (sums / n_tok).cpu()


def _batches(lengths, batch_size: int, max_batch_tokens: int, weights=None):
    """Indices grouped into batches, longest first (less padding): at most `batch_size` rows
    (weights[i] rows for entry i) and `max_batch_tokens` padded tokens per batch."""
    weights = weights or [1] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch, rows, longest = [], 0, 0
    for i in order:
        longest_if = max(longest, lengths[i])
        if batch and (rows + weights[i] > batch_size or longest_if * (rows + weights[i]) > max_batch_tokens):
            yield batch
            batch, rows, longest_if = [], 0, lengths[i]
        batch.append(i)
        rows += weights[i]
        longest = longest_if
    if batch:
        yield batch


def shares_context(enc) -> bool:
    """True when every ending of the item follows the same context tokens (no row was cut differently)."""
    s = enc.starts[0]
    return s >= 1 and all(st == s and row[:s] == enc.rows[0][:s] for row, st in zip(enc.rows, enc.starts))


def _local_scores(model, encoded, device, pad_id, window, batch_size, max_batch_tokens, pad_multiple,
                  shared_context=True):
    """Sum and mean ending losses of this rank's items: lists of lists, one list per item."""
    sums = [[0.0] * len(e.rows) for e in encoded]
    means = [[0.0] * len(e.rows) for e in encoded]
    by_ctx, whole = {}, []  # items sharing their context, by context length; items read whole
    for j, e in enumerate(encoded):
        if shared_context and shares_context(e):
            by_ctx.setdefault(e.starts[0], []).append(j)
        else:
            whole.append(j)
    if by_ctx:
        for Tc, members in sorted(by_ctx.items()):
            lengths = [max(len(r) for r in encoded[j].rows) for j in members]
            weights = [len(encoded[j].rows) for j in members]
            for batch in _batches(lengths, batch_size, max_batch_tokens, weights):
                js = [members[i] for i in batch]
                s, m = _shared_context_losses(model, [encoded[j] for j in js], device, pad_id, window)
                k = 0
                for j in js:
                    n = len(encoded[j].rows)
                    sums[j], means[j] = s[k:k + n].tolist(), m[k:k + n].tolist()
                    k += n
    flat_rows, flat_starts, owner = [], [], []
    for j in whole:
        for k, (row, st) in enumerate(zip(encoded[j].rows, encoded[j].starts)):
            flat_rows.append(row)
            flat_starts.append(st)
            owner.append((j, k))
    for batch in _batches([len(r) for r in flat_rows], batch_size, max_batch_tokens):
        s, m = _full_row_losses(model, [flat_rows[i] for i in batch], [flat_starts[i] for i in batch],
                                device, pad_id, window, pad_multiple)
        for b, i in enumerate(batch):
            j, k = owner[i]
            sums[j][k], means[j][k] = float(s[b]), float(m[b])
    return sums, means


def _gather_scores(indices, sums, means, device):
    """Every rank's (item index, sums, means) on every rank, through one all_gather of a
    padded float64 tensor: columns [index, n_endings, sums..., means...]."""
    world = torch.distributed.get_world_size()
    width = max((len(s) for s in sums), default=0)
    width = int(dist.all_reduce([width], "max", device)[0])
    n_max = int(dist.all_reduce([len(indices)], "max", device)[0])
    mine = torch.full((n_max, 2 + 2 * width), -1.0, dtype=torch.float64)
    for r, (i, s, m) in enumerate(zip(indices, sums, means)):
        mine[r, 0], mine[r, 1] = i, len(s)
        mine[r, 2:2 + len(s)] = torch.tensor(s, dtype=torch.float64)
        mine[r, 2 + width:2 + width + len(m)] = torch.tensor(m, dtype=torch.float64)
    mine = mine.to(device)
    parts = [torch.empty_like(mine) for _ in range(world)]
    torch.distributed.all_gather(parts, mine)
    out = {}
    for row in torch.cat(parts).cpu().tolist():
        if row[0] < 0:
            continue
        n = int(row[1])
        out[int(row[0])] = (row[2:2 + n], row[2 + width:2 + width + n])
    return out


RULES = {  # result key suffix -> what the loss of an ending is divided by before the smallest is picked
    "": "nothing: the summed loss (acc)",
    "_norm": "the ending's length in characters (acc_norm, as lm-evaluation-harness)",
    "_bytes": "the ending's length in UTF-8 bytes (acc_bytes, as lm-evaluation-harness)",
    "_per_token": "the ending's number of tokens (acc_per_token, llm.c's 'acc_norm')",
}


def item_result(index, label, sums, means, chars=None, n_bytes=None) -> dict:
    """One item's scores and the model's choice under each rule (ties go to the first ending).

    sums: summed loss of each ending (nats), means: per ending token; chars / n_bytes: each
    ending's length in characters / UTF-8 bytes (EncodedItem.chars / .n_bytes).
    pred: smallest sum (acc); pred_norm: smallest sum / chars (acc_norm); pred_bytes: smallest
    sum / bytes (acc_bytes); pred_per_token: smallest mean (acc_per_token).
    """
    if chars is None or n_bytes is None:
        raise ValueError("item_result needs each ending's length in characters and bytes (acc_norm, acc_bytes); "
                         "build the items with encode_item, which records them")
    if not len(sums) == len(means) == len(chars) == len(n_bytes):
        raise ValueError(f"one score per ending: got {len(sums)} sums, {len(means)} means, {len(chars)} "
                         f"lengths in characters, {len(n_bytes)} in bytes")
    pick = lambda v: min(range(len(v)), key=lambda k: v[k])
    pred = pick(sums)
    pred_norm = pick([s / max(c, 1) for s, c in zip(sums, chars)])
    pred_bytes = pick([s / max(b, 1) for s, b in zip(sums, n_bytes)])
    pred_tok = pick(means)
    return {"index": int(index), "label": int(label), "sum_losses": list(sums), "mean_losses": list(means),
            "chars": [int(c) for c in chars], "bytes": [int(b) for b in n_bytes],
            "pred": pred, "pred_norm": pred_norm, "pred_bytes": pred_bytes, "pred_per_token": pred_tok,
            "correct": pred == label, "correct_norm": pred_norm == label, "correct_bytes": pred_bytes == label,
            "correct_per_token": pred_tok == label}


def score_items(model, encoded, device="cpu", pad_id=0, window=None, batch_size=64,
                max_batch_tokens=16384, pad_multiple=1, shared_context=True) -> list[dict]:
    """Score EncodedItems batched: many items' endings per (B, T) forward, items split across ranks.

    shared_context=True (default): items whose contexts have the same length run their contexts
    once, (B_items, Tc), into a KV cache; every ending of those items then runs in one padded
    (R, Te) batch on a copy of its item's cache (the context is not recomputed per ending).
    shared_context=False, and items whose endings do not share one context (cut differently
    to fit seq_len): each row is context + ending, right-padded into (B, T).
    Either way only the ending's positions get logits. `batch_size` bounds the rows (endings)
    per forward, `max_batch_tokens` the padded rows x longest row.
    Distributed, rank r scores items r, r+W, r+2W, ... and the results are all-gathered, so
    every rank returns the full list, in item order, of `item_result` dicts.
    """
    if batch_size < 1 or max_batch_tokens < 1:
        raise ValueError(f"batch_size and max_batch_tokens must be >= 1, got {batch_size}, {max_batch_tokens}")
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist.is_distributed() else (0, 1)
    mine = list(range(rank, len(encoded), world))
    was_training = model.training
    model.eval()
    sums, means = _local_scores(model, [encoded[i] for i in mine], device, pad_id, window,
                                batch_size, max_batch_tokens, pad_multiple, shared_context)
    model.train(was_training)
    if world > 1:
        table = _gather_scores(mine, sums, means, device)
    else:
        table = {i: (s, m) for i, s, m in zip(mine, sums, means)}
    return [item_result(i, encoded[i].label, *table[i], encoded[i].chars, encoded[i].n_bytes)
            for i in range(len(encoded))]


@torch.no_grad()
def score_items_one_at_a_time(model, encoded, device="cpu", window=None) -> list[dict]:
    """The reference: one ending per forward, no padding (how the original lab scored)."""
    was_training = model.training
    model.eval()
    out = []
    for i, enc in enumerate(encoded):
        sums, means = [], []
        for row, s in zip(enc.rows, enc.starts):
            x = torch.tensor([row[:-1]], device=device)  # (1, T)
            y = torch.tensor([row[1:]], device=device)
            losses = model(x, targets=y, window=window, reduction="none")[0, s - 1:].double()  # (n_end,)
            sums.append(float(losses.sum()))
            means.append(float(losses.mean()))
        out.append(item_result(i, enc.label, sums, means, enc.chars, enc.n_bytes))
    model.train(was_training)
    return out


# ---------------------------------------------------------------- accuracies and intervals
def wilson_interval(k, n, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k correct of n (95% by default); nbcore.stats computes it."""
    return stats.wilson_interval(k, n, z)


def summarize(results) -> dict:
    """{'n', 'acc', 'acc_norm', 'acc_bytes', 'acc_per_token', and each one's '_ci95'} of a list of
    `item_result`s, plus 'acc_norm_unit': 'char' (eval.json files before it held the per-token rule
    under 'acc_norm')."""
    n = len(results)
    if n == 0:
        raise ValueError("no items were scored: the benchmark file is empty or max_items cut everything")
    out = {"n": n}
    for suffix in RULES:
        k = sum(r["correct" + suffix] for r in results)
        out["acc" + suffix] = k / n
        out["acc" + suffix + "_ci95"] = list(wilson_interval(k, n))
    out["acc_norm_unit"] = "char"
    return out


# ---------------------------------------------------------------- the benchmark data
def benchmark_loaders() -> dict:
    """{'hellaswag': load_hellaswag, 'arc_easy': load_arc_easy, 'piqa': load_piqa} (nbcore.evaldata)."""
    from . import evaldata

    return dict(evaldata.LOADERS)


def _unavailable_errors() -> tuple:
    from . import evaldata

    return (evaldata.DatasetUnavailable,)


def load_benchmark(name: str, path=None, max_items: int = 0):
    """(items, None), or (None, reason) when the data can be neither downloaded nor read from the cache.

    `path`: a local file instead of the download (HellaSwag's jsonl; ARC-Easy / PIQA rows as
    on the hub, .jsonl or .parquet). `max_items` > 0 keeps the first ones.
    """
    loaders = benchmark_loaders()
    if name not in loaders:
        raise ValueError(f"unknown benchmark {name!r}; choose from {sorted(loaders)}")
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"{name}: local file {path} does not exist")
    kwargs = {} if path is None else ({"path": str(path)} if name == "hellaswag" else {"data_files": str(path)})
    try:
        items = loaders[name](**kwargs)
    except _unavailable_errors() as e:
        return None, f"{type(e).__name__}: {e}"
    items = list(items)
    if max_items and max_items > 0:
        items = items[:max_items]
    return items, None


def run_benchmark(model, tokenizer, name, path=None, max_items=0, device="cpu", window=None,
                  batch_size=64, max_batch_tokens=16384, max_len=None, pad_multiple=1) -> dict:
    """Load, encode and score one benchmark: {'summary': eval.json entry, 'items', 'results'}.

    When the data is missing, summary is {'skipped': reason} and items/results are empty.
    """
    items, reason = load_benchmark(name, path, max_items)
    if items is None:
        return {"summary": {"skipped": reason}, "items": [], "results": []}
    bos = getattr(tokenizer, "eot_id", None)
    t0 = time.perf_counter()
    encoded = encode_items(tokenizer, items, bos_id=bos, max_len=max_len)
    results = score_items(model, encoded, device=device, pad_id=bos or 0, window=window,
                          batch_size=batch_size, max_batch_tokens=max_batch_tokens, pad_multiple=pad_multiple)
    summary = summarize(results)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return {"summary": summary, "items": items, "results": results}


# ---------------------------------------------------------------- generations
def load_prompts(path=None) -> list[dict]:
    """The fixed prompt list: [{'id': str, 'prompt': str}, ...] (nbcore/prompts.json by default)."""
    path = Path(path) if path is not None else PROMPTS_FILE
    prompts = fileio.read_json(path)
    if not isinstance(prompts, list) or not all(isinstance(p, dict) and {"id", "prompt"} <= set(p) for p in prompts):
        raise ValueError(f"{path}: expected a JSON list of {{'id': ..., 'prompt': ...}} objects")
    ids = [p["id"] for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: prompt ids must be unique")
    return prompts


def prompt_seed(seed: int, prompt_id) -> int:
    """The generator seed of one prompt: `seed` plus a stable hash (CRC-32) of the prompt's id."""
    return int(seed) + zlib.crc32(str(prompt_id).encode("utf-8"))


@torch.no_grad()
def generate_samples(model, tokenizer, prompts, max_new_tokens=64, temperature=0.8, top_k=50, seed=1337,
                     checkpoint="", device="cpu", stop_at_eot=True) -> list[dict]:
    """Continue each prompt with the model's KV-cache `generate`; one record per prompt.

    Each prompt gets its own generator, seeded with `prompt_seed(seed, prompt id)`: an output does not
    depend on the other prompts or their order, and different prompts draw different random numbers
    (one seed for all made every sample start alike). temperature 0 means greedy (top-1). Output
    stops at <|endoftext|>.
    """
    if temperature < 0 or max_new_tokens < 1:
        raise ValueError(f"need temperature >= 0 and max_new_tokens >= 1, got {temperature}, {max_new_tokens}")
    settings = {"temperature": float(temperature), "top_k": top_k or None, "seed": int(seed),
                "max_new_tokens": int(max_new_tokens), "checkpoint": str(checkpoint)}
    eot = getattr(tokenizer, "eot_id", None)
    top_k = top_k or None  # 0 = no top-k
    was_training = model.training
    model.eval()
    records = []
    for p in prompts:
        ids = ([eot] if eot is not None else []) + list(tokenizer.encode_ordinary(p["prompt"]))
        idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
        gen = torch.Generator(device=device).manual_seed(prompt_seed(seed, p["id"]))
        out = model.generate(idx, max_new_tokens, temperature=float(temperature), top_k=top_k, generator=gen)
        new = out[0, len(ids):].tolist()
        if stop_at_eot and eot is not None and eot in new:
            new = new[:new.index(eot)]
        records.append({"prompt_id": str(p["id"]), "prompt": p["prompt"], "output": tokenizer.decode(new),
                        "settings": dict(settings)})
    model.train(was_training)
    return records


def write_generations(path, records) -> Path:
    """generations.jsonl: one JSON object per line, written atomically."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return fileio.write_text(path, text)


def read_generations(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------- tables
BENCH_TITLES = {"hellaswag": "HellaSwag", "arc_easy": "ARC-Easy", "piqa": "PIQA"}


def markdown_table(headers, rows) -> str:
    """A Markdown table (renders in JupyterLab with IPython.display.Markdown, reads fine as text)."""
    cells = [[str(c) for c in r] for r in rows]
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def _pct(x) -> str:
    return f"{100 * x:.1f}"


def skip_note(name: str, reason: str) -> str:
    """One readable line for a skipped benchmark (the full reason, often a URL error, stays in eval.json)."""
    if reason.startswith("DatasetUnavailable"):
        return (f"no data: it could not be downloaded (offline?) and no local file was given; "
                f"pass benchmark_files={{'{name}': PATH}}")
    return reason.splitlines()[0][:120]


def benchmarks_table(benchmarks: dict) -> str:
    """One row per benchmark: n, acc and acc_norm in % with their 95% Wilson intervals, acc_bytes
    and acc_per_token, or the skip note. acc_norm is lm-eval's (loss per character); an entry from
    before acc_norm_unit was recorded held the per-token rule there and shows it as acc_per_token."""
    rows = []
    for name, b in benchmarks.items():
        title = BENCH_TITLES.get(name, name)
        if "skipped" in b:
            rows.append([title, "-", "-", "-", "-", "-", "-", "-", f"skipped: {skip_note(name, b['skipped'])}"])
            continue
        per_char = b.get("acc_norm_unit") == "char"  # else an old entry: acc_norm held the per-token rule
        lo, hi = b["acc_ci95"]
        nlo, nhi = b["acc_norm_ci95"]
        opt = lambda v: "-" if v is None else _pct(v)
        rows.append([title, b["n"], _pct(b["acc"]), f"[{_pct(lo)}, {_pct(hi)}]",
                     _pct(b["acc_norm"]) if per_char else "-", f"[{_pct(nlo)}, {_pct(nhi)}]" if per_char else "-",
                     opt(b.get("acc_bytes")), opt(b.get("acc_per_token") if per_char else b["acc_norm"]),
                     f"{b.get('seconds', float('nan')):.1f} s"])
    return markdown_table(["benchmark", "n", "acc %", "95% CI", "acc_norm % (per char)", "95% CI",
                           "acc_bytes %", "acc_per_token %", "time / note"], rows)


def headline_table(entry: dict) -> str:
    """Bits per byte first (it compares tokenizers), then val loss, tokens, and each benchmark's acc_norm."""
    headers = ["checkpoint", "step", "val bpb", "val loss", "val tokens"]
    row = [Path(entry["checkpoint"]).name, entry["step"],
           "-" if entry.get("val_bpb") is None else f"{entry['val_bpb']:.4f}",
           "-" if entry.get("val_loss") is None else f"{entry['val_loss']:.4f}",
           "-" if entry.get("val_tokens") is None else f"{entry['val_tokens']:,}"]
    for name, b in entry.get("benchmarks", {}).items():
        headers.append(f"{BENCH_TITLES.get(name, name)} acc_norm %")  # lm-eval's: loss per character
        if "skipped" in b:
            row.append("skipped")
        else:
            row.append(_pct(b["acc_norm"]) if b.get("acc_norm_unit") == "char" else f"{_pct(b['acc_norm'])} (per token)")
    return markdown_table(headers, [row])


# ---------------------------------------------------------------- eval.json
def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def make_entry(checkpoint, step, val=None, bpb=None, benchmarks=None, settings=None) -> dict:
    """One evaluation as eval.json stores it (the compare chapter reads these keys)."""
    val = val or {}
    return {"checkpoint": str(checkpoint), "step": int(step), "evaluated_at": now_iso(),
            "val_loss": val.get("val_loss"), "val_bpb": bpb, "val_tokens": val.get("val_tokens"),
            "benchmarks": dict(benchmarks or {}), "settings": dict(settings or {})}


def read_evals(run_dir) -> list[dict]:
    """The run's eval.json as a list ([] when there is none yet)."""
    path = Path(run_dir) / EVAL_FILE
    if not path.exists():
        return []
    try:
        data = fileio.read_json(path)
    except json.JSONDecodeError as e:
        raise EvalFileError(f"{path} is not valid JSON ({e}); it was left as it is: repair or move it "
                            f"aside, then evaluate again") from e
    if not isinstance(data, list):
        raise EvalFileError(f"{path} holds a {type(data).__name__}, expected a list of evaluations; "
                            f"it was left as it is: move it aside, then evaluate again")
    return data


def append_eval(run_dir, entry) -> Path:
    """Append `entry` to the run's eval.json (atomically; earlier entries are kept as they are)."""
    for key in ("checkpoint", "step", "evaluated_at", "benchmarks"):
        if key not in entry:
            raise ValueError(f"eval entry lacks {key!r}; build it with make_entry()")
    entries = read_evals(run_dir)
    entries.append(entry)
    return fileio.write_json(Path(run_dir) / EVAL_FILE, entries)


def latest_evals(run_dir) -> dict:
    """{checkpoint: its newest entry} (a checkpoint evaluated twice keeps both entries on disk)."""
    out = {}
    for e in read_evals(run_dir):
        out[e["checkpoint"]] = e
    return out


__all__ = ["BENCHMARKS", "EvalFileError", "LoadedRun", "resolve_checkpoint", "load_tokenizer", "load_run",
           "bits_per_byte", "batch_nats", "val_loss", "EncodedItem", "join_ending", "choice_text", "encode_item", "encode_items",
           "pack_rows", "shares_context", "score_items", "score_items_one_at_a_time", "RULES", "item_result",
           "wilson_interval",
           "summarize", "markdown_table", "benchmarks_table", "headline_table", "load_benchmark", "run_benchmark",
           "load_prompts", "generate_samples", "write_generations", "read_generations", "make_entry", "read_evals",
           "append_eval", "latest_evals"]

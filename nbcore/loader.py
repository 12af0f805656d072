"""The training data loader: shards -> batches of (x, y), cut across ranks.

One optimizer step consumes one *global batch*: `world_size * B` rows of `T + 1`
tokens (x is a row's first T tokens, y the same row shifted by one). Rank r takes
rows [r*B : (r+1)*B], so the union of all ranks' (B, T) batches is exactly the
(world_size*B, T) batch one rank would get alone.

Rows. A shard is cut into rows of T + 1 tokens, T apart (row i+1 starts on row i's
last token), from an offset in [0, T) drawn per (seed, epoch, shard), so a second
epoch sees other windows of the text, not the same (x, y) pairs again. With
`align_to_docs` each row starts at a document's first token (the `<|endoftext|>` id
that precedes every document) instead, skipping the tail of the document before it.

Order. An epoch visits every shard once, in an order drawn from (seed, epoch), and
cuts each shard's rows into *blocks* of one global batch: rows drawn at random from
the whole shard (seed, epoch, shard), so the rows of one step come from all over the
text rather than one passage. With `flat=True` each rank gets its B rows as one
sequence, shape (1, B*T), for document-masked attention: there a block's rows stay
contiguous (the sequence is a stretch of the token stream) and the blocks are shuffled.
Batch k depends only on (seed, k) and the files: a resumed run (`load_state_dict`)
sees exactly the tokens it would have seen. When every shard is used up the next
epoch starts (logged), reshuffled. `shuffle=False`: offset 0, contiguous rows, file order.

A batch-size schedule (04's `batch_stages`): build the loader with the largest B and ask
`next_batch(b)` for b <= B rows per rank. The shard's blocks are cut for the largest B; a global batch
of world_size*b rows takes the next rows of that order (rank r its rows [r*b, (r+1)*b)), so the position
is kept in rows and a resumed run continues with the same rows whatever b each step used. With b = B
at every step this is exactly the unscheduled order.

Layouts (`layout`), which parameter set uses which is said in its YAML:
- "rows" (default, all presets but the speedrun): the rows above.
- "stream": the Modded-NanoGPT records' (speedrun_8xh100): the shards in file order, read as one
  stream; each step takes the next world_size*B*T (+1) tokens and rank r gets its contiguous
  B*T of them (with B = 1, one long sequence whose documents the model masks from each other).
  A shard is left when fewer than a global batch + 2 tokens remain (as the record does).
- "bos_aligned": nanochat's: every row starts with a document's first token (<|endoftext|>);
  rows are filled best-fit from a buffer of documents (the largest that fits, again and again),
  and when none fits the shortest is cropped to fill the row exactly. No token is padding; the
  cropped tails are dropped. Rows are then drawn as in "rows" (shuffled) or in order.
"""
import bisect
import functools
from pathlib import Path

import numpy as np
import torch

from .shards import read_shard, shard_files


def _resolve(files, split):
    if isinstance(files, (str, Path)) and Path(files).is_dir():
        return shard_files(files, split)
    if isinstance(files, (str, Path)):
        files = [files]
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("no shard files given")
    return files


def _to_device(a: np.ndarray, device) -> torch.Tensor:
    t = torch.from_numpy(a)
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def doc_aligned_starts(tokens: np.ndarray, eot_id: int, seq_len: int) -> np.ndarray:
    """Row starts for document-aligned rows: each at an eot, each row T+1 tokens in the shard.

    Greedy: a row starts at the first document start at or after the previous row's
    last input position + 1 (`start + T`); a document longer than T loses its tail.
    """
    bos = np.flatnonzero(np.asarray(tokens) == eot_id)
    n = len(tokens)
    starts, cur = [], 0
    while True:
        j = np.searchsorted(bos, cur)
        if j == len(bos) or bos[j] + seq_len + 1 > n:
            break
        starts.append(int(bos[j]))
        cur = int(bos[j]) + seq_len
    return np.asarray(starts, dtype=np.int64)


LAYOUTS = ("rows", "stream", "bos_aligned")


def pack_bos_bestfit(tokens: np.ndarray, bos_id: int, row_len: int, buffer_docs: int = 1000) -> np.ndarray:
    """Documents -> rows of `row_len` tokens, each starting with a document (nanochat's best fit).

    A document runs from one `bos_id` to the next (tokens before the first are skipped). Per row:
    from a buffer of the next `buffer_docs` documents, place the longest that fits the space left
    (ties: the earliest), until none fits; then crop the shortest (ties: the latest) to the space
    left. Returns (n_rows, row_len) with tokens' dtype; a last row that cannot be filled is dropped.
    """
    tokens = np.asarray(tokens)
    starts = np.flatnonzero(tokens == bos_id)
    ends = np.append(starts[1:], len(tokens))
    lengths = (ends - starts).tolist()
    starts = starts.tolist()
    pending = 0  # next document to enter the buffer
    buf = []  # sorted (length, -doc index)
    pieces = []  # (start, length) copied into rows in order
    while True:
        while len(buf) < buffer_docs and pending < len(starts):
            bisect.insort(buf, (lengths[pending], -pending))
            pending += 1
        if not buf:
            break
        left, row = row_len, []
        while left > 0 and buf:
            j = bisect.bisect_right(buf, (left, 1)) - 1  # longest document of length <= left
            if j >= 0:
                n, neg = buf.pop(j)
                row.append((starts[-neg], n))
                left -= n
            else:  # nothing fits: crop the shortest to fill the row
                n, neg = buf.pop(0)
                row.append((starts[-neg], left))
                left = 0
            while len(buf) < buffer_docs and pending < len(starts):
                bisect.insort(buf, (lengths[pending], -pending))
                pending += 1
        if left > 0:
            break  # the data ran out before this row was full
        pieces.extend(row)
    out = np.empty(sum(n for _, n in pieces), dtype=tokens.dtype)
    pos = 0
    for start, n in pieces:
        out[pos:pos + n] = tokens[start:start + n]
        pos += n
    return out.reshape(-1, row_len)


class TokenLoader:
    """Batches of (x, y) for one rank, deterministic for (seed, step).

    files: shard paths (or a shard folder: its train shards). batch_size B and seq_len T
    are per rank. Yields int64 tensors of shape (B, T) on `device` (or (1, B*T) when
    `flat`). `eot_id` is needed for `align_to_docs` and layout "bos_aligned". `shuffle=False`
    reads shards and blocks in file order every epoch. `layout`: "rows", "stream" or
    "bos_aligned" (see the module's docstring).
    """

    def __init__(self, files, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 align_to_docs: bool = False, eot_id: int | None = None, device="cpu", flat: bool = False,
                 shuffle: bool = True, vocab_size: int | None = None, verbose: bool = True, layout: str = "rows"):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size ({batch_size}) and seq_len ({seq_len}) must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r}: use one of {', '.join(LAYOUTS)}")
        if (align_to_docs or layout == "bos_aligned") and eot_id is None:
            raise ValueError("align_to_docs and layout='bos_aligned' need eot_id (the tokenizer's <|endoftext|> id)")
        if align_to_docs and layout != "rows":
            raise ValueError(f"align_to_docs is a variant of layout='rows', not of {layout!r}")
        self.layout = layout
        self.files = _resolve(files, "train")
        self.B, self.T, self.rank, self.world_size = batch_size, seq_len, rank, world_size
        self.rows = batch_size * world_size  # rows in one global batch
        self.seed, self.align_to_docs, self.eot_id = seed, align_to_docs, eot_id
        self.device, self.flat, self.shuffle, self.verbose = device, flat, shuffle, verbose
        self.vocab_size = vocab_size
        self.step = 0  # global batches served
        self.epoch = 0
        self._shard_pos = 0  # index into this epoch's shard order
        self._row_pos = 0  # rows of the current shard's block order served (whole blocks without a schedule)
        self._cache = (None, None, None)  # (file index, tokens, row starts at offset 0)
        self._order_cache = (None, None)  # ((epoch, file index), blocks of this shard visit)
        self._epoch_batches = 0
        if not align_to_docs and layout != "bos_aligned":
            n = [read_shard(f).shape[0] for f in self.files]  # validates every header now
            spare = 2 if layout == "stream" else 1
            if all((k - spare) // (self.rows * self.T) == 0 for k in n):
                raise ValueError(f"no train shard holds one global batch: {self.rows} rows x (T+1) = "
                                 f"{self.rows * self.T + 1} tokens needed, the largest shard has {max(n)}; "
                                 f"lower batch_size or seq_len, or make bigger shards")

    # -------------------------------------------------------------- order
    @property
    def global_batch_tokens(self) -> int:
        return self.rows * self.T

    def _shard_order(self, epoch):
        if not self.shuffle or self.layout == "stream":
            return np.arange(len(self.files))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.files))

    def _rows(self, fi):
        """(tokens, row starts at offset 0 (n_rows,)) of file `fi`, cached for the current file."""
        if self._cache[0] != fi:
            tokens = read_shard(self.files[fi], self.vocab_size)
            if self.layout == "stream":  # whole global batches while more than one + 2 tokens remain
                n_blocks = max(0, (len(tokens) - 2) // (self.rows * self.T))
                starts = np.arange(n_blocks * self.rows, dtype=np.int64) * self.T
            elif self.layout == "bos_aligned":  # packed rows of T + 1, laid end to end
                tokens = pack_bos_bestfit(tokens, self.eot_id, self.T + 1).reshape(-1)
                starts = np.arange(len(tokens) // (self.T + 1), dtype=np.int64) * (self.T + 1)
            elif self.align_to_docs:
                starts = doc_aligned_starts(tokens, self.eot_id, self.T)
            else:
                starts = np.arange(0, len(tokens) - self.T, self.T, dtype=np.int64)
            self._cache = (fi, tokens, starts)
        return self._cache[1], self._cache[2]

    def _blocks(self, epoch, fi):
        """(tokens, row starts of each global batch (n_blocks, rows)) of file `fi` in `epoch`;
        drawn once per shard visit, not per step. The number of blocks does not depend on the
        epoch: the offset only moves rows within the tokens left over after the last block."""
        tokens, starts = self._rows(fi)
        n_blocks = len(starts) // self.rows
        key = (epoch, fi)
        if self._order_cache[0] != key:
            if not self.shuffle or self.layout == "stream":
                blocks = starts[:n_blocks * self.rows].reshape(n_blocks, self.rows)
            else:
                rng = np.random.default_rng([self.seed, epoch, fi])
                if not self.align_to_docs and self.layout == "rows":
                    slack = len(tokens) - 1 - n_blocks * self.rows * self.T  # tokens after the last block
                    offset = int(rng.integers(min(self.T, slack + 1)))
                    starts = np.arange(offset, len(tokens) - self.T, self.T, dtype=np.int64)
                if self.flat:  # contiguous rows, blocks in random order
                    blocks = starts[:n_blocks * self.rows].reshape(n_blocks, self.rows)[rng.permutation(n_blocks)]
                else:  # rows from anywhere in the shard
                    blocks = rng.permutation(starts)[:n_blocks * self.rows].reshape(n_blocks, self.rows)
            self._order_cache = (key, blocks)
        return tokens, self._order_cache[1]

    def _next_block(self, rows=None):
        """(tokens, row starts of the next global batch (rows,)), advancing the position.
        rows: world_size * b for a smaller batch b (the next rows of the blocks' order); None = a block."""
        rows = rows or self.rows
        while True:
            order = self._shard_order(self.epoch)
            if self._shard_pos >= len(order):
                if self._epoch_batches == 0:
                    raise ValueError(f"no train shard holds one global batch of {self.rows} document-aligned "
                                     f"rows of {self.T + 1} tokens; lower batch_size or seq_len")
                self.epoch += 1
                self._shard_pos = self._row_pos = self._epoch_batches = 0
                if self.verbose and self.rank == 0:
                    print(f"loader: epoch {self.epoch} begins at step {self.step} "
                          f"(all {len(self.files)} train shard(s) used; reshuffled)")
                continue
            fi = int(order[self._shard_pos])
            tokens, blocks = self._blocks(self.epoch, fi)
            if self._row_pos + rows > blocks.size:  # (the rows left after the last whole batch are skipped)
                self._shard_pos += 1
                self._row_pos = 0
                continue
            block = blocks.reshape(-1)[self._row_pos:self._row_pos + rows]
            self._row_pos += rows
            self._epoch_batches += 1
            return tokens, block

    # -------------------------------------------------------------- batches
    def next_batch(self, batch_size: int | None = None):
        """(x, y): int64 tensors (B, T) for this rank (or (1, B*T) when flat); y is x shifted by one.
        batch_size: this step's b <= B rows per rank (a batch-size schedule); None = B."""
        b = self.B if batch_size is None else int(batch_size)
        if not 1 <= b <= self.B:
            raise ValueError(f"next_batch({batch_size}): a step can take 1 to {self.B} rows per rank (the B this "
                             f"loader was built with; build it with the largest B of the schedule)")
        tokens, starts = self._next_block(self.world_size * b)
        mine = starts[self.rank * b:(self.rank + 1) * b]  # (b,)
        buf = np.asarray(tokens[mine[:, None] + np.arange(self.T + 1)], dtype=np.int64)  # (B, T+1)
        x, y = buf[:, :-1], buf[:, 1:]
        if self.flat:
            x, y = x.reshape(1, -1), y.reshape(1, -1)
        self.step += 1
        return _to_device(np.ascontiguousarray(x), self.device), _to_device(np.ascontiguousarray(y), self.device)

    def __iter__(self):
        while True:
            yield self.next_batch()

    # -------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        """The position, so that `load_state_dict` continues with exactly the next batch."""
        return {"step": self.step, "epoch": self.epoch, "shard_pos": self._shard_pos,
                "block_pos": self._row_pos // self.rows, "row_pos": self._row_pos,
                "epoch_batches": self._epoch_batches, "seed": self.seed, "rows": self.rows, "seq_len": self.T,
                "align_to_docs": self.align_to_docs, "shuffle": self.shuffle, "layout": self.layout,
                "files": [f.name for f in self.files]}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`. The global batch (world_size*B rows of T) must be the same;
        the split across ranks may differ."""
        mine = self.state_dict()
        state = {"layout": "rows", **state}  # states saved before layouts existed
        for key in ("seed", "rows", "seq_len", "align_to_docs", "shuffle", "layout", "files"):
            if state[key] != mine[key]:
                raise ValueError(f"loader state was saved with {key}={state[key]!r}, this loader has "
                                 f"{mine[key]!r}; resume with the same data and global batch "
                                 f"(world_size*batch_size rows of seq_len)")
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self._shard_pos = int(state["shard_pos"])
        self._row_pos = int(state.get("row_pos", int(state["block_pos"]) * self.rows))  # states before row_pos
        self._epoch_batches = int(state.get("epoch_batches", 0))


# ---------------------------------------------------------------- validation
VAL_LAYOUTS = ("rows", "bos_aligned")


@functools.lru_cache(maxsize=4)
def _packed_val(path: str, mtime: float, seq_len: int, eot_id: int) -> np.ndarray:
    """A val shard packed into document-aligned rows of T + 1 (computed once per shard and T)."""
    return pack_bos_bestfit(read_shard(path), eot_id, seq_len + 1).reshape(-1)


def _val_layout(f, seq_len, layout, eot_id):
    """(tokens, row stride, rows available) of one val shard in `layout`."""
    if layout not in VAL_LAYOUTS:
        raise ValueError(f"val layout {layout!r}: use one of {', '.join(VAL_LAYOUTS)}")
    if layout == "rows":
        tokens = read_shard(f)
        return tokens, seq_len, (len(tokens) - 1) // seq_len
    if eot_id is None:
        raise ValueError("val layout 'bos_aligned' needs eot_id (the tokenizer's <|endoftext|> id)")
    tokens = _packed_val(str(f), Path(f).stat().st_mtime, seq_len, int(eot_id))
    return tokens, seq_len + 1, len(tokens) // (seq_len + 1)


IGNORE = -100  # target id the loss skips (nbcore.evaluate.IGNORE): the padding rows of the last val batch


def val_batch_count(files, batch_size: int, seq_len: int, world_size: int = 1, max_tokens: int | None = None,
                    layout: str = "rows", eot_id: int | None = None) -> int:
    """How many global val batches `val_batches` yields (the same on every rank): with `max_tokens`
    below the split's size, whole batches up to it; else enough batches for every row of the split
    (the last one padded)."""
    files = _resolve(files, "val")
    per = batch_size * world_size * seq_len
    total_rows = sum(_val_layout(f, seq_len, layout, eot_id)[2] for f in files)
    if total_rows and (max_tokens is None or max_tokens >= total_rows * seq_len):
        return -(-total_rows // (batch_size * world_size))  # the whole split
    n = total_rows // (batch_size * world_size)
    if n == 0:
        have = sum(read_shard(f).shape[0] for f in files)
        need = (f"one global val batch of {per + 1} tokens (world_size*B*T + 1" if total_rows
                else f"one row of {seq_len + 1} tokens (T + 1")
        raise ValueError(f"the val shard(s) hold {have} tokens, fewer than {need}"
                         f"{', in whole documents' if layout != 'rows' else ''}); lower the val batch size or seq_len")
    if max_tokens < per:
        raise ValueError(f"max_tokens={max_tokens} is less than one global val batch ({per} tokens)")
    return min(n, max_tokens // per)


def val_batches(files, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1,
                max_tokens: int | None = None, device="cpu", flat: bool = False, layout: str = "rows",
                eot_id: int | None = None):
    """Iterate (x, y) over the val shards in order: each global batch of world_size*B
    contiguous rows of T, this rank's rows [rank*B:(rank+1)*B]. Every rank gets the same
    number of batches of the same shape. With `max_tokens` below the split's size, whole batches
    up to it (the first tokens of the split); without (or at least the split), the whole split:
    every row of every shard is scored once, so the count does not depend on B or the number of
    ranks, and the rows missing from the last global batch are padding whose targets are IGNORE
    (not scored).
    layout "rows": rows cut from the token stream (start mid-document; with B=1 and a long T,
    the records' val layout); "bos_aligned": the shard packed as the training layout of that
    name (rows start documents; cropped tails not scored), needs eot_id."""
    files = _resolve(files, "val")
    n = val_batch_count(files, batch_size, seq_len, world_size, max_tokens, layout, eot_id)
    rows, T = batch_size * world_size, seq_len
    offs = np.arange(T + 1)
    shards = [_val_layout(f, T, layout, eot_id) for f in files]  # (tokens, stride, rows available)
    first_row = np.cumsum([0] + [a for _, _, a in shards])  # global index of each shard's first row
    for k in range(n):
        idx = k * rows + rank * batch_size + np.arange(batch_size)  # (B,) global row numbers
        buf = np.zeros((batch_size, T + 1), dtype=np.int64)
        real = idx < first_row[-1]
        for s_i, (tokens, stride, _) in enumerate(shards):
            here = real & (idx >= first_row[s_i]) & (idx < first_row[s_i + 1])
            if here.any():
                starts = (idx[here] - first_row[s_i]) * stride
                buf[here] = np.asarray(tokens[starts[:, None] + offs], dtype=np.int64)  # (b, T+1)
        x, y = buf[:, :-1], buf[:, 1:].copy()
        y[~real] = IGNORE  # padding rows of the whole split's last batch
        if flat:
            x, y = x.reshape(1, -1), y.reshape(1, -1)
        yield _to_device(np.ascontiguousarray(x), device), _to_device(np.ascontiguousarray(y), device)

"""Byte-level BPE for real work: a fast exact trainer, and encoding through tiktoken.

    tok = train_bpe(iter_corpus("builtin"), vocab_size=4096, name="builtin-4k")
    ids = tok.encode("Hello world")            # list[int], each id < tok.vocab_size
    tok.decode(ids) == "Hello world"
    tok.save(folder); tok = BPETokenizer.load(folder)

The rules (the same as `nbcore.bpe_reference`, which is short and readable, and which
the tests check this module against merge for merge):

- text is cut into chunks by a regex (`GPT4_PATTERN` by default, `GPT2_PATTERN` too);
  pairs never cross chunks; equal chunks count once, weighted by frequency;
- pairs are counted with overlaps ('aaa' holds (a, a) twice);
- the pair with the highest count is merged, ties going to the smallest (left, right);
- merge i creates id 256 + i, replacing the pair left to right;
- vocab_size = 256 + number of merges; special tokens come after: `<|endoftext|>` is
  `vocab_size`, and a model needs `n_vocab = vocab_size + len(special_tokens)` rows (V).

How the fast trainer is fast: the corpus is pre-tokenized into chunk counts by several
processes; each unique chunk is then a list of ids, and after a merge only the chunks
that contain the merged pair are touched, with the pair counts updated by the local
change around each occurrence. The next pair comes from a max-heap whose stale entries
are re-checked when they surface (exact, ties included). `method="torch"` instead
recounts every pair with tensor ops each merge (on a GPU with `device="cuda"`, as the
original lab did; exact, no top-k shortcut).

Text with lone surrogates ('\\ud800', possible in Python, impossible in UTF-8) is cleaned
as tiktoken does: lone surrogates become U+FFFD (`bpe_reference.clean_text`).
Special tokens are only produced when allowed: `encode(text)` treats '<|endoftext|>' in
text as ordinary characters, `encode(text, allowed_special="all")` as the special id.
"""
import hashlib
import heapq
import json
import sys
import time
from collections import Counter
from pathlib import Path

import regex

from . import fileio
from . import workers as workers_lib
from .bpe_reference import GPT2_PATTERN, GPT4_PATTERN, clean_text

FORMAT_VERSION = 1
EOT = "<|endoftext|>"
PATTERNS = {"gpt4": GPT4_PATTERN, "gpt2": GPT2_PATTERN}

__all__ = ["GPT4_PATTERN", "GPT2_PATTERN", "EOT", "BPETokenizer", "TokenizerFileError", "train_bpe",
           "count_chunks", "train_merges", "render_bytes", "FORMAT_VERSION"]


class TokenizerFileError(ValueError):
    """A saved tokenizer folder is missing, unreadable, from a newer format, or inconsistent."""


# ------------------------------------------------------------------ checks
def check_pattern(pattern: str) -> str:
    """`pattern` if both Python's `regex` and tiktoken's Rust regex accept it, else a clear error."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern={pattern!r}: give a non-empty regex string, e.g. nbcore.tokenizer.GPT4_PATTERN")
    try:
        compiled = regex.compile(pattern)
    except regex.error as e:
        raise ValueError(f"pattern is not a valid regex ({e}); use GPT4_PATTERN or GPT2_PATTERN "
                         f"from nbcore.tokenizer, or fix the pattern") from None
    if compiled.fullmatch("") is not None:
        raise ValueError("pattern matches the empty string, so it would cut text into nothing; "
                         "make every alternative consume at least one character (use + not *)")
    try:
        import tiktoken

        tiktoken.Encoding("pattern-check", pat_str=pattern, mergeable_ranks={bytes([i]): i for i in range(256)},
                          special_tokens={})
    except ValueError as e:
        raise ValueError(f"tiktoken cannot compile the pattern ({e}); it needs a regex both Python's "
                         f"`regex` and Rust's `fancy-regex` accept, e.g. GPT4_PATTERN") from None
    return pattern


def _check_specials(special_tokens, vocab_size: int) -> dict:
    if isinstance(special_tokens, str):
        special_tokens = (special_tokens,)
    if isinstance(special_tokens, dict):
        items = sorted(special_tokens.items(), key=lambda kv: kv[1])
        names = [k for k, _ in items]
        ids = [v for _, v in items]
        want = list(range(vocab_size, vocab_size + len(names)))
        if ids != want:
            raise ValueError(f"special token ids {ids} must be {want} (right after the {vocab_size} "
                             f"ordinary tokens)")
    else:
        names = list(special_tokens or ())
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"special_tokens={names!r}: give distinct non-empty strings")
    return {n: vocab_size + i for i, n in enumerate(names)}


# ------------------------------------------------------------------ pre-tokenization
# Big documents are cut so several processes can share them. A cut right after a
# newline that follows a non-space and precedes a letter is a chunk boundary for both
# built-in patterns, so cutting there changes no chunk. Other patterns are never cut.
_SAFE_CUT = regex.compile(r"(?<=\S\n)(?=\p{L})")
_worker_re = None


def _init_worker(pattern):
    global _worker_re
    _worker_re = regex.compile(pattern)


def _count_batch(docs) -> tuple[Counter, int]:
    counts = Counter()
    n_chars = 0
    findall = _worker_re.findall
    for doc in docs:
        doc = clean_text(doc)
        n_chars += len(doc)
        counts.update(findall(doc))
    return counts, n_chars


def _cut(doc: str, size: int, cuttable: bool):
    """Pieces of `doc` of about `size` characters, cut only at safe chunk boundaries."""
    if not cuttable or len(doc) <= size:
        yield doc
        return
    start = 0
    while len(doc) - start > size:
        m = _SAFE_CUT.search(doc, start + size)
        if m is None:
            break
        yield doc[start:m.start()]
        start = m.start()
    yield doc[start:]


def _batches(texts, batch_chars: int, cuttable: bool):
    batch, size = [], 0
    for doc in texts:
        if not isinstance(doc, str):
            raise TypeError(f"texts must yield str, got {type(doc).__name__}; decode bytes first")
        for piece in _cut(doc, batch_chars, cuttable):
            batch.append(piece)
            size += len(piece)
            if size >= batch_chars:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def default_workers() -> int:
    return workers_lib.default_workers(cap=16)


def count_chunks(texts, pattern: str = GPT4_PATTERN, workers=None, batch_chars: int = 1 << 20,
                 progress: bool = False) -> tuple[Counter, dict]:
    """{chunk: count} over a stream of texts, and {'chars', 'chunks', 'unique_chunks', 'workers'}.

    Texts are read in batches of about `batch_chars` characters; with more than one
    batch, `workers` processes split the regex work, at most 2 batches each in flight,
    so memory holds the chunk counts and a few batches, never the corpus.
    """
    if isinstance(texts, str):
        texts = [texts]
    workers = default_workers() if workers is None else max(1, int(workers))
    cuttable = pattern in (GPT4_PATTERN, GPT2_PATTERN)
    batches = _batches(texts, batch_chars, cuttable)
    total, n_chars = Counter(), 0
    bar = _bar(progress, "pre-tokenize", unit="MB")
    first = next(batches, None)
    second = next(batches, None) if first is not None else None
    used = 1 if second is None else workers
    if used == 1:  # small input or one worker: no processes
        _init_worker(pattern)
        for batch in (b for b in (first, second) if b is not None):
            c, n = _count_batch(batch)
            total.update(c)
            n_chars += n
            bar.update(n / 1e6)
        for batch in batches:
            c, n = _count_batch(batch)
            total.update(c)
            n_chars += n
            bar.update(n / 1e6)
    else:
        with workers_lib.process_pool(workers, initializer=_init_worker, initargs=(pattern,)) as pool:
            pending = [pool.submit(_count_batch, first), pool.submit(_count_batch, second)]
            for batch in batches:
                while len(pending) >= 2 * workers:
                    c, n = pending.pop(0).result()
                    total.update(c)
                    n_chars += n
                    bar.update(n / 1e6)
                pending.append(pool.submit(_count_batch, batch))
            for p in pending:
                c, n = p.result()
                total.update(c)
                n_chars += n
                bar.update(n / 1e6)
    bar.close()
    info = {"chars": n_chars, "chunks": sum(total.values()), "unique_chunks": len(total), "workers": used}
    return total, info


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _bar(progress, desc, total=None, unit="it"):
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


# ------------------------------------------------------------------ merge loops
def _too_small(done: int, wanted: int) -> ValueError:
    return ValueError(f"corpus too small for vocab_size={256 + wanted}: it ran out of pairs after "
                      f"{done} merges (vocab {256 + done}), every chunk being a single token. "
                      f"Use a larger sample (more text) or vocab_size <= {256 + done}.")


def _merges_incremental(words, freqs, n_merges: int, progress=False) -> list[tuple[int, int]]:
    """Exact BPE merges over unique chunks (lists of ids) weighted by `freqs`.

    Pair keys are ints `left << 32 | right`, so their order is the (left, right) order.
    `stats[key]` is the exact weighted count; `where[key]` the chunks that may hold the
    pair (a superset: stale members are skipped when scanned). The heap holds
    (-count, key) entries; an entry's count may be higher than the truth (counts only
    fall between pushes), so a popped entry is re-pushed with its true count unless it
    is exact, which makes the popped pair exactly the max count, smallest key.
    """
    SHIFT, MASK = 32, (1 << 32) - 1
    stats: dict[int, int] = {}
    where: dict[int, list] = {}
    for w, (ids, f) in enumerate(zip(words, freqs)):
        for k in [(x << SHIFT) | y for x, y in zip(ids, ids[1:])]:
            stats[k] = stats.get(k, 0) + f
            s = where.get(k)
            if s is None:
                where[k] = [w]
            elif s[-1] != w:
                s.append(w)
    heap = [(-c, k) for k, c in stats.items()]
    heapq.heapify(heap)
    merges = []
    bar = _bar(progress, "merges", total=n_merges)
    heappop, heappush = heapq.heappop, heapq.heappush
    for step in range(n_merges):
        while True:
            if not heap:
                bar.close()
                raise _too_small(step, n_merges)
            negc, key = heappop(heap)
            c = stats.get(key, 0)
            if c == -negc:
                break
            if c > 0:
                heappush(heap, (-c, key))
        a, b = key >> SHIFT, key & MASK
        new = 256 + step
        merges.append((a, b))
        new_pairs = set()
        for w in sorted(set(where.pop(key))):
            ids = words[w]
            n = len(ids)
            i = 0
            out = None
            while True:  # find the first occurrence fast with list.index
                try:
                    i = ids.index(a, i)
                except ValueError:
                    break
                if i + 1 < n and ids[i + 1] == b:
                    out = ids[:i]
                    break
                i += 1
            if out is None:
                continue  # stale: this chunk no longer holds the pair
            f = freqs[w]
            while i < n:
                t = ids[i]
                if t == a and i + 1 < n and ids[i + 1] == b:
                    if out:
                        p = out[-1]
                        k = (p << SHIFT) | a
                        stats[k] -= f
                        k = (p << SHIFT) | new
                        stats[k] = stats.get(k, 0) + f
                        new_pairs.add(k)
                        lst = where.get(k)
                        if lst is None:
                            where[k] = [w]
                        elif lst[-1] != w:
                            lst.append(w)
                    if i + 2 < n:
                        q = ids[i + 2]
                        k = (b << SHIFT) | q
                        stats[k] -= f
                        k = (new << SHIFT) | q
                        stats[k] = stats.get(k, 0) + f
                        new_pairs.add(k)
                        lst = where.get(k)
                        if lst is None:
                            where[k] = [w]
                        elif lst[-1] != w:
                            lst.append(w)
                    out.append(new)
                    i += 2
                else:
                    out.append(t)
                    i += 1
            words[w] = out
        del stats[key]
        for k in new_pairs:
            c = stats[k]
            if c > 0:
                heappush(heap, (-c, k))
        bar.update()
    bar.close()
    return merges


def _merges_torch(words, freqs, n_merges: int, device="cpu", progress=False) -> list[tuple[int, int]]:
    """Exact BPE merges by recounting every pair with tensor ops each merge (GPU-friendly).

    All chunks sit in one flat id tensor (N,); `wid` (N,) says which chunk each id is in,
    `wt` (N,) that chunk's count. Pairs are keys left * K + right; `torch.unique` sorts
    them, so the first maximal count is the smallest (left, right): exact tie-breaking.
    """
    import torch

    dev = torch.device(device)
    K = 256 + n_merges  # every id is below K
    lengths = [len(w) for w in words]
    ids = torch.tensor([t for w in words for t in w], dtype=torch.int64, device=dev)
    wid = torch.repeat_interleave(torch.arange(len(words), device=dev),
                                  torch.tensor(lengths, dtype=torch.int64, device=dev))
    wt = torch.tensor(freqs, dtype=torch.int64, device=dev)[wid]
    merges = []
    bar = _bar(progress, "merges (torch)", total=n_merges)
    for step in range(n_merges):
        same = wid[:-1] == wid[1:]  # (N-1,) pair inside one chunk
        keys = (ids[:-1] * K + ids[1:])[same]
        if keys.numel() == 0:
            bar.close()
            raise _too_small(step, n_merges)
        uniq, inv = torch.unique(keys, return_inverse=True)  # sorted keys
        counts = torch.zeros(uniq.numel(), dtype=torch.int64, device=dev).scatter_add_(0, inv, wt[:-1][same])
        key = int(uniq[int(torch.argmax(counts))])  # first max = smallest key
        a, b = divmod(key, K)
        merges.append((a, b))
        match = same & (ids[:-1] == a) & (ids[1:] == b)  # (N-1,)
        if a == b:  # runs like 'aaaa': keep every other match, starting at the run's left
            pos = torch.arange(match.numel(), device=dev)
            starts = match & ~torch.cat([match.new_zeros(1), match[:-1]])
            run_start = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), 0).values
            match = match & ((pos - run_start) % 2 == 0)
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[1:] &= ~match
        ids = torch.where(torch.cat([match, match.new_zeros(1)]), torch.full_like(ids, 256 + step), ids)
        ids, wid, wt = ids[keep], wid[keep], wt[keep]
        bar.update()
    bar.close()
    return merges


def train_merges(chunk_counts: dict, n_merges: int, method: str = "incremental", device="cpu",
                 progress=False) -> list[tuple[int, int]]:
    """Exact BPE merges from {chunk string: count}. method: 'incremental' (CPU) or 'torch'."""
    words, freqs = [], []
    for chunk, f in chunk_counts.items():
        ids = list(chunk.encode("utf-8"))
        if len(ids) >= 2:  # one-byte chunks hold no pair
            words.append(ids)
            freqs.append(f)
    if method == "incremental":
        return _merges_incremental(words, freqs, n_merges, progress)
    if method == "torch":
        return _merges_torch(words, freqs, n_merges, device, progress)
    raise ValueError(f"method={method!r}: use 'incremental', 'torch' or 'auto'")


# ------------------------------------------------------------------ the tokenizer
def render_bytes(b: bytes) -> str:
    """A token's bytes as readable text: printable characters as themselves, the rest escaped
    Python-style ('\\n', '\\x9f' for a byte that is not UTF-8 on its own, '\\\\' for a backslash)."""
    out = []
    for ch in b.decode("utf-8", errors="surrogateescape"):
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\n\t\r":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\x{o:02x}" if o < 256 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return "".join(out)


class BPETokenizer:
    """A trained byte-level BPE tokenizer: merges, split pattern and special tokens.

    Ids: 0..255 bytes, 256..vocab_size-1 merges, vocab_size.. specials (n_vocab in all).
    Encoding runs in tiktoken (Rust), built from the merges the first time it is needed.
    """

    def __init__(self, merges, pattern: str = GPT4_PATTERN, special_tokens=(EOT,), name=None, meta=None):
        merges = [(int(a), int(b)) for a, b in merges]
        for i, (a, b) in enumerate(merges):
            if not (0 <= a < 256 + i and 0 <= b < 256 + i):
                raise ValueError(f"merge {i} ({a}, {b}) uses an id that does not exist yet (ids < {256 + i})")
        self.merges = merges
        self.pattern = check_pattern(pattern)
        self.vocab_size = 256 + len(merges)
        self.special_tokens = _check_specials(special_tokens, self.vocab_size)
        self.name = name or f"bpe-{self.vocab_size}"
        self.meta = dict(meta or {})
        vocab = [bytes([i]) for i in range(256)]
        for a, b in merges:
            vocab.append(vocab[a] + vocab[b])
        self._vocab = vocab
        self._enc = None

    # -- sizes and ids
    @property
    def n_vocab(self) -> int:
        """Rows an embedding needs: vocab_size ordinary tokens + the special tokens."""
        return self.vocab_size + len(self.special_tokens)

    @property
    def eot_id(self) -> int:
        if EOT not in self.special_tokens:
            raise ValueError(f"this tokenizer has no {EOT} token (specials: {list(self.special_tokens)}); "
                             f"train it with special_tokens=({EOT!r},)")
        return self.special_tokens[EOT]

    @property
    def merges_hash(self) -> str:
        """sha256 of the pattern and merges: two tokenizers with the same hash encode alike."""
        blob = json.dumps({"pattern": self.pattern, "merges": self.merges}, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def token_bytes(self, token_id: int) -> bytes:
        if 0 <= token_id < self.vocab_size:
            return self._vocab[token_id]
        for s, i in self.special_tokens.items():
            if i == token_id:
                return s.encode("utf-8")
        raise ValueError(f"token id {token_id} out of range: this tokenizer has ids 0..{self.n_vocab - 1}")

    # -- tiktoken
    @property
    def tiktoken_encoding(self):
        """A tiktoken.Encoding with mergeable_ranks = {token bytes: id} (lowest rank merges first,
        which is merge order). Built once per process; pickling a BPETokenizer drops it."""
        if self._enc is None:
            import tiktoken

            ranks = {}
            for i, b in enumerate(self._vocab):
                ranks.setdefault(b, i)
            if len(ranks) != len(self._vocab):
                dup = [i for i, b in enumerate(self._vocab) if ranks[b] != i]
                raise ValueError(f"tokens {dup[:5]} repeat the bytes of earlier tokens, which tiktoken "
                                 f"cannot represent; retrain (this should not happen with train_bpe)")
            self._enc = tiktoken.Encoding(f"nbcore-{self.name}", pat_str=self.pattern, mergeable_ranks=ranks,
                                          special_tokens=dict(self.special_tokens))
        return self._enc

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_enc"] = None
        return state

    # -- encode / decode
    def _allowed(self, allowed_special):
        if allowed_special == "all":
            return set(self.special_tokens)
        if isinstance(allowed_special, str):
            allowed_special = {allowed_special}
        allowed = set(allowed_special or ())
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special has {sorted(unknown)}, not special tokens of this tokenizer "
                             f"(it has {list(self.special_tokens)})")
        return allowed

    def encode(self, text: str, allowed_special=()) -> list[int]:
        """Ids of `text`. Special-token strings become their ids only if in `allowed_special`
        (a set of names, or "all"); otherwise they are encoded as ordinary text."""
        return self.tiktoken_encoding.encode(text, allowed_special=self._allowed(allowed_special),
                                             disallowed_special=())

    def encode_ordinary(self, text: str) -> list[int]:
        return self.tiktoken_encoding.encode_ordinary(text)

    def encode_batch(self, texts, num_threads: int = 8, allowed_special=()) -> list[list[int]]:
        return self.tiktoken_encoding.encode_batch(list(texts), num_threads=num_threads,
                                                   allowed_special=self._allowed(allowed_special),
                                                   disallowed_special=())

    def encode_ordinary_batch(self, texts, num_threads: int = 8) -> list[list[int]]:
        return self.tiktoken_encoding.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode_bytes(self, ids) -> bytes:
        ids = [int(i) for i in ids]
        try:
            return self.tiktoken_encoding.decode_bytes(ids)
        except (KeyError, OverflowError, ValueError):
            bad = next((i for i in ids if not 0 <= i < self.n_vocab), None)
            if bad is None:
                raise
            raise ValueError(f"token id {bad} out of range: this tokenizer has ids 0..{self.n_vocab - 1}") from None

    def decode(self, ids) -> str:
        """Text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def __repr__(self):
        return (f"BPETokenizer(name={self.name!r}, vocab_size={self.vocab_size}, n_vocab={self.n_vocab}, "
                f"specials={list(self.special_tokens)})")

    # -- files
    def to_dict(self) -> dict:
        return {"format": "nbcore-bpe", "format_version": FORMAT_VERSION, "name": self.name,
                "pattern": self.pattern, "vocab_size": self.vocab_size, "special_tokens": self.special_tokens,
                "merges_hash": self.merges_hash, "merges": [list(m) for m in self.merges]}

    def merges_listing(self) -> str:
        """merges.txt: one line per merge: id, left id, right id, left, right, merged (escaped)."""
        lines = [f"# {self.name}: {len(self.merges)} merges, vocab_size {self.vocab_size}. "
                 f"Columns: id, left id, right id, 'left', 'right', 'merged' (Python-style escapes)."]
        for i, (a, b) in enumerate(self.merges):
            v = self._vocab
            lines.append(f"{256 + i}\t{a}\t{b}\t'{render_bytes(v[a])}'\t'{render_bytes(v[b])}'\t"
                         f"'{render_bytes(v[256 + i])}'")
        return "\n".join(lines) + "\n"

    def save(self, folder) -> Path:
        """Write tokenizer.json, merges.txt and meta.json into `folder` (each atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fileio.write_text(folder / "tokenizer.json", json.dumps(self.to_dict(), ensure_ascii=False) + "\n")
        fileio.write_text(folder / "merges.txt", self.merges_listing())
        meta = {"name": self.name, "vocab_size": self.vocab_size, "n_vocab": self.n_vocab,
                "special_tokens": self.special_tokens, "merges_hash": self.merges_hash, **self.meta}
        fileio.write_json(folder / "meta.json", meta)
        return folder

    @classmethod
    def load(cls, folder) -> "BPETokenizer":
        folder = Path(folder)
        if not folder.is_dir():
            raise TokenizerFileError(f"no tokenizer folder at {folder}: check the path, or train one "
                                     f"(train_bpe(...).save(folder) or notebook 01_tokenizer)")
        path = folder / "tokenizer.json"
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TokenizerFileError(f"{folder} holds no tokenizer.json: it is not a tokenizer folder; "
                                     f"point to the folder train_bpe(...).save() wrote") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerFileError(f"{path} is unreadable ({e}); restore it or retrain the tokenizer") from None
        if not isinstance(d, dict) or d.get("format") != "nbcore-bpe":
            raise TokenizerFileError(f"{path} is not an nbcore BPE tokenizer file (no 'format': 'nbcore-bpe')")
        version = d.get("format_version")
        if not isinstance(version, int):
            raise TokenizerFileError(f"{path} has no integer format_version; restore it or retrain")
        if version > FORMAT_VERSION:
            raise TokenizerFileError(f"{path} was written by a newer nbcore (format version {version}; this one "
                                     f"reads up to {FORMAT_VERSION}): update nbcore (git pull, pip install -e .)")
        meta = {}
        if (folder / "meta.json").exists():
            try:
                meta = fileio.read_json(folder / "meta.json")
            except (OSError, ValueError) as e:
                raise TokenizerFileError(f"{folder / 'meta.json'} is unreadable ({e}); restore or delete it") from None
            for k in ("name", "vocab_size", "n_vocab", "special_tokens", "merges_hash"):
                meta.pop(k, None)
        try:
            tok = cls(d["merges"], pattern=d["pattern"], special_tokens=d["special_tokens"], name=d.get("name"),
                      meta=meta)
        except (KeyError, TypeError, ValueError) as e:
            raise TokenizerFileError(f"{path} is inconsistent ({type(e).__name__}: {e}); the file was edited "
                                     f"or damaged: restore it or retrain the tokenizer") from None
        if d.get("vocab_size") != tok.vocab_size:
            raise TokenizerFileError(f"{path} is inconsistent: vocab_size {d.get('vocab_size')} but "
                                     f"{len(tok.merges)} merges (vocab {tok.vocab_size}); restore it or retrain")
        if d.get("merges_hash") != tok.merges_hash:
            raise TokenizerFileError(f"{path} is inconsistent: its merges_hash does not match its merges and "
                                     f"pattern (edited or damaged); restore it or retrain")
        return tok


# ------------------------------------------------------------------ training
def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("nbcore", "tiktoken", "regex", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def train_bpe(texts, vocab_size: int, pattern: str = GPT4_PATTERN, special_tokens=(EOT,), workers=None,
              device="cpu", progress: bool = False, name=None, method: str = "auto", meta=None) -> BPETokenizer:
    """Train byte-level BPE on a stream of texts; return the tokenizer.

    texts: iterable of str (streamed; a single str is one text). vocab_size: 256 + merges.
    pattern: split regex (GPT4_PATTERN, GPT2_PATTERN, or your own). special_tokens: names,
    given ids vocab_size, vocab_size + 1, ... workers: pre-tokenizing processes (default:
    the CPUs). method: 'incremental' (exact, CPU), 'torch' (exact recount each merge with
    tensor ops on `device`), 'auto' = 'torch' on a CUDA device, else 'incremental'.
    meta: extra facts for meta.json (e.g. {'corpus': 'builtin'}).
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {vocab_size!r}")
    if vocab_size <= 256:
        raise ValueError(f"vocab_size={vocab_size} is too small: the minimum is 257 (256 byte tokens + "
                         f"at least one merge); 4096 to 65536 is usual")
    check_pattern(pattern)
    _check_specials(special_tokens, vocab_size)
    if method == "auto":
        method = "torch" if str(device).startswith("cuda") else "incremental"
    if method == "torch" and str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} but CUDA is not available: use device='cpu'")
    elif method not in ("incremental", "torch"):
        raise ValueError(f"method={method!r}: use 'auto', 'incremental' or 'torch'")
    t0 = time.perf_counter()
    counts, info = count_chunks(texts, pattern, workers=workers, progress=progress)
    t1 = time.perf_counter()
    merges = train_merges(counts, vocab_size - 256, method=method, device=device, progress=progress)
    t2 = time.perf_counter()
    pattern_name = next((k for k, v in PATTERNS.items() if v == pattern), "custom")
    facts = {"corpus": None, "vocab_size": vocab_size, "pattern_name": pattern_name, "method": method, "device": str(device),
             "workers": info["workers"], "sample_chars": info["chars"],
             "chunks": info["chunks"], "unique_chunks": info["unique_chunks"],
             "seconds": {"pretokenize": round(t1 - t0, 3), "merges": round(t2 - t1, 3), "total": round(t2 - t0, 3)},
             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": _versions()}
    facts.update(meta or {})
    return BPETokenizer(merges, pattern=pattern, special_tokens=special_tokens, name=name, meta=facts)

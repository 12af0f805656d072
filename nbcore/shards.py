"""Token shards: the `.bin` files training reads, and the sharder that writes them.

File format (compatible with llm.c / Modded-NanoGPT): a header of 256 little-endian
int32, then the tokens.

    header[0] = 20240520          magic
    header[1] = 1 or 2            version: 1 = uint16 tokens, 2 = uint32 tokens (ids >= 65536)
    header[2] = number of tokens
    header[3:] = 0

Every document starts with the tokenizer's `<|endoftext|>` id, so a shard is a flat
stream `eot doc0 eot doc1 ...`; a document may run on into the next shard.

A shard folder (`make_shards`) holds `val_000000.bin` (the val split, first),
`train_000001.bin ... train_NNNNNN.bin` and `manifest.json` (tokenizer, corpus, seed,
and per shard: tokens, documents, UTF-8 bytes of text, for bits per byte).
"""
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from . import fileio
from . import workers as workers_lib

MAGIC = 20240520
VERSION_U16 = 1
VERSION_U32 = 2
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
# llm.c writes Llama-3 tokens (uint32) under their own magic and version; we read those too.
_LLMC_LLAMA3 = (20240801, 7)
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


class ShardError(ValueError):
    """A shard file is corrupt, truncated, foreign, or does not fit the tokenizer."""


# ---------------------------------------------------------------- one shard
def dtype_for(vocab_size: int):
    """uint16 when every id fits (< 65536), else uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def write_shard(path, tokens, vocab_size: int) -> Path:
    """Write `tokens` (1-D ints, each < vocab_size) as a shard, atomically. Returns the path."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{path}: tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"{path}: token ids must lie in [0, {vocab_size}); "
                         f"got min {int(tokens.min())}, max {int(tokens.max())}")
    if tokens.size >= 2**31:
        raise ValueError(f"{path}: {tokens.size} tokens do not fit the int32 header; use smaller shards")
    dtype = dtype_for(vocab_size)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION_U16 if dtype == np.uint16 else VERSION_U32, tokens.size
    body = tokens.astype(np.dtype(dtype).newbyteorder("<"), copy=False)
    with fileio.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(body.tobytes())
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def read_header(path) -> dict:
    """{'magic', 'version', 'tokens', 'dtype'} of a shard, checked against its file size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shard {path} does not exist")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"shard {path}: only {size} bytes, shorter than the {HEADER_BYTES}-byte header "
                         f"(truncated, or not a token shard)")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, n = int(header[0]), int(header[1]), int(header[2])
    if (magic, version) == (MAGIC, VERSION_U16):
        dtype = np.dtype("<u2")
    elif (magic, version) == (MAGIC, VERSION_U32) or (magic, version) == _LLMC_LLAMA3:
        dtype = np.dtype("<u4")
    elif magic in (MAGIC, _LLMC_LLAMA3[0]):
        raise ShardError(f"shard {path}: unknown version {version} (this nbcore reads versions "
                         f"{VERSION_U16} and {VERSION_U32}); was it written by a newer nbcore?")
    else:
        raise ShardError(f"shard {path}: bad magic number {magic} (expected {MAGIC}); "
                         f"this is not a token shard")
    if n < 0:
        raise ShardError(f"shard {path}: negative token count {n} in the header (corrupt file)")
    want = HEADER_BYTES + n * dtype.itemsize
    if size != want:
        what = "truncated" if size < want else "has trailing bytes"
        raise ShardError(f"shard {path}: header says {n} tokens ({want} bytes) but the file has "
                         f"{size} bytes: {what}; rebuild this shard")
    return {"magic": magic, "version": version, "tokens": n, "dtype": dtype}


def read_shard(path, vocab_size: int | None = None) -> np.memmap:
    """The tokens of a shard, memory-mapped read-only (1-D uint16 or uint32).

    The header is validated (magic, version, token count against file size). With
    `vocab_size`, every id is also checked to be < vocab_size (reads the whole file).
    """
    h = read_header(path)
    tokens = np.memmap(path, dtype=h["dtype"], mode="r", offset=HEADER_BYTES, shape=(h["tokens"],))
    if vocab_size is not None and h["tokens"]:
        top = int(tokens.max())
        if top >= vocab_size:
            raise ShardError(f"shard {path}: token id {top} is outside the tokenizer's vocabulary "
                             f"of {vocab_size} ids; these shards were made with another tokenizer")
    return tokens


def num_tokens(path) -> int:
    """Token count from the header alone (validated against the file size)."""
    return read_header(path)["tokens"]


# ---------------------------------------------------------------- the tokenizer, as the sharder sees it
def load_encoder(tokenizer):
    """(info, tiktoken.Encoding) for a saved tokenizer folder or 'tiktoken:<name>' (e.g. gpt2).

    info = {'name', 'merges_hash', 'n_vocab', 'eot_id', 'dir'}.
    """
    if isinstance(tokenizer, str) and tokenizer.startswith("tiktoken:"):
        import tiktoken

        name = tokenizer.split(":", 1)[1]
        enc = tiktoken.get_encoding(name)
        info = {"name": tokenizer, "merges_hash": hashlib.sha256(name.encode()).hexdigest()[:16],
                "n_vocab": enc.n_vocab, "eot_id": enc.eot_token, "dir": None}
        return info, enc
    from .tokenizer import BPETokenizer

    tok = BPETokenizer.load(tokenizer)
    info = {"name": tok.name, "merges_hash": tok.merges_hash, "n_vocab": tok.n_vocab,
            "eot_id": tok.eot_id, "dir": str(Path(tokenizer).resolve())}
    return info, tok.tiktoken_encoding


def token_byte_lengths(enc, n_vocab: int) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens), shape (V,)."""
    lengths = np.zeros(n_vocab, dtype=np.int64)
    specials = set(getattr(enc, "special_tokens_set", ()))
    special_ids = {enc.encode_single_token(s) for s in specials}
    for i in range(n_vocab):
        if i in special_ids:
            continue
        try:
            lengths[i] = len(enc.decode_single_token_bytes(i))
        except KeyError:  # a hole in the id space (tiktoken's gpt2 has none; ours neither)
            lengths[i] = 0
    return lengths


# Each worker process builds its own encoder once (pool initializer), then encodes batches.
_WORKER = {}


def _worker_init(tokenizer):
    info, enc = load_encoder(tokenizer)
    eot_text = next(t for t in enc.special_tokens_set if enc.encode_single_token(t) == info["eot_id"])
    _WORKER.update(enc=enc, eot=info["eot_id"], eot_text=eot_text, dtype=dtype_for(info["n_vocab"]))


def _pack_batch(docs):
    """A batch as it travels to a worker: (eot text + eot_text.join(docs), number of documents).

    One string moves between processes several times faster than thousands of small
    ones. When a document itself contains the eot text the joined string could not be
    cut back into documents, so that batch travels as the list.
    """
    eot_text = _WORKER["eot_text"]
    joined = eot_text + eot_text.join(docs)
    return (joined, len(docs)) if joined.count(eot_text) == len(docs) else list(docs)


def _encode_batch(batch):
    """A packed batch (see `_pack_batch`) or a list of documents -> (tokens with an eot
    before each document, tokens per document).

    Fast path: the joined text encoded in one call, the eot text allowed as the special
    token. tiktoken encodes the text between special tokens piece by piece, so this
    equals `[eot] + encode_ordinary(doc)` per document. Used only when no document
    contains the eot text and the text is valid UTF-8; otherwise each document is
    encoded on its own.
    """
    enc, eot, eot_text, dtype = _WORKER["enc"], _WORKER["eot"], _WORKER["eot_text"], _WORKER["dtype"]
    if isinstance(batch, list):
        batch = _pack_batch(batch)
    if isinstance(batch, tuple):
        joined, n_docs = batch
        try:
            arr = enc.encode_to_numpy(joined, allowed_special={eot_text}, disallowed_special=())
        except UnicodeEncodeError:  # lone surrogates: encode_ordinary cleans them, per document
            arr = None
        if arr is not None:
            starts = np.flatnonzero(arr == eot)
            if len(starts) == n_docs:
                return arr.astype(dtype), np.diff(np.append(starts, len(arr)))
        docs = joined.split(eot_text)[1:]  # exact: no document contains the eot text
    else:
        docs = batch
    encoded = [enc.encode_ordinary(d) for d in docs]
    lengths = np.fromiter((len(e) + 1 for e in encoded), dtype=np.int64, count=len(encoded))
    out = np.empty(int(lengths.sum()), dtype=dtype)
    pos = 0
    for e, n in zip(encoded, lengths):
        out[pos] = eot
        out[pos + 1:pos + n] = e
        pos += n
    return out, lengths


def _batched(docs, batch_chars):
    """Group documents into lists of about `batch_chars` characters (the unit of work).

    Documents are pulled in blocks sized from their average length so far, so the
    per-document Python work stays small (this runs in the main process, serially).
    """
    import itertools

    docs = iter(docs)
    batch, size, n_seen, chars_seen = [], 0, 0, 0
    while True:
        avg = chars_seen / n_seen if n_seen else batch_chars
        block = list(itertools.islice(docs, max(1, min(512, int((batch_chars - size) / max(avg, 1.0))))))
        if not block:
            break
        chars = sum(map(len, block))
        n_seen, chars_seen = n_seen + len(block), chars_seen + chars
        batch += block
        size += chars
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _token_stream(docs, tokenizer, workers, batch_chars, skip_docs=0):
    """Yield (tokens, tokens per document) per batch of documents, in document order,
    encoded by `workers` processes, this one included (1: only this one). The first
    `skip_docs` documents are consumed without being encoded (resuming).

    With more than one, `workers - 1` pool processes take batches and this process,
    which reads the documents, encodes a batch itself whenever every pool process
    already has one waiting: no core idles while reading is cheaper than encoding.
    """
    import itertools

    docs = iter(docs)
    for _ in itertools.islice(docs, skip_docs):
        pass
    _worker_init(tokenizer)
    batches = map(_pack_batch, _batched(docs, batch_chars))
    if workers <= 1:
        yield from map(_encode_batch, batches)
        return
    import collections

    helpers = workers - 1
    # Results in document order: [batch, Future] for batches given to the pool, (tokens,
    # lengths) for batches encoded here. At most 3 batches per pool process in flight: a
    # stream without an end (FineWeb) is read only as far as the shards need, memory stays
    # bounded, and a pool process always has its next batch waiting.
    pool = workers_lib.process_pool(helpers, initializer=_worker_init, initargs=(tokenizer,))
    try:
        pending = collections.deque()

        def done(entry):
            return isinstance(entry, tuple) or entry[1].done()

        for batch in batches:
            busy = sum(1 for e in pending if not done(e))
            pending.append(_encode_batch(batch) if busy >= 3 * helpers
                           else [batch, pool.submit(_encode_batch, batch)])
            while pending and (done(pending[0]) or len(pending) > 6 * workers):
                head = pending.popleft()
                yield head if isinstance(head, tuple) else head[1].result()
        # The end of the stream: rather than wait for the pool's queue, this process takes
        # the last waiting batches itself (cancelled in the pool if no helper took it yet;
        # otherwise the helper's copy is the same result, not used).
        while pending:
            head = pending[0]
            waiting = [i for i in range(len(pending) - 1, 0, -1) if not done(pending[i])]
            if not done(head) and len(waiting) >= helpers:
                i = waiting[0]
                pending[i][1].cancel()
                pending[i] = _encode_batch(pending[i][0])
                continue
            pending.popleft()
            yield head if isinstance(head, tuple) else head[1].result()
    finally:  # the end, or a reader that stopped early: drop what is queued, let running batches end
        pool.shutdown(wait=True, cancel_futures=True)


def _fill_shards(batches, sizes, start=(0, 0)):
    """Cut a stream of encoded batches into shards of `sizes` tokens (None: until the end).

    The first batch starts at document `start[0]`; its first `start[1]` tokens were
    already written (resuming mid-document). Yields (tokens, (doc, offset) after the
    shard, stream exhausted) per shard; the last shard is short when the stream ends.
    """
    batches = iter(batches)
    doc_base, pos = start
    toks = lengths = None
    exhausted = False

    def load():
        nonlocal toks, lengths
        try:
            toks, lengths = next(batches)
        except StopIteration:
            toks = lengths = None

    load()
    for size in sizes:
        parts, have = [], 0
        while toks is not None and (size is None or have < size):
            take = len(toks) - pos if size is None else min(len(toks) - pos, size - have)
            parts.append(toks[pos:pos + take])
            have += take
            pos += take
            if pos == len(toks):
                doc_base, pos = doc_base + len(lengths), 0
                load()
        exhausted = toks is None
        if have == 0:
            return
        if exhausted or pos == 0:
            end = (doc_base, 0)
        else:
            cum = np.cumsum(lengths)
            i = int(np.searchsorted(cum, pos, side="right"))
            end = (doc_base + i, pos - (int(cum[i - 1]) if i else 0))
        yield (np.concatenate(parts) if len(parts) > 1 else parts[0]), end, exhausted
        if exhausted:
            return


# ---------------------------------------------------------------- the sharder
def default_workers() -> int:
    """The cores this process may use."""
    return workers_lib.default_workers()


def _plan(shard_size, num_shards, val_fraction, val_tokens):
    """[(file, split, stream, size)]: the val shard first, then the train shards.

    Without `val_fraction` one stream ('all') feeds the val shard (its first
    `val_tokens`, default one shard) and then the train shards. With it, the held-out
    part of the corpus ('val' stream, all of it unless `val_tokens`) is the val shard
    and the rest ('train' stream) feeds the train shards.
    """
    if val_fraction is None:
        plan = [("val_000000.bin", "val", "all", val_tokens or shard_size)]
        stream = "all"
    else:
        plan = [("val_000000.bin", "val", "val", val_tokens)]
        stream = "train"
    plan += [(f"train_{i:06d}.bin", "train", stream, shard_size) for i in range(1, num_shards + 1)]
    return plan


def _summarize(manifest):
    for split in ("val", "train"):
        rows = [s for s in manifest["shards"] if s["split"] == split]
        manifest["splits"][split] = {"files": [s["file"] for s in rows],
                                     "tokens": sum(s["tokens"] for s in rows),
                                     "documents": sum(s["documents"] for s in rows),
                                     "bytes": sum(s["bytes"] for s in rows)}
    manifest["tokens"] = sum(s["tokens"] for s in manifest["shards"])
    manifest["documents"] = sum(s["documents"] for s in manifest["shards"])
    manifest["bytes"] = sum(s["bytes"] for s in manifest["shards"])
    return manifest


def make_shards(corpus: str, tokenizer_dir, out_dir, shard_size: int = 100_000_000, num_shards: int = 1,
                seed: int = 0, workers: int | None = None, val_fraction: float | None = None,
                val_tokens: int | None = None, shuffle_buffer: int = 10_000, corpus_options: dict | None = None,
                batch_chars: int = 1 << 20, progress: bool = True) -> dict:
    """Tokenize `corpus` into `out_dir`: `val_000000.bin`, then `train_000001.bin` ... and
    `manifest.json`. Returns the manifest.

    corpus: a spec for `nbcore.corpus.iter_corpus` ('builtin', 'local:<glob>', 'fineweb:10Bedu').
    tokenizer_dir: a saved tokenizer folder, or 'tiktoken:gpt2' for GPT-2's tokenizer.
    shard_size: tokens per train shard; num_shards: number of train shards (the val
      shard is not counted). When the corpus runs out first, the last train shard is
      short and the manifest says `"exhausted": true`.
    val_fraction: hold out the last fraction of a finite corpus's text as the val shard
      (see `corpus.iter_corpus`); None: the val shard is the first `val_tokens` (default
      `shard_size`) tokens of the stream.
    seed, shuffle_buffer: document order (a seeded shuffle buffer; 0 keeps file order).
    workers: encoding processes, this one included (default: all cores; 1: this process alone).

    Interrupted and called again with the same arguments, it continues after the last
    complete shard and produces the same files as an uninterrupted run. Called again
    with a larger `num_shards`, it adds shards.
    """
    from . import corpus as corpus_mod

    if shard_size < 1 or num_shards < 1:
        raise ValueError(f"shard_size ({shard_size}) and num_shards ({num_shards}) must be >= 1")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction}: use a number between 0 and 1 (e.g. 0.1), or None")
    out_dir = Path(out_dir)
    workers = workers or default_workers()
    info, enc = load_encoder(str(tokenizer_dir))
    byte_len = token_byte_lengths(enc, info["n_vocab"])
    corpus_options = dict(corpus_options or {})
    params = {"corpus": corpus, "corpus_options": corpus_options, "seed": seed, "shuffle_buffer": shuffle_buffer,
              "shard_size": shard_size, "val_fraction": val_fraction, "val_tokens": val_tokens,
              "tokenizer": {k: info[k] for k in ("name", "merges_hash", "n_vocab", "eot_id")}}
    manifest = _resume_manifest(out_dir, params, num_shards)
    if manifest.get("complete") and (manifest.get("exhausted") or manifest["num_shards"] >= num_shards):
        return manifest
    manifest.update(num_shards=num_shards, complete=False, exhausted=False, tokenizer_dir=info["dir"],
                    dtype=np.dtype(dtype_for(info["n_vocab"])).name, workers=workers)
    done = {s["file"]: s for s in manifest["shards"]}
    plan = _plan(shard_size, num_shards, val_fraction, val_tokens)
    total = sum(size or 0 for _, _, _, size in plan)
    from tqdm.auto import tqdm

    bar = tqdm(total=total or None, unit="tok", unit_scale=True, disable=not progress, desc=f"shards {out_dir.name}")
    bar.update(sum(s["tokens"] for s in manifest["shards"]))
    t0 = time.time()
    try:
        for stream in dict.fromkeys(p[2] for p in plan):
            rows = [p for p in plan if p[2] == stream]
            todo = [p for p in rows if p[0] not in done]
            if not todo:
                continue
            prev = [done[p[0]] for p in rows if p[0] in done]
            start = tuple(prev[-1]["end"]) if prev else (0, 0)
            if prev and prev[-1].get("exhausted"):
                break
            part = None if stream == "all" else stream
            docs = corpus_mod.iter_corpus(corpus, part=part, val_fraction=val_fraction, seed=seed,
                                          shuffle_buffer=shuffle_buffer if stream != "val" else 0, **corpus_options)
            batches = _token_stream(docs, str(tokenizer_dir), workers, batch_chars, skip_docs=start[0])
            filled = _fill_shards(batches, [p[3] for p in todo], start=start)
            for (name, split, _, _), (tokens, end, exhausted) in zip(todo, filled):
                write_shard(out_dir / name, tokens, info["n_vocab"])
                counts = np.bincount(tokens, minlength=info["n_vocab"])  # (V,) occurrences of each id
                manifest["shards"].append({
                    "file": name, "split": split, "tokens": int(tokens.size),
                    "documents": int(counts[info["eot_id"]]), "bytes": int(counts @ byte_len),
                    "stream": stream, "end": list(end), "exhausted": bool(exhausted and split == "train")})
                manifest["seconds"] = round(manifest.get("seconds", 0.0) + time.time() - t0, 3)
                t0 = time.time()
                fileio.write_json(out_dir / MANIFEST, _summarize(manifest))
                bar.update(int(tokens.size))
            if hasattr(batches, "close"):
                batches.close()  # shut the worker pool down now
    finally:
        bar.close()
    splits = {s["split"] for s in manifest["shards"]}
    if "val" not in splits or "train" not in splits:
        have = manifest["splits"]["val"]["tokens"] if "val" in splits else 0
        raise ValueError(f"corpus {corpus!r} ran out after {have} tokens, all of them in the val shard: "
                         f"nothing is left for training. Lower val_tokens/shard_size, pass val_fraction, "
                         f"or use a bigger corpus")
    train = [s for s in manifest["shards"] if s["split"] == "train"]
    manifest["exhausted"] = bool(train[-1]["exhausted"]) or len(train) < num_shards
    manifest["complete"] = True
    if manifest["exhausted"] and progress:
        print(f"note: corpus {corpus!r} ran out after {len(train)} train shard(s) "
              f"({manifest['splits']['train']['tokens']:,} train tokens); asked for {num_shards}")
    fileio.write_json(out_dir / MANIFEST, _summarize(manifest))
    return manifest


def _resume_manifest(out_dir: Path, params: dict, num_shards: int) -> dict:
    """The manifest to continue from: the existing one when its parameters match, else a new one."""
    path = out_dir / MANIFEST
    fresh = {"format": MANIFEST_FORMAT, **params, "num_shards": num_shards, "complete": False,
             "exhausted": False, "shards": [], "splits": {}}
    if not path.exists():
        if out_dir.exists() and any(out_dir.glob("*.bin")):
            raise ValueError(f"{out_dir} holds .bin files but no {MANIFEST}; choose an empty out_dir "
                             f"(or delete those files)")
        return fresh
    old = load_manifest(out_dir)
    diff = [k for k in params if json.dumps(old.get(k), sort_keys=True) != json.dumps(params[k], sort_keys=True)]
    if diff:
        show = ", ".join(f"{k}: {old.get(k)!r} there, {params[k]!r} now" for k in diff)
        raise ValueError(f"{out_dir} holds shards made with other parameters ({show}); "
                         f"choose another out_dir, or delete that folder to rebuild")
    n_train = sum(s["split"] == "train" for s in old["shards"])
    if n_train > num_shards:
        raise ValueError(f"{out_dir} already holds {n_train} train shards, more than num_shards={num_shards}; "
                         f"use that many, or another out_dir")
    # keep the shards that are on disk and intact, in order; later ones are rebuilt
    kept = []
    for s in old["shards"]:
        try:
            ok = num_tokens(out_dir / s["file"]) == s["tokens"]
        except (OSError, ShardError):
            ok = False
        if not ok:
            break
        kept.append(s)
    old["shards"] = kept
    return old


# ---------------------------------------------------------------- reading a shard folder
def load_manifest(shard_dir) -> dict:
    """The manifest of a shard folder made by `make_shards`."""
    path = Path(shard_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: make the shards first (notebook 02_data or "
                                f"nbcore.shards.make_shards)")
    m = fileio.read_json(path)
    if m.get("format", 0) > MANIFEST_FORMAT:
        raise ValueError(f"{path} has format {m['format']}, newer than this nbcore ({MANIFEST_FORMAT}); update nbcore")
    return m


def shard_files(shard_dir, split: str = "train") -> list[Path]:
    """Paths of a split's shards ('train' or 'val'), in order."""
    if split not in ("train", "val"):
        raise ValueError(f"split={split!r}: use 'train' or 'val'")
    shard_dir = Path(shard_dir)
    if (shard_dir / MANIFEST).exists():
        m = load_manifest(shard_dir)
        files = [shard_dir / s["file"] for s in m["shards"] if s["split"] == split]
    else:  # a folder of .bin files from elsewhere (e.g. Modded-NanoGPT's fineweb_train_*.bin)
        files = sorted(shard_dir.glob(f"*{split}_*.bin"))
    if not files:
        raise FileNotFoundError(f"no {split} shards in {shard_dir}")
    return files


def bytes_per_token(manifest: dict, split: str = "val") -> float:
    """UTF-8 bytes of text per token in a split: bits per byte = loss / ln 2 / bytes_per_token."""
    s = manifest["splits"][split]
    if not s["tokens"]:
        raise ValueError(f"the {split} split has no tokens")
    return s["bytes"] / s["tokens"]


def check_tokenizer(manifest: dict, merges_hash: str) -> None:
    """Raise if the shards were made with a tokenizer other than the one with `merges_hash`."""
    have = manifest["tokenizer"]["merges_hash"]
    if have != merges_hash:
        raise ShardError(f"these shards were made with tokenizer {manifest['tokenizer']['name']!r} "
                         f"(merges {have}), not the one given (merges {merges_hash}); "
                         f"make shards with this tokenizer or pass the tokenizer they were made with")

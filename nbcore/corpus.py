"""Text corpora as streams of documents (one `str` per document).

- `"builtin"`: English prose that exists on every machine with no download: the
  Python interpreter's own documentation (`pydoc_data` topics, the standard
  library's docstrings) plus the docstrings of numpy and torch from the pinned
  environment. Built once (about 10 s), cached as JSON lines, deterministic for a
  given environment.
- `"local:<glob>"`: your own files: `.txt` (one document per file, or split on
  blank lines), `.jsonl` (a text field per line), `.parquet` (a text column).
- `"fineweb:<version>"`: FineWeb or FineWeb-Edu streamed through `datasets` from the
  Hugging Face hub (`10B`, `100B`, `350B`, `10Bedu`, `100Bedu`, `350Bedu`), shuffled
  with a seed and a buffer. Offline it fails at once with `CorpusUnavailable`.

`iter_corpus(spec)` is the one entry point the chapters use. For a finite corpus
(built-in or local) `val_fraction` holds out the last part of the text as the val
split: `part="train"` gives the first (1 - val_fraction) of the characters,
`part="val"` the rest, so the tokenizer can be trained on the train part only.
"""
import ast
import glob as globlib
import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

from . import fileio, paths

BUILTIN_FORMAT = 1
BUILTIN_MIN_BYTES = 5_000_000
# Installed packages whose docstrings top the corpus up, in this order, until it
# holds BUILTIN_MIN_BYTES of text. Whole packages only, so the result is stable.
BUILTIN_PACKAGES = ("numpy", "torch")
_SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "testing", "_vendor"}


# ---------------------------------------------------------------- built-in corpus
def _docstrings_in_source(source: bytes) -> list[str]:
    """Docstrings of a module, its classes and functions, in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    out = []

    def visit(node):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and doc.strip():
                out.append(doc.strip())
            for child in node.body:
                visit(child)

    visit(tree)
    return out


def _package_documents(label: str, root: Path) -> Iterator[dict]:
    """One document per source file: all its docstrings joined by blank lines."""
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if _SKIP_PARTS.intersection(rel.parts[:-1]):
            continue
        docs = _docstrings_in_source(path.read_bytes())
        if docs:
            yield {"source": f"{label}:{rel.as_posix()}", "text": "\n\n".join(docs)}


def _package_root(name: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _builtin_sources():
    """(label, version, document iterator factory) for every source, in order."""
    from pydoc_data.topics import topics

    py = f"python{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    yield "pydoc", py, lambda: ({"source": f"pydoc:{k}", "text": topics[k].strip()} for k in sorted(topics))
    std = Path(sysconfig.get_paths()["stdlib"])
    yield "stdlib", py, lambda: _package_documents("stdlib", std)
    from importlib.metadata import version

    for name in BUILTIN_PACKAGES:
        root = _package_root(name)
        if root is not None:
            yield name, version(name), (lambda r=root, n=name: _package_documents(n, r))


def builtin_corpus_key() -> str:
    """Hash of everything the built-in corpus depends on (format, Python and package versions)."""
    parts = [f"format={BUILTIN_FORMAT}", f"min_bytes={BUILTIN_MIN_BYTES}"]
    parts += [f"{label}={ver}" for label, ver, _ in _builtin_sources()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def build_builtin_corpus(path, min_bytes: int = BUILTIN_MIN_BYTES) -> dict:
    """Write the built-in corpus to `path` as JSON lines; return its description."""
    total, n_docs, used = 0, 0, []
    with fileio.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i, (label, ver, docs) in enumerate(_builtin_sources()):
            # pydoc and stdlib always; packages only while still short of min_bytes
            if i >= 2 and total >= min_bytes:
                break
            n_bytes = 0
            for doc in docs():
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
                b = len(doc["text"].encode("utf-8"))
                n_bytes += b
                n_docs += 1
            total += n_bytes
            used.append({"source": label, "version": ver, "bytes": n_bytes})
    return {"path": str(path), "documents": n_docs, "bytes": total, "sources": used}


def builtin_corpus_path(rebuild: bool = False) -> Path:
    """The cached built-in corpus (JSON lines), building it on first use."""
    folder = paths.cache_dir() / "builtin_corpus"
    path = folder / f"{builtin_corpus_key()}.jsonl"
    info = folder / f"{builtin_corpus_key()}.json"
    if rebuild or not path.exists() or not info.exists():
        fileio.write_json(info, build_builtin_corpus(path))
    return path


def builtin_info() -> dict:
    """Size and sources of the built-in corpus: {'documents', 'bytes', 'sources': [...]}."""
    path = builtin_corpus_path()
    return fileio.read_json(path.with_suffix(".json"))


def iter_builtin() -> Iterator[str]:
    with open(builtin_corpus_path(), encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


# ---------------------------------------------------------------- local files
def decode_text(data: bytes, path, encoding: str = "utf-8", offset: int = 0) -> str:
    """`data` decoded strictly; bytes that are not `encoding` are an error naming the first bad byte.

    A latin-1 file or a binary renamed .txt would otherwise turn into replacement characters
    the tokenizer learns from. `offset` is where `data` starts in the file (for the message).
    """
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        bad = data[e.start:e.start + 4]
        raise ValueError(f"{path}: not {encoding} text: byte 0x{data[e.start]:02x} at byte offset {offset + e.start:,} "
                         f"({bad!r} ...) cannot be decoded ({e.reason}). Convert the file (e.g. iconv -f latin-1 -t "
                         f"utf-8), or read it as what it is with the `encoding` parameter (e.g. encoding='latin-1')"
                         ) from None
    except LookupError:
        raise ValueError(f"encoding={encoding!r} is not a codec Python knows (e.g. 'utf-8', 'latin-1', "
                         f"'cp1252', 'utf-16')") from None


def _iter_txt(path: Path, split: str, encoding: str = "utf-8") -> Iterator[str]:
    text = decode_text(path.read_bytes(), path, encoding)
    if split == "file":
        if text.strip():
            yield text
    elif split == "blank_lines":
        yield from [block.strip("\n") for block in text.split("\n\n") if not block.isspace() and block]
    else:
        raise ValueError(f"split={split!r}: use 'file' (one document per file) or 'blank_lines'")


def _iter_jsonl(path: Path, text_field: str, encoding: str = "utf-8") -> Iterator[str]:
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = decode_text(raw, path, encoding, offset)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if text_field not in row:
                raise ValueError(f"{path}:{lineno}: no field {text_field!r} (fields: {sorted(row)}); "
                                 f"pass text_field= the name of the text field")
            yield row[text_field]


def _iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise ValueError(f"{path}: no column {text_field!r} (columns: {pf.schema_arrow.names}); "
                         f"pass text_field= the name of the text column")
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        yield from (t for t in batch.column(0).to_pylist() if t)


def local_files(pattern: str) -> list[Path]:
    files = sorted(Path(p) for p in globlib.glob(str(Path(pattern).expanduser()), recursive=True))
    return [p for p in files if p.is_file()]


def iter_local(pattern: str, split: str = "file", text_field: str = "text", encoding: str = "utf-8") -> Iterator[str]:
    """Documents from files matching `pattern` (sorted): .txt, .jsonl/.json lines, .parquet.

    Text is decoded strictly as `encoding` (a file that is not is refused, naming the first
    bad byte's offset); empty files are skipped with a warning.
    """
    files = local_files(pattern)
    if not files:
        raise FileNotFoundError(f"local corpus: no file matches {pattern!r}; check the path and glob")
    for path in files:
        suffix = path.suffix.lower()
        if path.stat().st_size == 0:
            import warnings

            warnings.warn(f"local corpus: {path} is empty (0 bytes); skipped", stacklevel=2)
            continue
        if suffix in (".txt", ".md", ".text"):
            yield from _iter_txt(path, split, encoding)
        elif suffix in (".jsonl", ".ndjson"):
            yield from _iter_jsonl(path, text_field, encoding)
        elif suffix == ".parquet":
            yield from _iter_parquet(path, text_field)
        else:
            raise ValueError(f"local corpus: don't know how to read {path} "
                             f"(use .txt, .jsonl or .parquet)")


# ---------------------------------------------------------------- FineWeb (streamed from the hub)
# version -> (hub dataset, config); the "sample-*BT" configs are random samples of that many GPT-2 tokens
FINEWEB_VERSIONS = {
    "10B": ("HuggingFaceFW/fineweb", "sample-10BT"),
    "100B": ("HuggingFaceFW/fineweb", "sample-100BT"),
    "350B": ("HuggingFaceFW/fineweb", "sample-350BT"),
    "10Bedu": ("HuggingFaceFW/fineweb-edu", "sample-10BT"),
    "100Bedu": ("HuggingFaceFW/fineweb-edu", "sample-100BT"),
    "350Bedu": ("HuggingFaceFW/fineweb-edu", "sample-350BT"),
}
OFFLINE_HINT = ("use local files (corpus='local:/path/*.txt', .jsonl or .parquet) or the built-in "
                "corpus (corpus='builtin') instead")


class CorpusUnavailable(RuntimeError):
    """A corpus that needs a download cannot be reached (offline, hub down, no access)."""


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def check_hub(repo: str, timeout: float = 5.0) -> None:
    """Raise CorpusUnavailable at once when the Hugging Face hub cannot be reached."""
    import urllib.error
    import urllib.request

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            raise CorpusUnavailable(f"{repo} needs the Hugging Face hub but {var} is set; {OFFLINE_HINT}")
    url = f"{_hub_endpoint()}/api/datasets/{repo}"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # the hub answered (even 401/404): reachable; load_dataset reports the rest
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CorpusUnavailable(f"cannot reach the Hugging Face hub for {repo} ({reason}); "
                                f"{OFFLINE_HINT}") from None


def _data_files_format(data_files) -> str:
    first = data_files if isinstance(data_files, str) else next(iter(data_files))
    if isinstance(data_files, dict):
        first = next(iter(data_files.values()))
        first = first if isinstance(first, str) else first[0]
    name = str(first).lower()
    if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        return "json"
    if name.endswith((".txt", ".txt.gz")):
        return "text"
    return "parquet"


def iter_fineweb(version: str = "10Bedu", seed: int = 0, shuffle_buffer: int = 10_000, text_field: str = "text",
                 data_files=None, timeout: float = 5.0) -> Iterator[str]:
    """Documents of FineWeb(-Edu) `version`, streamed and shuffled (seed, buffer of documents).

    `data_files` (a glob or list of local .parquet/.jsonl files) replaces the hub
    download with local files in the same layout, through the same streaming code
    (tests use it; so can a machine with a FineWeb copy on disk). Returns an iterator;
    the hub check and `load_dataset` run before it is returned, so an offline call
    fails here, fast, with `CorpusUnavailable`.
    """
    if version not in FINEWEB_VERSIONS:
        raise ValueError(f"unknown FineWeb version {version!r}: use one of {', '.join(FINEWEB_VERSIONS)}")
    repo, config = FINEWEB_VERSIONS[version]
    import datasets

    if data_files is None:
        check_hub(repo, timeout)
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(max(timeout, 1))))
        args = dict(path=repo, name=config)
    else:
        if isinstance(data_files, (str, os.PathLike)):
            data_files = [str(p) for p in sorted(globlib.glob(str(data_files)))] or str(data_files)
        args = dict(path=_data_files_format(data_files), data_files=data_files)
    try:
        ds = datasets.load_dataset(**args, split="train", streaming=True)
    except Exception as e:  # the hub's errors come in many types; say it once, plainly
        if data_files is not None:
            raise
        raise CorpusUnavailable(f"could not open {repo} ({config}) on the Hugging Face hub: "
                                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                                f"{OFFLINE_HINT}") from None
    if shuffle_buffer:
        ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)

    def docs():
        for row in ds:
            text = row[text_field]
            if text:
                yield text

    return docs()


# ---------------------------------------------------------------- splits and order
def shuffled(docs, seed: int, buffer_size: int) -> Iterator[str]:
    """Documents in a seeded random order, holding at most `buffer_size` of them at once.

    A full buffer emits a random slot and refills it with the next document; at the end
    the rest comes out shuffled. Deterministic for (seed, buffer_size, input order).
    """
    import numpy as np

    if buffer_size <= 1:
        yield from docs
        return
    import itertools

    rng = np.random.default_rng(seed)
    docs = iter(docs)
    buf = list(itertools.islice(docs, buffer_size))
    # random slots, drawn 4096 at a time, only as the documents need them
    slots = itertools.chain.from_iterable(iter(lambda: rng.integers(0, buffer_size, size=4096).tolist(), None))
    for d, i in zip(docs, slots):  # zip pulls the document first: no slot is drawn past the end
        yield buf[i]
        buf[i] = d
    for i in rng.permutation(len(buf)).tolist():
        yield buf[i]


def split_documents(make_docs, val_fraction: float, part: str) -> Iterator[str]:
    """The 'train' or 'val' part of a finite corpus, cut by characters.

    `make_docs()` gives the documents (it is called twice: once to count characters).
    'train' is the first round((1 - val_fraction) * characters); 'val' is the rest, so
    train + val is the corpus exactly (a document straddling the cut is split in two).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction}: use a number between 0 and 1 (e.g. 0.1)")
    if part not in ("train", "val"):
        raise ValueError(f"part={part!r}: use 'train' or 'val'")
    total = sum(len(d) for d in make_docs())
    cut = total - round(total * val_fraction)
    seen = 0
    for d in make_docs():
        lo, hi = seen, seen + len(d)
        seen = hi
        if part == "train":
            if lo >= cut:
                return
            piece = d[:cut - lo]
        else:
            if hi <= cut:
                continue
            piece = d[max(0, cut - lo):]
        if piece:
            yield piece


# ---------------------------------------------------------------- one entry point
def iter_corpus(spec: str, *, part: str | None = None, val_fraction: float | None = None, seed: int | None = None,
                shuffle_buffer: int | None = None, **kwargs) -> Iterator[str]:
    """Documents of a corpus named by `spec`: 'builtin', 'local:<glob>' or 'fineweb:<version>'.

    part / val_fraction: for 'builtin' and 'local:', `part="train"` or `"val"` with a
      `val_fraction` gives that part of the text (see `split_documents`).
    seed / shuffle_buffer: a seeded shuffle of document order with a buffer of that many
      documents (defaults: FineWeb 10,000 with seed 0; built-in and local files keep
      their order unless both are given). The val part is cut before shuffling.
    kwargs go to the source: `split`/`text_field` for local files; `text_field`,
      `data_files`, `timeout` for FineWeb.
    """
    if spec.startswith("fineweb:"):
        if val_fraction is not None or part is not None:
            raise ValueError("FineWeb is a stream without an end: val_fraction/part do not apply; "
                             "the val shard is the first val_tokens of the stream")
        return iter_fineweb(spec[len("fineweb:"):], seed=0 if seed is None else seed,
                            shuffle_buffer=10_000 if shuffle_buffer is None else shuffle_buffer, **kwargs)
    if spec == "builtin":
        if kwargs:
            raise ValueError(f"the built-in corpus takes no options, got {sorted(kwargs)}")
        make_docs = iter_builtin
    elif spec.startswith("local:"):
        pattern = spec[len("local:"):]
        make_docs = lambda: iter_local(pattern, **kwargs)  # noqa: E731
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # empty files: said below if nothing else is left
            first = next(make_docs(), None)  # fail now, not at the first next(), on a bad glob
        if first is None:
            empty = [f.name for f in local_files(pattern) if f.stat().st_size == 0]
            if empty and len(empty) == len(local_files(pattern)):
                raise ValueError(f"local corpus {pattern!r}: {', '.join(empty)} {'is' if len(empty) == 1 else 'are'} "
                                 f"empty (0 bytes)")
            raise ValueError(f"local corpus {pattern!r}: the files hold no text (only whitespace)")
    else:
        raise ValueError(f"unknown corpus {spec!r}: use 'builtin', 'local:<glob>' or 'fineweb:<version>' "
                         f"(versions {', '.join(FINEWEB_VERSIONS)})")
    if part is not None and val_fraction is None:
        raise ValueError(f"part={part!r} needs val_fraction (the share of the text held out as val)")
    if val_fraction is not None:
        if part is None:
            raise ValueError("val_fraction needs part='train' or part='val'")
        docs = split_documents(make_docs, val_fraction, part)
    else:
        docs = make_docs()
    if seed is not None and shuffle_buffer:
        docs = shuffled(docs, seed, shuffle_buffer)
    return docs


def take_chars(docs, max_chars: int) -> Iterator[str]:
    """Documents from `docs` until `max_chars` characters have been yielded (last one cut)."""
    left = max_chars
    if left <= 0:
        return
    for doc in docs:
        yield doc[:left]
        left -= len(doc)
        if left <= 0:
            return  # stop before pulling another document from a shared iterator

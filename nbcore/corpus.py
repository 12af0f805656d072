"""Text corpora as streams of documents (one `str` per document).

- `"builtin"`: English prose that exists on every machine with no download: the
  Python interpreter's own documentation (`pydoc_data` topics, the standard
  library's docstrings) plus the docstrings of numpy and torch from the pinned
  environment. Built once (about 10 s), cached as JSON lines, deterministic for a
  given environment.
- `"local:<glob>"`: your own files: `.txt` (one document per file, or split on
  blank lines), `.jsonl` (a text field per line), `.parquet` (a text column).

`iter_corpus(spec)` is the one entry point the chapters use.
"""
import ast
import glob as globlib
import hashlib
import json
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
def _iter_txt(path: Path, split: str) -> Iterator[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    if split == "file":
        if text.strip():
            yield text
    elif split == "blank_lines":
        for block in text.split("\n\n"):
            if block.strip():
                yield block.strip("\n")
    else:
        raise ValueError(f"split={split!r}: use 'file' (one document per file) or 'blank_lines'")


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
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


def iter_local(pattern: str, split: str = "file", text_field: str = "text") -> Iterator[str]:
    """Documents from files matching `pattern` (sorted): .txt, .jsonl/.json lines, .parquet."""
    files = sorted(Path(p) for p in globlib.glob(str(Path(pattern).expanduser()), recursive=True))
    files = [p for p in files if p.is_file()]
    if not files:
        raise FileNotFoundError(f"local corpus: no file matches {pattern!r}; check the path and glob")
    for path in files:
        suffix = path.suffix.lower()
        if suffix in (".txt", ".md", ".text"):
            yield from _iter_txt(path, split)
        elif suffix in (".jsonl", ".ndjson"):
            yield from _iter_jsonl(path, text_field)
        elif suffix == ".parquet":
            yield from _iter_parquet(path, text_field)
        else:
            raise ValueError(f"local corpus: don't know how to read {path} "
                             f"(use .txt, .jsonl or .parquet)")


# ---------------------------------------------------------------- one entry point
def iter_corpus(spec: str, **kwargs) -> Iterator[str]:
    """Documents of a corpus named by `spec`: 'builtin' or 'local:<glob>'."""
    if spec == "builtin":
        return iter_builtin()
    if spec.startswith("local:"):
        return iter_local(spec[len("local:"):], **kwargs)
    raise ValueError(f"unknown corpus {spec!r}: use 'builtin' or 'local:<glob>'")


def take_chars(docs, max_chars: int) -> Iterator[str]:
    """Documents from `docs` until `max_chars` characters have been yielded (last one cut)."""
    left = max_chars
    for doc in docs:
        if left <= 0:
            return
        yield doc[:left]
        left -= len(doc)

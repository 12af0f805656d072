"""Evaluation sets as lists of `MultipleChoiceItem`: HellaSwag, ARC-Easy, PIQA.

An item is a context and a few endings, one of them right (`label`). The endings carry
their leading separator (usually a space), so a scorer compares the model's
log-probability of `ending` after `context` exactly as written: text = context + ending.

- HellaSwag validation (10,042 items) from its public jsonl (the original lab scored only
  the first 1,014), downloaded once into the cache and checked by size and sha256.
- ARC-Easy (`allenai/ai2_arc`) and PIQA through `datasets`, parsed once and cached as
  JSON lines, so later runs need no network.

Offline, with nothing cached, every loader raises `DatasetUnavailable`, which the eval
chapter catches to skip that set with a note. Tests hand the loaders small local files
(`path=` / `data_files=`) that go through the same parsing code.
"""
import hashlib
import json
import re
import urllib.error
import urllib.request
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import fileio, paths


class DatasetUnavailable(RuntimeError):
    """An evaluation set is neither cached nor downloadable (offline, hub down, moved)."""


@dataclass
class MultipleChoiceItem:
    context: str  # the prompt the endings continue
    endings: list[str]  # candidate continuations, each with its leading separator (" ...")
    label: int  # index of the right ending
    id: str = ""
    source: str = ""  # e.g. "hellaswag/validation"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.endings:
            raise ValueError(f"item {self.id!r}: no endings")
        if not 0 <= self.label < len(self.endings):
            raise ValueError(f"item {self.id!r}: label {self.label} is not an index into {len(self.endings)} endings")


def default_cache_dir() -> Path:
    return paths.cache_dir() / "evaldata"


# ---------------------------------------------------------------- HellaSwag
HELLASWAG_URLS = {
    "validation": "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl",
    "train": "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_train.jsonl",
}
# (bytes, sha256, items) of the files at those URLs, as recorded in Hugging Face datasets'
# `datasets/hellaswag/dataset_infos.json` ("download_checksums"); 10,042 and 39,905 items.
HELLASWAG_FILES = {
    "validation": (12_246_618, "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588", 10_042),
    "train": (47_496_131, "dae5e69249868cb9fe4e23ff925c60b66169564cfb7072d793cd7356a2b69f8d", 39_905),
}


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_file(path, size: int, sha256: str) -> None:
    """Raise ValueError unless `path` has exactly `size` bytes and this sha256."""
    path = Path(path)
    have = path.stat().st_size
    if have != size:
        raise ValueError(f"{path} has {have} bytes, expected {size}: an incomplete or different file; "
                         f"delete it to download it again")
    digest = _sha256(path)
    if digest != sha256:
        raise ValueError(f"{path} has sha256 {digest}, expected {sha256}: a different file; "
                         f"delete it to download it again")


def download(url: str, path, size: int | None = None, sha256: str | None = None, timeout: float = 30.0) -> Path:
    """Fetch `url` into `path` atomically, checking size and sha256 before it lands."""
    path = Path(path)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, fileio.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                for block in iter(lambda: r.read(1 << 20), b""):
                    f.write(block)
            if size is not None:
                check_file(tmp, size, sha256)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DatasetUnavailable(f"could not download {url} ({reason}); when online it is fetched once "
                                 f"into {path.parent}; or put the file at {path} yourself") from None
    return path


def _hellaswag_clean(text: str) -> str:
    """lm-evaluation-harness's preprocessing: WikiHow's '[title]' markers become sentence
    breaks, other [bracketed] artifacts go, double spaces become one."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_item(row: dict, style: str = "harness", source: str = "hellaswag") -> MultipleChoiceItem:
    """One HellaSwag json row -> item.

    style="harness" (lm-evaluation-harness, the numbers papers report):
      context = clean(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()),
      endings = " " + clean(ending).
    style="raw" (karpathy's build-nanogpt / the original lab): context = ctx, endings = " " + ending.
    """
    if style == "harness":
        context = _hellaswag_clean(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
        endings = [" " + _hellaswag_clean(e) for e in row["endings"]]
    elif style == "raw":
        context, endings = row["ctx"], [" " + e for e in row["endings"]]
    else:
        raise ValueError(f"style={style!r}: use 'harness' (lm-evaluation-harness) or 'raw' (ctx as is)")
    return MultipleChoiceItem(context=context, endings=endings, label=int(row["label"]), id=str(row.get("ind", "")),
                              source=source, meta={"activity_label": row.get("activity_label", ""),
                                                   "split_type": row.get("split_type", "")})


def load_hellaswag(split: str = "validation", cache_dir=None, path=None, style: str = "harness",
                   timeout: float = 30.0) -> list[MultipleChoiceItem]:
    """HellaSwag `split` ('validation': 10,042 items, or 'train') as MultipleChoiceItems.

    The jsonl is downloaded once into `cache_dir` (default: nbcore's cache / evaldata) and
    checked by size and sha256 each time it is used. `path=` reads a local jsonl in the
    same format instead (no checks). Offline with no cached copy: DatasetUnavailable.
    """
    if split not in HELLASWAG_URLS:
        raise ValueError(f"split={split!r}: use 'validation' or 'train' (the test split has no labels)")
    source = f"hellaswag/{split}"
    if path is None:
        size, sha, count = HELLASWAG_FILES[split]
        path = Path(cache_dir or default_cache_dir()) / "hellaswag" / Path(HELLASWAG_URLS[split]).name
        if path.exists():
            check_file(path, size, sha)
        else:
            download(HELLASWAG_URLS[split], path, size, sha, timeout)
    else:
        count = None
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                items.append(hellaswag_item(json.loads(line), style, source))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{lineno}: not a HellaSwag item ({type(e).__name__}: {e})") from None
    if count is not None and len(items) != count:
        raise ValueError(f"{path}: {len(items)} items, expected {count}")
    return items


# ---------------------------------------------------------------- through `datasets`: ARC-Easy, PIQA
def arc_item(row: dict, source: str = "arc_easy") -> MultipleChoiceItem:
    """ARC row -> item, as lm-evaluation-harness renders it:
    context 'Question: {question}\\nAnswer:', endings ' {choice}'."""
    labels = list(row["choices"]["label"])
    if row["answerKey"] not in labels:
        raise ValueError(f"answerKey {row['answerKey']!r} is not one of the choice labels {labels}")
    return MultipleChoiceItem(context=f"Question: {row['question']}\nAnswer:",
                              endings=[" " + t for t in row["choices"]["text"]],
                              label=labels.index(row["answerKey"]), id=str(row.get("id", "")), source=source)


def piqa_item(row: dict, source: str = "piqa") -> MultipleChoiceItem:
    """PIQA row -> item, as lm-evaluation-harness renders it:
    context 'Question: {goal}\\nAnswer:', endings ' {sol1}', ' {sol2}'."""
    label = int(row["label"])
    if label not in (0, 1):
        raise ValueError(f"PIQA label {label}: this split has no answers (the test split is unlabelled)")
    return MultipleChoiceItem(context=f"Question: {row['goal']}\nAnswer:", endings=[" " + row["sol1"], " " + row["sol2"]],
                              label=label, id=str(row.get("id", "")), source=source)


# (hub dataset, config) candidates, tried in order; expected item counts per split
ARC_EASY = {"hub": [("allenai/ai2_arc", "ARC-Easy")], "counts": {"train": 2251, "validation": 570, "test": 2376}}
# ybisk/piqa is the original (a loading script, which datasets >= 4 no longer runs); baber/piqa is
# the parquet copy lm-evaluation-harness uses.
PIQA = {"hub": [("ybisk/piqa", None), ("baber/piqa", None)], "counts": {"train": 16113, "validation": 1838}}


def _hub_reachable(repo: str, timeout: float) -> None:
    from .corpus import CorpusUnavailable, check_hub

    try:
        check_hub(repo, timeout)
    except CorpusUnavailable as e:
        raise DatasetUnavailable(str(e).split(";")[0] + "; the eval chapter skips this set") from None


def _rows_from_datasets(spec: dict, split: str, data_files, timeout: float):
    import datasets

    if data_files is not None:
        fmt = "json" if str(data_files).endswith((".jsonl", ".json")) else "parquet"
        # streamed: local files are read straight through, nothing is written to datasets' cache
        return list(datasets.load_dataset(fmt, data_files=str(data_files), split="train", streaming=True)), "local"
    errors = []
    for repo, config in spec["hub"]:
        _hub_reachable(repo, timeout)
        try:
            return list(datasets.load_dataset(repo, config, split=split)), repo
        except Exception as e:  # the hub's errors come in many types; try the next source
            errors.append(f"{repo}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise DatasetUnavailable("could not load it from the hub (" + "; ".join(errors) + ")")


def _load_via_datasets(name: str, spec: dict, parse, split: str, cache_dir, data_files, timeout):
    if split not in spec["counts"]:
        raise ValueError(f"{name}: split={split!r}: use one of {', '.join(spec['counts'])}")
    cache = Path(cache_dir or default_cache_dir()) / f"{name}_{split}.jsonl"
    source = f"{name}/{split}"
    if data_files is None and cache.exists():
        with open(cache, encoding="utf-8") as f:
            return [MultipleChoiceItem(**json.loads(line)) for line in f if line.strip()]
    rows, origin = _rows_from_datasets(spec, split, data_files, timeout)
    items = []
    for i, row in enumerate(rows):
        try:
            items.append(parse(row, source))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{name} row {i}: not a {name} item ({type(e).__name__}: {e})") from None
    if data_files is None:
        want = spec["counts"][split]
        if len(items) != want:
            warnings.warn(f"{name} {split} from {origin}: {len(items)} items, expected {want}")
        fileio.write_text(cache, "".join(json.dumps(asdict(it), ensure_ascii=False) + "\n" for it in items))
    return items


def load_arc_easy(split: str = "test", cache_dir=None, data_files=None, timeout: float = 10.0) -> list[MultipleChoiceItem]:
    """ARC-Easy (allenai/ai2_arc, config ARC-Easy): 'test' 2,376 items, 'validation' 570, 'train' 2,251.
    Cached after the first download. `data_files=` a local .jsonl/.parquet in the hub's layout."""
    return _load_via_datasets("arc_easy", ARC_EASY, arc_item, split, cache_dir, data_files, timeout)


def load_piqa(split: str = "validation", cache_dir=None, data_files=None, timeout: float = 10.0) -> list[MultipleChoiceItem]:
    """PIQA: 'validation' 1,838 items (its test split has no labels), 'train' 16,113.
    Cached after the first download. `data_files=` a local .jsonl/.parquet in the hub's layout."""
    return _load_via_datasets("piqa", PIQA, piqa_item, split, cache_dir, data_files, timeout)


LOADERS = {"hellaswag": load_hellaswag, "arc_easy": load_arc_easy, "piqa": load_piqa}

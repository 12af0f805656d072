"""Where the workbook keeps things. Every location can be moved by an environment variable."""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"
PARAMS_DIR = REPO_ROOT / "papermill_params"


def runs_dir() -> Path:
    """`runs/` of the repo, or $NBCORE_RUNS (tests point it at a temporary folder)."""
    return Path(os.environ.get("NBCORE_RUNS", REPO_ROOT / "runs"))


def tokenizers_dir() -> Path:
    return runs_dir() / "tokenizers"


def shards_dir() -> Path:
    return runs_dir() / "shards"


def cache_dir() -> Path:
    """Downloads and built corpora: $NBCORE_CACHE, else ~/.cache/nbcore."""
    return Path(os.environ.get("NBCORE_CACHE", Path.home() / ".cache" / "nbcore"))

"""Where cilbench keeps things on disk when the user does not say: the cache and the data root."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$CILBENCH_CACHE, else ~/.cache/cilbench (feature, decoded-image and converted-weight
    caches)."""
    return Path(os.environ.get("CILBENCH_CACHE", Path.home() / ".cache" / "cilbench"))


def default_data_root() -> Path:
    """$CILBENCH_DATA, else ./data (what `--data-root` falls back to)."""
    return Path(os.environ.get("CILBENCH_DATA", "data"))

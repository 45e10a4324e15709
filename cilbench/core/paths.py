"""Where cilbench keeps things on disk when the user does not say: the cache and the data root.

`using_cache_dir(folder)` makes every cache (features, decoded images, converted weights, split
files) follow a run's `--cache-dir` for the duration of the run, in this thread of control.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from cilbench.core.errors import CilbenchError

_CACHE_DIR: ContextVar[Path | None] = ContextVar("cilbench_cache_dir", default=None)


def default_cache_dir() -> Path:
    """The folder given to `using_cache_dir`, else $CILBENCH_CACHE, else ~/.cache/cilbench
    (feature, decoded-image and converted-weight caches)."""
    chosen = _CACHE_DIR.get()
    if chosen is not None:
        return chosen
    return _from_environment("CILBENCH_CACHE", Path.home() / ".cache" / "cilbench")


def default_data_root() -> Path:
    """$CILBENCH_DATA, else ./data (what `--data-root` falls back to)."""
    return _from_environment("CILBENCH_DATA", Path("data"))


@contextmanager
def using_cache_dir(folder: Path | None) -> Iterator[None]:
    """Within the block, `default_cache_dir()` is `folder` (unchanged when None)."""
    token = _CACHE_DIR.set(Path(folder) if folder is not None else _CACHE_DIR.get())
    try:
        yield
    finally:
        _CACHE_DIR.reset(token)


def _from_environment(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    if value is None:
        return default
    if not value.strip():
        raise CilbenchError(
            f"{name} is set but empty ({value!r}); an empty folder name would mean the current "
            f"directory. Unset it (default: {default}) or set it to a folder."
        )
    return Path(value).expanduser()

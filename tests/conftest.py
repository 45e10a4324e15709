"""Shared fixtures: every test gets its own feature cache and run folder, never the user's."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CILBENCH_CACHE", str(cache))
    monkeypatch.delenv("CILBENCH_DATA", raising=False)
    return cache

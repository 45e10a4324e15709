"""Benchmarks behind `cilbench profile NAME`: figures measured side by side in one process.

Each module registers a function `RunSpec -> {label: figure}`; the CLI prints the figures as a
table (or JSON). Timings live here, never in unit tests.
"""

from __future__ import annotations

from collections.abc import Callable

from cilbench.core.registry import Registry
from cilbench.engine.spec import RunSpec

Figures = dict[str, float | int | str]
ProfileFunction = Callable[[RunSpec], Figures]

PROFILES: Registry[ProfileFunction] = Registry("profile", package="cilbench.profiles")
IGNORED_OPTIONS: dict[str, tuple[str, ...]] = {}
"""Profile name -> command-line options it fixes or never reads; the CLI refuses them."""


def register_profile(
    name: str, *, ignores: tuple[str, ...] = ()
) -> Callable[[ProfileFunction], ProfileFunction]:
    """Register a profile; `ignores` lists options (e.g. "--strategy") it fixes or never reads."""
    IGNORED_OPTIONS[name] = ignores
    return PROFILES.register(name)

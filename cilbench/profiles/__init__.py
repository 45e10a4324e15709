"""Benchmarks behind `cilbench profile NAME`: figures measured side by side in one process.

Each module registers a function `RunSpec -> {label: figure}`; the CLI prints the figures as a
table (or JSON). Timings live here, never in unit tests.
"""

from __future__ import annotations

from collections.abc import Callable

from cilbench.registry import Registry
from cilbench.runner import RunSpec

Figures = dict[str, float | int | str]
ProfileFunction = Callable[[RunSpec], Figures]

PROFILES: Registry[ProfileFunction] = Registry("profile", package="cilbench.profiles")
register_profile = PROFILES.register

"""The result file: one versioned JSON document per run, written atomically.

Derived fields (metrics) are stored for convenience but readers such as the leaderboard recompute
them from the stored accuracy matrix. Loading validates the schema and never executes code.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cilbench.core.environment import environment
from cilbench.core.errors import CorruptFileError
from cilbench.core.files import write_atomic

__all__ = ["RunResult", "environment", "load_result", "save_result", "write_atomic"]

MAX_RESULT_BYTES = 16 * 2**20
"""Result files are a few KiB; a longer file (or one that never ends, /dev/zero) is refused
unread rather than read into memory."""
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 2 added `recipe` (and config.augmentation, config.recipe, the metrics' accuracy
curves); a version-1 file reads with an empty `recipe`."""


@dataclass
class RunResult:
    """Everything needed to trust, compare and reproduce one run."""

    run_id: str
    config: dict[str, Any]
    """Resolved: strategy name and hyper-parameters, stream options, backbone settings, seed."""
    stream: dict[str, Any]
    """Name, version, scenario, class order, classes per experience, source fingerprints."""
    backbone: dict[str, Any]
    """Tag, weight source and digest, preprocessing."""
    accuracy_matrix: list[list[float | None]]
    """Percent; row t = after training experience t, column j = test set j; None = not evaluated."""
    test_sizes: list[int]
    metrics: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    flags: dict[str, Any] = field(default_factory=dict)
    """Leaderboard flags, e.g. uses_exemplars."""
    strategy_report: dict[str, Any] = field(default_factory=dict)
    """What the strategy's `report()` returned after the last finished experience."""
    recipe: dict[str, Any] = field(default_factory=dict)
    """The recipe that ran: name, stream, variant, source (repo, commit, file, paper table),
    notes, and why it fell back to another stream's or variant's recipe, if it did."""
    complete: bool = False
    schema_version: int = SCHEMA_VERSION

    def matrix(self) -> np.ndarray:
        """The accuracy matrix as floats with NaN for unevaluated cells."""
        return np.array(
            [[np.nan if a is None else a for a in row] for row in self.accuracy_matrix], dtype=float
        ).reshape(len(self.accuracy_matrix), len(self.test_sizes))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any, source: str = "result") -> RunResult:
        """Validate and build; raise CorruptFileError naming what is wrong."""
        if not isinstance(data, dict):
            raise CorruptFileError(f"{source}: expected a JSON object")
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise CorruptFileError(
                f"{source}: schema_version {version!r}, this cilbench reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
            )
        expected = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(expected)
        missing = {
            n
            for n, f in expected.items()
            if n not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        }
        if unknown or missing:
            raise CorruptFileError(
                f"{source}: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}"
            )
        _check_matrix(data["accuracy_matrix"], data["test_sizes"], source)
        return cls(**data)


def _check_matrix(matrix: Any, sizes: Any, source: str) -> None:
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 0 for s in sizes):
        raise CorruptFileError(f"{source}: test_sizes must be a list of non-negative integers")
    if not isinstance(matrix, list):
        raise CorruptFileError(f"{source}: accuracy_matrix must be a list of rows")
    for t, row in enumerate(matrix):
        if not isinstance(row, list) or len(row) != len(sizes):
            raise CorruptFileError(
                f"{source}: accuracy_matrix row {t} must have {len(sizes)} cells"
            )
        for a in row:
            number = isinstance(a, (int, float)) and not isinstance(a, bool)
            if a is not None and not (number and 0 <= a <= 100):
                raise CorruptFileError(f"{source}: accuracy {a!r} in row {t} is not in [0, 100]")


def save_result(result: RunResult, path: Path) -> None:
    """Write the result JSON atomically."""
    write_atomic(path, result.to_json())


def load_result(path: Path) -> RunResult:
    """Read and validate a result file (at most MAX_RESULT_BYTES of it)."""
    try:
        with Path(path).open("rb") as file:
            text = file.read(MAX_RESULT_BYTES + 1)
        if len(text) > MAX_RESULT_BYTES:
            raise CorruptFileError(
                f"Result file {path} is longer than {MAX_RESULT_BYTES // 2**20} MiB; "
                "a result is a few KiB. Is it the right file?"
            )
        data = json.loads(text.decode())
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad UTF-8 or JSON
        raise CorruptFileError(f"Cannot read result file {path}: {error}") from error
    return RunResult.from_dict(data, source=str(path))

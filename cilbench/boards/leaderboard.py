"""Leaderboards: validated result files in, one row per configuration (mean ± std over seeds) out.

`add` checks a result before it joins `leaderboards/<stream>/`: schema version, the stream's current
version, a registered strategy, a complete accuracy matrix and the board's protocol. `aggregate`
recomputes every metric from the stored matrices with `cilbench.core.metrics` (the derived fields in
the files are never read) and puts the published number of the same protocol beside ours
(`leaderboards/reference.json`, read by `cilbench.boards.references`). Rendering the pages lives
in `cilbench.boards.pages`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cilbench.boards.references import Reference
from cilbench.core import metrics
from cilbench.core.errors import CilbenchError
from cilbench.core.result_schema import check_board_result
from cilbench.core.results import RunResult, load_result, write_atomic
from cilbench.engine.spec import LATER_KEYS

NOT_PROTOCOL = frozenset({"download", "decoded_size"})
"""Stream options that change how data is read, not what is measured."""
RUN_ONLY = frozenset({"seed", "device", "eval_batch_size", "compile"})
"""Config keys that differ between the seeds of one row without changing what the row measures."""
METRICS: dict[str, str] = {
    "final_accuracy": "final acc (sample-weighted)",
    "final_accuracy_task_averaged": "final acc (task-averaged)",
    "average_accuracy": "avg inc acc (sample-weighted)",
    "average_accuracy_task_averaged": "avg inc acc (task-averaged)",
    "forgetting": "forgetting (Chaudhry, max-based)",
    "average_step_drop": "forgetting (CODA F_N, per-step drop)",
}
FLAGS: dict[str, str] = {
    "frozen_backbone": "frozen backbone",
    "uses_exemplars": "exemplars",
    "batchwise_prompt_vote": "batch-wise prompt vote",
    "key_init_on_future_inputs": "key init on future inputs",
}
CONVENTION_METRIC = {
    "sample-weighted": "final_accuracy",
    "task-averaged": "final_accuracy_task_averaged",
}


class LeaderboardError(CilbenchError):
    """A result that cannot join a board, or a board that is out of date."""


def run_metrics(result: RunResult) -> dict[str, float | None]:
    """Every leaderboard metric, recomputed from the stored accuracy matrix."""
    acc, sizes = result.matrix(), np.array(result.test_sizes)
    summary = metrics.summarize(acc, sizes)
    values: dict[str, Any] = {k: summary[k] for k in METRICS if k in summary}
    values["average_step_drop"] = metrics.average_step_drop(acc)
    return values


def protocol(result: RunResult) -> dict[str, Any]:
    """What must be equal for two results to share a board: stream, version, options, tasks."""
    options = result.config.get("stream_options", {})
    return {
        "stream": result.stream["name"],
        "version": result.stream["version"],
        "options": {k: v for k, v in sorted(options.items()) if k not in NOT_PROTOCOL},
        "experience_classes": result.stream["experience_classes"],
        "test_sizes": result.test_sizes,
    }


def protocol_label(result: RunResult) -> str:
    """Short human form: 'B0-Inc2, pycil-1993, 5 tasks' (class-incremental) or the scenario, and
    the train/test split where the stream has more than one ('..., split=packaged')."""
    sizes = [len(c) for c in result.stream["experience_classes"]]
    options = result.config.get("stream_options", {})
    order = options.get("class_order")
    split = f"split={options['split']}" if "split" in options else ""
    if result.stream.get("scenario") != "class-incremental":
        return f"{result.stream.get('scenario')}, {len(sizes)} experiences"
    later = sizes[1:] or sizes
    base = 0 if sizes[0] == later[0] else sizes[0]
    parts = [f"B{base}-Inc{later[0]}", order, f"{len(sizes)} tasks", split]
    return ", ".join(str(p) for p in parts if p)


def validate(result: RunResult, source: str) -> None:
    """Refuse results a board cannot hold: malformed or inconsistent (`result_schema`), unknown
    strategy, old stream version, partial matrix."""
    from cilbench.api import STRATEGIES, STREAMS

    check_board_result(result, source)
    STRATEGIES.get(result.config["strategy"])
    stream = result.stream["name"]
    current = STREAMS.get(stream).version
    if result.stream["version"] != current:
        raise LeaderboardError(
            f"{source}: stream {stream!r} version {result.stream['version']!r}; this cilbench "
            f"builds version {current!r}. Re-run it; results of other versions are not comparable."
        )
    matrix = result.matrix()
    expected = len(result.stream["experience_classes"])
    if not result.complete or len(matrix) != expected or np.isnan(matrix[-1]).any():
        raise LeaderboardError(
            f"{source}: incomplete run ({len(matrix)} of {expected} experiences evaluated, "
            f"complete={result.complete}). Finish it with `cilbench run --resume`."
        )


def board_files(root: Path, stream: str) -> list[Path]:
    """The result files stored on one stream's board."""
    return sorted((root / stream).glob("*.json"))


def add(paths: Iterable[Path], root: Path, replace: bool = False) -> list[Path]:
    """Validate results and copy them to `root/<stream>/<run name>.json`; the stored paths.

    Every result is checked before any is stored. A board holds one result per (configuration,
    seed); a stored file is replaced by different content only with `replace`.
    """
    staged: dict[Path, RunResult] = {}
    for path in paths:
        result = load_result(path)
        validate(result, str(path))
        board = root / result.stream["name"]
        _check_same_protocol(result, board, str(path), staged)
        target = board / f"{result.run_id.rsplit('/', 1)[-1]}.json"
        _check_replacement(result, target, replace, str(path))
        _check_one_per_seed(result, target, staged, str(path))
        staged[target] = result
    for target, result in staged.items():
        write_atomic(target, result.to_json())
    return list(staged)


def _check_replacement(result: RunResult, target: Path, replace: bool, source: str) -> None:
    if replace or not target.exists() or target.read_text() == result.to_json():
        return
    raise LeaderboardError(
        f"{source}: {target} already holds a different result of the same run id. "
        "Pass --replace to replace it."
    )


def _seed_key(result: RunResult) -> tuple[str, Any]:
    return config_key(result), result.config["seed"]


def _check_one_per_seed(
    result: RunResult, target: Path, staged: dict[Path, RunResult], source: str
) -> None:
    """Refuse a second result of one configuration and seed under another run id."""
    stored = {p: load_result(p) for p in board_files(target.parent.parent, target.parent.name)}
    for other, held in {**stored, **staged}.items():
        if other != target and _seed_key(held) == _seed_key(result):
            raise LeaderboardError(
                f"{source}: {other} already holds this configuration with seed "
                f"{result.config['seed']} (run {held.run_id}); a board counts each seed once."
            )


def _check_same_protocol(
    result: RunResult, board: Path, source: str, staged: dict[Path, RunResult]
) -> None:
    held = [load_result(f) for f in board_files(board.parent, board.name)[:1]]
    held += [r for target, r in staged.items() if target.parent == board]
    if not held:
        return
    expected = protocol(held[0])
    got = protocol(result)
    if got != expected:
        differing = sorted(k for k in expected if expected[k] != got.get(k))
        raise LeaderboardError(
            f"{source}: protocol differs from the board {board} in {', '.join(differing)} "
            f"(board: {protocol_label(held[0])}; this result: "
            f"{protocol_label(result)}). A board holds one protocol."
        )


@dataclass
class Row:
    """One configuration on one board, aggregated over its seeds."""

    strategy: str
    backbone: str
    protocol: str
    seeds: list[int]
    stats: dict[str, tuple[float | None, float | None]]
    """metric -> (mean, sample std over seeds; None with one seed or when undefined)."""
    wall_seconds: float
    peak_memory_mib: float
    trainable_parameters: int
    flags: dict[str, bool | str | None]
    """The flags the strategy reports (None: undeclared); a missing one does not apply to it."""
    curve: list[float]
    """Mean sample-weighted accuracy after each experience (for the plot)."""
    references: list[Reference]
    variant: str = ""
    convention: str = "sample-weighted"
    """The accuracy convention of the row's main-table cells: its published number's, else the
    strategy's `accuracy_convention`."""
    train_eval_seconds: float | None = None
    """Mean training + evaluation time per run without feature extraction or cache-lock waits;
    None when a seed's result does not record its lock wait (results before cache_wait_seconds)."""
    cache_wait_seconds: float | None = None
    """Mean time per run spent waiting on another run's cache lock (None: not recorded)."""
    extract_seconds: float = 0.0
    """Mean feature-extraction time of the seeds that extracted (they paid for the cache)."""
    extracted_seeds: list[int] = field(default_factory=list)
    untrained: dict[int, list[str]] = field(default_factory=dict)
    """Seeds of a trained strategy whose result says training changed nothing, and why."""
    stale: dict[int, list[str]] = field(default_factory=dict)
    """Seeds whose result predates a code change that alters it (`boards.stale_rows`)."""
    precision: str = LATER_KEYS["precision"]
    """The compute precision of the row's runs (results older than the setting ran at fp32)."""

    @property
    def name(self) -> str:
        return f"{self.strategy} [{self.variant}]" if self.variant else self.strategy

    def gap(self, reference: Reference) -> float | None:
        """Our mean minus the published number, in the reference's accuracy convention."""
        mean, _ = self.stats.get(CONVENTION_METRIC.get(reference.convention, ""), (None, None))
        return None if mean is None else mean - reference.final_accuracy


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); None where a value is missing or n = 1."""
    if not values or any(v is None for v in values):
        return None, None
    array = np.array(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else None


def aggregate(results: Sequence[RunResult], references: Sequence[Reference] = ()) -> list[Row]:
    """Rows of one board: results grouped by configuration (all but the seed), best first."""
    groups: dict[str, list[RunResult]] = {}
    for result in results:
        groups.setdefault(config_key(result), []).append(result)
    rows = [_row(group, references, results) for group in groups.values()]
    _name_variants(rows, list(groups.values()))
    return sorted(rows, key=lambda r: (-(r.stats["final_accuracy"][0] or 0.0), r.name))


def config_key(result: RunResult) -> str:
    """What a row groups by: the config but the run-only keys, keys added later at their old
    value when absent (an fp32 result without `precision` groups with one that names it)."""
    config = {**LATER_KEYS, **result.config}
    return json.dumps({k: v for k, v in config.items() if k not in RUN_ONLY}, sort_keys=True)


def _row(
    group: Sequence[RunResult], references: Sequence[Reference], board: Sequence[RunResult]
) -> Row:
    from cilbench.api import STRATEGIES
    from cilbench.boards.stale_rows import written_before
    from cilbench.boards.training_checks import row_warning

    group = sorted(group, key=lambda r: r.config["seed"])
    first = group[0]
    per_run = [run_metrics(r) for r in group]
    matching = [ref for ref in references if ref.matches(first)]
    extracted = [r for r in group if r.cost.get("extract_seconds", 0.0) > 0]
    curves = [
        metrics.accuracy_after_each_step(r.matrix(), np.array(r.test_sizes), "sample-weighted")
        for r in group
    ]
    return Row(
        strategy=first.config["strategy"],
        backbone=backbone_label(first.config),
        protocol=protocol_label(first),
        seeds=[r.config["seed"] for r in group],
        stats={k: mean_std([m[k] for m in per_run]) for k in METRICS},
        wall_seconds=float(np.mean([r.cost.get("total_seconds", 0.0) for r in group])),
        peak_memory_mib=float(np.mean([r.cost.get("peak_memory_mib", 0.0) for r in group])),
        trainable_parameters=max(int(r.cost.get("trainable_parameters", 0)) for r in group),
        flags={k: first.flags[k] for k in (*FLAGS, "exemplar_budget") if k in first.flags},
        curve=[float(v) for v in np.mean(curves, axis=0)],
        references=matching,
        precision=str(first.config.get("precision", LATER_KEYS["precision"])),
        convention=(
            matching[0].convention
            if matching
            else getattr(STRATEGIES.get(first.config["strategy"]), "accuracy_convention", "")
            or "sample-weighted"
        ),
        train_eval_seconds=_train_eval_seconds(group),
        cache_wait_seconds=(
            None
            if any("cache_wait_seconds" not in r.cost for r in group)
            else float(np.mean([r.cost["cache_wait_seconds"] for r in group]))
        ),
        extract_seconds=float(np.mean([r.cost["extract_seconds"] for r in extracted] or [0.0])),
        extracted_seeds=[r.config["seed"] for r in extracted],
        untrained=row_warning(group, board),
        stale={r.config["seed"]: why for r in group if (why := written_before(r))},
    )


def _train_eval_seconds(group: Sequence[RunResult]) -> float | None:
    """Mean of each run's own training + evaluation time (None: a run did not record it)."""
    if any("cache_wait_seconds" not in r.cost for r in group):
        return None
    return float(
        np.mean(
            [
                r.cost.get("total_seconds", 0.0)
                - r.cost.get("extract_seconds", 0.0)
                - r.cost["cache_wait_seconds"]
                for r in group
            ]
        )
    )


def backbone_label(config: dict[str, Any]) -> str:
    """The backbone tag with the input size of the run: the same weights at 56 and 112 px are
    different rows, and a reader must see which one a number comes from."""
    size = config.get("backbone_settings", {}).get("image_size")
    return f"{config['backbone']} @ {size} px" if size else str(config["backbone"])


def _name_variants(rows: list[Row], groups: list[list[RunResult]]) -> None:
    """Rows sharing strategy and backbone get a name readers can tell apart: the strategy's
    variant (ADAM's `peft`) when that differs between them, else a short config hash."""
    from cilbench.api import STRATEGIES

    firsts = [group[0] for group in groups]
    for row, first in zip(rows, firsts):
        twins = [f for r, f in zip(rows, firsts) if _same_row_name(r, row)]
        if len(twins) == 1:
            continue
        key = STRATEGIES.get(row.strategy).variant_key
        values = {str(t.config["strategy_config"].get(key)) for t in twins} if key else set()
        if len(values) == len(twins):
            row.variant = str(first.config["strategy_config"].get(key))
        else:
            row.variant = hashlib.sha256(config_key(first).encode()).hexdigest()[:6]


def _same_row_name(a: Row, b: Row) -> bool:
    return (a.strategy, a.backbone) == (b.strategy, b.backbone)


def load_board(root: Path, stream: str) -> list[RunResult]:
    """Every stored result of a board, validated again (a board never holds a bad file)."""
    results = []
    for path in board_files(root, stream):
        result = load_result(path)
        validate(result, str(path))
        results.append(result)
    return results

"""Whether a replay agrees with its stored result (`cilbench run --from`).

Trained runs are not bit-identical across CPUs (instruction set, BLAS, threads change reduction
order), so a replay of a trained row agrees when its final accuracy lies within the spread of the
row's stored seeds; frozen rows must replay exactly. What differs between the two machines is
said either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cilbench.boards.leaderboard import (
    CONVENTION_METRIC,
    METRICS,
    config_key,
    mean_std,
    run_metrics,
)
from cilbench.boards.training_checks import trains
from cilbench.core.environment import differences
from cilbench.core.results import RunResult

SPREAD = 2.0
"""A trained row's replay agrees when its final accuracy is within mean ± SPREAD sample std of the
row's stored seeds."""


def within_seed_spread(
    replayed: RunResult, seeds: Sequence[RunResult], differs: str
) -> tuple[bool, str]:
    """Whether the replay's final accuracy, in the strategy's convention, lies within mean ±
    SPREAD sample std of the row's stored seeds; the sentence that says so."""
    from cilbench.api import STRATEGIES

    strategy = STRATEGIES.get(replayed.config["strategy"])
    convention = getattr(strategy, "accuracy_convention", "sample-weighted")
    key = CONVENTION_METRIC.get(convention, "final_accuracy")
    mean, std = mean_std([run_metrics(r)[key] for r in seeds])
    value = run_metrics(replayed)[key]
    if mean is None or std is None or value is None:
        return False, f"{differs}; the stored seeds have no spread to compare with"
    low, high = mean - SPREAD * std, mean + SPREAD * std
    inside = low <= value <= high
    verdict = "within" if inside else "outside"
    return inside, (
        f"{differs}; trained row: final accuracy ({convention}) {value:.2f} is {verdict} the seed "
        f"spread of the stored seeds {', '.join(str(r.config['seed']) for r in seeds)} "
        f"({mean:.2f} ± {SPREAD:g} x {std:.2f} = [{low:.2f}, {high:.2f}])"
    )


def compare_runs(
    stored: RunResult, replayed: RunResult, board: Sequence[RunResult] = ()
) -> tuple[bool, str]:
    """Whether a replay agrees with the stored result, and sentences saying how and what differs
    on this machine (CPU, instruction set, BLAS, threads, versions, code).

    Frozen rows (no trainable parameters) must give the stored matrix exactly. A trained row whose
    stored file sits on a board (`board`: that board's results) agrees when the replay's final
    accuracy, in the row's convention, is within the seed spread of the row's stored seeds.
    """
    changed = differences(stored.environment, replayed.environment)
    where = (
        "environment: " + "; ".join(changed)
        if changed
        else "environment: same CPU, instruction set, BLAS, threads, versions and code"
    )
    same, message = _compare_matrices(stored, replayed, board)
    return same, f"{message}\n{where}"


def _compare_matrices(
    stored: RunResult, replayed: RunResult, board: Sequence[RunResult]
) -> tuple[bool, str]:
    if stored.run_id != replayed.run_id:
        return False, f"the replay resolved to run {replayed.run_id}, not {stored.run_id}"
    a, b = stored.matrix(), replayed.matrix()
    if a.shape != b.shape:
        return False, f"accuracy matrix shape {b.shape} differs from the stored {a.shape}"
    difference = float(np.nanmax(np.abs(a - b))) if a.size else 0.0
    ours, theirs = run_metrics(replayed), run_metrics(stored)
    if difference == 0.0:
        return True, "metrics match the stored result exactly"
    changes = ", ".join(
        f"{k} {theirs[k]:.2f} -> {ours[k]:.2f}"
        for k in METRICS
        if theirs[k] is not None and ours[k] is not None and theirs[k] != ours[k]
    )
    differs = f"accuracy differs by up to {difference:.2f} points ({changes})"
    seeds = [r for r in board if config_key(r) == config_key(stored)]
    if not trains(stored):
        return False, f"{differs}; a frozen row must replay exactly"
    if len(seeds) < 2:
        return False, f"{differs}; no seed spread to compare with (the file is not on a board)"
    return within_seed_spread(replayed, seeds, differs)

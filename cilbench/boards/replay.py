"""A trained row's replay against the row's seed spread (`cilbench run --from`).

Trained runs are not bit-identical across CPUs (instruction set, BLAS, threads change reduction
order), so a replay of a trained row agrees when its final accuracy lies within the spread of the
row's stored seeds; frozen rows are compared exactly by `leaderboard.compare_runs`.
"""

from __future__ import annotations

from collections.abc import Sequence

from cilbench.boards.leaderboard import CONVENTION_METRIC, mean_std, run_metrics
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

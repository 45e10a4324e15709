"""Rows written before a code change that changes their numbers: marked until they are rerun.

A change that alters what a strategy computes without changing its run record (same settings,
other floats: e.g. how augmented pixels are interpolated) leaves the rows written before it on the
board under the same run id. `RESULT_CHANGES` lists each such change with the run ids it made
stale (a row replaced by a run with other settings, hence another run id, leaves the list). A
listed result stays marked until it is rerun: a rerun records the commit it ran at
(`environment.git_commit`, recorded since after every change listed here), an older file does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from cilbench.core.results import RunResult


@dataclass(frozen=True)
class ResultChange:
    """A code change after which some stored rows' numbers are no longer what the code gives."""

    commit: str
    what: str
    run_ids: frozenset[str]


RESULT_CHANGES = (
    ResultChange(
        commit="087d125",
        what="training augmentation builds its crop grid from box coordinates (other pixels)",
        run_ids=frozenset(
            {
                "split-fashion-mnist-mini/avalanche-lwf-efficientnet-lite0-pypi-seed0-2cce8d34e8",
                "split-fashion-mnist-mini/avalanche-lwf-efficientnet-lite0-pypi-seed1-5f5609ad12",
                "split-fashion-mnist-mini/avalanche-lwf-efficientnet-lite0-pypi-seed2-ed49155f75",
                "split-fashion-mnist-mini/avalanche-replay-efficientnet-lite0-pypi-seed0-6ab2acb457",
                "split-fashion-mnist-mini/avalanche-replay-efficientnet-lite0-pypi-seed1-e410c7d9bb",
                "split-fashion-mnist-mini/avalanche-replay-efficientnet-lite0-pypi-seed2-6a3f9374c2",
                "split-fashion-mnist-mini/finetune-efficientnet-lite0-pypi-seed0-1cc295ea15",
                "split-fashion-mnist-mini/finetune-efficientnet-lite0-pypi-seed1-9826bcaf47",
                "split-fashion-mnist-mini/finetune-efficientnet-lite0-pypi-seed2-d6fb312b70",
                "split-fashion-mnist-mini/joint-efficientnet-lite0-pypi-seed0-277638bcd0",
                "split-fashion-mnist-mini/joint-efficientnet-lite0-pypi-seed1-96b825db1b",
                "split-fashion-mnist-mini/joint-efficientnet-lite0-pypi-seed2-231485e31a",
            }
        ),
    ),
)


def written_before(result: RunResult) -> list[str]:
    """The changes `result` predates (empty: current, or rerun since)."""
    if result.environment.get("git_commit"):
        return []
    return [
        f"written before {c.commit} ({c.what}): rerun"
        for c in RESULT_CHANGES
        if result.run_id in c.run_ids
    ]

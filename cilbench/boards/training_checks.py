"""Rows that did not train: a trained strategy whose result says training changed nothing.

Two signs, both read from result files only:
- the first-session training loss never fell below chance: every recorded epoch loss of the first
  experience (see `first_session_losses`) above ln(classes of the first task), the cross-entropy
  of a uniform guess, less `CHANCE_TOLERANCE` (a loss that starts and stays above it, as a
  randomly initialised head's can, has not left chance either). A strategy whose loss covers more
  logits than the first task's classes (the Avalanche adapter's head spans the whole stream)
  reports how many as `loss_classes`, and chance is ln of that;
- the accuracy matrix equals, cell for cell, a frozen baseline's (`FROZEN_BASELINES`) of the same
  seed, backbone and backbone settings on the same board: whatever trained did not move a single
  prediction that counts.

A strategy "trains" when its result records trainable parameters (`cost.trainable_parameters`).
`leaderboard add` prints the reasons; the board pages flag the row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cilbench.core.results import RunResult

CHANCE_TOLERANCE = 0.01
"""Relative: a loss within 1 % of ln(classes) is at chance."""
FROZEN_BASELINES = ("nmc", "simplecil")


def trains(result: RunResult) -> bool:
    """Whether the run had anything to train."""
    return int(result.cost.get("trainable_parameters", 0) or 0) > 0


def first_session_losses(result: RunResult) -> list[float]:
    """Every per-epoch loss the strategy reported for its first experience.

    A `losses` or `*_losses` entry of `strategy_report` is the first session's list (ADAM's
    `first_session_losses`), one list per experience (MOS, LAE, DUCT), or lists keyed by the
    experience index (`EpochLosses`: SLCA, the prompt methods, iCaRL), or by experience and stage
    (`"0.first"`: FOSTER).
    """
    losses: list[float] = []
    for key, value in sorted(result.strategy_report.items()):
        if key == "losses" or key.endswith("_losses"):
            losses += [float(v) for v in _first_experience(value) if isinstance(v, (int, float))]
    return losses


def _first_experience(value: object) -> list:
    if isinstance(value, dict):  # "0", or "0.<stage>" for each stage (FOSTER's "0.first")
        value = [v for k, part in sorted(value.items()) if k.split(".")[0] == "0" for v in part]
    elif isinstance(value, list) and value and isinstance(value[0], list):
        value = value[0]
    return value if isinstance(value, list) else []


def loss_at_chance(result: RunResult) -> str | None:
    """The reason when no recorded first-session loss fell below chance, else None."""
    losses = first_session_losses(result)
    classes = int(result.strategy_report.get("loss_classes", 0)) or len(
        result.stream["experience_classes"][0]
    )
    if not losses or classes < 2:
        return None
    chance = math.log(classes)
    if all(loss >= (1 - CHANCE_TOLERANCE) * chance for loss in losses):
        return f"training loss never fell below chance (ln {classes} = {chance:.3f})"
    return None


def _same_setting(a: RunResult, b: RunResult) -> bool:
    keys = ("seed", "backbone", "backbone_settings", "stream_options")
    return all(a.config.get(k) == b.config.get(k) for k in keys)


def equals_frozen_baseline(result: RunResult, board: Sequence[RunResult]) -> str | None:
    """The reason when the matrix equals a frozen baseline's of the same seed and backbone."""
    for other in board:
        name = other.config["strategy"]
        if (
            name in FROZEN_BASELINES
            and other is not result
            and _same_setting(result, other)
            and other.accuracy_matrix == result.accuracy_matrix
        ):
            return f"accuracy matrix equals {name}'s (seed {other.config['seed']})"
    return None


def did_not_train(result: RunResult, board: Sequence[RunResult]) -> list[str]:
    """Why a trained run looks untrained (empty: it trained, or has nothing to train)."""
    if not trains(result) or result.config["strategy"] in FROZEN_BASELINES:
        return []
    reasons = [loss_at_chance(result), equals_frozen_baseline(result, board)]
    return [r for r in reasons if r]


def row_warning(group: Sequence[RunResult], board: Sequence[RunResult]) -> dict[int, list[str]]:
    """Per seed of a row, the reasons it did not train (only seeds with a reason)."""
    found = {r.config["seed"]: did_not_train(r, board) for r in group}
    return {seed: reasons for seed, reasons in found.items() if reasons}

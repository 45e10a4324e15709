"""Pure functions of the accuracy matrix.

`acc[t, j]` is the accuracy (percent) on test set j after training experience t, NaN where test set
j was not evaluated after t (its classes were not seen yet). Two conventions for "accuracy on
everything seen" coexist in the literature and both are computed:

- sample-weighted (PyCIL, PILOT, APER, SLCA): correct / total over all evaluated test sets;
- task-averaged (L2P, DualPrompt, CODA-Prompt, RanPAC): the mean of the row.

Forgetting follows Chaudhry et al. (2018): for each test set evaluated before the last step, the
best earlier accuracy minus the last one, averaged. Backward transfer follows Lopez-Paz & Ranzato
(2017): last accuracy minus the accuracy right after the test set was first evaluated.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Convention = Literal["sample-weighted", "task-averaged"]


def accuracy_after_each_step(
    acc: np.ndarray, test_sizes: np.ndarray, convention: Convention
) -> np.ndarray:
    """A_t for every step t: accuracy on the union of the test sets evaluated after t."""
    acc = np.asarray(acc, dtype=float)
    seen = ~np.isnan(acc)
    if convention == "task-averaged":
        return np.array([acc[t][seen[t]].mean() for t in range(len(acc))])
    if convention == "sample-weighted":
        sizes = np.asarray(test_sizes, dtype=float)
        correct = np.where(seen, acc, 0.0) * sizes
        return correct.sum(axis=1) / np.where(seen, sizes, 0.0).sum(axis=1)
    raise ValueError(f"convention must be 'sample-weighted' or 'task-averaged'; got {convention!r}")


def final_accuracy(acc: np.ndarray, test_sizes: np.ndarray, convention: Convention) -> float:
    """A_T, accuracy on everything seen after the last experience."""
    return float(accuracy_after_each_step(acc, test_sizes, convention)[-1])


def average_incremental_accuracy(
    acc: np.ndarray, test_sizes: np.ndarray, convention: Convention
) -> float:
    """Mean of A_t over all steps, A_1 included (Rebuffi et al.)."""
    return float(accuracy_after_each_step(acc, test_sizes, convention).mean())


def _columns_evaluated_before_last(acc: np.ndarray) -> list[int]:
    earlier = ~np.isnan(acc[:-1])
    return [j for j in range(acc.shape[1]) if earlier[:, j].any() and not np.isnan(acc[-1, j])]


def forgetting(acc: np.ndarray) -> float | None:
    """Chaudhry forgetting: mean over test sets of (best earlier accuracy - last accuracy).

    None when there is nothing to forget yet (a single step). Can be negative.
    """
    acc = np.asarray(acc, dtype=float)
    columns = _columns_evaluated_before_last(acc)
    if not columns:
        return None
    drops = [np.nanmax(acc[:-1, j]) - acc[-1, j] for j in columns]
    return float(np.mean(drops))


def backward_transfer(acc: np.ndarray) -> float | None:
    """BWT: mean over test sets of (last accuracy - accuracy when first evaluated)."""
    acc = np.asarray(acc, dtype=float)
    columns = _columns_evaluated_before_last(acc)
    if not columns:
        return None
    first = [acc[np.flatnonzero(~np.isnan(acc[:, j]))[0], j] for j in columns]
    return float(np.mean([acc[-1, j] - f for j, f in zip(columns, first)]))


def average_step_drop(acc: np.ndarray) -> float | None:
    """CODA-Prompt's forgetting "F_N": the mean over steps t >= 1 of the mean drop, over the test
    sets evaluated at t-1, from a[t-1, i] to a[t, i]. Not Chaudhry's (no max); None for one step.
    """
    acc = np.asarray(acc, dtype=float)
    drops = []
    for t in range(1, len(acc)):
        columns = ~np.isnan(acc[t - 1]) & ~np.isnan(acc[t])
        if columns.any():
            drops.append(float(np.mean(acc[t - 1, columns] - acc[t, columns])))
    return float(np.mean(drops)) if drops else None


def per_task_accuracy(acc: np.ndarray) -> list[float | None]:
    """The last row: accuracy on each test set after the last experience."""
    return [None if np.isnan(a) else float(a) for a in np.asarray(acc, dtype=float)[-1]]


def summarize(acc: np.ndarray, test_sizes: np.ndarray) -> dict[str, float | list | None]:
    """Every standard metric of a (possibly partial) accuracy matrix."""
    acc = np.asarray(acc, dtype=float)
    sizes = np.asarray(test_sizes)
    curve = accuracy_after_each_step(acc, sizes, "sample-weighted")
    task_curve = accuracy_after_each_step(acc, sizes, "task-averaged")
    return {
        "accuracy_curve": [float(a) for a in curve],
        "accuracy_curve_task_averaged": [float(a) for a in task_curve],
        "final_accuracy": final_accuracy(acc, sizes, "sample-weighted"),
        "final_accuracy_task_averaged": final_accuracy(acc, sizes, "task-averaged"),
        "average_accuracy": average_incremental_accuracy(acc, sizes, "sample-weighted"),
        "average_accuracy_task_averaged": average_incremental_accuracy(acc, sizes, "task-averaged"),
        "forgetting": forgetting(acc),
        "backward_transfer": backward_transfer(acc),
        "per_task_accuracy": per_task_accuracy(acc),
    }

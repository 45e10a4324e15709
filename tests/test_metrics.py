"""Metrics on hand-computed matrices, and forgetting/BWT against avalanche's implementation."""

from __future__ import annotations

import numpy as np
import pytest

from cilbench.core import metrics

NAN = np.nan
# After task 0: 90 on test set 0. After 1: 80, 70. After 2: 60, 65, 50.
ACC = np.array([[90.0, NAN, NAN], [80.0, 70.0, NAN], [60.0, 65.0, 50.0]])
SIZES = np.array([100, 300, 100])


def test_task_averaged_accuracy_by_hand():
    steps = metrics.accuracy_after_each_step(ACC, SIZES, "task-averaged")
    np.testing.assert_allclose(steps, [90.0, 75.0, (60 + 65 + 50) / 3])
    assert metrics.final_accuracy(ACC, SIZES, "task-averaged") == pytest.approx(175 / 3)
    assert metrics.average_incremental_accuracy(ACC, SIZES, "task-averaged") == pytest.approx(
        (90 + 75 + 175 / 3) / 3
    )


def test_sample_weighted_accuracy_by_hand():
    # after 1: (0.8*100 + 0.7*300) / 400 = 72.5; after 2: (60 + 195 + 50) / 500 = 61
    steps = metrics.accuracy_after_each_step(ACC, SIZES, "sample-weighted")
    np.testing.assert_allclose(steps, [90.0, 72.5, 61.0])
    assert metrics.average_incremental_accuracy(ACC, SIZES, "sample-weighted") == pytest.approx(
        (90 + 72.5 + 61) / 3
    )


def test_chaudhry_forgetting_uses_the_best_earlier_accuracy():
    # set 0: max(90, 80) - 60 = 30; set 1: 70 - 65 = 5; set 2 was never evaluated before.
    assert metrics.forgetting(ACC) == pytest.approx(17.5)
    recovered = np.array([[50.0, NAN], [70.0, 80.0], [60.0, 80.0]])
    assert metrics.forgetting(recovered) == pytest.approx(((70 - 60) + 0) / 2)


def test_backward_transfer_by_hand():
    # set 0: 60 - 90; set 1: 65 - 70
    assert metrics.backward_transfer(ACC) == pytest.approx((-30 - 5) / 2)


def test_single_step_has_no_forgetting():
    one = np.array([[88.0]])
    assert metrics.forgetting(one) is None and metrics.backward_transfer(one) is None


def test_domain_incremental_single_column():
    acc = np.array([[50.0], [70.0], [65.0]])
    assert metrics.forgetting(acc) == pytest.approx(5.0)
    assert metrics.backward_transfer(acc) == pytest.approx(15.0)
    assert metrics.final_accuracy(acc, np.array([10]), "sample-weighted") == 65.0


def test_conventions_differ_on_unequal_test_sets():
    summary = metrics.summarize(ACC, SIZES)
    assert summary["final_accuracy"] == pytest.approx(61.0)
    assert summary["final_accuracy_task_averaged"] == pytest.approx(175 / 3)
    assert summary["per_task_accuracy"] == [60.0, 65.0, 50.0]


def _random_lower_triangular(rng: np.random.Generator, size: int) -> np.ndarray:
    acc = rng.uniform(0, 100, size=(size, size))
    acc[np.triu_indices(size, k=1)] = np.nan
    return acc


@pytest.mark.parametrize("seed", range(5))
def test_bwt_and_forgetting_against_avalanche(seed: int):
    from avalanche.evaluation.functional import forgetting as avalanche_forgetting

    rng = np.random.default_rng(seed)
    acc = _random_lower_triangular(rng, 6)
    # avalanche: F[t, k] = acc[k, k] - acc[t, k] (initial minus current), NOT max-based.
    initial_minus_last = avalanche_forgetting(np.nan_to_num(acc))[-1, :-1].mean()
    assert metrics.backward_transfer(acc) == pytest.approx(-initial_minus_last)
    # Chaudhry's max-based forgetting is never below initial-minus-last ...
    assert metrics.forgetting(acc) >= initial_minus_last - 1e-9
    # ... and equals it when every column only decreases after its first evaluation.
    decreasing = acc.copy()
    for k in range(6):
        decreasing[k:, k] = np.sort(acc[k:, k])[::-1]
    expected = avalanche_forgetting(np.nan_to_num(decreasing))[-1, :-1].mean()
    assert metrics.forgetting(decreasing) == pytest.approx(expected)

"""The shared exemplar memory: herding by hand, the budget after every task, resume, reporting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cilbench.core.errors import ConfigError
from cilbench.data.sources import ArraySource
from cilbench.learn.exemplars import (
    ExemplarMemory,
    MemoryConfig,
    describe,
    herding_order,
    per_class_quota,
)


def test_herding_order_by_hand() -> None:
    """a = (3, 0), b = (0, 2), c = (3, 4) normalise to (1, 0), (0, 1), (0.6, 0.8): mean
    (0.533, 0.6).

    Step 1, squared distance of the mean to each: a 0.578, b 0.444, c 0.044 -> c.
    Step 2, to (c + x) / 2: a -> (0.8, 0.4): 0.111; b -> (0.3, 0.9): 0.144 -> a. Step 3: b.
    (Unnormalised, the mean (2, 2) is nearest b: the order would start with b.)
    """
    features = torch.tensor([[3.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    assert herding_order(features, 3).tolist() == [2, 0, 1]
    assert herding_order(features, 1).tolist() == [2]
    assert herding_order(features, 10).tolist() == [2, 0, 1]  # never an image twice


def test_quota_follows_pilots_two_budgets() -> None:
    assert per_class_quota(MemoryConfig(memory_size=2000), 10) == 200
    assert per_class_quota(MemoryConfig(memory_size=2000), 30) == 66
    assert per_class_quota(MemoryConfig(memory_size=2000, memory_per_class=20), 30) == 20
    assert describe(MemoryConfig()) == "2000 total, herding"
    assert describe(MemoryConfig(memory_per_class=20, selection="random")) == (
        "20 per class, random"
    )


def _add_task(memory: ExemplarMemory, labels: list[int], seen: int, seed: int = 0) -> None:
    """Each class has 12 candidate images at positions 100 * label + 0..11."""
    memory.rebalance(seen)
    generator = torch.Generator().manual_seed(seed)
    for label in labels:
        positions = np.arange(12) + 100 * label
        features = torch.randn(12, 4, generator=generator)
        memory.add_class(label, positions, features, generator, seen)


@pytest.mark.parametrize("selection", ["herding", "random"])
def test_a_total_budget_is_held_after_every_task(selection: str) -> None:
    memory = ExemplarMemory(MemoryConfig(memory_size=10, selection=selection))
    held = []
    for task in range(3):
        labels = [2 * task, 2 * task + 1]
        before = {c: p.copy() for c, p in memory.positions.items()}
        _add_task(memory, labels, seen=2 * task + 2)
        held.append(sorted(len(p) for p in memory.positions.values()))
        for label, positions in before.items():  # shrinking keeps each class's first images
            kept = memory.positions[label]
            assert kept.tolist() == positions[: len(kept)].tolist()
        for label in labels:
            assert len(set(memory.positions[label].tolist())) == len(memory.positions[label])
            assert all(p // 100 == label for p in memory.positions[label])
    assert held == [[5, 5], [2, 2, 2, 2], [1] * 6]
    assert len(memory) <= 10


def test_a_per_class_budget_does_not_shrink() -> None:
    memory = ExemplarMemory(MemoryConfig(memory_per_class=3))
    for task in range(3):
        _add_task(memory, [2 * task, 2 * task + 1], seen=2 * task + 2)
        assert all(len(p) == 3 for p in memory.positions.values())
    assert memory.bytes_held(3 * 32 * 32) == 18 * 3 * 32 * 32


def test_herding_picks_by_the_features_given() -> None:
    memory = ExemplarMemory(MemoryConfig(memory_per_class=1))
    features = torch.tensor([[3.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    memory.add_class(7, np.array([40, 41, 42]), features, torch.Generator(), seen_classes=1)
    assert memory.positions[7].tolist() == [42]
    with pytest.raises(ValueError, match="one feature row"):
        memory.add_class(8, np.array([1, 2]), None, torch.Generator(), seen_classes=2)


def test_resume_restores_the_same_images() -> None:
    memory = ExemplarMemory(MemoryConfig(memory_size=9, selection="random"))
    _add_task(memory, [0, 1, 2], seen=3, seed=5)
    restored = ExemplarMemory(MemoryConfig(memory_size=9, selection="random"))
    restored.load_state_dict({**memory.state_dict(), "head.weight": torch.zeros(1)})
    assert {c: p.tolist() for c, p in restored.positions.items()} == {
        c: p.tolist() for c, p in memory.positions.items()
    }
    source = ArraySource(np.zeros((400, 8, 8, 3), dtype=np.uint8), np.zeros(400), name="fake")
    a, b = memory.view(source), restored.view(source)
    assert a.indices.tolist() == b.indices.tolist() and a.labels.tolist() == b.labels.tolist()
    assert sorted(set(a.labels.tolist())) == [0, 1, 2] and len(a) == 9
    assert restored.report()["exemplar_budget"] == "9 total, random"


def test_an_empty_budget_is_refused() -> None:
    with pytest.raises(ConfigError, match="memory_size"):
        ExemplarMemory(MemoryConfig(memory_size=0))

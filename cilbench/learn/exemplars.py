"""Exemplar memory: the training images a rehearsal method keeps of past classes, one protocol.

The budget is part of the benchmark's protocol, not a private choice of each method, so every
rehearsal strategy takes it from the same `MemoryConfig` fields, with LAMDA-PILOT's meaning
(`utils/data_manager`/`models/base.py` at 5240714d):

- `memory_per_class` > 0: that many images of every seen class (PILOT's `fixed_memory` with
  `memory_per_class`, e.g. 20 on ImageNet-R);
- otherwise `memory_size` in total, split evenly: `memory_size // seen classes` per class (PILOT's
  `memory_size`, e.g. 2000 on CIFAR-100), so old classes give up images as new ones arrive.

Selection is `herding` (iCaRL, Rebuffi et al. 2017: greedily the image whose addition brings the
mean of the chosen L2-normalised features closest to the class mean, no image twice) or `random`
(a seeded permutation). A class keeps its images in selection order, a priority order: when the
quota shrinks, the first `quota` stay (as iCaRL's reduction does), so nothing is re-selected.

The memory holds positions into the stream's training image source, not pixels: a checkpoint stays
small and a resumed run holds exactly the same images. `bytes_held` counts what the images
themselves would take (the cost a deployed memory pays), and `describe` is what a result and a
leaderboard row print as the budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F

from cilbench.core.config import NonNegative, OneOf
from cilbench.core.errors import ConfigError
from cilbench.data.sources import DatasetView, ImageSource

Selection = Literal["herding", "random"]


@dataclass(frozen=True)
class MemoryConfig:
    """The exemplar budget and selection (fields shared by every rehearsal strategy's Config)."""

    memory_size: Annotated[int, NonNegative()] = 2000
    """Total images kept, split evenly over the seen classes (PILOT `memory_size`)."""
    memory_per_class: Annotated[int, NonNegative()] = 0
    """> 0: a fixed number per class instead of a shared total (PILOT `memory_per_class`)."""
    selection: Annotated[str, OneOf("herding", "random")] = "herding"
    """How a class's exemplars are chosen: iCaRL herding or a seeded random draw."""


def per_class_quota(config: MemoryConfig, seen_classes: int) -> int:
    """Images each seen class may keep."""
    if config.memory_per_class > 0:
        return config.memory_per_class
    return config.memory_size // max(seen_classes, 1)


def describe(config: MemoryConfig) -> str:
    """The budget as a result and a board row print it, e.g. '2000 total, herding'."""
    if config.memory_per_class > 0:
        return f"{config.memory_per_class} per class, {config.selection}"
    return f"{config.memory_size} total, {config.selection}"


def herding_order(features: torch.Tensor, count: int) -> torch.Tensor:
    """Row indices of `features` (N, D) in iCaRL herding order, the first `count` of them.

    Features are L2-normalised first; step k picks the unchosen row x minimising
    ||mean - (sum of the k-1 chosen + x) / k||, ties to the lowest index. Computed in float64.
    """
    vectors = F.normalize(features.double(), dim=1)
    target = vectors.mean(dim=0)
    chosen: list[int] = []
    running = torch.zeros_like(target)
    available = torch.ones(len(vectors), dtype=torch.bool)
    for k in range(1, min(count, len(vectors)) + 1):
        distance = ((target - (running + vectors) / k) ** 2).sum(dim=1)
        distance[~available] = float("inf")
        best = int(torch.argmin(distance))
        chosen.append(best)
        running += vectors[best]
        available[best] = False
    return torch.tensor(chosen, dtype=torch.long)


class ExemplarMemory:
    """Per class, the positions (into the training source) of the images kept, in priority order."""

    def __init__(self, config: MemoryConfig):
        if config.memory_per_class == 0 and config.memory_size == 0:
            raise ConfigError(
                "The exemplar memory is empty: set memory_size (a total) or memory_per_class "
                "(a number per class) above 0."
            )
        self.config = config
        self.positions: dict[int, np.ndarray] = {}

    def add_class(
        self,
        label: int,
        positions: np.ndarray,
        features: torch.Tensor | None,
        generator: torch.Generator,
        seen_classes: int,
    ) -> None:
        """Choose the exemplars of a new class among `positions` (features: one row each, needed
        for herding) under the quota for `seen_classes` classes."""
        quota = per_class_quota(self.config, seen_classes)
        if self.config.selection == "herding":
            if features is None or len(features) != len(positions):
                raise ValueError("herding needs one feature row per candidate image")
            order = herding_order(features, quota)
        else:
            order = torch.randperm(len(positions), generator=generator)[:quota]
        self.positions[label] = np.asarray(positions)[order.numpy()]

    def rebalance(self, seen_classes: int) -> None:
        """Shrink every class to the quota for `seen_classes` (keeps each class's first images)."""
        quota = per_class_quota(self.config, seen_classes)
        self.positions = {c: p[:quota] for c, p in self.positions.items()}

    def add_experience(
        self,
        train: DatasetView,
        features: torch.Tensor | None,
        generator: torch.Generator,
        seen_classes: int,
    ) -> None:
        """After an experience (PILOT's `build_rehearsal_memory`): shrink the old classes to the
        quota for `seen_classes`, then choose each of `train`'s classes' exemplars (`features`:
        one row per image of `train`, needed for herding; None for random selection)."""
        self.rebalance(seen_classes)
        for label in train.classes():
            rows = np.flatnonzero(train.labels == label)
            chosen = features[torch.as_tensor(rows)] if features is not None else None
            self.add_class(label, train.indices[rows], chosen, generator, seen_classes)

    def view(self, source: ImageSource) -> DatasetView:
        """The kept images as a dataset view of `source` (classes in label order)."""
        labels = sorted(self.positions)
        indices = [self.positions[c] for c in labels]
        counts = [len(p) for p in indices]
        return DatasetView(
            source,
            np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64),
            np.repeat(np.asarray(labels, dtype=np.int64), counts),
        )

    def __len__(self) -> int:
        return sum(len(p) for p in self.positions.values())

    def bytes_held(self, bytes_per_image: int) -> int:
        """What the kept images take as pixels (a cost figure)."""
        return len(self) * bytes_per_image

    def report(self) -> dict[str, object]:
        """The budget, selection and what is held, for the result file."""
        return {
            "exemplar_budget": describe(self.config),
            "exemplars_held": len(self),
            "exemplars_per_class": {str(c): len(p) for c, p in sorted(self.positions.items())},
        }

    def state_dict(self, prefix: str = "memory.") -> dict[str, torch.Tensor]:
        """One int64 tensor of positions per class (checkpointed with the strategy)."""
        return {
            f"{prefix}{label}": torch.as_tensor(p, dtype=torch.long)
            for label, p in self.positions.items()
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor], prefix: str = "memory.") -> None:
        """Restore what `state_dict` returned (other keys are ignored)."""
        self.positions = {
            int(key[len(prefix) :]): value.numpy().astype(np.int64)
            for key, value in state.items()
            if key.startswith(prefix)
        }


def exemplar_mean(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """A class's prototype for the nearest-mean classifier: the mean of its exemplars' features,
    each L2-normalised (norm + `eps`, as PILOT), and the mean normalised again."""
    vectors = features.double() / (features.double().norm(dim=1, keepdim=True) + eps)
    return F.normalize(vectors.mean(dim=0), dim=0)


def class_means(features: torch.Tensor, labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """(num_classes, D): `exemplar_mean` of each class 0..num_classes-1's rows of `features`."""
    labels_ = torch.as_tensor(labels)
    return torch.stack([exemplar_mean(features[labels_ == c]) for c in range(num_classes)])


def nme_scores(features: torch.Tensor, means: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scores (B, C) of the nearest-mean-of-exemplars rule: minus the squared Euclidean distance
    of each L2-normalised feature (norm + `eps`) to each class mean (C, D); argmax = nearest."""
    vectors = features.double() / (features.double().norm(dim=1, keepdim=True) + eps)
    return -torch.cdist(vectors, means.double()).pow(2).float()

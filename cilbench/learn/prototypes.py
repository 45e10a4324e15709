"""Class-mean prototypes: the shared core of NMC, SimpleCIL, ADAM/APER and RanPAC-style heads.

Means are kept as running sums and counts, so a class that appears again in a later experience
(domain-incremental streams such as CoRe50 NI) updates its prototype instead of replacing it, and a
class that does not appear keeps its prototype untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from cilbench.api import BaseStrategy
from cilbench.core.devices import float32_section
from cilbench.data.streams import Experience


class ClassMeans:
    """Running per-class sums and counts of feature vectors (float64 for exact means)."""

    def __init__(self) -> None:
        self.sums = torch.zeros(0, 0, dtype=torch.float64)
        self.counts = torch.zeros(0, dtype=torch.float64)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add features (N, D) with labels (N,) to the running sums."""
        num_classes = max(int(labels.max()) + 1, len(self.counts)) if len(labels) else 0
        self._grow(num_classes, features.shape[1])
        self.sums.index_add_(0, labels.cpu(), features.detach().cpu().double())
        self.counts.index_add_(0, labels.cpu(), torch.ones(len(labels), dtype=torch.float64))

    def means(self, num_classes: int) -> torch.Tensor:
        """Means of classes 0..num_classes-1 (float32); a class never seen raises."""
        if num_classes > len(self.counts) or bool((self.counts[:num_classes] == 0).any()):
            raise ValueError(f"no features seen yet for some of the first {num_classes} classes")
        return (self.sums[:num_classes] / self.counts[:num_classes, None]).float()

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {f"{prefix}sums": self.sums, f"{prefix}counts": self.counts}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], prefix: str = "") -> None:
        self.sums = state[f"{prefix}sums"].double().clone()
        self.counts = state[f"{prefix}counts"].double().clone()

    def _grow(self, num_classes: int, dim: int) -> None:
        if self.sums.numel() == 0:
            self.sums = torch.zeros(0, dim, dtype=torch.float64)
        extra = num_classes - len(self.counts)
        if extra > 0:
            self.sums = torch.cat([self.sums, torch.zeros(extra, dim, dtype=torch.float64)])
            self.counts = torch.cat([self.counts, torch.zeros(extra, dtype=torch.float64)])


def cosine_scores(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each feature (B, D) with each prototype (C, D) -> (B, C), float32
    whatever the run's precision (bf16 rounding would reorder near-tied classes)."""
    with float32_section(features.device):
        prototypes = prototypes.to(features.device, torch.float32)
        return F.normalize(features.float(), dim=1) @ F.normalize(prototypes, dim=1).T


class PrototypeStrategy(BaseStrategy):
    """A frozen-feature strategy that keeps one mean per class of `embed(features)`.

    Subclasses choose the embedding (identity, L2 normalisation, ...) and the scoring rule.
    """

    predicts_from_features = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.class_means = ClassMeans()
        self.num_seen = 0

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """What is averaged into prototypes; identity by default."""
        return features

    def prototypes(self) -> torch.Tensor:
        """(num_seen, D) class means of the embedded training features."""
        return self.class_means.means(self.num_seen)

    def train_experience(self, experience: Experience) -> None:
        features, labels = self.features_of(experience.train)
        self.class_means.update(self.embed(features), labels)
        self.num_seen = experience.num_seen_classes

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.class_means.state_dict(), "num_seen": torch.tensor(self.num_seen)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.class_means.load_state_dict(state)
        self.num_seen = int(state["num_seen"])


def class_means_of(
    features: torch.Tensor, labels: torch.Tensor, classes: list[int]
) -> torch.Tensor:
    """(len(classes), D) float32 mean feature of each class in `classes` (each must occur)."""
    means = ClassMeans()
    means.update(features, labels)
    rows = torch.as_tensor(classes, dtype=torch.long)
    if bool((means.counts[rows] == 0).any()):
        raise ValueError(f"some of the classes {classes} have no features")
    return (means.sums[rows] / means.counts[rows, None]).float()


def transfer_prototypes(
    old_here: torch.Tensor, anchors_here: torch.Tensor, anchors_there: torch.Tensor
) -> torch.Tensor:
    """Prototypes of old classes in a subspace where they have none, from semantic similarity.

    EASE (Zhou et al., CVPR 2024, Eq. 8-9): in a subspace both share (`here`), the cosine
    similarity of each old class's prototype (O, D) with each anchor class's prototype (A, D),
    softmax over the anchors (no temperature), weights the anchors' prototypes in the other
    subspace (`there`, (A, D')): returns (O, D'), each row a convex combination of those.
    """
    similarity = F.normalize(old_here, dim=1) @ F.normalize(anchors_here, dim=1).T
    return torch.softmax(similarity, dim=1) @ anchors_there

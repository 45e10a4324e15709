"""NMC: nearest mean classifier on frozen, L2-normalised features.

Janson et al., "A Simple Baseline that Questions the Use of Pretrained-Models in Continual
Learning" (2022). Each feature of the frozen backbone is L2-normalised; a class is represented by
the mean of its normalised training features, and an image goes to the class whose mean is nearest
in Euclidean distance. No hyper-parameters; nothing is trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cilbench.api import register_strategy
from cilbench.prototypes import PrototypeStrategy


@register_strategy("nmc")
class NMC(PrototypeStrategy):
    """Nearest class mean of L2-normalised frozen features (scores are negative distances)."""

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=1)

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        means = self.prototypes().to(features.device)
        return -torch.cdist(self.embed(features), means)

"""SimpleCIL: cosine similarity to class-mean prototypes of frozen features.

Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models: Generalizability and
Adaptivity are All You Need" (2023). The prototype of a class is the mean of its un-normalised
frozen training features (computed with test-time preprocessing, as the reference `replace_fc`
does); prediction is the cosine similarity to each prototype. Old prototypes never change. No
hyper-parameters (the reference hard-codes batch size 128 and ignores its training settings).
"""

from __future__ import annotations

import torch

from cilbench.api import register_strategy
from cilbench.prototypes import PrototypeStrategy, cosine_scores


@register_strategy("simplecil")
class SimpleCIL(PrototypeStrategy):
    """Cosine classifier whose weights are the class-mean frozen features."""

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_scores(features, self.prototypes())

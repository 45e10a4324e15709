"""Joint training: the upper bound (ceiling) of a class-incremental leaderboard.

After every experience, a fresh model (pre-trained backbone, new linear head over all seen
classes) is trained on the union of all training data seen so far, so row t of the accuracy matrix
is what non-incremental training on experiences 0..t reaches. Same Config and recipes as
`finetune`, including `train_backbone=false` for a frozen-backbone linear probe on cached features.

Resuming needs the earlier experiences' images: the state keeps their indices and labels and the
fingerprint of their source, and a resumed run checks that the current experience uses the same
source (true of every class-incremental stream built from one training split).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from cilbench.strategies.finetune import Finetune

from cilbench.api import Experience, StreamInfo, register_strategy
from cilbench.backbones import Backbone
from cilbench.data import DatasetView
from cilbench.errors import CilbenchError
from cilbench.features import FeatureStore
from cilbench.heads import HeadedNetwork


@register_strategy("joint")
class Joint(Finetune):
    """Retrain from the pre-trained backbone on all data seen so far, after every experience."""

    def setup(self, backbone: Backbone, info: StreamInfo, features: FeatureStore) -> None:
        super().setup(backbone, info, features)
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []
        self.source_fingerprint = ""

    def start_experience(self, experience: Experience, generator: torch.Generator) -> None:
        """A fresh network with one head over every class seen so far."""
        self.network = HeadedNetwork(self.backbone, self.config.train_backbone)
        self.network.heads.grow(experience.num_seen_classes, generator)

    def training_views(self, experience: Experience) -> list[DatasetView]:
        """Every experience's training data so far, this one included."""
        source = experience.train.source
        if self.seen and source.fingerprint != self.source_fingerprint:
            raise CilbenchError(
                f"joint keeps earlier experiences as indices into {self.source_fingerprint!r}, "
                f"but experience {experience.index} comes from {source.fingerprint!r}; joint "
                "supports streams whose experiences share one training source."
            )
        self.source_fingerprint = source.fingerprint
        self.seen.append((experience.train.indices, experience.train.labels))
        return [DatasetView(source, indices, labels) for indices, labels in self.seen]

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict()
        for i, (indices, labels) in enumerate(self.seen):
            state[f"seen.{i}.indices"] = torch.as_tensor(indices, dtype=torch.long)
            state[f"seen.{i}.labels"] = torch.as_tensor(labels, dtype=torch.long)
        fingerprint = np.frombuffer(self.source_fingerprint.encode(), dtype=np.uint8)
        state["source_fingerprint"] = torch.tensor(fingerprint.copy(), dtype=torch.uint8)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        count = sum(1 for key in state if key.startswith("seen.") and key.endswith(".indices"))
        super().load_state_dict(state)
        self.seen = [
            (state[f"seen.{i}.indices"].numpy(), state[f"seen.{i}.labels"].numpy())
            for i in range(count)
        ]
        self.source_fingerprint = bytes(state["source_fingerprint"].numpy()).decode()

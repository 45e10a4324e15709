"""Fine-tuning: the lower bound of every class-incremental leaderboard.

Sequential training on each experience's data alone, with one linear head that grows by the new
classes and cross-entropy over all classes seen so far; nothing protects old classes, so they are
forgotten (catastrophic forgetting). With `train_backbone=false` the backbone stays frozen and only
the head trains, on cached frozen features (a sequential linear probe).

Config: `epochs`, `batch_size`, `lr` (head), `backbone_lr_scale` (backbone lr = lr x this),
`optimizer`, `momentum`, `weight_decay`, `schedule`, `milestones`, `gamma`, `grad_clip`,
`num_workers`, `train_backbone`. The reference recipes use SLCA's epochs so the bounds and SLCA
share a training budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from cilbench.api import BaseStrategy, Experience, StreamInfo, register_strategy
from cilbench.augment import training_data
from cilbench.backbones import Backbone
from cilbench.config import NonNegative
from cilbench.data import DatasetView
from cilbench.features import FeatureStore
from cilbench.heads import HeadedNetwork, load_network, network_state
from cilbench.training import TrainSettings, fit


@dataclass(frozen=True)
class FinetuneConfig(TrainSettings):
    """The shared training settings (epochs, lr, schedule, ...) with these defaults, plus
    backbone_lr_scale (backbone lr = lr x this), num_workers (None: the run's `--workers`) and
    train_backbone (false: a linear probe on cached frozen features)."""

    epochs: int = 20
    batch_size: int = 128
    weight_decay: float = 5e-4
    backbone_lr_scale: Annotated[float, NonNegative()] = 1.0
    num_workers: Annotated[int | None, NonNegative()] = None
    train_backbone: bool = True


RECIPES: dict[str, dict[str, Any]] = {
    "split-cifar100": {"epochs": 20},
    "split-imagenet-r": {"epochs": 50},
    "synthetic": {"epochs": 1, "batch_size": 16},
    "split-fashion-mnist-mini": {"epochs": 1, "batch_size": 32},
}


@register_strategy("finetune")
class Finetune(BaseStrategy):
    """Backbone + growing linear head trained on the current experience only."""

    Config = FinetuneConfig
    recipes = RECIPES

    @property  # type: ignore[misc]
    def predicts_from_features(self) -> bool:  # type: ignore[override]
        """A frozen backbone is evaluated on cached test features."""
        return not self.config.train_backbone

    def setup(self, backbone: Backbone, info: StreamInfo, features: FeatureStore) -> None:
        super().setup(backbone, info, features)
        self.network = HeadedNetwork(backbone, self.config.train_backbone)
        self.num_seen = 0

    def train_experience(self, experience: Experience) -> None:
        generator = self.generator(experience.index)
        self.start_experience(experience, generator)
        self.num_seen = experience.num_seen_classes
        self.train_on(self.training_views(experience), generator, experience.index)

    def start_experience(self, experience: Experience, generator: torch.Generator) -> None:
        """Grow the head by the experience's new classes."""
        extra = experience.num_seen_classes - self.network.heads.num_classes
        if extra > 0:
            self.network.heads.grow(extra, generator)

    def training_views(self, experience: Experience) -> list[DatasetView]:
        """The data to train on: this experience's alone."""
        return [experience.train]

    def train_on(self, views: list[DatasetView], generator: torch.Generator, index: int) -> None:
        """Cross-entropy over all seen classes on `views` (images, or frozen features)."""
        config = self.config
        network = self.network
        data, prepare, model = self._data(views)
        num_seen = self.num_seen

        def loss_fn(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(model(inputs)[:, :num_seen], labels)

        workers = self.features.num_workers if config.num_workers is None else config.num_workers
        groups = [{"params": network.heads.parameters(), "lr": config.lr}]
        if config.train_backbone:
            lr = config.lr * config.backbone_lr_scale
            groups.append({"params": network.backbone.parameters(), "lr": lr})
        network.train()
        fit(
            loss_fn,
            groups,
            data,
            prepare,
            TrainSettings.from_config(config),
            generator,
            device=self.device,
            progress=self.features.progress,
            description=f"{type(self).__name__.lower()}: experience {index}",
            num_workers=workers,
        )
        network.eval()

    def _data(self, views: list[DatasetView]) -> tuple[Dataset, Any, torch.nn.Module]:
        """(dataset, prepare, model): augmented images, or cached features for a linear probe."""
        if self.config.train_backbone:
            data, prepare = training_data(self.backbone, views)
            return data, prepare, self.network
        pairs = [self.features.get(view) for view in views]
        features = torch.cat([f for f, _ in pairs])
        labels = torch.cat([labels for _, labels in pairs])
        device = self.device
        return TensorDataset(features, labels), lambda x: x.to(device), self.network.heads

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        self.network.eval()
        return self.network(images)[:, : self.num_seen]

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.network.heads(features)[:, : self.num_seen]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**network_state(self.network), "num_seen": torch.tensor(self.num_seen)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        load_network(self.network, state)
        self.num_seen = int(state["num_seen"])

    def trainable_parameters(self) -> int:
        return self.network.parameter_count()

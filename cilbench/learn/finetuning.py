"""Sequential training of a backbone and a growing linear head: what `finetune` (the lower
bound) and `joint` (the upper bound) share.

`Finetuner` trains on the views `training_views` returns (the experience's own data; `joint`
returns every experience's so far) with cross-entropy over the seen classes, or the new ones only
(`loss=new`). With `train_backbone=false` the backbone stays frozen and only the head trains, on
cached frozen features (a linear probe). The strategies add their recipes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from cilbench.api import BaseStrategy, RunContext
from cilbench.core.config import NonNegative
from cilbench.core.errors import ConfigError
from cilbench.data.augment import training_data
from cilbench.data.sources import DatasetView
from cilbench.data.streams import Experience
from cilbench.learn.heads import HeadedNetwork, load_network, network_state
from cilbench.learn.training import (
    EpochLosses,
    TrainSettings,
    fit,
    for_experience,
    head_and_backbone_groups,
)


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
    loss: Literal["seen", "new"] = "seen"
    freeze_old_heads: bool = False
    first_weight_decay: Annotated[float | None, NonNegative()] = None
    fresh_final_norm: bool = False


class Finetuner(BaseStrategy):
    """Backbone + growing linear head trained on `training_views` (see module docstring)."""

    Config = FinetuneConfig

    @property  # type: ignore[misc]
    def predicts_from_features(self) -> bool:  # type: ignore[override]
        """A frozen backbone is evaluated on cached test features."""
        return not self.config.train_backbone

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        info = context.info
        if self.config.loss == "new" and info.scenario != "class-incremental":
            raise ConfigError(
                f"loss=new trains on each experience's new classes, which a {info.scenario} "
                f"stream ({info.name}) does not have; use --set loss=seen."
            )
        self.network = self.new_network()
        self.num_seen = 0
        self.known = 0
        self.losses = EpochLosses()

    def new_network(self) -> HeadedNetwork:
        """The pre-trained backbone (a trainable copy, or the frozen one) with no heads yet."""
        config = self.config
        return HeadedNetwork(self.backbone, config.train_backbone, config.fresh_final_norm)

    def train_experience(self, experience: Experience) -> None:
        generator = self.generator(experience.index)
        self.start_experience(experience, generator)
        self.known, self.num_seen = self.num_seen, experience.num_seen_classes
        self.train_on(self.training_views(experience), generator, experience.index)

    def start_experience(self, experience: Experience, generator: torch.Generator) -> None:
        """Grow the head by the experience's new classes."""
        extra = experience.num_seen_classes - self.network.heads.num_classes
        if extra > 0:
            self.network.heads.grow(extra, generator, freeze_old=self.config.freeze_old_heads)

    def training_views(self, experience: Experience) -> list[DatasetView]:
        """The data to train on: this experience's alone."""
        return [experience.train]

    def train_on(self, views: list[DatasetView], generator: torch.Generator, index: int) -> None:
        """Cross-entropy over the seen (or only the new) classes on `views` (images or features)."""
        config = self.config
        network = self.network
        data, prepare, model = self._data(views)
        first = self.known if config.loss == "new" else 0
        num_seen = self.num_seen

        def loss_fn(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(model(inputs)[:, first:num_seen], labels - first)

        workers = self.context.num_workers if config.num_workers is None else config.num_workers
        backbone = network.backbone if config.train_backbone else None
        groups = head_and_backbone_groups(
            network.heads.parameters(), backbone, config.lr, config.backbone_lr_scale
        )
        network.train()
        losses = fit(
            loss_fn,
            groups,
            data,
            prepare,
            self._settings(index),
            generator,
            device=self.device,
            progress=self.progress,
            description=f"{type(self).__name__.lower()}: experience {index}",
            num_workers=workers,
            precision=self.backbone.precision,
            compile=self.backbone.compile,
        )
        network.eval()
        self.losses.record(index, losses)

    def _settings(self, index: int) -> TrainSettings:
        return for_experience(self.config.train_settings(), index, self.config.first_weight_decay)

    def _data(self, views: list[DatasetView]) -> tuple[Dataset, Any, torch.nn.Module]:
        """(dataset, prepare, model): augmented images, or cached features for a linear probe."""
        if self.config.train_backbone:
            data, prepare = training_data(self.backbone, views, self.context.augmentation)
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
        return {
            **network_state(self.network),
            "num_seen": torch.tensor(self.num_seen),
            **self.losses.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        load_network(self.network, state)
        self.num_seen = int(state["num_seen"])
        self.losses.load_state_dict(state)
        if self.config.freeze_old_heads:  # as `grow` left them: only the newest head trains
            self.network.heads.heads[:-1].requires_grad_(False)

    def report(self) -> dict[str, Any]:
        return {"epoch_losses": self.losses.report()}

    def trainable_parameters(self) -> int:
        return self.network.parameter_count()

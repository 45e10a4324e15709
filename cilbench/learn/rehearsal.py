"""What the rehearsal strategies that train whole networks share (iCaRL, DER, FOSTER, MEMO, DGR,
Coil): the exemplar memory, their loader processes, the features of a view through their trained
network, and the memory update after an experience (PILOT's `build_rehearsal_memory`: herding on
those features, then each class's exemplar mean), prediction (logits or nearest mean of
exemplars) and the budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from cilbench.api import BaseStrategy, RunContext
from cilbench.data.augment import training_data
from cilbench.data.sources import DatasetView, ImageSource, loader_workers
from cilbench.data.streams import Experience
from cilbench.features import extract_features
from cilbench.learn.exemplars import ExemplarMemory, class_means, describe, nme_scores
from cilbench.learn.training import TrainSettings, fit


class RehearsalStrategy(BaseStrategy):
    """A `BaseStrategy` with an exemplar `memory`, whose Config has `num_workers` (None: the
    run's `--workers`), `batch_size`, the memory's `selection` and (unless the strategy
    predicts otherwise, as FOSTER) `classifier`: "cnn" (the network's logits) or "nme" (the
    nearest mean of exemplars of the `network`'s `features`, the `class_means` kept)."""

    uses_exemplars = True
    class_incremental_only = True
    frozen_backbone = False

    network: Any

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        self.memory = ExemplarMemory(self.config)
        self.num_seen = 0
        self.class_means = torch.zeros(0, 0)
        """Each seen class's mean of its exemplars' features (NME), once computed."""

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        self.network.eval()
        if self.config.classifier == "nme":
            features = self.network.features(images).float()
            return nme_scores(features, self.class_means.to(images.device))
        return self.classifier_scores(images)

    def classifier_scores(self, images: torch.Tensor) -> torch.Tensor:
        """The network's logits over the classes seen so far."""
        return self.network(images)[:, : self.num_seen]

    def exemplar_budget(self) -> str | None:
        return describe(self.config)

    def exemplar_images(self) -> int:
        return len(self.memory)

    def views_with_exemplars(self, experience: Experience) -> list[DatasetView]:
        """What an experience trains on: its own training images and the exemplars kept so far."""
        views = [experience.train]
        if len(self.memory):
            views.append(self.memory.view(experience.train.source))
        return views

    def fit_views(
        self,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        groups: list[dict[str, Any]],
        views: list[DatasetView],
        settings: TrainSettings,
        generator: torch.Generator,
        what: str,
        **options: Any,
    ) -> list[float]:
        """`fit` on `views`' augmented images with the run's device, precision, compilation,
        progress bar and loader processes; `what` names the step, `options` go to `fit` (its
        hooks, or `compile=False`); the mean loss of every epoch."""
        data, prepare = training_data(self.backbone, views, self.context.augmentation)
        options = {"compile": self.backbone.compile, **options}
        return fit(
            loss_fn,
            groups,
            data,
            prepare,
            settings,
            generator,
            device=self.device,
            progress=self.progress,
            description=f"{type(self).__name__.lower()}: {what}",
            num_workers=self.workers(),
            precision=self.backbone.precision,
            **options,
        )

    def workers(self) -> int | None:
        """Loader processes: the config's `num_workers`, else the run's `--workers` setting."""
        configured = self.config.num_workers
        return self.context.num_workers if configured is None else configured

    def trained_features(
        self, model: Callable[[torch.Tensor], torch.Tensor], view: DatasetView, what: str
    ) -> torch.Tensor:
        """`model`'s features of `view`'s images under test-time preprocessing (no augmentation),
        in batches of the config's `batch_size`; `what` names the step in the progress bar."""
        return extract_features(
            model,
            self.backbone,
            view.with_transform(self.backbone.preprocessing.sample_transform()),
            batch_size=self.config.batch_size,
            num_workers=loader_workers(self.workers(), [view.source], self.device),
            progress=self.progress,
            description=f"{type(self).__name__.lower()}: {what}",
        )

    def select_exemplars(
        self,
        train: DatasetView,
        model: Callable[[torch.Tensor], torch.Tensor],
        generator: torch.Generator,
        seen_classes: int,
    ) -> None:
        """Shrink the old classes to the quota and choose `train`'s classes' exemplars (herding
        on `model`'s features; random selection reads none)."""
        herding = self.config.selection == "herding"
        features = self.trained_features(model, train, "exemplar selection") if herding else None
        self.memory.add_experience(train, features, generator, seen_classes)

    def exemplar_class_means(
        self, model: Callable[[torch.Tensor], torch.Tensor], source: ImageSource, seen: int
    ) -> torch.Tensor:
        """Every seen class's mean of `model`'s features of its kept exemplars (iCaRL's NME)."""
        kept = self.memory.view(source)
        return class_means(self.trained_features(model, kept, "exemplar means"), kept.labels, seen)

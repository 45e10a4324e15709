"""What L2P, DualPrompt and CODA-Prompt share as strategies: training, prediction, state.

A `PromptLearner` keeps the runner's frozen ViT as it is and trains a `Prompter` (see
`cilbench.learn.prompts`) plus one linear head over every class seen so far, through the shared
training loop (`cilbench.learn.training.fit`). The loss is cross-entropy with the logits of classes
outside the experience masked to -inf (the reference codes' `train_mask`: old classes in
class-incremental streams), minus `pull_coeff` x the pull constraint. A subclass only builds its
prompter.

The query of every image is the frozen model's pooled feature (`Backbone.forward_features`):
- evaluation: read from the feature cache (`predicts_with_features`), so the frozen model never
  runs twice on a test image; `predict(images)` computes it, for callers without the cache;
- training: by default computed on the augmented view, with a second no-grad forward as in the
  reference codes; `query_from_cache=true` reads the cached features of the un-augmented view
  instead (faster; not the reference's recipe, recorded in the report).
Prompt selection is per sample unless `batchwise_prompt=true` (the reference codes' batch vote,
which makes a test prediction depend on the rest of its batch; recorded in the report).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from cilbench.api import BaseStrategy, RunContext
from cilbench.data.augment import training_data
from cilbench.data.streams import Experience, StreamInfo
from cilbench.learn.heads import HeadInit, TaskHeads, heads_state, load_heads
from cilbench.learn.prompts import Prompter, Readout, prompted_features
from cilbench.learn.training import (
    EpochLosses,
    EpochMeans,
    TrainSettings,
    WithPositions,
    count_trainable,
    fit,
)


@dataclass(frozen=True)
class PromptLearnerConfig(TrainSettings):
    """Training settings (Adam, constant lr by default) plus what every prompt method shares."""

    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    schedule: Literal["constant", "cosine", "multistep", "coda-cosine"] = "constant"
    pull_coeff: float = 0.0
    """Weight of the pull constraint (subtracted from the loss)."""
    batchwise_prompt: bool = False
    """The reference codes' batch vote of prompt ids (leaks across a test batch); off: per image."""
    query_from_cache: bool = False
    """Training queries from the cached un-augmented features instead of a second forward."""
    num_workers: int = 0
    head_init: HeadInit = "trunc-normal"
    """Initialisation of each new head: trunc-normal 0.02, zero bias (timm's, LAMDA-PILOT's L2P
    and DualPrompt head) or "torch-linear" (`nn.Linear`'s own: LAMDA-PILOT's CODA-Prompt head)."""


class PromptLearner(BaseStrategy):
    """A frozen ViT, a trained prompter and a head over all seen classes (see module docstring)."""

    Config: ClassVar[type] = PromptLearnerConfig
    predicts_with_features = True
    frozen_backbone = True
    accuracy_convention: ClassVar[str] = "task-averaged"
    readout: ClassVar[Readout] = "token"

    def build_prompter(self, model: Any, info: StreamInfo) -> Prompter:
        """The prompter for the frozen timm ViT `model`; called once in `setup`."""
        raise NotImplementedError

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        backbone = context.backbone
        self.prompter: Prompter = self.build_prompter(backbone.model, context.info)
        self.prompter.to(backbone.device)
        self.heads = TaskHeads(backbone.feature_dim, backbone.device)
        self.num_seen = 0
        self.task = 0
        self.losses = EpochLosses()

    def train_experience(self, experience: Experience) -> None:
        config = self.config
        generator = self.generator(experience.index)
        self.task = experience.index
        self.prompter.start_task(experience.index, generator)
        extra = experience.num_seen_classes - self.heads.num_classes
        if extra > 0:
            self.heads.grow(extra, generator, init=config.head_init)
        self.num_seen = experience.num_seen_classes
        data, prepare = training_data(self.backbone, [experience.train], self.context.augmentation)
        cached = None
        if config.query_from_cache:
            cached = self.features.get(experience.train)[0].to(self.device)
            data = WithPositions(data)
        outside = torch.ones(self.num_seen, dtype=torch.bool, device=self.device)
        outside[list(experience.classes)] = False

        cross_entropy = EpochMeans()  # the losses reported: comparable with ln(classes)

        def loss_fn(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            if cached is None:
                labels, query = targets, self.query(images)
            else:
                labels, query = targets[:, 0], cached[targets[:, 1]]
            logits, pull = self.scores(images, query, training=True)
            logits = logits.masked_fill(outside, float("-inf"))
            loss = F.cross_entropy(logits, labels)
            cross_entropy.add(loss, len(labels))
            return loss - config.pull_coeff * pull

        self.prompter.train()
        fit(
            loss_fn,
            [{"params": self.prompter.parameters()}, {"params": self.heads.parameters()}],
            data,
            prepare,
            config.train_settings(),
            generator,
            device=self.device,
            progress=self.progress,
            description=f"{type(self).__name__.lower()}: experience {experience.index}",
            num_workers=config.num_workers,
            precision=self.backbone.precision,
            compile=self.backbone.compile,
            before_epoch=cross_entropy.start_epoch,
        )
        self.prompter.eval()
        self.losses.record(experience.index, cross_entropy.means())

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen model's pooled features of prepared images (no gradient)."""
        with torch.no_grad():
            return self.backbone.forward_features(images)

    def scores(
        self, images: torch.Tensor, query: torch.Tensor, training: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits over the seen classes, pull constraint) of prompted images."""
        prompts, pull = self.prompter(query, self.task, training)
        features = prompted_features(self.backbone.model, images, prompts, self.readout)
        return self.heads(features)[:, : self.num_seen], pull

    def predict_with_features(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.scores(images, features)[0]

    def state_dict(self) -> dict[str, torch.Tensor]:
        prompter = {f"prompter.{k}": v for k, v in self.prompter.state_dict().items()}
        return {
            **prompter,
            **heads_state(self.heads, "heads."),
            "num_seen": torch.tensor(self.num_seen),
            "task": torch.tensor(self.task),
            **self.losses.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        own = {k[len("prompter.") :]: v for k, v in state.items() if k.startswith("prompter.")}
        self.prompter.load_state_dict(own)
        load_heads(self.heads, state, "heads.")
        self.num_seen = int(state["num_seen"])
        self.task = int(state["task"])
        self.losses.load_state_dict(state)

    def leaderboard_flags(self) -> dict[str, bool | str | None]:
        """The reference codes' per-batch prompt vote makes a prediction depend on its batch."""
        flags = super().leaderboard_flags()
        return {**flags, "batchwise_prompt_vote": self.config.batchwise_prompt}

    def report(self) -> dict[str, Any]:
        """How queries and prompt ids were obtained (leaderboard flags), and the epoch losses."""
        config = self.config
        return {
            "epoch_losses": self.losses.report(),
            "batchwise_prompt": config.batchwise_prompt,
            "query_from_cache": config.query_from_cache,
            "training_query": "cached un-augmented view"
            if config.query_from_cache
            else "augmented view (second forward, as the reference)",
        }

    def trainable_parameters(self) -> int:
        return count_trainable([self.prompter, self.heads])

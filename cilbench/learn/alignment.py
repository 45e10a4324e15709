"""Slow learner + classifier alignment: the training scheme SLCA and CoFiMA share.

Stage 1 fine-tunes a trainable copy of the backbone at `lr x backbone_lr_scale` and the new task's
linear head at `lr`, with cross-entropy over the new head's logits only (older heads frozen). The
mean and full covariance of each new class's features are then stored (`gaussians`), and from the
second experience on, stage 2 re-trains every head on features sampled from those Gaussians
(classifier alignment), optionally with logit normalisation. Every alignment starts from the
heads as stage 1 left them: the aligned heads predict, the un-aligned ones are restored before the
next experience. A strategy's Config extends `SlowLearnerConfig` (SLCA's fields, documented in
strategies/slca.py); a strategy may run a step between stage 1 and the statistics
(`after_slow_learner`: CoFiMA's weight averaging).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cilbench.api import BaseStrategy, RunContext
from cilbench.core.config import NonNegative, Positive, Range
from cilbench.core.errors import CilbenchError
from cilbench.core.memory import check_fits
from cilbench.data.augment import training_data
from cilbench.data.sources import loader_workers
from cilbench.data.streams import Experience
from cilbench.features import extract_features
from cilbench.learn.gaussians import ClassGaussians
from cilbench.learn.heads import (
    HeadedNetwork,
    TaskHeads,
    heads_state,
    load_heads,
    load_network,
    network_state,
)
from cilbench.learn.training import (
    EpochLosses,
    NonFiniteLossError,
    TrainSettings,
    fit,
    head_and_backbone_groups,
    make_optimizer,
    make_scheduler,
)


@dataclass(frozen=True)
class SlowLearnerConfig:
    """The fields `SlowLearnerAlignment` reads (see strategies/slca.py), with the SLCA authors'
    defaults."""

    epochs: Annotated[int, Positive()] = 20
    milestones: Annotated[tuple[int, ...], NonNegative()] = (18,)
    gamma: Annotated[float, Positive()] = 0.1
    lr: Annotated[float, Positive()] = 0.01
    backbone_lr_scale: Annotated[float, NonNegative()] = 0.01
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9
    weight_decay: Annotated[float, NonNegative()] = 5e-4
    batch_size: Annotated[int, Positive()] = 128
    grad_clip: Annotated[float | None, Positive()] = None
    num_workers: Annotated[int | None, NonNegative()] = None
    ca_epochs: Annotated[int, NonNegative()] = 5
    ca_lr: Annotated[float | None, Positive()] = None
    ca_samples_per_class: Annotated[int, Positive()] = 256
    logit_temperature: Annotated[float | None, Positive()] = 0.1
    covariance_ridge: Annotated[float, NonNegative()] = 1e-4
    fresh_final_norm: bool = True
    freeze_batchnorm_statistics: bool = True

    def train_settings(self) -> TrainSettings:
        """Stage 1, the slow learner: SGD with momentum, multi-step decay at `milestones`."""
        return TrainSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule="multistep",
            milestones=self.milestones,
            gamma=self.gamma,
            grad_clip=self.grad_clip,
        )


def normalize_logits(logits: torch.Tensor, sizes: list[int], temperature: float) -> torch.Tensor:
    """SLCA's logit normalisation: divide by the mean over tasks of each task's logit L2 norm.

    `sizes` are the classes per task (the column blocks of `logits`); 1e-7 guards a zero norm.
    """
    norms = torch.stack([part.norm(dim=1) + 1e-7 for part in logits.split(sizes, dim=1)], dim=1)
    return logits / norms.mean(dim=1, keepdim=True) / temperature


class SlowLearnerAlignment(BaseStrategy):
    """Slow-learner fine-tuning, per-class Gaussians, classifier alignment on sampled features."""

    method: ClassVar[str] = "slca"
    """The strategy's name in messages and progress bars."""
    frozen_backbone = False

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        backbone = context.backbone
        self.network = HeadedNetwork(
            backbone,
            True,
            self.config.fresh_final_norm,
            self.config.freeze_batchnorm_statistics,
        )
        self.unaligned = TaskHeads(self.network.heads.dim, backbone.device)
        self.gaussians = ClassGaussians(self.config.covariance_ridge)
        count, classes = self.config.ca_samples_per_class, context.info.num_classes
        check_fits(
            4 * count * classes * (backbone.feature_dim + classes),
            f"{self.method} ca_samples_per_class={count} ({count} x {classes} classes sampled "
            "features)",
            self.device,
        )
        self.num_seen = 0
        self.seconds = {"slow_learner": 0.0, "statistics": 0.0, "alignment": 0.0}
        self.losses = EpochLosses()

    def train_experience(self, experience: Experience) -> None:
        known = self.network.heads.num_classes
        if not experience.new_classes or min(experience.classes) < known:
            raise CilbenchError(
                f"{self.method} needs only new classes in every experience (class-incremental "
                f"streams); experience {experience.index} has classes {experience.classes}, "
                f"{known} already known."
            )
        generator = self.generator(experience.index)
        self.start_experience(experience, generator)
        with self._timed("slow_learner"):
            self._slow_learner(experience, generator, known)
        self.after_slow_learner(experience, generator)
        with self._timed("statistics"):
            features = self._new_class_features(experience)
        self.finish_experience(experience, features, generator)

    def after_slow_learner(self, experience: Experience, generator: torch.Generator) -> None:
        """A step between stage 1 and the class statistics; none for SLCA."""

    def start_experience(self, experience: Experience, generator: torch.Generator) -> None:
        """Undo the last alignment and add a head for the new classes (older heads frozen)."""
        heads = self.network.heads
        heads.load_state_dict(self.unaligned.state_dict())
        heads.grow(len(experience.new_classes), generator, freeze_old=True)

    def finish_experience(
        self, experience: Experience, features: torch.Tensor, generator: torch.Generator
    ) -> None:
        """After stage 1: keep the un-aligned heads, store the new classes' Gaussians (from
        `features` of the experience's training images), then align every head."""
        heads = self.network.heads
        self.unaligned = copy.deepcopy(heads)
        labels = torch.as_tensor(experience.train.labels, dtype=torch.long)
        with self._timed("statistics"):
            self.gaussians.add(features, labels, experience.new_classes)
        self.num_seen = experience.num_seen_classes
        if len(heads.heads) > 1 and self.config.ca_epochs > 0:
            with self._timed("alignment"):
                self._align(generator)

    @contextlib.contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        """Add the wall time of the block (device work included) to `seconds[phase]`."""
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[phase] += time.perf_counter() - start

    def _slow_learner(self, experience: Experience, generator: torch.Generator, known: int) -> None:
        data, prepare = training_data(self.backbone, [experience.train], self.context.augmentation)
        losses = self.train_new_task(
            data,
            prepare,
            generator,
            known,
            num_workers=self._workers(),
            description=f"{self.method}: slow learner, experience {experience.index}",
        )
        self.losses.record(experience.index, losses)

    def train_new_task(
        self,
        data: Dataset,
        prepare: Callable[[torch.Tensor], torch.Tensor],
        generator: torch.Generator,
        known: int,
        *,
        num_workers: int | None = 0,
        description: str = "slca: slow learner",
    ) -> list[float]:
        """Stage 1 on `data` (`prepare` readies a batch for the network): cross-entropy over the
        new head's logits, backbone at the slow learning rate, older heads frozen. Returns the
        epoch losses."""
        network = self.network

        def loss_fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(network(images)[:, known:], labels - known)

        network.train()
        losses = fit(
            loss_fn,
            self.slow_learner_groups(),
            data,
            prepare,
            self.config.train_settings(),
            generator,
            device=self.device,
            progress=self.progress,
            description=description,
            num_workers=num_workers,
            precision=self.backbone.precision,
            compile=self.backbone.compile,
        )
        network.eval()
        return losses

    def _workers(self) -> int | None:
        """Loader processes: the config's `num_workers`, else the run's `--workers` setting."""
        configured = self.config.num_workers
        return configured if configured is not None else self.context.num_workers

    def slow_learner_groups(self) -> list[dict[str, Any]]:
        """Backbone at lr x backbone_lr_scale, the newest head at lr (older heads are frozen)."""
        newest = self.network.heads.heads[-1].parameters()
        config = self.config
        return head_and_backbone_groups(
            newest, self.network.backbone, config.lr, config.backbone_lr_scale
        )

    def _new_class_features(self, experience: Experience) -> torch.Tensor:
        """Features of the experience's training images (test preprocessing, new backbone)."""
        dataset = experience.train.with_transform(self.backbone.preprocessing.sample_transform())
        return extract_features(
            self.network.backbone,
            self.backbone,
            dataset,
            batch_size=self.config.batch_size,
            num_workers=loader_workers(self._workers(), [experience.train.source], self.device),
            progress=self.progress,
            description=f"{self.method}: class statistics",
        )

    def sample_features(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`ca_samples_per_class` features of every seen class, means shrunk for older tasks."""
        sizes = self.network.heads.sizes
        tasks = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        count = self.config.ca_samples_per_class
        samples = [
            self.gaussians.sample(
                c, count, generator, 0.9 + 0.1 * (int(tasks[c]) + 1) / len(sizes), self.device
            )
            for c in range(self.num_seen)
        ]
        labels = torch.arange(self.num_seen, device=self.device).repeat_interleave(count)
        return torch.cat(samples), labels

    def _align(self, generator: torch.Generator) -> None:
        """Stage 2: train every head on sampled features; the backbone is not involved."""
        config = self.config
        heads = self.network.heads
        heads.requires_grad_(True)
        settings = TrainSettings(
            epochs=config.ca_epochs,
            lr=config.lr if config.ca_lr is None else config.ca_lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            schedule="cosine",
        )
        optimizer = make_optimizer([{"params": heads.parameters()}], settings)
        scheduler = make_scheduler(optimizer, settings)
        batch = config.ca_samples_per_class
        with self.progress.task(
            f"{self.method}: classifier alignment", total=config.ca_epochs * self.num_seen
        ) as advance:
            for epoch in range(config.ca_epochs):
                features, labels = self.sample_features(generator)
                order = torch.randperm(len(labels), generator=generator).to(self.device)
                for step in range(self.num_seen):
                    chosen = order[step * batch : (step + 1) * batch]
                    loss = self._alignment_loss(features[chosen], labels[chosen])
                    if not torch.isfinite(loss):
                        raise NonFiniteLossError(
                            f"{self.method}: alignment loss is {loss.item()} at epoch {epoch}, "
                            f"step {step}; lower ca_lr. The last checkpoint is intact."
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    advance(1)
                scheduler.step()
        heads.requires_grad_(False)

    def _alignment_loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.network.heads(features)
        if self.config.logit_temperature is not None:
            logits = normalize_logits(
                logits, self.network.heads.sizes, self.config.logit_temperature
            )
        return F.cross_entropy(logits, labels)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        self.network.eval()
        return self.network(images)[:, : self.num_seen]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            **network_state(self.network, "network."),
            **heads_state(self.unaligned, "unaligned."),
            **self.gaussians.state_dict("gaussians."),
            "num_seen": torch.tensor(self.num_seen),
            **self.losses.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        load_network(self.network, state, "network.")
        load_heads(self.unaligned, state, "unaligned.")
        self.gaussians.load_state_dict(state, "gaussians.")
        self.num_seen = int(state["num_seen"])
        self.losses.load_state_dict(state)

    def report(self) -> dict[str, Any]:
        """Wall seconds of each stage in this process (a resumed run reports its own part), and
        the slow learner's epoch losses."""
        seconds = {f"{phase}_seconds": round(value, 3) for phase, value in self.seconds.items()}
        return {**seconds, "epoch_losses": self.losses.report()}

    def trainable_parameters(self) -> int:
        return self.network.parameter_count()

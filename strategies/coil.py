"""Coil (Zhou, Ye, Zhan, "Co-Transport for Class-Incremental Learning", ACM MM 2021): rehearsal
with a cosine classifier whose rows are carried between old and new classes by optimal transport.

The network is a trainable backbone and a cosine classifier (sigma * cos(f, w_c), one learnable
sigma), trained each experience on the new images and the exemplars with
`lam * KD + (1 - lam) * CE`, lam = known / seen classes (KD: soft-target cross-entropy of the old
classes' logits towards the network as the previous experience left it, temperature T). The
transport (`cilbench.learn.transport`) relates classes through the Minkowski-p distance of their
mean features (each feature L2-normalised, the mean normalised again) and POT's Sinkhorn plan:
- prospective (experience t >= 1, before training): the plan from the old classes (means over
  their *training images*, see below) to the new ones (means over the new training images, under
  the network before training) carries the old rows to the new classes: the new rows start as
  n_old P^T normalise(W_old), rescaled by gamma = mean old row norm / mean carried row norm.
  During epoch 0 the loss adds `prospective_weight` x the soft cross-entropy of the new classes'
  logits (at T) towards softmax(cos(f, those carried rows) / T) (the target is not detached).
- retrospective (epochs >= 1): every `resolve_every` steps the plan from the new classes (means
  over their training images) to the old ones (means over their exemplars), under the current
  network, carries the current new rows back to the old classes; the loss adds
  `retrospective_weight` x (epoch / epochs)^2 x the soft cross-entropy of softmax(cos(f, carried
  rows) / T) towards the old network's softmax (at T). The carried rows are constants.
Experience 0 trains with cross-entropy alone. After training, exemplars are chosen by herding
(shared memory, `cilbench.learn.exemplars`). Prediction: the cosine classifier (`classifier=cnn`,
Coil's) or the nearest mean of exemplars (`classifier=nme`, the second accuracy PILOT logs).

Config: the shared training settings (SGD, every parameter at `lr`), the transport's settings
(`sinkhorn_reg`, `cost_norm`, `prospective_weight`, `retrospective_weight`, `resolve_every`,
`old_means`; PILOT's names in each field's docstring), `temperature`, `classifier`,
`num_workers` and the exemplar memory's `memory_size`, `memory_per_class`, `selection`.

Defaults and recipes come from LAMDA-PILOT at 5240714d (`models/coil.py`, `utils/inc_net.py`
`SimpleCosineIncrementalNet`, `backbone/linears.py` `CosineLinear`, `models/base.py`,
`exps/coil.json`, `exps/coil_inr.json`); its `coil.py` is the authors' `models/COIL.py`
(zhoudw-zdw/MM21-Coil f4ebcc1) with the hard-coded settings moved into the exps files (the
paper's text was not available here: cilbench follows the two codes, which agree). `pilot`
recipes: SGD momentum 0.9, lr 1e-3, weight decay 5e-4 on every experience (milestones 80,120 not
reached), batch 64, T 2, sinkhorn 0.464, norm_term 3, reg_term 1e-3, IN-1k ViT-B/16; CIFAR-100:
10 epochs, 2000 exemplars in total; ImageNet-R: 20 epochs, 20 per class. Noticed in the reference,
kept: the configs' `calibration_term` (1.5) is never used (the first prospective solve overwrites
it with gamma before anything reads it); both marginals are 1/n_old per class, so when old and new
class counts differ they are unbalanced and POT stops at 1000 iterations without converging; the
retrospective rows' scale (n_old x gamma) is removed by the normalisation in the loss; the
prospective epoch-0 weight max(1 - (epoch / 2)^2, 0) is 1 on the only epoch it applies to.
GPU memory (estimated, not measured): a trained ViT-B/16 with gradients and momentum, its frozen
copy and batch-64 activations at 224 px: about 10 GiB in fp32, a 16 GiB GPU. The plans' feature
passes cost nearly as much as training (CIFAR-100: 4 retrospective plans an epoch, each a forward
pass over the new classes' images and the exemplars, 7000 images).

Where cilbench differs, and why:
- `old_means=training` (the default, PILOT's and the authors') reads every old class's full
  training images at the start of each experience (features only, for the prospective cost): the
  strategy keeps their positions, beyond the exemplar budget it reports. `old_means=exemplars`
  keeps to the exemplars (as the retrospective step does); it is not the reference.
- The prospective plan is solved at the start of experience t (PILOT: after experience t - 1,
  peeking at task t's data): the same network and images, so the same plan. The new classes are
  the experience's own (PILOT sizes them by task 1's class count).
- The first rows are drawn U(-1/sqrt D, 1/sqrt D) (`CosineLinear`) from the experience's
  generator (PILOT: the global seed); class means are float64 averages of float32 features;
  herding as `icarl`'s; exemplar means only for `classifier=nme`; the memory holds positions
  (class-incremental streams only); augmentation is the run's, the means use test preprocessing.
Per-task accuracies against PILOT's learner: `tools/parity/coil.py`, `coil-results.md`.
The `split-fashion-mnist-mini` recipe is a CPU demo, not a reference setting (SGD lr 0.1, 5 epochs,
100 exemplars): seed 0's first-session losses 0.673 -> 0.396, final accuracy 55.5 %.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cilbench.api import RunContext, register_strategy
from cilbench.core.config import NonNegative, Positive
from cilbench.data.sources import DatasetView
from cilbench.data.streams import Experience
from cilbench.engine.recipes import IN1K, PILOT, Recipe
from cilbench.learn.distillation import distillation_loss
from cilbench.learn.exemplars import (
    ExemplarMemory,
    MemoryConfig,
    exemplar_mean,
)
from cilbench.learn.first_session import CosineHead
from cilbench.learn.rehearsal import RehearsalStrategy
from cilbench.learn.training import EpochLosses, TrainSettings
from cilbench.learn.transport import prospective_rows, retrospective_rows


@dataclass(frozen=True)
class CoilConfig(TrainSettings, MemoryConfig):
    """PILOT's `exps/coil.json` as defaults: training settings, transport and memory."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 5e-4
    schedule: Literal["constant", "cosine", "multistep", "coda-cosine"] = "multistep"
    milestones: tuple[int, ...] = (80, 120)
    sinkhorn_reg: Annotated[float, Positive()] = 0.464
    """Entropic regularisation of `ot.sinkhorn` (PILOT `sinkhorn`)."""
    cost_norm: Annotated[float, Positive()] = 3.0
    """p of the Minkowski distance between class means (PILOT `norm_term`)."""
    prospective_weight: Annotated[float, NonNegative()] = 1e-3
    """Weight of the epoch-0 term towards the transported new rows (PILOT's literal 0.001)."""
    retrospective_weight: Annotated[float, NonNegative()] = 1e-3
    """Weight of the term towards the old model through the carried-back rows (`reg_term`)."""
    resolve_every: Annotated[int, Positive()] = 30
    """Training steps between two retrospective plans (PILOT's literal 30; step 0 of an epoch)."""
    temperature: Annotated[float, Positive()] = 2.0
    """Temperature T of every soft target (PILOT `T`)."""
    old_means: Literal["training", "exemplars"] = "training"
    """Prospective means of old classes: all their training images (PILOT) or the exemplars."""
    classifier: Literal["cnn", "nme"] = "cnn"
    """cnn: the cosine classifier (Coil's); nme: nearest mean of exemplars."""
    num_workers: Annotated[int | None, NonNegative()] = None


def prospective_schedule(epoch: int) -> float:
    """Weight factor of the prospective term: max(1 - (epoch / 2)^2, 0) on epoch 0, 0 after
    (PILOT applies it only while `epoch < 1`)."""
    return max(1.0 - (epoch / 2) ** 2, 0.0) if epoch < 1 else 0.0


def retrospective_schedule(epoch: int, epochs: int) -> float:
    """Weight factor of the retrospective term: (epoch / epochs)^2 from epoch 1 on."""
    return (epoch / epochs) ** 2 if epoch >= 1 else 0.0


def soft_cross_entropy(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-(1/B) sum_b sum_c targets_bc log_probs_bc (gradients reach both arguments)."""
    return -(targets * log_probs).sum(dim=1).mean()


def cosine_logits(features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """cos(f, w) of every feature and row (no sigma)."""
    return F.normalize(features, p=2, dim=1) @ F.normalize(rows, p=2, dim=1).T


def first_rows(count: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """The first experience's rows: U(-1/sqrt(dim), 1/sqrt(dim)) (PILOT `CosineLinear`)."""
    bound = 1.0 / math.sqrt(dim)
    return (torch.rand(count, dim, generator=generator) * 2 - 1) * bound


class CosineNetwork(nn.Module):
    """A trainable backbone and a growing cosine classifier (PILOT `SimpleCosineIncrementalNet`)."""

    def __init__(self, backbone: nn.Module, dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = CosineHead(dim, 0)

    def grow(self, rows: torch.Tensor) -> None:
        """Append `rows` to the classifier (sigma and the old rows kept)."""
        weight = torch.cat([self.head.weight.detach(), rows.detach().to(self.head.weight)])
        self.head.weight = nn.Parameter(weight)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the backbone's features."""
        features = self.backbone(images)
        return self.head(features), features


def _pilot(config: str, table: str, epochs: int, memory: dict[str, int]) -> Recipe:
    """LAMDA-PILOT's Coil on one stream."""
    return Recipe(
        {
            "epochs": epochs, "lr": 1e-3, "batch_size": 64, "weight_decay": 5e-4,
            "schedule": "multistep", "milestones": (80, 120), "gamma": 0.1, "sinkhorn_reg": 0.464,
            "cost_norm": 3.0, "retrospective_weight": 1e-3, "prospective_weight": 1e-3,
            "resolve_every": 30, "temperature": 2.0, "old_means": "training",
            "classifier": "cnn", "selection": "herding", **memory,
        },
        PILOT.file(f"exps/{config}", table),
        name="pilot",
        backbone=IN1K,
        notes="SGD momentum 0.9 (models/coil.py); milestones never reached; calibration_term "
        "unused (overwritten by gamma). GPU memory (estimated): the trained ViT-B/16 with "
        "gradients and momentum, its frozen copy and batch-64 activations at 224 px: about "
        "10 GiB fp32, a 16 GiB GPU",
    )  # fmt: skip


RECIPES: dict[str, Any] = {
    "split-cifar100": [
        _pilot("coil.json", "LAMDA-PILOT Coil, CIFAR B0 Inc10, IN-1k (fixed_memory false)", 10,
               {"memory_size": 2000, "memory_per_class": 0}),
    ],
    "split-imagenet-r": [
        _pilot("coil_inr.json", "LAMDA-PILOT Coil, IN-R B0 Inc20, IN-1k (fixed_memory true)",
               20, {"memory_size": 4000, "memory_per_class": 20}),
    ],
    "synthetic": {"epochs": 2, "batch_size": 16, "memory_size": 20, "resolve_every": 2},
    "split-fashion-mnist-mini": {
        "epochs": 5, "batch_size": 32, "lr": 0.1, "memory_size": 100,
    },
}  # fmt: skip


@register_strategy("coil")
class Coil(RehearsalStrategy):
    """Rehearsal + distillation on a cosine classifier, classifier rows co-transported."""

    Config = CoilConfig
    recipes = RECIPES

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        self.network = CosineNetwork(self.backbone.build_model(), self.backbone.feature_dim)
        self.network.to(self.device)
        self.gamma = torch.ones(())
        """Norm calibration of the last prospective rows (PILOT's `calibration_term`)."""
        self.trained_on = ExemplarMemory(self.config)
        """Every class's training images, all kept as positions (the prospective old means)."""
        self.losses = EpochLosses()
        self.resolves: dict[str, int] = {}

    def train_experience(self, experience: Experience) -> None:
        generator = self.generator(experience.index)
        known, seen = self.num_seen, experience.num_seen_classes
        old = None
        if known == 0:
            rows = first_rows(seen, self.backbone.feature_dim, generator)
            target = rows
        else:
            rows = self._prospective(experience, known)
            target = rows.clone()
            old = copy.deepcopy(self.network).eval().requires_grad_(False)
        self.network.grow(rows)
        self._train(experience, generator, known, seen, old, target)
        self.num_seen = seen
        train = experience.train
        for label in train.classes():
            self.trained_on.positions[int(label)] = train.indices[train.labels == label]
        self.network.eval()
        backbone = self.network.backbone
        self.select_exemplars(experience.train, backbone, generator, seen)
        if self.config.classifier == "nme":
            self.class_means = self.exemplar_class_means(backbone, experience.train.source, seen)

    def _means(self, view: DatasetView, classes: list[int], what: str) -> torch.Tensor:
        """Each class's normalised mean of normalised features under the current network."""
        self.network.eval()
        features = self.trained_features(self.network.backbone, view, what)
        labels = torch.as_tensor(view.labels)
        return torch.stack([exemplar_mean(features[labels == c]) for c in classes])

    def _old_view(self, source: Any) -> DatasetView:
        """The old classes' images for the prospective means (`old_means`)."""
        memory = self.memory if self.config.old_means == "exemplars" else self.trained_on
        return memory.view(source)

    def _prospective(self, experience: Experience, known: int) -> torch.Tensor:
        """The new classes' initial rows from the old ones (the network before training)."""
        old = list(range(known))
        new = list(range(known, experience.num_seen_classes))
        old_means = self._means(self._old_view(experience.train.source), old, "prospective means")
        new_means = self._means(experience.train, new, "prospective means")
        config, weight = self.config, self.network.head.weight.detach()
        rows, self.gamma = prospective_rows(
            old_means, new_means, weight, config.cost_norm, config.sinkhorn_reg
        )
        return rows.detach().clone()

    def _retrospective(self, experience: Experience, known: int) -> torch.Tensor:
        """The old classes' rows carried back from the current new rows (current network)."""
        source = experience.train.source
        old_means = self._means(self.memory.view(source), list(range(known)), "retrospective")
        new_classes = list(range(known, experience.num_seen_classes))
        new_means = self._means(experience.train, new_classes, "retrospective")
        weight = self.network.head.weight.detach()[known:]
        self.network.train()
        p, reg = self.config.cost_norm, self.config.sinkhorn_reg
        rows = retrospective_rows(new_means, old_means, weight, p, reg) * self.gamma
        return rows.detach().clone()

    def _train(
        self,
        experience: Experience,
        generator: torch.Generator,
        known: int,
        seen: int,
        old: CosineNetwork | None,
        prospective: torch.Tensor,
    ) -> None:
        """lam KD + (1 - lam) CE (+ the transport terms), new images and exemplars, every
        parameter at `lr`."""
        config = self.config
        network = self.network
        views = self.views_with_exemplars(experience)
        lam = known / seen
        steps = math.ceil(sum(len(view.indices) for view in views) / config.batch_size)
        state: dict[str, Any] = {"epoch": 0, "step": 0, "rows": None}
        resolves = 0

        def resolve() -> None:
            nonlocal resolves
            epoch, step = state["epoch"], state["step"]
            if old is not None and epoch >= 1 and step < steps and step % config.resolve_every == 0:
                state["rows"] = self._retrospective(experience, known).to(self.device)
                resolves += 1

        def before_epoch(epoch: int) -> None:
            state["epoch"], state["step"] = epoch, 0
            resolve()

        def after_step() -> None:
            state["step"] += 1
            resolve()

        def loss_fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits, features = network(images)
            loss = F.cross_entropy(logits, labels)
            if old is None:
                return loss
            with torch.no_grad():
                old_logits = old(images)[0]
            t, epoch = config.temperature, state["epoch"]
            kd = distillation_loss(logits[:, :known], old_logits, t)
            loss = lam * kd + (1 - lam) * loss
            if epoch < 1:
                target = torch.softmax(cosine_logits(features, prospective) / t, dim=1)
                term = soft_cross_entropy(torch.log_softmax(logits[:, known:] / t, dim=1), target)
                return loss + config.prospective_weight * prospective_schedule(epoch) * term
            log_probs = torch.log_softmax(cosine_logits(features, state["rows"]) / t, dim=1)
            term = soft_cross_entropy(log_probs, torch.softmax(old_logits / t, dim=1))
            weight = retrospective_schedule(epoch, config.epochs)
            return loss + config.retrospective_weight * weight * term

        prospective = prospective.to(self.device)
        network.train()
        losses = self.fit_views(
            loss_fn,
            [{"params": list(network.parameters()), "lr": config.lr}],
            views,
            config.train_settings(),
            generator,
            f"experience {experience.index}",
            before_epoch=before_epoch,
            after_step=after_step,
        )
        self.losses.record(experience.index, losses)
        self.resolves[str(experience.index)] = resolves
        network.eval()

    def classifier_scores(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)[0][:, : self.num_seen]

    def report(self) -> dict[str, Any]:
        return {
            **self.memory.report(),
            "classifier": self.config.classifier,
            "old_means": self.config.old_means,
            "training_images_kept_as_positions": len(self.trained_on),
            "gamma": float(self.gamma),
            "sigma": float(self.network.head.sigma.detach()),
            "retrospective_plans": self.resolves,
            "epoch_losses": self.losses.report(),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        weights = {f"network.{k}": v for k, v in self.network.state_dict().items()}
        return {
            **weights,
            **self.trained_on.state_dict("trained_on."),
            **self.memory.state_dict(),
            **self.losses.state_dict(),
            "num_seen": torch.tensor(self.num_seen),
            "gamma": self.gamma.detach().clone(),
            "class_means": self.class_means,
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.num_seen = int(state["num_seen"])
        rows = state["network.head.weight"]
        self.network.head.weight = nn.Parameter(torch.zeros_like(rows).to(self.device))
        prefix = "network."
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        self.network.load_state_dict(weights)
        self.trained_on.load_state_dict(state, "trained_on.")
        self.memory.load_state_dict(state)
        self.losses.load_state_dict(state)
        self.gamma = state["gamma"].clone()
        self.class_means = state["class_means"].clone()

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

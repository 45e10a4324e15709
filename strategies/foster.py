"""FOSTER (Wang et al., "FOSTER: Feature Boosting and Compression for Class-Incremental Learning",
ECCV 2022): rehearsal that grows a second backbone for each new task, then compresses the pair
back into one.

Experience 0 fine-tunes one backbone + a linear head with cross-entropy. From experience 1 on:
- boosting: a copy of the current backbone is added and trained on the residual of the frozen
  old one. The head `fc` reads the concatenated features [old | new] (old rows keep their
  weights on the old features; everything else starts as PILOT's `SimpleLinear`); the loss is
  the logit-adjusted cross-entropy CE(logits / w1, y) with class-balanced weights w1 (beta1,
  `cilbench.learn.distillation.class_balanced_weights`: w_c ~ (1 - beta) / (1 - beta^n_c), n_c
  the images of class c trained on), plus CE of an auxiliary head `fe_fc` on the new features
  alone, plus `lambda_okd` x distillation of the old-class logits towards the frozen old
  head on the old features (temperature T). `oofc=ft` trains every row of `fc`; `oofc=az`
  keeps the new classes' weights on the old features at zero. The old backbone and head are
  frozen; new backbone, `fc` and `fe_fc` train.
- compression: a student of one backbone (started from the old backbone and, for the old
  classes, the old head) learns the two-backbone teacher's logits through balanced
  distillation (targets reweighted by beta2's class-balanced weights, `distillation_loss` with
  `class_weights`); it is the network the next experience boosts.
After training, exemplars of the new classes are chosen by herding on the teacher's
concatenated features (shared memory, `cilbench.learn.exemplars`). Prediction: the teacher's
logits (`predict_with=teacher`, what PILOT's trainer evaluates) or the compressed student's
(`predict_with=student`, FOSTER's single-backbone model).

Config: `first_*` (experience 0, PILOT `init_*`), `epochs` (boosting), `compression_epochs`, `lr`,
`weight_decay` (none while compressing), the method's settings and the memory's fields.

Defaults and recipes come from LAMDA-PILOT at 5240714d (`models/foster.py`, FOSTERNet in
`utils/inc_net.py`, `exps/foster.json`, `exps/foster_inr.json`). The authors' repository
(G-U-N/ECCV22-FOSTER, which PILOT's file points to) is not mirrored here and could not be read,
so the method is traced to PILOT's implementation. `pilot` recipes (both streams): 20 epochs
in each phase, lr 1e-3, batch 32, weight decay 5e-4, IN-1k ViT-B/16, 20 exemplars per class.
The `split-fashion-mnist-mini` recipe is a short CPU demo on the stream's EfficientNet-Lite0, not a
reference setting: its first session is iCaRL's measured demo (cross-entropy, SGD lr 0.01, 5
epochs, weight decay 2e-4: first-session losses 0.645 -> 0.355 there) under a cosine schedule;
FOSTER's own run of it was not measured (it did not finish in 8 minutes on the shared CPU).

Where cilbench differs, and why:
- Class counts of the balanced weights: cilbench counts the images each class has in the
  experience's training data (memory + new images). PILOT takes `memory_per_class` (or
  `memory_size // known`) for old classes, 500 for new classes when the data set is named
  "cifar100", and otherwise `DataManager.getlen`, which sums the positions of the class's
  images (`np.sum(np.where(y == c))`) instead of counting them: a huge number, so beta^n = 0.
  With 500 or more images a class both agree to < 1e-8; with few images per class (ImageNet-R's
  small classes, the parity stream) cilbench's weights follow the paper's formula.
- A run reports one accuracy: the teacher's logits by default (PILOT's `_eval_cnn` on
  `self._network`); PILOT also logs the student's ("darknet eval") and an NME curve, which
  cilbench does not offer. `--set predict_with=student` gives the compressed model.
- Heads are drawn from the experience's generator (PILOT: the global seed); the student's unused
  `fe_fc` is not built. Memory: positions, not pixels; herding in float64 (as iCaRL's).
- Augmentation and preprocessing are the run's (`--set augment.*`), not PILOT's transforms.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cilbench.api import RunContext, register_strategy
from cilbench.core.config import NonNegative, Positive, Range
from cilbench.data.sources import DatasetView
from cilbench.data.streams import Experience
from cilbench.engine.recipes import IN1K, PILOT, Recipe
from cilbench.learn.distillation import class_balanced_weights, distillation_loss
from cilbench.learn.exemplars import MemoryConfig
from cilbench.learn.heads import FosterNetwork, linear_head, weight_align
from cilbench.learn.rehearsal import RehearsalStrategy
from cilbench.learn.training import TrainSettings, for_experience

Phase = Literal["first", "boosting", "compression"]


@dataclass(frozen=True)
class FosterConfig(TrainSettings, MemoryConfig):
    """PILOT's `exps/foster.json` as defaults: the shared training settings are the boosting
    phase's; experience 0 and the compression have their own epochs (and learning rate)."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 5e-4
    first_epochs: Annotated[int, Positive()] = 20
    """Epochs of experience 0 (PILOT `init_epochs`)."""
    first_lr: Annotated[float, Positive()] = 1e-3
    """Learning rate of experience 0 (PILOT `init_lr`)."""
    first_weight_decay: Annotated[float | None, NonNegative()] = 5e-4
    """Weight decay on experience 0 (PILOT `init_weight_decay`); None: `weight_decay`."""
    compression_epochs: Annotated[int, Positive()] = 20
    """Epochs of the compression phase (PILOT `compression_epochs`), at `lr`, no weight decay."""
    beta1: Annotated[float, Range(0, 1, high_open=True)] = 0.96
    """Class-balancing beta of the boosting cross-entropy's logit adjustment."""
    beta2: Annotated[float, Range(0, 1, high_open=True)] = 0.97
    """Class-balancing beta of the compression's balanced distillation."""
    temperature: Annotated[float, Positive()] = 2.0
    """Distillation temperature T (PILOT `T`)."""
    lambda_okd: Annotated[float, NonNegative()] = 1.0
    """Weight of the old-logit distillation while boosting."""
    oofc: Literal["ft", "az"] = "ft"
    """ft: every row of the head trains; az: new classes' weights on the old features stay 0."""
    teacher_weight_align: bool = False
    """Rescale the teacher's new-class rows after boosting (PILOT `is_teacher_wa`)."""
    student_weight_align: bool = False
    """Rescale the student's new-class rows after compression (PILOT `is_student_wa`)."""
    weight_align_value: Annotated[float, Positive()] = 1.0
    """PILOT `wa_value`: gamma = mean old norm / mean new norm x value^(old / new classes)."""
    predict_with: Literal["teacher", "student"] = "teacher"
    """teacher: the boosted network (PILOT's evaluated model); student: the compressed one."""
    memory_per_class: int = 20
    num_workers: Annotated[int | None, NonNegative()] = None

    def phase_settings(self, phase: Phase) -> TrainSettings:
        """The phase's epochs, learning rate and weight decay (PILOT: SGD momentum 0.9 and a
        cosine schedule over each phase, the defaults)."""
        base = self.train_settings()
        if phase == "first":
            settings = replace(base, epochs=self.first_epochs, lr=self.first_lr)
            return for_experience(settings, 0, self.first_weight_decay)
        if phase == "compression":
            return replace(base, epochs=self.compression_epochs, weight_decay=0.0)
        return base


def _pilot(config: str, table: str) -> Recipe:
    """LAMDA-PILOT's FOSTER on one stream (both configs are the same but for the stream)."""
    return Recipe(
        {
            "first_epochs": 20, "first_lr": 1e-3, "first_weight_decay": 5e-4, "epochs": 20,
            "compression_epochs": 20, "lr": 1e-3, "batch_size": 32, "weight_decay": 5e-4,
            "beta1": 0.96, "beta2": 0.97, "temperature": 2.0, "lambda_okd": 1.0, "oofc": "ft",
            "teacher_weight_align": False, "student_weight_align": False,
            "weight_align_value": 1.0, "memory_size": 2000, "memory_per_class": 20,
            "selection": "herding",
        },
        PILOT.file(f"exps/{config}", table),
        name="pilot",
        backbone=IN1K,
        notes=MEMORY_NOTE,
    )  # fmt: skip


MEMORY_NOTE = (
    "fixed_memory true, 20 per class (the exps file; PILOT's README says 2000 in total for "
    "CIFAR-100). GPU memory, estimated (tools/parity/foster.py memory; not measured on a GPU): "
    "ViT-B/16, batch 32, 224 px, fp32 weights, SGD momentum: about 6.9 GB while boosting (the "
    "frozen old backbone + a trained copy: weights, gradients, momentum, saved activations "
    "<= 5.5 GB) and 7.3 GB while compressing (two frozen teacher backbones + the trained "
    "student), plus the CUDA context: a 12 GB GPU suffices; bf16 autocast needs less"
)

RECIPES: dict[str, Any] = {
    "split-cifar100": [
        _pilot("foster.json", "LAMDA-PILOT FOSTER, CIFAR B0 Inc10, IN-1k (fixed_memory true)")
    ],
    "split-imagenet-r": [
        _pilot("foster_inr.json", "LAMDA-PILOT FOSTER, IN-R B0 Inc20, IN-1k (fixed_memory true)")
    ],
    "synthetic": {
        "first_epochs": 1, "epochs": 1, "compression_epochs": 1, "batch_size": 16,
        "memory_per_class": 5,
    },
    "split-fashion-mnist-mini": {
        "first_epochs": 5, "epochs": 2, "compression_epochs": 2, "batch_size": 32,
        "first_lr": 0.01, "lr": 0.01, "memory_per_class": 10, "first_weight_decay": 2e-4,
    },
}  # fmt: skip


@register_strategy("foster")
class Foster(RehearsalStrategy):
    """Feature boosting (a new backbone on the residual) and compression (back to one)."""

    Config = FosterConfig
    recipes = RECIPES

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        self.student: FosterNetwork | None = None
        """The single-backbone network the next experience boosts."""
        self.teacher: FosterNetwork | None = None
        """The boosted network of the last experience (None after experience 0: the student)."""
        self.boosted = False
        """Whether the last experience boosted and compressed (every one after the first)."""
        self.losses: dict[str, list[float]] = {}  # per phase of each experience trained here
        self.class_weights: dict[str, list[float]] = {}

    def train_experience(self, experience: Experience) -> None:
        generator = self.generator(experience.index)
        known, seen = self.num_seen, experience.num_seen_classes
        data_views = self.views_with_exemplars(experience)
        if self.student is None:
            backbone = self.backbone.build_model()
            network = FosterNetwork(
                [backbone], self._linear(cast(int, backbone.num_features), seen, generator)
            )
            loss = lambda images, labels: F.cross_entropy(network(images), labels)  # noqa: E731
            self._fit(network, loss, network.parameters(), data_views, "first", experience.index,
                      generator)  # fmt: skip
            self.student, self.teacher = network, None
        else:
            counts = np.bincount(np.concatenate([v.labels for v in data_views]), minlength=seen)
            self.teacher = self._boost(data_views, counts, known, seen, experience.index, generator)
            self.student = self._compress(data_views, counts, known, seen, experience.index,
                                          generator)  # fmt: skip
            self.boosted = True
        self.num_seen = seen
        self._update_memory(experience, generator, seen)
        if self.config.predict_with == "student":
            self.teacher = None

    def _linear(self, dim: int, size: int, generator: torch.Generator) -> nn.Linear:
        return linear_head(dim, size, generator, "kaiming-uniform").to(self.backbone.device)

    def _boost(
        self,
        views: list[DatasetView],
        counts: np.ndarray,
        known: int,
        seen: int,
        index: int,
        generator: torch.Generator,
    ) -> FosterNetwork:
        """The student + a trainable copy of its backbone, trained on the residual."""
        assert self.student is not None
        config, old = self.config, self.student
        frozen = copy.deepcopy(old).requires_grad_(False)
        new_backbone = copy.deepcopy(old.backbones[0]).requires_grad_(True)
        dim = old.dim
        fc = self._linear(2 * dim, seen, generator)
        with torch.no_grad():
            fc.weight[:known, :dim] = old.fc.weight
            fc.bias[:known] = old.fc.bias
            if config.oofc == "az":
                fc.weight[known:, :dim] = 0.0
        teacher = FosterNetwork([frozen.backbones[0], new_backbone], fc)
        teacher.old_fc = frozen.fc
        teacher.fe_fc = self._linear(dim, seen, generator)
        if config.oofc == "az":
            mask = torch.ones_like(fc.weight)
            mask[known:, :dim] = 0.0
            fc.weight.register_hook(lambda grad: grad * mask)
        weights = class_balanced_weights(counts, config.beta1).to(self.backbone.device)
        self.class_weights[f"{index}.boosting"] = weights.tolist()

        def loss_fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits, fe_logits, old_logits = teacher.boosting_outputs(images)
            loss = F.cross_entropy(logits / weights, labels) + F.cross_entropy(fe_logits, labels)
            kd = distillation_loss(logits[:, :known], old_logits, config.temperature)
            return loss + config.lambda_okd * kd

        trained = [*new_backbone.parameters(), *fc.parameters(), *teacher.fe_fc.parameters()]
        self._fit(teacher, loss_fn, trained, views, "boosting", index, generator)
        if config.teacher_weight_align:
            weight_align(teacher.fc, seen - known, config.weight_align_value)
        return teacher

    def _compress(
        self,
        views: list[DatasetView],
        counts: np.ndarray,
        known: int,
        seen: int,
        index: int,
        generator: torch.Generator,
    ) -> FosterNetwork:
        """One backbone (from the teacher's old one) distilled from the teacher's logits."""
        teacher, config = self.teacher, self.config
        assert teacher is not None and teacher.old_fc is not None
        backbone = copy.deepcopy(teacher.backbones[0]).requires_grad_(True)
        fc = self._linear(teacher.dim, seen, generator)
        with torch.no_grad():
            fc.weight[:known] = teacher.old_fc.weight
            fc.bias[:known] = teacher.old_fc.bias
        student = FosterNetwork([backbone], fc)
        weights = class_balanced_weights(counts, config.beta2).to(self.backbone.device)
        self.class_weights[f"{index}.compression"] = weights.tolist()
        teacher.eval()

        def loss_fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                targets = teacher(images)
            return distillation_loss(student(images), targets, config.temperature, weights)

        self._fit(student, loss_fn, student.parameters(), views, "compression", index, generator)
        if config.student_weight_align:
            weight_align(student.fc, seen - known, config.weight_align_value)
        return student

    def _fit(
        self,
        network: FosterNetwork,
        loss_fn: Callable,
        parameters: Any,
        views: list[DatasetView],
        phase: Phase,
        index: int,
        generator: torch.Generator,
    ) -> None:
        network.train()
        self.losses[f"{index}.{phase}"] = self.fit_views(
            loss_fn,
            [{"params": list(parameters)}],
            views,
            self.config.phase_settings(phase),
            generator,
            f"experience {index}, {phase}",
        )
        network.eval()

    def _update_memory(self, experience: Experience, generator: torch.Generator, seen: int) -> None:
        """Shrink old classes to the quota, herd the new classes' exemplars on the teacher's
        concatenated features (PILOT `build_rehearsal_memory` on its `_network`)."""
        network = self.teacher or self.student
        assert network is not None
        network.eval()
        self.select_exemplars(experience.train, network.features, generator, seen)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        network = self.teacher if self.config.predict_with == "teacher" else None
        network = network or self.student
        assert network is not None
        network.eval()
        return network(images)[:, : self.num_seen]

    def report(self) -> dict[str, Any]:
        return {
            **self.memory.report(),
            "predict_with": self.config.predict_with,
            "epoch_losses": self.losses,
            "class_weights": self.class_weights,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {
            **self.memory.state_dict(),
            "num_seen": torch.tensor(self.num_seen),
            "boosted": torch.tensor(self.boosted),
        }
        for name in ("student", "teacher"):
            network = getattr(self, name)
            if network is not None:
                state[f"{name}.num_backbones"] = torch.tensor(len(network.backbones))
                weights = network.state_dict()  # fc, backbones (the heads of boosting dropped)
                state.update({f"{name}.{k}": v for k, v in weights.items() if "_fc." not in k})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.memory.load_state_dict(state)
        self.num_seen = int(state["num_seen"])
        self.boosted = bool(state["boosted"])
        self.student = self.teacher = None
        for name in ("student", "teacher"):
            if f"{name}.num_backbones" not in state:
                continue
            prefix = f"{name}."
            weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            count = int(weights.pop("num_backbones"))
            rows, columns = weights["fc.weight"].shape
            backbones = [self.backbone.build_model() for _ in range(count)]
            fc = nn.Linear(columns, rows).to(self.backbone.device)
            network = FosterNetwork(backbones, fc)
            network.load_state_dict(weights)
            setattr(self, name, network.requires_grad_(False).eval())

    def trainable_parameters(self) -> int:
        """Parameters trained in the last experience: after experience 0 the backbone and head;
        later the boosted backbone, `fc` and `fe_fc`, then the student's backbone and head."""
        if self.student is None:
            return 0
        backbone = sum(p.numel() for p in self.student.backbones[0].parameters())
        dim, seen = self.student.dim, self.num_seen
        if not self.boosted:
            return backbone + (dim + 1) * seen
        return 2 * backbone + (2 * dim + 1) * seen + 2 * (dim + 1) * seen

"""DUCT: dual consolidation, task-vector merging of the backbone and transport of the classifier.

Zhou et al., "Dual Consolidation for Pre-Trained Model-Based Domain-Incremental Learning" (CVPR
2025). The authors' repository is not mirrored here; this follows LAMDA-PILOT's class-incremental
version (`models/duct.py`, 5240714d), which its header says is "slightly modified to ensure
compatibility with CIL". A copy of the backbone and one cosine classifier (sigma * cos, one
weight row per class, a shared learnable sigma) over all seen classes.

Training task t (the reference's steps, in its order):
1. The backbone is reset to the pre-trained weights theta_0 (the classifier is kept); the new
   classes' rows are added, uniform(-1/sqrt D, 1/sqrt D) at task 0 and zero afterwards (the
   reference's `update_fc`). Each new class's mean feature under theta_0 (training images, test
   preprocessing) is stored: all stored means live in the pre-trained feature space.
2. Fine-tuning: cross-entropy over task t's logits (older classes' logits left out), SGD momentum
   0.9 with weight decay; the classifier (all rows and sigma) at `lr`, the backbone at
   `lr * backbone_lr_scale`; torch's `ConstantLR` with its defaults (lr / 3 for epochs 0-4).
3. Backbone merge: with theta_t the fine-tuned weights and s_t the mean over the new classes of
   the cosine between a class's theta_0 mean and its theta_t mean, the running task-vector sum
   becomes `merged += (theta_t - theta_0) * merge_scalar * s_t`, and the backbone
   `theta_0 + merged` (every floating-point tensor of the backbone's state).
4. Re-training: the classifier alone on the merged backbone, `retrain_epochs` epochs, same loss,
   optimiser and schedule.
5. t >= 1, classifier transport: for every older task k, the cost between task t's and task k's
   stored class means is their Euclidean distance; the entropic plan P (uniform marginals,
   `ot.sinkhorn` with `ot_reg`) carries the new rows W_t to the old classes, and
   `W_k <- (1 - head_merge_ratio) W_k + head_merge_ratio * P^T W_t`. P's entries sum to 1, so
   P^T W_t is a 1/|task t|-scaled average of new rows (as in the reference).
Prediction: the classifier's logits on the merged backbone.

Config: `epochs`, `lr`, `backbone_lr_scale` (`bcb_lr_scale`), `momentum`, `weight_decay`,
`batch_size`, `schedule`: fine-tuning; `retrain_epochs` (`epc_re`), `retrain_lr`; `merge_scalar`,
`head_merge_ratio`, `ot_reg`; `num_workers`. Defaults: LAMDA-PILOT `exps/duct.json` (CIFAR B0
Inc10); `exps/duct_inr.json` (ImageNet-R B0 Inc20) has the same values. Recipes (`cilbench
recipes duct`): `pilot` for split-cifar100 and split-imagenet-r (IN-1k ViT). No `paper` recipe:
the paper is domain-incremental and its repository is not mirrored.

Where cilbench differs, and why:
- `retrain_lr` None (default) re-trains at `lr`, which is what the reference's optimiser gets:
  its `lr_re` (1e-3 in both configs) is passed as SGD's default lr, which the classifier's
  parameter group overrides with its own (`lrate`). Set it to re-train at another rate.
- The backbone's features of the fine-tuned model for s_t use test preprocessing; the reference
  takes them through its training transforms (random augmentation), which would make s_t a
  random draw. With `augment.preset=none` (the parity harness) the two are the same.
- Class means are float64 averages of float32 features (the reference: numpy's float32 mean).
  The plan's marginals are float32 1/n and the cost float64, as in the reference.
- Task ranges come from the experiences' class counts; the reference indexes classes by
  `increment` alone (wrong when the first task's size differs). Only class-incremental streams.
- A config value of 0 means 0: the reference falls back to its code defaults for a falsy
  `merge_scalar` (0.99), `head_merge_ratio` (0.5), `ot_reg` (0.02) or `epc_re` (5).
- Training randomness (data order, task-0 rows) comes from the experience's generator; the
  reference also evaluates the test set every 5 epochs (no effect beyond RNG use).
Per-task accuracies against PILOT's own learner: `tools/parity/duct.py`, `duct-results.md`
(PILOT's learner cannot run at 5240714d without a repair the harness makes: its
`_compute_class_mean` is nested inside another method).

Noticed in the reference, kept: a zero row's first SGD step goes through `F.normalize`'s 1 / eps
(1e12) gradient, so from task 1 on the new rows reach norms ~1e9 while task 0's stay ~0.6, and
the transport then gives task 0's rows the direction of the carried new rows (with two classes a
task the two new rows are exact opposites and old and new classes tie; `duct-results.md`). With
`ot_reg` 0.02, `exp(-cost / reg)` underflows for class means more than ~15 apart; POT then stops
with a warning and returns its last finite iterate (its first: the kernel / n^2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import ot
import torch
import torch.nn.functional as F
from torch import nn

from cilbench.api import BaseStrategy, RunContext, register_strategy
from cilbench.core.config import NonNegative, Positive, Range
from cilbench.core.errors import CilbenchError
from cilbench.data.augment import training_data
from cilbench.data.sources import loader_workers
from cilbench.data.streams import Experience
from cilbench.engine.recipes import IN1K, PILOT, Recipe, vit_demo_recipe
from cilbench.features import extract_features
from cilbench.learn.first_session import CosineHead
from cilbench.learn.prototypes import class_means_of
from cilbench.learn.training import Schedule, TrainSettings, fit, head_and_backbone_groups


@dataclass(frozen=True)
class DuctConfig:
    """DUCT hyper-parameters (defaults: LAMDA-PILOT exps/duct.json and models/duct.py)."""

    epochs: Annotated[int, Positive()] = 10
    lr: Annotated[float, NonNegative()] = 0.1
    """0 keeps backbone and classifier as they start (the parity harness's deterministic check)."""
    backbone_lr_scale: Annotated[float, NonNegative()] = 0.01
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9
    weight_decay: Annotated[float, NonNegative()] = 5e-4
    batch_size: Annotated[int, Positive()] = 128
    schedule: Literal["constantlr-default", "constant", "cosine"] = "constantlr-default"
    retrain_epochs: Annotated[int, NonNegative()] = 5
    retrain_lr: Annotated[float | None, NonNegative()] = None
    """None: `lr`, as the reference's optimiser (see the module docstring)."""
    merge_scalar: Annotated[float, NonNegative()] = 0.25
    head_merge_ratio: Annotated[float, Range(0, 1)] = 0.25
    ot_reg: Annotated[float, Positive()] = 0.02
    num_workers: Annotated[int | None, NonNegative()] = None

    def train_settings(self, epochs: int | None = None) -> TrainSettings:
        """SGD with momentum and weight decay at `lr` (a group may set its own)."""
        schedule: Schedule = self.schedule
        return TrainSettings(
            epochs=self.epochs if epochs is None else epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule=schedule,
        )


def merge_task_vector(
    merged: dict[str, torch.Tensor],
    pretrained: Mapping[str, torch.Tensor],
    trained: Mapping[str, torch.Tensor],
    scalar: float,
    similarity: float,
) -> dict[str, torch.Tensor]:
    """Add `(trained - pretrained) * scalar * similarity` to the running sum `merged` (in place;
    floating-point tensors only, created at zero) and return the weights `merged + pretrained`
    (other tensors: `pretrained`'s)."""
    weights = {}
    for name, start in pretrained.items():
        if not start.is_floating_point():
            weights[name] = start
            continue
        total = merged.setdefault(name, torch.zeros_like(start))
        total += (trained[name] - start) * scalar * similarity
        weights[name] = total + start
    return weights


def transport_plan(source: torch.Tensor, target: torch.Tensor, reg: float) -> torch.Tensor:
    """Sinkhorn plan (float64, rows: `source` classes, columns: `target` classes) between
    uniform marginals under the Euclidean distance of the class means `source` and `target`."""
    cost = torch.cdist(source.double(), target.double(), p=2)
    a = torch.ones(len(source), device=cost.device) / len(source)
    b = torch.ones(len(target), device=cost.device) / len(target)
    return ot.sinkhorn(a, b, cost, reg)


def transport_rows(
    old: torch.Tensor, new: torch.Tensor, plan: torch.Tensor, ratio: float
) -> torch.Tensor:
    """Old classifier rows pulled toward the new rows carried by `plan` (new x old):
    `(1 - ratio) old + ratio * plan^T new`."""
    moved = (plan.T @ new.double()).to(old.dtype)
    return (1 - ratio) * old + ratio * moved


class CosineNetwork(nn.Module):
    """A trainable backbone followed by a growing cosine classifier."""

    def __init__(self, backbone: nn.Module, dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = CosineHead(dim, 0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def _stream_recipe(config: str, increment: int, protocol: str) -> Recipe:
    """LAMDA-PILOT's exps/<config>: B0, `increment` classes a task, IN-1k ViT; the Config
    defaults are its values."""
    return Recipe(
        {"stream.init_classes": 0, "stream.increment": increment},
        PILOT.file(f"exps/{config}", f"LAMDA-PILOT, {protocol}, IN-1k (no published curve)"),
        name="pilot",
        backbone=IN1K,
    )


@register_strategy("duct")
class DUCT(BaseStrategy):
    """Per-task fine-tuning merged as task vectors; old classifier rows moved by optimal
    transport between class means."""

    Config = DuctConfig
    frozen_backbone = False
    class_incremental_only = True
    recipes: ClassVar[Mapping[str, Any]] = {
        "synthetic": {"epochs": 1, "batch_size": 16, "retrain_epochs": 1},
        "split-fashion-mnist-mini": vit_demo_recipe(
            {"epochs": 2, "batch_size": 16, "lr": 0.1, "retrain_epochs": 2}
        ),
        "split-cifar100": [_stream_recipe("duct.json", 10, "CIFAR B0 Inc10")],
        "split-imagenet-r": [_stream_recipe("duct_inr.json", 20, "IN-R B0 Inc20")],
    }

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        self.network = CosineNetwork(self.backbone.build_model(), self.backbone.feature_dim)
        self.network.to(self.device)
        self.pretrained = {
            k: v.detach().clone() for k, v in self.network.backbone.state_dict().items()
        }
        self.merged: dict[str, torch.Tensor] = {}
        self.means = torch.zeros(0, self.backbone.feature_dim)
        self.sizes: list[int] = []
        self.similarities: list[float] = []
        self.losses: list[list[float]] = []

    @property
    def num_seen(self) -> int:
        return sum(self.sizes)

    def train_experience(self, experience: Experience) -> None:
        known = self.num_seen
        new = list(range(known, experience.num_seen_classes))
        if sorted(experience.classes) != new:
            raise CilbenchError(
                f"duct needs only new classes in every experience (class-incremental streams); "
                f"experience {experience.index} has classes {experience.classes}, {known} known."
            )
        generator = self.generator(experience.index)
        self.network.backbone.load_state_dict(self.pretrained)
        self._grow_head(len(new), generator)
        features, _ = self.features.get(experience.train)
        labels = torch.as_tensor(experience.train.labels, dtype=torch.long)
        start = class_means_of(features.float(), labels, new)
        self.means = torch.cat([self.means, start])
        data, prepare = training_data(self.backbone, [experience.train], self.context.augmentation)
        groups = head_and_backbone_groups(
            self.network.head.parameters(), self.network.backbone, self.config.lr,
            self.config.backbone_lr_scale,
        )  # fmt: skip
        epochs = self.config.epochs
        losses = self._fit(groups, data, prepare, generator, known, epochs, experience)
        after = class_means_of(self._tuned_features(experience), labels, new)
        similarity = float(F.cosine_similarity(start.double(), after.double(), dim=1).mean())
        self._merge(similarity)
        self.sizes.append(len(new))
        if self.config.retrain_epochs > 0:
            lr = self.config.lr if self.config.retrain_lr is None else self.config.retrain_lr
            head = [{"params": self.network.head.parameters(), "lr": lr}]
            epochs = self.config.retrain_epochs
            self.network.backbone.requires_grad_(False)  # not in the optimiser: spare its grads
            try:
                losses += self._fit(head, data, prepare, generator, known, epochs, experience)
            finally:
                self.network.backbone.requires_grad_(True)
        self._transport()
        self.similarities.append(similarity)
        self.losses.append(losses)

    def _grow_head(self, count: int, generator: torch.Generator) -> None:
        """New rows: uniform(-1/sqrt D, 1/sqrt D) at task 0, zero afterwards (as the reference)."""
        head, dim = self.network.head, self.backbone.feature_dim
        if self.sizes:
            rows = torch.zeros(count, dim)
        else:
            bound = 1.0 / math.sqrt(dim)
            rows = (torch.rand(count, dim, generator=generator) * 2 - 1) * bound
        weight = torch.cat([head.weight.detach(), rows.to(head.weight)])
        head.weight = nn.Parameter(weight)

    def _fit(
        self,
        groups: list[dict[str, Any]],
        data: Any,
        prepare: Any,
        generator: torch.Generator,
        known: int,
        epochs: int,
        experience: Experience,
    ) -> list[float]:
        """Cross-entropy over the new classes' logits; `groups` say what trains."""
        network = self.network
        stage = "fine-tuning" if len(groups) > 1 else "re-training"

        def loss_fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(network(images)[:, known:], labels - known)

        network.train()
        losses = fit(
            loss_fn, groups, data, prepare, self.config.train_settings(epochs), generator,
            device=self.device, progress=self.progress, num_workers=self._workers(),
            description=f"duct: {stage}, experience {experience.index}",
            precision=self.backbone.precision, compile=self.backbone.compile,
        )  # fmt: skip
        network.eval()
        return losses

    def _workers(self) -> int | None:
        configured = self.config.num_workers
        return configured if configured is not None else self.context.num_workers

    def _tuned_features(self, experience: Experience) -> torch.Tensor:
        """Features of the experience's training images under the fine-tuned backbone."""
        view = experience.train
        return extract_features(
            self.network.backbone,
            self.backbone,
            view.with_transform(self.backbone.preprocessing.sample_transform()),
            batch_size=self.config.batch_size,
            num_workers=loader_workers(self._workers(), [view.source], self.device),
            progress=self.progress,
            description="duct: fine-tuned class means",
        )

    def _merge(self, similarity: float) -> None:
        """Add this task's scaled task vector; the backbone becomes theta_0 + the sum."""
        backbone = self.network.backbone
        with torch.no_grad():
            trained = {k: v.detach() for k, v in backbone.state_dict().items()}
            scalar = self.config.merge_scalar
            weights = merge_task_vector(self.merged, self.pretrained, trained, scalar, similarity)
            backbone.load_state_dict(weights)

    def _transport(self) -> None:
        """Move every older task's rows toward the newest task's (no-op at task 0)."""
        if len(self.sizes) < 2:
            return
        head, ends = self.network.head, torch.cumsum(torch.tensor([0, *self.sizes]), 0).tolist()
        new = slice(ends[-2], ends[-1])
        means = self.means.to(self.device)
        with torch.no_grad():
            for k in range(len(self.sizes) - 1):
                old = slice(ends[k], ends[k + 1])
                plan = transport_plan(means[new], means[old], self.config.ot_reg)
                rows = transport_rows(
                    head.weight[old], head.weight[new], plan, self.config.head_merge_ratio
                )
                head.weight[old] = rows

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        self.network.eval()
        with torch.no_grad():
            return self.network(images)[:, : self.num_seen]

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"merged.{k}": v for k, v in self.merged.items()}
        return {
            **state,
            "head.weight": self.network.head.weight.detach(),
            "head.sigma": self.network.head.sigma.detach(),
            "means": self.means,
            "sizes": torch.tensor(self.sizes, dtype=torch.long),
            "similarities": torch.tensor(self.similarities, dtype=torch.float64),
            "losses": torch.tensor(self.losses, dtype=torch.float64),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.merged = {k[7:]: v.clone() for k, v in state.items() if k.startswith("merged.")}
        head = self.network.head
        head.weight = nn.Parameter(state["head.weight"].clone().to(self.device))
        head.sigma = nn.Parameter(state["head.sigma"].clone().to(self.device))
        self.means = state["means"].float().clone()
        self.sizes = [int(s) for s in state["sizes"]]
        self.similarities = state["similarities"].tolist()
        self.losses = state["losses"].tolist()
        weights = dict(self.pretrained)
        for name, total in self.merged.items():
            weights[name] = self.pretrained[name] + total.to(self.pretrained[name])
        self.network.backbone.load_state_dict(weights)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    def report(self) -> dict[str, Any]:
        return {"merge_similarities": self.similarities, "losses": self.losses}

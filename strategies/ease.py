"""EASE: expandable subspace ensemble, one adapter per task on a frozen ViT.

Zhou et al., "Expandable Subspace Ensemble for Pre-Trained Model-Based Class-Incremental Learning"
(CVPR 2024); follows the authors' code (sun-hailong/CVPR24-Ease, whose `models/ease.py`,
`backbone/vit_ease.py` and the EASE part of `backbone/linears.py` equal LAMDA-PILOT's). Each task
trains a new AdaptFormer adapter set on the frozen ViT (with a cosine head over that task's classes
only) and then freezes it; an image's feature is the concatenation of the ViT's features under
every task's adapters (one subspace per task). Classes are prototypes (mean feature of the training
images, test preprocessing) in every subspace; an old class has no data when a later subspace
appears, so its prototype there is synthesised from class similarity: softmax over the cosines
between its prototype and newer classes' prototypes in its own subspace weights those classes'
prototypes in the new subspace (`cilbench.learn.prototypes.transfer_prototypes`). Nothing is stored
of old images.

Prediction (`reweight=True`): for a class of task i, the sum over subspaces of the cosine between
the image's and the class's subspace features, weighted 1 in subspace i and `alpha / T` in every
other task subspace (T: index of the latest task), plus `beta` times the cosine in the pre-trained
model's own features when `use_init_ptm` adds them as a subspace. `reweight=False`: one cosine
between the concatenated vectors.

Config (training fields: `cilbench.learn.first_session.FirstSessionConfig`, run for every task):
- `epochs`, `lr`, `batch_size`, `weight_decay`, `min_lr`, `optimizer`, `momentum`: each task's
  adapter training (cosine schedule to `min_lr`); `adapter_bottleneck` (the reference's `ffn_num`),
  `adapter_scale` (0.1), `adapter_dropout` (0.1): the adapter;
- `alpha`: the weight of a class's cosine in other tasks' subspaces (divided by T);
- `beta`, `use_init_ptm`: the pre-trained features as an extra subspace, weighted `beta`;
- `recompute_similarity` (`recalc_sim`): after each task, re-synthesise an old class's prototype in
  every later subspace k from all classes of tasks k..T (True, every reference config), or only
  fill the newest subspace from the newest task's classes (False);
- `reweight` (`use_reweight`): the subspace reweighting above (True) or one plain cosine.

Defaults are the authors' `exps/ease_cifar.json` (= LAMDA-PILOT `exps/ease.json`): 20 epochs, SGD
lr 0.025 momentum 0.9, batch 48, weight decay 5e-4, cosine to 0, bottleneck 64, alpha 0.1, beta 0,
no pre-trained subspace. Recipes (`cilbench recipes ease`): `paper` from the authors' IN-21k
configs, `paper-in1k` from their IN-1k ones, `pilot` from LAMDA-PILOT's `exps/ease*.json` (IN-1k;
the same values as `paper-in1k`), for CIFAR-100 (B0 Inc5), ImageNet-R (B0 Inc20), VTAB (B0
Inc10), CUB-200 (B0 Inc10), ImageNet-A (B0 Inc20) and ObjectNet (B0 Inc10); where an IN-1k file's
values differ from its IN-21k twin's (CUB: lr, batch, alpha, the pre-trained subspace; ObjectNet:
epochs, lr, Adam, alpha), `paper-in1k` has the IN-1k file's. The `vit-demo` recipe is cilbench's
own CPU demo on split-fashion-mnist-mini.

Where cilbench differs, and why:
- Class ranges come from the stream's experiences, not from `init_cls`/`increment` arithmetic, so
  unequal task sizes work; the reference's head `sigma` (a scale of 1 that never trains) is left
  out.
- Each task's adapted model shares the frozen ViT's parameter tensors (only its adapters are its
  own) and its features are cached per subspace (`AdaptedBranch`); the reference runs all adapters
  over every image at every evaluation. Same features, less time.
- Only the reference configs' choices are implemented: `use_old_data` (exemplar prototypes),
  `use_diagonal` and `moni_adam` (ablations, and the OmniBenchmark configs, which set
  `moni_adam` and `adapter_num` 1: hence no split-omnibenchmark recipe) are not;
  `later_lr`/`later_epochs` equal the first task's in every config and have no field.
- Training randomness (adapter and head initialisation, shuffling, dropout) comes from the
  experience's generator, not torch's global RNG. Per-task accuracies agree with LAMDA-PILOT's own
  learner within seed noise on identical inputs (`tools/parity/ease.py`, `ease-results.md`).
- Only class-incremental streams: an experience must bring new classes only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from cilbench.api import BaseStrategy, RunContext, register_strategy
from cilbench.core.config import NonNegative
from cilbench.core.errors import CilbenchError
from cilbench.data.sources import DatasetView
from cilbench.data.streams import Experience
from cilbench.engine.recipes import Recipe, Repository, lamda_recipes, vit_demo_recipe
from cilbench.learn.first_session import AdaptedBranch, FirstSessionConfig
from cilbench.learn.prototypes import class_means_of, transfer_prototypes

EASE_CODE = Repository("sun-hailong/CVPR24-Ease", "6d67508ed8b7c4d23350ed4eb28c123914b40ae3")


@dataclass(frozen=True)
class EaseConfig(FirstSessionConfig):
    """EASE hyper-parameters (defaults: the authors' exps/ease_cifar.json)."""

    peft: Literal["adapter"] = "adapter"
    lr: Annotated[float, NonNegative()] = 0.025
    """0 keeps every adapter at its zero output (the parity harness's deterministic check)."""
    alpha: Annotated[float, NonNegative()] = 0.1
    beta: Annotated[float, NonNegative()] = 0.0
    use_init_ptm: bool = False
    recompute_similarity: bool = True
    reweight: bool = True


def _recipe(
    config: str,
    epochs: int,
    lr: float,
    batch: int,
    decay: float,
    protocol: str,
    in1k: Mapping[str, Any] | None = None,
    **extra: Any,
) -> list[Recipe]:
    """The authors' IN-21k and IN-1k configs for one data set (`in1k`: the IN-1k file's values
    where they differ), and PILOT's IN-1k twin if any."""
    settings = {"epochs": epochs, "lr": lr, "batch_size": batch, "weight_decay": decay, **extra}
    pilot = {"ease_cifar": "ease.json", "ease_inr": "ease_inr.json"}.get(config, "")
    paper = "EASE (CVPR 2024) repository log"
    return lamda_recipes(EASE_CODE, config, settings, paper, protocol, pilot, in1k=in1k)


def _b0(increment: int) -> dict[str, Any]:
    """B0 Inc`increment`: every task, the first included, holds `increment` classes."""
    return {"stream.increment": increment, "stream.init_classes": 0}


@register_strategy("ease")
class EASE(BaseStrategy):
    """One frozen adapter set per task; prototypes per subspace, old ones synthesised."""

    Config = EaseConfig
    predicts_from_features = True
    frozen_backbone = True
    class_incremental_only = True
    recipes: ClassVar[Mapping[str, Any]] = {
        "synthetic": {"epochs": 1, "batch_size": 16},
        "split-fashion-mnist-mini": vit_demo_recipe({"epochs": 2, "batch_size": 16, "lr": 0.1}),
        "split-cifar100": _recipe(
            "ease_cifar", 20, 0.025, 48, 5e-4, "CIFAR B0 Inc5",
            **_b0(5),
        ),
        "split-imagenet-r": _recipe(
            "ease_inr", 20, 0.05, 16, 5e-3, "IN-R B0 Inc20",
            **_b0(20),
        ),
        "vtab": _recipe(
            "ease_vtab", 45, 0.03, 16, 5e-3, "VTAB B0 Inc10", adapter_bottleneck=16,
            **_b0(10),
        ),
        "split-cub200": _recipe(
            "ease_cub", 20, 0.008, 32, 5e-4, "CUB B0 Inc10", alpha=0.05,
            in1k={"lr": 0.005, "batch_size": 16, "alpha": 0.005, "use_init_ptm": True,
                  "beta": 1.0},
            **_b0(10),
        ),
        "split-imagenet-a": _recipe(
            "ease_ina", 20, 0.05, 32, 5e-3, "IN-A B0 Inc20",
            **_b0(20),
        ),
        "split-objectnet": _recipe(
            "ease_obj", 25, 0.05, 48, 5e-3, "ObjectNet B0 Inc10", alpha=0.2,
            in1k={"epochs": 20, "lr": 0.03, "optimizer": "adam", "alpha": 0.1},
            **_b0(10),
        ),
    }  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.branches: list[AdaptedBranch] = []
        self.prototypes = torch.zeros(0, 0, 0)
        """(classes, subspaces, D): real or synthesised prototypes of every seen class."""
        self.task_of = torch.zeros(0, dtype=torch.long)

    @property
    def offset(self) -> int:
        """Subspace index of task 0's adapters (1 when the pre-trained features come first)."""
        return int(self.config.use_init_ptm)

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        self._new_branch(0).check()  # fail before any data is read unless the backbone is a ViT

    def _new_branch(self, task: int) -> AdaptedBranch:
        settings = self.config.peft_settings()
        return AdaptedBranch(self.context, settings, f"ease-task{task}", share_frozen=True)

    def train_experience(self, experience: Experience) -> None:
        known, task = len(self.task_of), len(self.branches)
        new = list(range(known, experience.num_seen_classes))
        if sorted(experience.classes) != new:
            raise CilbenchError(
                f"ease needs only new classes in every experience (class-incremental streams); "
                f"experience {experience.index} has classes {experience.classes}, {known} known."
            )
        branch = self._new_branch(task)
        branch.train(experience, self.config.train_settings(), self.generator(task), known=known)
        self.branches.append(branch)
        self._add_prototypes(experience.train, new)
        self.task_of = torch.cat([self.task_of, torch.full((len(new),), task)])
        self.prototypes = synthesise(
            self.prototypes, self.task_of, self.offset, self.config.recompute_similarity
        )

    def _subspace_features(self, view: DatasetView) -> list[tuple[torch.Tensor, torch.Tensor]]:
        frozen = [self.features.get(view)] if self.config.use_init_ptm else []
        return frozen + [branch.features(view) for branch in self.branches]

    def _add_prototypes(self, view: DatasetView, new: list[int]) -> None:
        """Real prototypes of the new classes in every subspace; zeros for old classes in the
        new subspace until `synthesise` fills them."""
        means = [class_means_of(f, y, new) for f, y in self._subspace_features(view)]
        fresh = torch.stack(means, dim=1)  # (new, subspaces, D)
        old = self.prototypes
        if old.numel():
            old = torch.cat([old, torch.zeros(len(old), 1, old.shape[2])], dim=1)
        else:
            old = torch.zeros(0, *fresh.shape[1:])
        self.prototypes = torch.cat([old, fresh])

    def features_of(self, view: DatasetView) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self._subspace_features(view)
        return torch.cat([f.float() for f, _ in parts], dim=1), parts[0][1]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            parts = [self.backbone.forward_features(images)] if self.config.use_init_ptm else []
            parts += [branch.forward(images) for branch in self.branches]
            return self.predict_features(torch.cat([p.float() for p in parts], dim=1))

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        """Scores (B, seen classes): subspace cosines, reweighted (or one concatenated cosine)."""
        prototypes = self.prototypes.to(features.device)
        classes, subspaces, dim = prototypes.shape
        if not self.config.reweight:
            flat = F.normalize(prototypes.reshape(classes, -1), dim=1)
            return F.normalize(features.float(), dim=1) @ flat.T
        x = F.normalize(features.float().reshape(len(features), subspaces, dim), dim=2)
        cosines = torch.einsum("bsd,csd->bcs", x, F.normalize(prototypes, dim=2))
        weights = subspace_weights(self.task_of, subspaces, self.offset, self.config.alpha,
                                   self.config.beta).to(features.device)  # fmt: skip
        return (cosines * weights).sum(dim=2)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"prototypes": self.prototypes, "task_of": self.task_of}
        for k, branch in enumerate(self.branches):
            state.update(branch.state_dict(prefix=f"adapter{k}."))
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.prototypes = state["prototypes"].float().clone()
        self.task_of = state["task_of"].long().clone()
        tasks = int(self.task_of.max()) + 1 if len(self.task_of) else 0
        self.branches = []
        for k in range(tasks):
            branch = self._new_branch(k)
            branch.load_state_dict(state, prefix=f"adapter{k}.")
            self.branches.append(branch)

    def trainable_parameters(self) -> int:
        return sum(branch.trained_parameters for branch in self.branches)

    def report(self) -> dict[str, Any]:
        return {
            "adapter_losses": [branch.losses for branch in self.branches],
            "adapted_images_forwarded": sum(
                b.store.images_forwarded for b in self.branches if b.store is not None
            ),
        }


def synthesise(
    prototypes: torch.Tensor, task_of: torch.Tensor, offset: int, recompute: bool
) -> torch.Tensor:
    """Fill old classes' prototypes in later task subspaces (EASE's semantic-guided synthesis).

    `prototypes` (C, S, D): class c of task i has real prototypes in subspaces 0..i+offset; T is
    the latest task. `recompute`: for every old task i and every later task subspace k, from the
    classes of tasks k..T (compared in subspace i); else only subspace T, from task T's classes.
    """
    result = prototypes.clone()
    latest = int(task_of.max())
    for i in range(latest):
        old = task_of == i
        for k in range(i + 1, latest + 1) if recompute else [latest]:
            anchors = task_of >= k if recompute else task_of == latest
            here, there = i + offset, k + offset
            result[old, there] = transfer_prototypes(
                prototypes[old, here], prototypes[anchors, here], prototypes[anchors, there]
            )
    return result


def subspace_weights(
    task_of: torch.Tensor, subspaces: int, offset: int, alpha: float, beta: float
) -> torch.Tensor:
    """(C, S) weight of each class's cosine in each subspace: 1 in its own task's subspace,
    alpha / T in the other task subspaces, beta in the pre-trained one (offset 1)."""
    latest = subspaces - offset - 1
    weights = torch.full((len(task_of), subspaces), alpha / max(latest, 1))
    weights[torch.arange(len(task_of)), task_of + offset] = 1.0
    if offset:
        weights[:, 0] = beta
    return weights

"""FeCAM: Mahalanobis distance to class means with shrunk, normalised per-class covariances.

Goswami et al., "FeCAM: Exploiting the Heterogeneity of Class Distributions in Exemplar-Free
Continual Learning" (NeurIPS 2023). Features come from a backbone that is frozen after the first
experience (optionally adapted on it first, as in APER/ADAM); every class keeps the mean and the
covariance of its training features, and an image goes to the class with the smallest
Mahalanobis distance under that class's shrunk and normalised covariance. Nothing trains after
experience 0, and old classes' statistics never change.

Config (first-session fields: `cilbench.learn.first_session.FirstSessionConfig`; covariance steps:
`cilbench.learn.mahalanobis`):
- `peft`: the first-session PEFT variant (`none`: frozen pre-trained features, no training);
- `shrink1`, `shrink2`, `shrink_mode`: covariance shrinkage. `absolute` adds shrink1 to the
  diagonal and shrink2 off it; `relative` multiplies them by the mean diagonal / mean non-zero
  off-diagonal entry first;
- `normalise`: `correlation` (C_ij / sqrt(C_ii C_jj)), `corrcoef` (`torch.corrcoef(C)`) or `none`;
- `feature_norm`: `distance` keeps raw-feature means and covariances and L2-normalises the image's
  feature and the class mean when measuring the distance; `statistics` L2-normalises every
  feature first, so means and covariances are of unit vectors;
- `tukey_beta`: Tukey's power transform x**beta of every feature before anything else (1: none;
  0: log; needs non-negative features, i.e. a ReLU backbone).

Defaults are LAMDA-PILOT's `models/fecam.py` with `exps/fecam.json` (CIFAR): adapter first session
(20 epochs, SGD lr 0.01, batch 48, weight decay 5e-4, cosine to 0), covariance of raw adapted
features (unbiased), `cov + 100 I` (hard-coded `alpha = 100`), then `torch.corrcoef` of that
matrix, pseudo-inverse, distance between L2-normalised feature and L2-normalised mean; no Tukey
transform. Recipes (`cilbench recipes fecam`): `paper` from the authors' ViT scripts
(dipamgoswami/FeCAM `FeCAM_vit_<dataset>.py`: frozen IN-21k ViT, no first session, unit-norm
features, relative shrinkage 1/0 on CIFAR-100 and CoRe50, 10/10 on ImageNet-R, correlation
normalisation) and `pilot` from LAMDA-PILOT's `exps/fecam*.json`.

Where cilbench differs, and why:
- PILOT's `torch.corrcoef(cov)` is not the correlation normalisation of the paper (it correlates
  the rows of the covariance matrix as if they were data); `normalise=corrcoef` keeps it so the
  `pilot` recipes reproduce PILOT, `normalise=correlation` is the paper's.
- Covariances, shrinkage, normalisation and the pseudo-inverse run in float64 (PILOT: float32);
  distances in float32 as in PILOT. Precisions are computed once per experience and cached; PILOT
  re-inverts every class's matrix at every evaluation. Per-task accuracies equal PILOT's own
  learner on identical inputs (`tools/parity/fecam.py`, frozen first session: identical; adapter
  trained: within seed noise, Welch's t-test; `tools/parity/fecam-results.md`).
- A class seen again (domain-incremental streams) gets the pooled mean and covariance of all its
  features; PILOT appends a second covariance for it (misaligned with the class index) and the
  authors' CoRe50 script averages the old and new shrunk covariances with weight 1/2.
- The authors' ResNet code (not the ViT scripts) applies the Tukey transform to the class means a
  second time after the first task; here features are transformed once, before any statistics.
- The first session is ADAM's (`AdaptedBranch`): the adapted features are cached; PILOT also
  evaluates the test set after every first-session epoch (no effect on the result beyond RNG use).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from cilbench.api import register_strategy
from cilbench.core.config import NonNegative, Range
from cilbench.data.streams import Experience
from cilbench.engine.recipes import (
    IN21K,
    Recipe,
    Repository,
    own_recipe,
    pilot_adapter_recipe,
    vit_demo_recipe,
)
from cilbench.learn.first_session import (
    FirstSessionConfig,
    FirstSessionFeatures,
)
from cilbench.learn.mahalanobis import (
    ClassCovariances,
    CovarianceSettings,
    Normalisation,
    ShrinkMode,
    mahalanobis_distances,
)

FECAM = Repository("dipamgoswami/FeCAM", "d2479b7bc9c3e704b0835ccd5928a2d7e0df5a09")


@dataclass(frozen=True)
class FecamConfig(FirstSessionConfig):
    """FeCAM hyper-parameters (defaults: LAMDA-PILOT exps/fecam.json and models/fecam.py)."""

    peft: Literal["none", "adapter", "ssf", "vpt-shallow", "vpt-deep", "lora", "finetune"] = (
        "adapter"
    )
    shrink1: Annotated[float, NonNegative()] = 100.0
    shrink2: Annotated[float, NonNegative()] = 0.0
    shrink_mode: ShrinkMode = "absolute"
    normalise: Normalisation = "corrcoef"
    feature_norm: Literal["distance", "statistics"] = "distance"
    tukey_beta: Annotated[float, Range(0, 1)] = 1.0


def _paper(script: str, protocol: str, shrink1: float, shrink2: float, **extra: Any) -> Recipe:
    """An authors' ViT script: frozen IN-21k ViT, unit-norm features, relative shrinkage."""
    settings = {
        "peft": "none", "shrink1": shrink1, "shrink2": shrink2, "shrink_mode": "relative",
        "normalise": "correlation", "feature_norm": "statistics", **extra,
    }  # fmt: skip
    table = f"FeCAM README, pre-trained ViT experiments, {protocol} (script, no config file)"
    return Recipe(settings, FECAM.file(script, table), backbone=IN21K)


@register_strategy("fecam")
class FeCAM(FirstSessionFeatures):
    """Mahalanobis distance to class means under shrunk, normalised per-class covariances."""

    Config = FecamConfig
    branch_name = "fecam"
    variant_key: ClassVar[str] = "peft"
    recipes: ClassVar[Mapping[str, Any]] = {
        "synthetic": {"epochs": 1, "batch_size": 16},
        "split-fashion-mnist-mini": [
            # any backbone: the Mahalanobis classifier alone, with the authors' covariance steps
            own_recipe({"peft": "none", "shrink1": 1.0, "shrink_mode": "relative",
                        "normalise": "correlation", "feature_norm": "statistics"}),
            vit_demo_recipe({"peft": "adapter", "epochs": 10, "batch_size": 16, "lr": 0.1}),
        ],
        "split-cifar100": [
            _paper(
                "FeCAM_vit_cifar100.py", "CIFAR-100 B0 Inc10, natural class order", 1.0, 0.0,
                **{"stream.class_order": "natural", "backbone.crop_pct": 1.0},
            ),
            pilot_adapter_recipe("fecam.json", 20, 0.01, 48, 5e-4, "CIFAR B0 Inc10"),
        ],
        "split-imagenet-r": [
            _paper("FeCAM_vit_imagenet-r.py", "ImageNet-R 10 tasks x 20 classes", 10.0, 10.0),
            pilot_adapter_recipe("fecam_inr.json", 10, 0.05, 16, 5e-3, "IN-R B0 Inc20"),
        ],
        "core50": [_paper("FeCAM_vit_core50.py", "CoRe50 8 domains", 1.0, 0.0)],
    }  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.statistics = ClassCovariances()
        self.num_seen = 0

    @property
    def covariance_settings(self) -> CovarianceSettings:
        c = self.config
        return CovarianceSettings(c.shrink1, c.shrink2, c.shrink_mode, c.normalise)

    def train_experience(self, experience: Experience) -> None:
        self.adapt(experience, self.generator(experience.index))
        features, labels = self.features_of(experience.train)
        self.statistics.update(self.transform(features), labels)
        self.num_seen = experience.num_seen_classes

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """Tukey's power transform, then (feature_norm=statistics) L2 normalisation; float32."""
        x = features.float()
        beta = self.config.tukey_beta
        if beta != 1.0:
            if bool((x < 0).any()):
                raise ValueError(
                    f"tukey_beta={beta} needs non-negative features; this backbone's go down to "
                    f"{float(x.min()):.3g} (use tukey_beta=1, or a backbone ending in a ReLU)"
                )
            x = torch.log(x) if beta == 0 else x.pow(beta)
        return F.normalize(x, dim=1) if self.config.feature_norm == "statistics" else x

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        """Minus the Mahalanobis distance to each seen class (higher is closer)."""
        x = self.transform(features)
        means = self.statistics.means[: self.num_seen].float().to(x.device)
        if self.config.feature_norm == "distance":
            x, means = F.normalize(x, dim=1), F.normalize(means, dim=1)
        precisions = self.statistics.precisions(self.covariance_settings, self.num_seen)
        return -mahalanobis_distances(x, means, precisions)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {**self.statistics.state_dict(), "num_seen": torch.tensor(self.num_seen)}
        return {**state, **self.branch_state()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.statistics.load_state_dict(state)
        self.num_seen = int(state["num_seen"])
        self.load_branch_state(state)

    def report(self) -> dict[str, Any]:
        return self.branch_report()

"""NMC: nearest mean classifier on frozen, L2-normalised features.

Janson et al., "A Simple Baseline that Questions the Use of Pretrained-Models in Continual
Learning" (2022). Each feature of the frozen backbone is L2-normalised; a class is represented by
the mean of its normalised training features, and an image goes to the class whose mean is nearest
in Euclidean distance. No hyper-parameters; nothing is trained.

Recipes (`cilbench recipes nmc`, from the authors' scripts in Pauljanson002/pretrained-cl): the
IN-21k ViT on [0,1] pixels, bilinear resizing; on CIFAR-100 Resize(224) without a centre crop and
the iCaRL class order; on CoRe50 and ImageNet-R Resize(256) + CenterCrop(224). Their ImageNet-R
split (a per-task torch random_split) is not reproduced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cilbench.api import register_strategy
from cilbench.core.devices import float32_section
from cilbench.engine.recipes import JANSON, Recipe
from cilbench.learn.prototypes import PrototypeStrategy


def _janson(script: str, **settings: Any) -> Recipe:
    table = "Janson et al. 2022 (the script prints the average incremental accuracy)"
    return Recipe({"backbone.interpolation": "bilinear", **settings}, JANSON.file(script, table))


@register_strategy("nmc")
class NMC(PrototypeStrategy):
    """Nearest class mean of L2-normalised frozen features (scores are negative distances)."""

    recipes: ClassVar[Mapping[str, Any]] = {
        "split-cifar100": _janson(
            "main_cifar100.py", **{"stream.class_order": "icarl", "backbone.crop_pct": 1.0}
        ),
        "core50": _janson("main_core50.py"),
        "split-imagenet-r": _janson("main_imagenet-r.py"),
        "synthetic": {},
        "split-fashion-mnist-mini": {},
        "split-fashion-mnist": {},
    }

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=1)

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        """Negative Euclidean distances to the class means, in float32 at any precision."""
        means = self.prototypes().to(features.device)
        with float32_section(features.device):
            return -torch.cdist(self.embed(features.float()), means)

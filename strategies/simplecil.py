"""SimpleCIL: cosine similarity to class-mean prototypes of frozen features.

Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models: Generalizability and
Adaptivity are All You Need" (2023). The prototype of a class is the mean of its un-normalised
frozen training features (computed with test-time preprocessing, as the reference `replace_fc`
does); prediction is the cosine similarity to each prototype. Old prototypes never change. No
hyper-parameters (the reference hard-codes batch size 128 and ignores its training settings).

Recipes differ only in the backbone: `paper` is RevisitingCIL's IN-21k ViT, `pilot` LAMDA-PILOT's
IN-1k ViT (`cilbench recipes simplecil`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from cilbench.api import register_strategy
from cilbench.engine.recipes import IN1K, PILOT, REVISITING_CIL, Recipe
from cilbench.learn.prototypes import PrototypeStrategy, cosine_scores


def _paper(config: str, protocol: str, published: str) -> Recipe:
    source = REVISITING_CIL.file(
        f"exps/simplecil/{config}_vit-b_simplecil.json",
        f"APER paper, {protocol}, SimpleCIL"
        + (f": A_last / A_avg {published}" if published else ""),
    )
    return Recipe({}, source)


def _pilot(config: str, protocol: str) -> Recipe:
    table = f"LAMDA-PILOT README curve, {protocol}, IN-1k"
    return Recipe({}, PILOT.file(f"exps/{config}", table), name="pilot", backbone=IN1K)


@register_strategy("simplecil")
class SimpleCIL(PrototypeStrategy):
    """Cosine classifier whose weights are the class-mean frozen features."""

    recipes: ClassVar[Mapping[str, Any]] = {
        "split-cifar100": [
            _paper("cifar224_5_5", "CIFAR-100 B0 Inc5", "81.26 / 87.57"),
            _pilot("simplecil.json", "CIFAR B0 Inc10"),
        ],
        "split-imagenet-r": [
            _paper("imagenetr_5_5", "ImageNet-R B0 Inc5", "54.55 / 62.58"),
            _pilot("simplecil_inr.json", "IN-R B0 Inc20"),
        ],
        "vtab": [_paper("vtab_10_10", "VTAB B0 Inc10", "84.38 / 85.99")],
        "split-cub200": [_paper("cub_10_10", "CUB B0 Inc10", "")],
        "split-imagenet-a": [_paper("imageneta_10_10", "ImageNet-A B0 Inc10", "")],
        "split-objectnet": [_paper("objectnet_10_10", "ObjectNet B0 Inc10", "")],
        "split-omnibenchmark": [_paper("omni_30_30", "OmniBenchmark B0 Inc30", "")],
        "synthetic": {},
        "split-fashion-mnist-mini": {},
        "split-fashion-mnist": {},
    }

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_scores(features, self.prototypes())

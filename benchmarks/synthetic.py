"""`synthetic`: a tiny generated stream for tests and smoke runs (no files, seconds to run).

Each class is a random smooth colour pattern; images are that pattern plus pixel noise. In the
domain-incremental scenario every experience holds all classes under a different brightness
shift, with one shared test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F

from cilbench.api import register_stream
from cilbench.core.config import NonNegative, Positive, Range
from cilbench.data.sources import ArraySource
from cilbench.data.streams import (
    ClassIncrementalOptions,
    Stream,
    class_incremental_stream,
    domain_incremental_stream,
)


@register_stream("synthetic")
@dataclass(frozen=True)
class Synthetic(ClassIncrementalOptions):
    """Generated images: `num_classes` classes, `train_per_class` + `test_per_class` each."""

    num_classes: Annotated[int, Positive()] = 6
    increment: int = 2
    train_per_class: Annotated[int, Positive()] = 24
    test_per_class: Annotated[int, Positive()] = 8
    image_size: Annotated[int, Positive()] = 32
    noise: Annotated[float, NonNegative()] = 40.0
    scenario: Literal["class-incremental", "domain-incremental"] = "class-incremental"
    domains: Annotated[int, Positive()] = 3
    data_seed: Annotated[int, Range(0, 2**32 - 1)] = 0

    def build(self, data_root: Path | None = None) -> Stream:
        rng = np.random.default_rng(self.data_seed)
        patterns = _smooth_patterns(rng, self.num_classes, self.image_size)
        names = [f"class-{c}" for c in range(self.num_classes)]
        test = self._sample(rng, patterns, self.test_per_class, "synthetic-test")
        if self.scenario == "domain-incremental":
            parts = [
                self._sample(rng, patterns, self.train_per_class, f"synthetic-d{d}", shift=30.0 * d)
                for d in range(self.domains)
            ]
            return domain_incremental_stream("synthetic", self.version, parts, test, names)
        train = self._sample(rng, patterns, self.train_per_class, "synthetic-train")
        return class_incremental_stream("synthetic", self.version, train, test, names, self)

    def _sample(
        self,
        rng: np.random.Generator,
        patterns: np.ndarray,
        per_class: int,
        name: str,
        shift: float = 0.0,
    ) -> ArraySource:
        labels = np.repeat(np.arange(len(patterns)), per_class)
        noise = rng.normal(0.0, self.noise, size=(len(labels), *patterns.shape[1:]))
        images = np.clip(patterns[labels] + noise + shift, 0, 255).astype(np.uint8)
        return ArraySource(images, labels, name)


def _smooth_patterns(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """(count, size, size, 3) float patterns: 4x4 random colours upsampled bilinearly."""
    coarse = torch.from_numpy(rng.uniform(30, 225, size=(count, 3, 4, 4)))
    fine = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return fine.permute(0, 2, 3, 1).numpy()

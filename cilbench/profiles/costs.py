"""Fixed vs per-image cost of cold extraction, and compiled vs eager forward, for `profile
pipeline`.

A small run pays costs that do not grow with the data (building the backbone and the stream, data
loader start-up, the cache lock, the checksummed cache write); a large one pays per image. Cold
extraction into an empty cache is timed on the first quarter and on all of a source's images,
alternating for a few rounds, and the medians are fitted with a line: the intercept is the fixed
cost, the slope the cost per image.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cilbench.backbones.model import Backbone
from cilbench.data.sources import ImageSource
from cilbench.features import FeatureStore
from cilbench.profiles import Figures
from cilbench.profiles.bare import forward_seconds


class FirstImages:
    """The first `count` images of `source`, as a source of their own (own fingerprint)."""

    def __init__(self, source: ImageSource, count: int):
        self.source, self.count = source, count
        self.decodes_files = getattr(source, "decodes_files", False)

    @property
    def fingerprint(self) -> str:
        return f"{self.source.fingerprint}:first{self.count}"

    @property
    def targets(self) -> np.ndarray:
        return self.source.targets[: self.count]

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> torch.Tensor:
        return self.source.load(index)


def fixed_and_per_image_cost(
    backbone: Backbone, source: ImageSource, batch_size: int, workers: int, rounds: int
) -> Figures:
    """Cold extraction of the first quarter and of all of `source`, fitted with a line."""
    sizes = sorted({max(1, len(source) // 4), len(source)})
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(rounds):
        for n in sizes:
            part: Any = FirstImages(source, n) if n < len(source) else source
            times[n].append(_cold_seconds(backbone, part, batch_size, workers))
    medians = [float(np.median(times[n])) for n in sizes]
    figures: Figures = {
        f"cold extraction of {n} images, {workers} workers (s)": round(t, 3)
        for n, t in zip(sizes, medians, strict=True)
    }
    if len(sizes) == 2:
        per_image = (medians[1] - medians[0]) / (sizes[1] - sizes[0])
        figures["cold extraction: fixed cost (s, intercept)"] = round(
            medians[0] - per_image * sizes[0], 3
        )
        figures["cold extraction: per-image cost (ms, slope)"] = round(1000 * per_image, 3)
    return figures


def _cold_seconds(backbone: Backbone, source: Any, batch_size: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(backbone, Path(tmp), batch_size=batch_size, num_workers=workers)
        start = time.perf_counter()
        store.source_features(source)
        return time.perf_counter() - start


def compile_ratio(backbone: Backbone, batches: list[torch.Tensor], rounds: int) -> Figures:
    """Bare forward of the eager and the `torch.compile`d backbone, alternating rounds."""
    fast = Backbone(backbone.spec, backbone.preprocessing, str(backbone.device))
    fast.precision, fast.compile = backbone.precision, True
    fast.__dict__["model"] = backbone.model  # the same weights and module
    start = time.perf_counter()
    forward_seconds(fast, batches)  # compiles for every batch shape (the last may be short)
    compile_seconds = time.perf_counter() - start
    eager, compiled = [], []
    for _ in range(rounds):
        eager.append(forward_seconds(backbone, batches))
        compiled.append(forward_seconds(fast, batches))
    return {
        "torch.compile: first pass, compiling included (s)": round(compile_seconds, 1),
        "torch.compile: bare forward, compiled / eager speed": round(
            float(np.median(eager) / np.median(compiled)), 2
        ),
    }

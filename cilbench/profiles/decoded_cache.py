"""`cilbench profile decoded-cache`: epoch-2 data throughput with and without the decoded cache.

It writes an ImageNet-R-shaped fixture into a temporary folder (class folders of JPEGs of
300-600 px per side, smooth colour fields plus noise so they compress like photos), then runs the
training data pipeline (RandomResizedCrop 224 + flip, batches as the training loop forms them)
for two epochs over the JPEG files and over the decoded cache (256 px centre squares), timing
the second epoch of each. Nothing but data loading is timed: no model runs. With `--workers 0`
(the default) it runs in one process on one intra-op thread, as every DataLoader worker does
(torch gives each worker one thread); two threads fighting over a shared CPU would otherwise
dominate the figures.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cilbench.backbones.preprocessing import Preprocessing
from cilbench.data.decoded_cache import DecodedSource
from cilbench.data.sources import DatasetView, ImageSource
from cilbench.engine.spec import RunSpec
from cilbench.profiles import Figures, register_profile
from cilbench.profiles.fixtures import write_jpeg_classes

CLASSES = 8
PER_CLASS = 25
DECODED_SIZE = 256
TRAIN_SIZE = 224


@register_profile(
    "decoded-cache",
    ignores=(
        "--strategy",
        "--stream",
        "--backbone",
        "--set",
        "--data-root",
        "--device",
        "--precision",
        "--compile",
        "--decode",
    ),
)
def profile_decoded_cache(spec: RunSpec) -> Figures:
    """Time epoch 2 of the training data pipeline on JPEG files vs the decoded cache."""
    preprocessing = Preprocessing(TRAIN_SIZE, 0.875, "bicubic", "none", (0.0,) * 3, (1.0,) * 3)
    transform = preprocessing.train_transform()
    batch_size = min(spec.batch_size, 64)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_jpeg_classes(Path(tmp) / "imagenet-r", CLASSES, PER_CLASS)
        start = time.perf_counter()
        decoded = DecodedSource(files, DECODED_SIZE, Path(tmp) / "cache")
        build = time.perf_counter() - start
        rates = {}
        for label, source in (("files", files), ("decoded", decoded)):
            rates[label] = _epoch_two_rate(source, transform, batch_size, spec.num_workers or 0)
        cache_mib = decoded.path.stat().st_size / 2**20
    return {
        "images (JPEG, 300-600 px)": len(files),
        "train transform": f"RandomResizedCrop {TRAIN_SIZE} + flip, batch {batch_size}",
        "epoch 2, JPEG decode (img/s)": round(rates["files"], 1),
        f"epoch 2, decoded cache {DECODED_SIZE} px (img/s)": round(rates["decoded"], 1),
        "speed-up (target >= 3)": round(rates["decoded"] / rates["files"], 2),
        "cache build, once (s)": round(build, 2),
        "cache file (MiB)": round(cache_mib, 1),
    }


def _epoch_two_rate(source: ImageSource, transform, batch_size: int, workers: int) -> float:  # type: ignore[no-untyped-def]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _timed_second_epoch(source, transform, batch_size, workers)
    finally:
        torch.set_num_threads(previous)


def _timed_second_epoch(source: ImageSource, transform, batch_size: int, workers: int) -> float:  # type: ignore[no-untyped-def]
    view = DatasetView(source, np.arange(len(source)), np.asarray(source.targets))
    loader = DataLoader(
        view.with_transform(transform),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        num_workers=workers,
    )
    for _ in loader:  # epoch 1: warms the page cache and any lazy state
        pass
    start = time.perf_counter()
    for _ in loader:
        pass
    return len(source) / (time.perf_counter() - start)

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
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cilbench.backbones import Preprocessing
from cilbench.data import DatasetView, FileSource, ImageSource
from cilbench.decoded_cache import DecodedSource
from cilbench.profiles import Figures, register_profile
from cilbench.runner import RunSpec

CLASSES = 8
PER_CLASS = 25
DECODED_SIZE = 256
TRAIN_SIZE = 224


@register_profile("decoded-cache")
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


def write_jpeg_classes(root: Path, classes: int, per_class: int, seed: int = 0) -> FileSource:
    """Class folders of photo-like JPEGs (300-600 px per side); the source over them."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    files, labels = [], []
    for label in range(classes):
        for i in range(per_class):
            height, width = (int(s) for s in rng.integers(300, 601, size=2))
            coarse = torch.from_numpy(rng.uniform(0, 255, size=(1, 3, 6, 6))).float()
            field = F.interpolate(coarse, size=(height, width), mode="bicubic")[0]
            noise = torch.from_numpy(rng.normal(0, 12, size=(3, height, width))).float()
            image = (field + noise).clamp(0, 255).to(torch.uint8)
            relative = f"n{label:08d}/{i}.jpg"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            pixels = Image.fromarray(image.permute(1, 2, 0).numpy())
            pixels.save(root / relative, format="JPEG", quality=90)
            files.append(relative)
            labels.append(label)
    return FileSource(root, files, labels, "imagenet-r-shaped")

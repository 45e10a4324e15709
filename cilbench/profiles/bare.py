"""The bare timm loops that profiles compare cilbench against.

Bare means: batches already decoded, augmented or resized, normalised and on the device, and
nothing in the loop but the model (and, for training, loss, backward and optimiser step), under
the same autocast as cilbench (the backbone's precision). What cilbench does on top (loading,
augmentation, bookkeeping) is what a ratio against these loops measures.
"""

from __future__ import annotations

import time
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, SequentialSampler

from cilbench.backbones.model import Backbone
from cilbench.core.devices import autocast, synchronize
from cilbench.data.augment import Augmentation
from cilbench.data.sources import DatasetView, batching
from cilbench.learn.training import TrainSettings, make_optimizer


def prepared_batches(backbone: Backbone, view: DatasetView, batch_size: int) -> list[torch.Tensor]:
    """The images of `view` with test preprocessing, normalised on the device, in batches."""
    dataset = view.with_transform(backbone.preprocessing.sample_transform())
    return [backbone.prepare(images) for images, _ in DataLoader(dataset, batch_size=batch_size)]


def forward_seconds(backbone: Backbone, batches: list[torch.Tensor]) -> float:
    """Wall seconds of the frozen model's forward over `batches` (device work included)."""
    device = backbone.device
    with torch.inference_mode(), autocast(device, backbone.precision):
        backbone.forward_features(batches[0])  # warm-up: allocations, kernel selection
        synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            backbone.forward_features(batch)
        synchronize(device)
    return time.perf_counter() - start


def training_rate(
    backbone: Backbone, view: DatasetView, settings: TrainSettings, augmentation: Augmentation
) -> float:
    """Images/s of plain training (fresh model + linear head, `settings`' optimiser and batch
    size, `settings.epochs` epochs) on batches augmented beforehand, as cilbench augments them
    by default."""
    from cilbench.data.augment import training_data

    data, prepare = training_data(backbone, [view], augmentation)
    loader = DataLoader(data, **batching(data, _sampler(data), settings.batch_size))
    batches = [(prepare(x), y.to(backbone.device)) for x, y in loader]
    model = backbone.build_model()
    num_classes = int(view.labels.max()) + 1
    head = torch.nn.Linear(cast(int, cast(Any, model).num_features), num_classes)
    head = head.to(backbone.device)
    groups = [{"params": model.parameters()}, {"params": head.parameters()}]
    optimizer = make_optimizer(groups, settings)
    device = backbone.device
    model.train()

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with autocast(device, backbone.precision):
            loss = F.cross_entropy(head(model(images)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(*batches[0])  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(settings.epochs):
        for images, labels in batches:
            step(images, labels)
    synchronize(device)
    return settings.epochs * len(view) / (time.perf_counter() - start)


def _sampler(data: Any) -> Sampler:
    """The seeded sampler of per-image augmentation datasets (their keys carry seeds), else the
    positions in order."""
    own = getattr(data, "sampler", None)
    return own(torch.Generator().manual_seed(0)) if own is not None else SequentialSampler(data)

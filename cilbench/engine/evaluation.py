"""Evaluation: row t of the accuracy matrix, scored from cached features where the strategy allows.

A strategy that predicts from frozen features is scored on the feature store's cached test
features, so test images never pass through the backbone again; others are scored on images (with
the cached frozen features of the same images for `predicts_with_features`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from cilbench.api import BaseStrategy
from cilbench.core.callbacks import Progress, SilentProgress
from cilbench.core.devices import autocast
from cilbench.data.sources import (
    DatasetView,
    loader_options,
    loader_workers,
    threads_beside_workers,
)
from cilbench.data.streams import Stream
from cilbench.engine.plugin_checks import check_scores
from cilbench.features import FeatureStore


def evaluate(
    strategy: BaseStrategy,
    stream: Stream,
    t: int,
    store: FeatureStore,
    batch_size: int = 128,
    progress: Progress | None = None,
    cached_features: bool = True,
) -> list[float | None]:
    """Row t of the accuracy matrix (percent), None for test sets not seen yet.

    `cached_features=False` makes a strategy that `predicts_with_features` compute the frozen
    features itself (a second forward pass; `cilbench profile prompts` compares the two).
    """
    num_seen = stream.experiences[t].num_seen_classes
    row: list[float | None] = [None] * len(stream.test_sets)
    for j in stream.test_sets_after(t):
        view = stream.test_sets[j]
        correct = 0
        batches = _scored_batches(strategy, view, store, batch_size, progress, cached_features)
        for scores, labels in batches:
            if scores.shape != (len(labels), num_seen):
                raise RuntimeError(
                    f"{type(strategy).__name__} returned scores of shape {tuple(scores.shape)}; "
                    f"expected ({len(labels)}, {num_seen}) after experience {t}"
                )
            check_scores(scores, type(strategy).__name__, t)
            correct += int((scores.argmax(dim=1).cpu() == labels).sum())
        row[j] = 100.0 * correct / len(view)
    return row


def predictions(
    strategy: BaseStrategy,
    view: DatasetView,
    store: FeatureStore,
    batch_size: int = 128,
    cached_features: bool = True,
) -> torch.Tensor:
    """The label `evaluate` predicts for every image of `view`, in order."""
    batches = _scored_batches(strategy, view, store, batch_size, None, cached_features)
    return torch.cat([scores.argmax(dim=1).cpu() for scores, _ in batches])


def _scored_batches(
    strategy: BaseStrategy,
    view: DatasetView,
    store: FeatureStore,
    batch_size: int,
    progress: Progress | None,
    cached_features: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(scores, labels) batches: from cached features when the strategy allows, else images
    (with the cached frozen features of the same images for `predicts_with_features`)."""
    if strategy.predicts_from_features:
        features, labels = strategy.features_of(view)
        with torch.no_grad():
            for start in range(0, len(labels), batch_size):
                batch = features[start : start + batch_size].to(strategy.device)
                yield strategy.predict_features(batch), labels[start : start + batch_size]
        return
    backbone = store.backbone
    dataset = view.with_transform(backbone.preprocessing.sample_transform())
    workers = loader_workers(store.num_workers, [view.source], backbone.device)
    loader = DataLoader(dataset, batch_size=batch_size, **loader_options(backbone.device, workers))
    frozen = None
    if strategy.predicts_with_features and cached_features:
        frozen = store.get(view)[0]  # rows in the loader's (unshuffled) order
    start = 0
    with (
        threads_beside_workers(workers),
        (progress or SilentProgress()).task("evaluating", total=len(view)) as advance,
    ):
        for images, labels in loader:
            with torch.no_grad(), autocast(backbone.device, backbone.precision):
                prepared = backbone.prepare(images)
                if frozen is None:
                    scores = strategy.predict(prepared)
                else:
                    features = frozen[start : start + len(labels)].to(strategy.device)
                    scores = strategy.predict_with_features(prepared, features)
            yield scores.float(), labels
            start += len(labels)
            advance(len(labels))

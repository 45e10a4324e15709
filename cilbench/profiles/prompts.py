"""`cilbench profile prompts`: what cached queries save L2P and CODA-Prompt, side by side.

For each of the two strategies, in one process and on the same warm in-memory feature store:
1. Training over the whole stream with the faithful query (a second, no-grad forward of the
   augmented view per step), then again from the same seed with `query_from_cache=true` (the
   cached features of the un-augmented view). Timed from the second experience on (the first
   warms up). The cached training features are extracted before the timing starts: a real run
   extracts them once per data set and backbone, not per run.
2. Evaluation of the first run after the last experience on every test set, with the cached query
   (`predicts_with_features`, what the runner does) and with a second forward pass
   (`cached_features=False`); same code otherwise. Best of two rounds each; predictions compared.
3. Final accuracy of both training runs (all test sets, sample-weighted) and their difference.
Use a ViT of realistic size, e.g. `cilbench profile prompts --stream split-fashion-mnist-mini
--backbone <vit preset>`; on the tiny test ViT fixed costs dominate. Figures depend on the load:
the load average is reported beside them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from cilbench.api import BaseStrategy
from cilbench.data.streams import Stream
from cilbench.engine.evaluation import predictions
from cilbench.engine.loop import prepare
from cilbench.engine.spec import RunSpec
from cilbench.features import FeatureStore
from cilbench.profiles import Figures, register_profile

STRATEGIES = ("l2p", "coda-prompt")


@register_profile("prompts", ignores=("--decode",))
def profile_prompts(spec: RunSpec) -> Figures:
    """Evaluation and training images/s with cached vs computed queries; accuracy difference."""
    figures: Figures = {}
    for name in STRATEGIES:
        faithful, seconds, stream, store = _train(spec, name, {})
        cached, cached_seconds, _, _ = _train(spec, name, {"query_from_cache": True}, store)
        figures["device"] = str(faithful.device)
        figures.update(_evaluation(name, faithful, stream, store, spec.batch_size))
        images = sum(len(e.train) for e in stream.experiences[1:]) * faithful.config.epochs
        figures[f"{name}: training, faithful query (img/s)"] = round(images / seconds, 1)
        figures[f"{name}: training, query_from_cache (img/s)"] = round(images / cached_seconds, 1)
        figures[f"{name}: training speed-up (target >= 1.3)"] = round(seconds / cached_seconds, 2)
        accuracy = _accuracy(faithful, stream, store, spec.batch_size)
        cached_accuracy = _accuracy(cached, stream, store, spec.batch_size)
        figures[f"{name}: final accuracy, faithful (%)"] = round(accuracy, 2)
        figures[f"{name}: final accuracy, query_from_cache (%)"] = round(cached_accuracy, 2)
        figures[f"{name}: accuracy difference (points)"] = round(cached_accuracy - accuracy, 2)
    figures["load average (1, 5, 15 min)"] = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return figures


def _train(
    spec: RunSpec, name: str, overrides: dict[str, Any], store: FeatureStore | None = None
) -> tuple[BaseStrategy, float, Stream, FeatureStore]:
    """A strategy trained over the whole stream; the training seconds (features warm)."""
    spec = dataclasses.replace(spec, strategy=name, overrides={**spec.overrides, **overrides})
    prepared = prepare(spec)
    stream, strategy = prepared.stream, prepared.strategy
    if store is None:
        store = FeatureStore(prepared.backbone, cache_dir=None, batch_size=spec.batch_size)
    # Set up first: it builds the model, which must not happen under the store's inference mode.
    strategy.setup(prepared.context(store))
    for view in [e.train for e in stream.experiences] + list(stream.test_sets):
        store.get(view)
    seconds = 0.0
    for experience in stream.experiences:
        elapsed = _timed(partial(strategy.train_experience, experience), strategy.device)
        seconds += elapsed if experience.index > 0 else 0.0  # the first one warms up
    return strategy, seconds, stream, store


def _evaluation(
    name: str, strategy: BaseStrategy, stream: Stream, store: FeatureStore, batch_size: int
) -> Figures:
    """Images/s of the final evaluation with cached and computed queries; same predictions?"""
    views = stream.test_sets
    images = sum(len(v) for v in views)
    outputs: dict[bool, list[torch.Tensor]] = {}
    seconds: dict[bool, float] = {}
    for cached in (True, False, True, False):

        def predict_all(cached: bool = cached) -> None:
            outputs[cached] = [predictions(strategy, v, store, batch_size, cached) for v in views]

        elapsed = _timed(predict_all, strategy.device)
        seconds[cached] = min(seconds.get(cached, elapsed), elapsed)
    same = all(torch.equal(a, b) for a, b in zip(outputs[True], outputs[False]))
    return {
        f"{name}: evaluation, cached query (img/s)": round(images / seconds[True], 1),
        f"{name}: evaluation, second forward (img/s)": round(images / seconds[False], 1),
        f"{name}: evaluation speed-up (target >= 1.8)": round(seconds[False] / seconds[True], 2),
        f"{name}: identical predictions": "yes" if same else "NO",
    }


def _accuracy(
    strategy: BaseStrategy, stream: Stream, store: FeatureStore, batch_size: int
) -> float:
    """Percent of all test images predicted correctly after the last experience."""
    correct = total = 0
    for view in stream.test_sets:
        predicted = predictions(strategy, view, store, batch_size)
        correct += int((predicted == torch.as_tensor(view.labels)).sum())
        total += len(view)
    return 100.0 * correct / total


def _timed(work: Callable[[], None], device: torch.device) -> float:
    """Wall seconds of `work`, device work included."""
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start

"""Conformance checks that run over the registries, plus small fixtures for tests.

`check_strategy` and `check_stream` are what a new strategy or stream must pass; the test suite
parametrises them over every registered name, so adding one needs no new test code. Strategies
keep smoke runs fast with a recipe for the `synthetic` stream (e.g. one epoch).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cilbench.api import STRATEGIES, STREAMS, BaseStrategy, RunContext
from cilbench.backbones.model import Backbone, create_backbone
from cilbench.core.callbacks import RunCallback
from cilbench.core.config import resolve
from cilbench.core.results import RunResult
from cilbench.data.augment import Augmentation
from cilbench.data.streams import Stream
from cilbench.engine.evaluation import evaluate
from cilbench.engine.loop import run, unlabelled_images
from cilbench.engine.recipes import recipes_of
from cilbench.engine.spec import RunSpec
from cilbench.features import FeatureStore

TINY_BACKBONE = "tiny-vit-random"


def tiny_backbone(**settings: Any) -> Backbone:
    """The seeded random 2-block ViT at 32 px."""
    return create_backbone(TINY_BACKBONE, **settings)


def tiny_dinov2_vit() -> torch.nn.Module:
    """A seeded random 2-block timm ViT with DINOv2's layout (patch 14, LayerScale, dynamic image
    size) at 28 px, in eval mode; torch's global RNG is left as it was."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model(
            "vit_small_patch14_dinov2",
            num_classes=0,
            img_size=28,
            depth=2,
            embed_dim=32,
            num_heads=2,
            dynamic_img_size=True,
            init_values=0.5,
        )
    return model.eval()


def synthetic_stream(**options: Any) -> Stream:
    """The tiny generated stream (see benchmarks/synthetic.py) with option overrides."""
    return resolve(STREAMS.get("synthetic"), options).build(None)


def make_strategy(
    name: str,
    backbone: Backbone,
    stream: Stream,
    seed: int = 0,
    *,
    augmentation: Augmentation | None = None,
    **overrides: Any,
) -> BaseStrategy:
    """Strategy `name` with its synthetic recipe, set up on `backbone` with an in-memory store."""
    cls = STRATEGIES.get(name)
    recipes = recipes_of(cls, "synthetic")
    recipe = recipes[0].sections()["strategy"] if recipes else {}
    config: Any = resolve(cls.Config, recipe, overrides)
    strategy = cls(config, seed=seed)
    strategy.setup(context_for(backbone, stream, augmentation=augmentation))
    return strategy


def context_for(
    backbone: Backbone,
    stream: Stream,
    store: FeatureStore | None = None,
    augmentation: Augmentation | None = None,
) -> RunContext:
    """The context a run on `stream` would give, with an in-memory feature store by default."""
    return RunContext(
        backbone=backbone,
        info=stream.info,
        features=store or FeatureStore(backbone, cache_dir=None),
        augmentation=augmentation or Augmentation(),
        unlabelled_images=functools.partial(unlabelled_images, stream, None),
    )


def _test_batch(stream: Stream, backbone: Backbone, size: int = 16) -> torch.Tensor:
    view = stream.test_sets[0]
    transform = backbone.preprocessing.sample_transform()
    images = [transform(view.source.load(int(i))) for i in view.indices[:size]]
    return backbone.prepare(torch.stack(images))


def _run(name: str, stream: Stream, seed: int, **overrides: Any) -> tuple[BaseStrategy, list]:
    backbone = tiny_backbone()
    strategy = make_strategy(name, backbone, stream, seed=seed, **overrides)
    strategy.before_stream()
    frozen = copy.deepcopy(backbone.model.state_dict())
    batch = _test_batch(stream, backbone)
    outputs = []
    for experience in stream:
        strategy.train_experience(experience)
        with torch.no_grad():
            scores = strategy.predict(batch)
        assert scores.shape == (len(batch), experience.num_seen_classes), (
            f"{name}: predict gave {tuple(scores.shape)} after experience {experience.index}, "
            f"expected {(len(batch), experience.num_seen_classes)}"
        )
        assert torch.isfinite(scores).all(), f"{name}: non-finite scores"
        row = evaluate(strategy, stream, experience.index, strategy.features)
        outputs.append((scores.cpu(), row))
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value, frozen[key]), f"{name} changed the frozen backbone ({key})"
    assert all(p.grad is None for p in backbone.model.parameters()), (
        f"{name}: the frozen backbone received gradients"
    )
    return strategy, outputs


def check_strategy(name: str, **overrides: Any) -> None:
    """Shapes after every experience, determinism, state-dict round trip, frozen stays frozen."""
    stream = synthetic_stream()
    strategy, first = _run(name, stream, seed=0, **overrides)
    _, second = _run(name, stream, seed=0, **overrides)
    for (scores_a, row_a), (scores_b, row_b) in zip(first, second):
        assert torch.equal(scores_a, scores_b) and row_a == row_b, f"{name} is not deterministic"

    state = {k: v.clone() for k, v in strategy.state_dict().items()}
    assert all(isinstance(v, torch.Tensor) for v in state.values()), (
        f"{name}: state_dict must map names to tensors"
    )
    backbone = tiny_backbone()
    restored = make_strategy(name, backbone, stream, seed=0, **overrides)
    restored.load_state_dict(state)
    batch = _test_batch(stream, backbone)
    with torch.no_grad():
        assert torch.allclose(restored.predict(batch).cpu(), first[-1][0], atol=1e-5), (
            f"{name}: predictions differ after a state_dict round trip"
        )


def check_stream(
    name: str,
    data_root: Path | None = None,
    counts: Mapping[str, int] | None = None,
    **options: Any,
) -> Stream:
    """Structural checks every stream must pass; returns the stream for further checks.

    `counts` ({"train": n, "test": m}, e.g. from a split manifest) must equal the images the
    stream's experiences and test sets hold.
    """
    builder = resolve(STREAMS.get(name), options)
    stream = builder.build(data_root)
    again = builder.build(data_root)
    info = stream.info
    assert info.class_order == again.info.class_order, f"{name}: class order is not stable"
    assert sorted(info.class_order) == list(range(info.num_classes))
    assert len(stream.experiences) == info.num_experiences
    assert len(stream.test_sets) == len(stream.test_available_from)
    seen: set[int] = set()
    for t, experience in enumerate(stream):
        assert experience.index == t
        labels = set(int(c) for c in np.unique(experience.train.labels))
        assert labels == set(experience.classes), f"{name}: experience {t} labels != classes"
        if info.scenario == "class-incremental":
            assert not labels & seen, f"{name}: experience {t} repeats classes"
        assert set(experience.new_classes) == labels - seen
        seen |= labels
        assert max(seen) < experience.num_seen_classes <= info.num_classes
    for test in stream.test_sets:
        for experience in stream:
            if experience.train.source.fingerprint == test.source.fingerprint:
                overlap = np.intersect1d(experience.train.indices, test.indices)
                assert not len(overlap), f"{name}: train and test share images"
    nested = [(a.index, b.index) for a in stream for b in stream]
    assert len(nested) == len(stream) ** 2, f"{name}: nested iteration is broken"
    _check_views(name, stream)
    if counts is not None:
        found = {
            "train": sum(len(e.train) for e in stream),
            "test": sum(len(v) for v in stream.test_sets),
        }
        assert found == dict(counts), f"{name}: {found} images, manifest says {dict(counts)}"
    return stream


def _check_views(name: str, stream: Stream) -> None:
    """Indices inside their source, labels in range, test sets matching their experiences."""
    info = stream.info
    for view in [e.train for e in stream] + list(stream.test_sets):
        assert len(view) > 0, f"{name}: an empty training or test set"
        assert view.indices.min() >= 0 and view.indices.max() < len(view.source)
        assert view.labels.min() >= 0 and view.labels.max() < info.num_classes
    if info.scenario == "class-incremental":
        assert stream.test_available_from == tuple(range(len(stream))), (
            f"{name}: test set j must become available with experience j"
        )
        for experience, test in zip(stream, stream.test_sets):
            assert test.classes() == experience.classes, (
                f"{name}: test set {experience.index} holds other classes than its experience"
            )
    first = [(e.index, e.classes, len(e.train)) for e in stream]
    assert first == [(e.index, e.classes, len(e.train)) for e in stream], (
        f"{name}: iterating twice gives different experiences"
    )


class _StopAfter(RunCallback):
    """Interrupts a run, as Ctrl-C would, once `experiences` experiences have ended."""

    def __init__(self, experiences: int) -> None:
        self.left = experiences

    def on_experience_end(self, experience: Any, accuracies: Any) -> None:
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


def interrupted_and_unbroken(spec: RunSpec, stop_after: int = 1) -> tuple[RunResult, RunResult]:
    """(resumed, unbroken): `spec` run once whole, and once stopped after `stop_after`
    experiences and resumed from its checkpoint. A strategy checkpoints all it needs when the two
    agree; the caller compares what matters for it (matrix, report, exemplar counts)."""
    unbroken = run(spec)
    assert len(unbroken.accuracy_matrix) > stop_after, "the stream must outlast the interruption"
    try:
        run(spec, callbacks=[_StopAfter(stop_after)])
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError(f"the run was not interrupted after {stop_after} experiences")
    return run(spec, resume=True), unbroken

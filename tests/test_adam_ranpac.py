"""ADAM/APER and RanPAC against independent computations (scikit-learn, direct forward passes)."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import Ridge
from timm.models.vision_transformer import VisionTransformer

from cilbench.backbones.model import create_backbone
from cilbench.core.errors import ConfigError
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec
from cilbench.strategies.ranpac import RIDGES, select_ridge
from cilbench.testing import check_strategy, make_strategy, synthetic_stream, tiny_backbone


def _direct_features(model, backbone, view):
    """Features of `view` computed image by image, without the feature store."""
    transform = backbone.preprocessing.sample_transform()
    images = torch.stack([transform(view.source.load(int(i))) for i in view.indices])
    with torch.no_grad():
        return model(backbone.prepare(images))


@pytest.mark.parametrize("scenario", ["class-incremental", "domain-incremental"])
def test_ridge_head_equals_sklearn_ridge_without_intercept(scenario):
    stream = synthetic_stream(scenario=scenario)
    strategy = make_strategy(
        "ranpac", tiny_backbone(), stream, peft="none", projection_dim=40, ridges=(0.5, 5.0)
    )
    features, labels = [], []
    for experience in stream:
        strategy.train_experience(experience)
        f, y = strategy.features.get(experience.train)
        features.append(f)
        labels.append(y)
        projected = torch.relu(torch.cat(features) @ strategy.projection).double().numpy()
        targets = F.one_hot(torch.cat(labels), experience.num_seen_classes).double().numpy()
        reference = Ridge(alpha=strategy.ridge, fit_intercept=False).fit(projected, targets)
        assert strategy.ridge in (0.5, 5.0)
        np.testing.assert_allclose(
            strategy.weights.numpy(), reference.coef_.T, rtol=1e-3, atol=1e-5
        )
        scores = strategy.predict_features(torch.cat(features)).double().numpy()
        np.testing.assert_allclose(scores, reference.predict(projected), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("fit_size", [30, 150])  # fewer / more samples than the 64 dimensions
def test_ridge_selection_matches_a_brute_force_search(fit_size):
    generator = torch.Generator().manual_seed(fit_size)
    projected = torch.relu(torch.randn(fit_size + 50, 64, generator=generator))
    targets = projected @ torch.randn(64, 4, generator=generator) / 8
    targets += torch.randn(targets.shape, generator=generator)
    fit, val = slice(0, fit_size), slice(fit_size, None)
    losses = [
        np.mean(
            (
                Ridge(alpha=ridge, fit_intercept=False)
                .fit(projected[fit].double().numpy(), targets[fit].double().numpy())
                .predict(projected[val].double().numpy())
                - targets[val].double().numpy()
            )
            ** 2
        )
        for ridge in RIDGES
    ]
    best = RIDGES[int(np.argmin(losses))]
    assert RIDGES[0] < best < RIDGES[-1]  # an interior optimum, so the test can fail
    chosen = select_ridge(projected[fit], targets[fit], projected[val], targets[val], RIDGES)
    assert chosen == best


def test_adam_first_session_lowers_the_training_loss():
    stream = synthetic_stream()
    strategy = make_strategy("adam", tiny_backbone(), stream, epochs=10, lr=0.05, batch_size=8)
    strategy.train_experience(stream.experiences[0])
    losses = strategy.branch.losses  # cosine logits with sigma near 1: ln 2 = 0.69 is the start
    assert len(losses) == 10 and sum(losses[-3:]) / 3 < losses[0] - 0.04


def test_adam_prototypes_are_means_of_both_branches_and_old_ones_stay():
    stream, backbone = synthetic_stream(), tiny_backbone()
    strategy = make_strategy("adam", backbone, stream)
    first, second = stream.experiences[:2]
    strategy.train_experience(first)
    view = first.train
    both = torch.cat(
        [
            _direct_features(backbone.model, backbone, view),
            _direct_features(strategy.branch.model, backbone, view),
        ],
        dim=1,
    )
    labels = torch.as_tensor(view.labels)
    expected = torch.stack([both[labels == c].mean(0) for c in first.new_classes])
    before = strategy.prototypes().clone()
    assert before.shape == (2, 2 * backbone.feature_dim)
    assert torch.allclose(before, expected, atol=1e-5)
    strategy.train_experience(second)
    after = strategy.prototypes()
    assert after.shape[0] == 4 and torch.equal(after[:2], before)


def test_adam_domain_incremental_prototypes_average_every_domain():
    stream = synthetic_stream(scenario="domain-incremental")
    strategy = make_strategy("adam", tiny_backbone(), stream)
    pairs = []
    for experience in stream:
        strategy.train_experience(experience)
        pairs.append(strategy.features_of(experience.train))
    features, labels = torch.cat([f for f, _ in pairs]), torch.cat([y for _, y in pairs])
    expected = torch.stack([features[labels == c].mean(0) for c in range(6)])
    assert torch.allclose(strategy.prototypes(), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["adam", "ranpac"])
def test_after_task_zero_each_image_goes_through_each_branch_once(name, tmp_path):
    stream = synthetic_stream()
    images = len(stream.experiences[0].train.source) + len(stream.test_sets[0].source)
    counts: Counter[int] = Counter()

    def count(module, args, output):  # inference passes of whole ViTs (training ones excluded)
        if isinstance(module, VisionTransformer) and not module.training:
            counts[id(module)] += len(args[0])

    spec = RunSpec(
        strategy=name, stream="synthetic", cache_dir=tmp_path / "cache", out_dir=tmp_path / "a"
    )
    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        first = run(spec)
        branches = dict(counts)
        counts.clear()
        again = run(dataclasses.replace(spec, out_dir=tmp_path / "b"))
    finally:
        handle.remove()
    expected_branches = 2 if name == "adam" else 1
    assert sorted(branches.values()) == [images] * expected_branches
    assert sum(counts.values()) == 0  # the re-run reads both branches from the cache
    assert again.accuracy_matrix == first.accuracy_matrix
    assert first.strategy_report["adapted_images_forwarded"] == images


@pytest.mark.parametrize("name", ["adam", "ranpac"])
def test_vit_only_variant_on_a_convnet_fails_at_setup(name):
    backbone = create_backbone("efficientnet-lite0-pypi")
    with pytest.raises(ConfigError, match="vpt-shallow, vpt-deep, lora need a ViT"):
        make_strategy(name, backbone, synthetic_stream(), peft="adapter")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["ssf", "vpt-shallow", "vpt-deep", "lora", "finetune"])
def test_every_adam_variant_passes_the_strategy_conformance_check(variant):
    check_strategy("adam", peft=variant)  # the registry-wide check covers the default (adapter)

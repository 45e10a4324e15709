"""DKVB: key lookup, EMA key initialisation, decoder, localised value updates, the runner hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cilbench.api import RunContext
from cilbench.core.callbacks import SilentProgress
from cilbench.core.config import resolve
from cilbench.core.errors import CilbenchError, ConfigError
from cilbench.data.sources import ArraySource, DatasetView
from cilbench.data.streams import Experience, StreamInfo, unlabelled
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec
from cilbench.features import FeatureStore
from cilbench.strategies.dkvb import (
    DKVB,
    DKVBConfig,
    EmaKeys,
    fit_keys,
    key_coverage,
    nearest_keys,
)
from cilbench.testing import (
    check_strategy,
    context_for,
    interrupted_and_unbroken,
    synthetic_stream,
    tiny_backbone,
)


class ArrayStore:
    """Feature-store stand-in: the features of image i of the source are row i of a tensor."""

    progress = SilentProgress()

    def __init__(self, features: torch.Tensor):
        self.table = features

    def get(self, view: DatasetView) -> tuple[torch.Tensor, torch.Tensor]:
        indices = torch.as_tensor(view.indices, dtype=torch.long)
        return self.table[indices], torch.as_tensor(view.labels, dtype=torch.long)


def _two_group_problem(per_class: int = 60, dim: int = 16):
    """Classes 0, 1 near +m and classes 2, 3 near -m: experience 0 and 1 live apart."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, dim, generator=g)
    centres[:2] += 8.0
    centres[2:] -= 8.0
    labels = torch.arange(4).repeat_interleave(per_class)
    features = centres[labels] + 0.7 * torch.randn(len(labels), dim, generator=g)
    source = ArraySource(np.zeros((len(labels), 1, 1), np.uint8), labels.numpy(), "stub")
    train = [i for i in range(len(labels)) if i % 3]
    test = [i for i in range(len(labels)) if i % 3 == 0]

    def experience(t: int) -> Experience:
        idx = np.array([i for i in train if labels[i] // 2 == t])
        view = DatasetView(source, idx, labels[idx].numpy())
        classes = (2 * t, 2 * t + 1)
        return Experience(t, view, classes, classes, 2 * t + 2)

    info = StreamInfo("stub", "1", "class-incremental", 4, 2, (0, 1, 2, 3), ("a", "b", "c", "d"))
    return features, labels, info, [experience(0), experience(1)], torch.tensor(test)


def _context(features, info, views) -> RunContext:
    """A context over in-memory features whose unlabelled images are `views`."""
    store = ArrayStore(features)
    return RunContext(None, info, store, unlabelled_images=lambda name="": views)  # type: ignore[arg-type]


def _strategy(features, info, experiences, **overrides) -> DKVB:
    config = resolve(
        DKVBConfig,
        {"num_codebooks": 12, "keys_per_codebook": 24, "key_dim": 4, "init_epochs": 3},
        {"batch_size": 32, "epochs": 3, **overrides},
    )
    strategy = DKVB(config, seed=3)
    views = [unlabelled(e.train) for e in experiences]
    strategy.setup(_context(features, info, views))
    strategy.before_stream()
    return strategy


def test_conformance():
    check_strategy("dkvb")


@pytest.mark.parametrize("top_k", [1, 3])
def test_nearest_keys_match_brute_force_distances(top_k):
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(50, 5, 3, generator=g, dtype=torch.float64)
    keys = torch.randn(5, 20, 3, generator=g, dtype=torch.float64)
    allowed = torch.rand(5, 20, generator=g) < 0.5
    for mask in (None, allowed):
        found = nearest_keys(queries, keys, top_k, mask)
        for c in range(5):
            distances = torch.cdist(queries[:, c], keys[c])
            if mask is not None:
                distances[:, ~mask[c]] = float("inf")
            expected = distances.argsort(dim=1)[:, :top_k]
            assert torch.equal(found[:, c], expected)


def test_ema_step_follows_the_formula():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 3, 2, generator=g, dtype=torch.float64)
    batch = torch.randn(6, 2, 2, generator=g, dtype=torch.float64)
    decay = 0.8
    ema = EmaKeys(keys.clone(), decay=decay, dead_threshold=0.0, generator=g)
    ema.step(batch)
    x, k = batch.numpy(), keys.numpy()
    for c in range(2):
        nearest = [int(np.argmin(((k[c] - x[b, c]) ** 2).sum(1))) for b in range(6)]
        counts = np.array([nearest.count(j) for j in range(3)], dtype=float)
        sums = np.array([x[[b for b in range(6) if nearest[b] == j], c].sum(0) for j in range(3)])
        sizes = (1 - decay) * counts
        key_sums = decay * k[c] + (1 - decay) * sums
        total = sizes.sum()
        smoothed = (sizes + 1e-5) / (total + 3 * 1e-5) * total
        np.testing.assert_allclose(ema.keys[c].numpy(), key_sums / smoothed[:, None])


def test_dead_keys_are_replaced_by_batch_inputs():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 8, 3, generator=g, dtype=torch.float64)
    batch = torch.randn(4, 2, 3, generator=g, dtype=torch.float64) + 10.0
    ema = EmaKeys(keys.clone(), decay=0.9, dead_threshold=1.0, generator=g)
    ema.step(batch)  # every EMA count is below 1 after one step: all keys are dead
    for c in range(2):
        for j in range(8):
            assert any(torch.equal(ema.keys[c, j], batch[b, c]) for b in range(4))


def test_key_initialisation_is_deterministic_and_covers_the_data():
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(1000, 4, 3, generator=g, dtype=torch.float64) * 0.5 + 5.0
    config = DKVBConfig(init_epochs=5, batch_size=100)
    keys = fit_keys(queries, 32, config, torch.Generator().manual_seed(1))
    again = fit_keys(queries, 32, config, torch.Generator().manual_seed(1))
    other = fit_keys(queries, 32, config, torch.Generator().manual_seed(2))
    assert torch.equal(keys, again) and not torch.equal(keys, other)
    # coverage, independently: which keys are the nearest key of some query (cdist + argmin)
    for c in range(4):
        used = torch.cdist(queries[:, c], keys[c]).argmin(1).unique()
        assert len(used) / 32 == pytest.approx(float(key_coverage(queries, keys)[c]))
        assert len(used) >= 30  # no dead codebook
    # without dead-key replacement the Gaussian start leaves almost every key unused
    no_replacement = DKVBConfig(init_epochs=5, batch_size=100, threshold_factor=0)
    stuck = fit_keys(queries, 32, no_replacement, torch.Generator().manual_seed(1))
    assert float(key_coverage(queries, stuck).max()) < 0.2


def test_decoder_averages_fetched_values_over_codebooks():
    features, _, info, experiences, _ = _two_group_problem()
    strategy = _strategy(features, info, experiences, top_k=2)
    bottleneck = strategy.bottleneck
    with torch.no_grad():
        bottleneck.values.copy_(torch.randn(bottleneck.values.shape))
    indices = torch.tensor([[[0, 5]] * 12, [[3, 3]] * 12])
    logits = bottleneck.decode(indices)
    for b in range(2):
        expected = (
            sum(
                bottleneck.values[c, indices[b, c, 0]] + bottleneck.values[c, indices[b, c, 1]]
                for c in range(12)
            )
            / 12
        )
        assert torch.allclose(logits[b], expected)


def test_one_step_changes_only_fetched_values_by_the_sgd_formula():
    features, _, info, experiences, _ = _two_group_problem()
    strategy = _strategy(features, info, experiences, epochs=1, batch_size=1000)
    bottleneck = strategy.bottleneck
    before = bottleneck.values.detach().clone()
    strategy.train_experience(experiences[0])
    after = bottleneck.values.detach()
    train_features, train_labels = strategy.features.get(experiences[0].train)
    indices = bottleneck.lookup(train_features, 1, only_fetched=False)[:, :, 0]
    fetched = torch.zeros(12, 24, dtype=torch.bool)
    fetched[torch.arange(12)[None, :].expand_as(indices), indices] = True
    changed = (after != before).any(-1)
    assert changed.any() and not changed[~fetched].any()
    # the same step by hand: zero values give uniform softmax; smoothed targets; mean over batch
    n = len(train_labels)
    target = torch.full((n, 4), 0.1 / 4) + 0.9 * F.one_hot(train_labels, 4)
    grad_logits = (torch.full((n, 4), 0.25) - target) / n
    grad = torch.zeros(12, 24, 4)
    for b in range(n):
        for c in range(12):
            grad[c, indices[b, c]] += grad_logits[b] / 12
    scale = min(1.0, 1.0 / (float(grad.norm()) + 1e-6))
    assert torch.allclose(after, before - 0.3 * scale * grad, atol=1e-6)
    assert torch.equal(bottleneck.fetched > 0, fetched)


def test_inputs_whose_keys_a_later_task_never_fetches_keep_their_predictions():
    features, _, info, experiences, test = _two_group_problem()
    strategy = _strategy(features, info, experiences)
    strategy.train_experience(experiences[0])
    fetched_before = strategy.bottleneck.fetched.clone()
    before = strategy.predict_features(features[test])
    strategy.train_experience(experiences[1])
    after = strategy.predict_features(features[test])
    fetched_in_task_2 = strategy.bottleneck.fetched > fetched_before
    keys_now = strategy.bottleneck.lookup(features[test], 1, only_fetched=True)[:, :, 0]
    codebooks = torch.arange(12)[None, :].expand_as(keys_now)
    disjoint = ~fetched_in_task_2[codebooks, keys_now].any(1)
    assert disjoint.sum() >= len(test) // 3  # the property is tested on many inputs
    assert torch.equal(after[disjoint, :2], before[disjoint])
    assert not torch.equal(after[~disjoint, :2], before[~disjoint])


def test_report_counts_keys_fetched_in_training():
    features, _, info, experiences, _ = _two_group_problem()
    strategy = _strategy(features, info, experiences)
    for experience in experiences:
        strategy.train_experience(experience)
    projected = strategy.bottleneck.project(
        features[np.concatenate([e.train.indices for e in experiences])]
    )
    used = set()
    for c in range(12):
        nearest = torch.cdist(projected[:, c], strategy.bottleneck.keys[c]).argmin(1)
        used |= {(c, int(j)) for j in nearest}
    report = strategy.report()
    assert report["keys_ever_selected"] == pytest.approx(len(used) / (12 * 24))
    assert report["key_init_uses_future_stream_inputs"] is True
    assert 0 < report["key_init_coverage_min_codebook"] <= report["key_init_coverage"] <= 1


def test_keys_can_come_from_another_registered_stream():
    stream = synthetic_stream()
    backbone = tiny_backbone()
    config = resolve(DKVB.Config, DKVB.recipes["synthetic"], {"key_init_stream": "synthetic"})
    strategy = DKVB(config)
    store = FeatureStore(backbone, cache_dir=None)
    strategy.setup(context_for(backbone, stream, store))
    strategy.before_stream()  # builds the other stream through the context
    default = DKVB(resolve(DKVB.Config, DKVB.recipes["synthetic"]))
    default.setup(context_for(backbone, stream, store))
    default.before_stream()
    assert torch.equal(strategy.bottleneck.keys, default.bottleneck.keys)
    assert strategy.report()["key_init_uses_future_stream_inputs"] is False
    with pytest.raises(ConfigError, match="Did you mean 'synthetic'"):  # before any work
        resolve(DKVB.Config, {"key_init_stream": "synthetc"})


def test_training_without_keys_fails_clearly():
    features, _, info, experiences, _ = _two_group_problem()
    strategy = DKVB(DKVBConfig())
    strategy.setup(_context(features, info, []))
    with pytest.raises(CilbenchError, match="before_stream"):
        strategy.train_experience(experiences[0])


def test_runner_hands_over_unlabelled_views_and_writes_the_report(tmp_path):
    stream = synthetic_stream()
    views = stream.unlabelled_train()
    assert all((v.labels == -1).all() for v in views)
    assert [list(v.indices) for v in views] == [list(e.train.indices) for e in stream]
    spec = RunSpec(strategy="dkvb", stream="synthetic", out_dir=tmp_path, cache_dir=None)
    result = run(spec)
    assert result.cost["before_stream_seconds"] > 0
    assert 0 < result.strategy_report["keys_ever_selected"] <= 1
    assert result.strategy_report["key_init_coverage_min_codebook"] >= 0.75  # no dead codebook
    assert result.metrics["forgetting"] is not None


def test_resumed_run_restores_keys_instead_of_refitting_them(tmp_path):
    spec = RunSpec(strategy="dkvb", stream="synthetic", out_dir=tmp_path, cache_dir=None)
    resumed, whole = interrupted_and_unbroken(spec)
    assert resumed.accuracy_matrix == whole.accuracy_matrix
    assert resumed.strategy_report == whole.strategy_report

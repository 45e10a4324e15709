"""MOS: the adapter merge and the self-refined retrieval against hand computations, resume, and
the config's ranges."""

from __future__ import annotations

import math

import pytest
import torch

from cilbench.core.config import resolve
from cilbench.core.errors import ConfigError
from cilbench.engine.spec import RunSpec
from cilbench.learn.adapter_sets import LinearHead, orthogonality_loss, retrieve
from cilbench.strategies.mos import MosConfig
from cilbench.testing import (
    interrupted_and_unbroken,
    make_strategy,
    synthetic_stream,
    tiny_backbone,
)


def _strategy(**overrides):
    strategy = make_strategy("mos", tiny_backbone(), synthetic_stream(), **overrides)
    strategy._build_model(torch.Generator().manual_seed(0))
    return strategy


def _constant_snapshot(strategy, value: float) -> dict[str, torch.Tensor]:
    return {n: torch.full_like(p, value) for n, p in
            zip(strategy._adapter_names, strategy.adapter_tensors())}  # fmt: skip


def test_adapter_merge_by_hand():
    # adapter w = 1 everywhere, snapshots 3 and 5: mu = 4; m = 0.1: one pull 0.9 + 0.4 = 1.3,
    # then 0.9 * 1.3 + 0.4 = 1.57, then 0.9 * 1.57 + 0.4 = 1.813
    strategy = _strategy(adapter_momentum=0.1)
    strategy.snapshots = [_constant_snapshot(strategy, 3.0), _constant_snapshot(strategy, 5.0)]
    with torch.no_grad():
        for p in strategy.adapter_tensors():
            p.fill_(1.0)
    strategy._pull_target = strategy._merge_target()
    assert all(torch.allclose(t, torch.tensor(4.0)) for t in strategy._pull_target)
    strategy._pull()  # after an optimiser step
    assert all(torch.allclose(p, torch.tensor(1.3)) for p in strategy.adapter_tensors())

    # a training forward pulls every adapter before each block: block l runs with l + 2 pulls
    seen = []
    blocks = list(strategy.model.blocks)
    for block in blocks:
        block.register_forward_pre_hook(
            lambda module, args: seen.append(float(module.adapter.down.bias[0].detach()))
        )
    strategy.model(torch.zeros(1, 3, 32, 32))
    expected = [1.57, 1.813, 2.0317][: len(blocks)]
    assert len(blocks) == 2 and seen == pytest.approx(expected)
    assert float(strategy.adapter_tensors()[0].detach().flatten()[0]) == pytest.approx(expected[-1])

    strategy._pull_target = None  # outside training and class statistics: nothing moves
    strategy.model(torch.zeros(1, 3, 32, 32))
    assert float(strategy.adapter_tensors()[0].detach().flatten()[0]) == pytest.approx(expected[-1])


def test_test_adapters_are_the_prefix_means_of_the_snapshots():
    strategy = _strategy()
    strategy.snapshots = [_constant_snapshot(strategy, v) for v in (3.0, 5.0, 10.0)]
    first = strategy._adapter_names[0]
    # task 0: its snapshot; task 1: snapshot 0 (the mean of one); task 2: (3 + 5) / 2
    assert [float(strategy.test_adapter(t)[first].flatten()[0]) for t in range(3)] == [3, 3, 4]
    own = _strategy(test_adapters="own")
    own.snapshots = strategy.snapshots
    assert [float(own.test_adapter(t)[first].flatten()[0]) for t in range(3)] == [3, 5, 10]
    unmerged = _strategy(adapter_momentum=0.0)
    unmerged.snapshots = strategy.snapshots
    assert [float(unmerged.test_adapter(t)[first].flatten()[0]) for t in range(3)] == [3, 5, 10]
    assert unmerged._merge_target() is None


# Two tasks of two classes (task_of 0, 0, 1, 1); prototypes and head rows in 2-D.
PROTOTYPES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
HEAD = LinearHead(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [-1.0, 0.0]]), torch.zeros(4))
TASK_OF = torch.tensor([0, 0, 1, 1])
# features (sample, adapter, D)
FEATURES = torch.tensor(
    [
        [[2.0, -1.0], [1.0, 1.0]],  # A: cosine -> class 0 (task 0); head on f0 -> class 0: stays
        [[2.0, 1.5], [-2.0, 0.5]],  # B: task 0; head on f0 [2, 1.5, 3, -2] -> class 2 (task 1);
        # head on f1 [-2, .5, 1, 2] -> class 3 (task 1): stays on adapter 1
        [[2.0, 1.5], [1.0, 0.0]],  # C: task 0 -> task 1 (as B); head on f1 [1, 0, 0, -1] ->
        # class 0 (task 0) -> task 1 -> ... a cycle, cut after 4 head evaluations (adapter 1)
    ]
)


def test_retrieval_by_hand():
    final = retrieve(FEATURES, HEAD, PROTOTYPES, TASK_OF, steps=4, ensemble=False)
    expected = torch.tensor([[2.0, -1.0, -2.0, -2.0], [-2.0, 0.5, 1.0, 2.0], [1.0, 0.0, 0.0, -1.0]])
    assert torch.allclose(final, expected)
    # three head evaluations: C ends on adapter 0 (0 -> 1 -> 0)
    final = retrieve(FEATURES, HEAD, PROTOTYPES, TASK_OF, steps=3, ensemble=False)
    assert torch.allclose(final[2], torch.tensor([2.0, 1.5, 3.0, -2.0]))
    assert torch.allclose(final[:2], expected[:2])
    # one evaluation: every sample answers from the adapter the cosine classifier picked
    final = retrieve(FEATURES, HEAD, PROTOTYPES, TASK_OF, steps=1, ensemble=False)
    assert torch.allclose(final, HEAD(FEATURES[:, 0]))


def test_ensemble_by_hand():
    scores = retrieve(FEATURES[:1], HEAD, PROTOTYPES, TASK_OF, steps=4, ensemble=True)
    # sample A: softmax([2, -1, -2, -2]) + softmax(2 x cosines), cosines of [2, -1] (norm
    # sqrt 5) with the prototypes: 2/sqrt5, -1/sqrt5, -2/sqrt5, 1/sqrt5
    final = [math.exp(v) for v in (2.0, -1.0, -2.0, -2.0)]
    cosine = [math.exp(2 * v / math.sqrt(5)) for v in (2.0, -1.0, -2.0, 1.0)]
    expected = [f / sum(final) + c / sum(cosine) for f, c in zip(final, cosine)]
    assert scores[0].tolist() == pytest.approx(expected, rel=1e-5)


def test_predict_features_runs_the_retrieval_per_sample():
    strategy = _strategy(ensemble=False)
    strategy.head, strategy.prototypes, strategy.task_of = HEAD, PROTOTYPES, TASK_OF
    strategy.branches = [None, None]  # two tasks; only their count is read here
    scores = strategy.predict_features(FEATURES.reshape(3, 4))
    expected = retrieve(FEATURES, HEAD, PROTOTYPES, TASK_OF, 4, False)
    assert torch.equal(scores, expected)
    # each sample alone gets the same answer as in the batch
    for i in range(3):
        assert torch.equal(
            strategy.predict_features(FEATURES[i : i + 1].reshape(1, 4)), scores[i : i + 1]
        )


def test_orthogonality_loss_by_hand():
    # M = [[0, 1], [1, 0]]: M M^T / 0.8 = 1.25 I; each row's cross-entropy log(1 + e^-1.25)
    loss = orthogonality_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1.25)))


def test_resume_equals_an_unbroken_run(tmp_path):
    spec = RunSpec(strategy="mos", stream="synthetic", out_dir=tmp_path, cache_dir=None)
    resumed, whole = interrupted_and_unbroken(spec)
    assert resumed.accuracy_matrix == whole.accuracy_matrix
    assert resumed.strategy_report == whole.strategy_report


@pytest.mark.parametrize(
    "key, value",
    [
        ("reg", -0.1),
        ("adapter_momentum", 1.5),
        ("adapter_momentum", -0.1),
        ("ca_epochs", -1),
        ("ca_lr", -0.005),
        ("ca_samples_per_class", 0),
        ("retrieval_steps", 0),
        ("ca_storage", "multi-centroid"),
        ("test_adapters", "latest"),
        ("lr", -0.03),
        ("head_lr_scale", -1.0),
    ],
)
def test_config_ranges(key, value):
    with pytest.raises(ConfigError, match=key):
        resolve(MosConfig, {key: value})


def test_defaults_are_the_reference_cifar_config():
    config = resolve(MosConfig)
    assert (config.epochs, config.lr, config.batch_size, config.weight_decay) == (
        20,
        0.03,
        48,
        5e-4,
    )
    assert (config.reg, config.adapter_momentum, config.ensemble) == (0.1, 0.1, True)
    assert (config.ca_epochs, config.ca_lr, config.ca_storage) == (30, 0.005, "covariance")
    assert (config.adapter_bottleneck, config.adapter_scale, config.adapter_dropout) == (
        16,
        0.1,
        0.1,
    )


def test_variance_storage_keeps_the_diagonal_and_samples_from_it():
    from cilbench.learn.gaussians import ClassGaussians

    features = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
    labels = torch.tensor([0, 0, 0])
    full, diagonal = ClassGaussians(1e-4), ClassGaussians(1e-4, diagonal=True)
    full.add(features, labels, (0,))
    diagonal.add(features, labels, (0,))
    # unbiased variances of [0, 2, 4] and [1, 1, 4]: 4 and 3, plus the ridge
    assert diagonal.covariances.shape == (1, 2)
    assert torch.allclose(
        diagonal.covariances[0], torch.tensor([4.0001, 3.0001], dtype=torch.float64)
    )
    assert torch.allclose(full.covariances[0].diagonal(), diagonal.covariances[0])
    draws = diagonal.sample(0, 20000, torch.Generator().manual_seed(0))
    assert torch.allclose(draws.var(0), torch.tensor([4.0, 3.0]), rtol=0.05)
    assert torch.allclose(draws.mean(0), torch.tensor([2.0, 2.0]), atol=0.05)

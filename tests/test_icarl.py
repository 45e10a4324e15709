"""iCaRL: the distillation loss and the nearest-mean-of-exemplars rule by hand, the memory budget
over a run, resume, config ranges."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from cilbench.core.config import resolve
from cilbench.core.errors import ConfigError
from cilbench.engine.spec import RunSpec
from cilbench.learn.distillation import distillation_loss
from cilbench.learn.exemplars import exemplar_mean, nme_scores
from cilbench.strategies.icarl import ICaRLConfig
from cilbench.testing import (
    interrupted_and_unbroken,
    make_strategy,
    synthetic_stream,
    tiny_backbone,
)


def test_distillation_loss_by_hand():
    """Old logits (ln 3, 0) at T = 1 give targets (3/4, 1/4); new logits (0, 0) at T = 2 ...
    one sample each: the loss is -sum_c p_c log q_c, averaged over the batch, no T^2."""
    # sample 1: old (2 ln 3, 0) / T=2 -> (ln 3, 0) -> p = (3/4, 1/4); new (0, 0) -> q = (1/2, 1/2)
    # sample 2: old (0, 0) -> p = (1/2, 1/2); new (2 ln 2, 0) / 2 = (ln 2, 0) -> q = (2/3, 1/3)
    old = torch.tensor([[2 * math.log(3), 0.0], [0.0, 0.0]])
    new = torch.tensor([[0.0, 0.0], [2 * math.log(2), 0.0]])
    first = -(0.75 * math.log(0.5) + 0.25 * math.log(0.5))
    second = -(0.5 * math.log(2 / 3) + 0.5 * math.log(1 / 3))
    loss = distillation_loss(new, old, temperature=2.0)
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_distillation_gradient_reaches_only_the_new_logits():
    old = torch.tensor([[1.0, -1.0]], requires_grad=True)
    new = torch.tensor([[0.5, 0.2]], requires_grad=True)
    distillation_loss(new, old, 2.0).backward()
    assert old.grad is None and new.grad is not None


def test_nearest_mean_of_exemplars_by_hand():
    """Class 0's exemplars (2, 0) and (0, 3) normalise to (1, 0), (0, 1): mean (1/2, 1/2),
    normalised (1/sqrt2, 1/sqrt2); class 1's single exemplar (-5, 0) -> (-1, 0)."""
    mean0 = exemplar_mean(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    mean1 = exemplar_mean(torch.tensor([[-5.0, 0.0]]))
    s = 1 / math.sqrt(2)
    assert torch.allclose(mean0, torch.tensor([s, s], dtype=torch.float64))
    assert torch.allclose(mean1, torch.tensor([-1.0, 0.0], dtype=torch.float64))
    means = torch.stack([mean0, mean1])
    # queries: (10, 0) -> (1, 0); (0, -1) -> (0, -1); (-1, 1) -> (-s, s)
    queries = torch.tensor([[10.0, 0.0], [0.0, -1.0], [-1.0, 1.0]])
    scores = nme_scores(queries, means)
    # squared distances of unit vectors: 2 - 2 cos
    expected = -torch.tensor(
        [
            [2 - 2 * s, 4.0],
            [2 + 2 * s, 2.0],
            [2.0, 2 - 2 * s],
        ]
    )
    assert torch.allclose(scores, expected, atol=1e-6)
    assert scores.argmax(dim=1).tolist() == [0, 1, 1]


def test_the_memory_holds_its_budget_after_every_experience():
    stream, backbone = synthetic_stream(), tiny_backbone()
    strategy = make_strategy("icarl", backbone, stream, memory_size=20)
    labels_of: dict[int, int] = {}  # training image position -> stream label, so far
    for experience in stream.experiences:
        strategy.train_experience(experience)
        seen = experience.num_seen_classes
        per_class = strategy.memory.report()["exemplars_per_class"]
        assert sorted(int(c) for c in per_class) == list(range(seen))
        assert set(per_class.values()) == {20 // seen}
        assert strategy.exemplar_images() == (20 // seen) * seen <= 20
        # every kept image is a distinct training image of its own class
        train = experience.train
        labels_of.update(zip(train.indices.tolist(), train.labels.tolist()))
        kept = strategy.memory.view(train.source)
        assert [labels_of[int(i)] for i in kept.indices] == kept.labels.tolist()
        assert len(set(kept.indices.tolist())) == len(kept)
        assert strategy.class_means.shape[0] == seen
    assert strategy.exemplar_budget() == "20 total, herding"


def test_a_fixed_number_per_class():
    stream, backbone = synthetic_stream(), tiny_backbone()
    strategy = make_strategy("icarl", backbone, stream, memory_per_class=3, selection="random")
    for experience in stream.experiences[:2]:
        strategy.train_experience(experience)
    assert strategy.exemplar_images() == 3 * stream.experiences[1].num_seen_classes
    assert strategy.exemplar_budget() == "3 per class, random"


def test_nme_predictions_use_the_exemplar_means_and_cnn_the_head():
    stream, backbone = synthetic_stream(), tiny_backbone()
    strategy = make_strategy("icarl", backbone, stream)
    first = stream.experiences[0]
    strategy.train_experience(first)
    prepared = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = strategy.network.backbone(prepared)
        expected = nme_scores(features, strategy.class_means)
        assert torch.allclose(strategy.predict(prepared), expected)
        strategy.config = replace(strategy.config, classifier="cnn")
        assert torch.allclose(strategy.predict(prepared), strategy.network(prepared)[:, :2])


def test_resumed_run_equals_an_unbroken_one(tmp_path):
    spec = RunSpec(
        strategy="icarl", stream="synthetic", out_dir=tmp_path, cache_dir=None, num_workers=0
    )
    resumed, whole = interrupted_and_unbroken(spec, stop_after=2)
    assert resumed.accuracy_matrix == whole.accuracy_matrix
    assert resumed.cost["exemplar_images"] == whole.cost["exemplar_images"] == 20
    assert whole.flags["exemplar_budget"] == "20 total, herding"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("temperature", 0.0),
        ("temperature", -1.0),
        ("memory_size", -1),
        ("memory_per_class", -2),
        ("selection", "kmeans"),
        ("classifier", "knn"),
        ("first_weight_decay", -1e-4),
    ],
)
def test_out_of_range_settings_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        resolve(ICaRLConfig, {key: value})


def test_an_empty_memory_is_refused():
    stream, backbone = synthetic_stream(), tiny_backbone()
    with pytest.raises(ConfigError, match="memory"):
        make_strategy("icarl", backbone, stream, memory_size=0, memory_per_class=0)

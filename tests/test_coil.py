"""Coil: the transport plan and the classifier rows carried along it by hand (prospective: old ->
new initial rows with the norm calibration; retrospective: new -> old), the loss weights'
schedule, the strategy's rows and memory, resume, config ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cilbench.core.config import resolve
from cilbench.core.errors import ConfigError
from cilbench.engine.spec import RunSpec
from cilbench.learn.transport import (
    carry_rows,
    class_cost,
    prospective_rows,
    retrospective_rows,
    sinkhorn_plan,
)
from cilbench.strategies.coil import (
    CoilConfig,
    cosine_logits,
    prospective_schedule,
    retrospective_schedule,
    soft_cross_entropy,
)
from cilbench.testing import (
    interrupted_and_unbroken,
    make_strategy,
    synthetic_stream,
    tiny_backbone,
)

REG = 0.464  # PILOT's `sinkhorn`
C = REG * math.log(3)  # a cost with exp(-C / reg) = 1/3
MEANS = torch.tensor([[0.0, 0.0], [C, 0.0]])
"""Two classes at Minkowski-3 distance C; a class of the other side on each."""


def test_cost_is_the_minkowski_p_distance():
    a = torch.tensor([[0.0, 0.0]])
    b = torch.tensor([[1.0, 2.0]])
    assert class_cost(a, b, 3.0).item() == pytest.approx(9 ** (1 / 3))
    assert class_cost(a, b, 2.0).item() == pytest.approx(math.sqrt(5))
    assert class_cost(a, b, 3.0).dtype == torch.float64


def test_symmetric_2x2_plan_by_hand():
    """Cost [[0, c], [c, 0]], marginals (1/2, 1/2) both sides: by symmetry the plan is the
    kernel K = exp(-cost / reg) scaled to the marginals, K / (2 (1 + e)), e = exp(-c / reg).
    With c = reg ln 3: e = 1/3, the plan [[3/8, 1/8], [1/8, 3/8]]."""
    plan = sinkhorn_plan(class_cost(MEANS, MEANS, 3.0), 2, REG)
    assert torch.allclose(plan, torch.tensor([[3 / 8, 1 / 8], [1 / 8, 3 / 8]]).double(), atol=1e-9)
    c = 0.3  # any other cost, the same closed form
    e = math.exp(-c / REG)
    plan = sinkhorn_plan(torch.tensor([[0.0, c], [c, 0.0]], dtype=torch.float64), 2, REG)
    expected = torch.tensor([[1.0, e], [e, 1.0]], dtype=torch.float64) / (2 * (1 + e))
    assert torch.allclose(plan, expected, atol=1e-9)


def test_unbalanced_plan_matches_an_independent_sinkhorn_knopp():
    """2 old, 3 new classes: marginals 1/2 on every class of both sides (PILOT's), so the new side
    sums to 3/2 and Sinkhorn cannot converge; POT's plan is its 1000th iterate. An independent
    numpy Sinkhorn-Knopp (v = b / K^T u, then u = a / K v, from u = 1/2) gives the same, and its
    rows sum to the old marginal (the last update)."""
    rng = np.random.default_rng(0)
    cost = rng.uniform(0, 2, size=(2, 3))
    plan = sinkhorn_plan(torch.tensor(cost), 2, REG).numpy()
    kernel = np.exp(-cost / REG)
    a, b = np.full(2, np.float32(1 / 2)), np.full(3, np.float32(1 / 2))
    u = np.full(2, 1 / 2)
    for _ in range(1000):
        v = b / (kernel.T @ u)
        u = a / (kernel @ v)
    expected = u[:, None] * kernel * v[None, :]
    assert np.allclose(plan, expected, rtol=1e-10, atol=1e-12)
    assert np.allclose(plan.sum(axis=1), 1 / 2)
    assert not np.allclose(plan.sum(axis=0), 1 / 2)


def test_prospective_rows_by_hand():
    """Old rows (3, 0) and (0, 4), old class i at new class i's mean: plan [[3/8, 1/8],
    [1/8, 3/8]]; carried = 2 P^T [e1; e2] = [[3/4, 1/4], [1/4, 3/4]] (norm sqrt(5/8) each),
    gamma = mean old norm 3.5 / sqrt(5/8): the new rows' mean norm is the old rows'."""
    old_rows = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    rows, gamma = prospective_rows(MEANS, MEANS, old_rows, 3.0, REG)
    carried = torch.tensor([[0.75, 0.25], [0.25, 0.75]])
    assert gamma.item() == pytest.approx(3.5 / math.sqrt(5 / 8), rel=1e-6)
    assert torch.allclose(rows, carried * 3.5 / math.sqrt(5 / 8), atol=1e-5)
    assert rows.norm(dim=1).mean().item() == pytest.approx(3.5, rel=1e-6)


def test_retrospective_rows_by_hand():
    """New class j at old class j's mean (cost + 1e-8 changes no plan): P = [[3/8, 1/8],
    [1/8, 3/8]] (new x old); new rows (0, 5), (2, 0) normalised to e2, e1; old rows
    2 P^T [e2; e1] = [[1/4, 3/4], [3/4, 1/4]]: old class 0 mostly gets new class 0's direction."""
    new_rows = torch.tensor([[0.0, 5.0], [2.0, 0.0]])
    rows = retrospective_rows(MEANS, MEANS, new_rows, 3.0, REG)
    assert torch.allclose(rows, torch.tensor([[0.25, 0.75], [0.75, 0.25]]), atol=1e-6)
    plan = torch.tensor([[0.5, 0.0], [0.0, 0.5]])  # a plan that keeps each class
    assert torch.allclose(carry_rows(plan, new_rows, 2.0), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_loss_weight_schedules():
    """PILOT: prospective max(1 - (e / 2)^2, 0) only while e < 1; retrospective (e / E)^2 from
    e = 1 (PILOT's else branch)."""
    assert [prospective_schedule(e) for e in range(3)] == [1.0, 0.0, 0.0]
    assert [retrospective_schedule(e, 10) for e in (0, 1, 5, 9)] == pytest.approx(
        [0.0, 0.01, 0.25, 0.81]
    )


def test_soft_cross_entropy_and_cosine_logits_by_hand():
    log_probs = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75]]))
    targets = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    expected = (math.log(2) + 0.5 * (math.log(4) + math.log(4 / 3))) / 2
    assert soft_cross_entropy(log_probs, targets).item() == pytest.approx(expected, rel=1e-6)
    features = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    rows = torch.tensor([[0.0, 3.0], [5.0, 0.0]])
    assert torch.allclose(
        cosine_logits(features, rows), torch.tensor([[0.0, 1.0], [0.5**0.5, 0.5**0.5]])
    )


@pytest.fixture(scope="module")
def trained():
    """Coil through the synthetic stream (2 classes a task), the rows at each growth."""
    stream, backbone = synthetic_stream(), tiny_backbone()
    strategy = make_strategy("coil", backbone, stream, memory_size=20)
    network = strategy.network
    grown = []
    grow = network.grow

    def recording_grow(rows):
        grown.append((network.head.weight.detach().clone(), rows.detach().clone()))
        grow(rows)

    network.grow = recording_grow
    for experience in stream.experiences:
        strategy.train_experience(experience)
    return strategy, stream, grown


def test_new_rows_are_calibrated_transports_of_the_old_rows(trained):
    strategy, _, grown = trained
    dim = strategy.backbone.feature_dim
    first_old, first_rows = grown[0]
    assert first_old.shape == (0, dim)
    assert first_rows.abs().max() <= dim**-0.5  # CosineLinear's U(-1/sqrt D, 1/sqrt D)
    for old, rows in grown[1:]:
        assert rows.shape == (2, dim)
        # gamma: the new rows' mean norm is the old rows'
        assert rows.norm(dim=1).mean().item() == pytest.approx(old.norm(dim=1).mean().item())
        # each new row is a nonnegative combination of the normalised old rows
        basis = torch.nn.functional.normalize(old, dim=1).T.double()
        weights = torch.linalg.lstsq(basis, rows.T.double()).solution
        assert torch.allclose(basis @ weights, rows.T.double(), atol=1e-5)
        assert (weights > 0).all()


def test_memory_plans_and_report(trained):
    strategy, stream, _ = trained
    seen = stream.experiences[-1].num_seen_classes
    assert strategy.exemplar_images() == (20 // seen) * seen
    assert strategy.exemplar_budget() == "20 total, herding"
    # every old class's training images are kept as positions for the prospective means
    for experience in stream.experiences:
        for label in experience.train.classes():
            count = int((experience.train.labels == label).sum())
            assert len(strategy.trained_on.positions[int(label)]) == count
    report = strategy.report()
    # synthetic recipe: 2 epochs, resolve every 2 steps of epoch 1; none on experience 0
    assert report["retrospective_plans"]["0"] == 0
    for t, experience in enumerate(stream.experiences[1:], start=1):
        images = len(experience.train) + 20  # at most the whole memory besides
        assert report["retrospective_plans"][str(t)] >= 1
        assert report["retrospective_plans"][str(t)] <= math.ceil(images / 16)
    assert len(report["epoch_losses"]["0"]) == 2


def test_predictions_are_the_cosine_classifier(trained):
    strategy, stream, _ = trained
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = strategy.predict(images)
        features = strategy.network.backbone(images)
        head = strategy.network.head
        expected = head.sigma * cosine_logits(features, head.weight)
    assert logits.shape == (3, stream.experiences[-1].num_seen_classes)
    assert torch.allclose(logits, expected, atol=1e-6)


def test_resumed_run_equals_an_unbroken_one(tmp_path):
    spec = RunSpec(
        strategy="coil", stream="synthetic", out_dir=tmp_path, cache_dir=None, num_workers=0
    )
    resumed, whole = interrupted_and_unbroken(spec, stop_after=1)
    assert resumed.accuracy_matrix == whole.accuracy_matrix
    assert resumed.cost["exemplar_images"] == whole.cost["exemplar_images"]
    assert resumed.strategy_report["epoch_losses"] == whole.strategy_report["epoch_losses"]
    assert resumed.strategy_report["gamma"] == whole.strategy_report["gamma"]
    assert whole.flags["exemplar_budget"] == "20 total, herding"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("sinkhorn_reg", 0.0),
        ("cost_norm", -1.0),
        ("prospective_weight", -1e-3),
        ("retrospective_weight", -1.0),
        ("resolve_every", 0),
        ("temperature", 0.0),
        ("old_means", "all"),
        ("classifier", "knn"),
        ("memory_size", -1),
        ("lr", 0.0),
    ],
)
def test_out_of_range_settings_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        resolve(CoilConfig, {key: value})

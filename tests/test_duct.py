"""DUCT: the task-vector merge and the classifier transport against hand computations, the
schedule, resume, and the config's ranges."""

from __future__ import annotations

import math

import pytest
import torch

from cilbench.core.config import resolve
from cilbench.core.errors import ConfigError
from cilbench.engine.spec import RunSpec
from cilbench.learn.training import TrainSettings, make_optimizer, make_scheduler
from cilbench.strategies.duct import (
    DuctConfig,
    merge_task_vector,
    transport_plan,
    transport_rows,
)
from cilbench.testing import (
    interrupted_and_unbroken,
    make_strategy,
    synthetic_stream,
    tiny_backbone,
)


def test_task_vector_merge_by_hand():
    # theta_0 = [1, 2]; task 0 ends at [3, 0]: task vector [2, -2], x 0.25 x 0.5 = [0.25, -0.25]
    # task 1 ends at [1, 6]: [0, 4] x 0.25 x 1 = [0, 1]; sum [0.25, 0.75], weights [1.25, 2.75]
    pretrained = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(7)}
    merged: dict[str, torch.Tensor] = {}
    first = merge_task_vector(merged, pretrained, {"w": torch.tensor([3.0, 0.0])}, 0.25, 0.5)
    assert torch.equal(first["w"], torch.tensor([1.25, 1.75]))
    assert torch.equal(merged["w"], torch.tensor([0.25, -0.25]))
    second = merge_task_vector(merged, pretrained, {"w": torch.tensor([1.0, 6.0])}, 0.25, 1.0)
    assert torch.equal(merged["w"], torch.tensor([0.25, 0.75]))
    assert torch.equal(second["w"], torch.tensor([1.25, 2.75]))
    # relative to theta_0, not to the previous merge; integer tensors stay theta_0's
    assert torch.equal(pretrained["w"], torch.tensor([1.0, 2.0]))
    assert int(second["steps"]) == 7 and "steps" not in merged


def test_two_by_two_plan_by_hand():
    # means 0 and 1 apart: cost [[0, 1], [1, 0]]; reg 1: K = [[1, 1/e], [1/e, 1]]. Uniform
    # marginals 1/2: the plan is K / (2 (1 + 1/e)): 0.365529 on the diagonal, 0.134471 off it
    new = torch.tensor([[0.0], [1.0]])
    old = torch.tensor([[0.0], [1.0]])
    plan = transport_plan(new, old, 1.0)
    diagonal = 1 / (2 * (1 + math.exp(-1)))
    expected = torch.tensor([[diagonal, 0.5 - diagonal], [0.5 - diagonal, diagonal]])
    assert plan.dtype == torch.float64
    assert torch.allclose(plan, expected.double(), atol=1e-7)
    # new rows e1, e2; old rows [2, 2], [0, 4]; ratio 0.25: 0.75 old + 0.25 plan^T new
    moved = transport_rows(torch.tensor([[2.0, 2.0], [0.0, 4.0]]), torch.eye(2), plan, 0.25)
    hand = torch.tensor(
        [[1.5 + 0.25 * diagonal, 1.5 + 0.25 * (0.5 - diagonal)],
         [0.25 * (0.5 - diagonal), 3.0 + 0.25 * diagonal]]
    )  # fmt: skip
    assert moved.dtype == torch.float32
    assert torch.allclose(moved, hand, atol=1e-6)


def test_three_by_three_plan_carries_each_new_row_to_its_nearest_old_class():
    # new class i sits on old class i + 1 (mod 3), 1 from the others; reg 0.05: K is 1 on that
    # cyclic shift and e^-20 elsewhere, the plan K / (3 (1 + 2 e^-20)) ~ the shift / 3.
    # Old row j receives new row j - 1 over 3: [0, 0, 3], [1, 0, 0], [0, 2, 0].
    old_means = torch.eye(3) / math.sqrt(2)  # pairwise distance 1
    new_means = old_means[[1, 2, 0]]
    plan = transport_plan(new_means, old_means, 0.05)
    shift = torch.zeros(3, 3, dtype=torch.float64)
    shift[[0, 1, 2], [1, 2, 0]] = 1.0
    tiny = math.exp(-20)
    expected = (shift + tiny * (1 - shift)) / (3 * (1 + 2 * tiny))
    assert torch.allclose(plan, expected, rtol=1e-6, atol=1e-12)
    new_rows = torch.diag(torch.tensor([3.0, 6.0, 9.0]))
    moved = transport_rows(torch.ones(3, 3), new_rows, plan, 0.25)
    carried = torch.tensor([[0.0, 0.0, 3.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert torch.allclose(moved, 0.75 + 0.25 * carried, atol=1e-6)


def test_strategy_transports_every_older_task_toward_the_newest():
    strategy = make_strategy("duct", tiny_backbone(), synthetic_stream())
    dim = strategy.backbone.feature_dim
    head = strategy.network.head
    rows = torch.randn(6, dim, generator=torch.Generator().manual_seed(0))
    head.weight = torch.nn.Parameter(rows.clone())
    strategy.sizes = [2, 2, 2]
    strategy.means = torch.randn(6, dim, generator=torch.Generator().manual_seed(1))
    strategy._transport()
    ratio, reg = strategy.config.head_merge_ratio, strategy.config.ot_reg
    means = strategy.means
    for old in (slice(0, 2), slice(2, 4)):
        plan = transport_plan(means[4:6], means[old], reg)
        expected = (1 - ratio) * rows[old] + ratio * (plan.T @ rows[4:6].double()).float()
        assert torch.allclose(head.weight[old].detach(), expected, atol=1e-6)
    assert torch.equal(head.weight[4:6].detach(), rows[4:6])


def test_new_rows_start_at_zero_after_the_first_task():
    strategy = make_strategy("duct", tiny_backbone(), synthetic_stream())
    strategy._grow_head(2, torch.Generator().manual_seed(0))
    first = strategy.network.head.weight.detach().clone()
    bound = 1 / math.sqrt(strategy.backbone.feature_dim)
    assert first.abs().max() <= bound and first.abs().max() > 0
    strategy.sizes = [2]
    strategy._grow_head(3, torch.Generator().manual_seed(0))
    weight = strategy.network.head.weight.detach()
    assert torch.equal(weight[:2], first) and torch.equal(weight[2:], torch.zeros(3, len(first[0])))


def test_constantlr_default_schedule_is_a_third_for_five_epochs():
    settings = TrainSettings(epochs=7, lr=0.3, schedule="constantlr-default")
    optimizer = make_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}], settings)
    scheduler = make_scheduler(optimizer, settings)
    rates = []
    for _ in range(7):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.1] * 5 + [0.3] * 2)


def test_resume_equals_an_unbroken_run(tmp_path):
    spec = RunSpec(strategy="duct", stream="synthetic", out_dir=tmp_path, cache_dir=None)
    resumed, whole = interrupted_and_unbroken(spec)
    assert resumed.accuracy_matrix == whole.accuracy_matrix
    assert resumed.strategy_report == whole.strategy_report


@pytest.mark.parametrize(
    "key, value",
    [
        ("epochs", 0),
        ("lr", -0.1),
        ("backbone_lr_scale", -0.01),
        ("momentum", 1.0),
        ("weight_decay", -1e-4),
        ("batch_size", 0),
        ("schedule", "multistep"),
        ("retrain_epochs", -1),
        ("retrain_lr", -0.001),
        ("merge_scalar", -0.25),
        ("head_merge_ratio", 1.5),
        ("head_merge_ratio", -0.1),
        ("ot_reg", 0.0),
        ("num_workers", -1),
    ],
)
def test_config_ranges(key, value):
    with pytest.raises(ConfigError, match=key):
        resolve(DuctConfig, {key: value})


def test_defaults_are_the_reference_cifar_config():
    c = resolve(DuctConfig)
    assert (c.epochs, c.lr, c.backbone_lr_scale, c.batch_size, c.weight_decay) == (
        10, 0.1, 0.01, 128, 5e-4,
    )  # fmt: skip
    assert (c.merge_scalar, c.head_merge_ratio, c.ot_reg, c.retrain_epochs) == (0.25, 0.25, 0.02, 5)
    assert (c.momentum, c.schedule, c.retrain_lr) == (0.9, "constantlr-default", None)

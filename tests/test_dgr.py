"""DGR: the reweighting factors, the distillation scale and the logit adjustment by hand; the
rewritten head gradients against PILOT's per-row loop; the rewrite reaching the optimiser step
through `fit`; a run through the synthetic stream; resume; config ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cilbench.core.config import resolve
from cilbench.core.errors import ConfigError
from cilbench.engine.spec import RunSpec
from cilbench.learn.distillation import distillation_loss
from cilbench.learn.heads import TaskHeads
from cilbench.learn.training import TrainSettings, fit
from cilbench.strategies.dgr import (
    DGRConfig,
    GradientReweighting,
    distillation_scale,
    log_prior,
    reweighting_factors,
)
from cilbench.testing import (
    interrupted_and_unbroken,
    make_strategy,
    synthetic_stream,
    tiny_backbone,
)


def test_first_experience_factors_by_hand():
    """Accumulated norms (2, 4, 1): min 1, so 1/2, 1/4, 1."""
    assert reweighting_factors(np.array([2.0, 4.0, 1.0]), 0, 1.0).tolist() == [0.5, 0.25, 1.0]


def test_later_factors_by_hand():
    """Two old classes with accumulated norms (4, 2), two new with (1, 2): within each group
    min / a = (1/2, 1) and (1, 1/2); r = mean(new) / mean(old) = 1.5 / 3 = 1/2, so the old ones
    x min(1, 1/2) and the new ones x min(1, 1/2 exp(-gamma_r 2/4))."""
    a = np.array([4.0, 2.0, 1.0, 2.0])
    damp = 0.5 * math.exp(-0.5)
    assert reweighting_factors(a, 2, 1.0).tolist() == pytest.approx(
        [0.25, 0.5, damp, damp / 2], rel=1e-12
    )
    assert reweighting_factors(a, 2, 0.0).tolist() == pytest.approx([0.25, 0.5, 0.5, 0.25])
    # new classes with the larger norms: r = 3 / 2 caps the old factors at 1, the new ones at
    # min(1, 1.5 exp(-1/2)) = 0.9098 (K = 2 of N = 4)
    factors = reweighting_factors(np.array([2.0, 2.0, 3.0, 3.0]), 2, 1.0)
    assert factors.tolist() == pytest.approx([1, 1, 1.5 * math.exp(-0.5), 1.5 * math.exp(-0.5)])
    assert 1.5 * math.exp(-0.5) == pytest.approx(0.909796, rel=1e-6)


def test_distillation_scale_by_hand():
    """Factors (1, 1/2, 1/4, 1) x cross-entropy norms (3, 8, 0, 0) = (3, 4, 0, 0), norm 5;
    distillation norms (6, 8), norm 10: s = 1/2. A zero distillation gradient gives 0."""
    weights = np.array([1.0, 0.5, 0.25, 1.0])
    ce = np.array([3.0, 8.0, 0.0, 0.0], dtype=np.float32)
    assert distillation_scale(weights, ce, np.array([6.0, 8.0], dtype=np.float32)) == 0.5
    assert distillation_scale(weights, ce, np.zeros(2, dtype=np.float32)) == 0.0


def test_log_prior_by_hand():
    """20 exemplars each of two old classes, 60 images of one new class: shares 1/5, 1/5, 3/5;
    a balanced set adds one constant to every logit (no effect on the cross-entropy)."""
    prior = log_prior(np.array([20, 20, 60]))
    assert prior.dtype == torch.float32
    assert prior.tolist() == pytest.approx([math.log(0.2), math.log(0.2), math.log(0.6)])
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    balanced = log_prior(np.array([5, 5, 5]))
    assert F.cross_entropy(logits + balanced, labels).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6
    )


def _heads(dim: int, sizes: list[int]) -> TaskHeads:
    heads = TaskHeads(dim)
    generator = torch.Generator().manual_seed(3)
    for size in sizes:
        heads.grow(size, generator, init="kaiming-uniform")
    return heads


def _pilot_rewrite(ce: tuple, kd: tuple, gradall: np.ndarray, known: int, gamma: float) -> tuple:
    """PILOT `_update_representation`'s rewrite, typed out row by row with its numpy scalars."""
    grad_cn, bias_cn = ce
    grad_kd, bias_kd = kd
    total = len(gradall)
    grad_norm_cn = list(torch.norm(grad_cn, dim=1).numpy())
    grad_norm_kd = list(torch.norm(grad_kd[:known], dim=1).numpy())
    gradall += np.array(grad_norm_cn)
    old, new = np.array(gradall[:known]), np.array(gradall[known:])
    weight = np.array((np.min(old) / old).tolist() + (np.min(new) / new).tolist())
    ratio = np.mean(new) / np.mean(old)
    weight[:known] *= min(1.0, ratio)
    weight[known:] *= min(1.0, ratio * np.exp(-1 * gamma * (known / total)))
    both = [weight[k] * grad_norm_cn[k] for k in range(total)]
    ratio_kd = np.linalg.norm(both) / np.linalg.norm(grad_norm_kd)
    out_w, out_b = torch.zeros_like(grad_cn), torch.zeros_like(bias_cn)
    for i in range(total):
        out_w[i, :] = weight[i] * grad_cn[i, :]
        out_b[i] = weight[i] * bias_cn[i]
        if i < known:
            out_w[i, :] = weight[i] * grad_cn[i, :] + ratio_kd * grad_kd[i, :]
            out_b[i] = weight[i] * bias_cn[i] + ratio_kd * bias_kd[i]
    return out_w, out_b, weight


def test_head_gradients_are_rewritten_as_pilot_does():
    """Two old classes (one block), three new (another); two steps, so the norms accumulate.
    The head's gradients after `apply` equal PILOT's row loop bit for bit; the feature layer in
    front keeps the whole loss's gradient (ce + lambda K/(N-K) kd)."""
    torch.manual_seed(0)
    dim, known, seen = 6, 2, 5
    features = nn.Linear(4, dim)
    heads = _heads(dim, [2, 3])
    teacher = _heads(dim, [2])
    reweighting = GradientReweighting(heads, known, seen, gamma_r=1.0)
    gradall = np.zeros(seen)
    for step in range(2):
        images, labels = torch.randn(8, 4), torch.tensor([0, 1, 2, 3, 4, 2, 3, 4])
        logits = heads(features(images))
        ce = F.cross_entropy(logits + log_prior(np.array([2, 2, 6, 6, 6])), labels)
        kd = distillation_loss(logits[:, :known], teacher(features(images)).detach(), 2.0)
        params = [h.weight for h in heads.heads] + [h.bias for h in heads.heads]
        ce_grads = torch.autograd.grad(ce, params, retain_graph=True)
        kd_grads = torch.autograd.grad(kd, params, retain_graph=True)
        ce_pair = (torch.cat(ce_grads[:2]), torch.cat(ce_grads[2:]))
        kd_pair = (torch.cat(kd_grads[:2]), torch.cat(kd_grads[2:]))
        expected_w, expected_b, weight = _pilot_rewrite(ce_pair, kd_pair, gradall, known, 1.0)
        loss = ce + 1.0 * known / (seen - known) * kd
        (whole,) = torch.autograd.grad(loss, features.weight, retain_graph=True)
        reweighting.record(ce, kd)
        features.zero_grad()
        heads.zero_grad()
        loss.backward()
        reweighting.apply()
        got_w = torch.cat([h.weight.grad for h in heads.heads])
        got_b = torch.cat([h.bias.grad for h in heads.heads])
        assert torch.equal(got_w, expected_w), step
        assert torch.equal(got_b, expected_b), step
        assert np.array_equal(reweighting.last_factors, weight)
        assert np.array_equal(reweighting.accumulated, gradall)
        assert torch.equal(features.weight.grad, whole)  # the backbone is not reweighted
    assert (reweighting.last_factors <= 1).all() and reweighting.last_scale > 0


def test_the_rewrite_reaches_the_optimiser_step_through_fit():
    """Experience 0 (no distillation): one full batch, SGD lr 1 without momentum or weight
    decay; the head moves by minus the reweighted gradient, min(a) / a_c times each row."""
    torch.manual_seed(1)
    dim = 3
    heads = _heads(dim, [3])
    images, labels = torch.randn(6, dim), torch.tensor([0, 0, 0, 0, 1, 2])
    data = torch.utils.data.TensorDataset(images, labels)
    start = heads.heads[0].weight.detach().clone()
    logits = heads(images)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels), heads.heads[0].weight)
    norms = torch.norm(grad, dim=1).numpy().astype(np.float64)
    factors = torch.tensor(norms.min() / norms, dtype=torch.float32)
    reweighting = GradientReweighting(heads, 0, 3, gamma_r=1.0)
    settings = TrainSettings(
        epochs=1, batch_size=6, lr=1.0, momentum=0.0, weight_decay=0.0, schedule="constant"
    )
    fit(
        lambda x, y: F.cross_entropy(heads(x), y),
        [{"params": list(heads.parameters())}],
        data,
        lambda x: x,
        settings,
        torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        num_workers=0,
        before_step=reweighting.apply,
    )
    moved = start - heads.heads[0].weight.detach()
    assert torch.allclose(moved, factors[:, None] * grad, atol=1e-7)
    assert not torch.allclose(moved, grad, atol=1e-3)  # the rows really were rescaled
    assert float(factors.min()) < 1.0 == float(factors.max())


@pytest.fixture(scope="module")
def trained():
    stream, backbone = synthetic_stream(), tiny_backbone()
    strategy = make_strategy("dgr", backbone, stream, memory_size=20)
    for experience in stream.experiences:
        strategy.train_experience(experience)
    return strategy, stream


def test_a_run_trains_reweights_and_keeps_its_memory(trained):
    strategy, stream = trained
    report = strategy.report()
    seen = stream.experiences[-1].num_seen_classes
    assert strategy.network.heads.num_classes == seen
    assert len(report["epoch_losses"]) == len(stream.experiences)
    factors = report["last_reweighting_factors"]
    assert len(factors[str(len(stream.experiences) - 1)]) == seen
    assert all(0 < f <= 1 for values in factors.values() for f in values)
    assert strategy.exemplar_images() == (20 // seen) * seen
    assert strategy.exemplar_budget() == "20 total, herding"
    images = torch.randn(3, 3, 32, 32)
    assert strategy.predict(images).shape == (3, seen)


def test_resumed_run_equals_an_unbroken_one(tmp_path):
    spec = RunSpec(
        strategy="dgr", stream="synthetic", out_dir=tmp_path, cache_dir=None, num_workers=0
    )
    resumed, whole = interrupted_and_unbroken(spec, stop_after=1)
    assert resumed.accuracy_matrix == whole.accuracy_matrix
    assert resumed.cost["exemplar_images"] == whole.cost["exemplar_images"]
    assert resumed.strategy_report["epoch_losses"] == whole.strategy_report["epoch_losses"]
    assert whole.flags["exemplar_budget"] == "20 total, herding"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("gamma_r", -1.0),
        ("kd_weight", -0.5),
        ("temperature", 0.0),
        ("memory_size", -1),
        ("selection", "kmeans"),
        ("classifier", "knn"),
        ("lr", 0.0),
    ],
)
def test_out_of_range_settings_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        resolve(DGRConfig, {key: value})

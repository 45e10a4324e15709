"""SLCA: slow learner, Gaussian statistics, classifier alignment, logit normalisation."""

from __future__ import annotations

import copy

import pytest
import torch

from cilbench.backbones.model import create_backbone
from cilbench.core.errors import CilbenchError
from cilbench.data.augment import resolve_augmentation
from cilbench.engine.spec import RunSpec
from cilbench.features import FeatureStore
from cilbench.learn.alignment import normalize_logits
from cilbench.learn.gaussians import ClassGaussians
from cilbench.learn.training import make_optimizer
from cilbench.profiles import PROFILES
from cilbench.profiles.slca_alignment import train_on_features
from cilbench.testing import make_strategy, synthetic_stream, tiny_backbone


@pytest.fixture(scope="module")
def stream():
    return synthetic_stream()


def _backbone_after_one_step(stream, backbone_lr_scale: float):
    """Backbone and new-head parameters before/after one stage-1 step on experience 0."""
    backbone = tiny_backbone()
    first = stream.experiences[0]
    strategy = make_strategy(
        "slca",
        backbone,
        stream,
        epochs=1,
        batch_size=len(first.train),  # the whole experience in one batch: exactly one step
        backbone_lr_scale=backbone_lr_scale,
    )
    before = copy.deepcopy(strategy.network.backbone.state_dict())
    strategy.train_experience(first)
    after = strategy.network.backbone.state_dict()
    return torch.cat(
        [(after[k] - before[k]).flatten() for k in before if before[k].is_floating_point()]
    )


def test_slow_learner_groups_have_the_scaled_learning_rate(stream):
    strategy = make_strategy("slca", tiny_backbone(), stream, lr=0.02)
    strategy.network.heads.grow(2)
    groups = strategy.slow_learner_groups()
    optimizer = make_optimizer(groups, strategy.config.train_settings())
    head_group, backbone_group = optimizer.param_groups
    assert backbone_group["lr"] == pytest.approx(0.02 * 0.01)
    assert head_group["lr"] == pytest.approx(0.02)
    backbone_ids = {id(p) for p in strategy.network.backbone.parameters()}
    assert {id(p) for p in backbone_group["params"]} == backbone_ids
    assert {id(p) for p in head_group["params"]} == {
        id(p) for p in strategy.network.heads.heads[-1].parameters()
    }


def test_slow_learner_moves_the_backbone_a_hundred_times_less(stream):
    slow = _backbone_after_one_step(stream, backbone_lr_scale=0.01)
    fast = _backbone_after_one_step(stream, backbone_lr_scale=1.0)
    assert fast.norm() > 0
    # The first SGD step is lr * (grad + wd * w): linear in the learning rate (float32 rounding
    # of weights near 1 limits the element-wise agreement).
    assert slow.norm() / fast.norm() == pytest.approx(0.01, rel=1e-3)
    assert torch.allclose(slow, 0.01 * fast, atol=0.01 * float(slow.abs().max()))


def test_sampled_features_have_the_stored_statistics():
    generator = torch.Generator().manual_seed(0)
    dim = 4
    mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    features = torch.randn(400, dim, generator=generator, dtype=torch.float64) @ mixing + 3.0
    labels = torch.tensor([0] * 200 + [1] * 200)
    gaussians = ClassGaussians(ridge=1e-4)
    gaussians.add(features, labels, (0, 1))
    own = features[:200]
    centred = own - own.mean(0)
    expected_cov = centred.T @ centred / 199 + 1e-4 * torch.eye(dim, dtype=torch.float64)
    assert torch.allclose(gaussians.means[0], own.mean(0))
    assert torch.allclose(gaussians.covariances[0], expected_cov)

    draws = gaussians.sample(0, 50_000, torch.Generator().manual_seed(1), scale=0.95).double()
    assert draws.dtype == torch.float64 and draws.shape == (50_000, dim)
    scale = expected_cov.diagonal().sqrt()
    assert torch.allclose(draws.mean(0), 0.95 * own.mean(0), atol=float(0.03 * scale.max()))
    assert torch.allclose(
        torch.cov(draws.T), expected_cov, atol=float(0.03 * expected_cov.abs().max())
    )
    again = gaussians.sample(0, 50_000, torch.Generator().manual_seed(1), scale=0.95).double()
    assert torch.equal(draws, again)


def test_logit_normalisation_matches_a_hand_computation():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    # task norms: sqrt(1+4) = 2.2360680, sqrt(9+16) = 5; their mean 3.6180340; / tau 0.1
    expected = torch.tensor([[2.7639320, 5.5278640, 8.2917960, 11.0557281]])
    assert torch.allclose(normalize_logits(logits, [2, 2], 0.1), expected, atol=1e-5)
    # unequal task sizes: norms sqrt(1) = 1 and sqrt(4+9+16) = 5.3851648, mean 3.1925824
    expected = torch.tensor([[1.0, 2.0, 3.0, 4.0]]) / 3.1925824 / 0.5
    assert torch.allclose(normalize_logits(logits, [1, 3], 0.5), expected, atol=1e-5)


def test_alignment_trains_heads_only_and_restarts_from_unaligned_heads(stream):
    strategy = make_strategy("slca", tiny_backbone(), stream)
    first, second, third = stream.experiences
    strategy.train_experience(first)
    strategy.train_experience(second)
    unaligned_after_second = copy.deepcopy(strategy.unaligned.state_dict())
    aligned_after_second = copy.deepcopy(strategy.network.heads.state_dict())
    assert any(
        not torch.equal(unaligned_after_second[k], aligned_after_second[k])
        for k in aligned_after_second
    ), "classifier alignment did not change the heads"

    backbone = copy.deepcopy(strategy.network.backbone.state_dict())
    strategy._align(torch.Generator().manual_seed(5))
    for key, value in strategy.network.backbone.state_dict().items():
        assert torch.equal(value, backbone[key]), f"alignment changed the backbone ({key})"
    assert all(p.grad is None for p in strategy.network.backbone.parameters())

    strategy.train_experience(third)
    # Old heads are frozen in stage 1, so the stored un-aligned heads of the third experience
    # must be the second experience's un-aligned heads, not its aligned ones.
    unaligned = strategy.unaligned.state_dict()
    for key, value in unaligned_after_second.items():
        assert torch.equal(unaligned[key], value), f"alignment leaked into {key}"
    assert strategy.gaussians.means.shape[0] == third.num_seen_classes


def test_sample_features_shrink_older_class_means(stream):
    strategy = make_strategy("slca", tiny_backbone(), stream, ca_samples_per_class=4000)
    for experience in stream.experiences[:2]:
        strategy.train_experience(experience)
    features, labels = strategy.sample_features(torch.Generator().manual_seed(0))
    assert features.shape == (4 * 4000, strategy.network.heads.dim)
    assert torch.equal(torch.bincount(labels), torch.full((4,), 4000))
    means = strategy.gaussians.means.float()
    spread = strategy.gaussians.covariances.diagonal(dim1=1, dim2=2).sqrt().max()
    # 0.9 + 0.1 * (t + 1) / 2 for experiences t = 0, 1 after two experiences.
    for c, scale in zip(range(4), (0.95, 0.95, 1.0, 1.0)):
        empirical = features[labels == c].mean(0)
        assert torch.allclose(empirical, scale * means[c], atol=float(0.1 * spread))


def test_slca_refuses_experiences_without_new_classes():
    stream = synthetic_stream(scenario="domain-incremental")
    strategy = make_strategy("slca", tiny_backbone(), stream, epochs=1, ca_epochs=0)
    strategy.train_experience(stream.experiences[0])
    with pytest.raises(CilbenchError, match="only new classes"):
        strategy.train_experience(stream.experiences[1])


def test_profile_reports_throughput_and_stage_shares():
    from cilbench.engine.spec import RunSpec
    from cilbench.profiles import PROFILES

    figures = PROFILES.get("slca")(RunSpec(stream="synthetic", cache_dir=None, device="cpu"))
    assert figures["slow learner, cilbench fit (img/s)"] > 0
    assert figures["bare timm forward+backward, same batches (img/s)"] > 0
    assert 0 < figures["classifier alignment share of the experience"] < 1


def test_a_diverging_alignment_stops_with_a_clear_error(stream):
    from cilbench.learn.training import NonFiniteLossError

    strategy = make_strategy("slca", tiny_backbone(), stream, ca_lr=1e38, epochs=1)
    strategy.train_experience(stream.experiences[0])
    with pytest.raises(NonFiniteLossError, match="alignment loss"):
        strategy.train_experience(stream.experiences[1])


def test_fresh_final_norm_replaces_the_pretrained_layer_norm():
    """GengDavid/SLCA convs/vits.py: `del model.norm; model.norm = nn.LayerNorm(768)`."""
    backbone = tiny_backbone()
    stream = synthetic_stream()
    fresh = make_strategy("slca", backbone, stream).network.backbone.norm
    kept = make_strategy("slca", backbone, stream, fresh_final_norm=False).network.backbone.norm
    assert fresh.eps == 1e-5 and kept.eps == backbone.model.norm.eps == 1e-6
    assert torch.equal(fresh.weight, torch.ones(64)) and torch.equal(fresh.bias, torch.zeros(64))
    assert torch.equal(kept.weight, backbone.model.norm.weight)


@pytest.mark.parametrize("freeze", [True, False])
def test_stage_one_keeps_batchnorm_statistics_unless_asked(stream, freeze):
    """Running statistics stay as pre-trained by default; the BatchNorm weights still train."""
    backbone = create_backbone("efficientnet-lite0-pypi", image_size=32)
    strategy = make_strategy(
        "slca", backbone, stream, fresh_final_norm=False, freeze_batchnorm_statistics=freeze
    )
    norms = [m for m in strategy.network.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    means_before = [m.running_mean.clone() for m in norms]
    weights_before = [m.weight.detach().clone() for m in norms]
    strategy.train_experience(stream.experiences[0])
    means_moved = any(not torch.equal(m.running_mean, b) for m, b in zip(norms, means_before))
    weights_moved = any(not torch.equal(m.weight, b) for m, b in zip(norms, weights_before))
    assert means_moved is not freeze
    assert weights_moved


def test_alignment_profile_trains_slca_exactly_as_a_run_with_a_still_backbone(stream):
    """`profile slca-alignment` on cached features == SLCA itself with backbone lr 0, no
    augmentation and the pre-trained norm (bit for bit: same batches, same features)."""
    backbone = tiny_backbone()
    settings = {"backbone_lr_scale": 0.0, "fresh_final_norm": False}
    still = resolve_augmentation({"preset": "none"})
    real = make_strategy("slca", backbone, stream, augmentation=still, **settings)
    for experience in stream.experiences:
        real.train_experience(experience)
    frozen = make_strategy("slca", backbone, stream, **settings)
    train_on_features(frozen, stream, FeatureStore(backbone, cache_dir=None).get)
    for ours, theirs in (
        (real.unaligned, frozen.unaligned),
        (real.network.heads, frozen.network.heads),
    ):
        assert ours.sizes == theirs.sizes
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(a, b)
    assert not torch.equal(real.unaligned.heads[0].weight, real.network.heads.heads[0].weight)


def test_alignment_profile_reports_every_cell(tmp_path):
    spec = RunSpec(stream="synthetic", backbone="tiny-vit-random", cache_dir=tmp_path)
    figures = PROFILES.get("slca-alignment")(spec)
    cells = [value for key, value in figures.items() if "CA epochs" in key]
    assert len(cells) == 4
    for cell in cells:
        before, after = (float(part) for part in str(cell).split(" / "))
        assert 0.0 <= before <= 100.0 and 0.0 <= after <= 100.0

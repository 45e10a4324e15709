"""FOSTER: the class-balanced weights and the balanced distillation by hand, the networks' shapes
after boosting and after compression, the memory, resume, config ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cilbench.core.config import resolve
from cilbench.core.errors import ConfigError
from cilbench.engine.spec import RunSpec
from cilbench.learn.distillation import class_balanced_weights, distillation_loss
from cilbench.learn.heads import weight_align
from cilbench.strategies.foster import FosterConfig
from cilbench.testing import (
    interrupted_and_unbroken,
    make_strategy,
    synthetic_stream,
    tiny_backbone,
)


def test_class_balanced_weights_by_hand():
    """beta 0.96, two old classes with 20 exemplars and two new ones with 30 images:
    0.96^20 = 0.442002, 0.96^30 = 0.293858; raw weights 0.04 / 0.557998 = 0.0716849 and
    0.04 / 0.706142 = 0.0566458; they sum to 0.256661, so x 4 / 0.256661."""
    weights = class_balanced_weights([20, 20, 30, 30], 0.96)
    old, new = 0.0716849 * 4 / 0.256661, 0.0566458 * 4 / 0.256661
    assert weights.dtype == torch.float32
    assert weights.tolist() == pytest.approx([old, old, new, new], rel=1e-5)
    assert old == pytest.approx(1.117190, rel=1e-5)
    assert sum(weights.tolist()) == pytest.approx(4.0)


def test_class_balanced_weights_limits():
    # beta 0: every class weighs 1; many images: beta^n ~ 0, equal weights as well
    assert class_balanced_weights([1, 5, 500], 0.0).tolist() == [1.0, 1.0, 1.0]
    assert class_balanced_weights([5000, 9000], 0.97).tolist() == pytest.approx([1.0, 1.0])
    # one image: weight (1 - beta) / (1 - beta) = 1 before scaling, the largest possible
    weights = class_balanced_weights([1, 10], 0.5)
    raw = [1.0, 0.5 / (1 - 0.5**10)]
    assert weights.tolist() == pytest.approx([2 * r / sum(raw) for r in raw])
    with pytest.raises(ValueError, match="positive"):
        class_balanced_weights([3, 0], 0.9)


def test_balanced_distillation_by_hand():
    """Teacher (2 ln 3, 0) at T = 2 -> (3/4, 1/4); weights (1, 3) -> (3/4, 3/4) -> (1/2, 1/2);
    student (0, 0) -> (1/2, 1/2): the loss is ln 2. Second sample: teacher (0, 0) -> (1/2, 1/2)
    -> (1/4, 3/4); student (2 ln 2, 0) / 2 -> (2/3, 1/3). Averaged over the two samples."""
    teacher = torch.tensor([[2 * math.log(3), 0.0], [0.0, 0.0]])
    student = torch.tensor([[0.0, 0.0], [2 * math.log(2), 0.0]], requires_grad=True)
    first = math.log(2)
    second = -(0.25 * math.log(2 / 3) + 0.75 * math.log(1 / 3))
    loss = distillation_loss(student, teacher, 2.0, torch.tensor([1.0, 3.0]))
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)
    loss.backward()
    assert student.grad is not None
    # equal weights are plain distillation
    plain = distillation_loss(student, teacher, 2.0)
    assert distillation_loss(student, teacher, 2.0, torch.ones(2)).item() == pytest.approx(
        plain.item()
    )


def test_weight_align_by_hand():
    """Old rows of norm 2, new rows of norm 1, value 0.5, 2 old / 1 new: gamma = 2 x 0.5^2."""
    fc = nn.Linear(2, 3)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.6, 0.8]]))
    weight_align(fc, 1, 0.5)
    assert fc.weight[2].tolist() == pytest.approx([0.3, 0.4])
    assert fc.weight[:2].tolist() == [[2.0, 0.0], [0.0, 2.0]]


@pytest.fixture(scope="module")
def two_experiences():
    """A strategy after experience 0 (a snapshot of its network) and after experience 1."""
    stream, backbone = synthetic_stream(train_per_class=8, test_per_class=2), tiny_backbone()
    strategy = make_strategy("foster", backbone, stream, memory_per_class=3)
    strategy.train_experience(stream.experiences[0])
    first = {k: v.clone() for k, v in strategy.student.state_dict().items()}
    strategy.train_experience(stream.experiences[1])
    return strategy, first, stream


def test_shapes_after_boosting_and_after_compression(two_experiences):
    strategy, first, stream = two_experiences
    known = stream.experiences[0].num_seen_classes
    seen = stream.experiences[1].num_seen_classes
    teacher, student = strategy.teacher, strategy.student
    dim = student.dim
    # boosting: the frozen old backbone + the new one, fc over both, fe_fc and old_fc
    assert len(teacher.backbones) == 2
    assert teacher.fc.weight.shape == (seen, 2 * dim)
    assert teacher.fe_fc.weight.shape == (seen, dim)
    assert teacher.old_fc.weight.shape == (known, dim)
    old_backbone = {k[len("backbones.0.") :]: v for k, v in first.items() if "backbones.0." in k}
    for name, value in teacher.backbones[0].state_dict().items():
        assert torch.equal(value, old_backbone[name]), name  # frozen while boosting
    assert torch.equal(teacher.old_fc.weight, first["fc.weight"])
    moved = teacher.backbones[1].state_dict()
    assert any(not torch.equal(moved[n], v) for n, v in old_backbone.items())
    # compression: one backbone remains, with a head over every seen class
    assert len(student.backbones) == 1
    assert student.fc.weight.shape == (seen, dim)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert teacher(images).shape == student(images).shape == (3, seen)
        assert torch.equal(strategy.predict(images), teacher(images))


def test_the_balanced_weights_count_memory_and_new_images(two_experiences):
    strategy, _, stream = two_experiences
    known = stream.experiences[0].num_seen_classes
    new = np.bincount(stream.experiences[1].train.labels)[known:]
    counts = [3] * known + new.tolist()
    weights = strategy.report()["class_weights"]
    assert weights["1.boosting"] == pytest.approx(class_balanced_weights(counts, 0.96).tolist())
    assert weights["1.compression"] == pytest.approx(class_balanced_weights(counts, 0.97).tolist())
    assert strategy.exemplar_images() == 3 * stream.experiences[1].num_seen_classes


def test_az_keeps_new_classes_off_the_old_features(monkeypatch):
    """oofc=az: the new classes' weights on the old features are 0 after boosting (seen in the
    teacher before predict_with=student drops it); the student then predicts."""
    stream, backbone = synthetic_stream(train_per_class=8, test_per_class=2), tiny_backbone()
    strategy = make_strategy("foster", backbone, stream, oofc="az", predict_with="student")
    boosted = []
    boost = strategy._boost
    monkeypatch.setattr(strategy, "_boost", lambda *a: boosted.append(boost(*a)) or boosted[-1])
    for experience in stream.experiences[:2]:
        strategy.train_experience(experience)
    known, dim = stream.experiences[0].num_seen_classes, strategy.student.dim
    fc = boosted[0].fc.weight
    assert torch.count_nonzero(fc[known:, :dim]) == 0
    assert torch.count_nonzero(fc[known:, dim:]) > 0
    assert torch.count_nonzero(fc[:known, :dim]) > 0
    # predict_with=student drops the teacher once the memory is built
    assert strategy.teacher is None and len(strategy.student.backbones) == 1
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(strategy.predict(images), strategy.student(images))


def test_resumed_run_equals_an_unbroken_one(tmp_path):
    spec = RunSpec(
        strategy="foster", stream="synthetic", out_dir=tmp_path, cache_dir=None, num_workers=0,
        overrides={"stream.train_per_class": 8, "stream.test_per_class": 2},
    )  # fmt: skip
    resumed, whole = interrupted_and_unbroken(spec, stop_after=2)
    assert resumed.accuracy_matrix == whole.accuracy_matrix
    assert resumed.cost["exemplar_images"] == whole.cost["exemplar_images"]
    assert whole.flags["exemplar_budget"] == "5 per class, herding"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("beta1", 1.0),
        ("beta1", -0.1),
        ("beta2", 1.5),
        ("temperature", 0.0),
        ("lambda_okd", -1.0),
        ("oofc", "zero"),
        ("predict_with", "both"),
        ("first_epochs", 0),
        ("compression_epochs", 0),
        ("first_lr", 0.0),
        ("weight_align_value", 0.0),
        ("first_weight_decay", -1e-4),
        ("memory_per_class", -1),
    ],
)
def test_out_of_range_settings_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        resolve(FosterConfig, {key: value})


def test_state_round_trip_keeps_both_networks(two_experiences):
    strategy, _, stream = two_experiences
    again = make_strategy("foster", tiny_backbone(), stream, memory_per_class=3)
    again.load_state_dict(strategy.state_dict())
    assert len(again.teacher.backbones) == 2 and len(again.student.backbones) == 1
    assert again.trainable_parameters() == strategy.trainable_parameters()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(again.predict(images), strategy.predict(images))
        assert torch.equal(again.student(images), strategy.student(images))

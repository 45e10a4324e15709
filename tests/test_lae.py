"""LAE: the EMA, the ensemble and the compensatory prefix by hand; freezing, masking, resume and
config checks on the tiny ViT."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cilbench.core.config import resolve
from cilbench.core.errors import ConfigError
from cilbench.engine.spec import RunSpec
from cilbench.learn.prompts import _compensated_attention
from cilbench.strategies.lae import LaeConfig, Prefixes, ema_update, ensemble
from cilbench.testing import (
    interrupted_and_unbroken,
    make_strategy,
    synthetic_stream,
    tiny_backbone,
)


def test_ema_update_by_hand_over_three_steps():
    online, offline = Prefixes((0,), 1, 1), Prefixes((0,), 1, 1)
    with torch.no_grad():
        offline.keys.fill_(1.0)
        online.keys.fill_(2.0)
    ema_update(offline, online, 0.9)  # 0.9 * 1 + 0.1 * 2
    assert offline.keys.item() == pytest.approx(1.1)
    with torch.no_grad():
        online.keys.fill_(3.0)
    ema_update(offline, online, 0.9)  # 0.9 * 1.1 + 0.1 * 3
    assert offline.keys.item() == pytest.approx(1.29)
    ema_update(offline, online, 0.9)  # 0.9 * 1.29 + 0.1 * 3: no bias correction, no warm-up
    assert offline.keys.item() == pytest.approx(1.461)
    assert offline.key_scales.item() == pytest.approx(1.0)  # scales 1 on both sides stay 1
    assert online.keys.item() == 3.0  # the online side is only read


def test_ensemble_takes_the_larger_probability_per_class():
    online = torch.tensor([[0.0, math.log(3.0)], [math.log(9.0), 0.0]])  # (.25, .75), (.9, .1)
    offline = torch.tensor([[math.log(4.0), 0.0], [0.0, 0.0]])  # (.8, .2), (.5, .5)
    scores = ensemble(online, offline)
    expected = torch.tensor([[0.8, 0.75], [0.9, 0.5]])
    assert torch.allclose(scores, expected)
    # sample 0: the online model alone picks class 1, the offline model's confidence wins
    assert scores.argmax(1).tolist() == [0, 0]
    assert online.argmax(1).tolist() == [1, 0]


def test_compensated_attention_by_hand():
    """One head of width 1, query 1; keys: prefix 0, images 0 and ln 2 -> softmax 1/4, 1/4, 1/2;
    the prefix's 1/4 is renormalised to 1, the images keep theirs."""
    q = torch.ones(1, 1, 1, 1)
    k = torch.tensor([0.0, 0.0, math.log(2.0)]).view(1, 1, 3, 1)
    v = torch.tensor([10.0, 1.0, 2.0]).view(1, 1, 3, 1)
    out = _compensated_attention(q, k, v, prefixes=1, dropout=0.0)
    assert out.item() == pytest.approx(10 * 1.0 + 1 * 0.25 + 2 * 0.5)
    plain = F.scaled_dot_product_attention(q, k, v)
    assert plain.item() == pytest.approx(10 * 0.25 + 1 * 0.25 + 2 * 0.5)


def _strategy(**overrides):
    stream, backbone = synthetic_stream(), tiny_backbone()
    return stream, make_strategy("lae", backbone, stream, **overrides)


def test_ema_runs_after_every_step_including_freeze_epochs():
    """lr 0: the online prefixes stay put; an offline copy set to 0 reaches online * (1 - d^n)
    after n optimiser steps."""
    stream, strategy = _strategy(lr=0.0, epochs=3, num_freeze_epochs=2, batch_size=16)
    online = strategy.online.keys.detach().clone()
    with torch.no_grad():
        strategy.offline.keys.zero_()
    first = stream.experiences[0]
    strategy.train_experience(first)
    steps = 3 * math.ceil(len(first.train) / 16)
    expected = online * (1 - 0.9**steps)  # the synthetic recipe's ema_decay
    assert torch.equal(strategy.online.keys, online)
    assert torch.allclose(strategy.offline.keys, expected, atol=1e-6)


def test_prefixes_frozen_for_num_freeze_epochs_and_old_head_rows_untouched():
    stream, frozen = _strategy(epochs=2, num_freeze_epochs=2)
    before = frozen.online.keys.detach().clone()
    frozen.train_experience(stream.experiences[0])
    assert torch.equal(frozen.online.keys, before)  # every epoch frozen: only the head trained
    stream, strategy = _strategy(epochs=2, num_freeze_epochs=1)
    strategy.train_experience(stream.experiences[0])
    assert not torch.equal(strategy.online.keys, before)
    old_head = strategy.heads.heads[0].weight.detach().clone()
    strategy.train_experience(stream.experiences[1])
    assert torch.equal(strategy.heads.heads[0].weight, old_head)  # masked: no gradient


def test_scores_are_the_ensemble_of_online_and_offline_models():
    stream, strategy = _strategy()
    strategy.train_experience(stream.experiences[0])
    images = strategy.backbone.prepare(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8))
    scores = strategy.predict(images)
    with torch.no_grad():
        online = strategy.logits(images, strategy.online).softmax(1)
        offline = strategy.logits(images, strategy.offline).softmax(1)
    assert not torch.allclose(online, offline)
    assert torch.allclose(scores, torch.maximum(online, offline))


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    spec = RunSpec(strategy="lae", stream="synthetic", out_dir=tmp_path, cache_dir=None)
    resumed, whole = interrupted_and_unbroken(spec)
    assert resumed.accuracy_matrix == whole.accuracy_matrix
    assert resumed.strategy_report == whole.strategy_report


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ema_decay": 1.5}, "ema_decay"),
        ({"ema_decay": -0.1}, "ema_decay"),
        ({"epochs": 3, "num_freeze_epochs": 4}, "num_freeze_epochs"),
        ({"num_freeze_epochs": -1}, "num_freeze_epochs"),
        ({"pet_length": 0}, "pet_length"),
        ({"pet_layers": ()}, "pet_layers"),
        ({"pet_layers": (-1,)}, "pet_layers"),
        ({"lr": -0.1}, "lr"),
        ({"pet": "lora"}, "pet"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        resolve(LaeConfig, settings)


@pytest.mark.parametrize(
    ("layers", "message"), [((0, 5), "has 2 blocks"), ((1, 1), "names a block twice")]
)
def test_prefix_layers_must_exist_once_in_the_backbone(layers, message):
    with pytest.raises(ConfigError, match=message):
        _strategy(pet_layers=layers)

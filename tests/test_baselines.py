"""Fine-tuning (lower bound) and joint training (upper bound), as the evaluator sees them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cilbench.core.errors import CilbenchError
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec
from cilbench.testing import check_strategy, make_strategy, synthetic_stream, tiny_backbone

LINEAR_PROBE = {"train_backbone": "false", "epochs": "10", "lr": "0.1"}


def _run(tmp_path: Path, strategy: str, overrides: dict[str, str]):
    spec = RunSpec(
        strategy=strategy,
        stream="synthetic",
        overrides=overrides,
        out_dir=tmp_path / strategy,
        cache_dir=None,
    )
    return run(spec)


def _chaudhry_forgetting(matrix: list[list[float | None]]) -> float:
    acc = np.array([[np.nan if a is None else a for a in row] for row in matrix])
    return float(np.mean([np.nanmax(acc[:-1, j]) - acc[-1, j] for j in range(len(acc) - 1)]))


def _assert_joint_beats_finetune(tmp_path: Path, overrides: dict[str, str]) -> None:
    finetune = _run(tmp_path, "finetune", overrides)
    joint = _run(tmp_path, "joint", overrides)
    assert joint.metrics["final_accuracy"] > finetune.metrics["final_accuracy"] + 20
    forgetting = finetune.metrics["forgetting"]
    assert forgetting == pytest.approx(_chaudhry_forgetting(finetune.accuracy_matrix))
    assert forgetting > 30, finetune.accuracy_matrix
    assert forgetting > joint.metrics["forgetting"]
    for result in (finetune, joint):
        assert result.cost["trainable_parameters"] > 0
        assert len(result.cost["train_seconds"]) == 3


def test_joint_beats_finetune_and_finetune_forgets_linear_probe(tmp_path):
    _assert_joint_beats_finetune(tmp_path, LINEAR_PROBE)


@pytest.mark.slow
def test_joint_beats_finetune_and_finetune_forgets_full_finetuning(tmp_path):
    _assert_joint_beats_finetune(tmp_path, {"epochs": "4"})


@pytest.mark.parametrize("name", ["finetune", "joint"])
def test_frozen_backbone_trains_only_the_head_on_cached_features(name):
    check_strategy(name, train_backbone=False)
    stream = synthetic_stream()
    backbone = tiny_backbone()
    strategy = make_strategy(name, backbone, stream, train_backbone=False, epochs=1)
    assert strategy.predicts_from_features
    strategy.train_experience(stream.experiences[0])
    dim = backbone.feature_dim
    assert strategy.trainable_parameters() == dim * 2 + 2
    assert not any(k.startswith("backbone.") for k in strategy.state_dict())
    assert strategy.features.images_forwarded == len(stream.experiences[0].train.source)


def test_full_finetuning_state_holds_the_trained_backbone():
    stream = synthetic_stream()
    backbone = tiny_backbone()
    strategy = make_strategy("finetune", backbone, stream, epochs=1)
    assert not strategy.predicts_from_features
    strategy.train_experience(stream.experiences[0])
    state = strategy.state_dict()
    trained = strategy.network.backbone.state_dict()
    frozen = backbone.model.state_dict()
    key = next(k for k in trained if trained[k].is_floating_point())
    assert torch.equal(state[f"backbone.{key}"], trained[key])
    assert not torch.equal(trained[key], frozen[key])
    assert strategy.trainable_parameters() == sum(p.numel() for p in strategy.network.parameters())


def test_joint_trains_on_everything_so_far_and_resumes_from_the_same_source():
    stream = synthetic_stream()
    strategy = make_strategy("joint", tiny_backbone(), stream, train_backbone=False, epochs=1)
    for experience in stream.experiences[:2]:
        strategy.train_experience(experience)
    views = strategy.training_views(stream.experiences[2])
    labels = np.concatenate([v.labels for v in views])
    assert sorted(set(labels.tolist())) == list(range(6))
    assert len(labels) == sum(len(e.train) for e in stream.experiences)

    restored = make_strategy("joint", tiny_backbone(), stream, train_backbone=False)
    restored.load_state_dict(strategy.state_dict())
    assert [(f, len(i)) for f, i, _ in restored.seen] == [(f, len(i)) for f, i, _ in strategy.seen]
    other = synthetic_stream(data_seed=1)
    with pytest.raises(CilbenchError, match="has not met again"):
        restored.training_views(other.experiences[2])
    assert len(restored.training_views(stream.experiences[2])) == 4  # same source: rebuilt


def test_joint_runs_on_sessions_from_separate_sources():
    stream = synthetic_stream(scenario="domain-incremental")
    strategy = make_strategy("joint", tiny_backbone(), stream, train_backbone=False, epochs=1)
    for experience in stream.experiences[:2]:
        strategy.train_experience(experience)
    views = strategy.training_views(stream.experiences[2])
    assert len({v.source.fingerprint for v in views}) == 3


@pytest.mark.parametrize(("loss", "freeze"), [("seen", False), ("new", False), ("new", True)])
def test_finetune_loss_definitions(loss: str, freeze: bool):
    """`new` (PILOT, SLCA Seq FT) leaves old heads without a loss gradient; frozen ones stay put."""
    stream = synthetic_stream()
    overrides = {**LINEAR_PROBE, "loss": loss, "freeze_old_heads": freeze, "weight_decay": 0.0}
    strategy = make_strategy("finetune", tiny_backbone(), stream, **overrides)
    strategy.train_experience(stream.experiences[0])
    old = [p.detach().clone() for p in strategy.network.heads.heads[0].parameters()]
    strategy.train_experience(stream.experiences[1])
    new_params = list(strategy.network.heads.heads[0].parameters())
    changed = any(not torch.equal(a, b) for a, b in zip(old, new_params))
    assert changed == (loss == "seen"), (loss, freeze)  # momentum: 0 grads never move a weight
    assert all(p.requires_grad != freeze for p in strategy.network.heads.heads[0].parameters())


def test_first_weight_decay_applies_to_the_first_experience_only():
    stream = synthetic_stream()
    strategy = make_strategy(
        "finetune", tiny_backbone(), stream, weight_decay=2e-4, first_weight_decay=5e-4
    )
    assert strategy._settings(0).weight_decay == 5e-4
    assert strategy._settings(1).weight_decay == 2e-4


def test_new_class_loss_is_refused_where_it_is_undefined():
    stream = synthetic_stream(scenario="domain-incremental")
    with pytest.raises(CilbenchError, match="loss=seen"):
        make_strategy("finetune", tiny_backbone(), stream, loss="new")
    with pytest.raises(CilbenchError, match="loss must be 'seen'"):
        make_strategy("joint", tiny_backbone(), synthetic_stream(), loss="new")

"""MEMO: the split (shared shallow blocks, one deep stack per experience), the expansion shapes by
hand (concatenated width, frozen old stacks and trunk, widened classifier, auxiliary head), the
trunk run once per batch, PILOT's fresh deep-block initialisation, the loss, resume, ranges."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cilbench.core.config import resolve
from cilbench.core.errors import ConfigError
from cilbench.engine.spec import RunSpec
from cilbench.learn.expansion import der_loss, split_blocks
from cilbench.strategies.memo import MEMOConfig
from cilbench.testing import (
    interrupted_and_unbroken,
    make_strategy,
    synthetic_stream,
    tiny_backbone,
)

IMAGES = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_split_keeps_the_backbone_function_and_cuts_at_deep_blocks():
    backbone = tiny_backbone()  # 2 blocks, width 64
    whole = backbone.build_model().eval()
    trunk, stack = split_blocks(backbone.build_model(), deep=1)
    trunk.eval(), stack.eval()
    assert len(trunk.model.blocks) == 1 and len(stack.model.blocks) == 1
    # the stack is the last block of the pre-trained model, then the final norm
    assert torch.equal(stack.model.blocks[0].mlp.fc1.weight, whole.blocks[1].mlp.fc1.weight)
    assert isinstance(trunk.model.norm, nn.Identity) and not isinstance(
        stack.model.norm, nn.Identity
    )
    with torch.no_grad():
        hidden = trunk(IMAGES)
        assert hidden.shape == (4, 1 + 16, 64)  # class token + 4x4 patches, unpooled
        assert torch.allclose(stack(hidden), whole(IMAGES), atol=1e-6)
    # the stack holds no stem: nothing of it is counted twice
    names = [n for n, _ in stack.named_parameters()]
    assert not any(
        n.startswith(("model.patch_embed", "model.pos_embed", "model.cls_token")) for n in names
    )


@pytest.mark.parametrize("deep", [0, 2, 5])
def test_split_point_out_of_range_is_refused(deep: int):
    with pytest.raises(ConfigError, match="deep_blocks must be between 1 and 1"):
        split_blocks(tiny_backbone().build_model(), deep)


@pytest.fixture(scope="module")
def trained():
    """MEMO through the synthetic stream (3 experiences of 2 classes), recording each expansion,
    the trunk's calls per forward, and every stack's and the trunk's weights after each
    experience."""
    stream = synthetic_stream()
    strategy = make_strategy("memo", tiny_backbone(), stream, memory_size=20)
    network = strategy.network
    trunk_before = {k: v.clone() for k, v in network.trunk.state_dict().items()}
    snapshots, after = [], []
    expand = network.expand

    def recording_expand(seen, generator):
        before = None if network.classifier is None else network.classifier.weight.detach()
        expand(seen, generator)
        models = network.extractors.models
        snapshots.append(
            {
                "old_classifier": None if before is None else before.clone(),
                "classifier": tuple(network.classifier.weight.shape),
                "classifier_weight": network.classifier.weight.detach().clone(),
                "aux": None if network.aux is None else tuple(network.aux.weight.shape),
                "trainable": [all(p.requires_grad for p in m.parameters()) for m in models],
                "frozen": [not any(p.requires_grad for p in m.parameters()) for m in models],
                "trunk_trains": any(p.requires_grad for p in network.trunk.parameters()),
            }
        )

    network.expand = recording_expand
    for experience in stream.experiences:
        strategy.train_experience(experience)
        after.append(
            {
                "stacks": [
                    {k: v.clone() for k, v in m.state_dict().items()}
                    for m in network.extractors.models
                ],
                "trunk": {k: v.clone() for k, v in network.trunk.state_dict().items()},
            }
        )
    return strategy, stream, snapshots, after, trunk_before


def test_expansion_shapes_by_hand(trained):
    """Width 64 per stack, 2 classes per experience: classifier (2, 64), (4, 128), (6, 192);
    auxiliary head none, then (2 new + 1 old, 64) on the newest stack's features."""
    strategy, _, snapshots, _, _ = trained
    assert [s["classifier"] for s in snapshots] == [(2, 64), (4, 128), (6, 192)]
    assert [s["aux"] for s in snapshots] == [None, (3, 64), (3, 64)]
    assert [s["trainable"] for s in snapshots] == [[True], [False, True], [False, False, True]]
    assert [s["frozen"] for s in snapshots] == [[False], [True, False], [True, True, False]]
    # the shared blocks train on experience 0 only (PILOT train_base false)
    assert [s["trunk_trains"] for s in snapshots] == [True, False, False]
    for snap in snapshots[1:]:  # the old classes' weights on the old features are kept
        old = snap["old_classifier"]
        assert torch.equal(snap["classifier_weight"][: old.shape[0], : old.shape[1]], old)
    report = strategy.report()
    assert report["extractors"] == 3 and report["feature_dim"] == 192
    assert report["shared_parameters"] == sum(
        p.numel() for p in strategy.network.trunk.parameters()
    )
    assert strategy.network.aux is None  # dropped after training


def test_trunk_trains_once_then_stays_frozen_with_the_old_stacks(trained):
    _, _, _, after, trunk_before = trained
    changed = any(not torch.equal(after[0]["trunk"][k], v) for k, v in trunk_before.items())
    assert changed  # experience 0 trained the shared blocks
    for t in (1, 2):
        for key, value in after[0]["trunk"].items():
            assert torch.equal(after[t]["trunk"][key], value), (t, key)
        for i in range(t):  # stack i as it was after experience i
            for key, value in after[i]["stacks"][i].items():
                assert torch.equal(after[t]["stacks"][i][key], value), (t, i, key)
    newest = after[1]["stacks"]
    assert any(not torch.equal(newest[1][k], newest[0][k]) for k in newest[0])  # it trained


def test_trunk_runs_once_per_batch_and_features_concatenate_the_stacks(trained):
    strategy = trained[0]
    network = strategy.network
    calls = []
    hook = network.trunk.register_forward_hook(lambda module, args, out: calls.append(out))
    try:
        with torch.no_grad():
            logits = strategy.predict(IMAGES)
            features = network.features(IMAGES)
    finally:
        hook.remove()
    assert len(calls) == 2  # once for predict, once for features: not once per stack
    with torch.no_grad():
        parts = [stack(calls[0]) for stack in network.extractors.models]
    assert torch.allclose(features, torch.cat(parts, dim=1), atol=1e-6)
    assert logits.shape == (4, 6)
    assert torch.allclose(logits, network.classifier(features), atol=1e-6)
    network.train()
    assert not network.trunk.training  # frozen: eval mode while the newest stack trains
    assert [m.training for m in network.extractors.models] == [False, False, True]
    network.eval()


def test_fresh_deep_init_is_pytorch_default_and_keeps_the_tail():
    """PILOT's Specialized_Vit: its block at nn.Linear's / nn.LayerNorm's own initialisation,
    the final norm pre-trained."""
    backbone = tiny_backbone()
    whole = backbone.build_model()
    strategy = make_strategy("memo", backbone, synthetic_stream(), deep_init="fresh")
    network = strategy.network
    network.expand(2, torch.Generator().manual_seed(0))
    stack = network.extractors.models[0]
    stack.reinitialise_blocks(torch.Generator().manual_seed(0))
    block = stack.model.blocks[0]
    fc1 = block.mlp.fc1.weight  # kaiming_uniform(a=sqrt 5): U(+-1/sqrt(fan_in)), fan_in 64
    assert fc1.abs().max() <= 1 / 8 and fc1.abs().max() > 0.9 / 8
    assert not torch.equal(fc1, whole.blocks[1].mlp.fc1.weight)
    assert torch.equal(block.norm1.weight, torch.ones(64)) and torch.equal(
        block.norm1.bias, torch.zeros(64)
    )
    assert torch.equal(stack.model.norm.weight, whole.norm.weight)
    again = make_strategy("memo", backbone, synthetic_stream()).network
    again.expand(2, torch.Generator().manual_seed(0))
    again.extractors.models[0].reinitialise_blocks(torch.Generator().manual_seed(0))
    assert torch.equal(again.extractors.models[0].model.blocks[0].mlp.fc1.weight, fc1)  # seeded


def test_memo_objective_by_hand():
    """Experience 1 of 2+2 classes (known 2): logits over 4 classes, aux over (old, new 2, new 3).

    sample label 3: logits (0, 0, 0, ln 3) -> p = 3/6, CE ln 2; aux label 2, aux (0, 0, ln 4)
    -> p = 4/6, CE ln 3/2. sample label 1 (old): logits all 0 -> CE ln 4; aux label 0, aux
    (0, 0, ln 4) -> p = 1/6, CE ln 6. Loss = mean CE + 1 x mean aux CE.
    """
    logits = torch.tensor([[0.0, 0.0, 0.0, math.log(3)], [0.0, 0.0, 0.0, 0.0]])
    aux = torch.tensor([[0.0, 0.0, math.log(4)], [0.0, 0.0, math.log(4)]])
    expected = (math.log(2) + math.log(4)) / 2 + (math.log(1.5) + math.log(6)) / 2
    loss = der_loss(logits, aux, torch.tensor([3, 1]), known=2, aux_weight=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_resumed_run_equals_an_unbroken_one(tmp_path):
    spec = RunSpec(
        strategy="memo", stream="synthetic", out_dir=tmp_path, cache_dir=None, num_workers=0
    )
    resumed, whole = interrupted_and_unbroken(spec, stop_after=1)
    assert resumed.accuracy_matrix == whole.accuracy_matrix
    assert resumed.cost["exemplar_images"] == whole.cost["exemplar_images"]
    assert resumed.strategy_report["extractors"] == whole.strategy_report["extractors"] == 3
    assert whole.flags["exemplar_budget"] == "20 total, herding"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("aux_weight", -1.0),
        ("deep_blocks", 0),
        ("deep_init", "random"),
        ("first_epochs", 0),
        ("first_weight_decay", -1e-4),
        ("memory_size", -1),
        ("classifier", "knn"),
        ("lr", 0.0),
    ],
)
def test_out_of_range_settings_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        resolve(MEMOConfig, {key: value})


def test_experience_settings_follow_pilot():
    config = resolve(MEMOConfig, {})
    first, later = config.experience_settings(0), config.experience_settings(1)
    assert (first.epochs, first.weight_decay, first.lr) == (10, 5e-4, 1e-3)
    assert (later.epochs, later.weight_decay, later.lr) == (20, 2e-4, 1e-3)

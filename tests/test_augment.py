"""Training augmentation: batched crops against torchvision's definition, reference presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop, v2

from cilbench.core.errors import ConfigError
from cilbench.data.augment import (
    Augmentation,
    SeededSampler,
    _augment_batch,
    per_image_transform,
    random_resized_crop_boxes,
    resolve_augmentation,
    training_data,
)
from cilbench.data.sources import DatasetView, FileSource
from cilbench.testing import synthetic_stream, tiny_backbone


def test_crop_boxes_follow_torchvisions_distribution():
    torch.manual_seed(0)
    boxes = random_resized_crop_boxes(20_000, 32, 48)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 48).all() and (boxes[:, 3] <= 32).all()
    ratio = width / height
    assert ratio.min() >= 3 / 4 - 0.05 and ratio.max() <= 4 / 3 + 0.07
    ours = (width * height / (32 * 48)).numpy()
    image = torch.zeros(3, 32, 48)
    theirs = []
    for _ in range(20_000):
        _, _, h, w = RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
        theirs.append(h * w / (32 * 48))
    assert abs(ours.mean() - np.mean(theirs)) < 0.01
    assert abs(np.quantile(ours, 0.9) - np.quantile(theirs, 0.9)) < 0.02


def test_batch_crops_equal_per_image_crop_and_resize():
    backbone = tiny_backbone()
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.uniform(0, 255, size=(8, 3, 4, 4))).float()
    images = F.interpolate(coarse, size=(40, 40), mode="bilinear").round().to(torch.uint8)
    torch.manual_seed(3)
    batch = _augment_batch(backbone, Augmentation(), images)
    torch.manual_seed(3)
    boxes = random_resized_crop_boxes(8, 40, 40, Augmentation().scale).long()
    flips = torch.rand(8) < 0.5  # drawn right after the boxes, as _augment_batch draws them
    assert flips.any() and not flips.all()
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        crop = images[i : i + 1, :, y1:y2, x1:x2].float()
        expected = F.interpolate(crop, size=32, mode="bilinear", antialias=True)
        expected = expected.flip(-1) if flips[i] else expected
        expected = backbone.preprocessing.normalize(expected)
        assert (batch[i] - expected[0]).abs().mean() < 0.05  # smooth images: resamplers agree


def test_same_size_sources_augment_per_batch_and_files_per_image(tmp_path):
    backbone = tiny_backbone()
    view = synthetic_stream().experiences[0].train
    data, prepare = training_data(backbone, [view], Augmentation())
    images, labels = data[[0, 1]]
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == view.labels[:2].tolist()
    assert prepare is not backbone.prepare
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    files = FileSource(tmp_path, ["a.png"], [0], "files")
    view = DatasetView(files, np.array([0]), np.array([0]))
    data, prepare = training_data(backbone, [view], Augmentation())
    assert data[(0, 7)][0].shape == (3, 32, 32) and prepare == backbone.prepare


def test_per_image_augmentation_depends_on_its_seed_only(tmp_path):
    """A file's crop is fixed by the seed its key carries: whatever ran before, in any process."""
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    files = FileSource(tmp_path, ["a.png"], [3], "files")
    data, _ = training_data(
        tiny_backbone(), [DatasetView(files, np.array([0]), np.array([5]))], Augmentation()
    )
    first, label = data[(0, 11)]
    torch.rand(100)  # move the global generator: the seeded draw must not care
    state = torch.get_rng_state()
    again, _ = data[(0, 11)]
    assert torch.equal(torch.get_rng_state(), state)  # and it leaves the global state alone
    assert label == 5 and torch.equal(first, again)
    assert not all(torch.equal(first, data[(0, seed)][0]) for seed in range(12, 16))


def test_seeded_sampler_is_a_permutation_with_one_seed_per_position():
    generator = torch.Generator().manual_seed(0)
    keys = list(SeededSampler(10, generator))
    assert sorted(position for position, _ in keys) == list(range(10))
    assert len({seed for _, seed in keys}) == 10
    replay = list(SeededSampler(10, torch.Generator().manual_seed(0)))
    assert keys == replay and keys != list(SeededSampler(10, generator))  # next epoch differs


def _areas(boxes: torch.Tensor, height: int, width: int) -> np.ndarray:
    return ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (height * width)).numpy()


@pytest.mark.parametrize(
    ("preset", "scale"),
    [("lamda", (0.05, 1.0)), ("torchvision", (0.08, 1.0)), ("slca", (0.08, 1.0))],
)
def test_preset_crops_follow_the_reference_scale(preset: str, scale: tuple[float, float]):
    """PILOT/RevisitingCIL/RanPAC crop with scale (0.05, 1), SLCA with torchvision's (0.08, 1)."""
    augmentation = resolve_augmentation({"preset": preset})
    assert augmentation.scale == scale
    crop = per_image_transform(tiny_backbone().preprocessing, augmentation).transforms[0]
    assert isinstance(crop, v2.RandomResizedCrop) and tuple(crop.scale) == scale
    torch.manual_seed(0)
    ours = _areas(random_resized_crop_boxes(20_000, 224, 224, augmentation.scale), 224, 224)
    image = torch.zeros(3, 224, 224)
    theirs = []
    for _ in range(20_000):
        _, _, h, w = RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3])
        theirs.append(h * w / 224**2)
    for q in (0.01, 0.1, 0.5, 0.9):
        assert abs(np.quantile(ours, q) - np.quantile(theirs, q)) < 0.015
    assert ours.min() >= scale[0] - 0.005 and np.mean(ours < 0.08) == pytest.approx(
        np.mean(np.array(theirs) < 0.08), abs=0.01
    )


def test_center_presets_give_the_test_crop_with_or_without_flip():
    backbone = tiny_backbone(crop_pct=0.5)
    images = torch.arange(2 * 3 * 40 * 40).reshape(2, 3, 40, 40).remainder(251).to(torch.uint8)
    plain = _augment_batch(backbone, resolve_augmentation({"preset": "none"}), images)
    test_crop = backbone.preprocessing.sample_transform()(images)  # resize 64, centre crop 32
    expected = backbone.preprocessing.normalize(test_crop.float())
    assert (plain - expected).abs().mean() < 0.1
    torch.manual_seed(1)
    flipped = _augment_batch(backbone, resolve_augmentation({"preset": "flip-only"}), images)
    for i in range(2):
        same, mirrored = (flipped[i] - plain[i]).abs().max(), (flipped[i] - plain[i].flip(-1))
        assert same < 1e-4 or mirrored.abs().max() < 1e-4


def test_brightness_jitter_scales_each_image_within_the_range():
    backbone = tiny_backbone(normalization="none")
    jitter = resolve_augmentation({"preset": "none", "brightness": "0.25"})
    images = torch.full((64, 3, 32, 32), 100, dtype=torch.uint8)
    factors = _augment_batch(backbone, jitter, images).mean(dim=(1, 2, 3)) * 255 / 100
    assert factors.min() >= 0.75 - 1e-4 and factors.max() <= 1.25 + 1e-4
    assert factors.std() > 0.05  # a factor per image, not one per batch


def test_unknown_preset_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match="Did you mean 'flip-only'"):
        resolve_augmentation({"preset": "flip_only"})

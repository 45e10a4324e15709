"""Batched random resized crop + flip against torchvision's per-image definition."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop

from cilbench.augment import _augment_batch, random_resized_crop_boxes, training_data
from cilbench.data import DatasetView, FileSource
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
    batch = _augment_batch(backbone, images)
    torch.manual_seed(3)
    boxes = random_resized_crop_boxes(8, 40, 40, backbone.augmentation.scale).long()
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
    data, prepare = training_data(backbone, [view])
    assert data[0][0].shape == (3, 32, 32) and prepare is not backbone.prepare
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    files = FileSource(tmp_path, ["a.png"], [0], "files")
    view = DatasetView(files, np.array([0]), np.array([0]))
    data, prepare = training_data(backbone, [view])
    assert data[0][0].shape == (3, 32, 32) and prepare == backbone.prepare

"""Training augmentation: named reference pipelines, applied per batch where possible.

`Augmentation` says what a trained strategy's training images go through; it is a run setting
(`--set augment.preset=...`, `augment.<field>=...`) recorded in the result. Presets:

- `lamda` (default): RandomResizedCrop(scale=(0.05, 1), ratio=(3/4, 4/3), bilinear) + horizontal
  flip, the first-session pipeline of LAMDA-PILOT, RevisitingCIL and RanPAC (`build_transform`).
- `torchvision`: the same with torchvision's default scale (0.08, 1) (PyCIL ImageNet, CODA-Prompt).
- `slca`: scale (0.08, 1), bicubic, flip (GengDavid/SLCA ImageNet-R); `slca-cifar` adds
  ColorJitter(brightness=63/255) (its CIFAR-100 pipeline).
- `flip-only`: the test-time resize and centre crop, then a random horizontal flip.
- `none`: the test-time resize and centre crop only.

With same-size images (in-memory arrays such as CIFAR or Fashion-MNIST, or the decoded cache)
cilbench draws the same crops, flips and brightness factors as torchvision but samples a whole batch
in one `grid_sample` call on the model's device, so augmentation stops costing more than a small
model's training step. Unlike torchvision it does not antialias: these sources are small images
that get enlarged, or a decoded cache sized near the model's input. Images of varying size (JPEG
folders) are augmented one by one with torchvision in the data loader's worker processes; each
image's augmentation is seeded by a number drawn with its index in the main process
(`SeededSampler`), so crops do not depend on how many workers load the batches, or which. Crops
follow torchvision's rule: area fraction in `scale`, log-uniform aspect ratio in `ratio`, ten
tries, then the whole image clipped to the ratio range. Batched randomness comes from torch's
global CPU generator, which `training.fit` seeds from the experience's generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from cilbench.core.config import resolve
from cilbench.core.errors import ConfigError, did_you_mean
from cilbench.data.sources import DatasetView, ImageSource, SampleTransform

if TYPE_CHECKING:
    from cilbench.backbones.model import Backbone
    from cilbench.backbones.preprocessing import Preprocessing

SCALE = (0.08, 1.0)
"""torchvision's default RandomResizedCrop scale."""
REFERENCE_SCALE = (0.05, 1.0)
"""The scale of LAMDA-PILOT / RevisitingCIL / RanPAC `build_transform` (utils/data.py)."""
RATIO = (3 / 4, 4 / 3)
TRIES = 10
SLCA_BRIGHTNESS = 63 / 255
"""ColorJitter(brightness=63/255) of GengDavid/SLCA's CIFAR-100 pipeline (utils/data.py)."""


@dataclass(frozen=True)
class Augmentation:
    """What training images go through (see the module docstring for the presets).

    crop: `random-resized` (RandomResizedCrop with `scale`, `ratio`) or `center` (the test-time
    resize and centre crop); interpolation of the crop's resize; flip: random horizontal flip;
    brightness: ColorJitter brightness b (a factor uniform in [max(0, 1-b), 1+b]), 0 = off.
    """

    preset: str = "lamda"
    crop: Literal["random-resized", "center"] = "random-resized"
    scale: tuple[float, ...] = REFERENCE_SCALE
    ratio: tuple[float, ...] = RATIO
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    flip: bool = True
    brightness: float = 0.0


AUGMENTATION_PRESETS: dict[str, Mapping[str, Any]] = {
    "lamda": {},
    "torchvision": {"scale": SCALE},
    "slca": {"scale": SCALE, "interpolation": "bicubic"},
    "slca-cifar": {"scale": SCALE, "interpolation": "bicubic", "brightness": SLCA_BRIGHTNESS},
    "flip-only": {"crop": "center"},
    "none": {"crop": "center", "flip": False},
}


def resolve_augmentation(*layers: Mapping[str, Any]) -> Augmentation:
    """The augmentation of `augment.*` settings: the last `preset` named, then explicit fields."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    preset = str(merged.pop("preset", "lamda"))
    if preset not in AUGMENTATION_PRESETS:
        raise ConfigError(
            f"Unknown augmentation preset {preset!r}.{did_you_mean(preset, AUGMENTATION_PRESETS)}"
            f" Known presets: {', '.join(AUGMENTATION_PRESETS)}."
        )
    base = {"preset": preset, **AUGMENTATION_PRESETS[preset]}
    augmentation = resolve(Augmentation, base, merged, what="augment")
    if len(augmentation.scale) != 2 or len(augmentation.ratio) != 2:
        raise ConfigError(
            f"augment.scale and augment.ratio take two numbers (low,high); got "
            f"{augmentation.scale} and {augmentation.ratio}."
        )
    return augmentation


def per_image_transform(
    preprocessing: Preprocessing, augmentation: Augmentation
) -> Callable[[torch.Tensor], torch.Tensor]:
    """torchvision's version of `augmentation` for one uint8 image (images of varying size)."""
    from torchvision.transforms import v2

    mode = v2.InterpolationMode(augmentation.interpolation)
    steps: list[Callable[..., Any]] = []
    if augmentation.crop == "center":
        steps.append(preprocessing.sample_transform())
    else:
        steps.append(
            v2.RandomResizedCrop(
                preprocessing.image_size,
                scale=augmentation.scale,
                ratio=augmentation.ratio,
                interpolation=mode,
                antialias=True,
            )
        )
    if augmentation.flip:
        steps.append(v2.RandomHorizontalFlip())
    if augmentation.brightness:
        steps.append(v2.ColorJitter(brightness=augmentation.brightness))
    return v2.Compose(steps)


def training_data(
    backbone: Backbone, views: Sequence[DatasetView], augmentation: Augmentation
) -> tuple[Dataset, Callable[[torch.Tensor], torch.Tensor]]:
    """(dataset, prepare) for `fit`: augmented, normalised batches of the images in `views`.

    `augmentation` is the run's (`RunContext.augmentation`).
    """
    sizes = {getattr(view.source, "image_size", None) for view in views}
    if len(sizes) == 1 and None not in sizes:
        return _SameSizeImages(views), lambda images: _augment_batch(backbone, augmentation, images)
    transform = per_image_transform(backbone.preprocessing, augmentation)
    return _SeededImages(views, transform), backbone.prepare


def random_resized_crop_boxes(
    count: int,
    height: int,
    width: int,
    scale: Sequence[float] = SCALE,
    ratio: Sequence[float] = RATIO,
) -> torch.Tensor:
    """(count, 4) crop boxes x1, y1, x2, y2 in pixels, drawn as RandomResizedCrop draws them.

    One draw from torch's generator, then numpy: a few dozen tiny torch operations per batch
    cost more than the crops themselves on a small model.
    """
    draws = torch.rand(count, 2 * TRIES + 2, dtype=torch.float64).numpy()
    target = height * width * (scale[0] + (scale[1] - scale[0]) * draws[:, :TRIES])
    low, high = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(low + (high - low) * draws[:, TRIES : 2 * TRIES])
    w, h = np.round(np.sqrt(target * aspect)), np.round(np.sqrt(target / aspect))
    fits = (w <= width) & (h <= height) & (w > 0) & (h > 0)
    found, first, rows = fits.any(axis=1), fits.argmax(axis=1), np.arange(count)
    fallback_w, fallback_h = _fallback(height, width, ratio)
    w = np.where(found, w[rows, first], fallback_w)
    h = np.where(found, h[rows, first], fallback_h)
    x1 = np.where(found, np.floor(draws[:, -2] * (width - w + 1)), (width - fallback_w) // 2)
    y1 = np.where(found, np.floor(draws[:, -1] * (height - h + 1)), (height - fallback_h) // 2)
    return torch.from_numpy(np.stack([x1, y1, x1 + w, y1 + h], axis=1)).float()


def _fallback(height: int, width: int, ratio: Sequence[float] = RATIO) -> tuple[int, int]:
    """The centre crop torchvision falls back to: the whole image, clipped to the ratio range."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return width, round(width / ratio[0])
    if in_ratio > ratio[1]:
        return round(height * ratio[1]), height
    return width, height


def center_crop_boxes(count: int, height: int, width: int, crop_pct: float) -> torch.Tensor:
    """(count, 4) boxes of the test-time geometry (the `none` and `flip-only` presets).

    Resize(shorter side to size / crop_pct) + CenterCrop(size) keeps a centred square whose side
    is crop_pct x the shorter side.
    """
    side = crop_pct * min(height, width)
    x1, y1 = (width - side) / 2, (height - side) / 2
    return torch.tensor([[x1, y1, x1 + side, y1 + side]]).expand(count, 4).clone()


def _augment_batch(
    backbone: Backbone, augmentation: Augmentation, images: torch.Tensor
) -> torch.Tensor:
    """Crop, resize, flip and jitter every image of a same-size batch in one sampling pass."""
    preprocessing = backbone.preprocessing
    size = preprocessing.image_size
    count, _, height, width = images.shape
    if augmentation.crop == "center":
        boxes = center_crop_boxes(count, height, width, preprocessing.crop_pct)
    else:
        boxes = random_resized_crop_boxes(
            count, height, width, augmentation.scale, augmentation.ratio
        )
    flipped = torch.rand(count).numpy() < 0.5 if augmentation.flip else np.zeros(count, bool)
    grid = _sampling_grid(boxes.double().numpy(), flipped, height, width, size, backbone.device)
    images = images.to(backbone.device, non_blocking=True).float()
    crops = F.grid_sample(images, grid, mode=augmentation.interpolation, align_corners=False)
    if augmentation.brightness:
        crops = _jitter_brightness(crops, augmentation.brightness)
    elif augmentation.interpolation == "bicubic":
        crops = crops.clamp_(0, 255)  # bicubic overshoots; torchvision rounds to uint8
    # Normalising before the layout change: broadcasting over channels-last costs 4x more.
    return preprocessing.normalize(crops).contiguous(memory_format=torch.channels_last)


def _sampling_grid(
    boxes: np.ndarray,
    flipped: np.ndarray,
    height: int,
    width: int,
    size: int,
    device: torch.device,
) -> torch.Tensor:
    """grid_sample's (count, size, size, 2) grid resampling each (x1, y1, x2, y2) box to size².

    What `affine_grid` builds for these axis-aligned (optionally mirrored) boxes, from one row of
    x and one column of y coordinates per image: affine_grid's batched matrix product costs more
    than the resampling itself on small images. Coordinates are in [-1, 1], pixel centres
    (align_corners=False).
    """
    x1, y1, x2, y2 = boxes.T
    centres = (2 * np.arange(size) + 1) / size - 1
    mirror = np.where(flipped, -1.0, 1.0)
    xs = (mirror * (x2 - x1) / width)[:, None] * centres + ((x1 + x2) / width - 1)[:, None]
    ys = ((y2 - y1) / height)[:, None] * centres + ((y1 + y2) / height - 1)[:, None]
    xs_rows = torch.from_numpy(xs.astype(np.float32)).to(device)[:, None, :]
    ys_columns = torch.from_numpy(ys.astype(np.float32)).to(device)[:, :, None]
    return torch.stack(torch.broadcast_tensors(xs_rows, ys_columns), dim=-1)


def _jitter_brightness(images: torch.Tensor, brightness: float) -> torch.Tensor:
    """ColorJitter's brightness: each image times a factor uniform in [max(0, 1-b), 1+b].

    Images are floats in [0, 255]; the result is clipped to that range, as torchvision clips.
    """
    low, high = max(0.0, 1 - brightness), 1 + brightness
    factors = torch.empty(len(images)).uniform_(low, high).to(images.device)
    return (images * factors.view(-1, 1, 1, 1)).clamp_(0, 255)


class _Views(Dataset):
    """The images of several views as one dataset, indexed in order."""

    def __init__(self, views: Sequence[DatasetView]):
        self.views = list(views)
        self.offsets = np.cumsum([0] + [len(view) for view in self.views])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def sources(self) -> list[ImageSource]:
        """The image sources read (`fit` picks its worker count from them)."""
        return [view.source for view in self.views]

    def locate(self, position: int) -> tuple[DatasetView, int]:
        """(view, position within that view) of dataset position `position`."""
        k = int(np.searchsorted(self.offsets, position, side="right")) - 1
        return self.views[k], position - int(self.offsets[k])


class _SeededImages(_Views):
    """Images of varying size, augmented one by one; keys are (position, seed) pairs."""

    def __init__(self, views: Sequence[DatasetView], transform: SampleTransform):
        super().__init__(views)
        self.transform = transform

    def sampler(self, generator: torch.Generator) -> SeededSampler:
        """The shuffled keys `fit` loads from."""
        return SeededSampler(len(self), generator)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        position, seed = key
        view, local = self.locate(position)
        image = view.source.load(int(view.indices[local]))
        # Loading in the main process (no workers) must leave its random state as workers would:
        # keep the global generator's state around the seeded draw. (torch.manual_seed and
        # fork_rng cost ~0.4 ms a call; the default generator alone takes microseconds.)
        state = torch.default_generator.get_state()
        torch.default_generator.manual_seed(seed)
        try:
            return self.transform(image), int(view.labels[local])
        finally:
            torch.default_generator.set_state(state)


class SeededSampler(Sampler[tuple[int, int]]):
    """A random permutation of `size` positions, each paired with a seed for its augmentation.

    Both come from `generator` in the main process, so an image's crop depends only on the
    experience's generator, the epoch and the image: never on the number of loader workers.
    """

    def __init__(self, size: int, generator: torch.Generator):
        self.size = size
        self.generator = generator

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.size, generator=self.generator).tolist()
        seeds = torch.randint(2**62, (self.size,), generator=self.generator).tolist()
        return iter(zip(order, seeds))


class _SameSizeImages(_Views):
    """The raw images of several views, fetched a whole batch at a time.

    `fetches_batches`: the loader hands `__getitem__` a batch of positions (see
    `data.batching`), and one indexing operation per source returns the stacked images, with no
    per-image collation.
    """

    fetches_batches = True

    def __getitem__(self, keys: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, C, H, W) uint8, labels (B,)) of the dataset positions `keys`."""
        positions = np.asarray(keys)
        owner = np.searchsorted(self.offsets, positions, side="right") - 1
        parts = []
        for k in np.unique(owner):
            slots = np.flatnonzero(owner == k)
            view = self.views[k]
            local = positions[slots] - self.offsets[k]
            parts.append((slots, _load_many(view.source, view.indices[local]), view.labels[local]))
        if len(parts) == 1:
            _, images, labels = parts[0]
            return images, torch.as_tensor(labels, dtype=torch.long)
        images = torch.empty((len(positions), *parts[0][1].shape[1:]), dtype=parts[0][1].dtype)
        labels = torch.empty(len(positions), dtype=torch.long)
        for slots, part_images, part_labels in parts:
            images[slots] = part_images
            labels[slots] = torch.as_tensor(part_labels, dtype=torch.long)
        return images, labels


def _load_many(source: ImageSource, indices: np.ndarray) -> torch.Tensor:
    load_many = getattr(source, "load_many", None)
    if load_many is not None:
        return load_many(indices)
    return torch.stack([source.load(int(i)) for i in indices])

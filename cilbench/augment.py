"""Training augmentation (random resized crop + horizontal flip), per batch where possible.

The reference codebases augment one image at a time (torchvision RandomResizedCrop(224) and
RandomHorizontalFlip). With same-size images (in-memory arrays such as CIFAR or Fashion-MNIST,
or the decoded cache) cilbench draws the same kind of crop and flip for every image but samples a
whole batch in one bilinear `grid_sample` call on the model's device, so augmentation stops costing
more than a small model's training step. Unlike torchvision it does not antialias: these sources
are small images that get enlarged, or a decoded cache sized near the model's input. Images of
varying size (JPEG folders) are augmented one by one in the data loader's worker processes;
each image's augmentation is seeded by a number drawn with its index in the main process
(`SeededSampler`), so crops do not depend on how many workers load the batches, or which. Crops
follow torchvision's rule: area fraction in `scale`, log-uniform aspect ratio in `ratio`, ten
tries, then the whole image clipped to the ratio range. Batched randomness comes from torch's
global CPU generator, which `training.fit` seeds from the experience's generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from cilbench.backbones import Backbone
from cilbench.data import DatasetView, ImageSource, SampleTransform

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
TRIES = 10


def training_data(
    backbone: Backbone, views: Sequence[DatasetView]
) -> tuple[Dataset, Callable[[torch.Tensor], torch.Tensor]]:
    """(dataset, prepare) for `fit`: augmented, normalised batches of the images in `views`."""
    sizes = {getattr(view.source, "image_size", None) for view in views}
    if len(sizes) == 1 and None not in sizes:
        return _SameSizeImages(views), lambda images: _augment_batch(backbone, images)
    transform = backbone.preprocessing.train_transform()
    return _SeededImages(views, transform), backbone.prepare


def random_resized_crop_boxes(count: int, height: int, width: int) -> torch.Tensor:
    """(count, 4) crop boxes x1, y1, x2, y2 in pixels, drawn as RandomResizedCrop draws them.

    One draw from torch's generator, then numpy: a few dozen tiny torch operations per batch
    cost more than the crops themselves on a small model.
    """
    draws = torch.rand(count, 2 * TRIES + 2, dtype=torch.float64).numpy()
    target = height * width * (SCALE[0] + (SCALE[1] - SCALE[0]) * draws[:, :TRIES])
    low, high = math.log(RATIO[0]), math.log(RATIO[1])
    aspect = np.exp(low + (high - low) * draws[:, TRIES : 2 * TRIES])
    w, h = np.round(np.sqrt(target * aspect)), np.round(np.sqrt(target / aspect))
    fits = (w <= width) & (h <= height) & (w > 0) & (h > 0)
    found, first, rows = fits.any(axis=1), fits.argmax(axis=1), np.arange(count)
    fallback_w, fallback_h = _fallback(height, width)
    w = np.where(found, w[rows, first], fallback_w)
    h = np.where(found, h[rows, first], fallback_h)
    x1 = np.where(found, np.floor(draws[:, -2] * (width - w + 1)), (width - fallback_w) // 2)
    y1 = np.where(found, np.floor(draws[:, -1] * (height - h + 1)), (height - fallback_h) // 2)
    return torch.from_numpy(np.stack([x1, y1, x1 + w, y1 + h], axis=1)).float()


def _fallback(height: int, width: int) -> tuple[int, int]:
    """The centre crop torchvision falls back to: the whole image, clipped to the ratio range."""
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        return width, round(width / RATIO[0])
    if in_ratio > RATIO[1]:
        return round(height * RATIO[1]), height
    return width, height


def _augment_batch(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """Crop, resize (bilinear) and flip every image of a same-size batch in one sampling pass."""
    size = backbone.preprocessing.image_size
    count, channels, height, width = images.shape
    x1, y1, x2, y2 = random_resized_crop_boxes(count, height, width).double().numpy().T
    mirror = np.where(torch.rand(count).numpy() < 0.5, -1.0, 1.0)
    # affine_grid maps output coordinates in [-1, 1] to input coordinates in [-1, 1].
    theta = np.zeros((count, 2, 3), dtype=np.float32)
    theta[:, 0, 0] = mirror * (x2 - x1) / width
    theta[:, 0, 2] = (x1 + x2) / width - 1
    theta[:, 1, 1] = (y2 - y1) / height
    theta[:, 1, 2] = (y1 + y2) / height - 1
    device = backbone.device
    grid = F.affine_grid(
        torch.from_numpy(theta).to(device), [count, channels, size, size], align_corners=False
    )
    images = images.to(device, non_blocking=True).float()
    crops = F.grid_sample(images, grid, mode="bilinear", align_corners=False)
    return backbone.preprocessing.normalize(crops.contiguous(memory_format=torch.channels_last))


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
    """The raw images of several views, fetched a whole batch at a time (`__getitems__`)."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """The DataLoader's batched fetch: one indexing operation per source, not per image."""
        positions = np.asarray(indices)
        owner = np.searchsorted(self.offsets, positions, side="right") - 1
        images: list[torch.Tensor] = [torch.empty(0)] * len(positions)
        labels = np.empty(len(positions), dtype=np.int64)
        for k in np.unique(owner):
            slots = np.flatnonzero(owner == k)
            local = positions[slots] - self.offsets[k]
            view = self.views[k]
            batch = _load_many(view.source, view.indices[local])
            labels[slots] = view.labels[local]
            for slot, image in zip(slots, batch.unbind(0)):
                images[slot] = image
        return list(zip(images, labels.tolist()))


def _load_many(source: ImageSource, indices: np.ndarray) -> torch.Tensor:
    load_many = getattr(source, "load_many", None)
    if load_many is not None:
        return load_many(indices)
    return torch.stack([source.load(int(i)) for i in indices])

"""Preprocessing: how images become a backbone's input (resize, crop, normalisation constants).

Input normalisation is an explicit setting because the reference codebases feed un-normalised
[0,1] images; reproduction recipes say which they use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import torch

from cilbench.core.config import OneOf, Positive, Range
from cilbench.data.augment import Augmentation, per_image_transform

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "model": None,  # the weights' own mean/std from timm's pretrained config
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # [0,1] pixels, as LAMDA/PILOT/RanPAC/CODA feed
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # CIFAR-100's own statistics, as GengDavid/SLCA normalises CIFAR-100 (utils/data.py)
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")  # torchvision, on tensors

BACKBONE_SETTINGS: dict[str, Any] = {
    "image_size": Annotated[int, Positive()],
    "crop_pct": Annotated[float, Range(0, 1, low_open=True)],
    "normalization": Annotated[str, OneOf(*NORMALIZATIONS)],
    "interpolation": Annotated[str, OneOf(*INTERPOLATIONS)],
}
"""What `--set backbone.<key>=...` and `create_backbone`'s keyword arguments may set."""


@dataclass(frozen=True)
class Preprocessing:
    """Resize shorter side to image_size / crop_pct, centre-crop, scale to [0,1], normalise."""

    image_size: int
    crop_pct: float
    interpolation: str
    normalization: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def sample_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Per-image geometric part (uint8 in, uint8 out), run in the data loader."""
        from torchvision.transforms import v2

        mode = v2.InterpolationMode(self.interpolation)
        resize = round(self.image_size / self.crop_pct)
        return v2.Compose(
            [v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop(self.image_size)]
        )

    def train_transform(
        self, augmentation: Augmentation | None = None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Per-image training augmentation (default: the LAMDA reference pipeline).

        Randomness comes from torch's RNG, which `training.fit` seeds.
        """
        return per_image_transform(self, augmentation or Augmentation())

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Batch part, run on the model's device: uint8 (B,3,H,W) -> normalised float."""
        scale, shift = _normalization_constants(self.mean, self.std, images.device)
        return images.float().mul_(scale).sub_(shift)  # keeps memory format

    def describe(self) -> str:
        """Stable text identifying this preprocessing (part of the feature-cache key)."""
        return (
            f"size={self.image_size},crop={self.crop_pct},interp={self.interpolation},"
            f"norm={self.normalization},mean={self.mean},std={self.std}"
        )


@functools.cache
def _normalization_constants(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 / (255 std), mean / std) as (1, 3, 1, 1) tensors on `device`, made once per device
    (building them on every batch costs more than normalising a small batch)."""
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    return 1.0 / (255.0 * std_t), mean_t / std_t

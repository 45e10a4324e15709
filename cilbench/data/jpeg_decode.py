"""Batched JPEG decoding on the GPU (`--decode gpu`) for image-file sources.

Loader workers only read the files' bytes; the main process decodes each batch's JPEGs in one
`torchvision.io.decode_jpeg(..., device="cuda")` call (nvJPEG) and applies the CPU path's
per-image resize and centre crop to the decoded tensors on the device, so the geometry is the
CPU path's. A file that is not a JPEG (PNG, ...), or a batch the GPU decoder refuses, goes
through the source's own CPU loader instead. Decoders differ by a few intensity levels per pixel
(`tests/test_jpeg_decode.py` bounds libjpeg-turbo's against PIL's); that is why the decoder is
part of the feature-cache key and, away from its default, of the run id.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from cilbench.data.sources import SampleTransform

DECODERS = ("cpu", "gpu")
"""The values of `--decode` (`RunSpec.decode`)."""
JPEG_MAGIC = b"\xff\xd8\xff"


def resolve_decode(decode: str, device: torch.device | str) -> str:
    """'gpu' only where it can run (a CUDA device); 'cpu' otherwise."""
    return "gpu" if decode == "gpu" and torch.device(device).type == "cuda" else "cpu"


def decodes_on_gpu(source: Any, decode: str) -> bool:
    """Whether `source`'s images are decoded by `decode_batch`: image files at decode='gpu'."""
    return decode == "gpu" and hasattr(source, "files") and hasattr(source, "root")


class EncodedImages(Dataset):
    """(file bytes as a 1-D uint8 tensor, position in `indices`) of a file source's images."""

    def __init__(self, source: Any, indices: Sequence[int]):
        self.source, self.indices = source, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.source.root / self.source.files[self.indices[i]]
        return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), i


def collate_encoded(batch: list[tuple[torch.Tensor, int]]) -> tuple[list[torch.Tensor], list[int]]:
    """Keep the byte tensors as a list (they differ in length)."""
    return [data for data, _ in batch], [i for _, i in batch]


def decode_batch(
    encoded: list[torch.Tensor],
    indices: Sequence[int],
    source: Any,
    transform: SampleTransform,
    device: torch.device,
) -> torch.Tensor:
    """uint8 (B, 3, h, w) on `device`: JPEGs decoded on `device` in one call, the rest (and a
    batch the decoder refuses) by `source.load` on the CPU; `transform` resizes and crops."""
    jpegs = [k for k, data in enumerate(encoded) if bytes(data[:3].tolist()) == JPEG_MAGIC]
    try:
        decoded = _decode_jpegs([encoded[k] for k in jpegs], device)
    except RuntimeError:  # e.g. a JPEG nvJPEG cannot decode: the CPU path handles the batch
        decoded = []
    images = {k: transform(image) for k, image in zip(jpegs, decoded)}
    for k in range(len(encoded)):
        if k not in images:
            images[k] = transform(source.load(indices[k])).to(device)
    return torch.stack([images[k] for k in range(len(encoded))])


def _decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    if not encoded:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29+ (TorchCodec)
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))

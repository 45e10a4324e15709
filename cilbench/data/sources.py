"""Image sources (where pixels come from) and dataset views (which images, with which labels).

A source is one split of a data set on disk or in memory, with a fingerprint that identifies its
content; the feature cache is keyed by it. A view selects indices of a source and maps their
original labels into the stream's label space (position in the class order), which is all a split
policy needs. Images leave a source as uint8 tensors (C, H, W) with three channels.

Data loaders decode files in worker processes by default (`loader_workers`): one per CPU this
process may use. In-memory sources load in the main process when the model runs on the CPU,
because copying a batch out of an array costs less than shipping it back from a worker.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, Sampler

from cilbench.core.devices import pins_memory
from cilbench.core.errors import ConfigError, DataError

SampleTransform = Callable[[torch.Tensor], torch.Tensor]

MAX_DEFAULT_WORKERS = 16
"""Cap of the default worker count: at a few hundred decoded images/s per core, 16 workers feed
even a ViT-B/16 in bf16 on one GPU, and each worker holds its own prefetched batches."""


class ImageSource(Protocol):
    """One split of a data set: decoded images with their original integer labels."""

    @property
    def fingerprint(self) -> str:
        """Identifies the content: equal fingerprints mean equal images in equal order."""
        ...

    @property
    def targets(self) -> np.ndarray:
        """Original label of every image, shape (N,)."""
        ...

    def __len__(self) -> int: ...

    def load(self, index: int) -> torch.Tensor:
        """Image `index` as a uint8 tensor of shape (3, H, W)."""
        ...


class _LabelledSource:
    """What every concrete source shares: a fingerprint and one original label per image."""

    _fingerprint: str
    _targets: np.ndarray

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def targets(self) -> np.ndarray:
        return self._targets

    def __len__(self) -> int:
        return len(self._targets)


class ArraySource(_LabelledSource):
    """Images held in memory as a uint8 array (N, H, W) or (N, H, W, C)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, name: str):
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 (N,H,W[,C]); got {images.dtype} {images.shape}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        images = grey_or_rgb(images, name)
        self._images = images if images.flags.writeable else images.copy()  # torch wants writable
        self._targets = np.asarray(targets, dtype=np.int64)
        self.name = name
        digest = hashlib.sha256()
        digest.update(str(images.shape).encode())
        digest.update(np.ascontiguousarray(images).data)
        digest.update(self._targets.tobytes())
        self._fingerprint = f"{name}:{digest.hexdigest()[:32]}"

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width), the same for every image."""
        return int(self._images.shape[1]), int(self._images.shape[2])

    def load_many(self, indices: np.ndarray) -> torch.Tensor:
        """Images `indices` as one uint8 tensor (N, 3, H, W): a batch without per-image work."""
        images = torch.from_numpy(self._images[indices])
        if images.ndim == 3:
            return images.unsqueeze(1).expand(-1, 3, -1, -1)
        return images.permute(0, 3, 1, 2)

    def load(self, index: int) -> torch.Tensor:
        image = torch.from_numpy(self._images[index])
        if image.ndim == 2:
            return image.unsqueeze(0).expand(3, -1, -1)
        return image.permute(2, 0, 1)


def grey_or_rgb(images: np.ndarray, name: str) -> np.ndarray:
    """(N, H, W) grey or (N, H, W, 3) RGB images, converted as PIL's `convert("RGB")` does for
    image files: one channel is grey, grey+alpha and RGBA lose their alpha channel."""
    if images.ndim == 3 or images.shape[-1] == 3:
        return images
    if images.shape[-1] in (1, 2):
        return images[..., 0]
    if images.shape[-1] == 4:
        return images[..., :3]
    raise DataError(
        f"Image source {name!r}: images of shape {images.shape} have {images.shape[-1]} channels; "
        "expected 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA)."
    )


class FileSource(_LabelledSource):
    """Images stored as files (JPEG, PNG, ...), decoded on access.

    The fingerprint hashes the relative paths, sizes and labels rather than every byte, so that
    fingerprinting a 30k-image folder takes milliseconds; replacing a file with one of the same
    size and name is not detected.
    """

    decodes_files = True
    """Loading decodes an image file: data loaders run it in worker processes (`loader_workers`)."""

    def __init__(self, root: Path, files: Sequence[str], targets: Sequence[int], name: str):
        if len(files) != len(targets):
            raise ValueError(f"{len(files)} files but {len(targets)} targets")
        self.root = Path(root)
        self.files = list(files)
        self._targets = np.asarray(targets, dtype=np.int64)
        self.name = name
        digest = hashlib.sha256()
        for relative, target in zip(self.files, self._targets):
            size = (self.root / relative).stat().st_size
            digest.update(f"{relative}\0{size}\0{target}\n".encode())
        self._fingerprint = f"{name}:{digest.hexdigest()[:32]}"

    def load(self, index: int) -> torch.Tensor:
        from PIL import Image

        path = self.root / self.files[index]
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(f"Cannot decode image {path}: {error}") from error
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


@dataclass(frozen=True, eq=False)
class DatasetView:
    """The images `indices` of `source`, labelled `labels` (the stream's label space)."""

    source: ImageSource
    indices: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.indices) != len(self.labels):
            raise ValueError(f"{len(self.indices)} indices but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.indices)

    def classes(self) -> tuple[int, ...]:
        """The distinct labels in this view, sorted."""
        return tuple(int(c) for c in np.unique(self.labels))

    def with_transform(self, transform: SampleTransform) -> Dataset:
        """A torch Dataset of (transformed image, label) pairs, ready for a DataLoader."""
        return _TransformedView(self, transform)


class _TransformedView(Dataset):
    def __init__(self, view: DatasetView, transform: SampleTransform):
        self.view = view
        self.transform = transform

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.view.source.load(int(self.view.indices[i]))
        return self.transform(image), int(self.view.labels[i])


def default_workers() -> int:
    """Worker processes for decoding when none are asked for: one per CPU this process may use.

    joblib counts the CPUs allowed by the process's affinity mask and by a cgroup CPU quota
    (containers, Slurm), so a job limited to 4 of 64 cores starts 4 workers, not 64.
    """
    import joblib

    return min(joblib.cpu_count(), MAX_DEFAULT_WORKERS)


def loader_workers(requested: int | None, sources: Iterable[Any], device: torch.device) -> int:
    """Worker processes for a data loader over `sources` that feeds a model on `device`.

    `requested` (the `--workers` option) wins when given. Otherwise a loader that decodes image
    files gets `default_workers()`. In-memory arrays and the decoded cache get them too when the
    model is on a GPU (the host's cores have nothing else to do than resize and copy), but 0 on the
    CPU, where the model needs those cores and a copy out of memory costs less than a worker's
    pickling and inter-process transfer.
    """
    if requested is not None:
        if requested < 0:
            raise ConfigError(f"workers must be 0 or more; got {requested}.")
        return requested
    decodes = any(getattr(source, "decodes_files", False) for source in sources)
    return default_workers() if decodes or device.type == "cuda" else 0


@contextlib.contextmanager
def threads_beside_workers(workers: int) -> Iterator[None]:
    """Leave the decoding workers their cores: the main process computes on the rest (at least 1).

    torch's intra-op threads busy-wait between operations; with as many workers as cores they
    take CPU time the decoders need. On 2 cores with 2 workers, cold extraction of JPEGs went from
    0.70-0.78x to 0.93-1.05x of decoding alone with one main-process thread instead of two.
    For inference only: a backward pass sums gradients in an order that depends on the thread
    count, so a training loop keeps its threads and its results do not depend on `--workers`.
    """
    import joblib

    before = torch.get_num_threads()
    wanted = max(1, min(before, joblib.cpu_count() - workers)) if workers > 0 else before
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def batching(
    data: Dataset, sampler: Sampler, batch_size: int, drop_last: bool = False
) -> dict[str, Any]:
    """DataLoader arguments that batch `sampler`'s keys.

    A dataset with `fetches_batches` receives each batch's keys in one `__getitem__` call and
    returns the batch itself; any other is fetched key by key and collated.
    """
    if getattr(data, "fetches_batches", False):
        return {"batch_size": None, "sampler": BatchSampler(sampler, batch_size, drop_last)}
    return {"batch_size": batch_size, "sampler": sampler, "drop_last": drop_last}


def loader_options(
    device: torch.device, workers: int, *, persistent: bool = False
) -> dict[str, Any]:
    """DataLoader keyword arguments for feeding `device` with `workers` processes.

    Pinned host memory on CUDA (copies then overlap compute); `persistent` keeps the workers
    alive between epochs of one training loop instead of forking them again every epoch.
    """
    return {
        "num_workers": workers,
        "pin_memory": pins_memory(device),
        "persistent_workers": persistent and workers > 0,
    }

"""An optional decoded-image cache: every image decoded once, kept as resized uint8 pixels.

Trained strategies read each JPEG/PNG once per epoch, and decoding dominates their data loading.
`DecodedSource` wraps an image source: the first time, it decodes every image, takes the centre
square and resizes it to `size` x `size`, and writes all of them into one memory-mapped uint8 file
(N, 3, size, size) under `<cache>/decoded/`; afterwards `load` is a copy out of the page cache.
Stream builders with a `decoded_size` option build it on first use (silently: builders get no
progress object); `cilbench data decode <stream> --size N` builds it beforehand with a progress bar.
Images are resized with antialiased bilinear interpolation.

What changes: evaluation transforms (resize shorter side, centre crop) see the same centre square
as before, resampled once more; training crops are drawn from the centre square rather than the
whole image. The fingerprint says so (`|decoded-<size>`), so frozen features computed from cached
pixels never mix with features of the original files. The file is written to a temporary name and
renamed with its JSON header last, so an interrupted build is rebuilt, never half-used. The header
holds the pixels' sha256, checked once per process when the cache is opened, so damage that keeps
the file's size (zeroed or edited pixels) is detected and the cache rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cilbench.core.callbacks import Progress, SilentProgress
from cilbench.core.files import atomic_path, remove_stale_temps, reserve, write_atomic
from cilbench.core.memory import check_fits
from cilbench.data.downloads import sha256_file
from cilbench.data.sources import ImageSource

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
_VERIFIED: set[tuple[Path, int, int]] = set()
"""(path, mtime_ns, size) of files whose checksum this process has verified."""


class DecodedSource:
    """`source` with its images decoded once into a memory-mapped (N, 3, size, size) file."""

    def __init__(
        self,
        source: ImageSource,
        size: int,
        cache_dir: Path,
        progress: Progress | None = None,
    ):
        if size <= 0:
            raise ValueError(f"decoded cache size must be positive; got {size}")
        self.source = source
        self.size = size
        self.name = f"{getattr(source, 'name', 'source')}-decoded{size}"
        self._fingerprint = f"{source.fingerprint}|decoded-{size}"
        key = hashlib.sha256(self._fingerprint.encode()).hexdigest()[:32]
        self.path = Path(cache_dir) / "decoded" / f"{key}.u8"
        self._array: np.ndarray | None = None
        if not self._valid():
            check_fits(  # one image resized in float, then stored as uint8
                3 * size * size * 8,
                f"a decoded cache of size {size} ({size} x {size} px per image)",
                fix="Choose a smaller size (256 is typical).",
            )
            self._build(progress or SilentProgress())

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def targets(self) -> np.ndarray:
        return self.source.targets

    def __len__(self) -> int:
        return len(self.source)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width), the same for every image (lets training augment whole batches)."""
        return self.size, self.size

    def load(self, index: int) -> torch.Tensor:
        if self._array is None:  # opened lazily: each data-loader worker maps the file itself
            shape = (len(self), 3, self.size, self.size)
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r", shape=shape)
        return torch.from_numpy(np.array(self._array[index]))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    @property
    def _header_path(self) -> Path:
        return self.path.with_suffix(".json")

    def _header(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "fingerprint": self._fingerprint,
            "count": len(self),
            "size": self.size,
        }

    def _valid(self) -> bool:
        """Header matches this source, size matches, and the pixels match their sha256."""
        try:
            header = json.loads(self._header_path.read_text())
            stat = self.path.stat()
        except (OSError, ValueError):
            return False
        expected_bytes = len(self) * 3 * self.size * self.size
        stored = header.pop("sha256", None) if isinstance(header, dict) else None
        if stored is None or header != self._header() or stat.st_size != expected_bytes:
            return False
        stamp = (self.path, stat.st_mtime_ns, stat.st_size)
        if stamp not in _VERIFIED:
            if sha256_file(self.path) != stored:
                log.warning("decoded cache %s fails its checksum (damaged); rebuilding", self.path)
                return False
            _VERIFIED.add(stamp)
        return True

    def _build(self, progress: Progress) -> None:
        from torchvision.transforms import v2

        log.info("building the decoded cache %s (%d images, once)", self.path, len(self))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path.parent)
        self._header_path.unlink(missing_ok=True)
        square = v2.Compose([v2.Resize(self.size, antialias=True), v2.CenterCrop(self.size)])
        digest = hashlib.sha256()
        with atomic_path(self.path) as tmp:
            shape = (len(self), 3, self.size, self.size)
            reserve(tmp, int(np.prod(shape)))
            array = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=shape)
            with progress.task(f"decoding {self.name}", total=len(self)) as advance:
                for index in range(len(self)):
                    array[index] = square(self.source.load(index)).numpy()
                    digest.update(array[index].tobytes())
                    advance(1)
            array.flush()
            del array
        header = {**self._header(), "sha256": digest.hexdigest()}
        write_atomic(self._header_path, json.dumps(header))


def maybe_decoded(source: ImageSource, size: int, cache_dir: Path | None = None) -> ImageSource:
    """`source` itself when `size` is 0, else its decoded cache (built now if missing).

    The cache lives under `cache_dir`, default $CILBENCH_CACHE or ~/.cache/cilbench.
    """
    if size == 0:
        return source
    from cilbench.core.paths import default_cache_dir

    return DecodedSource(source, size, cache_dir or default_cache_dir())

"""Frozen-feature extraction with an on-disk cache: the reason frozen strategies are fast.

Features of a whole image source are computed once per (backbone tag, weight digest, preprocessing,
compute precision, source fingerprint) and stored as a safetensors file, written atomically and
verified by a checksum on every read. A damaged file is reported and rebuilt, never used; a changed
key simply names another file, so stale features cannot be returned. A cache folder that cannot be
written (read-only, full disk) costs speed, not the run: features stay in memory, with one warning.
The backbone runs at the run's precision (`cilbench.core.devices`: bf16 by default on CUDA, any
precision on request); `cilbench profile gpu` reports how far bf16 features are from float32 ones.
Images are decoded in worker processes (`cilbench.data.sources.loader_workers`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from cilbench.backbones.model import Backbone
from cilbench.core.callbacks import Progress, SilentProgress
from cilbench.core.devices import autocast, compute_dtype
from cilbench.core.errors import CilbenchError
from cilbench.core.files import atomic_path, remove_stale_temps, writable_problem
from cilbench.data.jpeg_decode import (
    EncodedImages,
    collate_encoded,
    decode_batch,
    decodes_on_gpu,
    resolve_decode,
)
from cilbench.data.sources import (
    DatasetView,
    ImageSource,
    loader_options,
    loader_workers,
    threads_beside_workers,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = "2"  # 2: the key names the compute precision; a GPU decoder's key names it too


def extract_features(
    forward: Callable[[torch.Tensor], torch.Tensor],
    backbone: Backbone,
    dataset: Dataset,
    *,
    batch_size: int = 128,
    num_workers: int = 0,
    progress: Progress | None = None,
    description: str = "extracting features",
) -> torch.Tensor:
    """Run `forward` over `dataset` (uint8 images, prepared by `backbone`); float32 on the CPU.

    `forward` runs under autocast at the backbone's precision; `num_workers` processes decode.
    """
    progress = progress or SilentProgress()
    device = backbone.device
    loader = DataLoader(dataset, batch_size=batch_size, **loader_options(device, num_workers))
    chunks = []
    total = len(dataset)  # type: ignore[arg-type]
    with (
        progress.task(description, total=total) as advance,
        torch.inference_mode(),
        autocast(device, backbone.precision),
        threads_beside_workers(num_workers),
    ):
        for images, _ in loader:
            chunks.append(forward(backbone.prepare(images)).float().cpu())
            advance(len(images))
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


def extract_decoded_on_device(
    forward: Callable[[torch.Tensor], torch.Tensor],
    backbone: Backbone,
    source: ImageSource,
    *,
    batch_size: int = 128,
    num_workers: int = 0,
    progress: Progress | None = None,
    description: str = "extracting features",
) -> torch.Tensor:
    """`extract_features` of every image file of `source`, the JPEGs decoded on the backbone's
    device in batches (`--decode gpu`, `cilbench.data.jpeg_decode`); workers only read bytes."""
    progress = progress or SilentProgress()
    device = backbone.device
    transform = backbone.preprocessing.sample_transform()
    dataset = EncodedImages(source, range(len(source)))
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_encoded
    )
    chunks = []
    with progress.task(description, total=len(source)) as advance, torch.inference_mode():
        for encoded, positions in loader:
            images = decode_batch(encoded, positions, source, transform, device)
            with autocast(device, backbone.precision):
                chunks.append(forward(backbone.prepare(images)).float().cpu())
            advance(len(positions))
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


class FeatureStore:
    """Frozen features of the runner's backbone, from the cache or computed once.

    Strategies call `get(view)` for an experience's training set; the runner calls it for test
    sets when a strategy predicts from frozen features. `images_forwarded` counts backbone work.
    `num_workers`: decoding processes (None: `loader_workers` picks per source). `decode`:
    'gpu' decodes the JPEGs of image files on the backbone's CUDA device (resolved by
    `data.jpeg_decode.resolve_decode`: 'cpu' without CUDA).
    """

    def __init__(
        self,
        backbone: Backbone,
        cache_dir: Path | None = None,
        *,
        batch_size: int = 128,
        num_workers: int | None = None,
        progress: Progress | None = None,
        user: str = "",
        decode: str = "cpu",
    ):
        self.backbone = backbone
        self.user = user
        self.decode = resolve_decode(decode, backbone.device)
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress or SilentProgress()
        self.images_forwarded = 0
        self.extract_seconds = 0.0
        self.cache_hits = 0
        self.wait_seconds = 0.0
        """Time spent waiting for another process's cache lock (not this run's work)."""
        self._memory: dict[str, torch.Tensor] = {}
        self._writable = cache_dir is not None and self._check_cache(cache_dir / "features")

    def get(self, view: DatasetView) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, D), labels (N,)) of the images in `view`."""
        features = self.source_features(view.source)
        indices = torch.as_tensor(view.indices, dtype=torch.long)
        return features[indices], torch.as_tensor(view.labels, dtype=torch.long)

    def source_features(self, source: ImageSource) -> torch.Tensor:
        """Features of every image in `source`, (N, D) float32."""
        key, description = self.cache_key(source)
        if key in self._memory:
            return self._memory[key]
        if self.cache_dir is None:
            features = self._extract(source)
        else:
            path = self.cache_dir / "features" / f"{key}.safetensors"
            features = self._cached_or_extracted(source, path, description)
        self._memory[key] = features
        return features

    def remember(self, source: ImageSource, features: torch.Tensor) -> None:
        """Answer `source` with `features` in this process (features computed elsewhere)."""
        self._memory[self.cache_key(source)[0]] = features

    def _cached_or_extracted(
        self, source: ImageSource, path: Path, description: str
    ) -> torch.Tensor:
        """Read the cache file, or extract and write it while holding its lock.

        Another process extracting the same key holds the lock, so this one waits and then reads
        its file instead of doing the same work twice. A cache that cannot be written is only
        read.
        """
        features = _read_cached(path, description)
        if features is not None:
            self.cache_hits += 1
            return features
        if not self._writable:
            return self._extract(source)
        waiting = time.perf_counter()
        with FileLock(path.with_suffix(".lock")):
            self.wait_seconds += time.perf_counter() - waiting
            features = _read_cached(path, description)
            if features is not None:
                self.cache_hits += 1
                return features
            features = self._extract(source)
            self._write(path, features, description)
        return features

    def cache_key(self, source: ImageSource) -> tuple[str, str]:
        """(hex key, the JSON it hashes): everything the features depend on."""
        key = {
            "format": FORMAT_VERSION,
            "backbone": self.backbone.tag,
            "weights": self.backbone.weight_digest,
            "preprocessing": self.backbone.preprocessing.describe(),
            "precision": str(compute_dtype(self.backbone.device, self.backbone.precision)),
            "source": source.fingerprint,
        }
        if decodes_on_gpu(source, self.decode):  # another decoder, other pixels
            key["decoder"] = "gpu"
        description = json.dumps(key, sort_keys=True)
        return hashlib.sha256(description.encode()).hexdigest()[:40], description

    def _check_cache(self, folder: Path) -> bool:
        """Whether features can be written to `folder`; clears temp files of dead writers."""
        problem = writable_problem(folder)
        if problem:
            _warn_once(folder, problem)
            return False
        remove_stale_temps(folder)
        return True

    def check_backbone(self) -> None:
        """CilbenchError when the frozen backbone's weights changed since it was built: features
        extracted now would be stored (and later read) under the pristine backbone's key."""
        if not self.backbone.unchanged():
            raise CilbenchError(
                f"The frozen backbone {self.backbone.tag!r} was modified by "
                f"{self.user or 'the code using this feature store'}: its weights no longer "
                "match the ones it was built with, so its features would poison the shared "
                "feature cache (nothing was written). A strategy that adapts the backbone must "
                "train its own copy (`context.backbone.build_model()`), never "
                "`context.backbone.model`."
            )

    def _write(self, path: Path, features: torch.Tensor, description: str) -> None:
        self.check_backbone()
        try:
            _write_cached(path, features, description)
        except (OSError, SafetensorError) as error:  # a full disk included: the run goes on
            _warn_once(path.parent, str(error))
            self._writable = False

    def _extract(self, source: ImageSource) -> torch.Tensor:
        import numpy as np

        start = time.perf_counter()
        view = DatasetView(source, np.arange(len(source)), np.zeros(len(source), dtype=np.int64))
        options: dict[str, Any] = {
            "batch_size": self.batch_size,
            "num_workers": loader_workers(self.num_workers, [source], self.backbone.device),
            "progress": self.progress,
            "description": f"features {getattr(source, 'name', '')}".strip(),
        }
        forward = self.backbone.forward_features
        if decodes_on_gpu(source, self.decode):
            features = extract_decoded_on_device(forward, self.backbone, source, **options)
        else:
            dataset = view.with_transform(self.backbone.preprocessing.sample_transform())
            features = extract_features(forward, self.backbone, dataset, **options)
        self.images_forwarded += len(source)
        self.extract_seconds += time.perf_counter() - start
        return features


def _checksum(features: torch.Tensor) -> str:
    return hashlib.sha256(features.contiguous().numpy().tobytes()).hexdigest()


def _read_cached(path: Path, description: str) -> torch.Tensor | None:
    if not path.exists():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        features = load_file(str(path))["features"]
        if metadata.get("key") != description or metadata.get("sha256") != _checksum(features):
            raise ValueError("key or checksum mismatch")
    except (SafetensorError, ValueError, KeyError, OSError) as error:
        log.warning("feature cache file %s is damaged (%s); rebuilding it", path, error)
        path.unlink(missing_ok=True)
        return None
    return features


def _write_cached(path: Path, features: torch.Tensor, description: str) -> None:
    metadata = {"key": description, "sha256": _checksum(features)}
    with atomic_path(path) as tmp:
        save_file({"features": features.contiguous()}, str(tmp), metadata=metadata)


_WARNED: set[Path] = set()


def _warn_once(folder: Path, problem: str) -> None:
    """One warning per folder and process: the cache is not written, features stay in memory."""
    if folder not in _WARNED:
        _WARNED.add(folder)
        log.warning(
            "feature cache %s cannot be written (%s): features are kept in memory for this run "
            "only, and the next run extracts them again",
            folder,
            problem,
        )

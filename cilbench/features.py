"""Frozen-feature extraction with an on-disk cache: the reason frozen strategies are fast.

Features of a whole image source are computed once per (backbone tag, weight digest,
preprocessing, source fingerprint) and stored as a safetensors file, written atomically and
verified by a checksum on every read. A damaged file is reported and rebuilt, never used; a changed
key simply names another file, so stale features cannot be returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from cilbench.backbones import Backbone
from cilbench.callbacks import Progress, SilentProgress
from cilbench.data import DatasetView, ImageSource

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"


def default_cache_dir() -> Path:
    """$CILBENCH_CACHE, else ~/.cache/cilbench."""
    return Path(os.environ.get("CILBENCH_CACHE", Path.home() / ".cache" / "cilbench"))


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
    """Run `forward` over `dataset` (uint8 images, prepared by `backbone`); float32 on the CPU."""
    progress = progress or SilentProgress()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=backbone.device.type == "cuda",
        persistent_workers=False,
    )
    chunks = []
    total = len(dataset)  # type: ignore[arg-type]
    with progress.task(description, total=total) as advance, torch.inference_mode():
        for images, _ in loader:
            chunks.append(forward(backbone.prepare(images)).float().cpu())
            advance(len(images))
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


class FeatureStore:
    """Frozen features of the runner's backbone, from the cache or computed once.

    Strategies call `get(view)` for an experience's training set; the runner calls it for test
    sets when a strategy predicts from frozen features. `images_forwarded` counts backbone work.
    """

    def __init__(
        self,
        backbone: Backbone,
        cache_dir: Path | None = None,
        *,
        batch_size: int = 128,
        num_workers: int = 0,
        progress: Progress | None = None,
    ):
        self.backbone = backbone
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress or SilentProgress()
        self.images_forwarded = 0
        self.extract_seconds = 0.0
        self.cache_hits = 0
        self._memory: dict[str, torch.Tensor] = {}

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

    def _cached_or_extracted(
        self, source: ImageSource, path: Path, description: str
    ) -> torch.Tensor:
        """Read the cache file, or extract and write it while holding its lock.

        Another process extracting the same key holds the lock, so this one waits and then reads
        its file instead of doing the same work twice.
        """
        features = _read_cached(path, description)
        if features is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(path.with_suffix(".lock")):
                features = _read_cached(path, description)
                if features is None:
                    features = self._extract(source)
                    _write_cached(path, features, description)
                    return features
        self.cache_hits += 1
        return features

    def cache_key(self, source: ImageSource) -> tuple[str, str]:
        """(hex key, the JSON it hashes): everything the features depend on."""
        description = json.dumps(
            {
                "format": FORMAT_VERSION,
                "backbone": self.backbone.tag,
                "weights": self.backbone.weight_digest,
                "preprocessing": self.backbone.preprocessing.describe(),
                "source": source.fingerprint,
            },
            sort_keys=True,
        )
        return hashlib.sha256(description.encode()).hexdigest()[:40], description

    def _extract(self, source: ImageSource) -> torch.Tensor:
        import numpy as np

        start = time.perf_counter()
        view = DatasetView(source, np.arange(len(source)), np.zeros(len(source), dtype=np.int64))
        dataset = view.with_transform(self.backbone.preprocessing.sample_transform())
        features = extract_features(
            self.backbone.forward_features,
            self.backbone,
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            progress=self.progress,
            description=f"features {getattr(source, 'name', '')}".strip(),
        )
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
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"key": description, "sha256": _checksum(features)}
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        save_file({"features": features.contiguous()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)

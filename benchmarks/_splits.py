"""cilbench's seeded train/test split of a data set that ships without one, as a JSON manifest.

Within each class (files sorted by path) the test images are the first `test_fraction` (rounded,
at least one) of a permutation drawn from `numpy.random.default_rng(seed)`, classes taken in
sorted order. The manifest `<data-root>/<dataset>-split-v1-seed<S>.json` (or, when that folder is
read-only, `<cache>/splits/`) holds the sha256 of its own content and of the folder listing it was
made from: a later run uses it as is, and a changed folder stops with an error instead of silently
giving another split. PCG64 permutations are the same on every platform.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cilbench.benchmarks._shared import ImageFolder
from cilbench.core.errors import DataError
from cilbench.core.files import write_atomic

SPLIT_VERSION = 1


def split_path(root: Path, dataset: str, seed: int) -> Path:
    """Where the split manifest lives (next to the data if writable)."""
    name = f"{dataset}-split-v{SPLIT_VERSION}-seed{seed}.json"
    if (root / name).exists() or os.access(root, os.W_OK):
        return root / name
    from cilbench.core.paths import default_cache_dir

    return default_cache_dir() / "splits" / name


def make_split(tree: ImageFolder, dataset: str, seed: int, test_fraction: float) -> dict[str, Any]:
    """The stratified split of a tree, as a manifest (without its own sha256)."""
    rng = np.random.default_rng(seed)
    files = np.asarray(tree.files)
    test: list[str] = []
    for label in range(len(tree.classes)):
        members = files[tree.labels == label]
        count = max(1, round(test_fraction * len(members))) if len(members) > 1 else 0
        test.extend(sorted(members[rng.permutation(len(members))[:count]].tolist()))
    chosen = set(test)
    return {
        "format": "cilbench-split",
        "version": SPLIT_VERSION,
        "dataset": dataset,
        "seed": seed,
        "test_fraction": test_fraction,
        "classes": list(tree.classes),
        "listing_sha256": listing_sha256(tree),
        "train": [f for f in tree.files if f not in chosen],
        "test": test,
    }


def load_or_make_split(
    tree: ImageFolder, dataset: str, seed: int, test_fraction: float, root: Path
) -> dict[str, Any]:
    """The stored split manifest, verified against its sha256 and the folder, or a new one."""
    path = split_path(root, dataset, seed)
    if not path.exists():
        manifest = make_split(tree, dataset, seed, test_fraction)
        manifest["sha256"] = _content_sha256(manifest)
        write_atomic(path, json.dumps(manifest, indent=1))
        return manifest
    try:
        manifest = json.loads(path.read_text())
        stored = manifest.pop("sha256")
    except (ValueError, KeyError, OSError) as error:
        raise DataError(f"Split manifest {path} is unreadable ({error}); delete it.") from error
    if stored != _content_sha256(manifest) or manifest.get("version") != SPLIT_VERSION:
        raise DataError(
            f"Split manifest {path} fails its sha256 check (edited or damaged) or has another "
            "version. Delete it to split again (results will not be comparable with runs on "
            "the old split)."
        )
    if manifest["listing_sha256"] != listing_sha256(tree):
        raise DataError(
            f"The files under {tree.root} changed since the split manifest {path} was made "
            "(added, removed or resized). Restore them, or delete the manifest to split again."
        )
    manifest["sha256"] = stored
    return manifest


def subset(tree: ImageFolder, files: list[str]) -> ImageFolder:
    """The images of `tree` named in `files` (paths relative to its root), in that order."""
    index = {f: i for i, f in enumerate(tree.files)}
    picked = np.asarray([index[f] for f in files], dtype=np.int64)
    return ImageFolder(tree.root, tree.classes, tuple(files), tree.labels[picked])


def seeded_splits(
    tree: ImageFolder, dataset: str, seed: int, test_fraction: float, root: Path
) -> tuple[ImageFolder, ImageFolder]:
    """(train, test) of a tree without a split, from its (new or verified) manifest."""
    manifest = load_or_make_split(tree, dataset, seed, test_fraction, root)
    return subset(tree, manifest["train"]), subset(tree, manifest["test"])


def listing_sha256(tree: ImageFolder) -> str:
    """sha256 over the relative path and size of every image of the tree."""
    digest = hashlib.sha256()
    for relative in tree.files:
        digest.update(f"{relative}\0{(tree.root / relative).stat().st_size}\n".encode())
    return digest.hexdigest()


def _content_sha256(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()

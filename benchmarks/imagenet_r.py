"""Split ImageNet-R: 200 ImageNet classes as renditions (~30k images), in class-incremental tasks.

Two layouts under `<data-root>/imagenet-r/` are accepted:

- pre-split: `train/<wnid>/*.jpg` and `test/<wnid>/*.jpg` (the LAMDA-PILOT archive, 24k / 6k);
- raw: `<wnid>/*.jpg`, the authors' `imagenet-r.tar` (what `cilbench data fetch` downloads).
  cilbench splits it once, stratified per class, 80 % train / 20 % test: within each class (files
  sorted by path) the test images are the first 20 % (rounded, at least one) of a permutation
  drawn from `numpy.random.default_rng(split_seed)`, classes taken in sorted order. The split is
  stored as a versioned JSON manifest next to the data, `<data-root>/imagenet-r-split-v1-seed<S>
  .json` (or, when that folder is read-only, under `<cache>/splits/`), with the sha256 of its
  own content and of the folder listing it was made from: a later run uses the manifest as is,
  and a changed folder (files added, removed or resized) stops with an error instead of silently
  giving another split. PCG64 permutations are identical on every platform, so two machines with
  the same files get the same split.

Default protocol: 10 tasks x 20 classes in the pycil-1993 order over the sorted wnids (it starts
with the wnids at positions 168, 136, 51, 9, 183). `stream.decoded_size=N` reads images from a
decoded uint8 cache (see cilbench/data/decoded_cache.py) so that trained strategies stop re-decoding
JPEGs every epoch. An unreadable image stops the run with its path (no silent skipping: a skipped
test image would change the benchmark).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from cilbench.api import register_stream
from cilbench.benchmarks._shared import (
    REFERENCE_BACKBONE,
    REFERENCE_PREPROCESSING,
    ImageFolder,
    checksum_rows,
    count_rows,
    data_root_or_default,
    file_source,
    missing_data,
    scan_image_folder,
)
from cilbench.core.callbacks import Progress
from cilbench.core.config import NonNegative, Range
from cilbench.core.errors import DataError
from cilbench.core.files import write_atomic
from cilbench.data.downloads import CheckRow, Remote, download, record_checksums, unpack
from cilbench.data.streams import ClassIncrementalOptions, Stream, class_incremental_stream

NAME = "split-imagenet-r"
FOLDER = "imagenet-r"
NUM_CLASSES = 200
REMOTE = Remote(
    "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
    "imagenet-r.tar",
    "a61312130a589d0ca1a8fca1f2bd3337",
)
SPLIT_VERSION = 1
TEST_FRACTION = 0.2
OFFICIAL_COUNTS = {"train": 24_000, "test": 6_000, "all": 30_000}
LAYOUT = (
    f"  <data-root>/{FOLDER}/<wnid>/*.jpg              (raw: the authors' imagenet-r.tar)\n"
    f"  or <data-root>/{FOLDER}/train/<wnid>/*.jpg and <data-root>/{FOLDER}/test/<wnid>/*.jpg"
    f"\n  with {NUM_CLASSES} wnid folders"
)


@register_stream(NAME)
@dataclass(frozen=True)
class SplitImagenetR(ClassIncrementalOptions):
    """ImageNet-R, 200 classes, default 10 tasks x 20 classes in the pycil-1993 order."""

    default_backbone = REFERENCE_BACKBONE
    default_backbone_settings = REFERENCE_PREPROCESSING

    increment: int = 20
    split_seed: Annotated[int, Range(0, 2**32 - 1)] = 1993
    """Seed of the 80/20 split of the raw layout (ignored for a pre-split folder)."""
    decoded_size: Annotated[int, NonNegative()] = 0
    """0: decode JPEGs on every read; N: read N x N centre squares from a decoded cache."""

    def build(self, data_root: Path | None = None) -> Stream:
        root = data_root_or_default(data_root)
        train, test = self.splits(root)
        sources = (
            file_source(train, f"{NAME}-train", self.decoded_size),
            file_source(test, f"{NAME}-test", self.decoded_size),
        )
        return class_incremental_stream(NAME, self.version, *sources, train.classes, self)

    def splits(self, root: Path) -> tuple[ImageFolder, ImageFolder]:
        """(train, test) image lists from either layout."""
        folder = root / FOLDER
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            train = _scan(folder / "train")
            return train, _scan(folder / "test", train.classes)
        if not folder.is_dir():
            raise missing_data("ImageNet-R", folder, NAME, LAYOUT, fetchable=True)
        tree = _scan(folder)
        manifest = load_or_make_split(tree, self.split_seed, root)
        return _subset(tree, manifest["train"]), _subset(tree, manifest["test"])

    def fetch(self, root: Path, progress: Progress) -> list[str]:
        """Download and verify imagenet-r.tar, unpack it, record checksums, write the split."""
        archive = download(REMOTE, root, progress)
        unpack(archive, root, progress)
        tree = _scan(root / FOLDER)
        record_checksums(tree.root, tree.files, progress)
        load_or_make_split(tree, self.split_seed, root)
        return [f"ImageNet-R is ready in {tree.root} (md5 verified); use --data-root {root}"]

    def check(self, root: Path, progress: Progress, record: bool = False) -> list[CheckRow]:
        """Layout, classes, images per split, split manifest, checksums."""
        manifest = split_path(root, self.split_seed)
        existed = manifest.exists()
        train, test = self.splits(root)
        pre_split = train.root != test.root
        rows = [
            CheckRow("layout", "train/ + test/" if pre_split else "raw wnid folders"),
            CheckRow("classes", str(len(train.classes)), str(NUM_CLASSES)),
            *count_rows("train", train, OFFICIAL_COUNTS["train"] if pre_split else None),
            *count_rows("test", test, OFFICIAL_COUNTS["test"] if pre_split else None),
        ]
        if not pre_split:
            state = "sha256 ok" if existed else "written now"
            rows.append(CheckRow("split manifest", state, str(manifest)))
        folder = root / FOLDER
        files = [*(f"train/{f}" for f in train.files), *(f"test/{f}" for f in test.files)]
        return rows + checksum_rows(
            folder, files if pre_split else train.files + test.files, record, progress
        )


def _scan(folder: Path, classes: tuple[str, ...] | None = None) -> ImageFolder:
    tree = scan_image_folder(folder, classes)
    if len(tree.classes) != NUM_CLASSES:
        raise DataError(
            f"ImageNet-R at {folder} has {len(tree.classes)} class folders; expected "
            f"{NUM_CLASSES}. The download or unpacking is incomplete: run "
            f"`cilbench data fetch {NAME}` again. Expected layout:\n{LAYOUT}"
        )
    return tree


def _subset(tree: ImageFolder, files: list[str]) -> ImageFolder:
    index = {f: i for i, f in enumerate(tree.files)}
    picked = np.asarray([index[f] for f in files], dtype=np.int64)
    return ImageFolder(tree.root, tree.classes, tuple(files), tree.labels[picked])


def split_path(root: Path, seed: int) -> Path:
    """Where the split manifest of the raw layout lives (next to the data if writable)."""
    name = f"imagenet-r-split-v{SPLIT_VERSION}-seed{seed}.json"
    if (root / name).exists() or os.access(root, os.W_OK):
        return root / name
    from cilbench.core.paths import default_cache_dir

    return default_cache_dir() / "splits" / name


def make_split(tree: ImageFolder, seed: int) -> dict[str, Any]:
    """The stratified 80/20 split of a raw tree, as a manifest (without its own sha256)."""
    rng = np.random.default_rng(seed)
    files = np.asarray(tree.files)
    test: list[str] = []
    for label in range(len(tree.classes)):
        members = files[tree.labels == label]
        count = max(1, round(TEST_FRACTION * len(members))) if len(members) > 1 else 0
        test.extend(sorted(members[rng.permutation(len(members))[:count]].tolist()))
    chosen = set(test)
    return {
        "format": "cilbench-split",
        "version": SPLIT_VERSION,
        "dataset": FOLDER,
        "seed": seed,
        "test_fraction": TEST_FRACTION,
        "classes": list(tree.classes),
        "listing_sha256": listing_sha256(tree),
        "train": [f for f in tree.files if f not in chosen],
        "test": test,
    }


def load_or_make_split(tree: ImageFolder, seed: int, root: Path) -> dict[str, Any]:
    """The stored split manifest, verified against its sha256 and the folder, or a new one."""
    path = split_path(root, seed)
    if not path.exists():
        manifest = make_split(tree, seed)
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


def listing_sha256(tree: ImageFolder) -> str:
    """sha256 over the relative path and size of every image of the tree."""
    digest = hashlib.sha256()
    for relative in tree.files:
        digest.update(f"{relative}\0{(tree.root / relative).stat().st_size}\n".encode())
    return digest.hexdigest()


def _content_sha256(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()

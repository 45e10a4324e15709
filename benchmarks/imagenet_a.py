"""Split ImageNet-A: 200 ImageNet classes of natural adversarial examples (7,500 images).

ImageNet-A has no official train/test split (LAMDA-PILOT issue 16). `stream.split` names the one
that runs; it is recorded in the result and shown on boards:

- `packaged` (default): LAMDA-PILOT's packaged folders, `<data-root>/imagenet-a/train/<wnid>/`
  and `test/<wnid>/`, the split PILOT, APER, EASE and MOS report on (the default, so that a run
  sits next to the published numbers of the same split). Shared-drive only (PILOT README):
  `cilbench data fetch` says where to get it.
- `seeded`: the authors' `imagenet-a.tar` (`<data-root>/imagenet-a/<wnid>/`, downloaded and
  md5-verified by `cilbench data fetch`), split by cilbench per class, 80 % train / 20 % test:
  within each class (files sorted) the test images are the first 20 % (rounded, at least one) of
  a permutation from `numpy.random.default_rng(split_seed)`, classes in sorted order; stored as
  `<data-root>/imagenet-a-split-v1-seed<S>.json` with sha256s (benchmarks/_splits.py).

Default protocol: 10 tasks x 20 classes, pycil-1993 order over the sorted wnids (PILOT's
`shuffle` with seed 1993). `stream.decoded_size=N` reads from the decoded cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from cilbench.api import register_stream
from cilbench.benchmarks import _splits
from cilbench.benchmarks._shared import (
    REFERENCE_BACKBONE,
    REFERENCE_PREPROCESSING,
    ImageFolder,
    checksum_rows,
    data_root_or_default,
    file_source,
    missing_split,
    packaged_folders,
    relative_files,
    require_classes,
    scan_image_folder,
    split_rows,
)
from cilbench.core.callbacks import Progress
from cilbench.core.config import NonNegative, Range
from cilbench.core.errors import DataError
from cilbench.data.downloads import CheckRow, Remote, download, record_checksums, unpack
from cilbench.data.streams import ClassIncrementalOptions, Stream, class_incremental_stream

NAME = "split-imagenet-a"
FOLDER = "imagenet-a"
NUM_CLASSES = 200
OFFICIAL_IMAGES = 7_500
TEST_FRACTION = 0.2
REMOTE = Remote(
    "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",
    "imagenet-a.tar",
    "c3e55429088dc681f30d81f4726b6595",
)
LAYOUT = (
    f"  split=packaged: <data-root>/{FOLDER}/train/<wnid>/*.jpg and "
    f"<data-root>/{FOLDER}/test/<wnid>/*.jpg (LAMDA-PILOT's package)\n"
    f"  split=seeded:   <data-root>/{FOLDER}/<wnid>/*.jpg (the authors' imagenet-a.tar, "
    f"{OFFICIAL_IMAGES:,} images)\n  with {NUM_CLASSES} wnid folders"
)
PACKAGE = (
    "LAMDA-PILOT's ImageNet-A package (Google Drive / OneDrive links in the README of "
    "https://github.com/LAMDA-CL/LAMDA-PILOT, section Datasets)"
)


@register_stream(NAME)
@dataclass(frozen=True)
class SplitImagenetA(ClassIncrementalOptions):
    """ImageNet-A, 200 classes, default 10 tasks x 20 classes in the pycil-1993 order."""

    default_backbone = REFERENCE_BACKBONE
    default_backbone_settings = REFERENCE_PREPROCESSING

    increment: int = 20
    split: Literal["packaged", "seeded"] = "packaged"
    """packaged: LAMDA-PILOT's train/ + test/ folders; seeded: cilbench's split of the raw tar."""
    split_seed: Annotated[int, Range(0, 2**32 - 1)] = 1993
    """Seed of the 80/20 split of the raw layout (split=seeded only)."""
    decoded_size: Annotated[int, NonNegative()] = 0
    """0: decode images on every read; N: read N x N centre squares from a decoded cache."""

    def build(self, data_root: Path | None = None) -> Stream:
        train, test = self.splits(data_root_or_default(data_root))
        sources = (
            file_source(train, f"{NAME}-train", self.decoded_size),
            file_source(test, f"{NAME}-test", self.decoded_size),
        )
        return class_incremental_stream(NAME, self.version, *sources, train.classes, self)

    def splits(self, root: Path, split: str | None = None) -> tuple[ImageFolder, ImageFolder]:
        """(train, test) image lists of `split` (default: the option)."""
        folder = root / FOLDER
        if (split or self.split) == "packaged":
            found = packaged_folders(folder, NUM_CLASSES, "ImageNet-A", LAYOUT)
            if found is None:
                raise DataError(
                    missing_split("ImageNet-A", NAME, folder, "packaged", PACKAGE, LAYOUT)
                )
            return found
        if not folder.is_dir() or (folder / "train").is_dir():
            raise DataError(missing_split("ImageNet-A", NAME, folder, "seeded", PACKAGE, LAYOUT))
        tree = _scan(folder)
        return _splits.seeded_splits(tree, FOLDER, self.split_seed, TEST_FRACTION, root)

    def fetch(self, root: Path, progress: Progress) -> list[str]:
        """Download and verify imagenet-a.tar, unpack it, record checksums, write the split."""
        archive = download(REMOTE, root, progress)
        unpack(archive, root, progress)
        tree = _scan(root / FOLDER)
        record_checksums(tree.root, tree.files, progress)
        _splits.load_or_make_split(tree, FOLDER, self.split_seed, TEST_FRACTION, root)
        return [
            f"ImageNet-A is ready in {tree.root} (md5 verified); use --data-root {root} "
            "--set stream.split=seeded (cilbench's seeded 80/20 split of the authors' archive).",
            f"The default split=packaged needs {PACKAGE}, unpacked as {tree.root}/train/ and "
            f"{tree.root}/test/.",
        ]

    def check(self, root: Path, progress: Progress, record: bool = False) -> list[CheckRow]:
        """Layout (whichever is on disk), classes, images per split, manifest, checksums."""
        folder = root / FOLDER
        split = "packaged" if (folder / "train").is_dir() else "seeded"
        manifest = _splits.split_path(root, FOLDER, self.split_seed)
        existed = manifest.exists()
        train, test = self.splits(root, split)
        layout = "train/ + test/ (split=packaged)" if split == "packaged" else "raw (split=seeded)"
        rows = split_rows(layout, train, test, NUM_CLASSES, None)
        total = len(train.files) + len(test.files)
        note = "" if total == OFFICIAL_IMAGES else f"official release: {OFFICIAL_IMAGES} images"
        rows.append(CheckRow("all images", str(total), str(OFFICIAL_IMAGES), note=note))
        if split == "seeded":
            state = "sha256 ok" if existed else "written now"
            rows.append(CheckRow("split manifest", state, str(manifest)))
        files = sorted(relative_files(folder, train, test))
        return rows + checksum_rows(folder, files, record, progress)


def _scan(folder: Path) -> ImageFolder:
    return require_classes(scan_image_folder(folder), NUM_CLASSES, "ImageNet-A", LAYOUT)

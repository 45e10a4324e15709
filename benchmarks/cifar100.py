"""Split CIFAR-100: 50k train / 10k test images of 100 classes, in class-incremental tasks.

Reads torchvision's layout, `<data-root>/cifar-100-python/{train,test,meta}` (the pickles of the
official archive); `cilbench data fetch split-cifar100` downloads the archive and checks its md5
and the md5 of each unpacked file against torchvision's published checksums. Protocols: B0-Inc10
(default), B0-Inc5, B50-Inc10, ... via `stream.init_classes` / `stream.increment`. Class orders:
`pycil-1993` (default; LAMDA-PILOT, SLCA, RanPAC), `natural` (L2P, DualPrompt), `icarl` (the
iCaRL order, used by the NMC paper) or `seed:N`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cilbench.api import Stream, register_stream
from cilbench.benchmarks._shared import (
    REFERENCE_BACKBONE,
    REFERENCE_PREPROCESSING,
    checksum_rows,
    data_root_or_default,
    missing_data,
    official_note,
)
from cilbench.callbacks import Progress
from cilbench.data import ArraySource
from cilbench.downloads import CheckRow, Remote, download, record_checksums, unpack
from cilbench.errors import DataError
from cilbench.streams import ClassIncrementalOptions, class_incremental_stream

NAME = "split-cifar100"
FOLDER = "cifar-100-python"
FILES = ("train", "test", "meta")
OFFICIAL_COUNTS = {"train": 50_000, "test": 10_000}
ICARL_ORDER = (
    87, 0, 52, 58, 44, 91, 68, 97, 51, 15, 94, 92, 10, 72, 49, 78, 61, 14, 8, 86,
    84, 96, 18, 24, 32, 45, 88, 11, 4, 67, 69, 66, 77, 47, 79, 93, 29, 50, 57, 83,
    17, 81, 41, 12, 37, 59, 25, 20, 80, 73, 1, 28, 6, 46, 62, 82, 53, 9, 31, 75,
    38, 63, 33, 74, 27, 22, 36, 3, 16, 21, 60, 19, 70, 90, 89, 43, 5, 42, 65, 76,
    40, 30, 23, 85, 2, 95, 56, 48, 71, 64, 98, 13, 99, 7, 34, 55, 54, 26, 35, 39,
)  # fmt: skip
LAYOUT = f"  <data-root>/{FOLDER}/train\n  <data-root>/{FOLDER}/test\n  <data-root>/{FOLDER}/meta"


@register_stream(NAME)
@dataclass(frozen=True)
class SplitCifar100(ClassIncrementalOptions):
    """CIFAR-100 (torchvision pickles) in class-incremental tasks, default B0-Inc10 pycil-1993."""

    default_backbone = REFERENCE_BACKBONE
    default_backbone_settings = REFERENCE_PREPROCESSING

    def build(self, data_root: Path | None = None) -> Stream:
        folder = self._folder(data_root)
        names = read_pickle(folder / "meta")["fine_label_names"]
        train, test = (read_split(folder, split) for split in ("train", "test"))
        return class_incremental_stream(
            NAME, self.version, train, test, names, self, named_orders={"icarl": ICARL_ORDER}
        )

    def fetch(self, root: Path, progress: Progress) -> list[str]:
        """Download the official archive, verify it and its files, record checksums."""
        from torchvision.datasets import CIFAR100
        from torchvision.datasets.utils import calculate_md5

        archive = download(
            Remote(CIFAR100.url, CIFAR100.filename, CIFAR100.tgz_md5), root, progress
        )
        unpack(archive, root, progress)
        folder = root / FOLDER
        official = dict(CIFAR100.train_list + CIFAR100.test_list)
        official["meta"] = CIFAR100.meta["md5"]
        for name, md5 in official.items():
            if calculate_md5(str(folder / name)) != md5:
                raise DataError(f"{folder / name} does not match its official md5 {md5}.")
        record_checksums(folder, FILES, progress)
        return [f"CIFAR-100 is ready in {folder} (md5 verified); use --data-root {root}"]

    def check(self, root: Path, progress: Progress, record: bool = False) -> list[CheckRow]:
        """Layout, images per split, checksums of the three pickles."""
        folder = self._folder(root)
        rows = []
        for split in ("train", "test"):
            source = read_split(folder, split)
            classes = len(np.unique(source.targets))
            note = official_note(len(source), OFFICIAL_COUNTS[split])
            rows.append(
                CheckRow(f"{split}: images", str(len(source)), f"{classes} classes", note=note)
            )
        return rows + checksum_rows(folder, FILES, record, progress)

    def _folder(self, data_root: Path | None) -> Path:
        root = data_root_or_default(data_root)
        for folder in (root / FOLDER, root):
            if all((folder / name).is_file() for name in FILES):
                return folder
        raise missing_data("CIFAR-100", root / FOLDER, NAME, LAYOUT, fetchable=True)


def read_pickle(path: Path) -> dict[str, Any]:
    """One of the archive's pickles (Python 2 pickles: latin1, as torchvision reads them)."""
    try:
        with path.open("rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as error:
        raise DataError(
            f"{path} is truncated or damaged ({error!r}). Run `cilbench data check {NAME}` and "
            f"fetch again with `cilbench data fetch {NAME}`."
        ) from error


def read_split(folder: Path, split: str) -> ArraySource:
    """The `train` or `test` pickle as uint8 images (N, 32, 32, 3) with fine labels."""
    batch = read_pickle(folder / split)
    try:
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["fine_labels"], dtype=np.int64)
    except (KeyError, ValueError) as error:
        raise DataError(f"{folder / split} is not a CIFAR-100 batch ({error!r}).") from error
    images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    return ArraySource(images, labels, f"{NAME}-{split}")

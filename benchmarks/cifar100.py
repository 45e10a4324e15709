"""Split CIFAR-100: 50k train / 10k test images of 100 classes, in class-incremental tasks.

Reads torchvision's layout, `<data-root>/cifar-100-python/{train,test,meta}` (the pickles of the
official archive); `cilbench data fetch split-cifar100` downloads the archive and checks its md5
and the md5 of each unpacked file against torchvision's published checksums. Building the stream
and `cilbench data check` verify those official md5s before reading anything, and read the
pickles with a restricted unpickler (cilbench/data/safe_pickle.py) that cannot run code from a file.
A deliberate non-official copy (re-pickled data, test fixtures) is read with
`--set stream.verify_md5=false`; the restricted unpickler still applies. Protocols: B0-Inc10
(default), B0-Inc5, B50-Inc10, ... via `stream.init_classes` / `stream.increment`. Class orders:
`pycil-1993` (default; LAMDA-PILOT, SLCA, RanPAC), `natural` (L2P, DualPrompt), `icarl` (the
iCaRL order, used by the NMC paper) or `seed:N`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cilbench.api import register_stream
from cilbench.benchmarks._shared import (
    REFERENCE_BACKBONE,
    REFERENCE_PREPROCESSING,
    checksum_rows,
    data_root_or_default,
    missing_data,
    official_note,
)
from cilbench.core.callbacks import Progress
from cilbench.core.errors import DataError
from cilbench.data.downloads import CheckRow, Remote, download, record_checksums, unpack
from cilbench.data.safe_pickle import load_plain_pickle
from cilbench.data.sources import ArraySource
from cilbench.data.streams import ClassIncrementalOptions, Stream, class_incremental_stream

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
    verify_md5: bool = True
    """Refuse files whose md5 differs from the official release's (false: a deliberate copy)."""

    def build(self, data_root: Path | None = None) -> Stream:
        folder = self._folder(data_root)
        root = data_root_or_default(data_root)
        if self.verify_md5 and (damaged := unofficial_files(folder)):
            raise DataError(_unofficial_message(folder, damaged, root))
        names = read_meta(folder / "meta", root)
        train, test = (read_split(folder, split, root) for split in ("train", "test"))
        return class_incremental_stream(
            NAME, self.version, train, test, names, self, named_orders={"icarl": ICARL_ORDER}
        )

    def fetch(self, root: Path, progress: Progress) -> list[str]:
        """Download the official archive, verify it and its files, record checksums."""
        from torchvision.datasets import CIFAR100

        archive = download(
            Remote(CIFAR100.url, CIFAR100.filename, CIFAR100.tgz_md5), root, progress
        )
        unpack(archive, root, progress)
        folder = root / FOLDER
        if damaged := unofficial_files(folder):
            raise DataError(_unofficial_message(folder, damaged, root))
        record_checksums(folder, FILES, progress)
        return [f"CIFAR-100 is ready in {folder} (md5 verified); use --data-root {root}"]

    def check(self, root: Path, progress: Progress, record: bool = False) -> list[CheckRow]:
        """Official md5s, then (only if they match) images per split, checksums of the pickles."""
        folder = self._folder(root)
        damaged = unofficial_files(folder) if self.verify_md5 else {}
        if damaged:
            fix = f"not the official file: cilbench data fetch {NAME} --root {root}"
            return [
                CheckRow(f"{name}: md5", found[:12], official_md5()[name][:12], ok=False, note=fix)
                for name, found in damaged.items()
            ]
        rows = [CheckRow("official md5", "verified" if self.verify_md5 else "skipped", "")]
        for split in ("train", "test"):
            source = read_split(folder, split, root)
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


def official_md5() -> dict[str, str]:
    """md5 of each unpacked file of the official archive, as torchvision publishes them."""
    from torchvision.datasets import CIFAR100

    return {**dict(CIFAR100.train_list + CIFAR100.test_list), "meta": CIFAR100.meta["md5"]}


def unofficial_files(folder: Path) -> dict[str, str]:
    """{file name: its md5} for each of the three files whose md5 is not the official one."""
    from torchvision.datasets.utils import calculate_md5

    found = {name: calculate_md5(str(folder / name)) for name in FILES}
    return {name: md5 for name, md5 in found.items() if md5 != official_md5()[name]}


def _unofficial_message(folder: Path, damaged: dict[str, str], root: Path) -> str:
    files = ", ".join(f"{folder / name} (md5 {md5})" for name, md5 in damaged.items())
    return (
        f"CIFAR-100 files differ from the official release: {files}; nothing was read from "
        f"them. They are damaged or were replaced. Fetch them again with "
        f"`cilbench data fetch {NAME} --root {root}`; only for a deliberate non-official copy, "
        "run with --set stream.verify_md5=false."
    )


def read_pickle(path: Path, root: Path) -> dict[str, Any]:
    """One of the archive's pickles, read without running code from it (cilbench/safe_pickle)."""
    try:
        return load_plain_pickle(path)
    except DataError as error:
        raise DataError(
            f"{error}. Run `cilbench data check {NAME} --root {root}` and fetch again with "
            f"`cilbench data fetch {NAME} --root {root}`."
        ) from error


def read_meta(path: Path, root: Path) -> list[str]:
    """The 100 fine class names from the `meta` pickle."""
    names = read_pickle(path, root).get("fine_label_names")
    if not isinstance(names, list) or len(names) != 100:
        raise DataError(f"{path} holds no list of 100 fine_label_names; fetch it again.")
    return [str(name) for name in names]


def read_split(folder: Path, split: str, root: Path) -> ArraySource:
    """The `train` or `test` pickle as uint8 images (N, 32, 32, 3) with fine labels."""
    batch = read_pickle(folder / split, root)
    try:
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["fine_labels"], dtype=np.int64)
    except (KeyError, ValueError, TypeError) as error:
        raise DataError(f"{folder / split} is not a CIFAR-100 batch ({error!r}).") from error
    images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    return ArraySource(images, labels, f"{NAME}-{split}")

"""Pieces the image-folder stream builders share: locating data, scanning class folders, checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cilbench.core.callbacks import Progress
from cilbench.core.errors import DataError
from cilbench.core.paths import default_data_root
from cilbench.data.decoded_cache import maybe_decoded
from cilbench.data.downloads import CheckRow, record_checksums, verify_checksums
from cilbench.data.sources import FileSource, ImageSource

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

REFERENCE_BACKBONE = "vit_base_patch16_224.augreg_in21k"
"""What the LAMDA codebases (PILOT, APER, EASE, RanPAC's IN21K runs) call "IN21K"."""
REFERENCE_PREPROCESSING = {"image_size": 224, "crop_pct": 0.875, "normalization": "none"}
"""Their eval transform: Resize(256, bicubic), CenterCrop(224), ToTensor, and no Normalize."""


def data_root_or_default(data_root: Path | None) -> Path:
    """`--data-root` if given, else $CILBENCH_DATA or ./data."""
    return Path(data_root) if data_root is not None else default_data_root()


def missing_data(what: str, folder: Path, stream: str, layout: str, fetchable: bool) -> DataError:
    """The error for data that is not where it should be: the exact command or the layout."""
    how = (
        f"Get it with:\n  cilbench data fetch {stream} --root {folder.parent}\n"
        if fetchable
        else ""
    )
    return DataError(
        f"{what} not found at {folder}. {how}"
        f"Expected layout:\n{layout}\n"
        f"Then run with --data-root {folder.parent} (or set CILBENCH_DATA)."
    )


@dataclass(frozen=True)
class ImageFolder:
    """Image files under `root/<class>/...` (torchvision's ImageFolder layout, sorted names)."""

    root: Path
    classes: tuple[str, ...]
    files: tuple[str, ...]
    """Paths relative to `root`, sorted within each class."""
    labels: np.ndarray
    """Index into `classes` of each file."""

    def counts(self) -> list[int]:
        """Images per class, in `classes` order."""
        return np.bincount(self.labels, minlength=len(self.classes)).tolist()


def scan_image_folder(root: Path, classes: Sequence[str] | None = None) -> ImageFolder:
    """Every image under `root/<class>/` (recursively), classes sorted by name unless given."""
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if classes is None else classes
    files, labels = [], []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"Class folder {folder} is missing.")
        found = sorted(
            p.relative_to(root).as_posix()
            for p in folder.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not found:
            raise DataError(f"Class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        files.extend(found)
        labels.extend([label] * len(found))
    return ImageFolder(root, tuple(names), tuple(files), np.asarray(labels, dtype=np.int64))


def file_source(part: ImageFolder, name: str, decoded_size: int) -> ImageSource:
    """The images of `part` as a source, read through the decoded cache when `decoded_size`."""
    source = FileSource(part.root, part.files, part.labels.tolist(), name)
    return maybe_decoded(source, decoded_size)


def count_rows(split: str, folder: ImageFolder, expected_images: int | None) -> list[CheckRow]:
    """Check-table rows for one split: classes and images (with the official count, if known)."""
    counts = folder.counts()
    note = official_note(len(folder.files), expected_images)
    return [
        CheckRow(
            f"{split}: images",
            str(len(folder.files)),
            f"{min(counts)}-{max(counts)} per class",
            note=note,
        )
    ]


def official_note(found: int, official: int | None, unit: str = "images") -> str:
    """A note for the check table when a count differs from the official release's."""
    return "" if official is None or found == official else f"official release: {official} {unit}"


def checksum_rows(folder: Path, files: Sequence[str], record: bool, progress: Progress) -> list:
    """Verify the checksum manifest of `folder`; with `record`, write it first."""
    if record:
        record_checksums(folder, files, progress)
    return verify_checksums(folder, progress)


def require_classes(tree: ImageFolder, expected: int, what: str, layout: str) -> ImageFolder:
    """`tree`, if it has `expected` class folders; else an error that shows the layout."""
    if len(tree.classes) != expected:
        raise DataError(
            f"{what} at {tree.root} has {len(tree.classes)} class folders; expected {expected}. "
            f"The download or unpacking is incomplete. Expected layout:\n{layout}"
        )
    return tree


def packaged_folders(
    folder: Path, num_classes: int, what: str, layout: str
) -> tuple[ImageFolder, ImageFolder] | None:
    """(train, test) of a packaged `train/<class>/` + `test/<class>/` folder (LAMDA-PILOT's data
    packages; `val/` is accepted for `test/`, as SLCA's packages name it), or None if absent."""
    test = next((folder / n for n in ("test", "val") if (folder / n).is_dir()), None)
    if not (folder / "train").is_dir() or test is None:
        return None
    train = require_classes(scan_image_folder(folder / "train"), num_classes, what, layout)
    return train, scan_image_folder(test, train.classes)


def split_rows(
    layout: str,
    train: ImageFolder,
    test: ImageFolder,
    num_classes: int,
    counts: tuple[int, int] | None,
) -> list[CheckRow]:
    """Check-table rows of a two-split data set: which layout, classes, images per split."""
    return [
        CheckRow("layout", layout),
        CheckRow("classes", str(len(train.classes)), str(num_classes)),
        *count_rows("train", train, counts[0] if counts else None),
        *count_rows("test", test, counts[1] if counts else None),
    ]


def relative_files(folder: Path, *parts: ImageFolder) -> list[str]:
    """The files of `parts`, relative to `folder` (for the checksum manifest), without repeats."""
    seen: dict[str, None] = {}
    for part in parts:
        prefix = part.root.relative_to(folder).as_posix()
        for name in part.files:
            seen[name if prefix == "." else f"{prefix}/{name}"] = None
    return list(seen)


def missing_split(
    what: str, stream: str, folder: Path, split: str, package: str, layout: str
) -> str:
    """The error for a raw-or-packaged data set whose `split` layout is not on disk."""
    root = folder.parent
    if split == "packaged":
        how = (
            f"stream.split=packaged (the default) reads {package}, unpacked so that {folder}/train"
            f" and {folder}/test hold the class folders. Or download the authors' archive with "
            f"`cilbench data fetch {stream} --root {root}` and run with --set stream.split=seeded."
        )
    else:
        how = (
            f"stream.split=seeded reads the authors' archive unpacked as {folder}/<class>/: get "
            f"it with `cilbench data fetch {stream} --root {root}`. A folder holding train/ and "
            "test/ is LAMDA-PILOT's package: run it with --set stream.split=packaged."
        )
    return (
        f"{what} not found at {folder} in the layout of split={split}. {how}\n"
        f"Expected layout:\n{layout}\nThen run with --data-root {root} (or set CILBENCH_DATA)."
    )

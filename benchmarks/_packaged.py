"""Streams read from a packaged `train/<class>/` + `test/<class>/` folder and nothing else.

LAMDA-PILOT's OmniBenchmark and ObjectNet subsets and SLCA's Cars-196 exist only as shared-drive
packages: `cilbench data fetch` prints what to download, where to unpack it and the counts the
check expects; `cilbench data check` verifies the layout, the classes, the images per split and
(after `--record`, or a manifest shipped with the data) the checksums of every file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar

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
from cilbench.data.downloads import CheckRow
from cilbench.data.sources import ImageSource
from cilbench.data.streams import ClassIncrementalOptions, Stream, class_incremental_stream


@dataclass(frozen=True)
class Package:
    """Where a packaged data set lives and what it holds."""

    stream: str
    what: str
    folder: str
    num_classes: int
    how_to_get: str
    """Where to download it (and its licence terms), ending where to put it."""
    counts: tuple[int, int] | None = None
    """(train, test) images of the package, when known."""

    def layout(self) -> str:
        return (
            f"  <data-root>/{self.folder}/train/<class>/*.jpg and "
            f"<data-root>/{self.folder}/test/<class>/*.jpg, {self.num_classes} class folders"
            + (f", {self.counts[0]:,} / {self.counts[1]:,} images" if self.counts else "")
        )

    def splits(self, root: Path) -> tuple[ImageFolder, ImageFolder]:
        """(train, test) image lists, or an error that says what to download and where."""
        folder = root / self.folder
        found = packaged_folders(folder, self.num_classes, self.what, self.layout())
        if found is None:
            raise DataError(
                f"{self.what} not found at {folder}. {self.how_to_get} {folder}.\n"
                f"Expected layout:\n{self.layout()}\n"
                f"Then run with --data-root {root} (or set CILBENCH_DATA)."
            )
        return found

    def sources(
        self, root: Path, decoded_size: int
    ) -> tuple[ImageSource, ImageSource, tuple[str, ...]]:
        """(train source, test source, class names) for `class_incremental_stream`."""
        train, test = self.splits(root)
        return (
            file_source(train, f"{self.stream}-train", decoded_size),
            file_source(test, f"{self.stream}-test", decoded_size),
            train.classes,
        )

    def fetch(self, root: Path) -> list[str]:
        """No stable public URL: what to get, where to put it, how to check it."""
        return [
            f"{self.how_to_get} {root / self.folder}.",
            f"Expected layout:\n{self.layout()}",
            f"Then check it: cilbench data check {self.stream} --root {root}",
        ]

    def check(self, root: Path, progress: Progress, record: bool) -> list[CheckRow]:
        """Layout, classes, images per split (against the package's counts), checksums."""
        train, test = self.splits(root)
        rows = split_rows("train/ + test/", train, test, self.num_classes, self.counts)
        folder = root / self.folder
        return rows + checksum_rows(folder, relative_files(folder, train, test), record, progress)


@dataclass(frozen=True)
class PackagedStream(ClassIncrementalOptions):
    """A class-incremental stream read from one `Package` (`package`), with the decoded cache."""

    package: ClassVar[Package]
    short_last: ClassVar[bool] = False
    """True: the last task may hold fewer classes than `increment` (Cars-196: 9 x 20 + 16)."""
    default_backbone = REFERENCE_BACKBONE
    default_backbone_settings = REFERENCE_PREPROCESSING

    increment: int = 20
    decoded_size: Annotated[int, NonNegative()] = 0
    """0: decode images on every read; N: read N x N centre squares from a decoded cache."""

    def build(self, data_root: Path | None = None) -> Stream:
        package = self.package
        train, test, names = package.sources(data_root_or_default(data_root), self.decoded_size)
        return class_incremental_stream(
            package.stream, self.version, train, test, names, self, short_last=self.short_last
        )

    def fetch(self, root: Path, progress: Progress) -> list[str]:
        """No public URL: what to get (and its terms) and where to put it."""
        return self.package.fetch(root)

    def check(self, root: Path, progress: Progress, record: bool = False) -> list[CheckRow]:
        """Layout, classes, images per split, checksums."""
        return self.package.check(root, progress, record)

"""What ImageNet-R and ImageNet-A share: `<wnid>/` class folders with two train/test splits in use.

`split=packaged` reads LAMDA-PILOT's packaged `train/` + `test/` folders (the split the published
PILOT, APER, EASE and MOS numbers use, hence the default); `split=seeded` reads the authors' raw
archive and splits it once per class with `split_seed` (benchmarks/_splits.py, a checksummed
manifest next to the data). A builder subclasses `WnidSplitStream` and sets its constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

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

TEST_FRACTION = 0.2


@dataclass(frozen=True)
class WnidSplitStream(ClassIncrementalOptions):
    """A class-incremental stream over `<data-root>/<folder>/` in the packaged or seeded split."""

    stream_name: ClassVar[str]
    folder: ClassVar[str]
    title: ClassVar[str]
    num_classes: ClassVar[int]
    remote: ClassVar[Remote]
    layout: ClassVar[str]
    """The folder layouts of both splits, for error messages."""
    package: ClassVar[str]
    """Where LAMDA-PILOT's packaged folders come from."""
    packaged_counts: ClassVar[tuple[int, int] | None] = None
    total_images: ClassVar[int | None] = None
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
        name = self.stream_name
        sources = (
            file_source(train, f"{name}-train", self.decoded_size),
            file_source(test, f"{name}-test", self.decoded_size),
        )
        return class_incremental_stream(name, self.version, *sources, train.classes, self)

    def splits(self, root: Path, split: str | None = None) -> tuple[ImageFolder, ImageFolder]:
        """(train, test) image lists of `split` (default: the option)."""
        folder = root / self.folder
        if (split or self.split) == "packaged":
            found = packaged_folders(folder, self.num_classes, self.title, self.layout)
            if found is None:
                raise DataError(self._missing(folder, "packaged"))
            return found
        if not folder.is_dir() or (folder / "train").is_dir():
            raise DataError(self._missing(folder, "seeded"))
        return _splits.seeded_splits(
            self.scan(folder), self.folder, self.split_seed, TEST_FRACTION, root
        )

    def scan(self, folder: Path) -> ImageFolder:
        """The raw `<wnid>/` tree of the authors' archive, with its class count checked."""
        tree = scan_image_folder(folder)
        return require_classes(tree, self.num_classes, self.title, self.layout)

    def fetch(self, root: Path, progress: Progress) -> list[str]:
        """Download and verify the authors' archive, unpack it, record checksums, split it."""
        archive = download(self.remote, root, progress)
        unpack(archive, root, progress)
        tree = self.scan(root / self.folder)
        record_checksums(tree.root, tree.files, progress)
        _splits.load_or_make_split(tree, self.folder, self.split_seed, TEST_FRACTION, root)
        return [
            f"{self.title} is ready in {tree.root} (md5 verified); use --data-root {root} "
            "--set stream.split=seeded (cilbench's seeded 80/20 split of the authors' archive).",
            f"The default split=packaged needs {self.package}, unpacked as {tree.root}/train/ "
            f"and {tree.root}/test/.",
        ]

    def check(self, root: Path, progress: Progress, record: bool = False) -> list[CheckRow]:
        """Layout (whichever is on disk), classes, images per split, manifest, checksums."""
        folder = root / self.folder
        split = "packaged" if (folder / "train").is_dir() else "seeded"
        manifest = _splits.split_path(root, self.folder, self.split_seed)
        existed = manifest.exists()
        train, test = self.splits(root, split)
        packaged = split == "packaged"
        layout = (
            "train/ + test/ (split=packaged)" if packaged else "raw wnid folders (split=seeded)"
        )
        rows = split_rows(
            layout, train, test, self.num_classes, self.packaged_counts if packaged else None
        )
        if self.total_images is not None:
            total = len(train.files) + len(test.files)
            note = "" if total == self.total_images else f"official: {self.total_images} images"
            rows.append(CheckRow("all images", str(total), str(self.total_images), note=note))
        if not packaged:
            state = "sha256 ok" if existed else "written now"
            rows.append(CheckRow("split manifest", state, str(manifest)))
        files = sorted(relative_files(folder, train, test))
        return rows + checksum_rows(folder, files, record, progress)

    def _missing(self, folder: Path, split: str) -> str:
        return missing_split(self.title, self.stream_name, folder, split, self.package, self.layout)

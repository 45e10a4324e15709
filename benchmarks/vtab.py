"""VTAB class-incremental: Resisc45 -> DTD -> Oxford Pets -> EuroSAT -> Flowers102, 10 classes each.

The 5-dataset benchmark of APER/ADAM (Zhou et al., 2023), as LAMDA-PILOT runs it: 50 classes in
5 tasks of 10, no class shuffle (order = the sorted class folders, as torchvision's ImageFolder
sorts them, which is the dataset order above). Its archive has no stable public URL, so
`cilbench data fetch vtab` only explains where to get it; the loader reads
`<data-root>/vtab/train/<class>/` and `<data-root>/vtab/test/<class>/`, requires 50 classes and
warns when the folder names are neither the expected class names nor 50 numbers (the archive
names its folders by number; then the class names below are used).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

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
from cilbench.core.config import NonNegative
from cilbench.core.errors import DataError
from cilbench.data.downloads import CheckRow
from cilbench.data.streams import ClassIncrementalOptions, Stream, class_incremental_stream

log = logging.getLogger(__name__)

NAME = "vtab"
FOLDER = "vtab"
NUM_CLASSES = 50
CLASS_NAMES = (
    # Resisc45, first 10 labels
    "airplane", "airport", "baseball_diamond", "basketball_court", "beach",
    "bridge", "chaparral", "church", "circular_farmland", "cloud",
    # DTD
    "banded", "blotchy", "braided", "bubbly", "bumpy",
    "chequered", "cobwebbed", "cracked", "crosshatched", "crystalline",
    # Oxford-IIIT Pets
    "abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle",
    "bengal", "birman", "bombay", "boxer", "british_shorthair",
    # EuroSAT
    "annual_crop", "forest", "herbaceous_vegetation", "highway", "industrial",
    "pasture", "permanent_crop", "residential", "river", "sea_lake",
    # Oxford Flowers102, first 10 labels
    "pink_primrose", "hard-leaved_pocket_orchid", "canterbury_bells", "sweet_pea",
    "english_marigold", "tiger_lily", "moon_orchid", "bird_of_paradise", "monkshood",
    "globe_thistle",
)  # fmt: skip
LAYOUT = (
    f"  <data-root>/{FOLDER}/train/<class>/*.jpg and <data-root>/{FOLDER}/test/<class>/*.jpg, "
    f"{NUM_CLASSES} class folders whose sorted order is Resisc45, DTD, Pets, EuroSAT, Flowers102"
)
HOW_TO_GET = (
    "The VTAB class-incremental archive (vtab.zip, from the APER / RevisitingCIL authors) has no "
    "stable public URL: download it from the link in the README of "
    "https://github.com/zhoudw-zdw/RevisitingCIL (also linked from LAMDA-PILOT), unzip it and "
    "move its `vtab` folder (the one holding train/ and test/) to"
)


@register_stream(NAME)
@dataclass(frozen=True)
class Vtab(ClassIncrementalOptions):
    """VTAB 5-dataset benchmark: 50 classes, 5 tasks x 10, dataset order (no shuffle)."""

    default_backbone = REFERENCE_BACKBONE
    default_backbone_settings = REFERENCE_PREPROCESSING

    class_order: str = "natural"
    decoded_size: Annotated[int, NonNegative()] = 0
    """0: decode images on every read; N: read N x N centre squares from a decoded cache."""

    def build(self, data_root: Path | None = None) -> Stream:
        train, test = self.splits(data_root_or_default(data_root))
        sources = (
            file_source(train, f"{NAME}-train", self.decoded_size),
            file_source(test, f"{NAME}-test", self.decoded_size),
        )
        return class_incremental_stream(
            NAME, self.version, *sources, class_names(train.classes), self
        )

    def splits(self, root: Path) -> tuple[ImageFolder, ImageFolder]:
        """(train, test) image lists; 50 classes, the same in both."""
        folder = root / FOLDER
        if not ((folder / "train").is_dir() and (folder / "test").is_dir()):
            error = missing_data("VTAB", folder, NAME, LAYOUT, fetchable=False)
            raise DataError(f"{error}\n{HOW_TO_GET} {folder}.")
        train = scan_image_folder(folder / "train")
        if len(train.classes) != NUM_CLASSES:
            raise DataError(
                f"VTAB at {folder / 'train'} has {len(train.classes)} class folders; expected "
                f"{NUM_CLASSES}. Expected layout:\n{LAYOUT}"
            )
        return train, scan_image_folder(folder / "test", train.classes)

    def fetch(self, root: Path, progress: Progress) -> list[str]:
        """No public URL: say what to get and where to put it."""
        folder = root / FOLDER
        return [
            f"{HOW_TO_GET} {folder}.",
            f"Expected layout:\n{LAYOUT}",
            f"Then check it: cilbench data check {NAME} --root {root}",
        ]

    def check(self, root: Path, progress: Progress, record: bool = False) -> list[CheckRow]:
        """Layout, 50 classes, images per split, checksums."""
        train, test = self.splits(root)
        matched = names_match(train.classes)
        rows = [
            CheckRow("classes", str(len(train.classes)), str(NUM_CLASSES)),
            CheckRow(
                "folder names",
                "as expected" if matched else "unexpected",
                "50 numbers or the class names",
                note="" if matched else "order may differ from the benchmark's (see warning)",
            ),
            *count_rows("train", train, None),
            *count_rows("test", test, None),
        ]
        files = [*(f"train/{f}" for f in train.files), *(f"test/{f}" for f in test.files)]
        return rows + checksum_rows(root / FOLDER, files, record, progress)


def class_names(folders: tuple[str, ...]) -> tuple[str, ...]:
    """Display names: the known class names for numbered folders, else the folder names."""
    if not names_match(folders):
        log.warning(
            "VTAB class folders do not match the expected classes (Resisc45, DTD, Pets, "
            "EuroSAT, Flowers102, 10 each, in this order, or 50 numbered folders that sort in "
            "numeric order); got %s. The class order is the sorted folder order: check the "
            "archive.",
            ", ".join(folders[:5]) + ", ...",
        )
    return CLASS_NAMES if _numbered(folders) else folders


def names_match(folders: tuple[str, ...]) -> bool:
    """Folder names are the expected class names, or numbers in numeric order."""
    return _numbered(folders) or tuple(_normalise(f) for f in folders) == CLASS_NAMES


def _numbered(folders: tuple[str, ...]) -> bool:
    """50 numeric folder names whose sorted text order is their numeric order."""
    return all(f.isdigit() for f in folders) and sorted(folders, key=int) == list(folders)


def _normalise(name: str) -> str:
    return name.strip().lower().replace(" ", "_")

"""Split Cars-196 (Stanford Cars): 196 car models, in 10 class-incremental tasks.

The protocol of Mammoth's `seq-cars196`: 10 tasks, nine of 20 classes and a last one of 16
(`increment=20`, the classes left over form the last task). Layout: the packaged train/test
class folders its maintainers' data packages use, `<data-root>/cars196/train/<class>/` and
`cars196/test/<class>/` (`val/` accepted for `test/`: SLCA's `data/cars196/{train,val}`); the
official split has 8,144 train / 8,041 test images. Mammoth itself builds tensors from the
Activeloop (deeplake) copy of the official split; cilbench reads image folders instead. The
Stanford download page is gone, so `cilbench data fetch split-cars196` says what to get and where.
Class order: pycil-1993 over the sorted class folders (SLCA's `shuffle` with seed 1993);
`--set stream.class_order=natural` keeps the folder order, Mammoth's default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from cilbench.api import register_stream
from cilbench.benchmarks._packaged import Package
from cilbench.benchmarks._shared import (
    REFERENCE_BACKBONE,
    REFERENCE_PREPROCESSING,
    data_root_or_default,
)
from cilbench.core.callbacks import Progress
from cilbench.core.config import NonNegative
from cilbench.data.downloads import CheckRow
from cilbench.data.streams import ClassIncrementalOptions, Stream, class_incremental_stream

NAME = "split-cars196"
PACKAGE = Package(
    stream=NAME,
    what="Cars-196 (Stanford Cars)",
    folder="cars196",
    num_classes=196,
    counts=(8_144, 8_041),
    how_to_get=(
        "Stanford Cars has no stable official URL any more (the ai.stanford.edu page is gone): "
        "get the official train/test split as class folders (e.g. the SLCA authors' package, "
        "https://github.com/GengDavid/SLCA, or a copy of the original cars_train/cars_test "
        "sorted into one folder per class with the devkit's labels) and put train/ and test/ in"
    ),
)


@register_stream(NAME)
@dataclass(frozen=True)
class SplitCars196(ClassIncrementalOptions):
    """Stanford Cars, 196 classes, default 10 tasks (9 x 20 + 16), pycil-1993 order."""

    default_backbone = REFERENCE_BACKBONE
    default_backbone_settings = REFERENCE_PREPROCESSING

    increment: int = 20
    decoded_size: Annotated[int, NonNegative()] = 0
    """0: decode images on every read; N: read N x N centre squares from a decoded cache."""

    def build(self, data_root: Path | None = None) -> Stream:
        train, test, names = PACKAGE.sources(data_root_or_default(data_root), self.decoded_size)
        return class_incremental_stream(
            NAME, self.version, train, test, names, self, short_last=True
        )

    def fetch(self, root: Path, progress: Progress) -> list[str]:
        """No public URL: say what to get and where to put it."""
        return PACKAGE.fetch(root)

    def check(self, root: Path, progress: Progress, record: bool = False) -> list[CheckRow]:
        """Layout, 196 classes, images per split, checksums."""
        return PACKAGE.check(root, progress, record)

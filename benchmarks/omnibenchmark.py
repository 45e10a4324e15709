"""Split OmniBenchmark: LAMDA-PILOT's 300-class subset of OmniBenchmark, in class-incremental tasks.

The subset exists only as LAMDA-PILOT's package (Google Drive / OneDrive, linked from its README);
`cilbench data fetch split-omnibenchmark` says where to put it, `cilbench data check` verifies the
layout `<data-root>/omnibenchmark/{train,test}/<class>/` and 300 classes. Default protocol: 10
tasks x 30 classes (APER's `omni_30_30` configurations), pycil-1993 order over the sorted class
folders (PILOT's `shuffle` with seed 1993). One split only (the package's), so no `split` option.
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

NAME = "split-omnibenchmark"
PACKAGE = Package(
    stream=NAME,
    what="OmniBenchmark (LAMDA-PILOT's 300-class subset)",
    folder="omnibenchmark",
    num_classes=300,
    how_to_get=(
        "The subset has no stable public URL: download LAMDA-PILOT's OmniBenchmark package "
        "(Google Drive / OneDrive links in the README of https://github.com/LAMDA-CL/LAMDA-PILOT,"
        " section Datasets; OmniBenchmark itself: https://github.com/ZhangYuanhan-AI/"
        "OmniBenchmark, whose terms apply), unzip it and move the folder holding train/ and "
        "test/ to"
    ),
)


@register_stream(NAME)
@dataclass(frozen=True)
class SplitOmnibenchmark(ClassIncrementalOptions):
    """OmniBenchmark (PILOT's subset), 300 classes, default 10 tasks x 30, pycil-1993 order."""

    default_backbone = REFERENCE_BACKBONE
    default_backbone_settings = REFERENCE_PREPROCESSING

    increment: int = 30
    decoded_size: Annotated[int, NonNegative()] = 0
    """0: decode images on every read; N: read N x N centre squares from a decoded cache."""

    def build(self, data_root: Path | None = None) -> Stream:
        train, test, names = PACKAGE.sources(data_root_or_default(data_root), self.decoded_size)
        return class_incremental_stream(NAME, self.version, train, test, names, self)

    def fetch(self, root: Path, progress: Progress) -> list[str]:
        """No public URL: say what to get and where to put it."""
        return PACKAGE.fetch(root)

    def check(self, root: Path, progress: Progress, record: bool = False) -> list[CheckRow]:
        """Layout, 300 classes, images per split, checksums."""
        return PACKAGE.check(root, progress, record)

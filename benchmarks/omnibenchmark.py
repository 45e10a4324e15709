"""Split OmniBenchmark: LAMDA-PILOT's 300-class subset of OmniBenchmark, in class-incremental tasks.

The subset exists only as LAMDA-PILOT's package (Google Drive / OneDrive, linked from its README);
`cilbench data fetch split-omnibenchmark` says where to put it, `cilbench data check` verifies the
layout `<data-root>/omnibenchmark/{train,test}/<class>/` and 300 classes. Default protocol: 10
tasks x 30 classes (APER's `omni_30_30` configurations), pycil-1993 order over the sorted class
folders (PILOT's `shuffle` with seed 1993). One split only (the package's), so no `split` option.
"""

from __future__ import annotations

from dataclasses import dataclass

from cilbench.api import register_stream
from cilbench.benchmarks._packaged import Package, PackagedStream

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
class SplitOmnibenchmark(PackagedStream):
    """OmniBenchmark (PILOT's subset), 300 classes, default 10 tasks x 30, pycil-1993 order."""

    package = PACKAGE

    increment: int = 30

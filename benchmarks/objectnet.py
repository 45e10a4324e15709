"""Split ObjectNet: LAMDA-PILOT's 200-class subset of ObjectNet, in class-incremental tasks.

The subset exists only as LAMDA-PILOT's package (OneDrive, or a file list to cut it from the full
ObjectNet, both linked from its README); `cilbench data fetch split-objectnet` says where to put
it and names the licence, `cilbench data check` verifies `<data-root>/objectnet/{train,test}/
<class>/` and 200 classes. Default protocol: 10 tasks x 20 classes, pycil-1993 order over the
sorted class folders (PILOT's `shuffle` with seed 1993). One split only (the package's).

Licence: ObjectNet is distributed under its own licence (https://objectnet.dev/download.html),
which a user must read and accept before downloading it; among other terms it restricts ObjectNet
to evaluation (it may not be used to tune the parameters of a model), which a class-incremental
stream's training tasks do. LAMDA-PILOT's README says it has no right to redistribute the subsets.
"""

from __future__ import annotations

from dataclasses import dataclass

from cilbench.api import register_stream
from cilbench.benchmarks._packaged import Package, PackagedStream

NAME = "split-objectnet"
LICENCE = (
    "ObjectNet licence: https://objectnet.dev/download.html. Read and accept it before "
    "downloading; it restricts ObjectNet to evaluation (no tuning of model parameters on it), "
    "which the training tasks of this stream do: using it is your decision under that licence."
)
PACKAGE = Package(
    stream=NAME,
    what="ObjectNet (LAMDA-PILOT's 200-class subset)",
    folder="objectnet",
    num_classes=200,
    how_to_get=(
        f"{LICENCE} The subset has no stable public URL: download LAMDA-PILOT's ObjectNet "
        "package (OneDrive link, or the file list to cut it from the full ObjectNet, in the "
        "README of https://github.com/LAMDA-CL/LAMDA-PILOT, section Datasets), unzip it and "
        "move the folder holding train/ and test/ to"
    ),
)


@register_stream(NAME)
@dataclass(frozen=True)
class SplitObjectnet(PackagedStream):
    """ObjectNet (PILOT's subset), 200 classes, default 10 tasks x 20, pycil-1993 order."""

    package = PACKAGE

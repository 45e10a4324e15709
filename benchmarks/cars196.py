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

from cilbench.api import register_stream
from cilbench.benchmarks._packaged import Package, PackagedStream

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
class SplitCars196(PackagedStream):
    """Stanford Cars, 196 classes, default 10 tasks (9 x 20 + 16), pycil-1993 order."""

    package = PACKAGE
    short_last = True

"""Split ImageNet-R: 200 ImageNet classes as renditions (~30k images), in class-incremental tasks.

`stream.split` names which train/test split runs (recorded in the result, shown on boards):

- `packaged` (default): LAMDA-PILOT's packaged folders, `<data-root>/imagenet-r/train/<wnid>/`
  and `test/<wnid>/` (24k / 6k), the split PILOT, APER, EASE and RanPAC report on; it is the
  default so that a run sits next to the published numbers of the same split. The package is
  on a shared drive only (PILOT README); `cilbench data fetch` cannot download it.
- `seeded`: the authors' `imagenet-r.tar` (`<data-root>/imagenet-r/<wnid>/`, what `cilbench data
  fetch` downloads), split once by cilbench, stratified per class, 80 % train / 20 % test, seed
  `split_seed` (benchmarks/_splits.py: a versioned JSON manifest next to the data,
  `imagenet-r-split-v1-seed<S>.json`, checked against its sha256 and the folder listing).
  Other repositories' random splits (SLCA, l2p, Mammoth's lists) are a third family, not
  reproduced here.

Default protocol: 10 tasks x 20 classes in the pycil-1993 order over the sorted wnids (it starts
with the wnids at positions 168, 136, 51, 9, 183). `stream.decoded_size=N` reads images from a
decoded uint8 cache (see cilbench/data/decoded_cache.py) so that trained strategies stop re-decoding
JPEGs every epoch. An unreadable image stops the run with its path (no silent skipping: a skipped
test image would change the benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass

from cilbench.api import register_stream
from cilbench.benchmarks._wnid_streams import WnidSplitStream
from cilbench.data.downloads import Remote

NAME = "split-imagenet-r"
FOLDER = "imagenet-r"
TITLE = "ImageNet-R"
NUM_CLASSES = 200
REMOTE = Remote(
    "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
    "imagenet-r.tar",
    "a61312130a589d0ca1a8fca1f2bd3337",
)
OFFICIAL_COUNTS = {"train": 24_000, "test": 6_000, "all": 30_000}
LAYOUT = (
    f"  split=packaged: <data-root>/{FOLDER}/train/<wnid>/*.jpg and "
    f"<data-root>/{FOLDER}/test/<wnid>/*.jpg (LAMDA-PILOT's package, 24,000 / 6,000)\n"
    f"  split=seeded:   <data-root>/{FOLDER}/<wnid>/*.jpg (the authors' imagenet-r.tar, 30,000)"
    f"\n  with {NUM_CLASSES} wnid folders"
)
PACKAGE = (
    "LAMDA-PILOT's ImageNet-R package (Google Drive / OneDrive links in the README of "
    "https://github.com/LAMDA-CL/LAMDA-PILOT, section Datasets)"
)


@register_stream(NAME)
@dataclass(frozen=True)
class SplitImagenetR(WnidSplitStream):
    """ImageNet-R, 200 classes, default 10 tasks x 20 classes in the pycil-1993 order."""

    stream_name = NAME
    folder = FOLDER
    title = TITLE
    num_classes = NUM_CLASSES
    remote = REMOTE
    layout = LAYOUT
    package = PACKAGE
    packaged_counts = (OFFICIAL_COUNTS["train"], OFFICIAL_COUNTS["test"])

"""Split ImageNet-A: 200 ImageNet classes of natural adversarial examples (7,500 images).

ImageNet-A has no official train/test split (LAMDA-PILOT issue 16). `stream.split` names the one
that runs; it is recorded in the result and shown on boards:

- `packaged` (default): LAMDA-PILOT's packaged folders, `<data-root>/imagenet-a/train/<wnid>/`
  and `test/<wnid>/`, the split PILOT, APER, EASE and MOS report on (the default, so that a run
  sits next to the published numbers of the same split). Shared-drive only (PILOT README):
  `cilbench data fetch` says where to get it.
- `seeded`: the authors' `imagenet-a.tar` (`<data-root>/imagenet-a/<wnid>/`, downloaded and
  md5-verified by `cilbench data fetch`), split by cilbench per class, 80 % train / 20 % test:
  within each class (files sorted) the test images are the first 20 % (rounded, at least one) of
  a permutation from `numpy.random.default_rng(split_seed)`, classes in sorted order; stored as
  `<data-root>/imagenet-a-split-v1-seed<S>.json` with sha256s (benchmarks/_splits.py).

Default protocol: 10 tasks x 20 classes, pycil-1993 order over the sorted wnids (PILOT's
`shuffle` with seed 1993). `stream.decoded_size=N` reads from the decoded cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from cilbench.api import register_stream
from cilbench.benchmarks._wnid_streams import WnidSplitStream
from cilbench.data.downloads import Remote

NAME = "split-imagenet-a"
FOLDER = "imagenet-a"
TITLE = "ImageNet-A"
NUM_CLASSES = 200
OFFICIAL_IMAGES = 7_500
REMOTE = Remote(
    "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",
    "imagenet-a.tar",
    "c3e55429088dc681f30d81f4726b6595",
)
LAYOUT = (
    f"  split=packaged: <data-root>/{FOLDER}/train/<wnid>/*.jpg and "
    f"<data-root>/{FOLDER}/test/<wnid>/*.jpg (LAMDA-PILOT's package)\n"
    f"  split=seeded:   <data-root>/{FOLDER}/<wnid>/*.jpg (the authors' imagenet-a.tar, "
    f"{OFFICIAL_IMAGES:,} images)\n  with {NUM_CLASSES} wnid folders"
)
PACKAGE = (
    "LAMDA-PILOT's ImageNet-A package (Google Drive / OneDrive links in the README of "
    "https://github.com/LAMDA-CL/LAMDA-PILOT, section Datasets)"
)


@register_stream(NAME)
@dataclass(frozen=True)
class SplitImagenetA(WnidSplitStream):
    """ImageNet-A, 200 classes, default 10 tasks x 20 classes in the pycil-1993 order."""

    stream_name = NAME
    folder = FOLDER
    title = TITLE
    num_classes = NUM_CLASSES
    remote = REMOTE
    layout = LAYOUT
    package = PACKAGE
    total_images = OFFICIAL_IMAGES

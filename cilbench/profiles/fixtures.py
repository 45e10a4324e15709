"""Photo-like JPEG folders in the layout of a real file-based stream, for speed measurements.

`cilbench profile NAME --stream split-imagenet-r --synthetic-jpegs 3000` writes 3000 JPEGs of
300-600 px per side (smooth colour fields plus a noise texture, so that they compress and decode
like photos) in the folder layout the stream's builder reads, then profiles on them: decode
throughput can be measured on realistic files without downloading a data set. Generation is
seeded; a folder that already holds the same fixture (`synthetic-jpegs.json`) is reused.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cilbench.core.errors import ConfigError, did_you_mean
from cilbench.data.sources import FileSource

MARKER = "synthetic-jpegs.json"
SIZES = (300, 601)  # side lengths drawn in [300, 600]


def write_jpeg_classes(
    root: Path, classes: int, per_class: int, seed: int = 0, names: list[str] | None = None
) -> FileSource:
    """`root/<class>/<i>.jpg` photo-like JPEGs (300-600 px per side); the source over them.

    Classes are named `names` or n00000000, n00000001, ... (sorted like ImageNet wnids).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    texture = rng.normal(0, 12, size=(3, SIZES[1], SIZES[1])).astype(np.float32)
    names = names or [f"n{label:08d}" for label in range(classes)]
    files, labels = [], []
    for label, name in enumerate(names):
        for i in range(per_class):
            height, width = (int(s) for s in rng.integers(*SIZES, size=2))
            coarse = torch.from_numpy(rng.uniform(0, 255, size=(1, 3, 6, 6))).float()
            field = F.interpolate(coarse, size=(height, width), mode="bicubic")[0]
            top, left = (int(o) for o in rng.integers(0, SIZES[1] - max(height, width) + 1, 2))
            noise = torch.from_numpy(texture[:, top : top + height, left : left + width])
            image = (field + noise).clamp(0, 255).to(torch.uint8)
            relative = f"{name}/{i}.jpg"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            pixels = Image.fromarray(image.permute(1, 2, 0).numpy())
            pixels.save(root / relative, format="JPEG", quality=90)
            files.append(relative)
            labels.append(label)
    return FileSource(root, files, labels, "synthetic-jpegs")


def _imagenet_r(root: Path, count: int) -> None:
    """The packaged layout `imagenet-r/{train,test}/<wnid>/*.jpg` that the default
    `stream.split=packaged` reads (200 classes, about 4 train images per test image)."""
    per_class = max(2, count // 200)
    test = max(1, per_class // 5)
    write_jpeg_classes(root / "imagenet-r" / "train", 200, per_class - test, 0)
    write_jpeg_classes(root / "imagenet-r" / "test", 200, test, 1)


def _vtab(root: Path, count: int) -> None:
    """`vtab/{train,test}/<NN>/*.jpg` (50 classes, about 4 train images per test image)."""
    per_class = max(2, count // 50)
    test = max(1, per_class // 5)
    names = [f"{c:02d}" for c in range(50)]
    write_jpeg_classes(root / "vtab" / "train", 50, per_class - test, 0, names)
    write_jpeg_classes(root / "vtab" / "test", 50, test, 1, names)


WRITERS: dict[str, Callable[[Path, int], None]] = {
    "split-imagenet-r": _imagenet_r,
    "vtab": _vtab,
}


def write_synthetic_stream(stream: str, root: Path, count: int) -> Path:
    """About `count` JPEGs in `stream`'s layout under `root` (kept if already there); `root`."""
    if stream not in WRITERS:
        raise ConfigError(
            f"Synthetic JPEGs can be written for {', '.join(WRITERS)}; got {stream!r}."
            + did_you_mean(stream, WRITERS)
        )
    marker = root / MARKER
    wanted = {"stream": stream, "count": count, "sizes": list(SIZES)}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return root
    WRITERS[stream](root, count)
    marker.write_text(json.dumps(wanted))
    return root


@contextlib.contextmanager
def synthetic_data_root(stream: str, root: Path | None, count: int) -> Iterator[Path]:
    """A data root holding `count` synthetic JPEGs for `stream`: `root`, or a temporary folder."""
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        yield write_synthetic_stream(stream, root, count)
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield write_synthetic_stream(stream, Path(tmp), count)

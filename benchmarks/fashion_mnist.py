"""Split Fashion-MNIST: the full data set and a small subset shipped inside cilbench.

`split-fashion-mnist` reads the four IDX files (gzipped or not) from `--data-root`, from
`<root>/FashionMNIST/raw` (torchvision's layout), or from `/usr/share/datasets/fashion-mnist`
(Debian's `dataset-fashion-mnist` package); `stream.download=true` fetches them with torchvision.
`split-fashion-mnist-mini` is a stratified subset (300 train + 100 test images per class) stored as
package data, so the offline demo needs no download. Default protocol: 5 tasks of 2 classes in
the pycil-1993 order, EfficientNet-Lite0 at 96 px.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cilbench.api import register_stream
from cilbench.core.errors import DataError
from cilbench.data.sources import ArraySource
from cilbench.data.streams import ClassIncrementalOptions, Stream, class_incremental_stream

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
MINI_FILE = Path(__file__).parent / "data" / "fashion_mnist_mini.npz"
MINI_SHA256 = "d8b2664dee89aa0332a5d625381e40587228f147b820ca91c50dec1e2fc7dbbe"
BACKBONE_SETTINGS = {"image_size": 96, "crop_pct": 1.0}


@register_stream("split-fashion-mnist")
@dataclass(frozen=True)
class SplitFashionMnist(ClassIncrementalOptions):
    """Fashion-MNIST, 60k train / 10k test, split into class-incremental tasks."""

    increment: int = 2
    download: bool = False

    default_backbone = "efficientnet-lite0-pypi"
    default_backbone_settings = BACKBONE_SETTINGS

    def build(self, data_root: Path | None = None) -> Stream:
        folder = self._locate(data_root)
        arrays = load_idx_arrays(folder)
        check_arrays(arrays, folder)
        return self._stream("split-fashion-mnist", arrays)

    def _stream(self, name: str, arrays: dict[str, np.ndarray]) -> Stream:
        train = ArraySource(arrays["train_images"], arrays["train_labels"], f"{name}-train")
        test = ArraySource(arrays["test_images"], arrays["test_labels"], f"{name}-test")
        return class_incremental_stream(name, self.version, train, test, CLASS_NAMES, self)

    def _locate(self, data_root: Path | None) -> Path:
        candidates = [data_root, data_root / "FashionMNIST" / "raw"] if data_root else []
        candidates.append(DEBIAN_ROOT)
        for folder in candidates:
            if folder is not None and all(_find(folder, f) for f in FILES.values()):
                return folder
        if self.download:
            return _download(data_root or Path("data"))
        raise DataError(
            "Fashion-MNIST not found"
            + (f" under {data_root}" if data_root else "")
            + f". Expected the files {', '.join(f + '[.gz]' for f in FILES.values())} in "
            "--data-root, in <data-root>/FashionMNIST/raw, or in "
            f"{DEBIAN_ROOT}. Get them with one of:\n"
            "  apt-get install dataset-fashion-mnist\n"
            "  cilbench run --stream split-fashion-mnist --data-root data "
            "--set stream.download=true"
        )


@register_stream("split-fashion-mnist-mini")
@dataclass(frozen=True)
class SplitFashionMnistMini(SplitFashionMnist):
    """300 train + 100 test images per class of Fashion-MNIST, shipped with cilbench."""

    def build(self, data_root: Path | None = None) -> Stream:
        return self._stream("split-fashion-mnist-mini", load_mini())


def load_mini(path: Path = MINI_FILE) -> dict[str, np.ndarray]:
    """The packaged subset, verified against its recorded sha256."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    if digest != MINI_SHA256:
        raise DataError(
            f"{path} is {'missing' if digest == 'missing' else 'damaged (sha256 mismatch)'}; "
            "reinstall cilbench."
        )
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in FILES}


def load_idx_arrays(folder: Path) -> dict[str, np.ndarray]:
    """The four Fashion-MNIST IDX files of `folder` as uint8 arrays."""
    return {key: read_idx(_find(folder, name)) for key, name in FILES.items()}  # type: ignore[arg-type]


def check_arrays(arrays: dict[str, np.ndarray], folder: Path) -> None:
    """Refuse IDX files that do not make a Fashion-MNIST split: 28x28 images, one label per image,
    labels 0..9, every class in both splits (a damaged download otherwise crashes later)."""
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        where = f"Fashion-MNIST under {folder}, {split} split"
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(
                f"{where}: images have shape {images.shape} and labels {labels.shape}; expected "
                "(N, 28, 28) images and (N,) labels."
            )
        if len(images) != len(labels):
            raise DataError(f"{where}: {len(images)} images but {len(labels)} labels.")
        missing = sorted(set(range(len(CLASS_NAMES))) - set(np.unique(labels).tolist()))
        if labels.max(initial=0) >= len(CLASS_NAMES) or missing:
            raise DataError(
                f"{where}: labels must cover 0..{len(CLASS_NAMES) - 1}; found labels up to "
                f"{int(labels.max(initial=0))}, none of class(es) {missing}."
            )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path} cannot be read ({type(error).__name__}: {error}).") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] == 0:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: {body.size} bytes for shape {shape}")
    return body.reshape(shape)


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _download(root: Path) -> Path:
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(root), train=True, download=True)
    return root / "FashionMNIST" / "raw"

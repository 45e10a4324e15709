"""Build benchmarks/data/fashion_mnist_mini.npz from the full Fashion-MNIST, byte for byte.

    python -m cilbench.benchmarks._make_fashion_mnist_mini [IDX_FOLDER]

IDX_FOLDER defaults to Debian's /usr/share/datasets/fashion-mnist. For every class the script keeps
300 training and 100 test images, drawn without replacement with numpy's default_rng(0) and kept
in their original order. The zip entries carry a fixed timestamp, so the output (and the sha256
recorded in fashion_mnist.py) is reproducible.
"""

from __future__ import annotations

import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from cilbench.benchmarks.fashion_mnist import DEBIAN_ROOT, FILES, MINI_FILE, load_idx_arrays

TRAIN_PER_CLASS = 300
TEST_PER_CLASS = 100


def stratified_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices: `per_class` drawn without replacement from every class."""
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(chosen))


def build(folder: Path, out: Path) -> str:
    """Write the subset archive to `out`; return its sha256."""
    arrays = load_idx_arrays(folder)
    rng = np.random.default_rng(0)
    train = stratified_subset(arrays["train_labels"], TRAIN_PER_CLASS, rng)
    test = stratified_subset(arrays["test_labels"], TEST_PER_CLASS, rng)
    subset = {
        "train_images": arrays["train_images"][train],
        "train_labels": arrays["train_labels"][train],
        "test_images": arrays["test_images"][test],
        "test_labels": arrays["test_labels"][test],
    }
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for key in FILES:
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, subset[key], allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=9)
    return hashlib.sha256(out.read_bytes()).hexdigest()


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEBIAN_ROOT
    print(build(source, MINI_FILE))

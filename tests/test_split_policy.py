"""Class orders, task boundaries and the Fashion-MNIST loaders."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from cilbench.benchmarks import fashion_mnist
from cilbench.core.errors import ConfigError, DataError
from cilbench.data.streams import class_order, task_classes
from cilbench.testing import check_stream


def test_pycil_1993_order_matches_the_reference_codebases():
    assert class_order("pycil-1993", 100)[:5] == [68, 56, 78, 8, 23]
    assert class_order("pycil-1993", 200)[:5] == [168, 136, 51, 9, 183]
    assert class_order("pycil-1996", 100)[:4] == [35, 18, 40, 85]  # SLCA's second seed
    assert class_order("pycil-1997", 100)[:4] == [88, 77, 36, 54]


def test_pycil_order_leaves_numpy_global_state_alone():
    np.random.seed(5)
    expected = np.random.rand()
    np.random.seed(5)
    class_order("pycil-1993", 100)
    assert np.random.rand() == expected


def test_other_orders():
    assert class_order("natural", 4) == [0, 1, 2, 3]
    assert sorted(class_order("seed:3", 50)) == list(range(50))
    assert class_order("seed:3", 50) == class_order("seed:3", 50) != class_order("seed:4", 50)
    assert class_order("icarl", 3, named={"icarl": [2, 0, 1]}) == [2, 0, 1]
    with pytest.raises(ConfigError, match="Did you mean 'pycil-1993'"):
        class_order("pycil1993", 10)


def test_task_boundaries():
    assert [list(r) for r in task_classes(10, 0, 5)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert [len(r) for r in task_classes(100, 50, 10)] == [50] + [10] * 5
    with pytest.raises(ConfigError, match="divide evenly"):
        task_classes(10, 0, 3)


def test_stream_labels_follow_the_class_order():
    stream = check_stream("split-fashion-mnist-mini")
    order = stream.info.class_order
    first = stream.experiences[0].train
    original = first.source.targets[first.indices]
    assert set(original) == {order[0], order[1]}
    assert np.array_equal(np.array(order)[first.labels], original)
    assert stream.info.class_names[0] == fashion_mnist.CLASS_NAMES[order[0]]
    assert [len(e.train) for e in stream] == [600] * 5 and [len(t) for t in stream.test_sets] == [
        200
    ] * 5


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion_mnist(root: Path, per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        labels = np.repeat(np.arange(10), per_class)
        images = rng.integers(0, 255, size=(len(labels), 28, 28))
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)


def test_full_fashion_mnist_reads_idx_files(tmp_path: Path):
    _fake_fashion_mnist(tmp_path)
    stream = check_stream("split-fashion-mnist", data_root=tmp_path)
    assert sum(len(e.train) for e in stream) == 30
    assert stream.experiences[0].train.source.load(0).shape == (3, 28, 28)


def test_missing_fashion_mnist_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", tmp_path / "nowhere")
    builder = fashion_mnist.SplitFashionMnist()
    with pytest.raises(DataError) as error:
        builder.build(tmp_path / "empty")
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte" in message and "stream.download=true" in message


def test_truncated_idx_file_is_reported(tmp_path: Path):
    _fake_fashion_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(DataError, match="truncated"):
        fashion_mnist.SplitFashionMnist().build(tmp_path)


def test_damaged_mini_file_is_detected(tmp_path: Path):
    damaged = tmp_path / "mini.npz"
    data = bytearray(fashion_mnist.MINI_FILE.read_bytes())
    data[1000] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256"):
        fashion_mnist.load_mini(damaged)

"""Fake data sets on disk in the exact formats of the real ones, small enough for unit tests.

Each writer creates what the real archive unpacks to (file names, folder layout, pickle keys,
file-list syntax) and then records checksums exactly as `cilbench data fetch` does, so `cilbench
data check` passes on a fresh fixture and fails once a test damages it.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cilbench.benchmarks import core50, imagenet_r, vtab
from cilbench.data.downloads import record_checksums

WNIDS = tuple(sorted(f"n{1440764 + 37 * i:08d}" for i in range(imagenet_r.NUM_CLASSES)))


def class_image(rng: np.random.Generator, label: int, height: int, width: int) -> torch.Tensor:
    """A uint8 (3, H, W) image: a colour that depends on the label, plus noise."""
    colour = np.random.default_rng(label).integers(30, 225, size=(3, 1, 1))
    noise = rng.normal(0, 20, size=(3, height, width))
    return torch.from_numpy(np.clip(colour + noise, 0, 255).astype(np.uint8))


def write_image(path: Path, image: torch.Tensor) -> None:
    """Write a JPEG or PNG (by suffix), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = Image.fromarray(image.permute(1, 2, 0).numpy())
    pixels.save(path, format="PNG" if path.suffix == ".png" else "JPEG", quality=90)


def write_cifar100(root: Path, train_per_class: int = 3, test_per_class: int = 1) -> Path:
    """`root/cifar-100-python/{train,test,meta}`: torchvision's pickles (dict keys, uint8 rows)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(100), per_class)
        images = torch.stack([class_image(rng, int(c), 32, 32) for c in labels])
        batch = {
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "data": images.reshape(len(labels), 3 * 32 * 32).numpy(),
        }
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {
        "fine_label_names": [f"fine_{c:02d}" for c in range(100)],
        "coarse_label_names": [f"coarse_{c:02d}" for c in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    record_checksums(folder, ["train", "test", "meta"])
    return root


def accept_cifar_fixture(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Make the fixture's md5s the "official" ones (torchvision's lists) for one test."""
    from torchvision.datasets import CIFAR100

    folder = root / "cifar-100-python"
    md5 = {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in ("train", "test", "meta")}
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5["train"]]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5["test"]]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": md5["meta"]})


def write_imagenet_r(
    root: Path, layout: str = "raw", per_class: int = 5, folder_name: str = "imagenet-r"
) -> Path:
    """`root/imagenet-r/` with 200 wnid folders of tiny JPEGs, raw or pre-split train/ test/
    (`folder_name="imagenet-a"`: ImageNet-A's archive and package have the same two layouts)."""
    folder = root / folder_name
    rng = np.random.default_rng(1)
    files = []
    for label, wnid in enumerate(WNIDS):
        for i in range(per_class):
            split = "" if layout == "raw" else ("test/" if i == per_class - 1 else "train/")
            relative = f"{split}{wnid}/{wnid}_{i}.jpg"
            size = rng.integers(12, 24, size=2)
            write_image(folder / relative, class_image(rng, label, *map(int, size)))
            files.append(relative)
    record_checksums(folder, files)
    return root


def write_core50(root: Path, frames: int = 2, runs: int = 1) -> Path:
    """`root/core50/core50_128x128/s*/o*/C_ss_oo_fff.png` plus official-style NC file lists."""
    folder = root / "core50"
    images = folder / core50.IMAGES
    rng = np.random.default_rng(2)
    files = []
    for session in range(1, 12):
        for obj in range(1, 51):
            for frame in range(frames):
                relative = f"s{session}/o{obj}/C_{session:02d}_{obj:02d}_{frame:03d}.png"
                write_image(images / relative, class_image(rng, obj - 1, 8, 8))
                files.append(relative)
    for run in range(runs):
        _write_nc_lists(folder / "batches_filelists" / "NC_inc" / f"run{run}", files, run)
    record_checksums(folder, [f"{core50.IMAGES}/{f}" for f in files])
    return root


def _write_nc_lists(folder: Path, files: list[str], run: int) -> None:
    """NC batches: 10 objects then 8 x 5; as in the real lists, labels are per-run positions."""
    order = np.random.default_rng(100 + run).permutation(50)
    position = {int(obj): p for p, obj in enumerate(order)}
    bounds = [0, 10, *range(15, 51, 5)]
    folder.mkdir(parents=True, exist_ok=True)

    def line(relative: str) -> str:
        return f"{relative} {position[core50.object_label(relative)]}\n"

    train = [f for f in files if int(f.split("/")[0][1:]) in core50.TRAIN_SESSIONS]
    for b in range(9):
        chosen = set(order[bounds[b] : bounds[b + 1]].tolist())
        batch = [f for f in train if core50.object_label(f) in chosen]
        text = "".join(line(f) for f in np.random.default_rng(b).permutation(batch))
        (folder / f"train_batch_{b:02d}_filelist.txt").write_text(text)
    test = [f for f in files if int(f.split("/")[0][1:]) in core50.TEST_SESSIONS]
    (folder / "test_filelist.txt").write_text("".join(line(f) for f in test))


def write_vtab(root: Path, train_per_class: int = 3, test_per_class: int = 1) -> Path:
    """`root/vtab/{train,test}/<NN>/*.jpg` with 50 numbered class folders."""
    folder = root / "vtab"
    rng = np.random.default_rng(3)
    files = []
    for label in range(vtab.NUM_CLASSES):
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            for i in range(count):
                relative = f"{split}/{label:02d}/img_{i}.jpg"
                write_image(folder / relative, class_image(rng, label, 16, 20))
                files.append(relative)
    record_checksums(folder, files)
    return root


def write_fashion_mnist(root: Path, per_class: int = 4) -> Path:
    """The four IDX files (unsigned-byte format, uncompressed) of Fashion-MNIST in `root`."""
    from cilbench.benchmarks.fashion_mnist import FILES

    rng = np.random.default_rng(4)
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        images = np.stack([class_image(rng, int(c), 28, 28)[0].numpy() for c in labels])
        for key, array in ((f"{split}_images", images), (f"{split}_labels", labels)):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(
                d.to_bytes(4, "big") for d in array.shape
            )
            (root / FILES[key]).write_bytes(header + array.tobytes())
    return root


def write_imagenet_a(root: Path, layout: str = "raw", per_class: int = 5) -> Path:
    """`root/imagenet-a/`: raw `<wnid>/` (the authors' tar) or PILOT's `train/` + `test/`."""
    return write_imagenet_r(root, layout, per_class, folder_name="imagenet-a")


CUB_CLASSES = tuple(f"{c:03d}.Bird_{c}" for c in range(1, 201))


def write_cub(root: Path, layout: str = "official", train: int = 2, test: int = 1) -> Path:
    """CUB-200-2011: the authors' `CUB_200_2011/` (images/ and the four id lists, space
    separated, 1-based ids) or LAMDA-PILOT's packaged `cub/train/` + `cub/test/`."""
    rng = np.random.default_rng(5)
    folder = root / ("CUB_200_2011" if layout == "official" else "cub")
    files, images, labels, split = [], [], [], []
    for label, name in enumerate(CUB_CLASSES):
        for i in range(train + test):
            is_train = i < train
            base = f"{name}/{name.split('.')[1]}_{i:04d}.jpg"
            if layout == "official":
                relative = f"images/{base}"
                images.append(f"{len(images) + 1} {base}\n")
                labels.append(f"{len(labels) + 1} {label + 1}\n")
                split.append(f"{len(split) + 1} {int(is_train)}\n")
            else:
                relative = f"{'train' if is_train else 'test'}/{base}"
            write_image(folder / relative, class_image(rng, label, 14, 18))
            files.append(relative)
    if layout == "official":
        lists = {
            "images.txt": images,
            "image_class_labels.txt": labels,
            "train_test_split.txt": split,
            "classes.txt": [f"{c + 1} {n}\n" for c, n in enumerate(CUB_CLASSES)],
        }
        for name, lines in lists.items():
            (folder / name).write_text("".join(lines))
        files += list(lists)
    record_checksums(folder, sorted(files))
    return root


def write_packaged(
    root: Path, folder_name: str, num_classes: int, test_name: str = "test", per_class: int = 2
) -> Path:
    """A packaged `root/<folder_name>/{train,<test_name>}/<class>/*.jpg` data set (PILOT's
    OmniBenchmark and ObjectNet subsets, SLCA's Cars-196 with `val/`)."""
    rng = np.random.default_rng(6)
    folder = root / folder_name
    files = []
    for label in range(num_classes):
        for i in range(per_class + 1):
            split = test_name if i == per_class else "train"
            relative = f"{split}/class_{label:03d}/img_{i}.jpg"
            write_image(folder / relative, class_image(rng, label, 12, 12))
            files.append(relative)
    record_checksums(folder, files)
    return root

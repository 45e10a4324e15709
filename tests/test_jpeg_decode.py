"""JPEG decoding in batches (`--decode gpu`): the decoders' pixel difference, the batched path's
fallbacks, and the CPU path's resize and crop.

On the CPU, torchvision's `decode_jpeg` and PIL both wrap libjpeg-turbo with the same settings:
on baseline and progressive, colour and grey JPEGs they agree exactly (difference 0), which the
first test states. nvJPEG on a GPU upsamples chroma its own way; the CUDA-marked test bounds its
difference (at most 1.5 levels on average, per channel value).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cilbench.backbones.model import create_backbone
from cilbench.data.jpeg_decode import (
    EncodedImages,
    collate_encoded,
    decode_batch,
    decodes_on_gpu,
    resolve_decode,
)
from cilbench.data.sources import FileSource
from cilbench.features import FeatureStore, extract_decoded_on_device, extract_features
from cilbench.profiles.fixtures import write_jpeg_classes

CPU = torch.device("cpu")


def _encoded(source: FileSource) -> tuple[list[torch.Tensor], list[int]]:
    return collate_encoded(
        [EncodedImages(source, range(len(source)))[i] for i in range(len(source))]
    )


def _mixed_folder(root: Path) -> FileSource:
    """Photo-like baseline JPEGs plus a progressive one, a grey one and a PNG."""
    source = write_jpeg_classes(root, 2, 2)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    extra = {
        "p/progressive.jpg": (Image.fromarray(pixels), {"format": "JPEG", "progressive": True}),
        "p/grey.jpg": (Image.fromarray(pixels[..., 0]), {"format": "JPEG"}),
        "p/flat.png": (Image.fromarray(pixels), {"format": "PNG"}),
    }
    for relative, (image, options) in extra.items():
        (root / relative).parent.mkdir(exist_ok=True)
        image.save(root / relative, **options)
    return FileSource(root, source.files + list(extra), [0, 0, 1, 1, 0, 1, 0], "mixed")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchvision_decode_jpeg_on_the_cpu_equals_pil_exactly(tmp_path: Path) -> None:
    from torchvision.io import ImageReadMode, decode_jpeg

    source = _mixed_folder(tmp_path)
    encoded, _ = _encoded(source)
    for i, data in enumerate(encoded[:-1]):  # every JPEG
        difference = decode_jpeg(data, mode=ImageReadMode.RGB).int() - source.load(i).int()
        assert int(difference.abs().max()) == 0, source.files[i]


def test_a_batch_decodes_jpegs_in_one_call_and_the_rest_through_the_source(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Same resize and crop as the CPU path; the PNG goes through `source.load`."""
    source = _mixed_folder(tmp_path)
    transform = create_backbone("tiny-vit-random", image_size=32).preprocessing.sample_transform()
    encoded, positions = _encoded(source)
    batch = decode_batch(encoded, positions, source, transform, CPU)
    expected = torch.stack([transform(source.load(i)) for i in range(len(source))])
    assert batch.dtype == torch.uint8 and batch.shape == expected.shape == (7, 3, 32, 32)
    assert torch.equal(batch, expected)


def test_a_refusing_decoder_falls_back_to_the_cpu_path(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    source = _mixed_folder(tmp_path)

    def refuse(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        raise RuntimeError("nvjpeg: unsupported")

    monkeypatch.setattr("cilbench.data.jpeg_decode._decode_jpegs", refuse)
    transform = create_backbone("tiny-vit-random", image_size=32).preprocessing.sample_transform()
    encoded, positions = _encoded(source)
    batch = decode_batch(encoded, positions, source, transform, CPU)
    assert torch.equal(batch, torch.stack([transform(source.load(i)) for i in range(7)]))


def test_gpu_decoding_resolves_to_the_cpu_without_cuda(tmp_path: Path) -> None:
    assert resolve_decode("gpu", "cpu") == "cpu" and resolve_decode("gpu", "cuda") == "gpu"
    source = _mixed_folder(tmp_path)
    backbone = create_backbone("tiny-vit-random", image_size=32)
    assert FeatureStore(backbone, decode="gpu").decode == "cpu"
    assert decodes_on_gpu(source, "gpu") and not decodes_on_gpu(source, "cpu")


def test_features_of_device_decoding_equal_the_loader_path(tmp_path: Path) -> None:
    """The batched path run with the CPU as its device: the same features as worker decoding."""
    source = _mixed_folder(tmp_path)
    backbone = create_backbone("tiny-vit-random", image_size=32)
    batched = extract_decoded_on_device(backbone.forward_features, backbone, source, batch_size=3)
    from cilbench.data.sources import DatasetView

    view = DatasetView(source, np.arange(7), np.zeros(7, dtype=np.int64))
    dataset = view.with_transform(backbone.preprocessing.sample_transform())
    plain = extract_features(backbone.forward_features, backbone, dataset, batch_size=3)
    torch.testing.assert_close(batched, plain)


def test_the_gpu_decoder_names_another_cache_key(tmp_path: Path) -> None:
    source = _mixed_folder(tmp_path)
    backbone = create_backbone("tiny-vit-random", image_size=32)
    store = FeatureStore(backbone)
    plain = store.cache_key(source)[0]
    store.decode = "gpu"  # as on a CUDA device
    assert store.cache_key(source)[0] != plain


@pytest.mark.cuda
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_nvjpeg_stays_close_to_pil(tmp_path: Path) -> None:
    """nvJPEG's difference from PIL: at most 1.5 intensity levels on average per value."""
    source = _mixed_folder(tmp_path)
    encoded, positions = _encoded(source)
    identity = lambda image: image  # noqa: E731 - no resize: compare the decoders alone
    for k in range(len(encoded) - 1):
        image = decode_batch([encoded[k]], [positions[k]], source, identity, torch.device("cuda"))
        difference = (image[0].cpu().int() - source.load(k).int()).abs().float()
        assert float(difference.mean()) <= 1.5, source.files[k]

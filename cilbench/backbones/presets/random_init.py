"""Seeded random-init presets: a tiny ViT for tests, a ViT-B/16 for speed measurements and an
EfficientNet-Lite0 beside the pre-trained one."""

from __future__ import annotations

from cilbench.backbones.spec import BackboneSpec, register_backbone

register_backbone(
    BackboneSpec(
        name="tiny-vit-random",
        architecture="vit_tiny_patch16_224",
        weights="random:0",
        model_kwargs={"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2},
        image_size=32,
        crop_pct=1.0,
        normalization="inception",
        description="2-block ViT at 32 px, seeded random init: for tests and smoke runs",
    )
)
register_backbone(
    BackboneSpec(
        name="vit-base-random",
        architecture="vit_base_patch16_224",
        weights="random:0",
        image_size=224,
        crop_pct=0.875,
        interpolation="bicubic",
        normalization="inception",
        description="ViT-B/16 at 224 px, seeded random init: the real model's cost, offline",
    )
)
register_backbone(
    BackboneSpec(
        name="efficientnet-lite0-random",
        architecture="tf_efficientnet_lite0",
        weights="random:0",
        image_size=224,
        crop_pct=0.875,
        interpolation="bicubic",
        normalization="inception",
        description="EfficientNet-Lite0 as efficientnet-lite0-pypi, seeded random init: what "
        "pre-training adds",
    )
)

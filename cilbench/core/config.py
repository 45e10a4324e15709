"""Layered configuration: dataclass defaults <- per-stream recipe <- `--set key=value`.

Every layer is validated against the dataclass: an unknown key fails with the nearest known key, a
value that does not parse as the field's type fails with the key, the type and what was given.
Value ranges and choices are declared next to each field with `typing.Annotated` and a constraint
(`lr: Annotated[float, Positive()] = 0.01`); `resolve` and `check` enforce them, so a bad value
fails before any data is read or any experience trains.
`--set` keys are routed by prefix: `stream.<option>`, `backbone.<setting>` and `augment.<field>`
address the stream builder, the backbone and the training augmentation; anything else is a
strategy hyper-parameter.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from cilbench.core.errors import ConfigError, did_you_mean

C = TypeVar("C")

SECTIONS = ("stream", "backbone", "augment")


class Constraint:
    """A rule a setting must satisfy, declared next to its field: `Annotated[int, Positive()]`.

    On a list or tuple field the rule applies to each element; `None` (an optional setting left
    unset) always passes.
    """

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def allowed(self) -> str:
        """What is allowed, as the error message says it ('> 0', "one of 'a', 'b'")."""
        raise NotImplementedError

    def hint(self, value: Any) -> str:
        """A suggestion for a rejected value (' Did you mean ...?'), or ''."""
        return ""

    def accepts_in(self, value: Any, config: Any) -> bool:
        """`accepts`, given the whole config (for rules relating two fields)."""
        return self.accepts(value)

    def allowed_in(self, config: Any) -> str:
        """`allowed`, given the whole config."""
        return self.allowed()


class Range(Constraint):
    """A finite number between `low` and `high` (either bound optional, inclusive unless open)."""

    def __init__(
        self,
        low: float | None = None,
        high: float | None = None,
        *,
        low_open: bool = False,
        high_open: bool = False,
    ):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def accepts(self, value: Any) -> bool:
        low, high = self.low, self.high
        return (
            math.isfinite(value)
            and (low is None or (value > low if self.low_open else value >= low))
            and (high is None or (value < high if self.high_open else value <= high))
        )

    def allowed(self) -> str:
        if self.low is None and self.high is None:
            return "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"{'<' if self.high_open else '<='} {self.high}"


class Positive(Range):
    """> 0: sizes, counts, learning rates."""

    def __init__(self) -> None:
        super().__init__(0, low_open=True)


class NonNegative(Range):
    """>= 0: worker counts, weight decay, epochs where 0 deliberately means no training."""

    def __init__(self) -> None:
        super().__init__(0)


class NonEmpty(Constraint):
    """A list or tuple setting with at least one element (checked on the whole list)."""

    def accepts(self, value: Any) -> bool:
        return not isinstance(value, tuple | list) or len(value) > 0

    def allowed(self) -> str:
        return "a non-empty list (comma-separated)"


class OneOf(Constraint):
    """One of a fixed set of values (for text settings that are not a `Literal`)."""

    def __init__(self, *choices: Any):
        self.choices = choices

    def accepts(self, value: Any) -> bool:
        return value in self.choices

    def allowed(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def hint(self, value: Any) -> str:
        return did_you_mean(str(value), [str(c) for c in self.choices])


class AtMostField(Constraint):
    """No more than another field of the same config (`top_k` <= `keys_per_codebook`)."""

    def __init__(self, field: str):
        self.field = field

    def accepts(self, value: Any) -> bool:
        return True  # decided once the whole config is known

    def accepts_in(self, value: Any, config: Any) -> bool:
        return bool(value <= getattr(config, self.field))

    def allowed(self) -> str:
        return f"<= {self.field}"

    def allowed_in(self, config: Any) -> str:
        return f"<= {self.field} ({getattr(config, self.field)})"


class Registered(Constraint):
    """A name in a registry (`STREAMS`, `STRATEGIES`, ...); with `or_empty`, '' too (none)."""

    def __init__(self, registry: Any, *, or_empty: bool = False):
        self.registry, self.or_empty = registry, or_empty

    def accepts(self, value: Any) -> bool:
        return (self.or_empty and value == "") or value in self.registry

    def allowed(self) -> str:
        empty = " or '' (none)" if self.or_empty else ""
        return f"a registered {self.registry.kind} ({', '.join(self.registry.names())}){empty}"

    def hint(self, value: Any) -> str:
        return did_you_mean(str(value), self.registry.names())


class AvailableDevice(Constraint):
    """'auto' or a torch device present on this machine ('cpu', 'cuda', 'cuda:1', 'mps')."""

    def accepts(self, value: Any) -> bool:
        return value == "auto" or value in self._present()

    def allowed(self) -> str:
        return "a device present on this machine: " + ", ".join(["auto", *self._present()])

    def hint(self, value: Any) -> str:
        return did_you_mean(str(value), ["auto", *self._present()])

    @staticmethod
    def _present() -> list[str]:
        import torch

        found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if "cuda:0" in found:
            found.insert(1, "cuda")
        return found + (["mps"] if torch.backends.mps.is_available() else [])


def parse_assignments(pairs: Iterable[str]) -> dict[str, str]:
    """['lr=0.1', 'stream.increment=5'] -> {'lr': '0.1', 'stream.increment': '5'}."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value; got {pair!r}.")
        if key.strip() in parsed:
            raise ConfigError(
                f"--set {key.strip()} is given twice ({parsed[key.strip()]!r}, then "
                f"{value.strip()!r}); give each key once."
            )
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
    """An instance of dataclass `cls` from its defaults, updated by each layer in turn, checked."""
    schema = settings_schema(cls)
    values: dict[str, Any] = {}
    for layer in layers:
        values.update(resolve_settings(layer, schema, what))
    return check(cls(**values), what)


def settings_schema(cls: type) -> dict[str, Any]:
    """{field name: annotation, constraints included} of the fields dataclass `cls` takes.

    A field a subclass redeclares with the same type (to change its default) keeps the
    constraints its base class declares.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    schema = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            inherited = typing.get_type_hints(base, include_extras=True)
            for name, annotation in schema.items():
                if name in inherited and _split_annotated(inherited[name])[0] == annotation:
                    schema[name] = inherited[name]
    return schema


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
    """Convert `value` (often a string from the command line) to `annotation`, or fail clearly.

    An `Annotated` type's constraints are checked on the converted value.
    """
    base, constraints = _split_annotated(annotation)
    try:
        converted = _coerce(value, base)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{what} key {key!r} expects {_type_name(base)}; got {value!r}."
        ) from None
    _check_constraints(converted, constraints, key=key, what=what)
    return converted


def check(obj: C, what: str = "config") -> C:
    """`obj`, a dataclass instance, after checking each field's type and declared constraints.

    For objects made in Python rather than from strings (a `RunSpec`, a `BackboneSpec`, a stream
    builder): a value of the wrong type is an error here, never converted.
    """
    for key, annotation in settings_schema(type(obj)).items():
        value = getattr(obj, key)
        base, constraints = _split_annotated(annotation)
        if not _fits(value, base):
            raise ConfigError(f"{what} key {key!r} expects {_type_name(base)}; got {value!r}.")
        _check_constraints(value, constraints, key=key, what=what, config=obj)
    return obj


def check_value(value: Any, constraint: Constraint, *, key: str, what: str) -> None:
    """Check one value that is not a dataclass field (a command-line option of its own)."""
    _check_constraints(value, [constraint], key=key, what=what)


def _split_annotated(annotation: Any) -> tuple[Any, list[Constraint]]:
    if typing.get_origin(annotation) is not typing.Annotated:
        return annotation, []
    base, *extras = typing.get_args(annotation)
    return base, [e for e in extras if isinstance(e, Constraint)]


def _check_constraints(
    value: Any, constraints: list[Constraint], *, key: str, what: str, config: Any = None
) -> None:
    items = value if isinstance(value, (tuple, list)) else (value,)
    for constraint in constraints:
        if isinstance(constraint, NonEmpty):
            if not constraint.accepts(value):
                raise ConfigError(
                    f"{what} key {key!r} must be {constraint.allowed()}; got {value!r}."
                )
            continue
        bad = [
            item
            for item in items
            if item is not None
            and not (
                constraint.accepts(item) if config is None else constraint.accepts_in(item, config)
            )
        ]
        if bad:
            allowed = constraint.allowed() if config is None else constraint.allowed_in(config)
            raise ConfigError(
                f"{what} key {key!r} must be {allowed}; got {value!r}." + constraint.hint(bad[0])
            )


def _fits(value: Any, annotation: Any) -> bool:
    """Whether `value` already is of type `annotation` (bools are not numbers here)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in args)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list):
        return isinstance(value, origin) and all(_fits(item, args[0]) for item in value)
    if annotation is type(None):
        return value is None
    if annotation in (int, float):
        numbers = (int,) if annotation is int else (int, float)
        return isinstance(value, numbers) and not isinstance(value, bool)
    if isinstance(origin or annotation, type):
        return isinstance(value, origin or annotation)
    return True


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
    names = {int: "an integer", float: "a number", bool: "true/false", str: "text"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def as_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as a JSON-friendly dict."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }

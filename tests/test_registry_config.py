"""Registry lookups and errors; layered configuration and its errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import pytest

from cilbench.api import STRATEGIES, STREAMS
from cilbench.backbones.spec import BackboneSpec
from cilbench.core.config import (
    NonNegative,
    OneOf,
    Positive,
    Range,
    check,
    parse_assignments,
    resolve,
    split_sections,
)
from cilbench.core.errors import ConfigError, RegistryError
from cilbench.core.registry import Registry
from cilbench.engine.recipes import recipes_of


def test_unknown_name_suggests_the_nearest():
    with pytest.raises(RegistryError) as error:
        STRATEGIES.get("simplecl")
    assert "Did you mean 'simplecil'" in str(error.value)
    assert "nmc" in str(error.value)  # the list of available names
    with pytest.raises(RegistryError, match="split-fashion-mnist-mini"):
        STREAMS.get("split-fashion-mnist-minni")


def test_builtins_are_discovered():
    assert {"nmc", "simplecil"} <= set(STRATEGIES.names())
    assert {"synthetic", "split-fashion-mnist", "split-fashion-mnist-mini"} <= set(STREAMS.names())


def test_duplicate_name_is_an_error():
    registry: Registry[object] = Registry("thing")

    @registry.register("a")
    class First: ...

    with pytest.raises(RegistryError, match=r"already registered .* a different one"):

        @registry.register("a")
        class Second: ...


def test_entry_point_plugins_are_loaded(monkeypatch: pytest.MonkeyPatch):
    registry: Registry[object] = Registry("thing", entry_point_group="cilbench.things")

    class FakeEntryPoint:
        def load(self):
            registry.register("plugin")(object)

    monkeypatch.setattr(
        "importlib.metadata.entry_points",
        lambda group: [FakeEntryPoint()] if group == "cilbench.things" else [],
    )
    assert registry.names() == ["plugin"]


@dataclass(frozen=True)
class Example:
    epochs: int = 5
    lr: float = 0.1
    milestones: tuple[int, ...] = (3,)
    optimizer: Literal["sgd", "adam"] = "sgd"
    clip: float | None = None
    bias: bool = True


def test_layers_apply_in_order():
    config = resolve(Example, {"epochs": 20, "lr": 0.5}, {"lr": "0.01", "milestones": "18,19"})
    assert config == Example(epochs=20, lr=0.01, milestones=(18, 19))
    assert resolve(Example, {"clip": "none", "bias": "false", "optimizer": "adam"}) == Example(
        clip=None, bias=False, optimizer="adam"
    )


def test_unknown_key_suggests_a_known_one():
    with pytest.raises(ConfigError, match=r"Unknown config key 'epoch'\. Did you mean 'epochs'"):
        resolve(Example, {"epoch": "3"})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("epochs", "2.5", "expects an integer; got '2.5'"),
        ("lr", "fast", "expects a number; got 'fast'"),
        ("optimizer", "rmsprop", "expects one of 'sgd', 'adam'; got 'rmsprop'"),
        ("bias", "maybe", "expects true/false; got 'maybe'"),
    ],
)
def test_wrong_type_names_key_type_and_value(key: str, value: str, expected: str):
    with pytest.raises(ConfigError, match=expected):
        resolve(Example, {key: value})


def test_set_pairs_are_routed_by_prefix():
    pairs = parse_assignments(
        ["lr=0.1", "stream.increment=5", "backbone.image_size=64", "augment.preset=none"]
    )
    assert split_sections(pairs) == {
        "strategy": {"lr": "0.1"},
        "stream": {"increment": "5"},
        "backbone": {"image_size": "64"},
        "augment": {"preset": "none"},
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_assignments(["lr"])


def test_registering_an_equal_object_again_is_allowed():
    registry: Registry[object] = Registry("thing")
    spec = BackboneSpec("a", "vit_tiny_patch16_224", "random:0")
    registry.register("a")(spec)
    registry.register("a")(BackboneSpec("a", "vit_tiny_patch16_224", "random:0"))  # equal
    with pytest.raises(RegistryError, match="already registered"):
        registry.register("a")(BackboneSpec("a", "vit_tiny_patch16_224", "random:1"))

    def make_class() -> type:  # the same definition run twice, as a re-run notebook cell does
        class Cell: ...

        return Cell

    first, second = make_class(), make_class()
    assert first is not second
    registry.register("cell")(first)
    registry.register("cell")(second)
    assert registry.get("cell") is second  # the newer definition wins


def test_unregister_removes_a_name():
    registry: Registry[object] = Registry("thing")
    registry.register("a")(int)
    registry.unregister("a")
    assert "a" not in registry
    registry.register("a")(str)  # free again
    with pytest.raises(RegistryError, match=r"not registered\. Did you mean 'a'"):
        registry.unregister("aa")


def test_every_default_and_recipe_satisfies_its_constraints():
    for name in STRATEGIES.names():
        cls = STRATEGIES.get(name)
        assert resolve(cls.Config), name
        for stream in cls.recipes:
            for recipe in recipes_of(cls, stream):
                sections = recipe.sections()
                assert resolve(cls.Config, sections["strategy"]), (name, stream, recipe.name)
                assert resolve(STREAMS.get(stream), sections["stream"]), (name, stream)
    for name in STREAMS.names():
        assert check(STREAMS.get(name)()), name


@dataclass(frozen=True)
class Constrained:
    size: Annotated[int, Positive()] = 1
    rate: Annotated[float, Range(0, 1, high_open=True)] = 0.5
    steps: Annotated[tuple[int, ...], NonNegative()] = ()
    mode: Annotated[str, OneOf("fast", "slow")] = "fast"
    clip: Annotated[float | None, Positive()] = None


@dataclass(frozen=True)
class Redeclared(Constrained):
    size: int = 4  # a new default keeps the base class's constraint


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("size", "0", "'size' must be > 0; got 0."),
        ("rate", "1", "'rate' must be in [0, 1); got 1.0."),
        ("rate", "inf", "'rate' must be in [0, 1); got inf."),
        ("steps", "3,-1", "'steps' must be >= 0; got (3, -1)."),
        ("mode", "fats", "'mode' must be one of 'fast', 'slow'; got 'fats'. Did you mean 'fast'?"),
        ("clip", "-1", "'clip' must be > 0; got -1.0."),
    ],
)
def test_constraints_name_key_value_and_what_is_allowed(key: str, value: str, expected: str):
    with pytest.raises(ConfigError) as error:
        resolve(Constrained, {key: value})
    assert str(error.value) == f"config key {expected}"
    assert resolve(Constrained, {"clip": "none", "steps": "0,2"}).steps == (0, 2)


def test_constraints_survive_a_redeclared_default():
    assert resolve(Redeclared).size == 4
    with pytest.raises(ConfigError, match="'size' must be > 0"):
        resolve(Redeclared, {"size": "0"})


def test_check_refuses_wrong_types_from_python():
    with pytest.raises(ConfigError, match="'size' expects an integer; got '3'"):
        check(Constrained(size="3"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'size' expects an integer; got True"):
        check(Constrained(size=True))

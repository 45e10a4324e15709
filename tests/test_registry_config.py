"""Registry lookups and errors; layered configuration and its errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from cilbench.api import STRATEGIES, STREAMS
from cilbench.config import parse_assignments, resolve, split_sections
from cilbench.errors import ConfigError, RegistryError
from cilbench.registry import Registry


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

    with pytest.raises(RegistryError, match="registered twice"):

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

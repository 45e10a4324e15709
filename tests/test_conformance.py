"""Every registered strategy and every stream that needs no downloaded data passes conformance."""

from __future__ import annotations

import json

import pytest

from cilbench.api import STRATEGIES
from cilbench.engine.loop import prepare
from cilbench.engine.spec import RunSpec
from cilbench.testing import check_strategy, check_stream

CURRENT = [name for name in STRATEGIES.names() if not STRATEGIES.get(name).deprecated]
"""Every strategy but the deprecated names kept for stored results (tests/test_avalanche_methods.py
runs the one there is)."""


@pytest.mark.parametrize("name", CURRENT)
def test_strategy_conformance(name: str):
    check_strategy(name)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("synthetic", {}),
        ("synthetic", {"scenario": "domain-incremental"}),
        ("synthetic", {"init_classes": 4, "increment": 1, "class_order": "natural"}),
        ("split-fashion-mnist-mini", {}),
    ],
)
def test_offline_stream_conformance(name: str, options: dict):
    check_stream(name, **options)


@pytest.mark.parametrize("name", CURRENT)
def test_resolved_config_survives_a_json_round_trip(name: str, tmp_path):
    """Resume compares the stored config with the new one: JSON must not change it."""
    prepared = prepare(RunSpec(strategy=name, stream="synthetic", out_dir=tmp_path))
    assert json.loads(json.dumps(prepared.config)) == prepared.config

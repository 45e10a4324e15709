"""Every registered strategy and every stream that needs no downloaded data passes conformance."""

from __future__ import annotations

import pytest

from cilbench.api import STRATEGIES
from cilbench.testing import check_strategy, check_stream


@pytest.mark.parametrize("name", STRATEGIES.names())
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

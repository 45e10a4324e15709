"""Command-line tables never split a value: whole cells, or one `key: value` line each."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from typer.testing import CliRunner

from cilbench.cli.app import app
from cilbench.cli.tables import show_table

ROWS = [["sgd", "epochs=20\nmilestones=40,70\nlr=0.001"], ["adam", "epochs=5"]]


def _printed(width: int) -> str:
    out = io.StringIO()
    show_table(Console(file=out, width=width), "settings", ["optimizer", "values"], ROWS)
    return out.getvalue()


def test_a_table_that_fits_is_drawn_whole():
    text = _printed(120)
    assert "┃ optimizer" in text and "│ milestones=40,70 │" in text


def test_a_table_that_does_not_fit_falls_back_to_one_value_per_line():
    text = _printed(20)
    assert "  values: epochs=20\n    milestones=40,70\n    lr=0.001\n" in text
    assert "┃" not in text


@pytest.mark.parametrize("width", [60, 80])
def test_recipes_at_80_columns_keep_every_setting_and_source_whole(monkeypatch, width):
    """At 80 columns rich used to print `milestones=4` / `0` and `.../resul` / `t.json`."""
    out = io.StringIO()
    monkeypatch.setattr("cilbench.cli.console.stdout", Console(file=out, width=width))
    assert CliRunner().invoke(app, ["recipes", "slca", "--stream", "split-cifar100"]).exit_code == 0
    text = out.getvalue()
    assert "milestones=18" in text
    assert "exps/slca/slca_cifar.json" in text
    assert all(len(line) <= width for line in text.splitlines() if "│" in line)

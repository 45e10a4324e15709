"""Odd inputs end in one clear ConfigError naming the value (issue 22, last group; partial).

Before: `ranpac --set ridges=` ended in `min() arg is an empty sequence` after training; a
repeated `--set` key silently kept the last value.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cilbench.cli.app import app

RUN = ["run", "--stream", "synthetic", "--device", "cpu", "--set", "stream.num_classes=4"]
CASES = [
    (["--strategy", "ranpac", "--set", "ridges="], "'ridges' must be a non-empty list"),
    (
        ["--set", "stream.increment=1", "--set", "stream.increment=2"],
        "is given twice ('1', then '2')",
    ),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=["empty ridges", "repeated --set key"])
def test_odd_inputs_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, [*RUN, *args, "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in " ".join(result.stderr.replace("│", " ").split())
    assert not list(tmp_path.rglob("result.json"))

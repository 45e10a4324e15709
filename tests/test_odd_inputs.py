"""Odd inputs end in one clear error naming the value (issue 22, last group; partial).

Before: `ranpac --set ridges=` ended in `min() arg is an empty sequence` after training; a
repeated `--set` key silently kept the last value; `backbone.image_size=4` on a fixed-size ViT
ended in timm's AssertionError; SLCA on a class with one image in a covariance traceback;
`profile --synthetic-jpegs -5` ran.
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
    (["--set", "backbone.image_size=4"], "takes 32 x 32 px inputs; backbone.image_size=4"),
    (
        ["--strategy", "slca", "--set", "stream.train_per_class=1"],
        "has 1 training image(s) in this experience; its covariance needs at least 2",
    ),
]
IDS = ["empty ridges", "repeated --set key", "image size of a fixed-size ViT", "one image a class"]


@pytest.mark.parametrize(("args", "message"), CASES, ids=IDS)
def test_odd_inputs_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, [*RUN, *args, "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in " ".join(result.stderr.replace("│", " ").split())
    assert not list(tmp_path.rglob("result.json"))


def test_a_negative_jpeg_count_is_refused() -> None:
    result = CliRunner().invoke(app, ["profile", "pipeline", "--synthetic-jpegs", "-5"])
    assert result.exit_code == 2
    assert "'--synthetic-jpegs' must be >= 0; got -5" in result.stderr


def test_a_repeated_run_writes_its_csv_events_once(tmp_path: Path) -> None:
    args = [*RUN, "--out", str(tmp_path), "--log", "csv", "--no-cache"]
    for extra in ([], ["--overwrite"]):
        assert CliRunner().invoke(app, [*args, *extra]).exit_code == 0
    (events,) = tmp_path.rglob("events.csv")
    rows = events.read_text().splitlines()
    assert rows[0] == "kind,experience,step,name,value"
    assert len(rows) == len(set(rows)), "a repeated run duplicated its rows"

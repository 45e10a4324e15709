"""Result files: round trip, schema validation, damage detection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cilbench.core.errors import CorruptFileError
from cilbench.core.results import RunResult, load_result, save_result


def _result() -> RunResult:
    return RunResult(
        run_id="s/r",
        config={"strategy": "nmc"},
        stream={"name": "s"},
        backbone={"tag": "b"},
        accuracy_matrix=[[90.0, None], [80.0, 70.0]],
        test_sizes=[10, 20],
        complete=True,
    )


def test_round_trip(tmp_path: Path):
    path = tmp_path / "r" / "result.json"
    save_result(_result(), path)
    loaded = load_result(path)
    assert loaded == _result()
    assert loaded.matrix()[0, 1] != loaded.matrix()[0, 1]  # NaN for "not evaluated"
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temp file left


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d.pop("accuracy_matrix"), "missing fields"),
        (lambda d: d.update(schema_version=99), "schema_version"),
        (lambda d: d["accuracy_matrix"][0].append(1.0), "must have 2 cells"),
        (lambda d: d["accuracy_matrix"][1].__setitem__(0, 170.0), "not in"),
        (lambda d: d.update(extra=1), "unknown fields"),
    ],
)
def test_invalid_content_is_reported(tmp_path: Path, damage, message: str):
    data = json.loads(_result().to_json())
    damage(data)
    path = tmp_path / "result.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptFileError, match=message):
        load_result(path)


def test_truncated_file_is_reported(tmp_path: Path):
    path = tmp_path / "result.json"
    path.write_text(_result().to_json()[:50])
    with pytest.raises(CorruptFileError, match="Cannot read result file"):
        load_result(path)

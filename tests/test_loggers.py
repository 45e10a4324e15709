"""Live loggers: each writes what its own library (or the csv module) reads back."""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import pytest

from cilbench.core.errors import ConfigError
from cilbench.core.results import RunResult
from cilbench.engine.loggers import make_loggers
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec

EPOCHS = 2


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Path]:
    """One fine-tuning run (3 experiences x 2 epochs) logged by all three loggers at once."""
    out = tmp_path_factory.mktemp("runs")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network, ever
    monkeypatch.setenv("WANDB_SILENT", "true")
    spec = RunSpec(
        strategy="finetune", stream="synthetic", overrides={"epochs": EPOCHS}, out_dir=out
    )
    try:
        result = run(spec, callbacks=make_loggers(["csv,tensorboard", "wandb"]))
    finally:
        monkeypatch.undo()
    return result, out / result.run_id / "logs"


def _cells(result: RunResult) -> dict[tuple[int, int], float]:
    return {
        (t, j): a
        for t, row in enumerate(result.accuracy_matrix)
        for j, a in enumerate(row)
        if a is not None
    }


def test_csv_logger(logged_run: tuple[RunResult, Path]):
    result, logs = logged_run
    with (logs / "events.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    accuracy = {
        (int(r["experience"]), int(r["name"])): float(r["value"])
        for r in rows
        if r["kind"] == "accuracy"
    }
    assert accuracy == _cells(result)
    finals = [float(r["value"]) for r in rows if r["name"] == "final_accuracy"]
    assert len(finals) == 3 and finals[-1] == pytest.approx(result.metrics["final_accuracy"])
    losses = [r for r in rows if r["kind"] == "loss"]
    assert [int(r["experience"]) for r in losses] == [0, 0, 1, 1, 2, 2]


def test_tensorboard_logger(logged_run: tuple[RunResult, Path]):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, logs = logged_run
    events = EventAccumulator(str(logs / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    accuracy = {
        (event.step, int(tag.rsplit("_", 1)[1])): event.value
        for tag in scalars
        if tag.startswith("accuracy/")
        for event in events.Scalars(tag)
    }
    assert accuracy == pytest.approx(_cells(result))
    final = events.Scalars("metrics/final_accuracy")
    assert [e.step for e in final] == [0, 1, 2]
    assert final[-1].value == pytest.approx(result.metrics["final_accuracy"])
    losses = [e for tag in scalars if tag.startswith("loss/") for e in events.Scalars(tag)]
    assert sorted(e.step for e in losses) == list(range(3 * EPOCHS))


def _wandb_records(path: Path) -> list:
    """Records of a wandb transaction log (LevelDB log format: 32 KiB blocks of framed chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, position = [], b"", 7
    while position + 7 <= len(data):
        block_left = 32768 - position % 32768
        if block_left < 7:  # block trailer padding
            position += block_left
            continue
        length, kind = struct.unpack("<HB", data[position + 4 : position + 7])
        if length == 0 and kind == 0:
            break
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_logger_offline(logged_run: tuple[RunResult, Path]):
    import json

    result, logs = logged_run
    (path,) = (logs / "wandb").glob("offline-run-*/run-*.wandb")
    history = [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in _wandb_records(path)
        if r.WhichOneof("record_type") == "history"
    ]
    accuracy = {
        (step["experience"], int(key.rsplit("_", 1)[1])): value
        for step in history
        for key, value in step.items()
        if key.startswith("accuracy/")
    }
    assert accuracy == pytest.approx(_cells(result))
    finals = [
        step["metrics/final_accuracy"] for step in history if "metrics/final_accuracy" in step
    ]
    assert finals[-1] == pytest.approx(result.metrics["final_accuracy"])
    assert sum(any(k.startswith("loss/") for k in step) for step in history) == 3 * EPOCHS


def test_unknown_logger_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match="Did you mean 'tensorboard'"):
        make_loggers(["tensorbord"])

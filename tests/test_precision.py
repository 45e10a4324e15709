"""Precision and device: `--precision` reaches the models, the record, the cache key and the
board; a result from another device or precision is not silently replaced; every strategy runs
at bf16 on the CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cilbench.api import STRATEGIES
from cilbench.backbones.model import create_backbone
from cilbench.cli.app import app
from cilbench.core.devices import autocast, compute_dtype, float32_section, resolve_precision
from cilbench.core.errors import CilbenchError
from cilbench.data.sources import ArraySource
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec
from cilbench.engine.sweep import run_one
from cilbench.features import FeatureStore

SYNTHETIC = {"stream.num_classes": "4"}


def test_auto_is_bf16_on_cuda_and_fp32_on_the_cpu() -> None:
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp16", "cpu") == "fp16"
    assert compute_dtype(torch.device("cpu"), "bf16") == torch.bfloat16


def test_cpu_autocast_runs_bf16_and_a_float32_section_leaves_it() -> None:
    a = torch.randn(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ a).dtype == torch.bfloat16
        with float32_section("cpu"):
            assert (a @ a).dtype == torch.float32
    with autocast(torch.device("cpu"), "fp32"):
        assert not torch.is_autocast_enabled("cpu")


def test_the_precision_names_another_feature_cache_file(tmp_path: Path) -> None:
    keys = set()
    for precision in ("fp32", "bf16"):
        backbone = create_backbone("tiny-vit-random", precision=precision)
        keys.add(FeatureStore(backbone, tmp_path).cache_key(_source())[0])
    assert len(keys) == 2


def _source() -> ArraySource:
    return ArraySource(np.zeros((2, 8, 8, 3), dtype=np.uint8), np.zeros(2, dtype=np.int64), "zeros")


def test_a_result_records_precision_and_device(tmp_path: Path) -> None:
    result = run(_spec(tmp_path, precision="bf16"))
    assert result.config["precision"] == "bf16" and result.config["device"] == "cpu"
    assert result.config["compile"] is False


def _spec(tmp_path: Path, **options: object) -> RunSpec:
    return RunSpec(
        strategy="nmc",
        stream="synthetic",
        overrides=SYNTHETIC,
        out_dir=tmp_path,
        cache_dir=None,
        **options,  # type: ignore[arg-type]
    )


def _fake_gpu_result(path: Path) -> None:
    """Rewrite a finished result as if a GPU had computed it (same run id: fp32 on cuda)."""
    data = json.loads(path.read_text())
    data["config"]["device"] = "cuda"
    path.write_text(json.dumps(data))


def test_a_gpu_result_is_not_replaced_by_a_cpu_run_without_overwrite(tmp_path: Path) -> None:
    spec = _spec(tmp_path, precision="fp32")
    first = run(spec)
    path = tmp_path / first.run_id / "result.json"
    _fake_gpu_result(path)
    with pytest.raises(
        CilbenchError, match=r"computed on cuda at fp32.*on cpu at fp32.*--overwrite"
    ):
        run(spec)
    assert json.loads(path.read_text())["config"]["device"] == "cuda"
    outcome = run_one(spec)
    assert outcome.status == "failed" and "--overwrite" in outcome.error
    assert json.loads(path.read_text())["config"]["device"] == "cuda"
    assert run_one(spec, overwrite=True).status == "ran"
    assert json.loads(path.read_text())["config"]["device"] == "cpu"


def test_the_same_device_result_is_repeated_as_before(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    first = run(spec)
    assert run(spec).run_id == first.run_id


def test_the_cli_refuses_and_names_both_devices(tmp_path: Path) -> None:
    command = ["run", "--stream", "synthetic", "--set", "stream.num_classes=4", "--no-cache"]
    command += ["--out", str(tmp_path), "--device", "cpu"]
    assert CliRunner().invoke(app, command).exit_code == 0
    (path,) = tmp_path.glob("*/*/result.json")
    _fake_gpu_result(path)
    refused = CliRunner().invoke(app, command)
    message = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "computed on cuda at fp32" in message
    assert "this run computes on cpu at fp32" in message
    assert CliRunner().invoke(app, [*command, "--overwrite"]).exit_code == 0
    wrong = CliRunner().invoke(app, [*command, "--precision", "bf61"])
    assert wrong.exit_code == 2 and "precision" in wrong.output and "'bf16'" in wrong.output


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_every_strategy_runs_at_bf16_on_the_cpu(strategy: str, tmp_path: Path) -> None:
    """No dtype error anywhere (training, features, statistics, prediction) and finite results."""
    spec = RunSpec(
        strategy=strategy, stream="synthetic", precision="bf16", cache_dir=None, out_dir=tmp_path
    )
    result = run(spec)
    assert result.complete and result.config["precision"] == "bf16"
    finite = [a for row in result.accuracy_matrix for a in row if a is not None]
    assert finite and all(math.isfinite(a) for a in finite)
    assert math.isfinite(result.metrics["final_accuracy"])


def test_a_board_row_names_its_precision_and_never_mixes_two() -> None:
    """An older result (no `precision`) shares a row with fp32 ones; bf16 is a row of its own."""
    from test_leaderboard import _result

    from cilbench.boards.leaderboard import aggregate

    matrix: list[list[float | None]] = [[90.0, None], [80.0, 70.0]]
    older = _result(0, matrix)
    fp32 = _result(1, matrix, config={"precision": "fp32", "compile": True})
    bf16 = _result(2, matrix, config={"precision": "bf16"})
    rows = aggregate([older, fp32, bf16])
    assert sorted((row.precision, tuple(row.seeds)) for row in rows) == [
        ("bf16", (2,)),
        ("fp32", (0, 1)),
    ]

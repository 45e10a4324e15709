"""`cilbench run --from` replays or refuses (issue 22): a stored config with a malformed section,
or one that needs a download this machine cannot make, ends in one clear message (exit 2).

Before: a list, a string or a missing section in the stored config ended in a TypeError,
AttributeError or KeyError traceback from `RunSpec.from_record`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cilbench.cli.app import app
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("stored")
    spec = RunSpec(
        strategy="nmc",
        stream="synthetic",
        overrides={"stream.num_classes": "4"},
        out_dir=folder / "runs",
        cache_dir=folder / "cache",
        device="cpu",
    )
    path = folder / "runs" / run(spec).run_id / "result.json"
    return json.loads(path.read_text())


def _offline_stream(config: dict[str, Any]) -> None:
    config.update(stream="split-cifar100", stream_options={}, recipe="")


def _offline_hub(config: dict[str, Any]) -> None:
    config["backbone"] = "vit_tiny_patch16_224.augreg_in21k"


CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("list section", lambda c: c.update(strategy_config=[1, 2]), "config.strategy_config: .*"),
    ("string section", lambda c: c.update(stream_options="x"), "config.stream_options: 'x'"),
    ("missing section", lambda c: c.pop("augmentation"), "'augmentation' is a required"),
    ("missing strategy", lambda c: c.pop("strategy"), "'strategy' is a required"),
    ("string seed", lambda c: c.update(seed="zero"), "config.seed: 'zero'"),
    ("null batch size", lambda c: c.update(eval_batch_size=None), "config.eval_batch_size"),
    ("config not a mapping", lambda c: c.clear(), "'strategy' is a required"),
    ("data not downloaded", _offline_stream, "cifar-100-python"),
    ("hub weights offline", _offline_hub, "HF_HUB_OFFLINE|offline|cannot be downloaded"),
]


@pytest.mark.parametrize(("case", "edit", "message"), CASES, ids=[c[0] for c in CASES])
def test_a_replay_that_cannot_run_is_one_clear_message(  # type: ignore[no-untyped-def]
    tmp_path: Path, stored, monkeypatch, case, edit, message
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    document = json.loads(json.dumps(stored))
    edit(document["config"])
    path = tmp_path / "result.json"
    path.write_text(json.dumps(document))
    args = ["run", "--from", str(path), "--device", "cpu", "--out", str(tmp_path / "runs")]
    result = CliRunner().invoke(app, [*args, "--data-root", str(tmp_path / "data")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception.__class__ is SystemExit
    assert re.search(message, " ".join(result.stderr.split()))

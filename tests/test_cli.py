"""The command line: the demo, clean errors for bad input, reproducibility, resume after kill -9."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cilbench.benchmarks import fashion_mnist
from cilbench.cli.app import app

runner = CliRunner()
SYNTHETIC = ["--stream", "synthetic", "--set", "stream.num_classes=8"]


def _run(*args: str, out: Path):
    return runner.invoke(app, ["run", *args, "--out", str(out), "--json"])


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_offline_demo_runs_with_no_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 0, result.output
    assert "final accuracy" in result.stdout and "forgetting" in result.stdout
    (path,) = (tmp_path / "runs").rglob("result.json")
    data = json.loads(path.read_text())
    assert data["config"]["strategy"] == "nmc"
    assert data["backbone"]["tag"] == "efficientnet-lite0-pypi"
    assert len(data["accuracy_matrix"]) == 5 and data["complete"]
    # pre-trained features separate Fashion-MNIST well (random init gets ~60%, see README)
    assert data["metrics"]["final_accuracy"] > 70


def test_same_seed_twice_gives_identical_results(tmp_path: Path):
    first = _json(_run(*SYNTHETIC, "--strategy", "simplecil", out=tmp_path / "a"))
    second = _json(_run(*SYNTHETIC, "--strategy", "simplecil", out=tmp_path / "b"))
    assert first["accuracy_matrix"] == second["accuracy_matrix"]
    assert first["metrics"] == second["metrics"]
    assert first["run_id"] == second["run_id"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--strategy", "simplecl"], "Did you mean 'simplecil'?"),
        (["--stream", "synthetc"], "Did you mean 'synthetic'?"),
        (["--backbone", "tiny-vit"], "Unknown backbone 'tiny-vit'"),
        (["--set", "epochs=3"], "Unknown strategy 'nmc' config key 'epochs'"),
        (["--set", "stream.increment=two"], "'increment' expects an integer; got 'two'"),
        (["--set", "stream.incremnt=2"], "Did you mean 'increment'?"),
        (["--set", "backbone.image_size=big"], "'image_size' expects an integer"),
        (["--resume"], "Nothing to resume"),
    ],
)
def test_bad_input_gets_a_clear_error(tmp_path: Path, args: list[str], expected: str):
    result = _run("--stream", "synthetic", *args, out=tmp_path)
    assert result.exit_code == 2
    assert expected in " ".join(result.stderr.split())
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--strategy", "[/x]"], "Unknown strategy '[/x]'"),
        (["run", "--set", "[/b]=1"], "'[/b]'"),
        (["run", "--stream", "synthetic", "--log", "wandb"], "pip install 'cilbench[logging]'"),
        (["sweep", "--streams", "[bold]x[/]"], "'[bold]x[/]'"),
        (["leaderboard", "add", "[/x].json"], "[/x].json"),
    ],
)
def test_square_brackets_in_messages_are_printed_as_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], expected: str
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails: the install hint
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not rich's MarkupError
    assert expected in " ".join(result.stderr.split())


def test_missing_dataset_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", tmp_path / "nowhere")
    result = _run("--stream", "split-fashion-mnist", "--data-root", str(tmp_path), out=tmp_path)
    assert result.exit_code == 2
    assert "apt-get install dataset-fashion-mnist" in result.stderr


def test_ls_lists_every_kind():
    result = runner.invoke(app, ["ls"])
    assert result.exit_code == 0
    for name in ("nmc", "simplecil", "synthetic", "efficientnet-lite0-pypi", "pipeline"):
        assert name in result.stdout
    assert runner.invoke(app, ["ls", "strategy"]).exit_code == 2


KILL_DURING_EXPERIENCE_3 = """
import os, signal, sys
from pathlib import Path
from cilbench.core.callbacks import RunCallback
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec

class KillDuring(RunCallback):
    def on_experience_start(self, experience):
        if experience.index == 2:
            os.kill(os.getpid(), signal.SIGKILL)

overrides = {"stream.num_classes": "8"}
run(RunSpec(strategy="nmc", stream="synthetic", overrides=overrides, out_dir=Path(sys.argv[1]),
            device="cpu"), callbacks=[KillDuring()])
"""


def test_resume_after_kill_gives_the_uninterrupted_matrix(tmp_path: Path):
    env = {**os.environ, "CILBENCH_CACHE": str(tmp_path / "cache")}
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DURING_EXPERIENCE_3, str(tmp_path / "killed")], env=env
    )
    assert killed.returncode == -9
    (checkpoint,) = (tmp_path / "killed").rglob("checkpoint.safetensors")
    assert not list((tmp_path / "killed").rglob("result.json"))
    args = [*SYNTHETIC, "--strategy", "nmc", "--device", "cpu"]
    resumed = _json(_run(*args, "--resume", out=tmp_path / "killed"))
    uninterrupted = _json(_run(*args, out=tmp_path / "clean"))
    assert resumed["accuracy_matrix"] == uninterrupted["accuracy_matrix"]
    assert len(resumed["accuracy_matrix"]) == 4
    assert not checkpoint.exists()


def test_damaged_checkpoint_is_reported(tmp_path: Path):
    env = {**os.environ, "CILBENCH_CACHE": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-c", KILL_DURING_EXPERIENCE_3, str(tmp_path)], env=env)
    (checkpoint,) = tmp_path.rglob("checkpoint.safetensors")
    checkpoint.write_bytes(checkpoint.read_bytes()[:40])
    result = _run(*SYNTHETIC, "--strategy", "nmc", "--device", "cpu", "--resume", out=tmp_path)
    assert result.exit_code == 2 and "is damaged" in result.stderr

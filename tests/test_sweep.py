"""Sweeps: grid expansion, resumability, and the same metrics on every executor."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cilbench.cli.app import app
from cilbench.core.callbacks import RunCallback
from cilbench.core.errors import ConfigError, RegistryError
from cilbench.core.results import load_result
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec
from cilbench.engine.sweep import (
    LocalExecutor,
    Outcome,
    RayExecutor,
    SlurmExecutor,
    expand_grid,
    make_executor,
    sweep,
)

STREAM = "synthetic"


def _grid(out: Path, strategies: list[str], seeds: list[int]) -> list[RunSpec]:
    base = RunSpec(out_dir=out, overrides={"stream.num_classes": "4"})
    return expand_grid(base, strategies, [STREAM], seeds)


def _by_run(outcomes: list[Outcome]) -> dict[tuple[str, int], Outcome]:
    return {(o.spec.strategy, o.spec.seed): o for o in outcomes}


def _matrices(outcomes: list[Outcome]) -> dict[tuple[str, int], list]:
    assert all(o.status != "failed" for o in outcomes), [o.error for o in outcomes]
    return {
        (o.spec.strategy, o.spec.seed): load_result(o.result_path).accuracy_matrix
        for o in outcomes
        if o.result_path
    }


class _Killed(Exception):
    pass


class _KillAfterFirstExperience(RunCallback):
    """Stops the run right after experience 0 is checkpointed, like a kill would."""

    def on_experience_end(self, experience, accuracies) -> None:
        raise _Killed


def test_grid_is_every_stream_strategy_seed_with_absolute_paths(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    specs = expand_grid(RunSpec(out_dir=Path("runs")), ["nmc", "simplecil"], [STREAM], [0, 1, 2])
    assert [(s.strategy, s.seed) for s in specs] == [
        (strategy, seed) for strategy in ("nmc", "simplecil") for seed in (0, 1, 2)
    ]
    assert all(s.out_dir == tmp_path / "runs" and s.stream == STREAM for s in specs)


def test_bad_names_fail_before_anything_runs(tmp_path: Path):
    with pytest.raises(RegistryError, match="Did you mean 'simplecil'"):
        expand_grid(RunSpec(out_dir=tmp_path), ["simplecl"], [STREAM], [0])
    with pytest.raises(ConfigError, match="Did you mean 'ray'"):
        make_executor("rey")
    with pytest.raises(ConfigError, match="Did you mean 'csv'"):
        list(sweep([], log=["cvs"]))


def test_a_killed_sweep_recomputes_nothing_done(tmp_path: Path):
    specs = _grid(tmp_path / "runs", ["nmc", "simplecil"], [0, 1])
    done = list(sweep(specs[:2]))  # the part of the grid that finished before the kill
    assert [o.status for o in done] == ["ran", "ran"]
    finished = {o.result_path: o.result_path.stat().st_mtime_ns for o in done}
    interrupted = specs[2]  # killed after its first experience: a checkpoint, no result
    with pytest.raises(_Killed):
        run(interrupted, callbacks=[_KillAfterFirstExperience()])

    outcomes = _by_run(list(sweep(specs, log=["csv"])))

    assert {k: o.status for k, o in outcomes.items()} == {
        ("nmc", 0): "skipped",
        ("nmc", 1): "skipped",
        ("simplecil", 0): "resumed",
        ("simplecil", 1): "ran",
    }
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not rewritten
    resumed = outcomes[("simplecil", 0)].result_path
    with (resumed.parent / "logs" / "events.csv").open(newline="") as handle:
        trained = {row["experience"] for row in csv.DictReader(handle)}
    assert trained == {"1"}, "the resumed run repeated experience 0"
    fresh = run(
        RunSpec(**{**vars(interrupted), "out_dir": tmp_path / "fresh"}),
    )
    assert load_result(resumed).accuracy_matrix == fresh.accuracy_matrix
    assert all(o.status == "skipped" for o in sweep(specs))


def test_failed_run_is_reported_and_the_grid_goes_on(tmp_path: Path):
    specs = _grid(tmp_path, ["nmc"], [0])
    bad = RunSpec(**{**vars(specs[0]), "overrides": {"stream.num_classes": "4", "epochs": "1"}})
    outcomes = list(sweep([bad, *specs]))
    assert (
        outcomes[0].status == "failed" and "Unknown strategy 'nmc' config key" in outcomes[0].error
    )
    assert outcomes[1].status == "ran"


def test_cli_sweep_shows_a_table_and_skips_on_rerun(tmp_path: Path):
    args = ["sweep", "--strategies", "nmc", "--streams", STREAM, "--seeds", "0,1", "--workers", "1"]
    args += ["--set", "stream.num_classes=4", "--out", str(tmp_path)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.stdout.count("│ ran ") == 2
    second = CliRunner().invoke(app, args)
    assert second.stdout.count("│ skipped ") == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--strategies", ""], "--strategies is empty"),
        (["--seeds", ""], "--seeds is empty"),
        (["--streams", " , "], "--streams is empty"),
        (["--workers", "-3"], "--workers must be at least 1; got -3"),
        (["--slurm-partition", "gpu"], "--slurm-partition is not used with --executor local"),
        (["--gpus-per-run", "1"], "--gpus-per-run is not used with --executor local"),
        (["--cpus-per-run", "4"], "--cpus-per-run is not used with --executor local"),
        (["--executor", "ray", "--cpus-per-run", "-2"], "--cpus-per-run must be at least 1"),
        (["--executor", "ray", "--workers", "4"], "--workers is not used with --executor ray"),
        (["--executor", "slurm", "--gpus-per-run", "-1"], "--gpus-per-run must be at least 0"),
    ],
)
def test_cli_sweep_refuses_what_it_would_ignore(tmp_path: Path, options: list[str], message: str):
    args = ["sweep", "--strategies", "nmc", "--streams", STREAM, "--seeds", "0", *options]
    outcome = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert outcome.exit_code == 2, outcome.output
    assert message in " ".join(outcome.stderr.split())
    assert not list(tmp_path.iterdir())  # nothing ran


@pytest.mark.slow
def test_process_pool_gives_the_in_process_metrics(tmp_path: Path):
    specs = _grid(tmp_path / "pool", ["nmc", "simplecil"], [0])
    pooled = _matrices(list(LocalExecutor(workers=2).map(specs)))
    inline = _matrices(list(sweep(_grid(tmp_path / "inline", ["nmc", "simplecil"], [0]))))
    assert pooled == inline and len(pooled) == 2


@pytest.mark.slow
def test_ray_local_cluster_gives_the_local_metrics(tmp_path: Path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        grid = ["nmc", "simplecil"], [0, 1]
        remote = _matrices(list(RayExecutor().map(_grid(tmp_path / "ray", *grid))))
    finally:
        ray.shutdown()
    local = _matrices(list(sweep(_grid(tmp_path / "local", *grid))))
    assert remote == local and len(remote) == 4


@pytest.mark.slow
def test_submitit_local_executor_gives_the_local_metrics(tmp_path: Path):
    pytest.importorskip("submitit")
    executor = SlurmExecutor(tmp_path / "submitit", cluster="local", timeout_min=20)
    jobs = _matrices(list(executor.map(_grid(tmp_path / "slurm", ["nmc"], [0, 1]))))
    local = _matrices(list(sweep(_grid(tmp_path / "local", ["nmc"], [0, 1]))))
    assert jobs == local and len(jobs) == 2


KILL_SWEEP_INSIDE_SECOND_RUN = """
import os, signal, sys, threading, time
from pathlib import Path
from cilbench.engine.spec import RunSpec
from cilbench.engine.sweep import expand_grid, sweep

base = RunSpec(stream="synthetic", out_dir=Path(sys.argv[1]))
specs = expand_grid(base, ["finetune"], ["synthetic"], [0, 1, 2])

def kill_when_the_second_run_checkpoints():
    while not list(Path(sys.argv[1]).glob("synthetic/*seed1*/checkpoint.safetensors")):
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)

threading.Thread(target=kill_when_the_second_run_checkpoints, daemon=True).start()
for outcome in sweep(specs):
    pass
"""


@pytest.mark.slow
def test_sweep_killed_with_sigkill_resumes_without_recomputing(tmp_path: Path):
    import subprocess

    out = tmp_path / "runs"
    killed = subprocess.run([sys.executable, "-c", KILL_SWEEP_INSIDE_SECOND_RUN, str(out)])
    assert killed.returncode == -9
    (done,) = out.rglob("result.json")
    mtime = done.stat().st_mtime_ns
    base = RunSpec(stream=STREAM, out_dir=out)
    specs = expand_grid(base, ["finetune"], [STREAM], [0, 1, 2])
    statuses = {o.spec.seed: o.status for o in sweep(specs)}
    assert statuses == {0: "skipped", 1: "resumed", 2: "ran"}
    assert done.stat().st_mtime_ns == mtime


def _death_signal() -> int:
    import ctypes

    signal_number = ctypes.c_int()
    ctypes.CDLL(None).prctl(2, ctypes.byref(signal_number), 0, 0, 0)  # PR_GET_PDEATHSIG
    return signal_number.value


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux only")
def test_pool_workers_end_with_a_killed_sweep():
    """A killed sweep leaves no worker running on, holding cache locks and writing results."""
    import concurrent.futures
    import multiprocessing
    import signal

    from cilbench.engine.sweep import _start_worker

    with concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker, initargs=(1,)
    ) as pool:
        assert pool.submit(_death_signal).result() == signal.SIGTERM
    assert _death_signal() == 0  # this process asked for nothing

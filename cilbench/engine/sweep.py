"""Sweeps: a grid of runs (strategies x streams x seeds) on an execution engine.

Every run is the runner's ordinary run, so a sweep is resumable for free: a run whose result file
exists and is valid is skipped, a run with a checkpoint resumes from it, the rest start. The engines
schedule; cilbench only hands them one function, `run_one`:

- `local`: in this process (`workers=1`) or a pool of spawned worker processes;
- `ray`: one Ray task per run asking for the CPUs/GPUs it needs (`pip install "cilbench[ray]"`);
- `slurm`: one submitit job per run (`pip install "cilbench[slurm]"`); submitit's `local` cluster
  runs the same jobs as local processes, which is how the tests exercise it.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from cilbench.core.errors import ConfigError, CorruptFileError, did_you_mean
from cilbench.core.results import RunResult, load_result
from cilbench.engine.loggers import make_loggers, optional_import
from cilbench.engine.loop import prepare, run
from cilbench.engine.spec import RunSpec, same_run

Status = Literal["skipped", "resumed", "ran", "failed"]


@dataclass(frozen=True)
class Outcome:
    """What happened to one run of the grid; `metrics` are the result's, empty on failure."""

    spec: RunSpec
    status: Status
    run_id: str = ""
    result_path: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    total_seconds: float = 0.0
    error: str = ""


def expand_grid(
    base: RunSpec, strategies: Sequence[str], streams: Sequence[str], seeds: Sequence[int]
) -> list[RunSpec]:
    """One spec per (stream, strategy, seed), names checked first; paths made absolute.

    Absolute paths let worker processes and cluster nodes with another working directory write
    to the same place.
    """
    from cilbench.api import STRATEGIES, STREAMS

    for option, values in (("strategies", strategies), ("streams", streams), ("seeds", seeds)):
        if not values:
            raise ConfigError(f"--{option} is empty: a sweep over no {option} runs nothing.")
    for name in strategies:
        STRATEGIES.get(name)
    for name in streams:
        STREAMS.get(name)
    base = dataclasses.replace(
        base,
        out_dir=base.out_dir.absolute(),
        cache_dir=base.cache_dir.absolute() if base.cache_dir else None,
        data_root=base.data_root.absolute() if base.data_root else None,
    )
    return [
        dataclasses.replace(base, strategy=strategy, stream=stream, seed=seed)
        for stream in streams
        for strategy in strategies
        for seed in seeds
    ]


def run_one(spec: RunSpec, log: Sequence[str] = (), overwrite: bool = False) -> Outcome:
    """Skip a finished run, resume a checkpointed one, or run it; never raise (failures return).

    A finished result of another device type or precision is replaced only with `overwrite`.
    """
    try:
        prepared = prepare(spec)
        result = _finished(prepared.result_path, prepared.config)
        status: Status = "skipped"
        if result is None:
            resume = prepared.checkpoint_path.exists()
            status = "resumed" if resume else "ran"
            result = run(
                spec, resume=resume, overwrite=overwrite and not resume,
                callbacks=make_loggers(log),
            )  # fmt: skip
    except Exception as error:  # one broken run must not stop the grid; its message is shown
        return Outcome(spec, "failed", error=f"{type(error).__name__}: {error}")
    return Outcome(
        spec,
        status,
        result.run_id,
        prepared.result_path,
        dict(result.metrics),
        float(result.cost.get("total_seconds", 0.0)),
    )


def _finished(path: Path, config: dict[str, Any]) -> RunResult | None:
    """The complete, readable result of exactly this configuration at `path`, if there is one."""
    if not path.exists():
        return None
    try:
        result = load_result(path)
    except CorruptFileError:
        return None
    return result if result.complete and same_run(result.config, config) else None


class Executor(Protocol):
    """Runs `run_one` over specs and yields outcomes as runs finish (in any order)."""

    def map(
        self, specs: Sequence[RunSpec], log: Sequence[str] = (), overwrite: bool = False
    ) -> Iterator[Outcome]: ...


@dataclass
class LocalExecutor:
    """`workers` = 1: one run after another in this process; more: spawned worker processes."""

    workers: int = 1

    def map(
        self, specs: Sequence[RunSpec], log: Sequence[str] = (), overwrite: bool = False
    ) -> Iterator[Outcome]:
        if self.workers <= 1:
            yield from (run_one(spec, log, overwrite) for spec in specs)
            return
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(threads,),
        ) as pool:
            futures = [pool.submit(run_one, spec, log, overwrite) for spec in specs]
            for future in concurrent.futures.as_completed(futures):
                yield future.result()


def _start_worker(threads: int) -> None:
    """Share the cores between worker processes instead of oversubscribing them, and end with
    the sweep: a killed sweep must not leave workers that hold cache locks and write results."""
    import torch

    torch.set_num_threads(threads)
    die_with_parent()


PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal a process receives when its parent exits (Linux only)."""


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent exits; elsewhere a no-op."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class RayExecutor:
    """One Ray task per run. `address`: None starts (or reuses) a local Ray, 'auto' or host:port."""

    address: str | None = None
    cpus_per_run: float = 1
    gpus_per_run: float = 0

    def map(
        self, specs: Sequence[RunSpec], log: Sequence[str] = (), overwrite: bool = False
    ) -> Iterator[Outcome]:
        ray = optional_import("ray", "ray")
        if not ray.is_initialized():
            ray.init(address=self.address)
        task = ray.remote(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run)(run_one)
        pending = [task.remote(spec, tuple(log), overwrite) for spec in specs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])


@dataclass
class SlurmExecutor:
    """One submitit job per run; `cluster='local'` runs the jobs as local processes (tests)."""

    folder: Path
    partition: str | None = None
    cpus_per_run: int = 1
    gpus_per_run: int = 0
    timeout_min: int = 24 * 60
    cluster: str | None = None

    def map(
        self, specs: Sequence[RunSpec], log: Sequence[str] = (), overwrite: bool = False
    ) -> Iterator[Outcome]:
        submitit = optional_import("submitit", "slurm")
        executor = submitit.AutoExecutor(folder=str(self.folder), cluster=self.cluster)
        parameters: dict[str, Any] = {
            "timeout_min": self.timeout_min,
            "cpus_per_task": self.cpus_per_run,
            "gpus_per_node": self.gpus_per_run,
        }
        if self.partition:
            parameters["slurm_partition"] = self.partition
        executor.update_parameters(**parameters)
        jobs = [executor.submit(run_one, spec, tuple(log), overwrite) for spec in specs]
        for job in submitit.helpers.as_completed(jobs):
            yield job.result()


def sweep(
    specs: Iterable[RunSpec],
    executor: Executor | None = None,
    log: Sequence[str] = (),
    overwrite: bool = False,
) -> Iterator[Outcome]:
    """Run the grid on `executor` (default: in this process), yielding outcomes as they finish.

    `overwrite` replaces finished results computed on another device type or precision."""
    make_loggers(log)  # unknown or uninstalled loggers fail here, before any run starts
    yield from (executor or LocalExecutor()).map(list(specs), log, overwrite)


EXECUTORS = ("local", "ray", "slurm")
UNUSED_OPTIONS = {
    "local": (
        "--ray-address",
        "--slurm-partition",
        "--slurm-folder",
        "--cpus-per-run",
        "--gpus-per-run",
    ),
    "ray": ("--workers", "--slurm-partition", "--slurm-folder"),
    "slurm": ("--workers", "--ray-address"),
}
"""Command-line options each executor would ignore; given with it, they are refused."""


def make_executor(
    name: str,
    *,
    workers: int = 2,
    ray_address: str | None = None,
    slurm_partition: str | None = None,
    slurm_folder: Path = Path("runs/submitit"),
    cpus_per_run: int = 1,
    gpus_per_run: int = 0,
) -> Executor:
    """The executor called `name` on the command line; counts checked before anything starts."""
    _check_counts(
        workers=(workers, 1), cpus_per_run=(cpus_per_run, 1), gpus_per_run=(gpus_per_run, 0)
    )
    if name == "local":
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(ray_address, cpus_per_run, gpus_per_run)
    if name == "slurm":
        return SlurmExecutor(slurm_folder.absolute(), slurm_partition, cpus_per_run, gpus_per_run)
    raise ConfigError(
        f"Unknown executor {name!r}.{did_you_mean(name, EXECUTORS)} "
        f"Choose from {', '.join(EXECUTORS)}."
    )


def _check_counts(**counts: tuple[int, int]) -> None:
    """Refuse a count (value, least allowed) below its minimum, naming the option."""
    for key, (value, least) in counts.items():
        if value < least:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least {least}; got {value}.")

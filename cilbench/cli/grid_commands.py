"""`cilbench sweep` (a grid of runs) and `cilbench leaderboard add|build` (published boards)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cilbench.cli import console
from cilbench.cli.options import (
    BackboneOpt,
    BatchOpt,
    CacheOpt,
    CompileOpt,
    DataRootOpt,
    DecodeOpt,
    DeviceOpt,
    LogOpt,
    OutOpt,
    PrecisionOpt,
    SetOpt,
    spec_from_options,
)


@console.user_errors
def sweep_command(
    context: typer.Context,
    strategies: Annotated[str, typer.Option(help="Comma-separated strategy names.")] = "nmc",
    streams: Annotated[str, typer.Option(help="Comma-separated stream names.")] = (
        "split-fashion-mnist-mini"
    ),
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2",
    backbone: BackboneOpt = None,
    assignments: SetOpt = None,
    data_root: DataRootOpt = None,
    out: OutOpt = Path("runs"),
    cache_dir: CacheOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    compile_models: CompileOpt = False,
    decode: DecodeOpt = "cpu",
    batch_size: BatchOpt = 128,
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace finished results computed on another device type or precision."),
    ] = False,
    executor: Annotated[str, typer.Option(help="local, ray or slurm.")] = "local",
    workers: Annotated[int, typer.Option(help="local: worker processes (1 = in-process).")] = 2,
    ray_address: Annotated[
        str | None, typer.Option(help="ray: 'auto', HOST:PORT, or none for a local Ray.")
    ] = None,
    slurm_partition: Annotated[str | None, typer.Option(help="slurm: partition.")] = None,
    slurm_folder: Annotated[Path, typer.Option(help="slurm: submitit log folder.")] = Path(
        "runs/submitit"
    ),
    cpus_per_run: Annotated[int, typer.Option(help="ray/slurm: CPUs each run asks for.")] = 1,
    gpus_per_run: Annotated[int, typer.Option(help="ray/slurm: GPUs each run asks for.")] = 0,
    log: LogOpt = None,
    grid: Annotated[
        Path | None,
        typer.Option(help="A grid file (leaderboards/paper-grid.toml): runs and seeds from it."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="List the runs and estimate GPU-hours; run nothing.")
    ] = False,
) -> None:
    """Run a grid of (strategy, stream, seed); finished runs are skipped, killed ones resume."""
    from cilbench.core.paths import default_cache_dir
    from cilbench.engine.sweep import UNUSED_OPTIONS, expand_grid, make_executor, sweep

    where = f"with --executor {executor}"
    console.refuse_given(context, UNUSED_OPTIONS.get(executor, ()), where)

    base = spec_from_options(
        "nmc", "synthetic", backbone, 0, assignments, data_root, device, batch_size,
        out_dir=out, cache_dir=cache_dir or default_cache_dir(), precision=precision,
        compile=compile_models, decode=decode,
    )  # fmt: skip
    if grid is not None:
        from cilbench.engine.paper_grid import grid_specs, load_grid

        console.refuse_given(context, ("--strategies", "--streams", "--seeds"), "with --grid")
        specs = grid_specs(load_grid(grid), base)
    else:
        specs = expand_grid(base, _names(strategies), _names(streams), _seeds(seeds))
    if dry_run:
        _show_estimate(specs)
        return
    engine = make_executor(
        executor, workers=workers, ray_address=ray_address, slurm_partition=slurm_partition,
        slurm_folder=slurm_folder, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
    )  # fmt: skip
    failed = _show_sweep(sweep(specs, engine, log or [], overwrite), len(specs))
    if failed:
        console.stderr.print(f"[bold red]{failed} of {len(specs)} runs failed[/]")
        raise typer.Exit(1)


def _show_estimate(specs: Any) -> None:
    """The runs of a grid, grouped over seeds, with FLOPs and GPU-hours, then the assumptions."""
    from cilbench.cli.tables import show_table
    from cilbench.engine.paper_grid import assumptions, estimate

    estimates = estimate(specs)
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for e in estimates:
        sets = " ".join(f"{k}={v}" for k, v in sorted(e.spec.overrides.items()))
        key = (e.spec.stream, e.spec.strategy, sets, e.backbone, e.image_size)
        groups.setdefault(key, []).append(e)
    columns = ["stream", "strategy", "settings", "backbone", "px", "seeds", "GFLOP/img", "epochs"]
    columns += ["GPU-h / run", "GPU-h"]
    rows = [
        [
            str(stream),
            strategy,
            sets or "–",
            backbone,
            str(size),
            ",".join(str(e.spec.seed) for e in group),
            f"{group[0].gflops_per_image:.1f}",
            str(group[0].epochs),
            f"{group[0].gpu_hours:.3f}",
            f"{sum(e.gpu_hours for e in group):.3f}",
        ]
        for (stream, strategy, sets, backbone, size), group in groups.items()
    ]
    numbers = ["px", "GFLOP/img", "epochs", "GPU-h / run", "GPU-h"]
    show_table(console.stdout, f"dry run: {len(estimates)} runs", columns, rows, numbers)
    total = sum(e.gpu_hours for e in estimates)
    console.stdout.print(
        f"total: {len(estimates)} runs, {total:.1f} GPU-hours", highlight=False, soft_wrap=True
    )
    for line in assumptions():
        console.stdout.print(f"- {escape(line)}", highlight=False, soft_wrap=True)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _seeds(text: str) -> list[int]:
    from cilbench.core.config import coerce

    return coerce(text, list[int], key="seeds", what="--seeds")


def _show_sweep(outcomes: Any, total: int) -> int:
    """A live table, one row per finished run; returns how many failed."""
    from rich.live import Live

    table = Table(title=f"sweep: {total} runs")
    for column in ("stream", "strategy", "seed", "status", "final acc", "avg inc acc", "time (s)"):
        table.add_column(column, justify="right" if column[0] in "fat" else "left")
    failed = 0
    with Live(table, console=console.stdout, refresh_per_second=4):
        for outcome in outcomes:
            spec, m = outcome.spec, outcome.metrics
            failed += outcome.status == "failed"
            numbers = (
                [f"{m['final_accuracy']:.2f}", f"{m['average_accuracy']:.2f}"] if m else ["", ""]
            )
            status = escape(outcome.error) if outcome.error else outcome.status
            table.add_row(
                spec.stream, spec.strategy, str(spec.seed), status, *numbers,
                f"{outcome.total_seconds:.1f}",
            )  # fmt: skip
    return failed


leaderboard_app = typer.Typer(
    help="Validate results onto boards and generate the leaderboard pages.", no_args_is_help=True
)
BoardRootOpt = Annotated[Path, typer.Option("--root", help="The leaderboards folder.")]


@leaderboard_app.command("add")
@console.user_errors
def leaderboard_add(
    results: Annotated[list[Path], typer.Argument(help="Result JSON files.")],
    root: BoardRootOpt = Path("leaderboards"),
    replace: Annotated[bool, typer.Option(help="Replace a stored result of this run id.")] = False,
) -> None:
    """Validate results (schema, stream version, strategy, complete matrix, protocol) and store."""
    from cilbench.boards.leaderboard import add, board_files
    from cilbench.boards.training_checks import did_not_train
    from cilbench.core.results import load_result

    stored = add(results, root, replace)
    for path in stored:
        console.stdout.print(f"stored {path}", soft_wrap=True)
    for path in stored:
        board = [load_result(p) for p in board_files(root, path.parent.name)]
        reasons = did_not_train(load_result(path), board)
        if reasons:
            console.stdout.print(
                f"[bold yellow]did not train:[/] {path.name}: {'; '.join(reasons)} "
                "(the board flags its row)",
                soft_wrap=True,
                highlight=False,
            )
    console.stdout.print("Now run `cilbench leaderboard build`.")


@leaderboard_app.command("build")
@console.user_errors
def leaderboard_build(
    root: BoardRootOpt = Path("leaderboards"),
    check: Annotated[
        bool, typer.Option(help="Write nothing; exit 1 when a generated file is stale.")
    ] = False,
) -> None:
    """Recompute every metric from the stored matrices and write README.md, tables, CSVs, plots."""
    from cilbench.boards.pages import build, stale

    if check:
        outdated = stale(root)
        for path in outdated:
            console.stderr.print(f"stale: {path}")
        if outdated:
            console.stderr.print("Run `cilbench leaderboard build` and commit the result.")
            raise typer.Exit(1)
        console.stdout.print("leaderboard pages are up to date")
        return
    for path in build(root):
        console.stdout.print(f"wrote {path}", soft_wrap=True)

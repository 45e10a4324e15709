"""The `cilbench` command line: run, ls, recipes, profile.

Errors the user can fix (unknown names, bad settings, missing data, damaged files) are printed as
one message without a traceback and exit with status 2.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shlex
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from cilbench.data_commands import data_app
from cilbench.errors import CilbenchError

app = typer.Typer(
    help="Class-incremental learning benchmarks on pre-trained models.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
stdout = Console()
stderr = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(command: F) -> F:
    """Print CilbenchError messages cleanly and exit 2 instead of showing a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(
            level=logging.WARNING, handlers=[RichHandler(console=stderr)], format="%(message)s"
        )
        try:
            return command(*args, **kwargs)
        except CilbenchError as error:
            stderr.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


StrategyOpt = Annotated[str, typer.Option("--strategy", "-s", help="Registered strategy name.")]
StreamOpt = Annotated[str, typer.Option("--stream", "-t", help="Registered stream name.")]
BackboneOpt = Annotated[
    str | None,
    typer.Option(help="Preset or exact timm weight tag; default: the stream's backbone."),
]
SeedOpt = Annotated[int, typer.Option(help="Seed for every random choice of the strategy.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="key=value; strategy keys, stream.<option>, backbone.<setting>. Repeatable."
    ),
]
DataRootOpt = Annotated[
    Path | None, typer.Option(envvar="CILBENCH_DATA", help="Where data sets live.")
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")]
BatchOpt = Annotated[int, typer.Option(help="Batch size for feature extraction and evaluation.")]
LogOpt = Annotated[
    list[str] | None,
    typer.Option("--log", help="Live logging: tensorboard, wandb, csv (repeatable) to <run>/logs."),
]
OutOpt = Annotated[Path, typer.Option(help="Results go to OUT/<stream>/<run>/.")]
CacheOpt = Annotated[
    Path | None, typer.Option(envvar="CILBENCH_CACHE", help="Feature cache folder.")
]


def _spec(
    strategy: str,
    stream: str,
    backbone: str | None,
    seed: int,
    assignments: list[str] | None,
    data_root: Path | None,
    device: str,
    batch_size: int,
    **extra: Any,
) -> Any:
    from cilbench.config import check, parse_assignments
    from cilbench.runner import RunSpec

    spec = RunSpec(
        strategy=strategy,
        stream=stream,
        backbone=backbone,
        seed=seed,
        overrides=parse_assignments(assignments or []),
        data_root=data_root,
        device=device,
        batch_size=batch_size,
        **extra,
    )
    return check(spec, what="run option")  # profiles that never call prepare() check it too


@app.command("run")
@user_errors
def run_command(
    context: typer.Context,
    strategy: StrategyOpt = "nmc",
    stream: StreamOpt = "split-fashion-mnist-mini",
    backbone: BackboneOpt = None,
    seed: SeedOpt = 0,
    assignments: SetOpt = None,
    data_root: DataRootOpt = None,
    out: Annotated[Path, typer.Option(help="Results go to OUT/<stream>/<run>/.")] = Path("runs"),
    cache_dir: Annotated[
        Path | None, typer.Option(envvar="CILBENCH_CACHE", help="Feature cache folder.")
    ] = None,
    no_cache: Annotated[bool, typer.Option(help="Do not read or write the feature cache.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Start over, deleting an unfinished run's checkpoint.")
    ] = False,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 128,
    workers: Annotated[
        int | None,
        typer.Option(help="Data-loader processes (default: one per core for image files)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result JSON only.")] = False,
    log: LogOpt = None,
    replay: Annotated[
        Path | None,
        typer.Option("--from", help="Replay a result file's resolved config; compare metrics."),
    ] = None,
) -> None:
    """Run a strategy over a stream (no options: the offline demo) and write a result JSON."""
    from cilbench.callbacks import ConsoleLog, RichProgress
    from cilbench.features import default_cache_dir
    from cilbench.loggers import make_loggers
    from cilbench.runner import run

    if no_cache and cache_dir is not None:
        _refuse_given(context, ("--cache-dir",), "with --no-cache")
    spec = _spec(
        strategy, stream, backbone, seed, assignments, data_root, device, batch_size,
        out_dir=out, cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
        num_workers=workers,
    )  # fmt: skip
    if replay is not None:
        from cilbench.leaderboard import replay_spec

        stored, spec = replay_spec(replay, spec)
    callbacks = ([] if as_json else [ConsoleLog(stderr)]) + make_loggers(log or [])
    with _interrupts_say_how_to_resume():
        result = run(
            spec,
            resume=resume,
            overwrite=overwrite,
            progress=RichProgress(stderr),
            callbacks=callbacks,
        )
    if as_json:
        print(result.to_json())
    else:
        _print_summary(result, out / result.run_id / "result.json")
    if replay is not None:
        _report_replay(stored, result)


def _report_replay(stored: Any, result: Any) -> None:
    from cilbench.leaderboard import compare_runs

    same, message = compare_runs(stored, result)
    stderr.print(f"[bold {'green' if same else 'red'}]replay:[/] {message}", highlight=False)
    if not same:
        raise typer.Exit(1)


@contextmanager
def _interrupts_say_how_to_resume() -> Iterator[None]:
    """Ctrl-C or SIGTERM stop the run with the command that continues it, exit 128 + signal.

    Every finished experience is already checkpointed (atomically), so nothing is lost.
    """

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except KeyboardInterrupt as interrupt:
        name = "SIGTERM" if str(interrupt) == "SIGTERM" else "SIGINT"
        kept = [a for a in sys.argv[1:] if a not in ("--overwrite", "--resume")]
        command = shlex.join(["cilbench", *kept, "--resume"])
        stderr.print(
            f"[bold red]interrupted[/] ({name}): the experiences finished so far are "
            f"checkpointed. Continue with:\n  {escape(command)}",
            highlight=False,
        )
        raise typer.Exit(128 + getattr(signal, name)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_summary(result: Any, path: Path) -> None:
    matrix = Table(title="Accuracy matrix (%): row = after experience t, column = test set j")
    matrix.add_column("t", justify="right")
    for j in range(len(result.test_sizes)):
        matrix.add_column(str(j), justify="right")
    for t, row in enumerate(result.accuracy_matrix):
        matrix.add_row(str(t), *("" if a is None else f"{a:.1f}" for a in row))
    stdout.print(matrix)
    metrics = Table(title=f"{result.config['strategy']} on {result.config['stream']}")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    m = result.metrics
    for name, key in [
        ("final accuracy (sample-weighted)", "final_accuracy"),
        ("final accuracy (task-averaged)", "final_accuracy_task_averaged"),
        ("average incremental accuracy", "average_accuracy"),
        ("average incremental accuracy (task-averaged)", "average_accuracy_task_averaged"),
        ("forgetting (Chaudhry)", "forgetting"),
        ("backward transfer", "backward_transfer"),
    ]:
        metrics.add_row(name, "n/a" if m[key] is None else f"{m[key]:.2f}")
    source = result.recipe.get("source")
    where = f" ({source['repo']} {source['file']})" if source else ""
    metrics.add_row("recipe", escape(f"{result.recipe.get('name', '')}{where}"))
    cost = result.cost
    metrics.add_row("wall time (s)", f"{cost['total_seconds']:.1f}")
    metrics.add_row("backbone images forwarded", str(cost["images_forwarded"]))
    metrics.add_row("peak memory (MiB)", f"{cost['peak_memory_mib']:.0f}")
    metrics.add_row("trainable parameters", str(cost["trainable_parameters"]))
    stdout.print(metrics)
    stdout.print(f"result: {path}")


@app.command("sweep")
@user_errors
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
    batch_size: BatchOpt = 128,
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
) -> None:
    """Run a grid of (strategy, stream, seed); finished runs are skipped, killed ones resume."""
    from cilbench.features import default_cache_dir
    from cilbench.sweep import UNUSED_OPTIONS, expand_grid, make_executor, sweep

    _refuse_given(context, UNUSED_OPTIONS.get(executor, ()), f"with --executor {executor}")
    base = _spec(
        "nmc", "synthetic", backbone, 0, assignments, data_root, device, batch_size,
        out_dir=out, cache_dir=cache_dir or default_cache_dir(),
    )  # fmt: skip
    specs = expand_grid(base, _names(strategies), _names(streams), _seeds(seeds))
    engine = make_executor(
        executor, workers=workers, ray_address=ray_address, slurm_partition=slurm_partition,
        slurm_folder=slurm_folder, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
    )  # fmt: skip
    failed = _show_sweep(sweep(specs, engine, log or []), len(specs))
    if failed:
        stderr.print(f"[bold red]{failed} of {len(specs)} runs failed[/]")
        raise typer.Exit(1)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _seeds(text: str) -> list[int]:
    from cilbench.config import coerce

    return coerce(text, list[int], key="seeds", what="--seeds")


def _show_sweep(outcomes: Any, total: int) -> int:
    """A live table, one row per finished run; returns how many failed."""
    from rich.live import Live

    table = Table(title=f"sweep: {total} runs")
    for column in ("stream", "strategy", "seed", "status", "final acc", "avg inc acc", "time (s)"):
        table.add_column(column, justify="right" if column[0] in "fat" else "left")
    failed = 0
    with Live(table, console=stdout, refresh_per_second=4):
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
app.add_typer(leaderboard_app, name="leaderboard")
BoardRootOpt = Annotated[Path, typer.Option("--root", help="The leaderboards folder.")]


@leaderboard_app.command("add")
@user_errors
def leaderboard_add(
    results: Annotated[list[Path], typer.Argument(help="Result JSON files.")],
    root: BoardRootOpt = Path("leaderboards"),
    replace: Annotated[bool, typer.Option(help="Replace a stored result of this run id.")] = False,
) -> None:
    """Validate results (schema, stream version, strategy, complete matrix, protocol) and store."""
    from cilbench.leaderboard import add

    for path in add(results, root, replace):
        stdout.print(f"stored {path}", soft_wrap=True)
    stdout.print("Now run `cilbench leaderboard build`.")


@leaderboard_app.command("build")
@user_errors
def leaderboard_build(
    root: BoardRootOpt = Path("leaderboards"),
    check: Annotated[
        bool, typer.Option(help="Write nothing; exit 1 when a generated file is stale.")
    ] = False,
) -> None:
    """Recompute every metric from the stored matrices and write README.md, tables, CSVs, plots."""
    from cilbench.leaderboard_pages import build, stale

    if check:
        outdated = stale(root)
        for path in outdated:
            stderr.print(f"stale: {path}")
        if outdated:
            stderr.print("Run `cilbench leaderboard build` and commit the result.")
            raise typer.Exit(1)
        stdout.print("leaderboard pages are up to date")
        return
    for path in build(root):
        stdout.print(f"wrote {path}", soft_wrap=True)


@app.command("ls")
@user_errors
def ls_command(
    what: Annotated[str, typer.Argument(help="strategies, streams, backbones or profiles")] = "all",
) -> None:
    """List registered strategies, streams, backbone presets and profiles."""
    from cilbench.api import STRATEGIES, STREAMS
    from cilbench.backbones import BACKBONES
    from cilbench.errors import ConfigError, did_you_mean
    from cilbench.profiles import PROFILES
    from cilbench.registry import Registry

    kinds: dict[str, Registry[Any]] = {
        "strategies": STRATEGIES,
        "streams": STREAMS,
        "backbones": BACKBONES,
        "profiles": PROFILES,
    }
    if what != "all" and what not in kinds:
        raise ConfigError(
            f"Cannot list {what!r}.{did_you_mean(what, kinds)} Choose one of {', '.join(kinds)}."
        )
    for kind, registry in kinds.items():
        if what not in ("all", kind):
            continue
        table = Table(title=kind)
        table.add_column("name")
        table.add_column("description")
        for name in registry.names():
            table.add_row(name, escape(_first_line(registry.get(name))))
        stdout.print(table)
    if what in ("all", "backbones"):
        stdout.print(
            "Any exact timm weight tag also works, e.g. vit_base_patch16_224.augreg_in21k."
        )


def _first_line(obj: Any) -> str:
    text = getattr(obj, "description", "") or (obj.__doc__ or "")
    return text.strip().splitlines()[0] if text.strip() else ""


@app.command("recipes")
@user_errors
def recipes_command(
    strategy: Annotated[str | None, typer.Argument(help="Strategy; default: every one.")] = None,
    stream: Annotated[
        str | None,
        typer.Option(
            "--stream", "-t", help="Only this stream (one without recipes: the fallback)."
        ),
    ] = None,
    every_field: Annotated[
        bool, typer.Option("--all", help="Every Config field, defaults marked with a dot.")
    ] = False,
) -> None:
    """Print reference recipes: each (strategy, stream, variant)'s settings and their source."""
    from cilbench.api import STRATEGIES
    from cilbench.recipes import view_recipes

    for name in [strategy] if strategy else STRATEGIES.names():
        cls = STRATEGIES.get(name)
        for stream_name in [stream] if stream else list(getattr(cls, "recipes", {})):
            origin, fallback, views = view_recipes(name, stream_name, every_field)
            title = f"{name} on {stream_name}" + (f" (recipes of {origin})" if fallback else "")
            table = Table(title=escape(title), show_lines=True)
            for column in ("recipe", "variant", "settings", "backbone", "augmentation", "source"):
                table.add_column(column, overflow="fold")
            for view in views:
                table.add_row(
                    view.name,
                    view.variant,
                    escape("\n".join(view.settings)),
                    escape("\n".join(view.backbone)),
                    escape(view.augmentation),
                    escape("\n".join(view.source)),
                )
            stdout.print(table)
            if fallback:
                stdout.print(f"[yellow]{escape(fallback)}[/]")
            elif not views:
                stdout.print(f"{escape(name)} has no recipes: it runs with its Config defaults.")


@app.command("profile")
@user_errors
def profile_command(
    context: typer.Context,
    name: Annotated[str, typer.Argument(help="Which benchmark (see `cilbench ls profiles`).")] = (
        "pipeline"
    ),
    strategy: StrategyOpt = "nmc",
    stream: StreamOpt = "split-fashion-mnist-mini",
    backbone: BackboneOpt = None,
    assignments: SetOpt = None,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 128,
    workers: Annotated[
        int | None, typer.Option(help="Data-loader processes (default: one per core).")
    ] = None,
    synthetic_jpegs: Annotated[
        int,
        typer.Option(
            help="First write N photo-like JPEGs in the file-based stream's layout under "
            "--data-root (a temporary folder if not given) and profile on them."
        ),
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print figures as JSON.")] = False,
) -> None:
    """Measure costs side by side in one run (default: bare forward vs cold vs warm cache)."""
    from cilbench.profiles import IGNORED_OPTIONS, PROFILES
    from cilbench.profiles.fixtures import synthetic_data_root

    profile = PROFILES.get(name)
    _refuse_given(context, IGNORED_OPTIONS[name], f"by `profile {name}`")
    with contextlib.ExitStack() as stack:
        if synthetic_jpegs > 0:
            root = synthetic_data_root(stream, data_root, synthetic_jpegs)
            data_root = stack.enter_context(root)
        spec = _spec(
            strategy, stream, backbone, 0, assignments, data_root, device, batch_size,
            num_workers=workers,
        )  # fmt: skip
        figures = profile(spec)
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    table = Table(title=f"cilbench profile {name}")
    table.add_column("measurement")
    table.add_column("figure", justify="right")
    for label, value in figures.items():
        table.add_row(label, str(value))
    stdout.print(table)


def _refuse_given(context: typer.Context, options: tuple[str, ...], where: str) -> None:
    """Refuse options typed on the command line that would be ignored `where`, not drop them."""
    from cilbench.errors import ConfigError

    for param in context.command.params:
        source = context.get_parameter_source(param.name or "")
        if getattr(source, "name", None) == "COMMANDLINE" and set(param.opts) & set(options):
            raise ConfigError(
                f"Option {param.opts[0]} is not used {where} (it is fixed or ignored there); "
                "remove it."
            )


if __name__ == "__main__":
    app()

"""`cilbench run`: one run (or the replay of a stored result), its progress and its summary."""

from __future__ import annotations

import shlex
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

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
    PrecisionOpt,
    SeedOpt,
    SetOpt,
    StrategyOpt,
    StreamOpt,
    folder_given,
    spec_from_options,
)
from cilbench.cli.tables import show_table


@console.user_errors
def run_command(
    context: typer.Context,
    strategy: StrategyOpt = "nmc",
    stream: StreamOpt = "split-fashion-mnist-mini",
    backbone: BackboneOpt = None,
    seed: SeedOpt = 0,
    assignments: SetOpt = None,
    data_root: DataRootOpt = None,
    out: Annotated[
        Path, typer.Option(help="Results go to OUT/<stream>/<run>/.", callback=folder_given)
    ] = Path("runs"),
    cache_dir: CacheOpt = None,
    no_cache: Annotated[
        bool,
        typer.Option(
            help="Do not read or write the feature cache. Decoded images and converted weights "
            "(DINOv2) are still cached in the cache folder."
        ),
    ] = False,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Start over, deleting an unfinished run's checkpoint or replacing a finished "
            "result computed on another device type or precision."
        ),
    ] = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    compile_models: CompileOpt = False,
    decode: DecodeOpt = "cpu",
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
    from cilbench.core.callbacks import ConsoleLog, RichProgress
    from cilbench.core.paths import default_cache_dir
    from cilbench.engine.loggers import make_loggers
    from cilbench.engine.loop import run

    if no_cache and cache_dir is not None:
        console.refuse_given(context, ("--cache-dir",), "with --no-cache")
    spec = spec_from_options(
        strategy, stream, backbone, seed, assignments, data_root, device, batch_size,
        out_dir=out, cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
        num_workers=workers, precision=precision, compile=compile_models, decode=decode,
    )  # fmt: skip
    if replay is not None:
        stored, spec = _replayspec_from_options(context, replay, spec)
    callbacks = ([] if as_json else [ConsoleLog(console.stderr)]) + make_loggers(log or [])
    with _interrupts_say_how_to_resume():
        result = run(
            spec,
            resume=resume,
            overwrite=overwrite,
            progress=RichProgress(console.stderr),
            callbacks=callbacks,
        )
    if as_json:
        print(result.to_json())
    else:
        _print_summary(result, out / result.run_id / "result.json")
    if replay is not None:
        _report_replay(stored, result, replay)


def _replayspec_from_options(context: typer.Context, path: Path, given: Any) -> tuple[Any, Any]:
    """The stored result and the spec that replays its record (paths and device from `given`)."""
    from cilbench.core.result_schema import check_replay_config
    from cilbench.core.results import load_result
    from cilbench.engine.spec import RunSpec

    fixed = (
        "--strategy", "--stream", "--backbone", "--seed", "--set", "--batch-size", "--precision",
        "--decode",
    )  # fmt: skip
    console.refuse_given(context, fixed, "with --from (the result file fixes them)")
    stored = load_result(path)
    check_replay_config(stored.config, str(path))
    spec = RunSpec.from_record(
        stored.config,
        data_root=given.data_root,
        out_dir=given.out_dir,
        cache_dir=given.cache_dir,
        device=given.device,
        num_workers=given.num_workers,
        compile=given.compile,
    )
    return stored, spec


def _board_of(path: Path, stored: Any) -> list[Any]:
    """The results of the board the stored file sits on (`<root>/<stream>/<file>.json`), else []."""
    from cilbench.boards.leaderboard import board_files
    from cilbench.core.errors import CilbenchError
    from cilbench.core.results import load_result

    folder = path.resolve().parent
    if folder.name != stored.stream.get("name"):
        return []
    try:
        return [load_result(p) for p in board_files(folder.parent, folder.name)]
    except CilbenchError:
        return []


def _report_replay(stored: Any, result: Any, path: Path) -> None:
    from cilbench.boards.replay import compare_runs

    same, message = compare_runs(stored, result, _board_of(path, stored))
    console.stderr.print(
        f"[bold {'green' if same else 'red'}]replay:[/] {escape(message)}", highlight=False
    )
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
        console.stderr.print(
            f"[bold red]interrupted[/] ({name}): the experiences finished so far are "
            f"checkpointed. Continue with:\n  {escape(command)}",
            highlight=False,
        )
        raise typer.Exit(128 + getattr(signal, name)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_summary(result: Any, path: Path) -> None:
    columns = ["t", *(str(j) for j in range(len(result.test_sizes)))]
    rows = [
        [str(t), *("" if a is None else f"{a:.1f}" for a in row)]
        for t, row in enumerate(result.accuracy_matrix)
    ]
    title = "Accuracy matrix (%): row = after experience t, column = test set j"
    show_table(console.stdout, title, columns, rows, right_aligned=columns)
    m, cost = result.metrics, result.cost
    figures = [
        [name, "n/a" if m[key] is None else f"{m[key]:.2f}"]
        for name, key in [
            ("final accuracy (sample-weighted)", "final_accuracy"),
            ("final accuracy (task-averaged)", "final_accuracy_task_averaged"),
            ("average incremental accuracy", "average_accuracy"),
            ("average incremental accuracy (task-averaged)", "average_accuracy_task_averaged"),
            ("forgetting (Chaudhry)", "forgetting"),
            ("backward transfer", "backward_transfer"),
        ]
    ]
    source = result.recipe.get("source")
    where = f" ({source['repo']} {source['file']})" if source else ""
    figures += [
        ["recipe", f"{result.recipe.get('name', '')}{where}"],
        ["wall time (s)", f"{cost['total_seconds']:.1f}"],
        ["backbone images forwarded", str(cost["images_forwarded"])],
        ["peak memory (MiB)", f"{cost['peak_memory_mib']:.0f}"],
        ["trainable parameters", str(cost["trainable_parameters"])],
    ]
    title = f"{result.config['strategy']} on {result.config['stream']}"
    show_table(console.stdout, title, ["metric", "value"], figures, right_aligned=["value"])
    console.stdout.print(f"result: {escape(str(path))}", soft_wrap=True, highlight=False)

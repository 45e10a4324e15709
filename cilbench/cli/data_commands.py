"""`cilbench data fetch|check|decode <stream>`: get a data set onto disk, verify it, pre-decode it.

`fetch` downloads (resumable, md5-verified against the authors' checksums), unpacks and records a
checksum manifest where a public URL exists, and otherwise prints what to get and where to put
it. `check` prints a table (layout, images per split, checksums against the manifest) and exits
with status 2 naming the problem when anything is wrong. `decode` builds the decoded-image cache
(cilbench/data/decoded_cache.py) with a progress bar; a run with `--set stream.decoded_size=N` would
otherwise build it silently on first use. The cache lives under $CILBENCH_CACHE (default
~/.cache/cilbench), whatever `run --cache-dir` says: stream builders only see the environment.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from cilbench.cli.options import CacheOpt, SetOpt, folder_given
from cilbench.core.errors import DataError
from cilbench.core.paths import default_data_root
from cilbench.data.downloads import DataSet

data_app = typer.Typer(help="Download and verify data sets.", no_args_is_help=True)

F = TypeVar("F", bound=Callable[..., Any])

StreamArg = Annotated[str, typer.Argument(help="Registered stream name, e.g. split-imagenet-r.")]
RootOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="CILBENCH_DATA",
        help="Data folder (default: $CILBENCH_DATA or ./data).",
        callback=folder_given,
    ),
]


def _user_errors(command: F) -> F:
    """The CLI's clean error handling (message, exit 2), imported when the command runs."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cilbench.cli.console import user_errors

        return user_errors(command)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _data_set(stream: str) -> DataSet:
    from cilbench.api import STREAMS

    builder = STREAMS.get(stream)()
    if not isinstance(builder, DataSet):
        with_data = [n for n in STREAMS.names() if isinstance(STREAMS.get(n)(), DataSet)]
        raise DataError(
            f"Stream {stream!r} has no data files to fetch or check. "
            f"Streams with data files: {', '.join(with_data)}."
        )
    return builder


@data_app.command("fetch")
@_user_errors
def fetch_command(stream: StreamArg, root: RootOpt = None) -> None:
    """Download, verify and unpack a stream's data (or say how to obtain it)."""
    from cilbench.cli.console import stderr, stdout
    from cilbench.core.callbacks import RichProgress

    for message in _data_set(stream).fetch(root or default_data_root(), RichProgress(stderr)):
        stdout.print(message, highlight=False)


@data_app.command("check")
@_user_errors
def check_command(
    stream: StreamArg,
    root: RootOpt = None,
    record: Annotated[
        bool, typer.Option(help="First record checksums of the files as they are now.")
    ] = False,
) -> None:
    """Verify layout, counts per split and checksums; a table, exit 2 on any problem."""
    from cilbench.cli.console import stderr, stdout
    from cilbench.cli.tables import show_table
    from cilbench.core.callbacks import RichProgress

    root = root or default_data_root()
    rows = _data_set(stream).check(root, RichProgress(stderr), record=record)
    show_table(
        stdout,
        f"{stream} under {root}",
        ["check", "found", "expected", "", "note"],
        [[r.item, r.found, r.expected, "ok" if r.ok else "FAIL", r.note] for r in rows],
    )
    failed = [row for row in rows if not row.ok]
    if failed:
        problems = "; ".join(f"{r.item}: {r.note or r.found}" for r in failed[:5])
        more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
        raise DataError(f"{stream} data under {root} failed {len(failed)} checks: {problems}{more}")
    stdout.print(f"{stream}: all checks passed.")


@data_app.command("decode")
@_user_errors
def decode_command(
    stream: StreamArg,
    size: Annotated[int, typer.Option(help="Side of the stored centre squares, in pixels.")] = 256,
    root: RootOpt = None,
    cache_dir: CacheOpt = None,
    set_: SetOpt = None,
) -> None:
    """Build a stream's decoded-image cache now, with a progress bar (runs then reuse it).
    `--set stream.<option>=v` picks the images as a run with the same setting would
    (`stream.split=seeded`)."""
    from cilbench.api import STREAMS
    from cilbench.cli.console import stderr, stdout
    from cilbench.core.callbacks import RichProgress
    from cilbench.core.config import Positive, check_value, parse_assignments, resolve
    from cilbench.core.paths import default_cache_dir
    from cilbench.data.decoded_cache import DecodedSource

    check_value(size, Positive(), key="--size", what="data decode option")
    options = parse_assignments(set_ or [])
    if wrong := [k for k in options if not k.startswith("stream.")]:
        raise DataError(f"data decode takes only stream.<option> settings; got {', '.join(wrong)}.")
    builder = resolve(STREAMS.get(stream), {k[len("stream.") :]: v for k, v in options.items()})
    if "decoded_size" not in builder.options():
        raise DataError(f"Stream {stream!r} has no decoded cache (no option decoded_size).")
    folder = cache_dir or default_cache_dir()
    built = builder.build(root or default_data_root())
    views = [e.train for e in built] + list(built.test_sets)
    sources = {view.source.fingerprint: view.source for view in views}
    for source in sources.values():
        DecodedSource(source, size, folder, RichProgress(stderr))
    stdout.print(
        f"{stream}: decoded cache of {sum(len(s) for s in sources.values())} images ready under "
        f"{folder / 'decoded'}. Use it with --set stream.decoded_size={size}."
    )

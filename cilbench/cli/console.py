"""The command line's consoles and its two rules for user input: clean errors, no ignored options.

Errors the user can fix (unknown names, bad settings, missing data, damaged files) are printed as
one message without a traceback and exit with status 2; options a command would ignore are
refused, not dropped.
"""

from __future__ import annotations

import functools
import io
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from cilbench.core.errors import CilbenchError

stdout = Console()
stderr = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(command: F) -> F:
    """Print CilbenchError messages cleanly and exit 2 instead of showing a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for stream in (sys.stdout, sys.stderr):  # PYTHONIOENCODING=ascii and a unicode path
            if isinstance(stream, io.TextIOWrapper):
                stream.reconfigure(errors="backslashreplace")
        logging.basicConfig(
            level=logging.WARNING, handlers=[RichHandler(console=stderr)], format="%(message)s"
        )
        try:
            return command(*args, **kwargs)
        except CilbenchError as error:
            stderr.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
            raise typer.Exit(2) from None
        except (IsADirectoryError, NotADirectoryError) as error:  # a cache or run folder's damage
            message = (
                f"{error.filename}: {error.strerror}. A folder stands where cilbench keeps a "
                "file, or a file where it keeps a folder; move it away and run again."
            )
            stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def refuse_given(context: typer.Context, options: tuple[str, ...], where: str) -> None:
    """Refuse options typed on the command line that would be ignored `where`, not drop them."""
    from cilbench.core.errors import ConfigError

    for param in context.command.params:
        source = context.get_parameter_source(param.name or "")
        if getattr(source, "name", None) == "COMMANDLINE" and set(param.opts) & set(options):
            raise ConfigError(
                f"Option {param.opts[0]} is not used {where} (it is fixed or ignored there); "
                "remove it."
            )

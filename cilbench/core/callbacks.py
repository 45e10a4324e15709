"""Read-only observers of a run: progress reporting and run events.

Library code reports progress through a `Progress` object and never prints; the CLI passes a rich
implementation, tests and the Python API get the silent default.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rich.console import Console

    from cilbench.core.results import RunResult
    from cilbench.data.streams import Experience

Advance = Callable[[int], None]


class Progress(Protocol):
    """Opens progress tasks; `advance(n)` reports n more units done."""

    def task(self, description: str, total: int) -> contextlib.AbstractContextManager[Advance]: ...


class SilentProgress:
    """Reports nothing."""

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        yield lambda n: None


class RichProgress:
    """Progress bars on a rich console (stderr in the CLI, so --json output stays clean)."""

    def __init__(self, console: Console):
        self.console = console

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichBars

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with RichBars(*columns, console=self.console, transient=True) as bars:
            task_id = bars.add_task(description, total=total)
            yield lambda n: bars.advance(task_id, n)


class RunCallback:
    """Hooks the runner calls; override what you need. Callbacks observe, they never steer."""

    def on_run_start(self, run_id: str, config: Mapping[str, Any], run_dir: Path) -> None:
        """Before the first experience this process runs (also when resuming)."""

    def on_experience_start(self, experience: Experience) -> None:
        """Before training on `experience`."""

    def on_experience_end(self, experience: Experience, accuracies: Sequence[float | None]) -> None:
        """After evaluating: this experience's row of the accuracy matrix (percent)."""

    def on_metrics(self, experience_index: int, metrics: Mapping[str, Any]) -> None:
        """After each experience: the metrics of the accuracy matrix so far."""

    def on_train_loss(self, description: str, epoch: int, loss: float) -> None:
        """After each epoch of the shared training loop: its mean loss."""

    def on_run_end(self, result: RunResult) -> None:
        """After the result file is written."""


_observers: contextvars.ContextVar[tuple[RunCallback, ...]] = contextvars.ContextVar(
    "cilbench_observers", default=()
)


@contextlib.contextmanager
def observing(callbacks: Sequence[RunCallback]) -> Iterator[None]:
    """Route `report_loss` calls made inside the block (e.g. by `fit`) to `callbacks`."""
    token = _observers.set(tuple(callbacks))
    try:
        yield
    finally:
        _observers.reset(token)


def report_loss(description: str, epoch: int, loss: float) -> None:
    """Tell the callbacks of the running experience an epoch's mean loss (no-op outside a run)."""
    for callback in _observers.get():
        callback.on_train_loss(description, epoch, loss)


class ConsoleLog(RunCallback):
    """One line per finished experience on a rich console."""

    def __init__(self, console: Console):
        self.console = console

    def on_experience_end(self, experience: Experience, accuracies: Sequence[float | None]) -> None:
        row = " ".join(f"{a:5.1f}" for a in accuracies if a is not None)
        self.console.print(f"[bold]experience {experience.index}[/] accuracy per test set: {row}")

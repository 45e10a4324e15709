"""Live loggers (`--log tensorboard|wandb|csv`): run callbacks that stream a run to a library.

Each logger writes under `<run dir>/logs/`: the accuracy matrix row by row, the metrics after every
experience, and the mean loss of every epoch of the shared training loop. TensorBoard and wandb are
optional (`pip install "cilbench[logging]"`) and imported only when asked for.
"""

from __future__ import annotations

import csv
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from cilbench.core.callbacks import RunCallback
from cilbench.core.errors import ConfigError, did_you_mean


def optional_import(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or fail with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(
            f"{module} is not installed ({error}). Install it with: pip install 'cilbench[{extra}]'"
        ) from None


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among `metrics` (per-task lists and None are left out)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


class _Logger(RunCallback):
    """Keeps the experience being trained and a running count of losses for the step axis."""

    def __init__(self) -> None:
        self.experience = 0
        self.loss_step = 0

    def on_experience_start(self, experience: Any) -> None:
        self.experience = experience.index

    def on_train_loss(self, description: str, epoch: int, loss: float) -> None:
        self.write_loss(description, loss)
        self.loss_step += 1

    def write_loss(self, description: str, loss: float) -> None:
        raise NotImplementedError


class CsvLogger(_Logger):
    """`logs/events.csv`, one long-format row per value: kind, experience, step, name, value."""

    FIELDS = ("kind", "experience", "step", "name", "value")

    def on_run_start(self, run_id: str, config: Mapping[str, Any], run_dir: Path) -> None:
        self.path = run_dir / "logs" / "events.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self._append([self.FIELDS])

    def on_experience_start(self, experience: Any) -> None:
        """Drop rows of this and later experiences: a repeated run writes them again (a resumed
        run keeps the rows of the experiences it does not repeat)."""
        super().on_experience_start(experience)
        with self.path.open(newline="") as handle:
            rows = list(csv.reader(handle))
        kept = [rows[0], *(row for row in rows[1:] if int(row[1]) < experience.index)]
        if len(kept) < len(rows):
            with self.path.open("w", newline="") as handle:
                csv.writer(handle).writerows(kept)

    def _append(self, rows: Sequence[Sequence[Any]]) -> None:
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerows(rows)

    def on_experience_end(self, experience: Any, accuracies: Sequence[float | None]) -> None:
        t = experience.index
        self._append([("accuracy", t, t, j, a) for j, a in enumerate(accuracies) if a is not None])

    def on_metrics(self, experience_index: int, metrics: Mapping[str, Any]) -> None:
        t = experience_index
        self._append([("metric", t, t, k, v) for k, v in _scalars(metrics).items()])

    def write_loss(self, description: str, loss: float) -> None:
        self._append([("loss", self.experience, self.loss_step, description, loss)])


class TensorBoardLogger(_Logger):
    """`logs/tensorboard/`: scalars `accuracy/test_set_<j>` (step t), `metrics/*`, `loss/*`."""

    def __init__(self) -> None:
        super().__init__()
        self.tensorboard = optional_import("torch.utils.tensorboard", "logging")

    def on_run_start(self, run_id: str, config: Mapping[str, Any], run_dir: Path) -> None:
        log_dir = str(run_dir / "logs" / "tensorboard")
        self.writer = self.tensorboard.SummaryWriter(log_dir=log_dir)
        self.writer.add_text("run_id", run_id)

    def on_experience_end(self, experience: Any, accuracies: Sequence[float | None]) -> None:
        for j, a in enumerate(accuracies):
            if a is not None:
                self.writer.add_scalar(f"accuracy/test_set_{j}", a, experience.index)
        self.writer.flush()

    def on_metrics(self, experience_index: int, metrics: Mapping[str, Any]) -> None:
        for name, value in _scalars(metrics).items():
            self.writer.add_scalar(f"metrics/{name}", value, experience_index)
        self.writer.flush()

    def write_loss(self, description: str, loss: float) -> None:
        self.writer.add_scalar(f"loss/{description}", loss, self.loss_step)

    def on_run_end(self, result: Any) -> None:
        self.writer.close()


class WandbLogger(_Logger):
    """A wandb run named after the run id, under `logs/` (offline with WANDB_MODE=offline)."""

    def __init__(self) -> None:
        super().__init__()
        self.wandb = optional_import("wandb", "logging")

    def on_run_start(self, run_id: str, config: Mapping[str, Any], run_dir: Path) -> None:
        folder = run_dir / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(
            project="cilbench", name=run_id, config=dict(config), dir=str(folder)
        )

    def on_experience_end(self, experience: Any, accuracies: Sequence[float | None]) -> None:
        row = {f"accuracy/test_set_{j}": a for j, a in enumerate(accuracies) if a is not None}
        self.run.log({"experience": experience.index, **row})

    def on_metrics(self, experience_index: int, metrics: Mapping[str, Any]) -> None:
        scalars = {f"metrics/{k}": v for k, v in _scalars(metrics).items()}
        self.run.log({"experience": experience_index, **scalars})

    def write_loss(self, description: str, loss: float) -> None:
        self.run.log({f"loss/{description}": loss, "experience": self.experience})

    def on_run_end(self, result: Any) -> None:
        self.run.summary.update(_scalars(result.metrics))
        self.run.finish()


LOGGERS: dict[str, Callable[[], RunCallback]] = {
    "csv": CsvLogger,
    "tensorboard": TensorBoardLogger,
    "wandb": WandbLogger,
}


def make_loggers(names: Sequence[str]) -> list[RunCallback]:
    """Loggers by name (`--log csv --log tensorboard`, or `--log csv,wandb`)."""
    loggers = []
    for name in (n.strip() for entry in names for n in entry.split(",") if n.strip()):
        if name not in LOGGERS:
            raise ConfigError(
                f"Unknown logger {name!r}.{did_you_mean(name, LOGGERS)} "
                f"Choose from {', '.join(LOGGERS)}."
            )
        loggers.append(LOGGERS[name]())
    return loggers

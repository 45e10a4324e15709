"""The one outer loop: train on experience t, evaluate on every test set seen so far, checkpoint.

After every experience the strategy's state and the partial result go into one safetensors file,
replaced atomically, so a run killed at any moment resumes from the last finished experience and
produces the same accuracy matrix as an uninterrupted run (all randomness derives from the seed
and the experience index).
"""

from __future__ import annotations

import functools
import json
import logging
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cilbench.api import STRATEGIES, STREAMS, BaseStrategy, RunContext
from cilbench.backbones.model import Backbone, create_backbone
from cilbench.core.callbacks import Progress, RunCallback, SilentProgress, observing
from cilbench.core.config import resolve
from cilbench.core.errors import CilbenchError, ConfigError, CorruptFileError
from cilbench.core.files import check_writable, remove_stale_temps, write_atomic
from cilbench.core.memory import check_fits
from cilbench.core.metrics import summarize
from cilbench.core.paths import using_cache_dir
from cilbench.core.results import RunResult, environment, save_result
from cilbench.data.augment import Augmentation
from cilbench.data.sources import (
    DatasetView,
)
from cilbench.data.stream_checks import validate_stream
from cilbench.data.streams import Stream
from cilbench.engine.checkpoint import load_checkpoint, save_checkpoint
from cilbench.engine.evaluation import evaluate
from cilbench.engine.plugin_checks import checked_report, checked_state
from cilbench.engine.recipes import ChosenRecipe
from cilbench.engine.spec import (
    RunSettings,
    RunSpec,
    data_fingerprints,
    resolve_run,
    run_id_of,
    run_record,
    same_run,
)
from cilbench.engine.stored_results import nothing_to_resume, refuse_replacing_another_device
from cilbench.features import FeatureStore

log = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    """A run with every name resolved and every setting validated."""

    spec: RunSpec
    stream: Stream
    backbone: Backbone
    strategy: BaseStrategy
    config: dict[str, Any]
    run_id: str
    recipe: ChosenRecipe
    augmentation: Augmentation

    def context(self, store: FeatureStore, progress: Progress | None = None) -> RunContext:
        """What the strategy gets at `setup()`: this run's backbone, stream info and settings."""
        return RunContext(
            backbone=self.backbone,
            info=self.stream.info,
            features=store,
            progress=progress or SilentProgress(),
            num_workers=self.spec.num_workers,
            augmentation=self.augmentation,
            unlabelled_images=functools.partial(
                unlabelled_images, self.stream, self.spec.data_root
            ),
        )

    @property
    def run_dir(self) -> Path:
        return self.spec.out_dir / self.run_id

    @property
    def result_path(self) -> Path:
        return self.run_dir / "result.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.safetensors"


def prepare(spec: RunSpec) -> PreparedRun:
    """Resolve names and validate every setting before touching data; build the stream."""
    settings = resolve_run(spec)
    if settings.recipe.fallback:
        log.warning("%s.", settings.recipe.fallback)
    backbone = _create_backbone(settings, spec.compile)
    size = backbone.preprocessing.image_size
    check_fits(
        backbone.attention_bytes(spec.batch_size),
        f"backbone.image_size={size} at batch size {spec.batch_size} (attention scores)",
        backbone.device,
        "Choose a smaller backbone.image_size or --batch-size.",
    )
    source = settings.builder
    stream = validate_stream(source if isinstance(source, Stream) else source.build(spec.data_root))
    stream_name = spec.stream if isinstance(spec.stream, str) else stream.info.name
    strategy_cls = STRATEGIES.get(spec.strategy)
    if strategy_cls.deprecated:
        log.warning("%s", strategy_cls.deprecated)
    _check_scenario(strategy_cls, spec.strategy, stream)
    record = run_record(spec, settings, stream_name, backbone.tag)
    run_id = run_id_of(record, data_fingerprints(stream), backbone.tag)
    strategy = strategy_cls(settings.config, seed=spec.seed, device=str(backbone.device))
    return PreparedRun(
        spec, stream, backbone, strategy, record, run_id, settings.recipe, settings.augmentation,
    )  # fmt: skip


def unlabelled_images(
    stream: Stream, data_root: Path | None, stream_name: str = ""
) -> list[DatasetView]:
    """The training views of `stream`, or of the registered stream `stream_name` (built from
    `data_root` with its default options), with labels removed: `RunContext.unlabelled_images`."""
    if not stream_name:
        return stream.unlabelled_train()
    builder = resolve(STREAMS.get(stream_name), {}, what=f"stream {stream_name!r} option")
    return builder.build(data_root).unlabelled_train()


def _check_scenario(cls: type[BaseStrategy], name: str, stream: Stream) -> None:
    if cls.class_incremental_only and stream.info.scenario != "class-incremental":
        raise ConfigError(
            f"Strategy {name!r} learns only class-incremental streams (each experience brings "
            f"new classes); {stream.info.name!r} is {stream.info.scenario}."
        )


def _create_backbone(settings: RunSettings, compile: bool) -> Backbone:
    """The run's backbone on its device and precision (a `Backbone` object given, as it is)."""
    choice = settings.backbone
    if isinstance(choice, Backbone):
        return choice
    return create_backbone(
        choice,
        device=settings.device,
        precision=settings.precision,
        compile=compile,
        **settings.backbone_settings,
    )


def run(
    spec: RunSpec,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    callbacks: Sequence[RunCallback] = (),
) -> RunResult:
    """Run a strategy over a stream, write `<out>/<run_id>/result.json`, return the result.

    An unfinished run's checkpoint is continued with `resume` or deleted with `overwrite`;
    with neither, the run refuses to start over it. A finished result computed on another device
    type or at another precision is replaced only with `overwrite`.
    """
    if resume and overwrite:
        raise CilbenchError("--resume continues a run and --overwrite starts it over; pick one.")
    with using_cache_dir(spec.cache_dir):  # decoded images and converted weights follow it
        return _run(spec, resume, overwrite, progress, callbacks)


def _run(
    spec: RunSpec,
    resume: bool,
    overwrite: bool,
    progress: Progress | None,
    callbacks: Sequence[RunCallback],
) -> RunResult:
    prepared = prepare(spec)
    if resume and not prepared.checkpoint_path.exists():
        raise nothing_to_resume(prepared.result_path, prepared.checkpoint_path, prepared.config)
    if not overwrite:
        refuse_replacing_another_device(prepared.result_path, prepared.config)
    check_writable(spec.out_dir, "output folder (--out)")
    remove_stale_temps(prepared.run_dir)
    progress = progress or SilentProgress()
    store = FeatureStore(
        prepared.backbone,
        spec.cache_dir,
        batch_size=spec.batch_size,
        num_workers=spec.num_workers,
        progress=progress,
        user=f"strategy {spec.strategy!r}",
        decode=prepared.config["decode"],
    )
    strategy, stream = prepared.strategy, prepared.stream
    strategy.setup(prepared.context(store, progress))
    result = _resume_or_start(prepared, resume, overwrite)
    for callback in callbacks:
        callback.on_run_start(prepared.run_id, prepared.config, prepared.run_dir)
    cost = result.cost
    if not result.accuracy_matrix:
        start = time.perf_counter()
        strategy.before_stream()
        cost["before_stream_seconds"] = time.perf_counter() - start
    before = {
        "extract_seconds": cost["extract_seconds"],
        "images_forwarded": cost["images_forwarded"],
        "cache_wait_seconds": cost.get("cache_wait_seconds", 0.0),
    }
    for experience in stream.experiences[len(result.accuracy_matrix) :]:
        for callback in callbacks:
            callback.on_experience_start(experience)
        start = time.perf_counter()
        with observing(callbacks):
            strategy.train_experience(experience)
        store.check_backbone()
        cost["train_seconds"].append(time.perf_counter() - start)
        start = time.perf_counter()
        row = evaluate(strategy, stream, experience.index, store, spec.batch_size, progress)
        cost["eval_seconds"].append(time.perf_counter() - start)
        result.accuracy_matrix.append(row)
        _update_cost(cost, strategy, store, before)
        result.metrics = summarize(result.matrix(), np.array(result.test_sizes))
        result.strategy_report = checked_report(strategy.report(), spec.strategy)
        _save_checkpoint(prepared, strategy, result)
        for callback in callbacks:
            callback.on_experience_end(experience, row)
            callback.on_metrics(experience.index, result.metrics)
    result.complete = True
    save_result(result, prepared.result_path)
    prepared.checkpoint_path.unlink(missing_ok=True)
    for callback in callbacks:
        callback.on_run_end(result)
    return result


def _new_result(prepared: PreparedRun) -> RunResult:
    stream = prepared.stream
    info = stream.info
    return RunResult(
        run_id=prepared.run_id,
        config=prepared.config,
        stream={
            "name": info.name,
            "version": info.version,
            "scenario": info.scenario,
            "num_classes": info.num_classes,
            "class_order": list(info.class_order),
            "class_names": list(info.class_names),
            "experience_classes": [list(e.classes) for e in stream.experiences],
            "train_sizes": [len(e.train) for e in stream.experiences],
            "sources": data_fingerprints(stream),
        },
        backbone=prepared.backbone.describe(),
        accuracy_matrix=[],
        test_sizes=[len(v) for v in stream.test_sets],
        cost={
            "before_stream_seconds": 0.0,
            "train_seconds": [],
            "eval_seconds": [],
            "extract_seconds": 0.0,
            "cache_wait_seconds": 0.0,
            "images_forwarded": 0,
            "peak_memory_mib": 0.0,
            "trainable_parameters": 0,
        },
        environment=environment(),
        flags=prepared.strategy.leaderboard_flags(),
        recipe=prepared.recipe.describe(),
    )


def _update_cost(
    cost: dict[str, Any], strategy: BaseStrategy, store: FeatureStore, before: dict[str, Any]
) -> None:
    """Fold this process's work into the totals (`before`: totals of a resumed run's first part)."""
    cost["extract_seconds"] = before["extract_seconds"] + store.extract_seconds
    cost["images_forwarded"] = before["images_forwarded"] + store.images_forwarded
    cost["trainable_parameters"] = max(
        cost["trainable_parameters"], strategy.trainable_parameters()
    )
    cost["peak_memory_mib"] = max(cost["peak_memory_mib"], _peak_memory_mib(strategy.device))
    _count_exemplars(cost, strategy)
    cost["cache_wait_seconds"] = before["cache_wait_seconds"] + store.wait_seconds
    cost["total_seconds"] = (
        cost.get("before_stream_seconds", 0.0)
        + sum(cost["train_seconds"])
        + sum(cost["eval_seconds"])
    )
    # The comparable figure: the run's own work, without extracting features for the shared
    # cache (the run that did it paid for every later run) or waiting on another run's lock.
    cost["train_eval_seconds"] = max(
        0.0, cost["total_seconds"] - cost["extract_seconds"] - cost["cache_wait_seconds"]
    )


def _count_exemplars(cost: dict[str, Any], strategy: BaseStrategy) -> None:
    """The most exemplar images held after any experience, and their bytes as the backbone reads
    them (uint8, 3 x input size x input size): what a deployed memory of the method keeps."""
    if strategy.exemplar_budget() is None:
        return
    size = strategy.backbone.preprocessing.image_size
    cost["exemplar_images"] = max(cost.get("exemplar_images", 0), strategy.exemplar_images())
    cost["exemplar_bytes"] = cost["exemplar_images"] * 3 * size * size


def _peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _save_checkpoint(prepared: PreparedRun, strategy: BaseStrategy, result: RunResult) -> None:
    state = checked_state(strategy.state_dict(), prepared.spec.strategy)
    save_checkpoint(prepared.checkpoint_path, state, result.to_json())
    write_atomic(prepared.run_dir / "config.json", json.dumps(prepared.config, indent=2))


def _resume_or_start(prepared: PreparedRun, resume: bool, overwrite: bool) -> RunResult:
    path = prepared.checkpoint_path
    if not resume:
        if path.exists() and not overwrite:
            raise CilbenchError(
                f"Run {prepared.run_id} has the checkpoint of an unfinished run: {path}. "
                "Continue it with --resume, or start over with --overwrite (deletes it)."
            )
        path.unlink(missing_ok=True)
        return _new_result(prepared)
    if not path.exists():
        raise nothing_to_resume(prepared.result_path, path, prepared.config)
    tensors, result_json = load_checkpoint(path)
    try:
        result = RunResult.from_dict(json.loads(result_json), source=str(path))
    except ValueError as error:  # verified by checksum, so written this way by cilbench
        raise CorruptFileError(f"Checkpoint {path} holds no valid result ({error}).") from error
    if not same_run(result.config, prepared.config):
        raise CilbenchError(
            f"Checkpoint {path} was made with a different configuration; run with --overwrite "
            "to start over."
        )
    try:
        prepared.strategy.load_state_dict(tensors)
    except (KeyError, RuntimeError, ValueError) as error:
        raise CorruptFileError(
            f"Checkpoint {path} does not fit strategy {prepared.spec.strategy!r} ({error}); "
            "start over with --overwrite."
        ) from error
    result.config = prepared.config  # how this part computes (e.g. `compile`) is what it records
    return result

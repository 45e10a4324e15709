"""The one outer loop: train on experience t, evaluate on every test set seen so far, checkpoint.

After every experience the strategy's state and the partial result go into one safetensors file,
replaced atomically, so a run killed at any moment resumes from the last finished experience and
produces the same accuracy matrix as an uninterrupted run (all randomness derives from the seed
and the experience index).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import resource
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cilbench.api import STRATEGIES, STREAMS, BaseStrategy, Stream, StreamBuilder
from cilbench.augment import Augmentation, resolve_augmentation
from cilbench.backbones import BACKBONE_SETTINGS, Backbone, BackboneSpec, create_backbone
from cilbench.callbacks import Progress, RunCallback, SilentProgress, observing
from cilbench.checkpoint import load_checkpoint, save_checkpoint
from cilbench.config import (
    AvailableDevice,
    NonNegative,
    Positive,
    Range,
    as_dict,
    check,
    resolve,
    resolve_settings,
    settings_schema,
    split_sections,
)
from cilbench.data import DatasetView, loader_options, loader_workers, threads_beside_workers
from cilbench.devices import autocast
from cilbench.errors import CilbenchError, ConfigError, CorruptFileError
from cilbench.features import FeatureStore, default_cache_dir
from cilbench.files import check_writable, remove_stale_temps, write_atomic
from cilbench.metrics import summarize
from cilbench.plugin_checks import check_scores
from cilbench.recipes import RECIPE_KEY, ChosenRecipe, choose, follow_seed
from cilbench.results import RunResult, environment, load_result, save_result
from cilbench.stream_checks import validate_stream

log = logging.getLogger(__name__)

DEFAULT_STRATEGY = "nmc"
DEFAULT_STREAM = "split-fashion-mnist-mini"


@dataclass(frozen=True)
class RunSpec:
    """What to run; `overrides` are `--set` pairs (strategy keys, `stream.*`, `backbone.*`).

    `stream` is a registered name, a stream builder object (its `stream.*` options still apply)
    or a built `Stream`; `backbone` is a name (preset, timm tag, `file:<path>@<architecture>`), a
    `BackboneSpec`, or a `Backbone` object, or None for the stream's default backbone.
    """

    strategy: str = DEFAULT_STRATEGY
    stream: str | StreamBuilder | Stream = DEFAULT_STREAM
    backbone: str | BackboneSpec | Backbone | None = None
    seed: Annotated[int, Range(0, 2**32 - 1)] = 0
    overrides: Mapping[str, Any] = field(default_factory=dict)
    data_root: Path | None = None
    out_dir: Path = Path("runs")
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    device: Annotated[str, AvailableDevice()] = "auto"
    batch_size: Annotated[int, Positive()] = 128
    num_workers: Annotated[int | None, NonNegative()] = None
    """Data-loader processes; None: one per available core for image files, 0 for arrays."""


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

    @property
    def run_dir(self) -> Path:
        return self.spec.out_dir / self.run_id

    @property
    def result_path(self) -> Path:
        return self.run_dir / "result.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.safetensors"


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@dataclass(frozen=True)
class RunSettings:
    """Every setting of a run, resolved and validated (recipe chosen, `--set` applied)."""

    recipe: ChosenRecipe
    builder: StreamBuilder | Stream
    """The stream builder with its options applied, or the built Stream the spec gave."""
    config: Any
    backbone: str | BackboneSpec | Backbone
    backbone_settings: dict[str, Any]
    augmentation: Augmentation


def resolve_run(spec: RunSpec) -> RunSettings:
    """Layer defaults <- recipe <- `--set` for the strategy, stream, backbone and augmentation."""
    check(spec, what="run option")
    sections = split_sections(spec.overrides)
    strategy_cls = STRATEGIES.get(spec.strategy)
    recipe = choose(spec.strategy, strategy_cls, _recipe_name(spec.stream), sections["strategy"])
    layers = recipe.sections()
    source = _stream_source(spec.stream, layers["stream"], sections["stream"], spec.seed)
    strategy_keys = {k: v for k, v in sections["strategy"].items() if k != RECIPE_KEY}
    config: Any = resolve(
        strategy_cls.Config,
        layers["strategy"],
        strategy_keys,
        what=f"strategy {spec.strategy!r} config",
    )
    backbone, settings = _backbone_choice(spec, source, recipe, layers["backbone"], sections)
    return RunSettings(
        recipe=recipe,
        builder=source,
        config=config,
        backbone=backbone,
        backbone_settings=settings,
        augmentation=resolve_augmentation(layers["augment"], sections["augment"]),
    )


def prepare(spec: RunSpec) -> PreparedRun:
    """Resolve names and validate every setting before touching data; build the stream."""
    settings = resolve_run(spec)
    if settings.recipe.fallback:
        log.warning("%s.", settings.recipe.fallback)
    backbone = _create_backbone(settings, resolve_device(spec.device))
    device = str(backbone.device)
    source = settings.builder
    stream = validate_stream(source if isinstance(source, Stream) else source.build(spec.data_root))
    stream_name = spec.stream if isinstance(spec.stream, str) else stream.info.name
    choice = settings.backbone
    resolved = {
        "strategy": spec.strategy,
        "strategy_config": as_dict(settings.config),
        "stream": stream_name,
        "stream_options": {} if isinstance(source, Stream) else source.options(),
        "backbone": choice if isinstance(choice, str) else backbone.tag,
        "backbone_settings": settings.backbone_settings,
        "augmentation": as_dict(settings.augmentation),
        "recipe": settings.recipe.recipe.name,
        "seed": spec.seed,
        "eval_batch_size": spec.batch_size,
    }
    resolved = json.loads(json.dumps(resolved))  # tuples -> lists, as the checkpoint stores them
    identity = {"config": resolved, "data": sorted({v.source.fingerprint for v in _views(stream)})}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    label = re.sub(r"[^\w.+@-]", "_", backbone.tag)  # a folder name, whatever the spec's name
    run_id = f"{stream_name}/{spec.strategy}-{label}-seed{spec.seed}-{digest}"
    strategy = STRATEGIES.get(spec.strategy)(settings.config, seed=spec.seed, device=device)
    config_record = {**resolved, "device": device}
    return PreparedRun(spec, stream, backbone, strategy, config_record, run_id, settings.recipe)


def _recipe_name(stream: str | StreamBuilder | Stream) -> str:
    """The stream name a strategy's recipes are looked up by."""
    if isinstance(stream, Stream):
        return stream.info.name
    if isinstance(stream, str):
        return stream
    cls = type(stream)
    return next((n for n in STREAMS.names() if STREAMS.get(n) is cls), cls.__name__)


def _stream_source(
    stream: str | StreamBuilder | Stream,
    recipe_options: Mapping[str, Any],
    options: Mapping[str, Any],
    seed: int,
) -> StreamBuilder | Stream:
    """The builder with the recipe's then the user's `stream.*` options applied, or the Stream.

    A builder object keeps the fields its author set: only the user's options change it. A built
    Stream takes no options at all. `class_order=pycil` becomes `pycil-<seed>`.
    """
    if isinstance(stream, Stream):
        if options:
            raise ConfigError(
                f"stream options ({', '.join('stream.' + k for k in options)}) need a stream "
                "name or builder; the Stream object given is already built."
            )
        return stream
    what = f"stream {_recipe_name(stream)!r} option"
    if isinstance(stream, str):
        return _follow_seed(resolve(STREAMS.get(stream), recipe_options, options, what=what), seed)
    if not isinstance(stream, StreamBuilder) or not dataclasses.is_dataclass(stream):
        raise ConfigError(
            "RunSpec.stream must be a stream name, a StreamBuilder dataclass or a Stream; "
            f"got {stream!r}."
        )
    changes = resolve_settings(options, settings_schema(type(stream)), what)
    return _follow_seed(check(dataclasses.replace(stream, **changes), what), seed)


def _follow_seed(builder: StreamBuilder, seed: int) -> StreamBuilder:
    """`class_order=pycil` becomes `pycil-<seed>`, so `--seed` picks the papers' class order."""
    order = getattr(builder, "class_order", None)
    if order != "pycil":
        return builder
    return dataclasses.replace(builder, class_order=follow_seed(order, seed))  # type: ignore[type-var]


def _backbone_choice(
    spec: RunSpec,
    source: StreamBuilder | Stream,
    recipe: ChosenRecipe,
    recipe_settings: Mapping[str, Any],
    sections: Mapping[str, Mapping[str, Any]],
) -> tuple[str | BackboneSpec | Backbone, dict[str, Any]]:
    """(the backbone to use, the preprocessing settings applied to it).

    The stream's default or the recipe's backbone gets the reference preprocessing (the stream's
    default settings, then the recipe's); any other backbone keeps its own. `backbone.*` settings
    always apply last.
    """
    overrides = sections["backbone"]
    choice = spec.backbone
    if isinstance(choice, Backbone):
        if overrides:
            raise ConfigError(
                "backbone.* settings apply to a backbone given by name or spec; a Backbone object "
                "already has its preprocessing."
            )
        if spec.device not in ("auto", str(choice.device)):
            raise ConfigError(
                f"run option 'device' is {spec.device!r} but the Backbone object given is on "
                f"{choice.device}; pass device='auto' or a backbone on {spec.device!r}."
            )
        return choice, {}
    if choice is None and isinstance(source, Stream):
        raise ConfigError(
            "RunSpec.backbone is required with a Stream object (a stream builder declares a "
            "default backbone; a built Stream does not)."
        )
    defaults = source if isinstance(source, StreamBuilder) else StreamBuilder
    name = choice if choice is not None else recipe.backbone or defaults.default_backbone
    settings: dict[str, Any] = {}
    if name in (defaults.default_backbone, recipe.backbone):  # reference preprocessing
        settings.update(defaults.default_backbone_settings)
        settings.update(resolve_settings(recipe_settings, BACKBONE_SETTINGS, "backbone"))
    settings.update(resolve_settings(overrides, BACKBONE_SETTINGS, "backbone"))
    return name, settings


def _create_backbone(settings: RunSettings, device: str) -> Backbone:
    """The run's backbone on `device`, carrying the run's training augmentation."""
    choice = settings.backbone
    if isinstance(choice, Backbone):
        choice.augmentation = settings.augmentation  # the run's setting, like any other
        return choice
    return create_backbone(
        choice, device=device, augmentation=settings.augmentation, **settings.backbone_settings
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
    with neither, the run refuses to start over it.
    """
    if resume and overwrite:
        raise CilbenchError("--resume continues a run and --overwrite starts it over; pick one.")
    prepared = prepare(spec)
    if resume and not prepared.checkpoint_path.exists():
        raise _nothing_to_resume(prepared)
    check_writable(spec.out_dir, "output folder (--out)")
    remove_stale_temps(prepared.run_dir)
    progress = progress or SilentProgress()
    store = FeatureStore(
        prepared.backbone,
        spec.cache_dir,
        batch_size=spec.batch_size,
        num_workers=spec.num_workers,
        progress=progress,
    )
    strategy, stream = prepared.strategy, prepared.stream
    strategy.setup(prepared.backbone, stream.info, store)
    result = _resume_or_start(prepared, resume, overwrite)
    for callback in callbacks:
        callback.on_run_start(prepared.run_id, prepared.config, prepared.run_dir)
    cost = result.cost
    if not result.accuracy_matrix:
        start = time.perf_counter()
        strategy.before_stream(stream.unlabelled_train(), spec.data_root)
        cost["before_stream_seconds"] = time.perf_counter() - start
    before = {
        "extract_seconds": cost["extract_seconds"],
        "images_forwarded": cost["images_forwarded"],
    }
    for experience in stream.experiences[len(result.accuracy_matrix) :]:
        for callback in callbacks:
            callback.on_experience_start(experience)
        start = time.perf_counter()
        with observing(callbacks):
            strategy.train_experience(experience)
        cost["train_seconds"].append(time.perf_counter() - start)
        start = time.perf_counter()
        row = evaluate(strategy, stream, experience.index, store, spec.batch_size, progress)
        cost["eval_seconds"].append(time.perf_counter() - start)
        result.accuracy_matrix.append(row)
        _update_cost(cost, strategy, store, before)
        result.metrics = summarize(result.matrix(), np.array(result.test_sizes))
        result.strategy_report = strategy.report()
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


def evaluate(
    strategy: BaseStrategy,
    stream: Stream,
    t: int,
    store: FeatureStore,
    batch_size: int = 128,
    progress: Progress | None = None,
    cached_features: bool = True,
) -> list[float | None]:
    """Row t of the accuracy matrix (percent), None for test sets not seen yet.

    `cached_features=False` makes a strategy that `predicts_with_features` compute the frozen
    features itself (a second forward pass; `cilbench profile prompts` compares the two).
    """
    num_seen = stream.experiences[t].num_seen_classes
    row: list[float | None] = [None] * len(stream.test_sets)
    for j in stream.test_sets_after(t):
        view = stream.test_sets[j]
        correct = 0
        batches = _scored_batches(strategy, view, store, batch_size, progress, cached_features)
        for scores, labels in batches:
            if scores.shape != (len(labels), num_seen):
                raise RuntimeError(
                    f"{type(strategy).__name__} returned scores of shape {tuple(scores.shape)}; "
                    f"expected ({len(labels)}, {num_seen}) after experience {t}"
                )
            check_scores(scores, type(strategy).__name__, t)
            correct += int((scores.argmax(dim=1).cpu() == labels).sum())
        row[j] = 100.0 * correct / len(view)
    return row


def predictions(
    strategy: BaseStrategy,
    view: DatasetView,
    store: FeatureStore,
    batch_size: int = 128,
    cached_features: bool = True,
) -> torch.Tensor:
    """The label `evaluate` predicts for every image of `view`, in order."""
    batches = _scored_batches(strategy, view, store, batch_size, None, cached_features)
    return torch.cat([scores.argmax(dim=1).cpu() for scores, _ in batches])


def _scored_batches(
    strategy: BaseStrategy,
    view: DatasetView,
    store: FeatureStore,
    batch_size: int,
    progress: Progress | None,
    cached_features: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(scores, labels) batches: from cached features when the strategy allows, else images
    (with the cached frozen features of the same images for `predicts_with_features`)."""
    if strategy.predicts_from_features:
        features, labels = strategy.features_of(view)
        with torch.no_grad():
            for start in range(0, len(labels), batch_size):
                batch = features[start : start + batch_size].to(strategy.device)
                yield strategy.predict_features(batch), labels[start : start + batch_size]
        return
    backbone = store.backbone
    dataset = view.with_transform(backbone.preprocessing.sample_transform())
    workers = loader_workers(store.num_workers, [view.source], backbone.device)
    loader = DataLoader(dataset, batch_size=batch_size, **loader_options(backbone.device, workers))
    frozen = None
    if strategy.predicts_with_features and cached_features:
        frozen = store.get(view)[0]  # rows in the loader's (unshuffled) order
    start = 0
    with (
        threads_beside_workers(workers),
        (progress or SilentProgress()).task("evaluating", total=len(view)) as advance,
    ):
        for images, labels in loader:
            with torch.no_grad(), autocast(backbone.device):
                prepared = backbone.prepare(images)
                if frozen is None:
                    scores = strategy.predict(prepared)
                else:
                    features = frozen[start : start + len(labels)].to(strategy.device)
                    scores = strategy.predict_with_features(prepared, features)
            yield scores.float(), labels
            start += len(labels)
            advance(len(labels))


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
            "sources": sorted({v.source.fingerprint for v in _views(stream)}),
        },
        backbone=prepared.backbone.describe(),
        accuracy_matrix=[],
        test_sizes=[len(v) for v in stream.test_sets],
        cost={
            "before_stream_seconds": 0.0,
            "train_seconds": [],
            "eval_seconds": [],
            "extract_seconds": 0.0,
            "images_forwarded": 0,
            "peak_memory_mib": 0.0,
            "trainable_parameters": 0,
        },
        environment=environment(),
        flags=prepared.strategy.leaderboard_flags(),
        recipe=prepared.recipe.describe(),
    )


def _views(stream: Stream) -> list:
    return [e.train for e in stream.experiences] + list(stream.test_sets)


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
    cost["total_seconds"] = (
        cost.get("before_stream_seconds", 0.0)
        + sum(cost["train_seconds"])
        + sum(cost["eval_seconds"])
    )


def _peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _save_checkpoint(prepared: PreparedRun, strategy: BaseStrategy, result: RunResult) -> None:
    save_checkpoint(prepared.checkpoint_path, strategy.state_dict(), result.to_json())
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
        raise _nothing_to_resume(prepared)
    tensors, result_json = load_checkpoint(path)
    try:
        result = RunResult.from_dict(json.loads(result_json), source=str(path))
    except ValueError as error:  # verified by checksum, so written this way by cilbench
        raise CorruptFileError(f"Checkpoint {path} holds no valid result ({error}).") from error
    if result.config != prepared.config:
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
    return result


def _nothing_to_resume(prepared: PreparedRun) -> CilbenchError:
    """The error for --resume without a checkpoint: finished, damaged result, or never started."""
    path = prepared.result_path
    if not path.exists():
        return CilbenchError(
            f"Nothing to resume: no checkpoint at {prepared.checkpoint_path}. "
            "Run without --resume to start."
        )
    try:
        result = load_result(path)
    except CorruptFileError as error:
        return CorruptFileError(
            f"Nothing to resume: no checkpoint, and the result file is damaged ({error}). "
            "Run without --resume to repeat the run."
        )
    if not result.complete or result.config != prepared.config:
        return CorruptFileError(
            f"Nothing to resume: no checkpoint, and {path} is not the finished result of this "
            "run. Run without --resume to repeat the run."
        )
    return CilbenchError(
        f"Run {prepared.run_id} already finished: {path}. Run without --resume to repeat it."
    )

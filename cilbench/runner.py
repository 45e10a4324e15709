"""The one outer loop: train on experience t, evaluate on every test set seen so far, checkpoint.

After every experience the strategy's state and the partial result go into one safetensors file,
replaced atomically, so a run killed at any moment resumes from the last finished experience and
produces the same accuracy matrix as an uninterrupted run (all randomness derives from the seed
and the experience index).
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from cilbench.api import STRATEGIES, STREAMS, BaseStrategy, Stream
from cilbench.backbones import Backbone, create_backbone
from cilbench.callbacks import Progress, RunCallback, SilentProgress, observing
from cilbench.config import BACKBONE_SETTINGS, as_dict, resolve, resolve_settings, split_sections
from cilbench.data import DatasetView
from cilbench.errors import CilbenchError, CorruptFileError
from cilbench.features import FeatureStore, default_cache_dir
from cilbench.metrics import summarize
from cilbench.results import RunResult, environment, save_result, write_atomic

DEFAULT_STRATEGY = "nmc"
DEFAULT_STREAM = "split-fashion-mnist-mini"


@dataclass(frozen=True)
class RunSpec:
    """What to run; `overrides` are `--set` pairs (strategy keys, `stream.*`, `backbone.*`)."""

    strategy: str = DEFAULT_STRATEGY
    stream: str = DEFAULT_STREAM
    backbone: str | None = None
    seed: int = 0
    overrides: Mapping[str, Any] = field(default_factory=dict)
    data_root: Path | None = None
    out_dir: Path = Path("runs")
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    device: str = "auto"
    batch_size: int = 128
    num_workers: int = 0


@dataclass
class PreparedRun:
    """A run with every name resolved and every setting validated."""

    spec: RunSpec
    stream: Stream
    backbone: Backbone
    strategy: BaseStrategy
    config: dict[str, Any]
    run_id: str

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


def prepare(spec: RunSpec) -> PreparedRun:
    """Resolve names and validate every setting before touching data; build the stream."""
    device = resolve_device(spec.device)
    sections = split_sections(spec.overrides)
    builder_cls = STREAMS.get(spec.stream)
    strategy_cls = STRATEGIES.get(spec.strategy)
    builder = resolve(builder_cls, sections["stream"], what=f"stream {spec.stream!r} option")
    config: Any = resolve(
        strategy_cls.Config,
        strategy_cls.recipes.get(spec.stream, {}),
        sections["strategy"],
        what=f"strategy {spec.strategy!r} config",
    )
    backbone_name = spec.backbone or builder_cls.default_backbone
    is_default = backbone_name == builder_cls.default_backbone
    settings = dict(builder_cls.default_backbone_settings) if is_default else {}
    settings.update(resolve_settings(sections["backbone"], BACKBONE_SETTINGS, "backbone"))
    backbone = create_backbone(backbone_name, device=device, **settings)
    stream = builder.build(spec.data_root)
    resolved = {
        "strategy": spec.strategy,
        "strategy_config": as_dict(config),
        "stream": spec.stream,
        "stream_options": builder.options(),
        "backbone": backbone_name,
        "backbone_settings": settings,
        "seed": spec.seed,
        "eval_batch_size": spec.batch_size,
    }
    resolved = json.loads(json.dumps(resolved))  # tuples -> lists, as the checkpoint stores them
    identity = {"config": resolved, "data": sorted({v.source.fingerprint for v in _views(stream)})}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    run_id = f"{spec.stream}/{spec.strategy}-{backbone_name}-seed{spec.seed}-{digest}"
    strategy = strategy_cls(config, seed=spec.seed, device=device)
    return PreparedRun(spec, stream, backbone, strategy, {**resolved, "device": device}, run_id)


def run(
    spec: RunSpec,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    callbacks: Sequence[RunCallback] = (),
) -> RunResult:
    """Run a strategy over a stream, write `<out>/<run_id>/result.json`, return the result."""
    prepared = prepare(spec)
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
    result = _resume_or_start(prepared, resume)
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
) -> list[float | None]:
    """Row t of the accuracy matrix (percent), None for test sets not seen yet."""
    num_seen = stream.experiences[t].num_seen_classes
    row: list[float | None] = [None] * len(stream.test_sets)
    for j in stream.test_sets_after(t):
        view = stream.test_sets[j]
        correct = 0
        for scores, labels in _scored_batches(strategy, view, store, batch_size, progress):
            if scores.shape != (len(labels), num_seen):
                raise RuntimeError(
                    f"{type(strategy).__name__} returned scores of shape {tuple(scores.shape)}; "
                    f"expected ({len(labels)}, {num_seen}) after experience {t}"
                )
            correct += int((scores.argmax(dim=1).cpu() == labels).sum())
        row[j] = 100.0 * correct / len(view)
    return row


def _scored_batches(
    strategy: BaseStrategy,
    view: DatasetView,
    store: FeatureStore,
    batch_size: int,
    progress: Progress | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(scores, labels) batches: from cached features when the strategy allows, else images."""
    if strategy.predicts_from_features:
        features, labels = strategy.features_of(view)
        with torch.no_grad():
            for start in range(0, len(labels), batch_size):
                batch = features[start : start + batch_size].to(strategy.device)
                yield strategy.predict_features(batch), labels[start : start + batch_size]
        return
    backbone = store.backbone
    dataset = view.with_transform(backbone.preprocessing.sample_transform())
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=store.num_workers)
    with (progress or SilentProgress()).task("evaluating", total=len(view)) as advance:
        for images, labels in loader:
            with torch.no_grad():
                yield strategy.predict(backbone.prepare(images)), labels
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
    tensors = {k: v.detach().cpu().contiguous() for k, v in strategy.state_dict().items()}
    path = prepared.checkpoint_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"result": result.to_json()})
    tmp.replace(path)
    write_atomic(prepared.run_dir / "config.json", json.dumps(prepared.config, indent=2))


def _resume_or_start(prepared: PreparedRun, resume: bool) -> RunResult:
    path = prepared.checkpoint_path
    if not resume:
        path.unlink(missing_ok=True)
        return _new_result(prepared)
    if not path.exists():
        if prepared.result_path.exists():
            raise CilbenchError(
                f"Run {prepared.run_id} already finished: {prepared.result_path}. "
                "Run without --resume to repeat it."
            )
        raise CilbenchError(
            f"Nothing to resume: no checkpoint at {path}. Run without --resume to start."
        )
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
        result = RunResult.from_dict(json.loads(metadata["result"]), source=str(path))
    except (SafetensorError, KeyError, ValueError, OSError) as error:
        raise CorruptFileError(
            f"Checkpoint {path} is damaged ({error}). Delete it and run without --resume."
        ) from error
    if result.config != prepared.config:
        raise CilbenchError(
            f"Checkpoint {path} was made with a different configuration; run without --resume."
        )
    prepared.strategy.load_state_dict(tensors)
    return result

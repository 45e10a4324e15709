"""The paper grid: a committed file of runs (`leaderboards/paper-grid.toml`) and its GPU bill.

A grid file lists `seeds` and `[[runs]]`, each a `strategy`, a `stream` and the `set` assignments
that pick its recipe and variant (`["recipe=paper", "peft=adapter"]`); the recipe brings the
reference backbone and preprocessing. `cilbench sweep --grid FILE` runs it on any executor (finished
runs are skipped, killed ones resume); `--dry-run` lists the runs and `estimate` prices them:

    FLOPs per image (forward, counted with torch's FlopCounterMode on the backbone built on the
    meta device, no weights) x images x passes, at `UTILISATION` of a named GPU's dense bf16 peak.

Passes per run, from the strategy's resolved Config and class flags (`cost_model`):
- frozen features (a strategy predicting from cached features): one forward of every train and
  test image (the extraction; the cache makes it once per backbone, so this is an upper bound);
- first-session PEFT (`peft` other than `none`): `epochs` forward+backward (3x a forward) over the
  first task's images, then one forward of the adapted branch over every image;
- a trained backbone or prompts: `epochs` forward+backward over every training image, plus one
  forward of the seen test images after each task; `joint` retrains on all data seen so far.
Image counts are the standard streams' official sizes (`STREAM_SIZES`), not what a fixture holds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cilbench.core.config import parse_assignments
from cilbench.core.errors import ConfigError
from cilbench.engine.spec import RunSpec

GPU_NAME = "H100 SXM"
GPU_BF16_PEAK = 989e12
"""Dense bf16 FLOP/s of an H100 SXM (NVIDIA's datasheet, without sparsity)."""
UTILISATION = 0.40
"""The fraction of that peak a run is assumed to sustain."""
BACKWARD_FACTOR = 3.0
"""A training step costs about 3 forwards (forward + backward of activations and weights)."""
STREAM_SIZES: dict[str, tuple[int, int, int]] = {
    "split-cifar100": (50_000, 10_000, 10),
    "split-imagenet-r": (24_000, 6_000, 10),
    "vtab": (1_796, 8_619, 5),
    "core50": (119_894, 44_972, 8),
}
"""Stream -> (training images, test images, tasks of the default protocol); where each count comes
from is `SIZE_SOURCES`."""
SIZE_SOURCES: dict[str, str] = {
    "split-cifar100": "the official split",
    "split-imagenet-r": "30,000 images split 80/20 as PILOT and APER do",
    "vtab": "APER's 50-class subset; no source publishes its counts, so an estimate "
    "(`cilbench data check vtab` counts a download)",
    "core50": "164,866 images, sessions 3, 7 and 10 held out for test (official per-session "
    "counts)",
}


@dataclass(frozen=True)
class Grid:
    """A grid file: the seeds and, per run, strategy, stream and `--set` assignments."""

    seeds: list[int]
    runs: list[tuple[str, str, dict[str, str]]]


def load_grid(path: Path) -> Grid:
    """Read and check a TOML grid file."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"Cannot read grid file {path}: {error}") from error
    seeds, runs = data.get("seeds"), data.get("runs")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: `seeds` must be a non-empty list of integers; got {seeds!r}")
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"{path}: no [[runs]]; each needs a strategy and a stream")
    parsed = []
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or not {"strategy", "stream"} <= set(run):
            raise ConfigError(f"{path}: run {i + 1} needs `strategy` and `stream`; got {run!r}")
        unknown = set(run) - {"strategy", "stream", "set"}
        if unknown:
            raise ConfigError(f"{path}: run {i + 1} has unknown keys {sorted(unknown)}")
        parsed.append((run["strategy"], run["stream"], parse_assignments(run.get("set", []))))
    return Grid(seeds, parsed)


def grid_specs(grid: Grid, base: RunSpec) -> list[RunSpec]:
    """One spec per (run, seed); `base.overrides` (the command line's `--set`) win over the
    file's, and the command line's `--backbone` over the recipe's."""
    from cilbench.engine.sweep import expand_grid

    specs = []
    for strategy, stream, assignments in grid.runs:
        spec = dataclasses.replace(base, overrides={**assignments, **base.overrides})
        specs += expand_grid(spec, [strategy], [stream], grid.seeds)
    return specs


@dataclass(frozen=True)
class Estimate:
    """What one run of the grid costs."""

    spec: RunSpec
    backbone: str
    image_size: int
    gflops_per_image: float
    epochs: int
    forwards: float
    """Forward passes of the backbone, in images (a training step counts BACKWARD_FACTOR)."""

    @property
    def flops(self) -> float:
        return self.gflops_per_image * 1e9 * self.forwards

    @property
    def gpu_hours(self) -> float:
        return self.flops / (UTILISATION * GPU_BF16_PEAK) / 3600


def estimate(specs: Sequence[RunSpec]) -> list[Estimate]:
    """Price every run (resolving its recipe; no data is read, no weights are loaded)."""
    from cilbench.api import STRATEGIES
    from cilbench.backbones.spec import resolve_backbone_spec
    from cilbench.engine.spec import resolve_run

    found = []
    for spec in specs:
        settings = resolve_run(spec)
        backbone = resolve_backbone_spec(settings.backbone)  # type: ignore[arg-type]
        size = int(settings.backbone_settings.get("image_size") or backbone.image_size or 224)
        name = spec.stream if isinstance(spec.stream, str) else ""
        if name not in STREAM_SIZES:
            raise ConfigError(
                f"No known image counts for stream {name!r}; the estimate covers "
                f"{', '.join(STREAM_SIZES)}."
            )
        gflops = forward_gflops(backbone.architecture, tuple(backbone.model_kwargs.items()), size)
        strategy = STRATEGIES.get(spec.strategy)(settings.config)  # __init__ only stores it
        epochs, forwards = cost_model(spec.strategy, strategy, settings.config, STREAM_SIZES[name])
        found.append(Estimate(spec, backbone.name, size, gflops, epochs, forwards))
    return found


EVERY_TASK_PEFT = frozenset({"ease", "mos"})
"""PEFT strategies that train an adapter set on every task, not only the first: priced as a
trained model (every image, `epochs` times) plus one evaluation of the seen test sets per task."""


def cost_model(
    name: str, strategy: Any, config: Any, sizes: tuple[int, int, int]
) -> tuple[int, float]:
    """(epochs, forward passes in images) of one run; see the module docstring."""
    train, test, tasks = sizes
    epochs = int(getattr(config, "epochs", 0) or 0)
    peft = getattr(config, "peft", None)
    seen_tests = test * (tasks + 1) / 2  # test sets seen after each task, summed
    if name == "der":
        return epochs, expanding_backbone_passes(train, test, tasks, epochs)
    if name == "foster":
        return epochs, boosting_passes(train, test, tasks, config)
    if name == "coil":
        return epochs, transport_passes(train, test, tasks, config)
    if name == "memo":
        return epochs, shared_trunk_passes(train, test, tasks, config)
    if name in EVERY_TASK_PEFT:
        return epochs, train * epochs * BACKWARD_FACTOR + seen_tests + float(train + test)
    if peft is not None:
        extraction = float(train + test)
        if str(peft) == "none":
            return 0, extraction
        first = train / tasks * epochs * BACKWARD_FACTOR
        return epochs, extraction + first + (train + test)
    if getattr(strategy, "predicts_from_features", False):
        return 0, float(train + test)
    trained = train * epochs * BACKWARD_FACTOR
    if name == "joint":
        trained *= (tasks + 1) / 2
    cached = float(train + test) if getattr(strategy, "predicts_with_features", False) else 0.0
    return epochs, trained + seen_tests + cached


def expanding_backbone_passes(train: int, test: int, tasks: int, epochs: int) -> float:
    """DER: task t (from 0) trains its new backbone and forwards the t frozen ones on its
    `train / tasks` images, then tests the seen classes through all t + 1."""
    trained = train * epochs * (BACKWARD_FACTOR + (tasks - 1) / 2)
    tested = test / tasks * sum((t + 1) ** 2 for t in range(tasks))
    return trained + tested


def boosting_passes(train: int, test: int, tasks: int, config: Any) -> float:
    """FOSTER: experience 0 trains one backbone (`first_epochs`); every later task boosts (trains
    a new backbone beside the frozen old one, `epochs`), then compresses (trains a student under
    the two-backbone teacher, `compression_epochs`); tests go through the teacher."""
    per_task = train / tasks
    later = config.epochs * (BACKWARD_FACTOR + 1) + config.compression_epochs * (
        BACKWARD_FACTOR + 2
    )
    trained = per_task * (config.first_epochs * BACKWARD_FACTOR + (tasks - 1) * later)
    tested = test / tasks * sum((t + 1) * (1 if t == 0 else 2) for t in range(tasks))
    return trained + tested


def transport_passes(train: int, test: int, tasks: int, config: Any) -> float:
    """Coil: every task trains on its `train / tasks` images (x 3), later tasks also on
    `memory_size` exemplars with the frozen old network beside (x 1); from epoch 1 on each of
    `ceil(steps / resolve_every)` retrospective plans a step forwards those images once more; the
    prospective plan of task t forwards the training images of every class seen by then (t + 1
    tasks' worth; `old_means=exemplars`: the memory and the new task); herding forwards each
    task's images once; then the seen test sets."""
    per_task = train / tasks
    data = per_task + config.memory_size
    steps = math.ceil(data / config.batch_size)
    plans = (config.epochs - 1) * math.ceil(steps / config.resolve_every)
    later = data * config.epochs * (BACKWARD_FACTOR + 1) + plans * data
    if config.old_means == "training":
        prospective = per_task * sum(t + 1 for t in range(1, tasks))
    else:
        prospective = data * (tasks - 1)
    trained = per_task * config.epochs * BACKWARD_FACTOR + (tasks - 1) * later
    return trained + prospective + train + test * (tasks + 1) / 2


REFERENCE_DEPTH = 12
"""Blocks of the recipes' ViT-B/16: MEMO's deep stacks are `deep_blocks / REFERENCE_DEPTH` of a
forward pass (the blocks' FLOPs; the patch embedding and pooling are left out)."""


def shared_trunk_passes(train: int, test: int, tasks: int, config: Any) -> float:
    """MEMO: experience 0 trains the whole backbone (`first_epochs`); task t >= 1 forwards the
    frozen shared blocks once (1 - f of a pass), the t frozen deep stacks (f each) and trains the
    new one (f x 3), `epochs` times, f = deep_blocks / 12; tests go through the shared blocks
    once and every stack."""
    deep = config.deep_blocks / REFERENCE_DEPTH
    per_task = train / tasks
    later = sum((1 - deep) + t * deep + deep * BACKWARD_FACTOR for t in range(1, tasks))
    trained = per_task * (config.first_epochs * BACKWARD_FACTOR + config.epochs * later)
    tested = test / tasks * sum((t + 1) * (1 - deep + (t + 1) * deep) for t in range(tasks))
    return trained + tested


@functools.cache
def forward_gflops(
    architecture: str, model_kwargs: tuple[tuple[str, Any], ...], size: int
) -> float:
    """GFLOPs of one image's forward pass, counted on the meta device (no weights, no memory)."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    kwargs = dict(model_kwargs)
    with torch.device("meta"):
        try:
            model = timm.create_model(architecture, num_classes=0, img_size=size, **kwargs)
        except TypeError:  # a convolutional network takes any input size
            model = timm.create_model(architecture, num_classes=0, **kwargs)
        images = torch.empty(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(images)
    return counter.get_total_flops() / 1e9


def assumptions() -> list[str]:
    """The lines a dry run prints under its table."""
    effective = UTILISATION * GPU_BF16_PEAK / 1e12
    return [
        f"GPU: {GPU_NAME}, {GPU_BF16_PEAK / 1e12:.0f} TFLOP/s dense bf16 peak, assumed "
        f"{UTILISATION:.0%} sustained = {effective:.0f} TFLOP/s",
        "FLOPs per image: one forward of the backbone at the run's input size, counted by "
        "torch.utils.flop_counter on the meta device; training step = "
        f"{BACKWARD_FACTOR:g} x forward",
        "images: "
        + "; ".join(
            f"{s} {tr:,} train / {te:,} test, {t} tasks ({SIZE_SOURCES[s]})"
            for s, (tr, te, t) in STREAM_SIZES.items()
        ),
        "passes: frozen features once per run (shared cache: an upper bound); first-session PEFT "
        "trains `epochs` on the first task, then forwards every image once more; trained "
        "backbones and prompts train `epochs` on every image and evaluate the seen test sets "
        "after each task; joint retrains on all data seen so far; DER forwards every earlier "
        "task's frozen backbone beside the trained one; FOSTER boosts beside the old backbone, "
        "then compresses under both; Coil adds the exemplars with the old network beside, the "
        "feature passes of its transport plans and herding; MEMO trains the whole backbone on "
        "task 0, then forwards the shared blocks once, every task's deep block and trains the "
        "newest",
        "not counted: data loading and decoding, the heads and classifiers trained on features "
        "(DKVB, SLCA's alignment, RanPAC's ridge), checkpoints",
    ]

"""The contract between streams, strategies and the runner.

A stream builder (a frozen dataclass of options) builds a `Stream`: experiences with training data
only, plus test sets that only the runner sees. A strategy trains on one experience at a time and
scores images (or frozen features) over the classes seen so far. Labels everywhere are positions in
the stream's class order, so the classes seen after experience t are always 0..n_seen-1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch

from cilbench.core.callbacks import Progress, SilentProgress
from cilbench.core.errors import ConfigError
from cilbench.core.registry import Registry
from cilbench.data.augment import Augmentation
from cilbench.data.sources import DatasetView
from cilbench.data.streams import (
    Experience,
    StreamBuilder,
    StreamInfo,
)

if TYPE_CHECKING:
    from cilbench.backbones.model import Backbone
    from cilbench.features import FeatureStore


def _no_other_images(stream_name: str = "") -> list[DatasetView]:
    raise ConfigError(
        "This run supplies no unlabelled images (RunContext.unlabelled_images was not given)."
    )


@dataclass(frozen=True)
class RunContext:
    """Everything a strategy gets from the run, handed over once at `setup()`.

    Run settings reach a strategy only through here (the backbone and the feature store carry
    none): the runner fills it, tests build it directly.
    """

    backbone: Backbone
    info: StreamInfo
    features: FeatureStore
    """The frozen backbone's feature store (computed once, then read from disk)."""
    progress: Progress = field(default_factory=SilentProgress)
    """Progress bars for long loops (rich bars under the CLI)."""
    num_workers: int | None = None
    """`--workers`: data-loader processes; None: the loaders' default for the data."""
    augmentation: Augmentation = field(default_factory=Augmentation)
    """The run's training augmentation (`augment.*`), for `data.augment.training_data`."""
    unlabelled_images: Callable[[str], list[DatasetView]] = _no_other_images
    """`unlabelled_images("")`: the training views of every experience of this stream, future ones
    included, labels removed; `unlabelled_images(name)`: those of another registered stream, built
    by the runner with its default options (DKVB's key initialisation)."""


@runtime_checkable
class Strategy(Protocol):
    """What the runner calls. Subclass `BaseStrategy` rather than implementing this from scratch."""

    def setup(self, context: RunContext) -> None: ...

    def train_experience(self, experience: Experience) -> None: ...

    def predict(self, images: torch.Tensor) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None: ...


@dataclass(frozen=True)
class NoConfig:
    """Config of a strategy without hyper-parameters."""


class BaseStrategy:
    """Shared plumbing: config, seed, device, the backbone and the feature store.

    A strategy that only needs frozen features sets `predicts_from_features = True` and implements
    `predict_features`; the runner then evaluates it on cached test features. Any randomness should
    come from `self.generator(experience.index)` so that runs and resumed runs are reproducible.
    """

    Config: ClassVar[type] = NoConfig
    recipes: ClassVar[Mapping[str, Any]] = {}
    """Per-stream settings over the Config defaults: a `cilbench.engine.recipes.Recipe` (or a list
    of them: variants and named alternatives), or a plain mapping such as {"epochs": 20}."""
    variant_key: ClassVar[str | None] = None
    """The Config field whose `--set` value picks a variant's recipe (ADAM's `peft`)."""
    predicts_from_features: ClassVar[bool] = False
    predicts_with_features: ClassVar[bool] = False
    """True: the runner evaluates through `predict_with_features(images, features)`, handing over
    the frozen backbone's cached features of the same images (e.g. a prompt method's query), so
    evaluation never runs the frozen model a second time."""
    uses_exemplars: ClassVar[bool] = False
    class_incremental_only: ClassVar[bool] = False
    """True: every experience must bring only new classes (the runner refuses other streams)."""
    accuracy_convention: ClassVar[str] = "sample-weighted"
    """How the method's papers average accuracy: `sample-weighted` (PyCIL, PILOT, APER, SLCA) or
    `task-averaged` (L2P, DualPrompt, CODA-Prompt, RanPAC); a board's main table shows it."""
    frozen_backbone: ClassVar[bool | None] = None
    """Pre-trained weights never updated (None: from `config.train_backbone`, else True when
    predicting from frozen features, else not declared)."""
    deprecated: ClassVar[str] = ""
    """Non-empty: a name kept only so that results stored under it load, resolve and replay; the
    message (what to use instead) the runner logs when it runs. Conformance and the recipe
    listing skip it."""

    def __init__(self, config: Any = None, *, seed: int = 0, device: str | torch.device = "cpu"):
        self.config = config if config is not None else self.Config()
        self.seed = seed
        self.device = torch.device(device)

    def setup(self, context: RunContext) -> None:
        """Receive the run's context: backbone, stream info, feature store and run settings."""
        self.context = context
        self.backbone = context.backbone
        self.info = context.info
        self.features = context.features
        self.progress = context.progress

    def before_stream(self) -> None:
        """Called once before the first experience of a fresh run (not on resume); no-op here.

        Only for methods whose paper prepares on unlabelled inputs before the stream (DKVB's key
        initialisation, through `self.context.unlabelled_images`); a strategy that uses it must
        say so in `report()`.
        """

    def train_experience(self, experience: Experience) -> None:
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Scores (B, num_seen_classes) for a batch of normalised images."""
        if not (self.predicts_from_features or self.predicts_with_features):
            raise NotImplementedError(f"{type(self).__name__} must implement predict()")
        with torch.no_grad():
            features = self.backbone.forward_features(images)
            if self.predicts_with_features:
                return self.predict_with_features(images, features)
            return self.predict_features(features)

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        """Scores (B, num_seen_classes) for frozen-backbone features."""
        raise NotImplementedError(f"{type(self).__name__} does not predict from frozen features")

    def predict_with_features(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Scores (B, num_seen_classes) for prepared images and the frozen features of the same
        images (what `self.backbone.forward_features(images)` returns, read from the cache)."""
        raise NotImplementedError(f"{type(self).__name__} does not predict with frozen features")

    def features_of(self, view: DatasetView) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, labels) of every image in `view`, as `predict_features` expects them.

        The frozen store's features by default. A strategy with cached features of its own
        (ADAM's adapted branch, extracted once after task 0) overrides this, so the runner
        evaluates it on cached test features too.
        """
        return self.features.get(view)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything learned so far, as tensors (saved with safetensors)."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned."""

    def report(self) -> dict[str, Any]:
        """Strategy-specific figures for the result file (JSON-serialisable), e.g. key usage."""
        return {}

    def leaderboard_flags(self) -> dict[str, bool | str | None]:
        """Facts a leaderboard prints beside the numbers (None: not declared).

        Override to add config-dependent ones; prompt strategies add `batchwise_prompt_vote`.
        """
        frozen = self.frozen_backbone
        if frozen is None and hasattr(self.config, "train_backbone"):
            frozen = not self.config.train_backbone
        if frozen is None and self.predicts_from_features:
            frozen = True
        budget = self.exemplar_budget()
        return {
            "uses_exemplars": self.uses_exemplars or budget is not None,
            "exemplar_budget": budget,
            "frozen_backbone": frozen,
            "key_init_on_future_inputs": type(self).before_stream is not BaseStrategy.before_stream,
        }

    def trainable_parameters(self) -> int:
        """Number of parameters this strategy trains (a cost figure)."""
        return 0

    def exemplar_budget(self) -> str | None:
        """The exemplar budget a rehearsal strategy keeps to, as a board prints it ('2000 total,
        herding'; `cilbench.learn.exemplars.describe`); None: it keeps no training images."""
        return None

    def exemplar_images(self) -> int:
        """Training images held in exemplar memory now (the cost counts their bytes)."""
        return 0

    def generator(self, experience_index: int) -> torch.Generator:
        """A CPU generator seeded from the run seed and the experience index."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + experience_index)


STRATEGIES: Registry[type[BaseStrategy]] = Registry(
    "strategy", package="cilbench.strategies", entry_point_group="cilbench.strategies"
)
STREAMS: Registry[type[StreamBuilder]] = Registry(
    "stream", package="cilbench.benchmarks", entry_point_group="cilbench.streams"
)
register_strategy = STRATEGIES.register
register_stream = STREAMS.register

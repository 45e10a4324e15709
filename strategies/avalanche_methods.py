"""Classic continual-learning methods from avalanche-lib, run on cilbench's backbones and streams.

One thin adapter, not re-implementations: each experience is wrapped as an avalanche dataset
(uint8 images; transform group "train" = cilbench's augmentation, "eval" = its test preprocessing)
and passed to avalanche's own training template (`EWC`, `LwF`, `Replay`, `DER`: Dark Experience
Replay, registered as `avalanche-dark-er`; cilbench's `der` is Yan et al.'s Dynamically Expandable
Representation). The model is a trainable copy of the backbone with one linear head over all the
stream's classes (fixed size, as dark experience replay's stored logits require); predictions
score the classes seen so far. Evaluation is cilbench's, so avalanche's evaluator runs with no
metrics and no loggers. Avalanche is imported lazily (it takes seconds to import).

Pitfalls of avalanche 0.6.0 avoided here: experiences are built directly (its
`class_incremental_benchmark` drops classes on uneven splits and reseeds torch's global RNG),
checkpoints are cilbench's safetensors (its `save_checkpoint` fails to pickle here), and its
`MetricCollector` is not used. Avalanche draws from the global torch, numpy and `random` RNGs;
they are seeded from the experience's generator and restored afterwards.

Resuming: the state holds the model, enough to predict, but not the method's memory (EWC
importances, LwF's previous model, the replay and dark-ER buffers), so training a further
experience after a resume is refused with a clear message instead of silently diverging from an
uninterrupted run.

Config (all methods): `epochs`, `batch_size`, `lr`, `backbone_lr_scale`, `optimizer`, `momentum`,
`weight_decay`, `schedule`, `milestones`, `gamma` (reset every experience), `train_backbone`,
`num_workers`. Per method: EWC `ewc_lambda`, `ewc_mode`, `ewc_decay` (online EWC by default: one
accumulated importance instead of one per experience, so memory stays at two copies of the weights;
lambda 3 because with full fine-tuning at SGD lr 0.01 + momentum the accumulated penalty made
training collapse (1000) or diverge at the fourth experience (100; 10 on seed 1 with one thread) on
the offline demo); LwF `lwf_alpha`, `lwf_temperature`; replay and dark ER `mem_size`; dark ER
`der_alpha` (logit MSE), `der_beta` (replay cross-entropy; > 0 is DER++); the field names keep
avalanche's (and results stored under the old name `avalanche-der`, a deprecated alias that still
runs, replay with `run --from`). Each experience's per-epoch training cross-entropy is reported
(`epoch_losses`) and checkpointed.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cilbench.api import BaseStrategy, RunContext, register_strategy
from cilbench.backbones.preprocessing import Preprocessing
from cilbench.core.config import NonNegative, Positive, Range
from cilbench.core.errors import CilbenchError
from cilbench.data.streams import Experience
from cilbench.learn.heads import HeadedNetwork, load_network, network_state
from cilbench.learn.training import (
    EpochLosses,
    EpochMeans,
    NonFiniteLossError,
    OptimizerName,
    Schedule,
    TrainSettings,
    head_and_backbone_groups,
    make_optimizer,
    make_scheduler,
)


@dataclass(frozen=True)
class AvalancheConfig:
    epochs: Annotated[int, Positive()] = 5
    batch_size: Annotated[int, Positive()] = 32
    lr: Annotated[float, Positive()] = 0.01
    backbone_lr_scale: Annotated[float, NonNegative()] = 1.0
    optimizer: OptimizerName = "sgd"
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9
    weight_decay: Annotated[float, NonNegative()] = 0.0
    schedule: Schedule = "cosine"
    milestones: Annotated[tuple[int, ...], NonNegative()] = ()
    gamma: Annotated[float, Positive()] = 0.1
    train_backbone: bool = True
    num_workers: Annotated[int, NonNegative()] = 0

    def train_settings(self) -> TrainSettings:
        """The optimiser and schedule of avalanche's template (its own loop does the epochs)."""
        return TrainSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            milestones=self.milestones,
            gamma=self.gamma,
        )


@dataclass(frozen=True)
class EWCConfig(AvalancheConfig):
    ewc_lambda: Annotated[float, NonNegative()] = 3.0
    ewc_mode: Literal["separate", "online"] = "online"
    ewc_decay: Annotated[float, Range(0, 1, low_open=True)] = 1.0


@dataclass(frozen=True)
class LwFConfig(AvalancheConfig):
    lwf_alpha: Annotated[float, NonNegative()] = 1.0
    lwf_temperature: Annotated[float, Positive()] = 2.0


@dataclass(frozen=True)
class ReplayConfig(AvalancheConfig):
    mem_size: Annotated[int, Positive()] = 2000


@dataclass(frozen=True)
class DarkERConfig(ReplayConfig):
    der_alpha: Annotated[float, NonNegative()] = 0.1
    der_beta: Annotated[float, NonNegative()] = 0.5


RECIPES: dict[str, dict[str, Any]] = {
    "synthetic": {"epochs": 1, "batch_size": 16},
    "split-fashion-mnist-mini": {"epochs": 1, "batch_size": 32},
}


class _RawImageModel(nn.Module):
    """Takes the uint8 batches avalanche's loaders produce and normalises them on the device."""

    def __init__(self, network: HeadedNetwork, preprocessing: Preprocessing):
        super().__init__()
        self.network = network
        self.preprocessing = preprocessing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        prepared = self.preprocessing.normalize(images)
        return self.network(prepared.contiguous(memory_format=torch.channels_last))


@contextlib.contextmanager
def quiet_avalanche() -> Iterator[None]:
    """Drop warnings raised inside avalanche (and its optional qpsolvers), pass on all others.

    Avalanche's deprecation decorator inserts its own "once" filter, so filters cannot silence
    it; warnings are recorded instead and the ones from other libraries re-emitted.
    """
    with warnings.catch_warnings(record=True) as caught:
        yield
    for warning in caught:
        path = Path(warning.filename).parts
        if "avalanche" not in path and "qpsolvers" not in path:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )


@contextlib.contextmanager
def seeded_global_rngs(generator: torch.Generator) -> Iterator[None]:
    """Seed torch's, numpy's and Python's global RNGs from `generator`; restore them after."""
    seeds = torch.randint(2**31 - 1, (3,), generator=generator).tolist()
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds[0])
        np.random.seed(seeds[1])
        random.seed(seeds[2])
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


class AvalancheStrategy(BaseStrategy):
    """Runs an avalanche training template on each experience; subclasses pick the template."""

    Config: ClassVar[type] = AvalancheConfig
    recipes = RECIPES
    template_name: ClassVar[str] = ""

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        backbone = context.backbone
        self.network = HeadedNetwork(backbone, self.config.train_backbone)
        self.network.heads.grow(context.info.num_classes, self.generator(-1))
        self.model = _RawImageModel(self.network, backbone.preprocessing)
        self.template: Any = None
        self.watch: Any = None
        self.num_seen = 0
        self.resumed = False
        self.losses = EpochLosses()

    def template_arguments(self) -> dict[str, Any]:
        """The method's own keyword arguments for its avalanche template."""
        return {}

    memory_selection: ClassVar[str] = ""
    """How the method's avalanche buffer picks images (rehearsal methods only)."""

    def exemplar_budget(self) -> str | None:
        if not self.memory_selection:
            return None
        return f"{self.config.mem_size} total, {self.memory_selection}"

    def exemplar_images(self) -> int:
        """Images in the avalanche buffer (the template's or a plugin's storage policy)."""
        if self.template is None:
            return 0
        holders = [self.template, *self.template.plugins]
        policies = [h.storage_policy for h in holders if hasattr(h, "storage_policy")]
        return sum(len(p.buffer) for p in policies)

    def _make_template(self) -> Any:
        import avalanche.training as templates
        from avalanche.training.plugins import EvaluationPlugin, LRSchedulerPlugin

        config = self.config
        settings = config.train_settings()
        backbone = self.network.backbone if config.train_backbone else None
        groups = head_and_backbone_groups(
            self.network.heads.parameters(), backbone, config.lr, config.backbone_lr_scale
        )
        optimizer = make_optimizer(groups, settings)
        scheduler = LRSchedulerPlugin(
            make_scheduler(optimizer, settings), reset_scheduler=True, reset_lr=True
        )
        return getattr(templates, self.template_name)(
            model=self.model,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=config.batch_size,
            train_epochs=config.epochs,
            eval_mb_size=config.batch_size,
            device=self.device,
            plugins=[scheduler, self.watch],
            evaluator=EvaluationPlugin(loggers=[]),
            eval_every=-1,
            **self.template_arguments(),
        )

    def _avalanche_experience(self, experience: Experience) -> Any:
        from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
        from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
        from avalanche.benchmarks.utils.classification_dataset import (
            _make_taskaware_classification_dataset,
        )

        preprocessing = self.backbone.preprocessing
        dataset = _make_taskaware_classification_dataset(
            experience.train.with_transform(_identity),
            transform_groups={
                "train": (preprocessing.train_transform(self.context.augmentation), None),
                "eval": (preprocessing.sample_transform(), None),
            },
            initial_transform_group="train",
            task_labels=0,
            targets=[int(label) for label in experience.train.labels],
        )
        wrapped = DatasetExperience(dataset=dataset)
        stream = EagerCLStream("train", [wrapped])  # sets the experience's origin stream
        wrapped.current_experience = experience.index
        return stream[0]

    def train_experience(self, experience: Experience) -> None:
        if self.resumed:
            raise CilbenchError(
                f"{type(self).__name__}: avalanche methods cannot continue a resumed run (their "
                "memory, e.g. EWC importances or replay buffers, is not checkpointed); run "
                "without --resume."
            )
        with quiet_avalanche():
            self._train(experience)
        self.network.eval()
        self.network.zero_grad(set_to_none=True)  # free the last step's gradients
        self.num_seen = experience.num_seen_classes

    def _train(self, experience: Experience) -> None:
        if self.template is None:
            self.watch = _training_watch(type(self).__name__)
            self.template = self._make_template()
        self.watch.cross_entropy = EpochMeans()
        with seeded_global_rngs(self.generator(experience.index)):
            self.template.train(
                self._avalanche_experience(experience), num_workers=self.config.num_workers
            )
        self.losses.record(experience.index, self.watch.cross_entropy.means())

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        self.network.eval()
        return self.network(images)[:, : self.num_seen]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            **network_state(self.network),
            "num_seen": torch.tensor(self.num_seen),
            **self.losses.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        load_network(self.network, state)
        self.num_seen = int(state["num_seen"])
        self.resumed = self.num_seen > 0
        self.losses.load_state_dict(state)

    def report(self) -> dict[str, Any]:
        """Each experience's per-epoch cross-entropy (the method's penalty not included), over
        the head's logits for every class of the stream (so chance is ln of their number)."""
        return {
            "epoch_losses": self.losses.report(),
            "loss_classes": self.network.heads.num_classes,
        }

    def trainable_parameters(self) -> int:
        return self.network.parameter_count()


def _training_watch(name: str) -> Any:
    """An avalanche plugin that keeps the per-epoch mean cross-entropy of the training batches
    (in `cross_entropy`, set before each experience; the board's did-not-train check compares it
    with chance, which the method's penalty would blur) and stops training on a NaN/inf loss
    (penalties included)."""
    from avalanche.core import SupervisedPlugin

    class TrainingWatch(SupervisedPlugin):
        def __init__(self) -> None:
            super().__init__()
            self.cross_entropy = EpochMeans()

        def before_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            self.cross_entropy.start_epoch(strategy.clock.train_exp_epochs)

        def after_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            labels = strategy.mb_y
            loss = F.cross_entropy(strategy.mb_output.detach(), labels)
            self.cross_entropy.add(loss, len(labels))

        def before_update(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            if not torch.isfinite(strategy.loss):
                clock = strategy.clock
                raise NonFiniteLossError(
                    f"{name}: loss is {strategy.loss.item()} at epoch {clock.train_exp_epochs}, "
                    f"step {clock.train_epoch_iterations}. Lower the learning rate or the "
                    "method's penalty weight; the last checkpoint (previous experience) is intact."
                )

    return TrainingWatch()


def _identity(image: torch.Tensor) -> torch.Tensor:
    return image


@register_strategy("avalanche-ewc")
class AvalancheEWC(AvalancheStrategy):
    """Elastic weight consolidation (Kirkpatrick et al., 2017) via avalanche's `EWC`."""

    Config = EWCConfig
    template_name = "EWC"

    def template_arguments(self) -> dict[str, Any]:
        config = self.config
        decay = config.ewc_decay if config.ewc_mode == "online" else None
        return {"ewc_lambda": config.ewc_lambda, "mode": config.ewc_mode, "decay_factor": decay}


@register_strategy("avalanche-lwf")
class AvalancheLwF(AvalancheStrategy):
    """Learning without forgetting (Li & Hoiem, 2016) via avalanche's `LwF`."""

    Config = LwFConfig
    template_name = "LwF"

    def template_arguments(self) -> dict[str, Any]:
        return {"alpha": self.config.lwf_alpha, "temperature": self.config.lwf_temperature}


@register_strategy("avalanche-replay")
class AvalancheReplay(AvalancheStrategy):
    """Experience replay with a class-agnostic, experience-balanced buffer (avalanche `Replay`)."""

    Config = ReplayConfig
    template_name = "Replay"
    uses_exemplars = True
    memory_selection = "random, balanced over experiences"

    def template_arguments(self) -> dict[str, Any]:
        return {"mem_size": self.config.mem_size}


@register_strategy("avalanche-dark-er")
class AvalancheDarkER(AvalancheStrategy):
    """Dark experience replay, DER++ when der_beta > 0 (Buzzega et al., 2020; avalanche `DER`)."""

    Config = DarkERConfig
    template_name = "DER"
    uses_exemplars = True
    memory_selection = "reservoir sampling, balanced over classes"

    def template_arguments(self) -> dict[str, Any]:
        config = self.config
        return {"mem_size": config.mem_size, "alpha": config.der_alpha, "beta": config.der_beta}


@register_strategy("avalanche-der")
class AvalancheDERDeprecated(AvalancheDarkER):
    """Deprecated name of avalanche-dark-er (Dark Experience Replay), kept so results stored
    under it load and replay; `der` is Yan et al.'s DER."""

    deprecated = (
        "avalanche-der is Dark Experience Replay; it is now avalanche-dark-er; `der` is Yan et "
        "al.'s DER. avalanche-der still runs (same method, same run ids as before) so that "
        "stored results replay; use avalanche-dark-er for new runs."
    )

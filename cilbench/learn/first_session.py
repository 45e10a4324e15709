"""First-session adaptation: tune a PEFT copy of the backbone on experience 0, then freeze it.

ADAM/APER and RanPAC adapt the pre-trained model once, on the first experience only: a cosine
classifier with a learnable scale sits on the PEFT model and everything trainable is fitted with
plain cross-entropy (SGD momentum 0.9, cosine schedule in the references). The adapted model never
changes afterwards, so `AdaptedBranch` wraps it in a backbone of its own (tag `<backbone>+<name>`,
digest of its weights) whose feature store computes each image's features once and caches them on
disk, like the frozen backbone's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cilbench.api import BaseStrategy, RunContext
from cilbench.core.config import NonNegative, Positive, Range
from cilbench.data.augment import training_data
from cilbench.data.sources import DatasetView
from cilbench.data.streams import Experience
from cilbench.features import FeatureStore
from cilbench.learn.adapters import (
    VIT_ONLY,
    PeftSettings,
    apply_peft,
    require_vit,
    share_parameters,
)
from cilbench.learn.training import OptimizerName, TrainSettings, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FirstSessionConfig(PeftSettings):
    """Shared hyper-parameters (defaults: APER + adapter on CIFAR-100 in LAMDA-PILOT).

    peft, adapter_*, vpt_tokens, lora_*: the PEFT variant and its sizes (`PeftSettings`).
    epochs, batch_size, lr, weight_decay, min_lr, optimizer, momentum: first-session training
    (cosine schedule to min_lr). `optimizer`: `sgd` (momentum), `adam` (torch Adam) or `adamw`;
    a reference config's `"optimizer": "adam"` means AdamW (PILOT models/aper_*.py), so reference
    recipes translate it to `adamw`.
    """

    epochs: Annotated[int, Positive()] = 20
    batch_size: Annotated[int, Positive()] = 48
    lr: Annotated[float, Positive()] = 0.01
    weight_decay: Annotated[float, NonNegative()] = 5e-4
    min_lr: Annotated[float, NonNegative()] = 0.0
    optimizer: OptimizerName = "sgd"
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9

    def train_settings(self) -> TrainSettings:
        """First-session training: these fields, cosine schedule to `min_lr`."""
        return TrainSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule="cosine",
            min_lr=self.min_lr,
        )


def first_session_settings(
    peft: str, epochs: int, lr: float, batch_size: int, weight_decay: float, **extra: Any
) -> dict[str, Any]:
    """A reference config's first-session row as settings (SGD; 5 prompt tokens for VPT)."""
    sizes = {"vpt_tokens": 5} if peft.startswith("vpt") else {}
    return {
        "peft": peft, "epochs": epochs, "lr": lr, "batch_size": batch_size,
        "weight_decay": weight_decay, **sizes, **extra,
    }  # fmt: skip


class CosineHead(nn.Module):
    """`sigma * cos(f, w_c)` for every class c, with a learnable scale sigma starting at 1."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        self.weight = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))
        self.sigma = nn.Parameter(torch.ones(1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).T
        return self.sigma * cosine


class AdaptedBranch:
    """The backbone adapted on the first experience, frozen afterwards, with its feature store."""

    def __init__(
        self,
        context: RunContext,
        settings: PeftSettings,
        name: str,
        *,
        share_frozen: bool = False,
    ):
        """`share_frozen`: the adapted model uses the frozen backbone's parameter tensors for
        everything the PEFT variant leaves frozen (EASE's per-task adapter sets on one ViT)."""
        self.share_frozen = share_frozen
        self.context = context
        self.backbone = context.backbone
        self.frozen_store = context.features
        self.settings = settings
        self.name = name
        self.model: nn.Module | None = None
        self.store: FeatureStore | None = None
        self.trained_parameters = 0
        self.losses: list[float] = []
        self._kept: list[str] = []

    @property
    def ready(self) -> bool:
        """Whether the first session has been trained (or restored)."""
        return self.model is not None

    def check(self) -> None:
        """Fail before any data is read when the variant needs a ViT and the backbone is not one."""
        if self.settings.peft not in VIT_ONLY:
            return
        import timm

        spec = self.backbone.spec
        with torch.device("meta"):  # builds the architecture without memory or weights
            probe = timm.create_model(spec.architecture, **spec.model_kwargs)
        require_vit(self.settings.peft, probe, self.backbone.tag)

    def train(
        self,
        experience: Experience,
        settings: TrainSettings,
        generator: torch.Generator,
        known: int = 0,
    ) -> None:
        """Fit the PEFT parameters and a cosine head on `experience`, then freeze the model.

        `known`: the head covers classes known.. only (labels shifted by `known`): EASE trains
        each task's adapter with a head over that task's classes; ADAM, RanPAC and FeCAM train
        the first session with 0."""
        model, head = self._build(experience.num_seen_classes - known, generator)
        model.train()
        head.train()

        def loss_fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(head(model(images)), labels - known)

        data, prepare = training_data(self.backbone, [experience.train], self.context.augmentation)
        self.losses = fit(
            loss_fn,
            [{"params": list(model.parameters())}, {"params": list(head.parameters())}],
            data,
            prepare,
            settings,
            generator,
            device=self.backbone.device,
            progress=self.context.progress,
            description=f"{self.name}: first session ({self.settings.peft})",
            num_workers=self.context.num_workers,
            precision=self.backbone.precision,
            compile=self.backbone.compile,
        )
        log.info("%s first-session losses per epoch: %s", self.name, self.losses)
        self._freeze(model)

    def features(self, view: DatasetView) -> tuple[torch.Tensor, torch.Tensor]:
        """(adapted features, labels) of `view`, computed once per image and cached."""
        assert self.store is not None, "the first session has not been trained"
        return self.store.get(view)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Adapted features of a prepared batch."""
        assert self.model is not None, "the first session has not been trained"
        return self.model(images)

    def state_dict(self, prefix: str = "branch.") -> dict[str, torch.Tensor]:
        """The trained tensors (PEFT parameters and buffers), enough to rebuild the model."""
        if self.model is None:
            return {}
        state = self.model.state_dict()
        tensors = {f"{prefix}{name}": state[name] for name in self._kept}
        tensors[f"{prefix}trained_parameters"] = torch.tensor(self.trained_parameters)
        return tensors

    def load_state_dict(self, state: Mapping[str, torch.Tensor], prefix: str = "branch.") -> None:
        """Rebuild the adapted model from `state_dict`'s tensors (nothing to do if untrained)."""
        if f"{prefix}trained_parameters" not in state:
            return
        model = self._new_model()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # initial values are overwritten below
            self._kept = _kept_names(model, apply_peft(model, self.settings))
        model.load_state_dict({n: state[prefix + n] for n in self._kept}, strict=False)
        self.trained_parameters = int(state[f"{prefix}trained_parameters"])
        self._freeze(model)

    def _build(self, num_classes: int, generator: torch.Generator) -> tuple[nn.Module, CosineHead]:
        model = self._new_model()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            trainable = apply_peft(model, self.settings)
            head = CosineHead(int(model.num_features), num_classes).to(self.backbone.device)
        self._kept = _kept_names(model, trainable)
        self.trained_parameters = sum(
            p.numel() for m in (model, head) for p in m.parameters() if p.requires_grad
        )
        return model, head

    def _new_model(self) -> Any:
        model = self.backbone.build_model()
        if self.share_frozen:
            share_parameters(model, self.backbone.model)
        return model

    def _freeze(self, model: nn.Module) -> None:
        derived = self.backbone.derive(model, f"{self.name}-{self.settings.peft}")
        self.model = derived.model
        base = self.frozen_store
        self.store = FeatureStore(
            derived,
            base.cache_dir,
            batch_size=base.batch_size,
            num_workers=base.num_workers,
            progress=base.progress,
        )


def first_session_branch(
    context: RunContext, config: FirstSessionConfig, name: str
) -> AdaptedBranch | None:
    """The first-session branch of `config`'s PEFT variant, checked before any data is read;
    None when `config.peft` is "none" (RanPAC and FeCAM without a first session)."""
    if config.peft == "none":
        return None
    branch = AdaptedBranch(context, config.peft_settings(), name)
    branch.check()
    return branch


def _kept_names(model: nn.Module, trainable: list[str]) -> list[str]:
    """Trainable parameters plus persistent buffers (batch-norm statistics change in training)."""
    state = model.state_dict()
    buffers = [name for name, _ in model.named_buffers() if name in state]
    return sorted(set(trainable) | set(buffers))


class FirstSessionFeatures(BaseStrategy):
    """A strategy on frozen features that may first adapt them (RanPAC's Phase 1, FeCAM): with
    `peft != "none"` its features come from the backbone adapted on experience 0, else from the
    frozen store. Subclasses call `adapt` at the start of `train_experience` and fold
    `branch_state()` / `branch_report()` into their own state and report."""

    predicts_from_features = True
    branch_name: ClassVar[str]
    """Names the adapted features' cache key (`<backbone>+<branch_name>-<peft>`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.branch: AdaptedBranch | None = None

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        self.branch = first_session_branch(context, self.config, self.branch_name)

    def adapt(self, experience: Experience, generator: torch.Generator) -> None:
        """Train the first session on `experience` unless it is trained (or there is none)."""
        if self.branch is not None and not self.branch.ready:
            self.branch.train(experience, self.config.train_settings(), generator)

    def features_of(self, view: DatasetView) -> tuple[torch.Tensor, torch.Tensor]:
        if self.branch is None:
            return self.features.get(view)
        return self.branch.features(view)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.branch is None:
                return self.predict_features(self.backbone.forward_features(images))
            return self.predict_features(self.branch.forward(images))

    def trainable_parameters(self) -> int:
        """Parameters trained by gradient in the first session (closed-form parts are not)."""
        return self.branch.trained_parameters if self.branch else 0

    def branch_state(self) -> dict[str, torch.Tensor]:
        return self.branch.state_dict() if self.branch else {}

    def load_branch_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if self.branch is not None:
            self.branch.load_state_dict(state)

    def branch_report(self) -> dict[str, Any]:
        store = self.branch.store if self.branch else None
        return {
            "first_session_losses": self.branch.losses if self.branch else [],
            "adapted_images_forwarded": store.images_forwarded if store else 0,
        }

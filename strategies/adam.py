"""ADAM / APER: adapt the pre-trained model on the first session, then prototypes of both models.

Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models: Generalizability and
Adaptivity are All You Need" (2023; the method is called ADAM, later APER). A PEFT copy of the
backbone is tuned on the first experience only, with a cosine classifier (learnable scale);
afterwards, for every experience, each new class gets the mean of its concatenated
[frozen pre-trained | adapted] features as prototype, and images go to the most cosine-similar
prototype. Old prototypes never change; a class that reappears (domain-incremental streams)
updates its running mean.

Config (see `cilbench.first_session.FirstSessionConfig`): `peft` picks the variant (adapter, ssf,
vpt-shallow, vpt-deep, lora, finetune); the first-session fields default to the LAMDA-PILOT APER
adapter settings. The recipes hold the adapter's reference settings per stream; the other
variants' reference settings (methods.md, PILOT exps) are set with `--set`:

- split-cifar100: ssf, vpt-shallow, vpt-deep (vpt_tokens=5) as adapter; finetune
  `epochs=6 batch_size=128 weight_decay=0.05`.
- split-imagenet-r: ssf as adapter; vpt-deep `epochs=20 lr=0.05 batch_size=24 vpt_tokens=30`;
  finetune `epochs=5 batch_size=144 weight_decay=0.005`.

Where cilbench differs from the reference: the frozen branch's features come from the shared
feature cache and the adapted branch's are extracted once after task 0 and cached, so no image is
pushed through a branch twice (the reference re-runs both ViTs on every image at every task and
evaluates the test set after every training epoch); VPT prompts are dropped before pooling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cilbench.adapters import PeftSettings, PeftVariant
from cilbench.api import Experience, StreamInfo, register_strategy
from cilbench.backbones import Backbone
from cilbench.data import DatasetView
from cilbench.features import FeatureStore
from cilbench.first_session import AdaptedBranch, FirstSessionConfig
from cilbench.prototypes import PrototypeStrategy, cosine_scores
from cilbench.training import TrainSettings


@dataclass(frozen=True)
class AdamConfig(FirstSessionConfig):
    """ADAM/APER hyper-parameters; `peft` is one of the PEFT variants (no 'none')."""

    peft: PeftVariant = "adapter"


@register_strategy("adam")
class Adam(PrototypeStrategy):
    """Cosine to class means of [frozen | first-session-adapted] features."""

    Config = AdamConfig
    recipes: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "synthetic": {"epochs": 1, "batch_size": 16},
        "split-fashion-mnist-mini": {"peft": "finetune", "epochs": 1, "batch_size": 64},
        "split-cifar100": {"epochs": 20, "lr": 0.01, "batch_size": 48, "weight_decay": 5e-4},
        "split-imagenet-r": {"epochs": 10, "lr": 0.05, "batch_size": 16, "weight_decay": 5e-3},
    }

    def setup(self, backbone: Backbone, info: StreamInfo, features: FeatureStore) -> None:
        super().setup(backbone, info, features)
        self.branch = AdaptedBranch(
            backbone, features, PeftSettings.from_config(self.config), "adam"
        )
        self.branch.check()

    def train_experience(self, experience: Experience) -> None:
        if not self.branch.ready:
            settings = TrainSettings.from_config(self.config)
            self.branch.train(experience, settings, self.generator(experience.index))
        super().train_experience(experience)

    def features_of(self, view: DatasetView) -> tuple[torch.Tensor, torch.Tensor]:
        frozen, labels = self.features.get(view)
        adapted, _ = self.branch.features(view)
        return torch.cat([frozen, adapted], dim=1), labels

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            frozen = self.backbone.forward_features(images)
            return self.predict_features(torch.cat([frozen, self.branch.forward(images)], dim=1))

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_scores(features, self.prototypes())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), **self.branch.state_dict()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self.branch.load_state_dict(state)

    def trainable_parameters(self) -> int:
        return self.branch.trained_parameters

    def report(self) -> dict[str, Any]:
        store = self.branch.store
        return {
            "first_session_losses": self.branch.losses,
            "adapted_images_forwarded": store.images_forwarded if store else 0,
        }

"""Joint training: the upper bound (ceiling) of a class-incremental leaderboard.

After every experience, a fresh model (pre-trained backbone, new linear head over all seen
classes) is trained on the union of all training data seen so far, so row t of the accuracy matrix
is what non-incremental training on experiences 0..t reaches. Same Config and learner as
`finetune` (`cilbench.learn.finetuning`, with `loss=seen`), including `train_backbone=false` for a
frozen-backbone linear probe on cached features.

Recipes: `ranpac` (default) is RanPAC's "joint full fine-tuning" (args/<dataset>_publish.csv row
ID 1: body lr 1e-4, head lr 0.01, 30 epochs, constant lr, batch 128; RanPAC trains it once on all
classes, which is the last row here); `shared-head` is cilbench's earlier definition (lr 0.01 for
every parameter, cosine schedule).

The state keeps every earlier experience's indices, labels and source fingerprint. A fresh run
handles any stream (domain-incremental ones included, whose sessions are separate sources); a
resumed run can only rebuild earlier experiences from sources it meets again, which holds for every
stream built from one training split and is checked with a clear error otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from cilbench.api import RunContext, register_strategy
from cilbench.core.errors import CilbenchError, ConfigError
from cilbench.data.sources import DatasetView, ImageSource
from cilbench.data.streams import Experience
from cilbench.engine.recipes import IN1K, RANPAC, Recipe, shared_head_recipe
from cilbench.learn.finetuning import Finetuner


def _ranpac(dataset: str, published: str) -> Recipe:
    """Row ID 1 of RanPAC's args/<dataset>_publish.csv (joint_full)."""
    extra = {"backbone.crop_pct": 1.0} if dataset == "cifar224" else {}
    return Recipe(
        {
            "epochs": 30, "lr": 0.01, "backbone_lr_scale": 0.01, "schedule": "constant",
            "batch_size": 128, "weight_decay": 5e-4, "loss": "seen", **extra,
        },
        RANPAC.file(
            f"args/{dataset}_publish.csv",
            f"paper_tables/Table_data_main_{dataset}.csv, Joint full fine-tuning: {published}",
        ),
        name="ranpac",
        backbone=None if dataset == "cifar224" else IN1K,
        notes="row ID 1; SGD momentum 0.9 (RanPAC.py)",
    )  # fmt: skip


def _shared_head(epochs: int) -> Recipe:
    return shared_head_recipe(epochs, "cilbench's own definition, no reference config")


@register_strategy("joint")
class Joint(Finetuner):
    """Retrain from the pre-trained backbone on all data seen so far, after every experience."""

    recipes: ClassVar[Mapping[str, Any]] = {
        "split-cifar100": [_ranpac("cifar224", "93.8"), _shared_head(20)],
        "split-imagenet-r": [_ranpac("imagenetr", "86.6"), _shared_head(50)],
        "vtab": [_ranpac("vtab", "92.0"), _shared_head(20)],
        "core50": [_shared_head(20)],
        "synthetic": {"epochs": 1, "batch_size": 16},
        "split-fashion-mnist-mini": {"epochs": 1, "batch_size": 32},
    }

    def setup(self, context: RunContext) -> None:
        if self.config.loss != "seen":
            raise ConfigError(
                f"joint trains one head on every class seen so far: loss must be 'seen'; got "
                f"{self.config.loss!r}."
            )
        super().setup(context)
        self.seen: list[tuple[str, np.ndarray, np.ndarray]] = []
        self.sources: dict[str, ImageSource] = {}

    def start_experience(self, experience: Experience, generator: torch.Generator) -> None:
        """A fresh network with one head over every class seen so far."""
        self.network = self.new_network()
        self.network.heads.grow(experience.num_seen_classes, generator)

    def training_views(self, experience: Experience) -> list[DatasetView]:
        """Every experience's training data so far, this one included."""
        source = experience.train.source
        self.sources[source.fingerprint] = source
        seen = [*self.seen, (source.fingerprint, experience.train.indices, experience.train.labels)]
        missing = sorted({fingerprint for fingerprint, _, _ in seen} - set(self.sources))
        if missing:
            raise CilbenchError(
                f"joint was resumed, and earlier experiences come from sources {missing} that "
                "this run has not met again; run the stream without --resume."
            )
        self.seen = seen
        return [DatasetView(self.sources[f], indices, labels) for f, indices, labels in self.seen]

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict()
        for i, (fingerprint, indices, labels) in enumerate(self.seen):
            state[f"seen.{i}.indices"] = torch.as_tensor(indices, dtype=torch.long)
            state[f"seen.{i}.labels"] = torch.as_tensor(labels, dtype=torch.long)
            state[f"seen.{i}.source"] = torch.tensor(list(fingerprint.encode()), dtype=torch.uint8)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        count = sum(1 for key in state if key.startswith("seen.") and key.endswith(".indices"))
        super().load_state_dict(state)
        self.seen = [
            (
                bytes(state[f"seen.{i}.source"].tolist()).decode(),
                state[f"seen.{i}.indices"].numpy(),
                state[f"seen.{i}.labels"].numpy(),
            )
            for i in range(count)
        ]

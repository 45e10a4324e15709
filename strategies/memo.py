"""MEMO (Zhou, Wang, Ye, Zhan, ICLR 2023, "A Model or 603 Exemplars: Towards Memory-Efficient
Class-Incremental Learning"): DER's expansion for the deep blocks only, the shallow ones shared.

The backbone is cut in two (`cilbench.learn.expansion.split_blocks`): the generalized (shallow)
blocks run once per image and are shared by every experience; each experience adds a specialized
(deep) stack, a trainable copy of the newest one, the earlier stacks frozen. The stacks' features
are concatenated (the width grows by one stack's width per experience) and read by one linear
classifier over every seen class, widened each experience with the old classes' weights on the
old features kept. Experience 0 trains the whole network on cross-entropy; the shallow blocks are
then frozen (PILOT `train_base` false). From experience 1 on, the loss adds DER's auxiliary
cross-entropy (new classes + one "old" class, on the newest stack's features). Training sees the
new images and the exemplars of the old classes (the shared exemplar memory, herding on the
concatenated features); prediction is the classifier (`cnn`) or the nearest exemplar mean (`nme`).

ViT split: PILOT's `vit_base_patch16_224_memo` shares the patch embedding, class token, position
embedding and blocks 0-10 and specializes block 11 + the final LayerNorm + the class-token
pooling. Here `deep_blocks` (default 1, PILOT's) counts the specialized blocks from the end; an
EfficientNet splits the same way at its stages (`blocks`), the tail being `conv_head` + `bn2`.

Config: the shared training settings (`epochs`, `batch_size`, `lr`, `optimizer`, `momentum`,
`weight_decay`, `schedule`, `milestones`, ...) for experiences 1+, `first_epochs` and
`first_weight_decay` for experience 0, `aux_weight`, `deep_blocks`, `deep_init` (`pretrained` or
`fresh`, see below), `classifier` (`cnn`|`nme`), `num_workers`, and the exemplar memory's
`memory_size`, `memory_per_class`, `selection`.

Traced to LAMDA-PILOT 5240714d `models/memo.py`, `utils/inc_net.py` `AdaptiveNet`,
`backbone/vit_memo.py`, `models/base.py`, `exps/memo.json`, `exps/memo_inr.json`, and the
authors' code (github.com/wangkiw/ICLR23-MEMO, ResNet backbones). `pilot` recipes: SGD momentum
0.9, lr 1e-3; experience 0: 10 epochs, weight decay 5e-4; later: 20 epochs (CIFAR) or 10
(ImageNet-R), weight decay 2e-4; batch 32; auxiliary weight 1; CIFAR-100 2000 exemplars in total
(`fixed_memory` false), ImageNet-R 20 per class (`fixed_memory` true).

Memory: the shared blocks once plus one stack per experience. ViT-B/16: trunk 79.5 M parameters,
a stack (one block + LayerNorm) 7.1 M, 10 stacks 284 MiB in fp32. Experience 0 trains the whole
ViT-B (weights, gradients, momentum about 1 GiB, activations at batch 32 about 4 GiB in fp32);
later experiences keep activations for one block only: about 5-6 GiB peak (estimated, not
measured on a GPU), so an 8 GiB GPU suffices. The runner records `cost.peak_memory_mib`.

Where cilbench differs, and why:
- Deep-block initialisation: PILOT's `Specialized_Vit` builds its own `last_block` after timm's
  weight loading, which fills only `blocks.*` (`_load_weights`): the specialized block starts from
  PyTorch's default initialisation, not from pre-trained block 11, which it never uses (the final
  LayerNorm is pre-trained). The paper specializes pre-trained deep layers. `deep_init="fresh"`
  reproduces PILOT (the `pilot` recipes; drawn from the experience's generator, not torch's global
  RNG); the default `pretrained` keeps the backbone's own deep blocks.
- `train_base` and `train_adaptive` (train the shared blocks after experience 0, or the old
  stacks) are false in every PILOT config; cilbench implements only that case.
- PILOT builds an auxiliary head on experience 0 too, which no loss uses; cilbench builds it from
  experience 1 on. The classifier and auxiliary head are PILOT's `SimpleLinear` (Kaiming-uniform,
  zero bias) drawn from the experience's generator.
- Step decay: PILOT's milestones (60,120,170 / 80,120,150) are never reached in 10 or 20 epochs;
  the recipes keep the later ones for every experience, the same schedule.
- NME: PILOT's `models/memo.py` overrides `_construct_exemplar` with the exemplar-mean line
  outside its class loop, so on CIFAR (`fixed_memory` false) only each task's last class gets a
  mean and PILOT's logged NME accuracy is wrong (its reported one is the CNN's); cilbench keeps
  every class's mean, as PILOT's base method does (tools/parity/memo-results.md).
- Herding in float64 without PILOT's +1e-8 (see `icarl`); the memory holds positions into the
  training source (class-incremental streams only); one classifier's accuracy per run.
- Data augmentation and preprocessing are the run's (`--set augment.*`); PILOT's are its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

import torch

from cilbench.api import RunContext, register_strategy
from cilbench.core.config import NonNegative, Positive
from cilbench.data.streams import Experience
from cilbench.engine.recipes import IN1K, PILOT, Recipe
from cilbench.learn.exemplars import MemoryConfig
from cilbench.learn.expansion import DeepStack, ExpandingNetwork, der_loss, split_blocks
from cilbench.learn.rehearsal import RehearsalStrategy
from cilbench.learn.training import TrainSettings, for_experience


@dataclass(frozen=True)
class MEMOConfig(TrainSettings, MemoryConfig):
    """PILOT's `exps/memo.json` as defaults: the shared training settings are those of
    experiences 1+; experience 0 has its own epochs and weight decay."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 2e-4
    schedule: Literal["constant", "cosine", "multistep", "coda-cosine"] = "multistep"
    milestones: tuple[int, ...] = (80, 120, 150)
    first_epochs: Annotated[int, Positive()] = 10
    """Epochs of experience 0 (PILOT `init_epoch`)."""
    first_weight_decay: Annotated[float | None, NonNegative()] = 5e-4
    """Weight decay on experience 0 (PILOT `init_weight_decay`); None: `weight_decay`."""
    aux_weight: Annotated[float, NonNegative()] = 1.0
    """Weight of the auxiliary (new classes + "old") cross-entropy (PILOT `alpha_aux`)."""
    deep_blocks: Annotated[int, Positive()] = 1
    """Specialized blocks per experience, counted from the backbone's end (PILOT: 1)."""
    deep_init: Literal["pretrained", "fresh"] = "pretrained"
    """The first stack's blocks: the backbone's, or PyTorch's default init (PILOT's)."""
    classifier: Literal["cnn", "nme"] = "cnn"
    """cnn: the classifier's logits (MEMO's); nme: nearest mean of exemplars."""
    num_workers: Annotated[int | None, NonNegative()] = None

    def experience_settings(self, index: int) -> TrainSettings:
        """Experience 0: `first_epochs` at `first_weight_decay`; later: the shared settings."""
        base = self.train_settings()
        if index == 0:
            base = replace(base, epochs=self.first_epochs)
        return for_experience(base, index, self.first_weight_decay)


def _pilot(config: str, table: str, epochs: int, memory: dict[str, int]) -> Recipe:
    """LAMDA-PILOT's MEMO on one stream."""
    return Recipe(
        {
            "first_epochs": 10, "epochs": epochs, "lr": 1e-3, "batch_size": 32,
            "weight_decay": 2e-4, "first_weight_decay": 5e-4, "schedule": "multistep",
            "milestones": (80, 120, 150), "aux_weight": 1.0, "deep_blocks": 1,
            "deep_init": "fresh", "classifier": "cnn", "selection": "herding", **memory,
        },
        PILOT.file(f"exps/{config}", table),
        name="pilot",
        backbone=IN1K,
        notes="SGD momentum 0.9 (models/memo.py); milestones never reached; deep_init fresh: "
        "PILOT's vit_memo leaves the specialized block at PyTorch's default init. GPU memory "
        "(estimated, not measured on a GPU): the whole ViT-B/16 trains on experience 0 (weights, "
        "gradients, momentum about 1 GiB + activations at batch 32 about 4 GiB fp32), later "
        "experiences one block: about 5-6 GiB peak, an 8 GiB GPU",
    )  # fmt: skip


RECIPES: dict[str, Any] = {
    "split-cifar100": [
        _pilot(
            "memo.json",
            "LAMDA-PILOT MEMO, CIFAR B0 Inc10, IN-1k (fixed_memory false)",
            20,
            {"memory_size": 2000, "memory_per_class": 0},
        )
    ],
    "split-imagenet-r": [
        _pilot(
            "memo_inr.json",
            "LAMDA-PILOT MEMO, IN-R B0 Inc20, IN-1k (fixed_memory true)",
            10,
            {"memory_size": 4000, "memory_per_class": 20},
        )
    ],
    "synthetic": {"first_epochs": 1, "epochs": 1, "batch_size": 16, "memory_size": 20},
    "split-fashion-mnist-mini": {
        "first_epochs": 5, "epochs": 5, "batch_size": 32, "lr": 0.01, "memory_size": 100,
        "first_weight_decay": None,
    },
}  # fmt: skip


@register_strategy("memo")
class MEMO(RehearsalStrategy):
    """Shared shallow blocks, one deep block stack per experience, one classifier over all."""

    Config = MEMOConfig
    recipes = RECIPES

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        backbone, deep = self.backbone, self.config.deep_blocks
        trunk, stack = split_blocks(backbone.build_model(), deep)
        self._first_stack: DeepStack | None = stack
        """The first stack (built with the trunk); `build` makes fresh ones for checkpoints."""

        def build() -> DeepStack:
            made, self._first_stack = self._first_stack, None
            return made if made is not None else split_blocks(backbone.build_model(), deep)[1]

        self.network = ExpandingNetwork(build, backbone.feature_dim, backbone.device, trunk)
        self.losses: dict[str, list[float]] = {}
        """Mean loss of every epoch, per experience trained in this process."""

    def train_experience(self, experience: Experience) -> None:
        generator = self.generator(experience.index)
        known, seen = self.num_seen, experience.num_seen_classes
        network = self.network
        if experience.index > 0 and network.trunk is not None:
            network.trunk.requires_grad_(False)  # PILOT after_task: train_base false
        network.expand(seen, generator)
        if len(network.extractors.models) == 1 and self.config.deep_init == "fresh":
            first: Any = network.extractors.models[0]
            first.reinitialise_blocks(generator)
        self._train(experience, generator, known)
        network.aux = None  # used for this experience's training only
        self.num_seen = seen
        network.eval()
        self.select_exemplars(experience.train, network.features, generator, seen)
        source = experience.train.source
        self.class_means = self.exemplar_class_means(network.features, source, seen)

    def _train(self, experience: Experience, generator: torch.Generator, known: int) -> None:
        """Cross-entropy (+ the auxiliary term from experience 1) on the new images and the
        exemplars; whatever requires gradients trains at `lr`."""
        config = self.config
        network = self.network
        views = self.views_with_exemplars(experience)

        def loss_fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits, aux = network.logits_and_aux(images)
            return der_loss(logits, aux, labels, known, config.aux_weight)

        network.train()
        groups = [{"params": list(network.parameters()), "lr": config.lr}]
        settings = config.experience_settings(experience.index)
        self.losses[str(experience.index)] = self.fit_views(
            loss_fn, groups, views, settings, generator, f"experience {experience.index}"
        )
        network.eval()

    def report(self) -> dict[str, Any]:
        network = self.network
        stacks = network.extractors.models
        trunk = network.trunk
        return {
            **self.memory.report(),
            "classifier": self.config.classifier,
            "deep_blocks": self.config.deep_blocks,
            "extractors": len(stacks),
            "feature_dim": network.width * len(stacks),
            "shared_parameters": sum(p.numel() for p in trunk.parameters()) if trunk else 0,
            "parameters_held": sum(p.numel() for p in network.parameters()),
            "epoch_losses": self.losses,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        network = self.network
        weights = {f"network.{k}": v for k, v in network.state_dict().items()}
        return {
            **weights,
            **self.memory.state_dict(),
            "extractors": torch.tensor(len(network.extractors.models)),
            "num_seen": torch.tensor(self.num_seen),
            "class_means": self.class_means,
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.num_seen = int(state["num_seen"])
        self.network.resize(int(state["extractors"]), self.num_seen)
        if self.network.trunk is not None:
            self.network.trunk.requires_grad_(False)  # frozen after experience 0
        prefix = "network."
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        self.network.load_state_dict(weights)
        self.memory.load_state_dict(state)
        self.class_means = state["class_means"].clone()

    def trainable_parameters(self) -> int:
        """The shared blocks (trained on experience 0), every stack and the classifier."""
        return sum(p.numel() for p in self.network.parameters())

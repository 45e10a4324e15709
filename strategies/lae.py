"""LAE: Learning-Accumulation-Ensemble with a parameter-efficient module on a frozen ViT.

Gao et al., "A Unified Continual Learning Framework with General Parameter-Efficient Tuning"
(ICCV 2023). The authors' repository (gqk/LAE) is not mirrored here; this follows LAMDA-PILOT's
port (`models/lae.py`, the `LAE` network of `utils/inc_net.py`, `backbone/vit_lae.py`,
`exps/lae*.json`, commit 5240714d). A frozen pre-trained ViT carries one parameter-efficient
module (PET), kept for the whole stream, and a linear head over every seen class:

- Learning: on each experience the PET and the head train online with cross-entropy over the seen
  classes, old classes' logits masked to -inf (so old head rows get no gradient). For the first
  `num_freeze_epochs` epochs of every experience the PET is frozen and only the head trains (the
  new head rows settle before they pull on the shared PET).
- Accumulation: an offline copy of the PET follows the online one as an exponential moving
  average, updated after every optimiser step (freeze epochs included), with no warm-up and no
  bias correction: `offline <- ema_decay * offline + (1 - ema_decay) * online`. The offline copy
  starts equal to the online one (at setup, not per experience). The head has no offline copy.
- Ensemble: the image runs through the ViT twice, once with each PET, both into the same head;
  each class scores the larger of its two softmax probabilities (over the seen classes), and the
  prediction is the best-scoring class.

The PET is LAE's compensatory prefix (PILOT's `pet_cls: "Prefix"`, the only PET its configs use):
in each of the blocks `pet_layers` (PILOT: the first five), `pet_length` learnable key and
value tokens (uniform in [0, 0.01)), each set times a learnable scalar (initially 1), join the
attention's keys and values; after the softmax the weights on the prefix keys are renormalised
to sum to 1 (`cilbench.learn.prompts`, `compensate=True`).

Config: `epochs`, `lr`, `batch_size`, `optimizer` (Adam), `weight_decay`, `schedule`
(constant), `min_lr`: training (`cilbench.learn.training.TrainSettings`, rebuilt every
experience, as PILOT's `reinit_optimizer`); `num_freeze_epochs`; `ema_decay`; `pet`,
`pet_length`, `pet_layers`. Defaults: LAMDA-PILOT `exps/lae.json` (CIFAR-100 B0 Inc10: 5 epochs,
Adam lr 0.0028125, batch 128, weight decay 0, constant lr, freeze 3 epochs, EMA 0.9999, prefix
length 10). Recipes (`cilbench recipes lae`): `pilot` for split-cifar100 (`exps/lae.json`) and
split-imagenet-r (`exps/lae_inr.json`: 50 epochs, freeze 30, lr 0.00046875, B0 Inc20), both on
timm 0.6.13's `vit_base_patch16_224` (IN-21k pre-trained, IN-1k fine-tuned).

Where cilbench differs, and why:
- Only the prefix PET. PILOT's other `pet_cls` options do not work there, so there is nothing
  to reproduce: `Adapter` (no config uses it) is attached to `blocks[b].attn` under the name
  "attn", which only `Block.forward` looks up (`Attention.forward` adapts "qkv" and "proj"), so
  the adapter never runs; `LoRA` reads `self.cfg`, which PILOT's `LAE` network does not have.
- The head is a growing linear head initialised as PILOT's (`kaiming-uniform`, zero bias); the
  prefix keys and values join each head's keys in front of the image tokens (PILOT: after [CLS]),
  which changes nothing (attention does not depend on the order of the keys).
- Class ranges come from the stream's experiences, not `init_cls`/`increment`; only
  class-incremental streams (an experience must bring new classes only).
- Training randomness (prefix and head initialisation, shuffling) comes from the experience's
  generator (the prefixes from `generator(-1)`), not torch's global RNG, so a resumed run equals
  an uninterrupted one. PILOT also evaluates the test set every 5 epochs (no effect on training).
  Per-task accuracies equal PILOT's own learner from shared initial values at lr 0, and agree
  within seed noise when trained (`tools/parity/lae.py`, `tools/parity/lae-results.md`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from cilbench.api import BaseStrategy, RunContext, register_strategy
from cilbench.core.config import AtMostField, NonEmpty, NonNegative, Positive, Range
from cilbench.core.errors import CilbenchError, ConfigError
from cilbench.data.augment import training_data
from cilbench.data.streams import Experience
from cilbench.engine.recipes import IN1K, PILOT, Recipe, vit_demo_recipe
from cilbench.learn.heads import TaskHeads, heads_state, load_heads
from cilbench.learn.prompts import LayerPrompts, check_prompt_layers, prompted_features
from cilbench.learn.training import TrainSettings, fit


@dataclass(frozen=True)
class LaeConfig(TrainSettings):
    """LAE hyper-parameters (defaults: LAMDA-PILOT exps/lae.json)."""

    epochs: Annotated[int, Positive()] = 5
    batch_size: Annotated[int, Positive()] = 128
    lr: Annotated[float, NonNegative()] = 0.0028125
    """0 keeps the prefixes and the head at their initial values (the parity harness)."""
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    weight_decay: Annotated[float, NonNegative()] = 0.0
    schedule: Literal["constant", "cosine", "multistep", "coda-cosine"] = "constant"
    min_lr: Annotated[float, NonNegative()] = 1e-5
    num_freeze_epochs: Annotated[int, NonNegative(), AtMostField("epochs")] = 3
    """First epochs of every experience in which only the head trains."""
    ema_decay: Annotated[float, Range(0, 1)] = 0.9999
    pet: Literal["prefix"] = "prefix"
    pet_length: Annotated[int, Positive()] = 10
    pet_layers: Annotated[tuple[int, ...], NonEmpty(), NonNegative()] = (0, 1, 2, 3, 4)


def _pilot(config: str, protocol: str, **settings: Any) -> list[Recipe]:
    source = PILOT.file(f"exps/{config}", f"LAMDA-PILOT config, {protocol}, IN-1k")
    return [Recipe(settings, source, name="pilot", backbone=IN1K)]


class Prefixes(nn.Module):
    """LAE's prefix PET: per prefixed block, `length` key and `length` value tokens, each set
    times a learnable scalar (PILOT `backbone/vit_lae.py` `Prefix` of two scaled `Prompt`s)."""

    def __init__(self, layers: tuple[int, ...], length: int, dim: int):
        super().__init__()
        self.layers = layers
        self.keys = nn.Parameter(torch.zeros(len(layers), length, dim))
        self.values = nn.Parameter(torch.zeros(len(layers), length, dim))
        self.key_scales = nn.Parameter(torch.ones(len(layers)))
        self.value_scales = nn.Parameter(torch.ones(len(layers)))

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Tokens uniform in [0, 0.01), scales 1 (PILOT's `Prompt` and `Scaler`)."""
        with torch.no_grad():
            for tokens in (self.keys, self.values):
                tokens.copy_(torch.rand(tokens.shape, generator=generator).to(tokens) * 0.01)
            self.key_scales.fill_(1.0)
            self.value_scales.fill_(1.0)

    def prompts(self, batch: int) -> LayerPrompts:
        """The scaled prefix keys and values of every prefixed block, for a batch."""
        prefixes = {}
        for i, layer in enumerate(self.layers):
            keys = (self.key_scales[i] * self.keys[i]).expand(batch, -1, -1)
            values = (self.value_scales[i] * self.values[i]).expand(batch, -1, -1)
            prefixes[layer] = (keys, values)
        return LayerPrompts(prefixes=prefixes)


def ema_update(offline: nn.Module, online: nn.Module, decay: float) -> None:
    """`offline <- decay * offline + (1 - decay) * online`, parameter by parameter (in place)."""
    with torch.no_grad():
        for slow, fast in zip(offline.parameters(), online.parameters(), strict=True):
            slow.mul_(decay).add_(fast.detach(), alpha=1.0 - decay)


def ensemble(online_logits: torch.Tensor, offline_logits: torch.Tensor) -> torch.Tensor:
    """Per class, the larger of the online and offline models' softmax probabilities."""
    return torch.maximum(online_logits.float().softmax(1), offline_logits.float().softmax(1))


@register_strategy("lae")
class LAE(BaseStrategy):
    """A prefix PET trained online, its EMA offline; predictions ensemble the two."""

    Config = LaeConfig
    frozen_backbone = True
    class_incremental_only = True
    recipes: ClassVar[Mapping[str, Any]] = {
        "synthetic": {"epochs": 2, "num_freeze_epochs": 1, "batch_size": 16, "lr": 0.01,
                      "ema_decay": 0.9, "pet_layers": (0, 1)},
        "split-fashion-mnist-mini": vit_demo_recipe(
            {"epochs": 2, "num_freeze_epochs": 1, "batch_size": 16, "lr": 0.01, "ema_decay": 0.9}
        ),
        "split-cifar100": _pilot(
            "lae.json", "CIFAR B0 Inc10", epochs=5, lr=0.0028125, batch_size=128,
            num_freeze_epochs=3, ema_decay=0.9999, pet_length=10,
            **{"stream.increment": 10, "stream.init_classes": 0},
        ),
        "split-imagenet-r": _pilot(
            "lae_inr.json", "IN-R B0 Inc20", epochs=50, lr=0.00046875, batch_size=128,
            num_freeze_epochs=30, ema_decay=0.9999, pet_length=10,
            **{"stream.increment": 20, "stream.init_classes": 0},
        ),
    }  # fmt: skip

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        model, config = self.backbone.model, self.config
        check_prompt_layers(model, config.pet_layers, "lae")
        if len(set(config.pet_layers)) != len(config.pet_layers):
            raise ConfigError(f"lae: pet_layers names a block twice: {config.pet_layers}.")
        self.online = Prefixes(config.pet_layers, config.pet_length, cast(int, model.embed_dim))
        self.online.reset_parameters(self.generator(-1))
        self.online.to(self.backbone.device)
        self.offline = copy.deepcopy(self.online).requires_grad_(False)
        self.heads = TaskHeads(self.backbone.feature_dim, self.backbone.device)
        self.losses: list[list[float]] = []

    def logits(self, images: torch.Tensor, prefixes: Prefixes) -> torch.Tensor:
        """Head logits (B, seen classes) of prepared images through the ViT with `prefixes`."""
        prompts = prefixes.prompts(len(images))
        features = prompted_features(self.backbone.model, images, prompts, compensate=True)
        return self.heads(features)

    def train_experience(self, experience: Experience) -> None:
        config, known = self.config, self.heads.num_classes
        new = list(range(known, experience.num_seen_classes))
        if sorted(experience.classes) != new:
            raise CilbenchError(
                f"lae needs only new classes in every experience (class-incremental streams); "
                f"experience {experience.index} has classes {experience.classes}, {known} known."
            )
        generator = self.generator(experience.index)
        self.heads.grow(len(new), generator, init="kaiming-uniform")
        data, prepare = training_data(self.backbone, [experience.train], self.context.augmentation)

        def loss_fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits = self.logits(images, self.online)
            return F.cross_entropy(logits.float().masked_fill(old, float("-inf")), labels)

        old = torch.arange(experience.num_seen_classes, device=self.device) < known
        self.online.requires_grad_(True)  # the optimiser holds the prefixes from the start
        self.losses.append(
            fit(
                loss_fn,
                [{"params": self.heads.parameters()}, {"params": self.online.parameters()}],
                data,
                prepare,
                config.train_settings(),
                generator,
                device=self.device,
                progress=self.progress,
                description=f"lae: experience {experience.index}",
                num_workers=self.context.num_workers,
                precision=self.backbone.precision,
                compile=self.backbone.compile,
                before_epoch=self._freeze_until(config.num_freeze_epochs),
                after_step=lambda: ema_update(self.offline, self.online, config.ema_decay),
            )
        )
        self.online.requires_grad_(False)

    def _freeze_until(self, epochs: int) -> Callable[[int], None]:
        """The hook that keeps the online prefixes frozen for the first `epochs` epochs."""

        def before_epoch(epoch: int) -> None:
            self.online.requires_grad_(epoch >= epochs)

        return before_epoch

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return ensemble(self.logits(images, self.online), self.logits(images, self.offline))

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = heads_state(self.heads, "heads.")
        state["losses"] = torch.tensor(self.losses, dtype=torch.float64)
        for name, prefixes in (("online", self.online), ("offline", self.offline)):
            state.update({f"{name}.{k}": v for k, v in prefixes.state_dict().items()})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        load_heads(self.heads, state, "heads.")
        self.losses = state["losses"].tolist()
        for name, prefixes in (("online", self.online), ("offline", self.offline)):
            own = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(f"{name}.")}
            prefixes.load_state_dict(own)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for m in (self.heads, self.online) for p in m.parameters())

    def report(self) -> dict[str, Any]:
        return {"epoch_losses": self.losses}

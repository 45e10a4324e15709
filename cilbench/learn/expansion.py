"""Networks that grow one feature extractor per experience (DER, MEMO) and their loss.

`ExpandingNetwork` holds a list of extractors whose features are concatenated, a classifier over
every seen class that is rebuilt wider each experience (the old classes' weights on the old
features kept) and, from the second extractor on, an auxiliary head over the new classes + one
"old" class on the newest extractor's features. DER's extractors are whole backbones; MEMO puts a
shared `trunk` (the backbone's shallow blocks, run once) in front of them and each extractor is a
stack of the deep blocks: `split_blocks` cuts a timm ViT or EfficientNet in two.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cilbench.core.errors import ConfigError
from cilbench.learn.heads import linear_head

_STEMS = {"vit": ("patch_embed",), "efficientnet": ("conv_stem", "bn1")}
"""The modules before `blocks`, per family (the trunk keeps them, a deep stack drops them)."""
_TAILS = {"vit": ("norm",), "efficientnet": ("conv_head", "bn2")}
"""The modules between `blocks` and `forward_head`, per family (a deep stack keeps them)."""


class Extractors(nn.Module):
    """The feature extractors, one per experience; their features concatenated in order."""

    def __init__(self) -> None:
        super().__init__()
        self.models = nn.ModuleList()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(inputs) for model in self.models], dim=1)

    def train(self, mode: bool = True) -> Extractors:
        """Only the newest extractor trains; the frozen ones stay in eval mode (PILOT's
        `Learner.train` for DER, `set_network` for MEMO)."""
        super().train(False)
        if len(self.models):
            self.models[-1].train(mode)
        return self


class ExpandingNetwork(nn.Module):
    """An optional shared `trunk`, the extractors after it, the classifier over their
    concatenated features (`width` each) and the auxiliary head.

    `build()` makes the first extractor (and the shapes a checkpoint holds); every later one
    starts as a copy of the newest. The trunk trains while any of its parameters requires
    gradients and otherwise stays in eval mode (MEMO freezes it after the first experience).
    """

    def __init__(
        self,
        build: Callable[[], nn.Module],
        width: int,
        device: torch.device,
        trunk: nn.Module | None = None,
    ):
        super().__init__()
        self.build = build
        self.width = width
        self.device = device
        self.trunk = trunk
        self.extractors = Extractors()
        self.classifier: nn.Linear | None = None
        self.aux: nn.Linear | None = None

    def expand(self, seen: int, generator: torch.Generator) -> None:
        """Experience start: freeze every extractor, add a trainable copy of the newest (of
        `build()` on the first), widen the classifier to `seen` classes (old block kept) and
        build a fresh auxiliary head over the new classes + 1 (from the second extractor on)."""
        models = self.extractors.models
        models.requires_grad_(False)
        new = self.build() if not len(models) else copy.deepcopy(models[-1])
        models.append(new.requires_grad_(True))
        old = self.classifier
        wider = linear_head(self.width * len(models), seen, generator, "kaiming-uniform")
        known = 0
        if old is not None:
            known = old.out_features
            with torch.no_grad():
                wider.weight[:known, : old.in_features] = old.weight.cpu()
                wider.bias[:known] = old.bias.cpu()
        self.classifier = wider.to(self.device)
        if len(models) > 1:
            aux = linear_head(self.width, seen - known + 1, generator, "kaiming-uniform")
            self.aux = aux.to(self.device)

    def train(self, mode: bool = True) -> ExpandingNetwork:
        super().train(mode)
        if self.trunk is not None:
            self.trunk.train(mode and any(p.requires_grad for p in self.trunk.parameters()))
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Every extractor's features of the trunk's output (of `images` without a trunk),
        concatenated."""
        return self.extractors(images if self.trunk is None else self.trunk(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits over every class seen so far."""
        return self.logits_and_aux(images)[0]

    def logits_and_aux(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The classifier's logits and the auxiliary head's (None before the second extractor)
        on the newest extractor's part of the features."""
        if self.classifier is None:
            raise RuntimeError("ExpandingNetwork.expand must run before the network predicts")
        features = self.features(images)
        aux = self.aux(features[:, -self.width :]) if self.aux is not None else None
        return self.classifier(features), aux

    def resize(self, extractors: int, classes: int) -> None:
        """Rebuild the shapes a checkpoint holds (before `load_state_dict`)."""
        models = self.extractors.models
        while len(models) < extractors:
            models.append(self.build().requires_grad_(False))
        models[-1].requires_grad_(True)
        self.classifier = nn.Linear(self.width * extractors, classes).to(self.device)
        self.aux = None


def aux_labels(labels: torch.Tensor, known: int) -> torch.Tensor:
    """The auxiliary head's targets: every old class (label < `known`) is 0, new class
    `known + j` is `j + 1`."""
    return torch.where(labels >= known, labels - known + 1, torch.zeros_like(labels))


def der_loss(
    logits: torch.Tensor,
    aux_logits: torch.Tensor | None,
    labels: torch.Tensor,
    known: int,
    aux_weight: float,
) -> torch.Tensor:
    """Cross-entropy over every seen class, plus `aux_weight` x the auxiliary head's
    cross-entropy on `aux_labels` (PILOT `_update_representation` of DER and MEMO; the first
    experience has no auxiliary head: the first term alone, PILOT `_init_train`)."""
    loss = F.cross_entropy(logits, labels)
    if aux_logits is None:
        return loss
    return loss + aux_weight * F.cross_entropy(aux_logits, aux_labels(labels, known))


def _family(model: nn.Module) -> str:
    if hasattr(model, "patch_embed") and hasattr(model, "norm"):
        return "vit"
    if hasattr(model, "conv_stem") and hasattr(model, "conv_head"):
        return "efficientnet"
    raise ConfigError(
        f"Splitting into shared and deep blocks needs a timm ViT or EfficientNet; got "
        f"{type(model).__name__}"
    )


class Trunk(nn.Module):
    """A timm model's stem and first blocks: `forward_features` stopped before the tail."""

    def __init__(self, timm_model: nn.Module, shared: int):
        super().__init__()
        model: Any = timm_model
        model.blocks = model.blocks[:shared]
        for name in _TAILS[_family(model)]:
            setattr(model, name, nn.Identity())
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)


class DeepStack(nn.Module):
    """A timm model's last blocks, its tail and its pooling: the trunk's output -> features."""

    def __init__(self, timm_model: nn.Module, shared: int):
        super().__init__()
        model: Any = timm_model
        self.family = _family(model)
        model.blocks = model.blocks[shared:]
        for name in _STEMS[self.family]:
            setattr(model, name, nn.Identity())
        for name in ("cls_token", "pos_embed", "reg_token"):  # read by the stem only
            if isinstance(getattr(model, name, None), nn.Parameter):
                setattr(model, name, None)
        self.model = model

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.model.blocks(hidden)
        for name in _TAILS[self.family]:
            x = getattr(self.model, name)(x)
        return self.model.forward_head(x)

    def reinitialise_blocks(self, generator: torch.Generator) -> None:
        """Every layer of the blocks back to PyTorch's own initialisation (`reset_parameters`),
        drawn from a seed taken from `generator` (the tail keeps its pre-trained weights)."""
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            for module in self.model.blocks.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()


def split_blocks(model: nn.Module, deep: int) -> tuple[Trunk, DeepStack]:
    """Cut a timm model (pooled features, no classifier) after its `len(blocks) - deep`-th
    block: the trunk (stem + shallow blocks) and a deep stack (the last `deep` blocks + tail +
    pooling); `stack(trunk(x))` equals `model(x)`. `model` is consumed."""
    blocks = getattr(model, "blocks", None)
    _family(model)
    if not isinstance(blocks, nn.Sequential) or not 1 <= deep < len(blocks):
        count = len(blocks) if isinstance(blocks, nn.Sequential) else 0
        raise ConfigError(
            f"deep_blocks must be between 1 and {count - 1} (the backbone has {count} blocks); "
            f"got {deep}"
        )
    shared = len(blocks) - deep
    return Trunk(copy.deepcopy(model), shared), DeepStack(model, shared)

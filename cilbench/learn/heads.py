"""Classifier heads that grow with the stream, and a trainable backbone + head network.

`TaskHeads` keeps one linear layer per experience (SLCA's `SimpleContinualLinear`); its logits are
the concatenation over experiences, so with stream labels 0..n_seen-1 it is also the usual single
growing linear head of fine-tuning and joint training. `HeadedNetwork` puts a trainable copy of
the backbone in front of it; used by every strategy that fine-tunes images end to end.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Literal, cast

import torch
from torch import nn

from cilbench.backbones.model import Backbone
from cilbench.core.errors import ConfigError

HeadInit = Literal["trunc-normal", "kaiming-uniform", "torch-linear"]


class TaskHeads(nn.Module):
    """One `Linear(dim, size)` per experience; logits concatenate them in label order."""

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        super().__init__()
        self.dim = dim
        self.device = torch.device(device)
        self.heads = nn.ModuleList()

    @property
    def sizes(self) -> list[int]:
        """Number of classes of each head."""
        return [cast(nn.Linear, head).out_features for head in self.heads]

    @property
    def num_classes(self) -> int:
        return sum(self.sizes)

    def grow(
        self,
        size: int,
        generator: torch.Generator | None = None,
        freeze_old: bool = False,
        init: HeadInit = "trunc-normal",
    ) -> nn.Linear:
        """Append a head for `size` new classes (zero bias; weights trunc-normal std 0.02, as
        SLCA, or "kaiming-uniform": U(-sqrt(3 / dim), sqrt(3 / dim)), LAMDA-PILOT's
        `SimpleLinear`, i.e. `kaiming_uniform_` with the linear gain), or "torch-linear":
        PyTorch's own `nn.Linear` initialisation, weights and (not zero) bias U(+-1/sqrt(dim)).

        Pass `generator` for a reproducible initialisation; `freeze_old` stops the earlier heads
        from training.
        """
        head = linear_head(self.dim, size, generator, init).to(self.device)
        if freeze_old:
            self.heads.requires_grad_(False)
        self.heads.append(head)
        return head

    def resize(self, sizes: list[int]) -> None:
        """Recreate the heads with these sizes (before loading a state dict)."""
        self.heads = nn.ModuleList()
        for size in sizes:
            self.grow(size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(features) for head in self.heads], dim=1)


def linear_head(
    dim: int, size: int, generator: torch.Generator | None = None, init: HeadInit = "trunc-normal"
) -> nn.Linear:
    """A new `Linear(dim, size)` initialised as `TaskHeads.grow` describes (on the CPU)."""
    head = nn.Linear(dim, size)
    with torch.no_grad():
        if init == "trunc-normal":
            head.weight.copy_(_trunc_normal(head.weight.shape, 0.02, generator))
        else:
            bound = (3.0 / dim) ** 0.5 if init == "kaiming-uniform" else dim**-0.5
            uniform = torch.rand(head.weight.shape, generator=generator)
            head.weight.copy_(uniform * 2 * bound - bound)
        head.bias.zero_()
        if init == "torch-linear":
            uniform = torch.rand(head.bias.shape, generator=generator)
            head.bias.copy_(uniform * 2 * bound - bound)
    return head


def _trunc_normal(shape: torch.Size, std: float, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, std^2) truncated to [-2, 2] (timm/SLCA's bounds), drawn by resampling outliers."""
    values = torch.randn(shape, generator=generator) * std
    outside = values.abs() > 2.0
    while outside.any():
        values[outside] = torch.randn(int(outside.sum()), generator=generator) * std
        outside = values.abs() > 2.0
    return values


class HeadedNetwork(nn.Module):
    """A timm backbone (pooled features) followed by `TaskHeads`.

    With `train_backbone` the backbone is a new trainable copy of the pinned weights; without, it
    is the runner's shared frozen model, which stays in eval mode even when the network trains.
    `fresh_final_norm` replaces the trainable copy's final LayerNorm with a new one (weight 1,
    bias 0, eps 1e-5), as GengDavid/SLCA does to its IN-21k ViT (convs/vits.py).
    `freeze_batchnorm_statistics` keeps the backbone's BatchNorm running statistics as they are
    while the network trains (their affine weights still train): the running statistics follow
    the training batches at momentum 0.1 whatever the learning rate.
    """

    def __init__(
        self,
        backbone: Backbone,
        train_backbone: bool = True,
        fresh_final_norm: bool = False,
        freeze_batchnorm_statistics: bool = False,
    ):
        super().__init__()
        self.train_backbone = train_backbone
        self.freeze_batchnorm_statistics = freeze_batchnorm_statistics
        self.backbone = backbone.build_model() if train_backbone else backbone.model
        if fresh_final_norm:
            replace_final_norm(self.backbone, backbone.tag)
        self.heads = TaskHeads(cast(int, self.backbone.num_features), backbone.device)

    def train(self, mode: bool = True) -> HeadedNetwork:
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()
        elif self.freeze_batchnorm_statistics:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's features of a prepared batch."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits over all heads for a prepared batch."""
        return self.heads(self.backbone(images))

    def parameter_count(self) -> int:
        """Parameters the strategy trains: the heads, plus the backbone when it is trained."""
        modules = [self.backbone, self.heads] if self.train_backbone else [self.heads]
        return sum(p.numel() for m in modules for p in m.parameters())


def frozen_copy(network: HeadedNetwork) -> HeadedNetwork:
    """A deep copy of `network` in eval mode with no trainable parameter: the distillation
    teacher of iCaRL and DGR (PILOT's `self._network.copy().freeze()`)."""
    return copy.deepcopy(network).eval().requires_grad_(False)


def replace_final_norm(model: nn.Module, tag: str) -> None:
    """Give a trainable ViT a new final LayerNorm (`model.norm`), on the same device."""
    norm = getattr(model, "norm", None)
    if not isinstance(norm, nn.LayerNorm):
        raise ConfigError(
            f"fresh_final_norm replaces a ViT's final LayerNorm, and backbone {tag!r} has none; "
            "use a ViT backbone or --set fresh_final_norm=false."
        )
    fresh = nn.LayerNorm(norm.normalized_shape)
    model.norm = fresh.to(device=norm.weight.device)


def heads_state(heads: TaskHeads, prefix: str) -> dict[str, torch.Tensor]:
    """The heads' tensors plus their sizes, so `load_heads` can rebuild them."""
    state = {f"{prefix}{k}": v for k, v in heads.state_dict().items()}
    state[f"{prefix}sizes"] = torch.tensor(heads.sizes, dtype=torch.long)
    return state


def load_heads(heads: TaskHeads, state: Mapping[str, torch.Tensor], prefix: str) -> None:
    """Rebuild `heads` from `heads_state` output."""
    heads.resize([int(s) for s in state[f"{prefix}sizes"]])
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    own.pop("sizes")
    heads.load_state_dict(own)


def network_state(network: HeadedNetwork, prefix: str = "") -> dict[str, torch.Tensor]:
    """Heads of `network`, and its backbone weights when they are trained, as flat tensors."""
    state = heads_state(network.heads, f"{prefix}heads.")
    if network.train_backbone:
        weights = network.backbone.state_dict()
        state.update({f"{prefix}backbone.{k}": v for k, v in weights.items()})
    return state


def load_network(
    network: HeadedNetwork, state: Mapping[str, torch.Tensor], prefix: str = ""
) -> None:
    """Restore what `network_state` returned."""
    load_heads(network.heads, state, f"{prefix}heads.")
    if network.train_backbone:
        key = f"{prefix}backbone."
        weights = {k[len(key) :]: v for k, v in state.items() if k.startswith(key)}
        network.backbone.load_state_dict(weights)


def heads_accuracy(
    heads: TaskHeads, test_sets: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> float:
    """Percent of all test features (feature, label pairs per set) whose top logit is their label
    (sample-weighted)."""
    correct = total = 0
    with torch.no_grad():
        for features, labels in test_sets:
            predicted = heads(features.to(heads.device)).argmax(1).cpu()
            correct += int((predicted == labels).sum())
            total += len(labels)
    return 100.0 * correct / total


class FosterNetwork(nn.Module):
    """Backbones whose features are concatenated, the head `fc` over all of them, and, while
    boosting, `fe_fc` over the last backbone's features and the frozen `old_fc` over the others."""

    def __init__(self, backbones: list[nn.Module], fc: nn.Linear):
        super().__init__()
        self.backbones = nn.ModuleList(backbones)
        self.fc = fc
        self.fe_fc: nn.Linear | None = None
        self.old_fc: nn.Linear | None = None

    @property
    def dim(self) -> int:
        """Features of one backbone."""
        return cast(int, self.backbones[0].num_features)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([backbone(images) for backbone in self.backbones], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))

    def boosting_outputs(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of `fc`, of `fe_fc` (new features) and of `old_fc` (old features)."""
        assert self.fe_fc is not None and self.old_fc is not None
        features = self.features(images)
        old, new = features[:, : -self.dim], features[:, -self.dim :]
        return self.fc(features), self.fe_fc(new), self.old_fc(old)

    def train(self, mode: bool = True) -> FosterNetwork:
        super().train(mode)
        for backbone in self.backbones:
            if not any(p.requires_grad for p in backbone.parameters()):
                backbone.eval()  # the frozen old backbone (PILOT's `train()`)
        return self


def weight_align(fc: nn.Linear, new: int, value: float) -> None:
    """Scale the last `new` rows of `fc` by mean old row norm / mean new row norm x
    value^(old / new) (PILOT `FOSTERNet.weight_align`)."""
    with torch.no_grad():
        norms = fc.weight.norm(dim=1)
        old = len(norms) - new
        gamma = norms[:old].mean() / norms[old:].mean() * value ** (old / new)
        fc.weight[old:] *= gamma

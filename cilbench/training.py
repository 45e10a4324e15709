"""The training loop every trained strategy shares.

One place for what each method would otherwise re-write: optimiser with per-group learning rates,
learning-rate schedule (stepped per epoch, as the reference codebases do), bf16 autocast on GPU,
optional gradient clipping, a progress bar, a data order fixed by the experience's generator, and a
clear stop on a non-finite loss (the runner's last checkpoint, from the previous experience, stays
intact). It makes no extra passes: no train-accuracy pass and no evaluation inside the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from cilbench.callbacks import Progress, SilentProgress, report_loss
from cilbench.config import shared_fields
from cilbench.errors import CilbenchError


class NonFiniteLossError(CilbenchError):
    """The loss became NaN or infinite; training stopped."""


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings; strategies copy the relevant fields from their Config."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "multistep"] = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_lr: float = 0.0
    grad_clip: float | None = None
    drop_last: bool = False

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> TrainSettings:
        """Take every field this class shares with a strategy Config, then `overrides`."""
        return cls(**{**shared_fields(cls, config), **overrides})


def make_optimizer(
    groups: Sequence[dict[str, Any]], settings: TrainSettings
) -> torch.optim.Optimizer:
    """SGD (momentum), Adam or AdamW over parameter groups; a group may set its own lr."""
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    kwargs: dict[str, Any] = {"lr": settings.lr, "weight_decay": settings.weight_decay}
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=settings.momentum, **kwargs)
    if settings.optimizer == "adam":
        return torch.optim.Adam(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def make_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainSettings
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: constant, cosine to `min_lr` over `epochs`, or step decay."""
    if settings.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(settings.epochs, 1), eta_min=settings.min_lr
        )
    if settings.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(settings.milestones), gamma=settings.gamma
        )
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def fit(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    groups: Sequence[dict[str, Any]],
    data: Dataset,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    settings: TrainSettings,
    generator: torch.Generator,
    *,
    device: torch.device,
    progress: Progress | None = None,
    description: str = "training",
    num_workers: int = 0,
) -> list[float]:
    """Minimise `loss_fn(prepare(images), labels)` over `data`; the mean loss of every epoch."""
    optimizer = make_optimizer(groups, settings)
    scheduler = make_scheduler(optimizer, settings)
    parameters = [p for g in optimizer.param_groups for p in g["params"]]
    loader = DataLoader(
        data,
        batch_size=settings.batch_size,
        shuffle=True,
        drop_last=settings.drop_last,
        generator=generator,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    progress = progress or SilentProgress()
    epoch_losses = []
    # Reading the loss back costs a device sync: on a GPU, check it every few steps only.
    check_every = 1 if device.type == "cpu" else 25
    # Augmentations draw from torch's global RNG: seed it from the generator, restore afterwards.
    with (
        torch.random.fork_rng(devices=[]),
        progress.task(description, total=settings.epochs * len(loader)) as advance,
    ):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        for epoch in range(settings.epochs):
            total, count = torch.zeros((), device=device), 0
            for step, (images, labels) in enumerate(loader):
                with autocast:
                    loss = loss_fn(prepare(images), labels.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if settings.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
                optimizer.step()
                total += loss.detach().float() * len(labels)
                count += len(labels)
                if step % check_every == 0:
                    _stop_if_not_finite(total, description, epoch, step)
                advance(1)
            _stop_if_not_finite(total, description, epoch, step)
            scheduler.step()
            epoch_losses.append(total.item() / max(count, 1))
            report_loss(description, epoch, epoch_losses[-1])
    optimizer.zero_grad(set_to_none=True)  # leave no stale gradients on the model
    return epoch_losses


def _stop_if_not_finite(total: torch.Tensor, description: str, epoch: int, step: int) -> None:
    if not torch.isfinite(total):
        raise NonFiniteLossError(
            f"{description}: the loss became {total.item()} by epoch {epoch}, step {step}. "
            "Lower the learning rate or enable grad_clip; the last checkpoint (previous "
            "experience) is intact."
        )


def count_trainable(modules: Iterable[torch.nn.Module]) -> int:
    """Parameters with requires_grad across `modules` (shared tensors counted once)."""
    seen = {id(p): p.numel() for m in modules for p in m.parameters() if p.requires_grad}
    return sum(seen.values())

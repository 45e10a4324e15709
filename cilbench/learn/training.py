"""The training loop every trained strategy shares.

One place for what each method would otherwise re-write: optimiser with per-group learning rates,
learning-rate schedule (stepped per epoch, as the reference codebases do), autocast at the run's
precision, optional gradient clipping, a progress bar, a data order fixed by the experience's
generator, and a clear stop on a non-finite loss (the runner's last checkpoint, from the previous
experience, stays intact). It makes no extra passes: no train-accuracy pass and no evaluation
inside the loop. Image files are decoded by worker processes that live for the whole loop
(`persistent_workers`); the result does not depend on their number (see
`cilbench.data.augment.SeededSampler`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Annotated, Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, default_collate

from cilbench.core.callbacks import Progress, SilentProgress, report_loss
from cilbench.core.config import NonNegative, Positive, Range
from cilbench.core.devices import autocast, compiled
from cilbench.core.errors import CilbenchError
from cilbench.data.sources import batching, loader_options, loader_workers


class NonFiniteLossError(CilbenchError):
    """The loss became NaN or infinite; training stopped."""


OptimizerName = Literal["sgd", "adam", "adamw"]
Schedule = Literal["constant", "cosine", "multistep", "coda-cosine", "constantlr-default"]


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings for `fit`.

    A strategy Config that trains says explicitly which settings it trains with: it either extends
    this class (its training fields are these, `train_settings()` returns them) or defines its
    own `train_settings()` that builds one from named fields.
    """

    epochs: Annotated[int, Positive()] = 1
    batch_size: Annotated[int, Positive()] = 32
    lr: Annotated[float, Positive()] = 0.01
    optimizer: OptimizerName = "sgd"
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9
    weight_decay: Annotated[float, NonNegative()] = 0.0
    schedule: Schedule = "cosine"
    milestones: Annotated[tuple[int, ...], NonNegative()] = ()
    gamma: Annotated[float, Positive()] = 0.1
    min_lr: Annotated[float, NonNegative()] = 0.0
    grad_clip: Annotated[float | None, Positive()] = None
    drop_last: bool = False

    def train_settings(self) -> TrainSettings:
        """The training settings of a Config that extends this class: its TrainSettings part."""
        return TrainSettings(**{f.name: getattr(self, f.name) for f in fields(TrainSettings)})


def for_experience(
    settings: TrainSettings, index: int, first_weight_decay: float | None
) -> TrainSettings:
    """`settings` for experience `index`: on experience 0 with `first_weight_decay` set, that
    weight decay instead (PILOT's `init_weight_decay`; finetune, iCaRL)."""
    if index == 0 and first_weight_decay is not None:
        return replace(settings, weight_decay=first_weight_decay)
    return settings


def head_and_backbone_groups(
    head: Iterable[nn.Parameter], backbone: nn.Module | None, lr: float, backbone_lr_scale: float
) -> list[dict[str, Any]]:
    """Parameter groups: the head at `lr`, the backbone (None: not trained) at
    `lr * backbone_lr_scale` (SLCA's slow learner, finetune, the Avalanche methods)."""
    groups: list[dict[str, Any]] = [{"params": head, "lr": lr}]
    if backbone is not None:
        groups.append({"params": backbone.parameters(), "lr": lr * backbone_lr_scale})
    return groups


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
    """Per-epoch schedule: constant, cosine to `min_lr` over `epochs`, step decay, or CODA's.

    "constantlr-default" is torch's `ConstantLR` built without arguments (factor 1/3 for 5
    epochs): lr / 3 for epochs 0-4, then lr; LAMDA-PILOT's DUCT builds it so.

    "coda-cosine" is CODA-Prompt's `CosineSchedule` (GT-RIPL/CODA-Prompt utils/schedulers.py,
    copied in LAMDA-PILOT models/coda_prompt.py) as both codes step it: its constructor takes
    step 0 and then resets its epoch count, so the first `step()` repeats step 0. Epochs 0 and 1
    train at lr, epoch e >= 1 at lr * cos(99 pi (e - 1) / (200 (K - 1))) of K epochs (the last
    at about 10 % of lr for K = 20). A 1-epoch run trains at lr (the references divide by 0).
    """
    if settings.schedule == "coda-cosine":
        last = max(settings.epochs - 1, 1)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: math.cos(99 * math.pi * max(epoch - 1, 0) / (200 * last))
        )
    if settings.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(settings.epochs, 1), eta_min=settings.min_lr
        )
    if settings.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(settings.milestones), gamma=settings.gamma
        )
    if settings.schedule == "constantlr-default":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0 / 3, total_iters=5)
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
    num_workers: int | None = None,
    precision: str = "auto",
    compile: bool = False,
    before_epoch: Callable[[int], None] | None = None,
    before_step: Callable[[], None] | None = None,
    after_step: Callable[[], None] | None = None,
) -> list[float]:
    """Minimise `loss_fn(prepare(images), labels)` over `data`; the mean loss of every epoch.

    `precision`: the forward pass's autocast, `compile`: `torch.compile` the loss (forward and
    backward); pass the backbone's (`core.devices`).
    `num_workers`: loader processes (None: `loader_workers` decides from `device` and from
    `data.sources`, which `augment.training_data` datasets name). A dataset with a
    `sampler(generator)` method (per-image augmentation) supplies its own shuffled keys.
    `before_epoch(epoch)` runs before each epoch (LAE freezes its prefixes for the first ones:
    a parameter the optimiser holds gets no update while it has no gradient), `before_step()`
    after every backward pass, before clipping and the optimiser step (DGR rewrites its head's
    gradients there), `after_step()` after every optimiser step (LAE's EMA of the prefixes, MOS's
    adapter merge).
    """
    loss_fn = compiled(loss_fn, compile)
    optimizer = make_optimizer(groups, settings)
    scheduler = make_scheduler(optimizer, settings)
    parameters = [p for g in optimizer.param_groups for p in g["params"]]
    workers = loader_workers(num_workers, getattr(data, "sources", ()), device)
    loader = DataLoader(
        data,
        **batching(
            data, shuffled_sampler(data, generator), settings.batch_size, settings.drop_last
        ),
        # The loader draws its workers' base seed from this generator whenever it starts them:
        # every epoch without workers, once with persistent ones. A private generator keeps
        # those draws off `generator`, so the data order does not depend on the worker count.
        generator=torch.Generator().manual_seed(0),
        **loader_options(device, workers, persistent=True),
    )
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
            if before_epoch is not None:
                before_epoch(epoch)
            total, count = torch.zeros((), device=device), 0
            for step, (images, labels) in enumerate(loader):
                with autocast(device, precision):
                    loss = loss_fn(prepare(images), labels.to(device, non_blocking=True))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if before_step is not None:
                    before_step()
                if settings.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
                optimizer.step()
                if after_step is not None:
                    after_step()
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


def shuffled_sampler(data: Dataset, generator: torch.Generator) -> Sampler:
    """The dataset's own seeded sampler if it has one, else a random order from `generator`."""
    own = getattr(data, "sampler", None)
    return own(generator) if own is not None else RandomSampler(data, generator=generator)  # type: ignore[arg-type]


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


class WithPositions(Dataset):
    """`data`'s samples with each label replaced by the pair (label, position in `data`).

    For a loss that looks up per-sample data kept elsewhere (e.g. cached frozen features) by
    position: `fit` hands the loss the (B, 2) pairs as its labels. It fetches whole batches and
    draws its keys as `fit` would for `data` (per-image augmentation keys carry a seed).
    """

    fetches_batches = True

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    @property
    def sources(self) -> Sequence[Any]:
        """`data`'s image sources, from which `fit` picks its worker count."""
        return getattr(self.data, "sources", ())

    def sampler(self, generator: torch.Generator) -> Sampler:
        return shuffled_sampler(self.data, generator)

    def __getitem__(self, keys: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if getattr(self.data, "fetches_batches", False):
            images, labels = self.data[keys]
        else:
            images, labels = default_collate([self.data[key] for key in keys])
        positions = torch.as_tensor([key[0] if isinstance(key, tuple) else key for key in keys])
        return images, torch.stack([torch.as_tensor(labels), positions], dim=1)


class EpochMeans:
    """The per-epoch mean of one term of a training loss (e.g. the cross-entropy of a loss with
    a regulariser), which `fit`'s own epoch losses mix with the rest: `add` it inside the loss
    function, pass `start_epoch` as `fit`'s `before_epoch`."""

    def __init__(self) -> None:
        self.sums: list[torch.Tensor] = []
        self.counts: list[int] = []

    def start_epoch(self, epoch: int) -> None:
        self.sums.append(torch.zeros(()))
        self.counts.append(0)

    def add(self, value: torch.Tensor, count: int) -> None:
        self.sums[-1] = self.sums[-1] + value.detach().float().cpu() * count
        self.counts[-1] += count

    def means(self) -> list[float]:
        return [float(total) / max(n, 1) for total, n in zip(self.sums, self.counts, strict=True)]


class EpochLosses:
    """Each experience's per-epoch training losses: reported in the result (the board's
    did-not-train check reads the first experience's) and checkpointed, so a resumed run
    reports the losses of the experiences it did not train itself."""

    def __init__(self) -> None:
        self.by_experience: dict[int, list[float]] = {}

    def record(self, experience: int, losses: Iterable[float]) -> None:
        self.by_experience[experience] = [float(loss) for loss in losses]

    def report(self) -> dict[str, list[float]]:
        """Experience index (as text, for JSON) -> that experience's epoch losses."""
        return {str(index): losses for index, losses in sorted(self.by_experience.items())}

    def state_dict(self, prefix: str = "epoch_losses.") -> dict[str, torch.Tensor]:
        items = sorted(self.by_experience.items())
        return {
            f"{prefix}experiences": torch.tensor([index for index, _ in items], dtype=torch.long),
            f"{prefix}epochs": torch.tensor([len(losses) for _, losses in items], dtype=torch.long),
            f"{prefix}values": torch.tensor(
                [loss for _, losses in items for loss in losses], dtype=torch.float64
            ),
        }

    def load_state_dict(
        self, state: Mapping[str, torch.Tensor], prefix: str = "epoch_losses."
    ) -> None:
        """Restores what `state_dict` saved; a checkpoint from before losses were kept has none."""
        if f"{prefix}values" not in state:
            self.by_experience = {}
            return
        values = state[f"{prefix}values"].tolist()
        epochs = state[f"{prefix}epochs"].tolist()
        starts = [sum(epochs[:i]) for i in range(len(epochs))]
        self.by_experience = {
            int(index): values[start : start + count]
            for index, start, count in zip(
                state[f"{prefix}experiences"].tolist(), starts, epochs, strict=True
            )
        }

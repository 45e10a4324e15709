"""Diagonal Fisher information and Fisher-weighted averaging of two sets of weights.

`diagonal_fisher` is the empirical estimate of LAMDA-PILOT's CoFiMA (`models/cofima.py`
`getFisherDiagonal`): for every batch of the training data, the gradient of the batch's mean loss
under the true labels, squared element-wise; the mean of those squares over the batches, then
clipped from above at `maximum`. `fisher_average` merges two models parameter by parameter with
those weights (Matena & Raffel's Fisher merging, CoFiMA's task-to-task averaging).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch.utils.data import DataLoader, Dataset

from cilbench.core.callbacks import Progress, SilentProgress
from cilbench.core.devices import autocast
from cilbench.data.sources import batching, loader_options, loader_workers
from cilbench.learn.training import shuffled_sampler


def diagonal_fisher(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    parameters: Mapping[str, torch.Tensor],
    data: Dataset,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    generator: torch.Generator,
    *,
    batch_size: int,
    device: torch.device,
    maximum: float | None = None,
    num_workers: int | None = None,
    precision: str = "auto",
    progress: Progress | None = None,
    description: str = "diagonal Fisher",
) -> dict[str, torch.Tensor]:
    """Mean over the batches of `data` of (d loss_fn / d p)^2 for each named parameter, float32.

    `loss_fn(prepare(images), labels)` is the batch's mean loss; the batches come in an order
    drawn from `generator`, the last one may be smaller, and augmentations (torch's global RNG) are
    seeded from `generator` as `fit` seeds them. Gradients are taken with `torch.autograd.grad`:
    no `.grad` of the model is touched. `maximum` (None: no limit) caps every entry.
    """
    names = list(parameters)
    tensors = [parameters[n] for n in names]
    sums = [torch.zeros_like(t, dtype=torch.float32) for t in tensors]
    workers = loader_workers(num_workers, getattr(data, "sources", ()), device)
    loader = DataLoader(
        data,
        **batching(data, shuffled_sampler(data, generator), batch_size),
        generator=torch.Generator().manual_seed(0),
        **loader_options(device, workers),
    )
    progress = progress or SilentProgress()
    with (
        torch.random.fork_rng(devices=[]),
        progress.task(description, total=len(loader)) as advance,
    ):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        for images, labels in loader:
            with autocast(device, precision):
                loss = loss_fn(prepare(images), labels.to(device, non_blocking=True))
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            for total, grad in zip(sums, grads):
                if grad is not None:
                    total += grad.float().pow(2)
            advance(1)
    fisher = {}
    for name, total in zip(names, sums):
        mean = total / max(len(loader), 1)
        fisher[name] = mean if maximum is None else mean.clamp(max=maximum)
    return fisher


def fisher_average(
    previous: Mapping[str, torch.Tensor],
    current: Mapping[str, torch.Tensor],
    previous_fisher: Mapping[str, torch.Tensor] | None,
    current_fisher: Mapping[str, torch.Tensor] | None,
    weight: float,
) -> dict[str, torch.Tensor]:
    """Element-wise ((1 - w) F0 theta0 + w F1 theta1) / ((1 - w) F0 + w F1), w = `weight`.

    Keys of `current` without a Fisher in both maps, or with a non-float tensor, keep the current
    value. Without Fishers (both None) the average is the plain (1 - w) theta0 + w theta1; where
    both Fishers are zero it falls back to that plain average too (the formula is 0/0 there).
    """
    merged = {}
    for key, theta1 in current.items():
        if not theta1.is_floating_point() or key not in previous:
            merged[key] = theta1
            continue
        theta0 = previous[key].to(theta1)
        plain = (1 - weight) * theta0 + weight * theta1
        if previous_fisher is None or current_fisher is None:
            merged[key] = plain
            continue
        if key not in previous_fisher or key not in current_fisher:
            merged[key] = theta1
            continue
        f0, f1 = previous_fisher[key].to(theta1), current_fisher[key].to(theta1)
        denominator = (1 - weight) * f0 + weight * f1
        weighted = ((1 - weight) * (f0 * theta0) + weight * (f1 * theta1)) / denominator
        merged[key] = torch.where(denominator > 0, weighted, plain)
    return merged

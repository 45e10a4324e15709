"""Per-task adapter sets merged toward their predecessors, and retrieval among them (MOS).

MOS (Sun et al., AAAI 2025) trains one adapter set that it pulls toward the mean of the snapshots
of earlier tasks (`prefix_mean`, `pull_toward`: `w <- (1 - m) w + m mu`, in place on `.data`),
regularises the features with an orthogonality term against stored class means
(`orthogonality_loss`), and at test time retrieves, per sample, the adapter whose task the
classifier points to until the choice repeats (`retrieve`). `LinearHead` is the growing linear
head it trains and aligns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ORTH_TEMPERATURE = 0.8
"""The orthogonality term's similarity scale (a constant in the reference)."""


def pull_toward(parameters: list[torch.Tensor], targets: list[torch.Tensor], m: float) -> None:
    """`w <- (1 - m) w + m target` for every pair, in place on `.data`: autograd does not see
    the change, so a backward pass after it uses the pulled values (as MOS's reference does)."""
    for parameter, target in zip(parameters, targets):
        parameter.data.mul_(1 - m).add_(target, alpha=m)


class LinearHead(nn.Module):
    """`x W^T + b` over the seen classes; grows by rebuilding from the old rows."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.bias = nn.Parameter(bias.detach().clone().float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.weight, self.bias)


def prefix_mean(
    snapshots: list[dict[str, torch.Tensor]], names: list[str], count: int
) -> list[torch.Tensor]:
    """Per tensor, the mean of the first `count` snapshots (the reference's prefix sum / count)."""
    means = []
    for name in names:
        total = snapshots[0][name].clone()
        for snapshot in snapshots[1:count]:
            total = total + snapshot[name]
        means.append(total / count)
    return means


def orthogonality_loss(features: torch.Tensor, old_means: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of `M M^T / 0.8` against the identity, M = [old class means; features]."""
    rows = torch.cat([old_means.to(features), features]) if len(old_means) else features
    similarity = rows @ rows.T / ORTH_TEMPERATURE
    return F.cross_entropy(similarity, torch.arange(len(rows), device=rows.device))


def retrieve(
    features: torch.Tensor,
    head: nn.Module,
    prototypes: torch.Tensor,
    task_of: torch.Tensor,
    steps: int,
    ensemble: bool,
) -> torch.Tensor:
    """Self-refined adapter retrieval, per sample.

    `features` (B, T, D): each sample under every task's test adapter. The cosine logits on
    adapter 0's features pick the first adapter (the task of their top class); the head on the
    chosen adapter's features picks the next, `steps - 1` times (a fixed point stays fixed, so
    this equals the reference's stop-at-repeat loop); the head logits there are the answer,
    with `ensemble` softmax(them) + softmax(T x cosine logits) (T: number of tasks).
    """
    batch, tasks, _ = features.shape
    cosine = F.normalize(features[:, 0], dim=1) @ F.normalize(prototypes, dim=1).T
    logits = head(features)  # (B, T, C)
    rows = torch.arange(batch, device=features.device)
    chosen = task_of[cosine.argmax(dim=1)]
    for _ in range(steps - 1):
        chosen = task_of[logits[rows, chosen].argmax(dim=1)]
    final = logits[rows, chosen]
    if not ensemble:
        return final
    return F.softmax(final, dim=1) + F.softmax(cosine * tasks, dim=1)

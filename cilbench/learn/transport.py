"""Optimal transport between classes: a plan from class-mean distances, classifier rows carried
along it (Coil's co-transport, Zhou et al., ACM MM 2021, as LAMDA-PILOT `models/coil.py` at
5240714d and the authors' zhoudw-zdw/MM21-Coil `models/COIL.py` compute it).

The cost between two sets of class means is their Minkowski-p distance (`torch.cdist`, p = PILOT's
`norm_term`, 3 in its configs). The plan is POT's entropic `ot.sinkhorn` (Sinkhorn-Knopp, its
default 1000 iterations and 1e-9 threshold) with regularisation `reg` (PILOT's `sinkhorn`, 0.464).
Both marginals put mass 1/n on each class of the *old* side, n the number of old classes, as the
reference does: the source side sums to 1, the other to (its classes) / n, so when the two sides
have different numbers of classes the marginals are unbalanced and Sinkhorn stops at its iteration
limit with a warning (kept: its last iterate is the reference's plan). The marginals are float32
and the cost float64, the reference's dtypes.

A plan P (source classes x target classes) carries the source rows W (L2-normalised) to the
target classes: P^T normalise(W) scaled by n, a weighted average of source rows per target class
(the weights of a column sum to its mass times n, 1 when Sinkhorn converged).
"""

from __future__ import annotations

import warnings

import ot
import torch
import torch.nn.functional as F


def class_cost(source: torch.Tensor, target: torch.Tensor, p: float) -> torch.Tensor:
    """(len(source), len(target)) float64 Minkowski-`p` distances between class means."""
    return torch.cdist(source.double(), target.double(), p=p)


def old_class_marginals(sizes: tuple[int, int], old: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Marginals of sizes `sizes`, mass 1/`old` on every class on both sides (float32)."""
    return (
        torch.full((sizes[0],), 1.0 / old, dtype=torch.float32),
        torch.full((sizes[1],), 1.0 / old, dtype=torch.float32),
    )


def sinkhorn_plan(cost: torch.Tensor, old: int, reg: float) -> torch.Tensor:
    """POT's `ot.sinkhorn` plan (float64, the shape of `cost`) with mass 1/`old` on every class
    of both sides; POT's non-convergence warning (unbalanced marginals) is silenced."""
    a, b = old_class_marginals((cost.shape[0], cost.shape[1]), old)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sinkhorn did not converge")
        plan = ot.sinkhorn(a.to(cost.device), b.to(cost.device), cost, reg)
    return torch.as_tensor(plan)


def carry_rows(plan: torch.Tensor, rows: torch.Tensor, scale: float) -> torch.Tensor:
    """`scale` x plan^T normalise(rows): the source `rows` (plan rows, L2-normalised) carried to
    the plan's columns; float32 plan, as the reference casts it."""
    return plan.T.float().to(rows.device) @ F.normalize(rows, p=2, dim=1) * scale


def norm_calibration(reference: torch.Tensor, carried: torch.Tensor) -> torch.Tensor:
    """Mean row norm of `reference` / mean row norm of `carried` (Coil's calibration gamma)."""
    return reference.norm(p=2, dim=1).mean() / carried.norm(p=2, dim=1).mean()


def prospective_rows(
    old_means: torch.Tensor, new_means: torch.Tensor, old_rows: torch.Tensor, p: float, reg: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coil's prospective transport: the new classes' initial rows, the old rows carried along
    the old -> new plan, scaled by n_old and by gamma (`norm_calibration`); and gamma."""
    old = len(old_means)
    plan = sinkhorn_plan(class_cost(old_means, new_means, p), old, reg)
    carried = carry_rows(plan, old_rows, float(old))
    gamma = norm_calibration(old_rows, carried)
    return carried * gamma, gamma


def retrospective_rows(
    new_means: torch.Tensor, old_means: torch.Tensor, new_rows: torch.Tensor, p: float, reg: float
) -> torch.Tensor:
    """Coil's retrospective transport: the old classes' rows carried back from the new rows
    along the new -> old plan (cost + 1e-8, as the reference), scaled by n_old."""
    old = len(old_means)
    plan = sinkhorn_plan(class_cost(new_means, old_means, p) + 1e-8, old, reg)
    return carry_rows(plan, new_rows, float(old))

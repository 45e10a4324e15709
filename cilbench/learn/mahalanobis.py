"""Per-class covariances, shrinkage, normalisation and Mahalanobis scores (FeCAM's classifier).

`ClassCovariances` keeps, for every class, the count, the mean and the unbiased covariance of its
features (float64), merging a class that reappears (domain-incremental streams) with the exact
pooled formula. `precisions(settings)` turns each covariance into the matrix the distance uses:

1. shrinkage (`shrink_covariance`): `absolute` adds `shrink1` to the diagonal and `shrink2` to the
   off-diagonal entries (LAMDA-PILOT's FeCAM: `cov + 100 I`); `relative` scales them by the mean
   diagonal entry and by the mean non-zero off-diagonal entry (the FeCAM authors' code:
   `cov + a1 mean(diag) I + a2 mean(offdiag) (1 - I)`);
2. normalisation (`normalise_covariance`): `correlation` divides by the outer product of the
   standard deviations, `C_ij / sqrt(C_ii C_jj)` (the FeCAM paper and authors' code); `corrcoef`
   is `torch.corrcoef(C)`, which treats the rows of C as variables and its columns as observations
   (LAMDA-PILOT's FeCAM; the result has rank D - 1, hence the pseudo-inverse); `none` keeps C;
3. the Moore-Penrose pseudo-inverse, in float64.

`mahalanobis_distances(x, means, precisions)` is `(x - mu_c)' P_c (x - mu_c)` for every class c.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

ShrinkMode = Literal["absolute", "relative"]
Normalisation = Literal["correlation", "corrcoef", "none"]


@dataclass(frozen=True)
class CovarianceSettings:
    """How a class covariance becomes the matrix its Mahalanobis distance inverts."""

    shrink1: float = 100.0
    shrink2: float = 0.0
    shrink_mode: ShrinkMode = "absolute"
    normalise: Normalisation = "corrcoef"


def shrink_covariance(
    cov: torch.Tensor, shrink1: float, shrink2: float, mode: ShrinkMode = "absolute"
) -> torch.Tensor:
    """`cov + s1 I + s2 (1 - I)`; with mode `relative`, s1 = shrink1 * mean of the diagonal and
    s2 = shrink2 * mean of the non-zero off-diagonal entries (0 when there are none)."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    if mode == "absolute":
        return cov + shrink1 * eye + shrink2 * (1 - eye)
    if mode != "relative":
        raise ValueError(f"shrink mode must be 'absolute' or 'relative', got {mode!r}")
    diagonal_mean = cov.diagonal().mean()
    off_diagonal = cov * (1 - eye)
    nonzero = int((off_diagonal != 0).sum())
    off_mean = off_diagonal.sum() / nonzero if nonzero else torch.zeros((), dtype=cov.dtype)
    return cov + shrink1 * diagonal_mean * eye + shrink2 * off_mean * (1 - eye)


def normalise_covariance(cov: torch.Tensor, how: Normalisation = "correlation") -> torch.Tensor:
    """`correlation`: C_ij / sqrt(C_ii C_jj); `corrcoef`: torch.corrcoef(C) (rows as variables);
    `none`: C unchanged."""
    if how == "correlation":
        sd = cov.diagonal().sqrt()
        return cov / (sd[:, None] * sd[None, :])
    if how == "corrcoef":
        return torch.corrcoef(cov)
    if how == "none":
        return cov
    raise ValueError(f"normalisation must be 'correlation', 'corrcoef' or 'none', got {how!r}")


def precision_matrix(cov: torch.Tensor, settings: CovarianceSettings) -> torch.Tensor:
    """The pseudo-inverse of the shrunk, normalised covariance, computed in float64."""
    cov = cov.double()
    shrunk = shrink_covariance(cov, settings.shrink1, settings.shrink2, settings.shrink_mode)
    return torch.linalg.pinv(normalise_covariance(shrunk, settings.normalise))


def mahalanobis_distances(
    features: torch.Tensor, means: torch.Tensor, precisions: torch.Tensor
) -> torch.Tensor:
    """(B, C) squared distances `(x - mu_c)' P_c (x - mu_c)` in float32, whatever the input dtype.

    features (B, D), means (C, D), precisions (C, D, D).
    """
    x = features.float()
    means = means.to(x.device, torch.float32)
    columns = []
    for mean, precision in zip(means, precisions):
        diff = x - mean
        columns.append(((diff @ precision.to(x.device, torch.float32)) * diff).sum(1))
    return torch.stack(columns, dim=1) if columns else x.new_zeros(len(x), 0)


class ClassCovariances:
    """Count, mean (C, D) and unbiased covariance (C, D, D) of each class's features, float64.

    A class with a single feature has a zero covariance. A class seen again is merged with the
    pooled (Chan et al.) formula, so its statistics equal those of all its features at once.
    """

    def __init__(self) -> None:
        self.counts = torch.zeros(0, dtype=torch.float64)
        self.means = torch.zeros(0, 0, dtype=torch.float64)
        self.covariances = torch.zeros(0, 0, 0, dtype=torch.float64)
        self._precisions: dict[CovarianceSettings, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.counts)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add features (N, D) with labels (N,)."""
        features = features.detach().cpu().double()
        labels = labels.cpu()
        if len(labels) == 0:
            return
        self._grow(max(int(labels.max()) + 1, len(self)), features.shape[1])
        for c in labels.unique().tolist():
            own = features[labels == c]
            n, mean = float(len(own)), own.mean(0)
            centred = own - mean
            scatter = centred.T @ centred
            m = float(self.counts[c])
            if m > 0:  # pooled: S = S_old + S_new + (mean_new - mean_old)^2 * m n / (m + n)
                delta = mean - self.means[c]
                scatter += self.covariances[c] * max(m - 1, 0) + torch.outer(delta, delta) * (
                    m * n / (m + n)
                )
                mean = self.means[c] + delta * (n / (m + n))
            total = m + n
            self.counts[c] = total
            self.means[c] = mean
            self.covariances[c] = scatter / (total - 1) if total > 1 else scatter * 0
        self._precisions = {}

    def precisions(self, settings: CovarianceSettings, num_classes: int) -> torch.Tensor:
        """(num_classes, D, D) float32 precision matrices, cached until the next update."""
        if num_classes > len(self) or bool((self.counts[:num_classes] == 0).any()):
            raise ValueError(f"no features seen yet for some of the first {num_classes} classes")
        cached = self._precisions.get(settings)
        if cached is None or len(cached) < num_classes:
            covariances = self.covariances[:num_classes]
            cached = torch.stack([precision_matrix(c, settings) for c in covariances]).float()
            self._precisions[settings] = cached
        return cached[:num_classes]

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {
            f"{prefix}counts": self.counts,
            f"{prefix}means": self.means,
            f"{prefix}covariances": self.covariances,
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor], prefix: str = "") -> None:
        self.counts = state[f"{prefix}counts"].double().clone()
        self.means = state[f"{prefix}means"].double().clone()
        self.covariances = state[f"{prefix}covariances"].double().clone()
        self._precisions = {}

    def _grow(self, num_classes: int, dim: int) -> None:
        if self.means.numel() == 0:
            self.means = torch.zeros(0, dim, dtype=torch.float64)
            self.covariances = torch.zeros(0, dim, dim, dtype=torch.float64)
        extra = num_classes - len(self)
        if extra > 0:
            self.counts = torch.cat([self.counts, torch.zeros(extra, dtype=torch.float64)])
            self.means = torch.cat([self.means, torch.zeros(extra, dim, dtype=torch.float64)])
            zeros = torch.zeros(extra, dim, dim, dtype=torch.float64)
            self.covariances = torch.cat([self.covariances, zeros])

"""Per-class Gaussian feature statistics: the memory of SLCA-style classifier alignment.

Each class keeps the mean and the full (unbiased) covariance of its features, in float64 with a
small ridge on the diagonal so the Cholesky factor always exists. Sampling draws from
N(scale * mean, cov) with an explicit generator, so it is reproducible and touches no global RNG.
`diagonal=True` keeps only the variances (D per class; MOS's `variance` storage).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cilbench.core.errors import DataError


class ClassGaussians:
    """Mean (C, D) and covariance (C, D, D) of each class's features, float64; with `diagonal`,
    the variances (C, D) instead of the covariance."""

    def __init__(self, ridge: float = 1e-4, diagonal: bool = False):
        self.ridge = ridge
        self.diagonal = diagonal
        self.means = torch.zeros(0, 0, dtype=torch.float64)
        self.covariances = torch.zeros(0, 0, 0, dtype=torch.float64)
        self._factors: dict[tuple[int, str], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.means)

    def add(self, features: torch.Tensor, labels: torch.Tensor, classes: tuple[int, ...]) -> None:
        """Set the statistics of `classes` (labels len(self), len(self)+1, ...) from features."""
        if list(classes) != list(range(len(self), len(self) + len(classes))):
            raise ValueError(f"classes {classes} do not follow the {len(self)} stored ones")
        features = features.detach().cpu().double()
        labels = labels.cpu()
        means, covariances = [], []
        eye = torch.eye(features.shape[1], dtype=torch.float64)
        for c in classes:
            own = features[labels == c]
            if len(own) < 2:
                raise DataError(
                    f"class {c} has {len(own)} training image(s) in this experience; its "
                    "covariance needs at least 2 (SLCA's classifier alignment)."
                )
            means.append(own.mean(0))
            covariance = torch.cov(own.T) + self.ridge * eye
            covariances.append(covariance.diagonal().clone() if self.diagonal else covariance)
        if len(self) == 0:
            self.means = torch.zeros(0, features.shape[1], dtype=torch.float64)
            self.covariances = torch.zeros(0, *covariances[0].shape, dtype=torch.float64)
        self.means = torch.cat([self.means, torch.stack(means)])
        self.covariances = torch.cat([self.covariances, torch.stack(covariances)])

    def sample(
        self,
        c: int,
        count: int,
        generator: torch.Generator,
        scale: float = 1.0,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """`count` draws (count, D) float32 from N(scale * mean_c, cov_c), on `device`.

        The noise comes from `generator` on the CPU; the Cholesky factor is computed once per
        class and device.
        """
        device = device or torch.device("cpu")
        key = (c, str(device))
        if key not in self._factors:
            covariance = self.covariances[c].to(device)
            diagonal = covariance.ndim == 1
            self._factors[key] = (
                covariance.sqrt().diag() if diagonal else torch.linalg.cholesky(covariance)
            )
        factor = self._factors[key]
        noise = torch.randn(count, factor.shape[0], generator=generator, dtype=torch.float64)
        mean = scale * self.means[c].to(device)
        return (mean + noise.to(device) @ factor.T).float()

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {f"{prefix}means": self.means, f"{prefix}covariances": self.covariances}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], prefix: str = "") -> None:
        self.means = state[f"{prefix}means"].double().clone()
        self.covariances = state[f"{prefix}covariances"].double().clone()
        self._factors = {}

"""Numerically sensitive steps compute in float32 (or float64) whatever the run's precision.

Each test feeds bfloat16 features, inside a CPU bf16 autocast as a bf16 run would, and checks the
statistic or solution is float32/float64 and equals the same computation on the float32 copy of
those features.
"""

from __future__ import annotations

import numpy as np
import torch

from cilbench.core import metrics
from cilbench.core.devices import autocast
from cilbench.learn.gaussians import ClassGaussians
from cilbench.learn.prototypes import ClassMeans, cosine_scores
from cilbench.strategies.nmc import NMC
from cilbench.strategies.ranpac import RanPAC

CPU = torch.device("cpu")


def _bf16_features(n: int = 40, dim: int = 16, classes: int = 4) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(n, dim, generator=generator).to(torch.bfloat16)
    labels = torch.arange(n) % classes
    return features, labels


def test_prototype_sums_are_float64_and_means_float32() -> None:
    features, labels = _bf16_features()
    means = ClassMeans()
    with autocast(CPU, "bf16"):
        means.update(features, labels)
        prototypes = means.means(4)
    assert means.sums.dtype == torch.float64 and prototypes.dtype == torch.float32
    exact = torch.stack([features.float()[labels == c].double().mean(0) for c in range(4)])
    torch.testing.assert_close(prototypes, exact.float())


def test_cosine_scores_are_float32_from_bf16_features() -> None:
    features, _ = _bf16_features()
    prototypes = torch.randn(4, 16)
    with autocast(CPU, "bf16"):
        scores = cosine_scores(features, prototypes)
    assert scores.dtype == torch.float32
    expected = torch.nn.functional.normalize(features.float(), dim=1) @ (
        torch.nn.functional.normalize(prototypes, dim=1).T
    )
    torch.testing.assert_close(scores, expected)


def test_nmc_distances_are_float32_under_bf16_autocast() -> None:
    features, labels = _bf16_features()
    nmc = NMC(NMC.Config(), seed=0, device="cpu")
    nmc.class_means.update(nmc.embed(features.float()), labels)
    nmc.num_seen = 4
    with autocast(CPU, "bf16"):
        scores = nmc.predict_features(features)
    assert scores.dtype == torch.float32
    expected = -torch.cdist(nmc.embed(features.float()), nmc.prototypes())
    torch.testing.assert_close(scores, expected)


def test_ranpac_gram_and_ridge_solution_are_float32_under_bf16_autocast() -> None:
    features, labels = _bf16_features(n=60)
    heads = [RanPAC(RanPAC.Config(projection_dim=32), seed=0, device="cpu") for _ in range(2)]
    with autocast(CPU, "bf16"):
        heads[0].update(features, labels, 4, torch.Generator().manual_seed(1))
        scores = heads[0].predict_features(features)
    heads[1].update(features.float(), labels, 4, torch.Generator().manual_seed(1))
    low, exact = heads
    assert low.gram.dtype == low.targets.dtype == low.weights.dtype == torch.float32
    assert scores.dtype == torch.float32
    torch.testing.assert_close(low.gram, exact.gram)
    torch.testing.assert_close(low.weights, exact.weights)
    torch.testing.assert_close(scores, exact.predict_features(features.float()))


def test_class_gaussians_and_their_samples_ignore_bf16_autocast() -> None:
    features, labels = _bf16_features(n=80, dim=6)
    low, exact = ClassGaussians(1e-4), ClassGaussians(1e-4)
    with autocast(CPU, "bf16"):
        low.add(features, labels, (0, 1, 2, 3))
        drawn = low.sample(0, 5, torch.Generator().manual_seed(2))
    exact.add(features.float(), labels, (0, 1, 2, 3))
    assert low.covariances.dtype == low.means.dtype == torch.float64
    assert drawn.dtype == torch.float32
    torch.testing.assert_close(low.covariances, exact.covariances)
    torch.testing.assert_close(drawn, exact.sample(0, 5, torch.Generator().manual_seed(2)))


def test_metrics_are_float64_numpy_of_the_matrix() -> None:
    matrix = np.array([[90.0, np.nan], [80.0, 70.0]])
    summary = metrics.summarize(matrix, np.array([10, 30]))
    assert isinstance(summary["final_accuracy"], float)
    assert summary["final_accuracy"] == (80.0 * 10 + 70.0 * 30) / 40

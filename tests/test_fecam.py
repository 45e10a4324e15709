"""FeCAM: the covariance steps against hand / numpy computations, and an end-to-end run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec
from cilbench.learn.mahalanobis import (
    ClassCovariances,
    CovarianceSettings,
    mahalanobis_distances,
    normalise_covariance,
    shrink_covariance,
)
from cilbench.testing import make_strategy, synthetic_stream, tiny_backbone


def test_relative_shrinkage_and_correlation_normalisation_by_hand():
    # cov = [[4, 2], [2, 1]]: mean diagonal 2.5, mean off-diagonal 2.
    cov = torch.tensor([[4.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    shrunk = shrink_covariance(cov, 1.0, 1.0, "relative")
    assert torch.allclose(shrunk, torch.tensor([[6.5, 4.0], [4.0, 3.5]], dtype=torch.float64))
    normalised = normalise_covariance(shrunk, "correlation")
    off = 4.0 / math.sqrt(6.5 * 3.5)
    expected = torch.tensor([[1.0, off], [off, 1.0]], dtype=torch.float64)
    assert torch.allclose(normalised, expected)
    # absolute (PILOT): cov + 100 I, nothing off the diagonal
    assert torch.equal(
        shrink_covariance(cov, 100.0, 0.0), torch.tensor([[104.0, 2.0], [2.0, 101.0]]).double()
    )


def test_pilot_corrcoef_correlates_the_rows_of_the_shrunk_matrix():
    """PILOT's torch.corrcoef(cov + 100 I): rows of the matrix as variables (numpy agrees)."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(7, 3))
    cov = np.cov(data.T)
    shrunk = cov + 100 * np.eye(3)
    rows = shrunk - shrunk.mean(1, keepdims=True)
    by_hand = (rows @ rows.T) / np.outer(np.linalg.norm(rows, axis=1), np.linalg.norm(rows, axis=1))
    ours = normalise_covariance(shrink_covariance(torch.tensor(cov), 100.0, 0.0), "corrcoef")
    assert np.allclose(ours.numpy(), by_hand)
    assert np.allclose(by_hand, np.corrcoef(shrunk))
    assert np.linalg.matrix_rank(by_hand) == 2  # rank D - 1: the pseudo-inverse is needed


@pytest.mark.parametrize("normalise", ["correlation", "corrcoef"])
def test_mahalanobis_scores_match_numpy(normalise):
    rng = np.random.default_rng(1)
    dim, classes = 4, 3
    train = [rng.normal(loc=c, scale=1 + c, size=(9, dim)) for c in range(classes)]
    queries = rng.normal(size=(5, dim))
    stats = ClassCovariances()
    for c, x in enumerate(train):
        stats.update(torch.tensor(x, dtype=torch.float32), torch.full((len(x),), c))
    settings = CovarianceSettings(1.0, 0.5, "relative", normalise)  # type: ignore[arg-type]
    ours = mahalanobis_distances(
        torch.tensor(queries), stats.means.float(), stats.precisions(settings, classes)
    )
    expected = np.zeros((5, classes))
    for c, x in enumerate(train):
        cov = np.cov(x.astype(np.float32).astype(np.float64).T)
        eye = np.eye(dim)
        off = cov[~eye.astype(bool)]
        cov = cov + 1.0 * np.diag(cov).mean() * eye + 0.5 * off[off != 0].mean() * (1 - eye)
        if normalise == "correlation":
            sd = np.sqrt(np.diag(cov))
            cov = cov / np.outer(sd, sd)
        else:
            cov = np.corrcoef(cov)
        inverse = np.linalg.pinv(cov)
        for i, q in enumerate(queries):
            d = q - x.astype(np.float32).mean(0)
            expected[i, c] = d @ inverse @ d
    assert np.allclose(ours.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_a_class_seen_twice_gets_the_pooled_statistics():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(11, 3))
    stats = ClassCovariances()
    stats.update(torch.tensor(x[:4]), torch.zeros(4, dtype=torch.long))
    stats.update(torch.tensor(x[4:]), torch.zeros(7, dtype=torch.long))
    assert np.allclose(stats.means[0].numpy(), x.mean(0))
    assert np.allclose(stats.covariances[0].numpy(), np.cov(x.T))


def test_fecam_scores_are_minus_distances_to_normalised_means():
    """PILOT's defaults: raw-feature covariance, cov + 100 I, corrcoef, unit-norm x and mean."""
    stream, backbone = synthetic_stream(), tiny_backbone()
    strategy = make_strategy("fecam", backbone, stream, peft="none")
    first = stream.experiences[0]
    strategy.train_experience(first)
    features, labels = strategy.features.get(first.train)
    x, y = features.double().numpy(), labels.numpy()
    query = features[:5]
    expected = np.zeros((5, first.num_seen_classes))
    for c in range(first.num_seen_classes):
        own = x[y == c]
        inverse = np.linalg.pinv(np.corrcoef(np.cov(own.T) + 100 * np.eye(x.shape[1])))
        mean = own.mean(0) / np.linalg.norm(own.mean(0))
        for i, q in enumerate(query.double().numpy()):
            d = q / np.linalg.norm(q) - mean
            expected[i, c] = -(d @ inverse @ d)
    scores = strategy.predict_features(query)
    assert np.allclose(scores.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_tukey_transform_refuses_negative_features():
    stream, backbone = synthetic_stream(), tiny_backbone()
    strategy = make_strategy("fecam", backbone, stream, peft="none", tukey_beta=0.5)
    with pytest.raises(ValueError, match="non-negative"):
        strategy.train_experience(stream.experiences[0])


def test_end_to_end_on_the_synthetic_stream(tmp_path):
    spec = RunSpec(
        strategy="fecam", stream="synthetic", cache_dir=tmp_path / "cache", out_dir=tmp_path / "o"
    )
    result = run(spec)
    matrix = np.array(result.accuracy_matrix, dtype=float)
    stream = synthetic_stream()
    assert matrix.shape[0] == len(stream.experiences)
    assert np.isfinite(np.diag(matrix)).all()
    # after the last experience, better than chance over all classes
    final = np.nanmean(matrix[-1])
    assert final > 1.0 / stream.info.num_classes

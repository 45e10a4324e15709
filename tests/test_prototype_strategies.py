"""NMC and SimpleCIL against independent computations on the same frozen features."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.neighbors import NearestCentroid

from cilbench.testing import make_strategy, synthetic_stream, tiny_backbone


def _trained(name: str):
    stream = synthetic_stream()
    strategy = make_strategy(name, tiny_backbone(), stream)
    for experience in stream:
        strategy.train_experience(experience)
    features, labels = [], []
    for experience in stream:
        f, y = strategy.features.get(experience.train)
        features.append(f)
        labels.append(y)
    test_features, test_labels = zip(*(strategy.features.get(v) for v in stream.test_sets))
    return (
        strategy,
        torch.cat(features),
        torch.cat(labels),
        torch.cat(test_features),
        torch.cat(test_labels),
    )


def test_nmc_matches_sklearn_nearest_centroid():
    strategy, train_x, train_y, test_x, test_y = _trained("nmc")
    normalise = lambda x: (x / x.norm(dim=1, keepdim=True)).double().numpy()  # noqa: E731
    reference = NearestCentroid().fit(normalise(train_x), train_y.numpy())
    ours = strategy.predict_features(test_x).argmax(dim=1).numpy()
    np.testing.assert_array_equal(ours, reference.predict(normalise(test_x)))
    np.testing.assert_allclose(
        strategy.prototypes().numpy(), reference.centroids_, rtol=1e-5, atol=1e-6
    )
    assert (ours == test_y.numpy()).mean() > 0.5  # the toy classes are separable enough


def test_simplecil_is_cosine_to_unnormalised_class_means():
    strategy, train_x, train_y, test_x, _ = _trained("simplecil")
    x, y = train_x.double().numpy(), train_y.numpy()
    means = np.stack([x[y == c].mean(axis=0) for c in range(int(y.max()) + 1)])
    q = test_x.double().numpy()
    cosine = (q @ means.T) / np.outer(np.linalg.norm(q, axis=1), np.linalg.norm(means, axis=1))
    np.testing.assert_allclose(strategy.predict_features(test_x).numpy(), cosine, atol=1e-5)


def test_old_prototypes_are_untouched_by_later_experiences():
    stream = synthetic_stream()
    strategy = make_strategy("simplecil", tiny_backbone(), stream)
    strategy.train_experience(stream.experiences[0])
    before = strategy.prototypes().clone()
    strategy.train_experience(stream.experiences[1])
    assert torch.equal(strategy.prototypes()[: len(before)], before)


def test_domain_incremental_prototypes_are_running_means():
    stream = synthetic_stream(scenario="domain-incremental")
    strategy = make_strategy("simplecil", tiny_backbone(), stream)
    for experience in stream:
        strategy.train_experience(experience)
    x, y = zip(*(strategy.features.get(e.train) for e in stream))
    x, y = torch.cat(x).double(), torch.cat(y)
    expected = torch.stack([x[y == c].mean(dim=0) for c in range(stream.info.num_classes)])
    torch.testing.assert_close(strategy.prototypes().double(), expected, rtol=1e-5, atol=1e-6)

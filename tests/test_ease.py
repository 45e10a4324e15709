"""EASE: prototype synthesis and the reweighted scores against numpy, and an end-to-end run."""

from __future__ import annotations

import numpy as np
import torch

from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec
from cilbench.learn.prototypes import transfer_prototypes
from cilbench.strategies.ease import subspace_weights, synthesise
from cilbench.testing import make_strategy, synthetic_stream, tiny_backbone


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_transfer_prototypes_by_hand():
    # old class [1, 0]; anchors [1, 0] and [0, 1]: cosines 1 and 0, softmax e/(e+1), 1/(e+1)
    old = torch.tensor([[1.0, 0.0]])
    anchors_here = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    anchors_there = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 4.0]])
    w = np.e / (np.e + 1)
    expected = np.array([[w, w, 4 * (1 - w)]])
    assert np.allclose(transfer_prototypes(old, anchors_here, anchors_there).numpy(), expected)


def _numpy_synthesis(p: np.ndarray, task_of: np.ndarray, recompute: bool) -> np.ndarray:
    """EASE's solve_sim_reset / solve_similarity, written out loop by loop."""
    out = p.copy()
    latest = task_of.max()
    for i in range(latest):
        for k in range(i + 1, latest + 1) if recompute else [latest]:
            anchors = np.flatnonzero(task_of >= k if recompute else task_of == latest)
            for c in np.flatnonzero(task_of == i):
                sim = np.array([_cos(p[c, i], p[a, i]) for a in anchors])
                soft = np.exp(sim) / np.exp(sim).sum()
                out[c, k] = sum(s * p[a, k] for s, a in zip(soft, anchors))
    return out


def test_synthesis_of_old_prototypes_matches_numpy():
    rng = np.random.default_rng(0)
    task_of = np.array([0, 0, 1, 1, 1, 2, 2])  # unequal task sizes
    p = rng.normal(size=(7, 3, 4)).astype(np.float32)
    for c, t in enumerate(task_of):
        p[c, t + 1 :] = 0  # no real prototype in later subspaces
    for recompute in (True, False):
        ours = synthesise(torch.tensor(p), torch.tensor(task_of), 0, recompute)
        expected = _numpy_synthesis(p.astype(np.float64), task_of, recompute)
        if not recompute:  # only the newest subspace is filled: subspace 1 of task 0 stays 0
            assert np.all(ours[:2, 1].numpy() == 0)
        assert np.allclose(ours.numpy(), expected, atol=1e-6)


def test_reweighted_scores_match_numpy():
    rng = np.random.default_rng(1)
    task_of = torch.tensor([0, 0, 1, 2, 2])
    prototypes = torch.tensor(rng.normal(size=(5, 4, 3)), dtype=torch.float32)  # PTM + 3 tasks
    features = torch.tensor(rng.normal(size=(6, 12)), dtype=torch.float32)
    stream, backbone = synthetic_stream(), tiny_backbone()
    strategy = make_strategy("ease", backbone, stream, use_init_ptm=True, alpha=0.3, beta=0.7)
    strategy.prototypes, strategy.task_of = prototypes, task_of
    x = features.numpy().reshape(6, 4, 3)
    expected = np.zeros((6, 5))
    for b in range(6):
        for c in range(5):
            for s in range(4):
                own = s == int(task_of[c]) + 1
                weight = 0.7 if s == 0 else (1.0 if own else 0.3 / 2)
                expected[b, c] += weight * _cos(x[b, s], prototypes[c, s].numpy())
    assert np.allclose(strategy.predict_features(features).numpy(), expected, atol=1e-5)
    assert np.allclose(subspace_weights(task_of, 4, 1, 0.3, 0.7)[3], [0.7, 0.15, 0.15, 1.0])


def test_ease_learns_on_the_synthetic_stream(tmp_path):
    spec = RunSpec(strategy="ease", stream="synthetic", seed=0, out_dir=tmp_path)
    result = run(spec)
    matrix = result.accuracy_matrix
    tasks = len(matrix)
    assert tasks >= 2
    final = np.mean([float(a) for a in matrix[-1][:tasks]])
    assert final > 100 / result.config["stream_options"].get("increment", 2) / tasks
    assert result.config["strategy_config"]["alpha"] == 0.1
    assert len(result.strategy_report["adapter_losses"]) == tasks

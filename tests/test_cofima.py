"""CoFiMA: the diagonal Fisher and the Fisher-weighted average by hand, the average in the
strategy, resume, config ranges."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, SequentialSampler

from cilbench.core.config import resolve
from cilbench.core.errors import ConfigError
from cilbench.engine.spec import RunSpec
from cilbench.learn.fisher import diagonal_fisher, fisher_average
from cilbench.strategies.cofima import CoFiMAConfig
from cilbench.testing import (
    interrupted_and_unbroken,
    make_strategy,
    synthetic_stream,
    tiny_backbone,
)


class InOrder(Dataset):
    """Three 2-d points with labels, served in their own order (no shuffle)."""

    points = torch.tensor([[1.0, 2.0], [3.0, -1.0], [2.0, 0.0]])
    labels = torch.tensor([0, 1, 1])

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.points[i], self.labels[i]

    def sampler(self, generator: torch.Generator) -> SequentialSampler:
        return SequentialSampler(self)


def _fisher_of_zero_linear(maximum: float | None) -> dict[str, torch.Tensor]:
    layer = nn.Linear(2, 2)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return diagonal_fisher(
        lambda x, y: nn.functional.cross_entropy(layer(x), y),
        dict(layer.named_parameters()),
        InOrder(),
        lambda x: x,
        torch.Generator().manual_seed(0),
        batch_size=2,
        device=torch.device("cpu"),
        maximum=maximum,
        num_workers=0,
    )


def test_diagonal_fisher_by_hand():
    # Zero weights: softmax 1/2 everywhere, so d CE / d logits = p - onehot = +-1/2.
    # Batch 1 (x=(1,2) y=0, x=(3,-1) y=1): dW row 0 = ((-1/2)(1,2) + (1/2)(3,-1)) / 2
    # = (0.5, -0.75), row 1 its negative; db = 0. Batch 2 (x=(2,0) y=1): dW row 0 = (1, 0), row 1
    # (-1, 0); db = (0.5, -0.5). Squares averaged over the two batches (not over the 3 samples):
    fisher = _fisher_of_zero_linear(maximum=None)
    assert torch.allclose(fisher["weight"], torch.tensor([[0.625, 0.28125], [0.625, 0.28125]]))
    assert torch.allclose(fisher["bias"], torch.tensor([0.125, 0.125]))
    capped = _fisher_of_zero_linear(maximum=0.5)
    assert torch.allclose(capped["weight"], torch.tensor([[0.5, 0.28125], [0.5, 0.28125]]))
    assert torch.allclose(capped["bias"], torch.tensor([0.125, 0.125]))


def test_fisher_average_by_hand():
    previous = {"w": torch.tensor([1.0, 2.0, 3.0, 5.0]), "count": torch.tensor(1)}
    current = {"w": torch.tensor([3.0, 4.0, 0.0, 7.0]), "count": torch.tensor(2)}
    f0, f1 = {"w": torch.tensor([1.0, 0.0, 2.0, 0.0])}, {"w": torch.tensor([1.0, 3.0, 0.0, 0.0])}
    merged = fisher_average(previous, current, f0, f1, 0.4)
    # (0.6*1*1 + 0.4*1*3) / (0.6 + 0.4) = 1.8; only F1: theta1 = 4; only F0: theta0 = 3;
    # both 0 (0/0): the plain average 0.6*5 + 0.4*7 = 5.8. Integer tensors keep the current value.
    assert torch.allclose(merged["w"], torch.tensor([1.8, 4.0, 3.0, 5.8]))
    assert int(merged["count"]) == 2
    plain = fisher_average(previous, current, None, None, 0.4)
    assert torch.allclose(plain["w"], torch.tensor([1.8, 2.8, 1.8, 5.8]))


@pytest.fixture(scope="module")
def stream():
    return synthetic_stream()


def _backbone_after(stream, experiences: int, **overrides) -> dict[str, torch.Tensor]:
    strategy = make_strategy("cofima", tiny_backbone(), stream, **overrides)
    for experience in stream.experiences[:experiences]:
        strategy.train_experience(experience)
    return {k: v.clone() for k, v in strategy.network.backbone.state_dict().items()}


def test_weight_zero_keeps_the_first_backbone_and_weight_one_the_trained_one(stream):
    first = _backbone_after(stream, 1, backbone_lr_scale=1.0)
    kept = _backbone_after(stream, 2, backbone_lr_scale=1.0, new_model_weight=0.0)
    trained = _backbone_after(stream, 2, backbone_lr_scale=1.0, new_model_weight=1.0)
    assert all(torch.allclose(kept[k], first[k], atol=1e-6) for k in first)
    assert any(not torch.allclose(trained[k], first[k], atol=1e-4) for k in first)


def test_strategy_averages_with_the_fisher_of_both_experiences(stream, monkeypatch):
    """Experience 1's backbone is fisher_average(start, trained, F of exp. 0, F of exp. 1)."""
    import cilbench.strategies.cofima as cofima

    calls = []

    def recording(previous, current, *rest):
        # `current` is the live state dict, overwritten by the load: keep a copy
        calls.append((previous, {k: v.clone() for k, v in current.items()}, *rest))
        return fisher_average(previous, current, *rest)

    monkeypatch.setattr(cofima, "fisher_average", recording)
    strategy = make_strategy("cofima", tiny_backbone(), stream, backbone_lr_scale=1.0)
    strategy.train_experience(stream.experiences[0])
    first_fisher = strategy.previous_fisher
    start = {k: v.clone() for k, v in strategy.network.backbone.state_dict().items()}
    strategy.train_experience(stream.experiences[1])
    ((previous, current, f0, f1, weight),) = calls
    assert weight == 0.5 and f0 is first_fisher and f1 is strategy.previous_fisher
    assert all(torch.equal(previous[k], start[k]) for k in start)
    assert any(not torch.equal(current[k], start[k]) for k in start)
    assert all(float(f.max()) <= 1e-4 for f in f1.values())
    assert any(float(f.max()) > 0 for f in f1.values())
    merged = fisher_average(previous, current, f0, f1, 0.5)
    after = strategy.network.backbone.state_dict()
    assert all(torch.equal(after[k], merged[k]) for k in merged)


def test_resumed_run_equals_an_unbroken_one(tmp_path):
    spec = RunSpec(
        strategy="cofima", stream="synthetic", out_dir=tmp_path, cache_dir=None, num_workers=0
    )
    resumed, whole = interrupted_and_unbroken(spec, stop_after=2)
    assert resumed.accuracy_matrix == whole.accuracy_matrix


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("new_model_weight", -0.1),
        ("new_model_weight", 1.5),
        ("fisher_max", 0.0),
        ("fisher_max", -1e-4),
        ("ca_samples_per_class", 0),
    ],
)
def test_out_of_range_settings_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        resolve(CoFiMAConfig, {key: value})


def test_boundary_settings_are_accepted():
    config = resolve(CoFiMAConfig, {"new_model_weight": 1.0, "fisher_max": None})
    assert config.new_model_weight == 1.0 and config.fisher_max is None

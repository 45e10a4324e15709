"""`cilbench profile slca-alignment`: SLCA's classifier alignment alone, on frozen features.

SLCA with its backbone frozen: each experience trains the new head on the cached features of
`--backbone` (the slow learner with a backbone learning rate of 0 and no augmentation), then the
class Gaussians and the classifier alignment run exactly as in `strategies/slca.py`. The profile
reports the final accuracy before and after the last alignment, for the stream recipe's
`ca_epochs` and 10x as many, on the features as they are and on the features minus the first
experience's mean feature. When centring alone turns a failing alignment into a working one, the
features' common component makes alignment ill-conditioned on that backbone, whatever the backbone
training does. E.g. `cilbench profile slca-alignment --stream split-fashion-mnist-mini --backbone
dinov2-vits14-imgfocus-9b --set backbone.image_size=56`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import TensorDataset

from cilbench.data.sources import DatasetView
from cilbench.data.streams import Stream
from cilbench.engine.loop import PreparedRun, prepare
from cilbench.engine.spec import RunSpec
from cilbench.features import FeatureStore
from cilbench.learn.heads import heads_accuracy
from cilbench.profiles import Figures, register_profile
from cilbench.strategies.slca import SLCA


@register_profile("slca-alignment", ignores=("--strategy", "--decode"))
def profile_slca_alignment(spec: RunSpec) -> Figures:
    """Final accuracy before / after alignment, per (features as they are or centred, CA epochs)."""
    prepared = prepare(dataclasses.replace(spec, strategy="slca"))
    store = FeatureStore(prepared.backbone, spec.cache_dir, batch_size=spec.batch_size)
    first = store.get(prepared.stream.experiences[0].train)[0]
    mean = first.mean(dim=0)
    spread = (first - mean).square().sum(dim=1).mean().sqrt()
    figures: Figures = {
        "first experience: norm of the mean feature": round(float(mean.norm()), 3),
        "first experience: root-mean-square distance to the mean feature": round(float(spread), 3),
    }
    recipe_epochs = prepared.strategy.config.ca_epochs
    for label, shift in (("as they are", torch.zeros_like(mean)), ("centred", mean)):
        for ca_epochs in (recipe_epochs, 10 * recipe_epochs):
            before, after = frozen_slca_accuracy(prepared, store, shift, ca_epochs)
            key = f"features {label}, {ca_epochs} CA epochs: final accuracy before / after (%)"
            figures[key] = f"{before:.1f} / {after:.1f}"
    return figures


def frozen_slca_accuracy(
    prepared: PreparedRun, store: FeatureStore, shift: torch.Tensor, ca_epochs: int
) -> tuple[float, float]:
    """Final accuracy (%) of SLCA's heads before and after the last alignment, on features - shift.

    The strategy is a fresh `slca` with the prepared configuration and `ca_epochs`.
    """
    config = dataclasses.replace(prepared.strategy.config, ca_epochs=ca_epochs)
    strategy = SLCA(config, seed=prepared.spec.seed)
    strategy.setup(prepared.context(store))

    def features(view: DatasetView) -> tuple[torch.Tensor, torch.Tensor]:
        values, labels = store.get(view)
        return values - shift, labels

    train_on_features(strategy, prepared.stream, features)
    test_sets = [features(view) for view in prepared.stream.test_sets]
    return heads_accuracy(strategy.unaligned, test_sets), heads_accuracy(
        strategy.network.heads, test_sets
    )


def train_on_features(
    strategy: SLCA,
    stream: Stream,
    features: Callable[[DatasetView], tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """Run a set-up SLCA over `stream` with its backbone replaced by the identity on `features`.

    The same as the strategy's own run with a backbone learning rate of 0, no augmentation and
    the pre-trained final norm, on features computed once.
    """
    strategy.network.backbone = nn.Identity()
    device = strategy.device

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        return batch.to(device)

    for experience in stream.experiences:
        generator = strategy.generator(experience.index)
        strategy.start_experience(experience, generator)
        data = features(experience.train)
        known = strategy.network.heads.num_classes - len(experience.new_classes)
        strategy.train_new_task(TensorDataset(*data), prepare, generator, known)
        strategy.finish_experience(experience, data[0], generator)

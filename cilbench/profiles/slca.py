"""`cilbench profile slca`: what one SLCA experience costs, against a bare timm training loop.

SLCA trains experience 0 (warm-up, not timed), then experience 1, whose three stages it times
itself: the slow learner (stage 1, through `cilbench.training.fit`: data loading and augmentation
included), the per-class statistics, and classifier alignment. Then a bare loop trains a fresh
copy of the same backbone and a head with the same optimiser settings on the same number of
batches, already augmented and on the device, with nothing else in the loop (`profiles/bare.py`).
Use the tiny ViT with enough images to time, e.g.
`cilbench profile slca --stream synthetic --set stream.train_per_class=500`.
"""

from __future__ import annotations

import dataclasses
from typing import cast

from cilbench.features import FeatureStore
from cilbench.profiles import Figures, register_profile
from cilbench.profiles.bare import training_rate
from cilbench.runner import RunSpec, prepare
from cilbench.strategies.slca import SLCA
from cilbench.training import TrainSettings


@register_profile("slca", ignores=("--strategy",))
def profile_slca(spec: RunSpec) -> Figures:
    """Stage-1 images/s vs a bare forward+backward loop, and each stage's share of the time."""
    prepared = prepare(dataclasses.replace(spec, strategy="slca"))
    strategy = cast(SLCA, prepared.strategy)
    stream, backbone = prepared.stream, prepared.backbone
    strategy.setup(backbone, stream.info, FeatureStore(backbone, cache_dir=None))
    first, second = stream.experiences[:2]
    strategy.train_experience(first)
    strategy.seconds = dict.fromkeys(strategy.seconds, 0.0)
    strategy.train_experience(second)
    seconds = strategy.seconds
    config = strategy.config
    images = config.epochs * len(second.train)
    ours = images / seconds["slow_learner"]
    bare = training_rate(backbone, second.train, TrainSettings.from_config(config))
    total = sum(seconds.values())
    return {
        "device": str(backbone.device),
        "experience 1 training images x epochs": images,
        "slow learner, cilbench fit (img/s)": round(ours, 1),
        "bare timm forward+backward, same batches (img/s)": round(bare, 1),
        "ours / bare (target >= 0.9)": round(ours / bare, 3),
        "slow learner (s)": round(seconds["slow_learner"], 3),
        "class statistics (s)": round(seconds["statistics"], 3),
        "classifier alignment (s)": round(seconds["alignment"], 3),
        "classifier alignment share of the experience": round(seconds["alignment"] / total, 3),
        "class statistics share of the experience": round(seconds["statistics"] / total, 3),
    }

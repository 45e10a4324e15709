"""`cilbench profile slca`: what one SLCA experience costs, against a bare timm training loop.

SLCA trains experience 0 (warm-up, not timed), then experiences 1-3 (as many as the stream has),
timing each one's three stages itself: the slow learner (stage 1, through
`cilbench.learn.training.fit`: data loading and augmentation included), the per-class statistics,
and classifier alignment. After each experience a bare loop trains a fresh copy of the same backbone
and a head with the same optimiser settings on the same number of batches, already augmented and on
the device, with nothing else in the loop (`profiles/bare.py`). Medians over these rounds are
reported, so that load from other processes and one-off costs hit both alike. Use the tiny ViT with
enough images to time, e.g. `cilbench profile slca --stream synthetic --set stream.num_classes=8
--set stream.train_per_class=500`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import cast

import numpy as np

from cilbench.core.errors import ConfigError
from cilbench.engine.loop import prepare
from cilbench.engine.spec import RunSpec
from cilbench.features import FeatureStore
from cilbench.profiles import Figures, register_profile
from cilbench.profiles.bare import training_rate
from cilbench.strategies.slca import SLCA

ROUNDS = 3


@register_profile("slca", ignores=("--strategy", "--decode"))
def profile_slca(spec: RunSpec) -> Figures:
    """Stage-1 images/s vs a bare forward+backward loop, and each stage's share of the time."""
    prepared = prepare(dataclasses.replace(spec, strategy="slca"))
    strategy = cast(SLCA, prepared.strategy)
    stream, backbone = prepared.stream, prepared.backbone
    strategy.setup(prepared.context(FeatureStore(backbone, cache_dir=None)))
    if len(stream.experiences) < 2:
        raise ConfigError("profile slca needs a stream of 2 experiences or more.")
    strategy.train_experience(stream.experiences[0])
    settings = strategy.config.train_settings()
    rounds: list[dict[str, float]] = []
    ours: list[float] = []
    bare: list[float] = []
    for experience in stream.experiences[1 : ROUNDS + 1]:
        strategy.seconds = dict.fromkeys(strategy.seconds, 0.0)
        strategy.train_experience(experience)
        rounds.append(dict(strategy.seconds))
        images = settings.epochs * len(experience.train)
        ours.append(images / strategy.seconds["slow_learner"])
        bare.append(training_rate(backbone, experience.train, settings, prepared.augmentation))
    seconds = {stage: float(np.median([r[stage] for r in rounds])) for stage in rounds[0]}
    ours_rate, bare_rate = float(np.median(ours)), float(np.median(bare))
    total = sum(seconds.values())
    return {
        "device": str(backbone.device),
        "load average (1, 5, 15 min)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "rounds (medians reported)": len(rounds),
        "training images x epochs per experience": images,
        "slow learner, cilbench fit (img/s)": round(ours_rate, 1),
        "bare timm forward+backward, same batches (img/s)": round(bare_rate, 1),
        "ours / bare (target >= 0.9)": round(ours_rate / bare_rate, 3),
        "slow learner (s)": round(seconds["slow_learner"], 3),
        "class statistics (s)": round(seconds["statistics"], 3),
        "classifier alignment (s)": round(seconds["alignment"], 3),
        "classifier alignment share of the experience": round(seconds["alignment"] / total, 3),
        "class statistics share of the experience": round(seconds["statistics"] / total, 3),
    }

"""`cilbench profile slca`: what one SLCA experience costs, against a bare timm training loop.

SLCA trains experience 0 (warm-up, not timed), then experience 1, whose three stages it times
itself: the slow learner (stage 1, through `cilbench.training.fit`: data loading and augmentation
included), the per-class statistics, and classifier alignment. Then a bare loop trains a fresh
copy of the same backbone and head with the same optimiser settings on the same number of batches,
already augmented and on the device, with nothing else in the loop. Use the tiny ViT with enough
images to time, e.g. `cilbench profile slca --stream synthetic --set stream.train_per_class=500`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cilbench.api import Experience
from cilbench.backbones import Backbone
from cilbench.features import FeatureStore
from cilbench.profiles import Figures, register_profile
from cilbench.runner import RunSpec, prepare
from cilbench.strategies.slca import SLCA
from cilbench.training import TrainSettings, make_optimizer


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
    bare = _bare_loop(backbone, second, config)
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


def _bare_loop(backbone: Backbone, experience: Experience, config: Any) -> float:
    """Images/s of plain timm training on pre-augmented, pre-loaded batches (same settings)."""
    known = min(experience.new_classes)
    loader = DataLoader(
        experience.train.with_transform(backbone.preprocessing.train_transform()),
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    batches = [(backbone.prepare(x), y.to(backbone.device)) for x, y in loader]
    model = backbone.build_model()
    head = torch.nn.Linear(cast(int, model.num_features), len(experience.new_classes))
    head = head.to(backbone.device)
    groups = [
        {"params": model.parameters(), "lr": config.lr * config.backbone_lr_scale},
        {"params": head.parameters(), "lr": config.lr},
    ]
    optimizer = make_optimizer(groups, TrainSettings.from_config(config))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=backbone.device.type == "cuda")
    model.train()

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with autocast:
            loss = F.cross_entropy(head(model(images)), labels - known)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(*batches[0])  # warm-up
    _sync(backbone.device)
    start = time.perf_counter()
    for _ in range(config.epochs):
        for images, labels in batches:
            step(images, labels)
    _sync(backbone.device)
    return config.epochs * len(experience.train) / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

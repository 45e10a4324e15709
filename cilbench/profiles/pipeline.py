"""`cilbench profile pipeline`: what frozen-feature work costs, side by side in one process.

Three measurements on the same images with the same backbone and batch size:

1. bare: a timm forward loop over batches already decoded, resized and normalised in memory;
2. cold: cilbench's feature extraction into an empty cache (decoding + preprocessing + forward
   + checksummed cache write);
3. cold vs warm run: a whole frozen-strategy run with an empty cache, then the same run again.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cilbench.backbones import Backbone
from cilbench.data import DatasetView
from cilbench.features import FeatureStore
from cilbench.profiles import Figures, register_profile
from cilbench.runner import RunSpec, prepare, run

ROUNDS = 3


@register_profile("pipeline")
def profile_pipeline(spec: RunSpec) -> Figures:
    """Measure bare forward, cold extraction and cold/warm runs of `spec` (cache in a temp dir).

    Bare and cold measurements alternate for a few rounds and the medians are reported, so that
    load from other processes hits both alike.
    """
    prepared = prepare(spec)
    backbone = prepared.backbone
    source = prepared.stream.experiences[0].train.source
    view = DatasetView(source, np.arange(len(source)), np.zeros(len(source), dtype=np.int64))
    loader = DataLoader(
        view.with_transform(backbone.preprocessing.sample_transform()), batch_size=spec.batch_size
    )
    batches = [backbone.prepare(images) for images, _ in loader]
    with torch.inference_mode():
        backbone.forward_features(batches[0])  # warm-up: first-call allocations, lazy init
    bare, cold = [], []
    for _ in range(ROUNDS):
        bare.append(len(source) / _time_bare_forward(backbone, batches))
        with tempfile.TemporaryDirectory() as tmp:
            store = FeatureStore(backbone, Path(tmp), batch_size=spec.batch_size)
            start = time.perf_counter()
            store.source_features(source)
            cold.append(len(source) / (time.perf_counter() - start))
    del batches

    with tempfile.TemporaryDirectory() as tmp:
        runs = dataclasses.replace(spec, cache_dir=Path(tmp) / "cache", out_dir=Path(tmp) / "runs")
        start = time.perf_counter()
        run(runs)
        cold_run = time.perf_counter() - start
        start = time.perf_counter()
        warm = run(runs)
        warm_run = time.perf_counter() - start
    bare_median, cold_median = float(np.median(bare)), float(np.median(cold))
    return {
        "training images": len(source),
        "rounds (medians reported)": ROUNDS,
        "bare timm forward (img/s)": round(bare_median, 1),
        "cold extraction: decode+preprocess+forward+cache write (img/s)": round(cold_median, 1),
        "cold / bare (target >= 0.9)": round(cold_median / bare_median, 3),
        f"{spec.strategy} run, cold cache (s)": round(cold_run, 3),
        f"{spec.strategy} run, warm cache (s)": round(warm_run, 3),
        "warm speed-up (target >= 20)": round(cold_run / warm_run, 1),
        "backbone images forwarded in the warm run": int(warm.cost["images_forwarded"]),
    }


def _time_bare_forward(backbone: Backbone, batches: list[torch.Tensor]) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        for batch in batches:
            backbone.forward_features(batch)
        _sync(backbone.device)
        return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

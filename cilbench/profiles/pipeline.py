"""`cilbench profile pipeline`: what frozen-feature work costs, side by side in one process.

On the training images of `--stream` (arrays, or image files: add `--synthetic-jpegs N` to
generate a photo-like JPEG folder for a file-based stream), with the same backbone and batch size:

1. decode alone: the data loader's decoding and preprocessing (resize, centre crop), no model;
2. bare: the frozen forward over batches already decoded, resized and normalised in memory;
3. cold: cilbench's feature extraction into an empty cache (decoding + preprocessing + forward
   + checksummed cache write);

decode and cold for each worker count (0, 2 and the default, or `--workers`), then a whole
frozen-strategy run with an empty cache and again with the filled one; the fixed and per-image
cost of cold extraction (a line fitted to two source sizes); with `--compile`, the compiled vs
eager bare forward; on CUDA with image files, cold extraction with the JPEGs decoded on the GPU
(`--decode gpu`) beside the CPU workers. Measurements alternate
for a few rounds and the medians are reported, so that load from other processes hits all alike;
the load average is printed beside them. Cold extraction cannot beat the slower of decoding and
the forward pass, so it is compared with min(bare, decode) at the same worker count.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from cilbench.backbones.model import Backbone
from cilbench.data.jpeg_decode import decodes_on_gpu
from cilbench.data.sources import DatasetView, ImageSource, default_workers, loader_workers
from cilbench.engine.loop import prepare, run
from cilbench.engine.spec import RunSpec
from cilbench.features import FeatureStore
from cilbench.profiles import Figures, register_profile
from cilbench.profiles.bare import forward_seconds, prepared_batches
from cilbench.profiles.costs import compile_ratio, fixed_and_per_image_cost

ROUNDS = 3


@register_profile("pipeline", ignores=("--decode",))  # it measures both decoders
def profile_pipeline(spec: RunSpec) -> Figures:
    """Decode, bare forward and cold extraction per worker count; cold vs warm runs."""
    prepared = prepare(spec)
    backbone = prepared.backbone
    source = prepared.stream.experiences[0].train.source
    view = DatasetView(source, np.arange(len(source)), np.zeros(len(source), dtype=np.int64))
    batches = prepared_batches(backbone, view, spec.batch_size)
    counts = sorted(
        {0, 2, default_workers(), loader_workers(spec.num_workers, [source], backbone.device)}
    )
    bare: list[float] = []
    decode: dict[int, list[float]] = {w: [] for w in counts}
    cold: dict[int, list[float]] = {w: [] for w in counts}
    for _ in range(ROUNDS):
        bare.append(len(view) / forward_seconds(backbone, batches))
        for workers in counts:
            decode[workers].append(_decode_rate(backbone, view, spec.batch_size, workers))
            cold[workers].append(_cold_rate(backbone, source, spec.batch_size, workers))
    figures: Figures = {
        "training images": len(source),
        "source": type(source).__name__,
        "rounds (medians reported)": ROUNDS,
        "load average (1, 5, 15 min)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "bare forward on decoded tensors (img/s)": round(float(np.median(bare)), 1),
    }
    for workers in counts:
        figures.update(_per_workers(workers, float(np.median(bare)), decode, cold))
    if 0 in counts and 2 in counts:
        speed_up = float(np.median(cold[2]) / np.median(cold[0]))
        figures["cold extraction, 2 workers / 0 workers"] = round(speed_up, 2)
    if backbone.device.type == "cuda" and decodes_on_gpu(source, "gpu"):
        figures.update(_gpu_decoding(backbone, source, spec.batch_size, counts, cold))
    if spec.compile:
        figures.update(compile_ratio(backbone, batches, ROUNDS))
    del batches
    figures.update(fixed_and_per_image_cost(backbone, source, spec.batch_size, 0, ROUNDS))
    figures.update(_cold_and_warm_runs(spec))
    return figures


def _per_workers(
    workers: int, bare: float, decode: dict[int, list[float]], cold: dict[int, list[float]]
) -> Figures:
    decoded, extracted = float(np.median(decode[workers])), float(np.median(cold[workers]))
    return {
        f"{workers} workers: decode + preprocess alone (img/s)": round(decoded, 1),
        f"{workers} workers: cold extraction (img/s)": round(extracted, 1),
        f"{workers} workers: cold / min(bare, decode) (target >= 0.9)": round(
            extracted / min(bare, decoded), 3
        ),
    }


def _gpu_decoding(
    backbone: Backbone,
    source: ImageSource,
    batch_size: int,
    counts: list[int],
    cold: dict[int, list[float]],
) -> Figures:
    """Cold extraction with JPEGs decoded on the GPU (workers read bytes), beside the best
    CPU-worker figure."""
    workers = max(counts)
    rates = [_cold_rate(backbone, source, batch_size, workers, "gpu") for _ in range(ROUNDS)]
    best_cpu = max(float(np.median(cold[w])) for w in counts)
    gpu = float(np.median(rates))
    return {
        f"GPU decoding ({workers} byte readers): cold extraction (img/s)": round(gpu, 1),
        "GPU decoding / best CPU-worker decoding (cold extraction)": round(gpu / best_cpu, 2),
    }


def _decode_rate(backbone: Backbone, view: DatasetView, batch_size: int, workers: int) -> float:
    dataset = view.with_transform(backbone.preprocessing.sample_transform())
    start = time.perf_counter()
    for _ in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
        pass
    return len(view) / (time.perf_counter() - start)


def _cold_rate(
    backbone: Backbone, source: ImageSource, batch_size: int, workers: int, decode: str = "cpu"
) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(
            backbone, Path(tmp), batch_size=batch_size, num_workers=workers, decode=decode
        )
        start = time.perf_counter()
        store.source_features(source)
        return len(source) / (time.perf_counter() - start)


def _cold_and_warm_runs(spec: RunSpec) -> Figures:
    with tempfile.TemporaryDirectory() as tmp:
        runs = dataclasses.replace(spec, cache_dir=Path(tmp) / "cache", out_dir=Path(tmp) / "runs")
        start = time.perf_counter()
        run(runs)
        cold_run = time.perf_counter() - start
        start = time.perf_counter()
        warm = run(runs)
        warm_run = time.perf_counter() - start
    return {
        f"{spec.strategy} run, cold cache (s)": round(cold_run, 3),
        f"{spec.strategy} run, warm cache (s)": round(warm_run, 3),
        "warm speed-up (target >= 20)": round(cold_run / warm_run, 1),
        "backbone images forwarded in the warm run": int(warm.cost["images_forwarded"]),
    }

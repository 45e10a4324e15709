"""`cilbench profile gpu`: does cilbench keep a GPU busy? One command, no network.

On CUDA it uses `vit-base-random` (ViT-B/16 at 224 px, seeded random weights: the real model's
cost without a download); on the CPU the tiny ViT, so that a test covers every line. On the
training images of `--stream` (default: the shipped demo stream) it measures, side by side:

1. bare forward (bf16 on CUDA) on batches already on the device, vs cold frozen-feature
   extraction (loading, preprocessing, forward, cache write) with the default worker count;
2. bf16 vs float32 features of the training and test images: largest deviation, and the final
   accuracy of NMC on each (bf16 through CPU autocast on the CPU, so the figure is real there too);
3. training images/s of SLCA's slow learner, ADAM's first session (adapter) and finetune, one epoch
   on experience 0 through `cilbench.learn.training.fit`, vs a bare forward+backward loop, with the
   peak GPU memory of each;
4. the model's multiply-accumulates per image (counted by torch's FlopCounterMode with attention
   unfused, as the counter does not see fused kernels: 17.6 GMAC for ViT-B/16 at 224 px) and
   measured forward throughput as a fraction of the measured dense matmul peak (bf16 on CUDA;
   float32 on the CPU, where the peak is measured on smaller matrices).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cilbench.backbones.model import Backbone
from cilbench.core.callbacks import Advance
from cilbench.core.devices import compute_dtype, synchronize
from cilbench.data.sources import DatasetView
from cilbench.engine.evaluation import evaluate
from cilbench.engine.loop import PreparedRun, prepare
from cilbench.engine.spec import RunSpec, resolve_device
from cilbench.features import FeatureStore, extract_features
from cilbench.learn.training import TrainSettings
from cilbench.profiles import Figures, register_profile
from cilbench.profiles.bare import forward_seconds, prepared_batches, training_rate

GPU_BACKBONE = "vit-base-random"
CPU_BACKBONE = "tiny-vit-random"
TRAINED = {"slca": "slow learner", "adam": "first session", "finetune": "experience 0"}


@register_profile("gpu", ignores=("--strategy", "--decode"))  # it measures both decoders
def profile_gpu(spec: RunSpec) -> Figures:
    """Forward, extraction, precision and training figures of one GPU (or the CPU)."""
    device = torch.device(resolve_device(spec.device))
    default = GPU_BACKBONE if device.type == "cuda" else CPU_BACKBONE
    spec = dataclasses.replace(spec, backbone=spec.backbone or default, strategy="nmc")
    prepared = prepare(spec)
    backbone = prepared.backbone
    figures: Figures = {
        "device": _device_name(device),
        "backbone": backbone.tag,
        "compute dtype": str(compute_dtype(device, spec.precision)).removeprefix("torch."),
    }
    forward_rate = _forward_and_extraction(prepared, figures)
    _precision(prepared, figures)
    _training(spec, figures)
    _utilisation(backbone, forward_rate, figures)
    return figures


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu (on a GPU the same command uses vit-base-random, bf16 and pinned memory)"


def _forward_and_extraction(prepared: PreparedRun, figures: Figures) -> float:
    backbone, spec = prepared.backbone, prepared.spec
    source = prepared.stream.experiences[0].train.source
    view = _whole(source)
    batches = prepared_batches(backbone, view, spec.batch_size)
    bare = len(view) / forward_seconds(backbone, batches)
    del batches
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(
            backbone, Path(tmp), batch_size=spec.batch_size, num_workers=spec.num_workers
        )
        start = time.perf_counter()
        store.source_features(source)
        cold = len(view) / (time.perf_counter() - start)
    figures.update(
        {
            "images (training set of experience 0's source)": len(view),
            f"bare forward, {figures['compute dtype']} (img/s)": round(bare, 1),
            "cold extraction, default workers (img/s)": round(cold, 1),
            "cold / bare (GPU target >= 0.8)": round(cold / bare, 3),
        }
    )
    return bare


def _precision(prepared: PreparedRun, figures: Figures) -> None:
    """bf16 vs float32 features: deviation, and NMC's final accuracy on each."""
    features = {dtype: _nmc_final_accuracy(prepared, dtype) for dtype in ("float32", "bfloat16")}
    (full, full_acc), (half, half_acc) = features["float32"], features["bfloat16"]
    deviation = (half - full).abs().max().item()
    relative = ((half - full).norm(dim=1) / full.norm(dim=1).clamp_min(1e-12)).max().item()
    figures.update(
        {
            "bf16 vs fp32 features: max |deviation|": float(f"{deviation:.4g}"),
            "bf16 vs fp32 features: max relative L2 deviation": float(f"{relative:.4g}"),
            "NMC final accuracy, fp32 features (%)": round(full_acc, 2),
            "NMC final accuracy, bf16 features (%)": round(half_acc, 2),
            "NMC accuracy difference, bf16 - fp32 (points)": round(half_acc - full_acc, 2),
        }
    )


def _nmc_final_accuracy(prepared: PreparedRun, dtype: str) -> tuple[torch.Tensor, float]:
    """(features of every train and test image, NMC's final sample-weighted accuracy) in `dtype`."""
    backbone, stream = prepared.backbone, prepared.stream
    store = FeatureStore(backbone, None, batch_size=prepared.spec.batch_size)
    forward = _forward_in(backbone, getattr(torch, dtype))
    sources = {
        v.source.fingerprint: v.source for v in [*stream.test_sets, stream.experiences[0].train]
    }
    for source in sources.values():  # fill the store's memory with features in `dtype`
        dataset = _whole(source).with_transform(backbone.preprocessing.sample_transform())
        features = extract_features(forward, backbone, dataset, batch_size=store.batch_size)
        store.remember(source, features)
    strategy = prepared.strategy
    strategy.setup(prepared.context(store))
    for experience in stream.experiences:
        strategy.train_experience(experience)
    last = len(stream.experiences) - 1
    row = evaluate(strategy, stream, last, store, prepared.spec.batch_size)
    sizes = [len(view) for view in stream.test_sets]
    accuracy = sum(a * n for a, n in zip(row, sizes) if a is not None) / sum(sizes)
    everything = torch.cat([store.source_features(s) for s in sources.values()])
    return everything, accuracy


def _forward_in(backbone: Backbone, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """The frozen forward in `dtype`, overriding the device's default autocast."""

    def forward(images: torch.Tensor) -> torch.Tensor:
        low = dtype != torch.float32
        with torch.autocast(backbone.device.type, dtype=torch.bfloat16, enabled=low):
            return backbone.forward_features(images).float()

    return forward


def _training(spec: RunSpec, figures: Figures) -> None:
    """One epoch on experience 0 per trained strategy, timed inside `fit`, vs the bare loop."""
    batch: dict[str, Any] = {"batch_size": spec.batch_size, "epochs": 1}
    setups: dict[str, dict[str, Any]] = {
        "slca": {**batch, "milestones": ()},
        "adam": {**batch, "peft": "adapter"},
        "finetune": batch,
    }
    bare_rate = 0.0
    for name, extra in setups.items():
        overrides = {**spec.overrides, **extra}
        prepared = prepare(dataclasses.replace(spec, strategy=name, overrides=overrides))
        stopwatch = _Stopwatch()
        backbone, stream = prepared.backbone, prepared.stream
        store = FeatureStore(
            backbone,
            None,
            batch_size=spec.batch_size,
            num_workers=spec.num_workers,
            progress=stopwatch,
        )
        prepared.strategy.setup(prepared.context(store, stopwatch))
        first = stream.experiences[0]
        _reset_peak(backbone.device)
        prepared.strategy.train_experience(first)
        seconds = stopwatch.seconds(f"{name}: ")
        images = len(first.train)
        figures[f"{name} {TRAINED[name]}, cilbench fit (img/s)"] = round(images / seconds, 1)
        figures[f"{name} peak GPU memory (MiB)"] = _peak_mib(backbone.device)
        if not bare_rate:
            settings = TrainSettings(batch_size=spec.batch_size, epochs=1)
            bare_rate = training_rate(backbone, first.train, settings, prepared.augmentation)
            figures["bare forward+backward, full model (img/s)"] = round(bare_rate, 1)
        figures[f"{name} / bare"] = round(images / seconds / bare_rate, 3)


class _Stopwatch:
    """A Progress that records the wall time of every task (device work included)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        start = time.perf_counter()
        yield lambda n: None
        self.times[description] = time.perf_counter() - start

    def seconds(self, prefix: str) -> float:
        """Seconds of the training task named `prefix...` (extraction tasks are not counted)."""
        found = [t for d, t in self.times.items() if d.startswith(prefix) and "statistics" not in d]
        return sum(found)


def _utilisation(backbone: Backbone, forward_rate: float, figures: Figures) -> None:
    device = backbone.device
    flops = forward_flops(backbone)
    peak = matmul_peak_flops(device)
    dtype = figures["compute dtype"]
    figures.update(
        {
            "model GMAC per image (counted)": float(f"{flops / 2e9:.4g}"),
            f"measured dense {dtype} matmul peak (TFLOP/s)": round(peak / 1e12, 3),
            "forward throughput x FLOPs / matmul peak": round(forward_rate * flops / peak, 3),
        }
    )


def forward_flops(backbone: Backbone) -> int:
    """FLOPs (2 x multiply-accumulates) of the frozen model's forward on one image."""
    from torch.utils.flop_counter import FlopCounterMode

    size = backbone.preprocessing.image_size
    images = torch.zeros(1, 3, size, size, device=backbone.device)
    # The counter does not see fused attention kernels: count timm's explicit (equal) path.
    fused = [m for m in backbone.model.modules() if getattr(m, "fused_attn", False)]
    for module in fused:
        module.fused_attn = False  # type: ignore[assignment]
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            backbone.forward_features(images)
    finally:
        for module in fused:
            module.fused_attn = True  # type: ignore[assignment]
    return counter.get_total_flops()


def matmul_peak_flops(device: torch.device) -> float:
    """FLOP/s of the best of a few large square matmuls in the compute dtype (bf16 on CUDA)."""
    n = 8192 if device.type == "cuda" else 1024
    dtype = compute_dtype(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up (library selection)
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n**3 / best


def _whole(source: Any) -> DatasetView:
    import numpy as np

    return DatasetView(source, np.arange(len(source)), np.zeros(len(source), dtype=np.int64))


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | str:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return "n/a (cpu)"

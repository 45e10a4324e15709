"""`cilbench profile first-session`: backbone work of ADAM and RanPAC, and RanPAC's update memory.

1. Forward passes: ADAM and RanPAC run over the whole stream of `spec` (the runner's own
   train/evaluate calls, an empty cache in a temporary folder) while a global forward hook counts
   the images each whole model processes, split into training passes (task 0 only) and inference
   passes per branch (frozen pre-trained / adapted). After task 0 every image should go through
   each branch at most once: each inference count is at most the number of images in the stream.
2. Memory: one RanPAC head update (G += H'H, Q += H'Y, lambda search, float64 solve) at
   M = 10000 (`--set projection_dim=...` to change) on 2000 random 768-d features of 10 classes,
   in a fresh process (after a small warm-up update that loads the linear-algebra libraries) so
   the peak belongs to the update alone: CUDA peak allocation on a GPU, otherwise the rise of the
   process's peak resident memory.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import resource
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from cilbench.api import STRATEGIES
from cilbench.core.errors import ConfigError, did_you_mean
from cilbench.engine.evaluation import evaluate
from cilbench.engine.loop import PreparedRun, prepare
from cilbench.engine.spec import RunSpec, resolve_device
from cilbench.features import FeatureStore
from cilbench.profiles import Figures, register_profile

UPDATE_IMAGES = 2000
UPDATE_DIM = 768
UPDATE_CLASSES = 10


@register_profile("first-session", ignores=("--strategy", "--decode"))
def profile_first_session(spec: RunSpec) -> Figures:
    """Count forward passes per branch for adam and ranpac; measure RanPAC's update peak memory."""
    names = ("adam", "ranpac")
    fields = {
        name: {f.name for f in dataclasses.fields(STRATEGIES.get(name).Config)} for name in names
    }
    known = set().union(*fields.values())
    unknown = [k for k in spec.overrides if "." not in k and k not in known]
    if unknown:
        raise ConfigError(
            f"Unknown adam/ranpac config key {unknown[0]!r}.{did_you_mean(unknown[0], known)}"
        )
    runs = [prepare(_for_strategy(spec, name, fields[name])) for name in names]  # all checked
    figures: Figures = {}
    for prepared in runs:
        figures.update(_forward_passes(prepared))
    projection_dim = int(spec.overrides.get("projection_dim", 10000))  # checked by prepare
    figures.update(_update_memory(projection_dim, resolve_device(spec.device)))
    return figures


def _for_strategy(spec: RunSpec, name: str, fields: set[str]) -> RunSpec:
    """`spec` for strategy `name`, keeping only the --set keys that apply to it."""
    overrides = {k: v for k, v in spec.overrides.items() if "." in k or k in fields}
    return dataclasses.replace(spec, strategy=name, overrides=overrides)


def _forward_passes(prepared: PreparedRun) -> Figures:
    spec = prepared.spec
    strategy, stream, backbone = prepared.strategy, prepared.stream, prepared.backbone
    counts: Counter[tuple[str, int, bool]] = Counter()
    phase = "task 0"

    def count(module: torch.nn.Module, args: tuple, output: object) -> None:
        if hasattr(module, "pretrained_cfg"):  # a whole timm model, not one of its layers
            counts[(phase, id(module), module.training)] += len(args[0])

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(backbone, Path(tmp), batch_size=spec.batch_size)
        strategy.setup(prepared.context(store))
        try:
            for experience in stream:
                phase = "task 0" if experience.index == 0 else "later"
                strategy.train_experience(experience)
                evaluate(strategy, stream, experience.index, store, spec.batch_size)
        finally:
            handle.remove()
    branch = getattr(strategy, "branch", None)
    models = {"frozen": backbone.__dict__.get("model"), "adapted": getattr(branch, "model", None)}
    ids = {label: id(model) for label, model in models.items() if model is not None}
    sources = {v.source.fingerprint: len(v.source) for v in _views(stream)}
    name = spec.strategy
    figures: Figures = {
        f"{name} ({strategy.config.peft}): images in the stream (train + test)": sum(
            sources.values()
        ),
        f"{name}: task-0 training passes (images)": sum(
            n for (_, _, training), n in counts.items() if training
        ),
    }
    for label, model_id in ids.items():
        for when in ("task 0", "later"):
            figures[f"{name}: {label} branch, inference images forwarded, {when}"] = counts[
                (when, model_id, False)
            ]
    other = sum(
        n for (_, i, training), n in counts.items() if not training and i not in ids.values()
    )
    figures[f"{name}: inference passes through any other model"] = other
    return figures


def _views(stream):  # type: ignore[no-untyped-def]
    return [e.train for e in stream.experiences] + list(stream.test_sets)


def _update_memory(projection_dim: int, device: str) -> Figures:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        peak_mib, seconds = pool.submit(measure_update, projection_dim, device).result()
    gram_mib = projection_dim**2 * 4 / 2**20
    return {
        f"ranpac update, M={projection_dim}, {UPDATE_IMAGES} images, device": device,
        "ranpac update: G (float32, kept between experiences) (MiB)": round(gram_mib, 1),
        "ranpac update: float64 system for the solve (MiB)": round(2 * gram_mib, 1),
        "ranpac update: measured peak memory of the update (MiB)": round(peak_mib, 1),
        "ranpac update: wall time (s)": round(seconds, 2),
    }


def measure_update(projection_dim: int, device: str) -> tuple[float, float]:
    """(MiB above the starting point, seconds) of one RanPAC head update, in a fresh process."""
    from cilbench.strategies.ranpac import RanPAC, RanpacConfig

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(UPDATE_IMAGES, UPDATE_DIM, generator=generator)
    labels = torch.randint(UPDATE_CLASSES, (UPDATE_IMAGES,), generator=generator)
    warm_up = RanPAC(RanpacConfig(peft="none", projection_dim=64), device=device)
    warm_up.update(features, labels, UPDATE_CLASSES, generator)  # loads the linear-algebra code
    strategy = RanPAC(RanpacConfig(peft="none", projection_dim=projection_dim), device=device)
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
        start_bytes = torch.cuda.memory_allocated()
    else:
        start_bytes = _resident_bytes()
    start = time.perf_counter()
    strategy.update(features, labels, UPDATE_CLASSES, generator)
    if on_gpu:
        torch.cuda.synchronize()
        peak_bytes = torch.cuda.max_memory_allocated()
    else:
        peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return (peak_bytes - start_bytes) / 2**20, time.perf_counter() - start


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

"""Parallel data loading: default worker counts, device-type choices, worker-independent results."""

from __future__ import annotations

import os

import joblib
import numpy as np
import pytest
import torch
from stream_fixtures import write_vtab

from cilbench.core.devices import autocast, compute_dtype, pins_memory
from cilbench.core.errors import ConfigError
from cilbench.data.augment import Augmentation, training_data
from cilbench.data.sources import (
    MAX_DEFAULT_WORKERS,
    ArraySource,
    FileSource,
    default_workers,
    loader_options,
    loader_workers,
    threads_beside_workers,
)
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec
from cilbench.features import FeatureStore
from cilbench.learn.training import TrainSettings, fit
from cilbench.testing import tiny_backbone


def test_default_workers_follow_the_cpu_affinity(monkeypatch):
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_workers() == 1
    monkeypatch.setattr(joblib, "cpu_count", lambda: 96)
    assert default_workers() == MAX_DEFAULT_WORKERS


def test_inference_threads_leave_the_decoding_workers_their_cores(monkeypatch):
    monkeypatch.setattr(joblib, "cpu_count", lambda: 8)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with threads_beside_workers(6):
            assert torch.get_num_threads() == 2  # 8 cores - 6 workers
        with threads_beside_workers(8):
            assert torch.get_num_threads() == 1  # never fewer than one
        with threads_beside_workers(0):
            assert torch.get_num_threads() == 4  # no workers: all threads compute
        with threads_beside_workers(1):
            assert torch.get_num_threads() == 4  # never more than it had
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_default_workers_go_to_decoding_or_to_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr("cilbench.data.sources.default_workers", lambda: 3)
    (tmp_path / "a.jpg").write_bytes(b"")
    files = FileSource(tmp_path, ["a.jpg"], [0], "files")
    arrays = ArraySource(np.zeros((1, 4, 4), dtype=np.uint8), np.zeros(1), "arrays")
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert loader_workers(None, [files], cpu) == 3
    assert loader_workers(None, [arrays], cpu) == 0  # the model needs the cores
    assert loader_workers(None, [arrays], gpu) == 3  # the host only feeds the GPU
    assert loader_workers(None, [arrays, files], cpu) == 3
    assert loader_workers(0, [files], cpu) == 0 and loader_workers(5, [arrays], cpu) == 5
    with pytest.raises(ConfigError, match="got -1"):
        loader_workers(-1, [files], cpu)


def test_device_paths_are_chosen_by_device_type():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert compute_dtype(cuda) == torch.bfloat16 and compute_dtype(cpu) == torch.float32
    assert pins_memory(cuda) and not pins_memory(cpu)
    assert loader_options(cuda, 2, persistent=True) == {
        "num_workers": 2,
        "pin_memory": True,
        "persistent_workers": True,
    }
    assert loader_options(cpu, 0, persistent=True) == {
        "num_workers": 0,
        "pin_memory": False,
        "persistent_workers": False,  # torch refuses persistent workers without workers
    }
    with autocast(cpu):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_cached_features_are_keyed_by_precision():
    """bf16 features computed on a GPU never answer a CPU (float32) lookup, or the reverse."""
    source = ArraySource(np.zeros((2, 4, 4), dtype=np.uint8), np.zeros(2), "arrays")
    keys = {
        device: FeatureStore(tiny_backbone(device=device)).cache_key(source)
        for device in ("cpu", "cuda")
    }
    assert keys["cpu"][0] != keys["cuda"][0]
    assert '"precision": "torch.bfloat16"' in keys["cuda"][1]


@pytest.fixture(scope="module")
def vtab_root(tmp_path_factory):
    return write_vtab(tmp_path_factory.mktemp("vtab"), train_per_class=2, test_per_class=1)


def _run(root, tmp_path, strategy: str, workers: int, **overrides):
    spec = RunSpec(
        strategy=strategy,
        stream="vtab",
        backbone="tiny-vit-random",
        overrides={"backbone.image_size": 32, "stream.increment": 25, **overrides},
        data_root=root,
        out_dir=tmp_path / f"runs-{workers}",
        cache_dir=None,
        device="cpu",
        batch_size=16,
        num_workers=workers,
    )
    return run(spec)


def test_features_are_the_same_with_and_without_workers(vtab_root):
    backbone = tiny_backbone()
    from cilbench.benchmarks.vtab import Vtab

    source = Vtab().build(vtab_root).test_sets[0].source
    alone = FeatureStore(backbone, num_workers=0, batch_size=16).source_features(source)
    parallel = FeatureStore(backbone, num_workers=2, batch_size=16).source_features(source)
    assert alone.shape == (len(source), backbone.feature_dim)
    assert torch.equal(alone, parallel)


def _trained_weights(view, workers: int) -> tuple[list[float], torch.Tensor]:
    backbone = tiny_backbone()
    model = backbone.build_model(num_classes=50)
    data, prepare = training_data(backbone, [view], Augmentation())
    losses = fit(
        lambda images, labels: torch.nn.functional.cross_entropy(model(images), labels),
        [{"params": model.parameters()}],
        data,
        prepare,
        TrainSettings(epochs=3, batch_size=16, lr=0.05),
        torch.Generator().manual_seed(0),
        device=backbone.device,
        num_workers=workers,
    )
    return losses, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_training_is_the_same_with_0_and_2_workers(vtab_root):
    """Per-image augmentation runs in the workers; three epochs reuse the persistent ones."""
    from cilbench.benchmarks.vtab import Vtab

    view = Vtab().build(vtab_root).experiences[0].train
    losses, weights = _trained_weights(view, 0)
    parallel_losses, parallel_weights = _trained_weights(view, 2)
    assert losses == parallel_losses and torch.equal(weights, parallel_weights)
    assert len(set(losses)) == 3  # it trained: the loss changed between epochs


@pytest.mark.parametrize(
    ("strategy", "overrides"),
    [
        ("nmc", {}),
        pytest.param(
            "finetune", {"epochs": 2, "batch_size": 8, "lr": 0.05}, marks=pytest.mark.slow
        ),
    ],
)
def test_accuracy_matrix_is_the_same_with_0_and_2_workers(vtab_root, tmp_path, strategy, overrides):
    """Through the runner: extraction, training and evaluation loaders alike."""
    alone = _run(vtab_root, tmp_path, strategy, 0, **overrides)
    parallel = _run(vtab_root, tmp_path, strategy, 2, **overrides)
    assert alone.accuracy_matrix == parallel.accuracy_matrix
    assert len(alone.accuracy_matrix) == 2 and alone.accuracy_matrix[-1][0] is not None

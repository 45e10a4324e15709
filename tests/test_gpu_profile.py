"""`cilbench profile gpu` on the CPU: the tiny ViT runs every measurement's code path."""

from __future__ import annotations

import pytest

from cilbench.engine.spec import RunSpec
from cilbench.profiles.gpu import profile_gpu


def _tiny_vit_macs() -> int:
    """Multiply-accumulates of tiny-vit-random on one 32 px image, counted by hand.

    8 px patches: 16 tokens + the class token = 17, width 64, MLP 256, two heads of 32, 2 blocks.
    """
    tokens, width, patches = 17, 64, 16
    patch_embed = patches * (3 * 8 * 8) * width
    qkv = tokens * width * 3 * width
    attention = 2 * (2 * tokens * tokens * 32)  # q k^T and attn v, two heads
    projection = tokens * width * width
    mlp = 2 * tokens * width * 4 * width
    return patch_embed + 2 * (qkv + attention + projection + mlp)


@pytest.fixture(scope="module")
def figures():
    spec = RunSpec(
        stream="synthetic",
        device="cpu",
        batch_size=16,
        cache_dir=None,
        overrides={"stream.train_per_class": 8, "stream.test_per_class": 4},
    )
    return profile_gpu(spec)


def test_gpu_profile_runs_on_the_cpu_with_the_tiny_model(figures):
    assert figures["backbone"] == "tiny-vit-random"
    assert figures["compute dtype"] == "float32"
    assert figures["images (training set of experience 0's source)"] == 6 * 8
    assert figures["model GMAC per image (counted)"] == pytest.approx(_tiny_vit_macs() / 1e9, 1e-3)
    for name in ("slca", "adam", "finetune"):
        assert figures[f"{name} / bare"] > 0
        assert figures[f"{name} peak GPU memory (MiB)"] == "n/a (cpu)"
    assert figures["forward throughput x FLOPs / matmul peak"] > 0


def test_bf16_features_are_close_to_float32_but_not_equal(figures):
    """On the CPU the bf16 figures come from CPU autocast, so they are measured, not assumed."""
    assert 0 < figures["bf16 vs fp32 features: max relative L2 deviation"] < 0.05
    fp32 = figures["NMC final accuracy, fp32 features (%)"]
    bf16 = figures["NMC final accuracy, bf16 features (%)"]
    assert fp32 > 100 / 6 + 10  # NMC learns the synthetic classes with either
    assert figures["NMC accuracy difference, bf16 - fp32 (points)"] == pytest.approx(bf16 - fp32)

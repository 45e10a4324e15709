"""`cilbench profile masked-head`: the ceiling the prompt methods' head protocol puts on a stream.

L2P, DualPrompt and CODA-Prompt train each experience's head with the other experiences' logits
masked (the reference codes' `train_mask`), so nothing calibrates one task's logits against
another's. This profile trains exactly that head, without any prompt, on the frozen features of
`--backbone` (from the feature cache), for a grid of learning rates and epochs (Adam, constant
lr, batch 32, as the prompt learners), and reports the final sample-weighted accuracy of each.
When every cell stays far below NMC on the same features, low prompt-method scores on that
stream measure the protocol, not the prompts. E.g. `cilbench profile masked-head --stream
split-fashion-mnist-mini --backbone dinov2-vits14-imgfocus-9b --set backbone.image_size=56`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from cilbench.data.streams import Experience, Stream
from cilbench.engine.loop import prepare
from cilbench.engine.spec import RunSpec
from cilbench.features import FeatureStore
from cilbench.learn.heads import TaskHeads, heads_accuracy
from cilbench.learn.training import TrainSettings, fit
from cilbench.profiles import Figures, register_profile

LEARNING_RATES = (0.03 * 16 / 256, 0.01, 0.05)
"""L2P's default lr, then 5x and 25x more."""
EPOCHS = (1, 5, 20)


@register_profile("masked-head", ignores=("--strategy", "--decode"))
def profile_masked_head(spec: RunSpec) -> Figures:
    """Final accuracy of a masked per-task linear head on frozen features, per (lr, epochs)."""
    prepared = prepare(spec)
    store = FeatureStore(prepared.backbone, spec.cache_dir, batch_size=spec.batch_size)
    figures: Figures = {}
    for lr in LEARNING_RATES:
        for epochs in EPOCHS:
            settings = TrainSettings(
                epochs=epochs, lr=lr, optimizer="adam", schedule="constant", batch_size=32
            )
            accuracy = masked_head_accuracy(prepared.stream, store, settings, spec.seed)
            figures[f"lr {lr:g}, {epochs} epochs: final accuracy (%)"] = round(accuracy, 1)
    return figures


def masked_head_accuracy(
    stream: Stream, store: FeatureStore, settings: TrainSettings, seed: int
) -> float:
    """Percent of all test images right after the last experience (sample-weighted)."""
    device = store.backbone.device
    generator = torch.Generator().manual_seed(seed)
    heads = TaskHeads(store.backbone.feature_dim, device)
    for experience in stream.experiences:
        heads.grow(len(experience.new_classes), generator)
        train_masked(heads, experience, store, settings, generator)
    return heads_accuracy(heads, (store.get(view) for view in stream.test_sets))


def train_masked(
    heads: TaskHeads,
    experience: Experience,
    store: FeatureStore,
    settings: TrainSettings,
    generator: torch.Generator,
) -> None:
    """Train `heads` on the experience's cached features, logits of other classes masked."""
    device = heads.device
    outside = torch.ones(heads.num_classes, dtype=torch.bool, device=device)
    outside[list(experience.classes)] = False

    def loss_fn(batch: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = heads(batch).masked_fill(outside, float("-inf"))
        return F.cross_entropy(logits, targets.to(device))

    data = TensorDataset(*store.get(experience.train))
    groups = [{"params": heads.parameters()}]
    fit(loss_fn, groups, data, lambda x: x.to(device), settings, generator, device=device)

"""Fine-tuning: the lower bound of every class-incremental leaderboard.

Sequential training on each experience's data alone, with a linear head that grows by the new
classes; nothing protects old classes, so they are forgotten (catastrophic forgetting). With
`train_backbone=false` the backbone stays frozen and only the head trains, on cached frozen
features (a sequential linear probe).

Config: `epochs`, `batch_size`, `lr` (head), `backbone_lr_scale` (backbone lr = lr x this),
`optimizer`, `momentum`, `weight_decay` (`first_weight_decay`: on experience 0, None = the same),
`schedule`, `milestones`, `gamma`, `grad_clip`, `num_workers`, `train_backbone`, `loss` (`seen`:
cross-entropy over every class seen so far; `new`: over this experience's new classes only),
`freeze_old_heads`, `fresh_final_norm` (see `cilbench.learn.heads.HeadedNetwork`); the
learner is `cilbench.learn.finetuning.Finetuner`, shared with `joint`.

The papers define this bound differently; each definition is a named recipe (`--set recipe=...`,
`cilbench recipes finetune`), and the result records which one ran:

- `pilot` (default on the built-in streams): LAMDA-PILOT's finetune (exps/finetune*.json,
  models/finetune.py): IN-1k ViT, SGD lr 1e-3, weight decay 5e-4 on the first experience and 2e-4
  after, 20 epochs, batch 128, cross-entropy over the new classes only.
- `slca-seqft`: SLCA's Seq FT, its stage 1 without the slow learner or classifier alignment
  (current-task logits, earlier heads frozen, fresh final LayerNorm, SLCA's data pipeline).
- `shared-head`: one head over all seen classes with cross-entropy over all of them, lr 0.01 for
  every parameter, cosine schedule (cilbench's earlier definition; also the Config defaults).
"""

from __future__ import annotations

from typing import Any

from cilbench.api import register_strategy
from cilbench.engine.recipes import IN1K, PILOT, SLCA, Recipe, shared_head_recipe
from cilbench.learn.finetuning import Finetuner


def _pilot(config: str) -> Recipe:
    """LAMDA-PILOT's finetune (the same settings for CIFAR-100 and ImageNet-R)."""
    return Recipe(
        {
            "epochs": 20, "lr": 1e-3, "batch_size": 128, "weight_decay": 2e-4,
            "first_weight_decay": 5e-4, "schedule": "multistep", "milestones": (40, 70),
            "loss": "new",
        },
        PILOT.file(f"exps/{config}", "LAMDA-PILOT README curves, Finetune row, IN-1k"),
        name="pilot",
        backbone=IN1K,
        notes="first experience: init_milestones 60,120,170; neither set is reached in 20 "
        "epochs; SGD momentum 0.9 (models/finetune.py)",
    )  # fmt: skip


def _slca_seqft(epochs: int, milestone: int, dataset: str) -> Recipe:
    """SLCA's stage 1 at one learning rate for all parameters, no classifier alignment."""
    cifar = dataset == "cifar"
    return Recipe(
        {
            "epochs": epochs, "milestones": (milestone,), "schedule": "multistep",
            "lr": 0.01, "batch_size": 128, "weight_decay": 5e-4, "loss": "new",
            "freeze_old_heads": True, "fresh_final_norm": True,
            "backbone.normalization": "cifar100" if cifar else "imagenet",
            "augment.preset": "slca-cifar" if cifar else "slca",
        },
        SLCA.file(
            "models/slca.py", "SLCA (ICCV 2023) Seq FT baseline (the paper's lower bound)"
        ),
        name="slca-seqft",
        notes="the repository has no Seq FT config: models/slca.py with bcb_lrscale 1 (lr 0.01 "
        f"for every parameter) and no alignment; epochs from exps/slca/slca_{dataset}*.json",
    )  # fmt: skip


def _shared_head(epochs: int) -> Recipe:
    return shared_head_recipe(
        epochs, "cilbench's own definition: one head over all seen classes, no reference config"
    )


RECIPES: dict[str, Any] = {
    "split-cifar100": [_pilot("finetune.json"), _slca_seqft(20, 18, "cifar"), _shared_head(20)],
    "split-imagenet-r": [
        _pilot("finetune_inr.json"),
        _slca_seqft(50, 40, "imgnetr"),
        _shared_head(50),
    ],
    # CoRe50 NI repeats every class in every session, so "new classes only" is undefined there.
    "core50": [_shared_head(20)],
    "synthetic": {"epochs": 1, "batch_size": 16},
    "split-fashion-mnist-mini": {"epochs": 1, "batch_size": 32},
}


@register_strategy("finetune")
class Finetune(Finetuner):
    """Backbone + growing linear head trained on the current experience only."""

    recipes = RECIPES

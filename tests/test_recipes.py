"""Reference recipes: resolved settings against the reference configs, sources, fallbacks."""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, ClassVar

import numpy as np
import pytest

from cilbench.api import STRATEGIES, STREAMS
from cilbench.benchmarks.synthetic import Synthetic
from cilbench.core.errors import ConfigError
from cilbench.data.streams import class_order
from cilbench.engine.loop import run
from cilbench.engine.recipes import IN1K, IN21K, Recipe, recipes_of
from cilbench.engine.spec import RunSpec, resolve_run

# Files the values below were read from (repository @ the commit named in
# cilbench/engine/recipes.py).
RC = "zhoudw-zdw/RevisitingCIL exps/"
PILOT = "LAMDA-CL/LAMDA-PILOT exps/"
RANPAC = "RanPAC/RanPAC args/"
SLCA = "GengDavid/SLCA "
COFIMA = "IemProg/CoFiMA "
JANSON = "Pauljanson002/pretrained-cl "
LAMDA = {"augment.scale": (0.05, 1.0), "augment.interpolation": "bilinear", "augment.flip": True}
"""PILOT / RevisitingCIL / RanPAC utils/data.py build_transform: RandomResizedCrop scale
(0.05, 1) (bilinear, torchvision's default), RandomHorizontalFlip, ToTensor, no Normalize."""
NO_NORM = {"backbone.normalization": "none", "backbone.crop_pct": 0.875}


FECAM_PAPER = {"shrink_mode": "relative", "normalise": "correlation", "feature_norm": "statistics"}
"""dipamgoswami/FeCAM FeCAM_vit_*.py: shrink_cov with alpha1/alpha2 times the mean (off-)diagonal,
normalize_cov (C_ij / sd_i sd_j), features F.normalize'd before means and covariances."""
FECAM_PILOT = {
    "shrink1": 100.0, "shrink2": 0.0, "shrink_mode": "absolute", "normalise": "corrcoef",
    "feature_norm": "distance", "tukey_beta": 1.0,
}  # fmt: skip
"""LAMDA-PILOT models/fecam.py: cov + 100 I, torch.corrcoef, unit-norm feature and mean."""


EASE = "sun-hailong/CVPR24-Ease exps/"
EASE_DEFAULTS = {
    "alpha": 0.1, "beta": 0.0, "use_init_ptm": False, "recompute_similarity": True,
    "reweight": True, "optimizer": "sgd", "min_lr": 0.0,
}  # fmt: skip
"""Every EASE config cilbench has a stream for: alpha 0.1, beta 0, use_init_ptm false, recalc_sim
and use_reweight true, SGD, cosine to min_lr 0 (models/ease.py get_optimizer/get_scheduler)."""


MOS = "sun-hailong/AAAI25-MOS exps/"
MOS_DEFAULTS = {
    "reg": 0.1, "adapter_momentum": 0.1, "ensemble": True, "ca_epochs": 30, "ca_lr": 0.005,
    "adapter_bottleneck": 16, "optimizer": "sgd", "min_lr": 0.0, "head_lr_scale": 0.1,
    "retrieval_steps": 4, "test_adapters": "prefix-mean",
}  # fmt: skip
"""Every MOS config: reg 0.1, adapter_momentum 0.1, ensemble, crct_epochs 30, ca_lr 0.005,
ffn_num 16, SGD, cosine to min_lr 0; the head at init_lr x 0.1 and MAX_ITER 4 (models/mos.py)."""


def first(
    epochs: int, lr: float, batch: int, wd: float, tokens: int | None = None
) -> dict[str, Any]:
    """A first-session row: epochs, lr, batch, weight decay (and VPT prompt tokens)."""
    row = {"epochs": epochs, "lr": lr, "batch_size": batch, "weight_decay": wd}
    return {**row, "vpt_tokens": tokens} if tokens else row


# (strategy, stream, --set keys, expected resolved values, the reference file they come from)
REFERENCE: list[tuple[str, str, dict[str, str], dict[str, Any], str]] = [
    # ADAM / APER: the paper's code (RevisitingCIL, IN-21k) and LAMDA-PILOT (IN-1k).
    *[
        (
            "adam", stream, {"peft": peft},
            {"peft": peft, "backbone": IN21K, **first(*values), **LAMDA, **NO_NORM},
            f"{RC}aper_{peft}/{config}_vit-b_{peft}.json",
        )
        for stream, config, rows in [
            ("split-cifar100", "cifar224_5_5", {
                "adapter": (20, 0.01, 48, 5e-4), "ssf": (20, 0.01, 48, 5e-4),
                "vpt-shallow": (20, 0.01, 48, 5e-4, 5), "vpt-deep": (5, 0.05, 16, 5e-4, 5),
                "finetune": (5, 0.01, 128, 5e-4),
            }),
            ("split-imagenet-r", "imagenetr_5_5", {
                "adapter": (20, 0.05, 24, 5e-3), "ssf": (20, 0.01, 48, 5e-4),
                "vpt-shallow": (20, 0.01, 48, 5e-4, 5), "vpt-deep": (5, 0.05, 16, 5e-4, 5),
                "finetune": (5, 0.01, 128, 5e-4),
            }),
            ("vtab", "vtab_10_10", {
                "adapter": (20, 0.01, 48, 5e-4), "ssf": (20, 0.01, 48, 5e-4),
                "vpt-shallow": (20, 0.01, 48, 5e-4, 5), "vpt-deep": (5, 0.05, 16, 5e-4, 5),
                "finetune": (5, 0.01, 128, 5e-4),
            }),
            *[
                (stream, config, {
                    "adapter": (20, 0.01, 48, 5e-4), "ssf": (20, 0.01, 48, 5e-4),
                    "vpt-shallow": (20, 0.01, 48, 5e-4, 5), "vpt-deep": (*deep, 5e-4, 5),
                    "finetune": (5, 0.01, 128, 5e-4),
                })
                for stream, config, deep in [
                    ("split-cub200", "cub_10_10", (5, 0.05, 16)),
                    ("split-imagenet-a", "imageneta_10_10", (5, 0.05, 16)),
                    ("split-objectnet", "objectnet_10_10", (20, 0.01, 128)),
                    ("split-omnibenchmark", "omni_30_30", (20, 0.01, 48)),
                ]
            ],
        ]
        for peft, values in rows.items()
    ],
    *[
        (
            "adam", stream, {"recipe": "pilot", "peft": peft},
            {"peft": peft, "backbone": IN1K, **first(*values), **LAMDA, **NO_NORM},
            f"{PILOT}{config}",
        )
        for stream, peft, config, values in [
            ("split-cifar100", "adapter", "aper_aperpter.json", (20, 0.01, 48, 5e-4)),
            ("split-cifar100", "ssf", "aper_ssf.json", (20, 0.01, 48, 5e-4)),
            ("split-cifar100", "vpt-shallow", "aper_vpt_shallow.json", (20, 0.01, 48, 5e-4, 5)),
            ("split-cifar100", "vpt-deep", "aper_vpt_deep.json", (20, 0.01, 48, 5e-4, 5)),
            ("split-cifar100", "finetune", "aper_finetune.json", (6, 0.01, 128, 0.05)),
            ("split-imagenet-r", "adapter", "aper_aperpter_inr.json", (10, 0.05, 16, 5e-3)),
            ("split-imagenet-r", "ssf", "aper_ssf_inr.json", (20, 0.01, 48, 5e-4)),
            ("split-imagenet-r", "vpt-deep", "aper_vpt_deep_inr.json", (20, 0.05, 24, 5e-4, 30)),
            ("split-imagenet-r", "finetune", "aper_finetune_inr.json", (5, 0.01, 144, 5e-3)),
        ]
    ],
    # RanPAC: args/<dataset>_publish.csv row ID 7 (Phase 1 + RP) and ID 4 (no Phase 1).
    ("ranpac", "split-cifar100", {}, {
        "peft": "adapter", **first(20, 0.01, 48, 5e-4), "projection_dim": 10000,
        "backbone": IN21K, "backbone.crop_pct": 1.0, **LAMDA,
    }, f"{RANPAC}cifar224_publish.csv ID 7; utils/data.py isCifar: Resize(224), no 256 crop"),
    ("ranpac", "split-cifar100", {"peft": "none"}, {
        "peft": "none", "projection_dim": 10000, "backbone": IN21K, "backbone.crop_pct": 1.0,
    }, f"{RANPAC}cifar224_publish.csv ID 4"),
    ("ranpac", "split-cifar100", {"recipe": "pilot"}, {
        "peft": "adapter", **first(20, 0.01, 48, 5e-4), "backbone": IN1K, **NO_NORM,
    }, f"{PILOT}ranpac.json (pretrained_vit_b16_224_adapter)"),
    ("ranpac", "split-imagenet-r", {}, {
        "peft": "ssf", **first(20, 0.01, 48, 5e-4), "projection_dim": 10000, "backbone": IN1K,
        **NO_NORM, **LAMDA,
    }, f"{RANPAC}imagenetr_publish.csv ID 7 (pretrained_vit_b16_224_ssf)"),
    ("ranpac", "split-imagenet-r", {"peft": "none"}, {"peft": "none", "backbone": IN1K},
     f"{RANPAC}imagenetr_publish.csv ID 4"),
    ("ranpac", "split-imagenet-r", {"recipe": "pilot"}, {
        "peft": "adapter", **first(10, 0.05, 16, 5e-3), "backbone": IN1K,
    }, f"{PILOT}ranpac_inr.json"),
    ("ranpac", "core50", {}, {
        "peft": "adapter", **first(20, 0.01, 48, 5e-4), "backbone": IN1K, **NO_NORM,
    }, f"{RANPAC}core50_publish.csv ID 7 (pretrained_vit_b16_224_adapter)"),
    ("ranpac", "core50", {"peft": "none"}, {"peft": "none", "backbone": IN1K},
     f"{RANPAC}core50_publish.csv ID 4"),
    ("ranpac", "vtab", {}, {"peft": "ssf", **first(20, 0.01, 48, 5e-4), "backbone": IN1K},
     f"{RANPAC}vtab_publish.csv ID 7"),
    ("ranpac", "vtab", {"peft": "none"}, {"peft": "none", "backbone": IN1K},
     f"{RANPAC}vtab_publish.csv ID 4"),
    # FeCAM: the authors' ViT scripts (frozen IN-21k ViT, ToTensor only) and LAMDA-PILOT
    # EASE: the authors' exps/ease_<data>[_in21k].json (= LAMDA-PILOT exps/ease*.json for IN-1k).
    *[
        (
            "ease", stream, sets,
            {**first(*values), **EASE_DEFAULTS, **extra, "backbone": backbone,
             "stream.increment": increment, "stream.init_classes": 0, **LAMDA, **NO_NORM},
            f"{EASE}{config}{suffix}.json",
        )
        for stream, config, values, increment, extra in [
            ("split-cifar100", "ease_cifar", (20, 0.025, 48, 5e-4), 5, {}),
            ("split-imagenet-r", "ease_inr", (20, 0.05, 16, 5e-3), 20, {}),
            ("vtab", "ease_vtab", (45, 0.03, 16, 5e-3), 10, {"adapter_bottleneck": 16}),
        ]
        for sets, backbone, suffix in [({}, IN21K, "_in21k"), ({"recipe": "paper-in1k"}, IN1K, "")]
    ],
    # EASE configs whose IN-1k file differs from its IN-21k twin: one row per file.
    *[
        (
            "ease", stream, sets,
            {**first(*values), **EASE_DEFAULTS, **extra, "backbone": backbone,
             "stream.increment": increment, "stream.init_classes": 0, **LAMDA, **NO_NORM},
            f"{EASE}{config}.json",
        )
        for stream, config, sets, backbone, values, increment, extra in [
            ("split-cub200", "ease_cub_in21k", {}, IN21K, (20, 0.008, 32, 5e-4), 10,
             {"alpha": 0.05}),
            ("split-cub200", "ease_cub", {"recipe": "paper-in1k"}, IN1K, (20, 0.005, 16, 5e-4),
             10, {"alpha": 0.005, "use_init_ptm": True, "beta": 1.0}),
            ("split-imagenet-a", "ease_ina_in21k", {}, IN21K, (20, 0.05, 32, 5e-3), 20, {}),
            ("split-imagenet-a", "ease_ina", {"recipe": "paper-in1k"}, IN1K,
             (20, 0.05, 32, 5e-3), 20, {}),
            ("split-objectnet", "ease_obj_in21k", {}, IN21K, (25, 0.05, 48, 5e-3), 10,
             {"alpha": 0.2}),
            ("split-objectnet", "ease_obj", {"recipe": "paper-in1k"}, IN1K,
             (20, 0.03, 48, 5e-3), 10, {"optimizer": "adam"}),
        ]
    ],
    *[
        (
            "ease", stream, {"recipe": "pilot"},
            {**first(20, lr, batch, wd), **EASE_DEFAULTS, "backbone": IN1K,
             "stream.increment": increment, **LAMDA, **NO_NORM},
            f"{PILOT}{config}",
        )
        for stream, config, lr, batch, wd, increment in [
            ("split-cifar100", "ease.json", 0.025, 48, 5e-4, 5),
            ("split-imagenet-r", "ease_inr.json", 0.05, 16, 5e-3, 20),
        ]
    ],
    # MOS: the authors' exps/mos_<data>[_in21k].json (= LAMDA-PILOT exps/mos*.json for IN-1k).
    *[
        (
            "mos", stream, sets,
            {**first(*values), **MOS_DEFAULTS, "ca_storage": storage, "backbone": backbone,
             "stream.increment": increment, "stream.init_classes": 0, **LAMDA, **NO_NORM},
            f"{MOS}{config}{suffix}.json",
        )
        for stream, config, values, increment, storage in [
            ("split-cifar100", "mos_cifar", (20, 0.03, 48, 5e-4), 5, "covariance"),
            ("split-imagenet-r", "mos_inr", (10, 0.05, 16, 5e-3), 20, "covariance"),
            ("split-imagenet-a", "mos_ina", (10, 0.05, 32, 5e-3), 20, "variance"),
            ("split-cub200", "mos_cub", (10, 0.01, 32, 5e-4), 10, "covariance"),
            ("split-objectnet", "mos_obj", (10, 0.05, 48, 5e-3), 20, "covariance"),
            ("split-omnibenchmark", "mos_omni", (10, 0.01, 16, 5e-4), 20, "covariance"),
            ("vtab", "mos_vtab", (20, 0.03, 32, 5e-3), 10, "covariance"),
        ]
        for sets, backbone, suffix in [({}, IN21K, "_in21k"), ({"recipe": "paper-in1k"}, IN1K, "")]
    ],
    *[
        (
            "mos", stream, {"recipe": "pilot"},
            {**first(epochs, lr, batch, wd), **MOS_DEFAULTS, "backbone": IN1K,
             "stream.increment": increment, **LAMDA, **NO_NORM},
            f"{PILOT}{config}",
        )
        for stream, config, epochs, lr, batch, wd, increment in [
            ("split-cifar100", "mos.json", 20, 0.03, 48, 5e-4, 5),
            ("split-imagenet-r", "mos_inr.json", 10, 0.05, 16, 5e-3, 20),
        ]
    ],
    ("fecam", "split-cifar100", {}, {
        "peft": "none", **FECAM_PAPER, "shrink1": 1.0, "shrink2": 0.0, "backbone": IN21K,
        "backbone.crop_pct": 1.0, "backbone.normalization": "none", "stream.class_order": "natural",
    }, "dipamgoswami/FeCAM FeCAM_vit_cifar100.py: alpha1 1, alpha2 0, Resize(224), natural order"),
    ("fecam", "split-cifar100", {"recipe": "pilot"}, {
        "peft": "adapter", **first(20, 0.01, 48, 5e-4), **FECAM_PILOT, "backbone": IN1K, **NO_NORM,
    }, f"{PILOT}fecam.json; models/fecam.py alpha = 100, torch.corrcoef"),
    ("fecam", "split-imagenet-r", {}, {
        "peft": "none", **FECAM_PAPER, "shrink1": 10.0, "shrink2": 10.0, "backbone": IN21K,
        **NO_NORM,
    }, "dipamgoswami/FeCAM FeCAM_vit_imagenet-r.py: alpha1 10, alpha2 10, Resize(256) crop 224"),
    ("fecam", "split-imagenet-r", {"recipe": "pilot"}, {
        "peft": "adapter", **first(10, 0.05, 16, 5e-3), **FECAM_PILOT, "backbone": IN1K,
    }, f"{PILOT}fecam_inr.json"),
    ("fecam", "core50", {}, {
        "peft": "none", **FECAM_PAPER, "shrink1": 1.0, "shrink2": 0.0, "backbone": IN21K,
        **NO_NORM,
    }, "dipamgoswami/FeCAM FeCAM_vit_core50.py: alpha1 1, alpha2 0, Resize(256) crop 224"),
    # LAE: LAMDA-PILOT's port (exps/lae*.json; models/lae.py: Adam, constant lr, prefix PET)
    *[
        ("lae", stream, {}, {
            "epochs": epochs, "lr": lr, "batch_size": 128, "weight_decay": 0.0,
            "optimizer": "adam", "schedule": "constant", "min_lr": 1e-5,
            "num_freeze_epochs": freeze, "ema_decay": 0.9999, "pet": "prefix", "pet_length": 10,
            "pet_layers": (0, 1, 2, 3, 4), "stream.increment": increment,
            "stream.init_classes": 0, "backbone": IN1K, **LAMDA, **NO_NORM,
        }, f"{PILOT}{config}; utils/inc_net.py LAE.adapt_blocks")
        for stream, config, epochs, lr, freeze, increment in [
            ("split-cifar100", "lae.json", 5, 0.0028125, 3, 10),
            ("split-imagenet-r", "lae_inr.json", 50, 0.00046875, 30, 20),
        ]
    ],
    # SLCA: the original (exps/slca/*.json, models/slca.py defaults, utils/data.py, convs/vits.py)
    ("slca", "split-cifar100", {}, {
        "epochs": 20, "milestones": (18,), "lr": 0.01, "backbone_lr_scale": 0.01,
        "weight_decay": 5e-4, "batch_size": 128, "ca_epochs": 5, "ca_lr": None,
        "logit_temperature": 0.1, "fresh_final_norm": True, "backbone": IN21K,
        "backbone.normalization": "cifar100", "augment.scale": (0.08, 1.0),
        "augment.interpolation": "bicubic", "augment.brightness": 63 / 255,
    }, f"{SLCA}exps/slca/slca_cifar.json; utils/data.py iCIFAR100_224; convs/vits.py"),
    ("slca", "split-imagenet-r", {}, {
        "epochs": 50, "milestones": (40,), "batch_size": 128, "ca_epochs": 5, "ca_lr": None,
        "fresh_final_norm": True, "backbone": IN21K, "backbone.normalization": "imagenet",
        "augment.scale": (0.08, 1.0), "augment.interpolation": "bicubic",
        "augment.brightness": 0.0,
    }, f"{SLCA}exps/slca/slca_imgnetr.json; utils/data.py iImageNetR"),
    ("slca", "split-cifar100", {"recipe": "pilot"}, {
        "epochs": 20, "milestones": (18,), "batch_size": 64, "ca_epochs": 3, "ca_lr": None,
        "fresh_final_norm": False, "backbone": IN1K, **NO_NORM, **LAMDA,
    }, f"{PILOT}slca.json"),
    ("slca", "split-imagenet-r", {"recipe": "pilot"}, {
        "epochs": 5, "milestones": (40,), "batch_size": 64, "ca_epochs": 3, "backbone": IN1K,
    }, f"{PILOT}slca_inr.json"),
    ("cofima", "split-cifar100", {}, {
        "epochs": 20, "milestones": (18,), "lr": 0.01, "backbone_lr_scale": 0.01,
        "weight_decay": 5e-4, "batch_size": 128, "ca_epochs": 5, "ca_lr": None,
        "ca_samples_per_class": 256, "logit_temperature": 0.1, "fresh_final_norm": True,
        "fisher_weighting": True, "new_model_weight": 0.5, "fisher_max": 1e-4,
        "backbone": IN21K, "backbone.normalization": "cifar100",
        "augment.scale": (0.08, 1.0), "augment.interpolation": "bicubic",
        "augment.brightness": 63 / 255,
    }, f"{COFIMA}exps/cofima/cofima_cifar.json; main.py --wt_alpha; models/cofima.py"),
    ("cofima", "split-imagenet-r", {}, {
        "epochs": 50, "milestones": (40,), "batch_size": 128, "ca_epochs": 5,
        "fresh_final_norm": True, "new_model_weight": 0.5, "backbone": IN21K,
        "backbone.normalization": "imagenet", "augment.scale": (0.08, 1.0),
        "augment.interpolation": "bicubic", "augment.brightness": 0.0,
    }, f"{COFIMA}exps/cofima/cofima_imgnetr.json; main.py --wt_alpha"),
    ("cofima", "split-cifar100", {"recipe": "pilot"}, {
        "epochs": 20, "milestones": (18,), "lr": 0.01, "backbone_lr_scale": 0.01,
        "weight_decay": 5e-4, "batch_size": 64, "ca_epochs": 3, "ca_lr": None,
        "logit_temperature": 0.1, "fresh_final_norm": False, "fisher_weighting": True,
        "new_model_weight": 0.4, "fisher_max": 1e-4, "backbone": IN1K, **NO_NORM, **LAMDA,
    }, f"{PILOT}cofima.json; models/cofima.py"),
    ("cofima", "split-imagenet-r", {"recipe": "pilot"}, {
        "epochs": 50, "milestones": (40,), "batch_size": 64, "ca_epochs": 3,
        "fresh_final_norm": False, "new_model_weight": 0.4, "backbone": IN1K,
    }, f"{PILOT}cofima_inr.json"),
    # Lower and upper bounds.
    *[
        ("finetune", stream, {}, {
            "epochs": 20, "lr": 1e-3, "weight_decay": 2e-4, "first_weight_decay": 5e-4,
            "batch_size": 128, "schedule": "multistep", "milestones": (40, 70),
            "loss": "new", "freeze_old_heads": False, "backbone": IN1K, **LAMDA,
        }, f"{PILOT}{config}; models/finetune.py")
        for stream, config in [
            ("split-cifar100", "finetune.json"), ("split-imagenet-r", "finetune_inr.json")
        ]
    ],
    # iCaRL: LAMDA-PILOT exps/icarl*.json (fixed_memory false on CIFAR, true on ImageNet-R).
    *[
        ("icarl", stream, {}, {
            "epochs": 20, "lr": 1e-3, "weight_decay": 2e-4, "first_weight_decay": 5e-4,
            "batch_size": batch, "schedule": "multistep", "milestones": (80, 120),
            "temperature": 2.0, "classifier": "nme", "selection": "herding", **memory,
            "backbone": IN1K, **LAMDA,
        }, f"{PILOT}{config}; models/icarl.py")
        for stream, config, batch, memory in [
            ("split-cifar100", "icarl.json", 128, {"memory_size": 2000, "memory_per_class": 0}),
            ("split-imagenet-r", "icarl_inr.json", 32, {"memory_per_class": 20}),
        ]
    ],
    ("finetune", "split-cifar100", {"recipe": "slca-seqft"}, {
        "epochs": 20, "milestones": (18,), "lr": 0.01, "backbone_lr_scale": 1.0,
        "weight_decay": 5e-4, "batch_size": 128, "loss": "new", "freeze_old_heads": True,
        "fresh_final_norm": True, "backbone": IN21K, "backbone.normalization": "cifar100",
        "augment.brightness": 63 / 255,
    }, f"{SLCA}models/slca.py (bcb_lrscale 1, no alignment); exps/slca/slca_cifar.json"),
    ("finetune", "split-imagenet-r", {"recipe": "slca-seqft"}, {
        "epochs": 50, "milestones": (40,), "loss": "new", "freeze_old_heads": True,
        "backbone.normalization": "imagenet",
    }, f"{SLCA}models/slca.py; exps/slca/slca_imgnetr.json"),
    *[
        ("joint", stream, {}, {
            "epochs": 30, "lr": 0.01, "backbone_lr_scale": 0.01, "schedule": "constant",
            "batch_size": 128, "weight_decay": 5e-4, "loss": "seen", "backbone": backbone,
        }, f"{RANPAC}{dataset}_publish.csv ID 1 (joint_full: body_lr 1e-4, head_lr 0.01)")
        for stream, dataset, backbone in [
            ("split-cifar100", "cifar224", IN21K),
            ("split-imagenet-r", "imagenetr", IN1K),
            ("vtab", "vtab", IN1K),
        ]
    ],
    # DER: LAMDA-PILOT exps/der*.json (fixed_memory false on CIFAR, true on ImageNet-R).
    *[
        ("der", stream, {}, {
            "epochs": 10, "lr": 1e-3, "weight_decay": 2e-4, "first_weight_decay": 5e-4,
            "batch_size": batch, "milestones": (80, 120, 150), **memory,
            "backbone": IN1K, **LAMDA,
        }, f"{PILOT}{config}; models/der.py")
        for stream, config, batch, memory in [
            ("split-cifar100", "der.json", 32, {"memory_size": 2000, "memory_per_class": 0}),
            ("split-imagenet-r", "der_inr.json", 64, {"memory_per_class": 20}),
        ]
    ],
    # MEMO: LAMDA-PILOT exps/memo*.json (fixed_memory false on CIFAR, true on ImageNet-R);
    # deep_init fresh: PILOT's vit_memo leaves the specialized block at PyTorch's init.
    *[
        ("memo", stream, {}, {
            "first_epochs": 10, "epochs": epochs, "lr": 1e-3, "first_weight_decay": 5e-4,
            "weight_decay": 2e-4, "batch_size": 32, "milestones": (80, 120, 150),
            "aux_weight": 1.0, "deep_blocks": 1, "deep_init": "fresh", **memory,
            "backbone": IN1K, **LAMDA,
        }, f"{PILOT}{config}; models/memo.py")
        for stream, config, epochs, memory in [
            ("split-cifar100", "memo.json", 20, {"memory_size": 2000, "memory_per_class": 0}),
            ("split-imagenet-r", "memo_inr.json", 10, {"memory_size": 4000,
                                                       "memory_per_class": 20}),
        ]
    ],
    # DGR: LAMDA-PILOT exps/dgr*.json (fixed_memory false on CIFAR, true on ImageNet-R; T 2,
    # lambda 1, gammar_r 1; init_lr / init_weight_decay equal lrate / weight_decay).
    *[
        ("dgr", stream, {}, {
            "epochs": 20, "lr": lr, "weight_decay": 5e-4, "batch_size": batch,
            "schedule": "cosine", "temperature": 2.0, "kd_weight": 1.0, "gamma_r": 1.0,
            "classifier": "cnn", "selection": "herding", **memory, "backbone": IN1K, **LAMDA,
        }, f"{PILOT}{config}; models/dgr.py")
        for stream, config, lr, batch, memory in [
            ("split-cifar100", "dgr.json", 1e-3, 128,
             {"memory_size": 2000, "memory_per_class": 0}),
            ("split-imagenet-r", "dgr_inr.json", 5e-4, 32,
             {"memory_size": 4000, "memory_per_class": 20}),
        ]
    ],
    # FOSTER: LAMDA-PILOT exps/foster*.json (fixed_memory true: 20 a class on both).
    *[
        ("foster", stream, {}, {
            "first_epochs": 20, "first_lr": 1e-3, "first_weight_decay": 5e-4, "epochs": 20,
            "compression_epochs": 20, "lr": 1e-3, "weight_decay": 5e-4, "batch_size": 32,
            "beta1": 0.96, "beta2": 0.97, "temperature": 2.0, "lambda_okd": 1.0, "oofc": "ft",
            "memory_per_class": 20, "backbone": IN1K, **LAMDA,
        }, f"{PILOT}{config}; models/foster.py")
        for stream, config in [("split-cifar100", "foster.json"),
                               ("split-imagenet-r", "foster_inr.json")]
    ],
    # Coil: LAMDA-PILOT exps/coil*.json (fixed_memory false on CIFAR, true on ImageNet-R);
    # sinkhorn -> sinkhorn_reg, norm_term -> cost_norm, reg_term -> retrospective_weight.
    *[
        ("coil", stream, {}, {
            "epochs": epochs, "lr": 1e-3, "batch_size": 64, "weight_decay": 5e-4,
            "milestones": (80, 120), "gamma": 0.1, "sinkhorn_reg": 0.464, "cost_norm": 3.0,
            "retrospective_weight": 1e-3, "prospective_weight": 1e-3, "resolve_every": 30,
            "temperature": 2.0, "old_means": "training", "classifier": "cnn", **memory,
            "backbone": IN1K, **LAMDA,
        }, f"{PILOT}{config}; models/coil.py")
        for stream, config, epochs, memory in [
            ("split-cifar100", "coil.json", 10, {"memory_size": 2000, "memory_per_class": 0}),
            ("split-imagenet-r", "coil_inr.json", 20, {"memory_per_class": 20}),
        ]
    ],
    # NMC (Janson et al.): Resize without crop on CIFAR, iCaRL order, bilinear, no normalisation.
    ("nmc", "split-cifar100", {}, {
        "stream.class_order": "icarl", "backbone.crop_pct": 1.0,
        "backbone.interpolation": "bilinear", "backbone.normalization": "none", "backbone": IN21K,
    }, f"{JANSON}main_cifar100.py"),
    ("nmc", "core50", {}, {"backbone.interpolation": "bilinear", **NO_NORM, "backbone": IN21K},
     f"{JANSON}main_core50.py: Resize(256), CenterCrop(224)"),
    ("nmc", "split-imagenet-r", {}, {"backbone.interpolation": "bilinear", **NO_NORM},
     f"{JANSON}main_imagenet-r.py"),
    # SimpleCIL: no hyper-parameters; the backbone differs.
    *[
        ("simplecil", stream, sets, {"backbone": backbone, **NO_NORM}, source)
        for stream, sets, backbone, source in [
            ("split-cifar100", {}, IN21K, f"{RC}simplecil/cifar224_5_5_vit-b_simplecil.json"),
            ("split-cifar100", {"recipe": "pilot"}, IN1K, f"{PILOT}simplecil.json"),
            ("split-imagenet-r", {}, IN21K, f"{RC}simplecil/imagenetr_5_5_vit-b_simplecil.json"),
            ("split-imagenet-r", {"recipe": "pilot"}, IN1K, f"{PILOT}simplecil_inr.json"),
            ("vtab", {}, IN21K, f"{RC}simplecil/vtab_10_10_vit-b_simplecil.json"),
            ("split-cub200", {}, IN21K, f"{RC}simplecil/cub_10_10_vit-b_simplecil.json"),
            ("split-imagenet-a", {}, IN21K, f"{RC}simplecil/imageneta_10_10_vit-b_simplecil.json"),
            ("split-objectnet", {}, IN21K, f"{RC}simplecil/objectnet_10_10_vit-b_simplecil.json"),
            ("split-omnibenchmark", {}, IN21K, f"{RC}simplecil/omni_30_30_vit-b_simplecil.json"),
        ]
    ],
    # DUCT: LAMDA-PILOT exps/duct.json and duct_inr.json (same values, B0 Inc10 / Inc20).
    *[
        (
            "duct", stream, {},
            {"epochs": 10, "lr": 0.1, "backbone_lr_scale": 0.01, "batch_size": 128,
             "weight_decay": 5e-4, "merge_scalar": 0.25, "head_merge_ratio": 0.25,
             "ot_reg": 0.02, "retrain_epochs": 5, "schedule": "constantlr-default",
             "backbone": IN1K, "stream.init_classes": 0, "stream.increment": increment,
             **LAMDA, **NO_NORM},
            f"{PILOT}{config}",
        )
        for stream, config, increment in [
            ("split-cifar100", "duct.json", 10), ("split-imagenet-r", "duct_inr.json", 20),
        ]
    ],
    ("dkvb", "split-cifar100", {}, {
        "epochs": 500, "num_codebooks": 256, "keys_per_codebook": 4096, "key_dim": 14,
        "lr": 0.3, "grad_clip": 1.0, "batch_size": 256,
    }, "ftraeuble/experiments_discrete_key_value_bottleneck sweeps/icml2023/"
       "cifar100_split2_clip_resnet50_ours_base.yaml"),
    # The prompt methods' LAMDA-PILOT recipes (exps/l2p*.json, dualprompt*.json, coda_prompt*.json;
    # no gradient clipping in models/l2p.py, uniform_(-1, 1) in backbone/prompt.py, nn.Linear head
    # and per-component Gram-Schmidt in CODA)
    *[
        ("l2p", stream, {"recipe": "pilot"}, {
            "epochs": epochs, "batch_size": batch, "lr": 0.001875, "optimizer": "adam",
            "schedule": "constant", "weight_decay": 0.0, "grad_clip": None, "pull_coeff": 0.1,
            "pool_size": 10, "prompt_length": 5, "top_k": 5, "readout": "prompts",
            "prompt_position": "cls", "init_symmetric": True, "init_scale": 1.0,
            "batchwise_prompt": True, "vote_ties": "topk", "backbone": IN1K,
            "stream.class_order": "pycil-1993",
        }, f"{PILOT}{config}")
        for stream, config, epochs, batch in [
            ("split-cifar100", "l2p.json", 5, 16), ("split-imagenet-r", "l2p_inr.json", 10, 32),
        ]
    ],
    *[
        ("dualprompt", stream, {"recipe": "pilot"}, {
            "epochs": epochs, "batch_size": 24, "lr": 0.001, "grad_clip": None, "pull_coeff": 0.1,
            "general_length": 5, "general_layers": (0, 1), "prompt_length": 5,
            "prompt_layers": (2, 3, 4), "top_k": 1, "task_masked": True, "share_previous": True,
            "init_symmetric": True, "init_scale": 1.0, "batchwise_prompt": True,
            "vote_ties": "topk", "readout": "token", "backbone": IN1K,
        }, f"{PILOT}{config}")
        for stream, config, epochs in [
            ("split-cifar100", "dualprompt.json", 5),
            ("split-imagenet-r", "dualprompt_inr.json", 10),
        ]
    ],
    *[
        ("coda-prompt", stream, {"recipe": "pilot"}, {
            "epochs": epochs, "batch_size": 128, "lr": 0.001, "schedule": "coda-cosine",
            "drop_last": True, "components": 100, "prompt_length": 8, "grad_clip": None,
            "head_init": "torch-linear", "gram_schmidt": "sequential", "backbone": IN1K,
            "stream.class_order": "natural",
        }, f"{PILOT}{config}")
        for stream, config, epochs in [
            ("split-cifar100", "coda_prompt.json", 20),
            ("split-imagenet-r", "coda_prompt_inr.json", 50),
        ]
    ],
]  # fmt: skip


def resolved_values(strategy: str, stream: str, sets: dict[str, str], seed: int = 0) -> dict:
    """Every resolved setting of a run as flat `--set`-style keys (plus `backbone`)."""
    settings = resolve_run(RunSpec(strategy=strategy, stream=stream, seed=seed, overrides=sets))
    values: dict[str, Any] = {"backbone": settings.backbone}
    if dataclasses.is_dataclass(settings.config):
        values.update(dataclasses.asdict(settings.config))
    values.update({f"stream.{k}": v for k, v in dataclasses.asdict(settings.builder).items()})
    values.update({f"backbone.{k}": v for k, v in settings.backbone_settings.items()})
    values.update({f"augment.{k}": v for k, v in dataclasses.asdict(settings.augmentation).items()})
    return values


@pytest.mark.parametrize(
    ("strategy", "stream", "sets", "expected", "reference"),
    REFERENCE,
    ids=[f"{r[0]}-{r[1]}-{'-'.join(r[2].values()) or 'default'}" for r in REFERENCE],
)
def test_resolved_settings_equal_the_reference_config(
    strategy: str, stream: str, sets: dict, expected: dict, reference: str
):
    values = resolved_values(strategy, stream, sets)
    for key, value in expected.items():
        numeric = isinstance(value, float) or (isinstance(value, tuple) and value)
        assert values[key] == (pytest.approx(value) if numeric else value), (
            f"{key}: see {reference}"
        )


def test_every_reference_recipe_is_in_the_table():
    """A new sourced recipe must come with its row above (and a plain mapping has no source)."""
    tabled = {(s, t, v.get("recipe", ""), v.get("peft", "")) for s, t, v, _, _ in REFERENCE}
    for name in STRATEGIES.names():
        cls = STRATEGIES.get(name)
        for stream in cls.recipes:
            recipes = recipes_of(cls, stream)
            default = recipes[0].name
            for recipe in recipes:
                if recipe.source is None:
                    assert recipe.notes, f"{name} on {stream}: a recipe without source says why"
                    continue
                key = (
                    name,
                    stream,
                    "" if recipe.name == default else recipe.name,
                    str(recipe.settings.get(getattr(cls, "variant_key", None) or "", "")),
                )
                variants = {key, (*key[:3], "")}
                assert variants & tabled, f"no reference row for {key}"


def test_every_source_names_a_file_at_a_pinned_commit():
    for name in STRATEGIES.names():
        cls = STRATEGIES.get(name)
        for stream in cls.recipes:
            for recipe in recipes_of(cls, stream):
                source = recipe.source
                if source is None:
                    continue
                assert re.fullmatch(r"[0-9a-f]{40}", source.commit)
                assert source.file and source.table, f"{name} {stream} {recipe.name}"
                assert source.url.endswith(f"/blob/{source.commit}/{source.file}")


def test_result_records_recipe_source_augmentation_and_both_curves(tmp_path):
    result = run(
        RunSpec(strategy="nmc", stream="synthetic", out_dir=tmp_path, cache_dir=None, seed=1)
    )
    assert result.recipe["name"] == "default" and result.recipe["fallback"] == ""
    assert result.config["augmentation"]["scale"] == [0.05, 1.0]
    assert result.config["recipe"] == "default"
    assert result.backbone["preprocessing"]["crop_pct"] == 1.0
    acc, sizes = result.matrix(), np.array(result.test_sizes)
    for t, row in enumerate(acc):  # independent: correct answers over images, and row means
        seen = ~np.isnan(row)
        weighted = (row[seen] * sizes[seen]).sum() / sizes[seen].sum()
        assert result.metrics["accuracy_curve"][t] == pytest.approx(weighted)
        assert result.metrics["accuracy_curve_task_averaged"][t] == pytest.approx(row[seen].mean())
    assert len(result.metrics["accuracy_curve"]) == len(result.accuracy_matrix)


def test_sourced_recipe_is_recorded_in_the_result(tmp_path):
    prepared_recipe = resolve_run(
        RunSpec(strategy="slca", stream="split-imagenet-r", overrides={"recipe": "pilot"})
    ).recipe
    record = prepared_recipe.describe()
    assert record["name"] == "pilot" and record["backbone"] == IN1K
    assert record["source"]["file"] == "exps/slca_inr.json"
    assert record["source"]["repo"] == "LAMDA-CL/LAMDA-PILOT"


class MyStream(Synthetic):
    """A user's own stream: no strategy has a recipe for it."""


def test_custom_stream_falls_back_visibly(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    STREAMS.names()  # discover the built-ins first
    monkeypatch.setitem(STREAMS._items, "my-stream", MyStream)
    values = resolved_values("slca", "my-stream", {})
    assert values["epochs"] == 20 and values["augment.brightness"] == pytest.approx(63 / 255)
    assert "backbone.normalization" not in values  # not the CIFAR recipe's mean/std
    with caplog.at_level(logging.WARNING, logger="cilbench.engine.loop"):
        result = run(
            RunSpec(
                strategy="simplecil",
                stream="my-stream",
                out_dir=tmp_path,
                cache_dir=None,
                overrides={"stream.num_classes": "4"},
            )
        )
    assert "no recipe for stream 'my-stream'" in caplog.text
    assert result.recipe["stream"] == "split-cifar100"
    assert "my-stream" in result.recipe["fallback"]
    assert result.recipe["source"]["repo"] == "zhoudw-zdw/RevisitingCIL"


def test_variant_without_reference_keeps_the_default_variants_training_settings():
    values = resolved_values("adam", "split-imagenet-r", {"peft": "lora"})
    assert values["peft"] == "lora" and values["epochs"] == 20 and values["batch_size"] == 24
    chosen = resolve_run(
        RunSpec(strategy="adam", stream="split-imagenet-r", overrides={"peft": "lora"})
    ).recipe
    assert chosen.variant == "lora" and "no reference recipe for peft=lora" in chosen.fallback
    assert chosen.stream_matches  # the stream's own recipe: its backbone settings still apply


def test_unknown_recipe_name_suggests_the_nearest():
    with pytest.raises(ConfigError, match="Did you mean 'pilot'"):
        resolve_run(RunSpec(strategy="slca", stream="split-cifar100", overrides={"recipe": "pilt"}))


def test_set_overrides_the_recipe():
    values = resolved_values("slca", "split-imagenet-r", {"epochs": "3", "augment.preset": "none"})
    assert values["epochs"] == 3 and values["milestones"] == (40,)
    assert values["augment.crop"] == "center" and values["augment.flip"] is False


@pytest.mark.parametrize(
    ("seed", "first_four"),
    [(1993, [68, 56, 78, 8]), (1996, [35, 18, 40, 85]), (1997, [88, 77, 36, 54])],
)
def test_pycil_class_order_follows_the_seed(seed: int, first_four: list[int]):
    """PyCIL: np.random.seed(seed); np.random.permutation(n) (first values: results.md §3.1)."""
    values = resolved_values("slca", "split-cifar100", {"stream.class_order": "pycil"}, seed)
    assert values["stream.class_order"] == f"pycil-{seed}"
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        expected = np.random.permutation(100).tolist()
    finally:
        np.random.set_state(state)
    order = class_order(values["stream.class_order"], 100)
    assert order == expected and order[:4] == first_four


def test_recipe_of_a_strategy_without_recipes_is_its_defaults():
    class Plain:
        recipes: ClassVar[dict] = {}

    from cilbench.engine.recipes import choose

    chosen = choose("plain", Plain, "synthetic", {})
    assert chosen.recipe.name == "defaults" and chosen.fallback == ""
    with pytest.raises(ConfigError, match="no recipes"):
        choose("plain", Plain, "synthetic", {"recipe": "pilot"})
    assert isinstance(chosen.recipe, Recipe)


def test_recipes_command_prints_every_variant_with_its_source(monkeypatch: pytest.MonkeyPatch):
    from rich.console import Console
    from typer.testing import CliRunner

    from cilbench.cli.app import app

    monkeypatch.setattr("cilbench.cli.console.stdout", Console(width=250))
    runner = CliRunner()
    result = runner.invoke(app, ["recipes", "adam", "--stream", "split-imagenet-r"])
    assert result.exit_code == 0, result.output
    for peft in ("adapter", "ssf", "vpt-shallow", "vpt-deep", "finetune"):
        assert f"imagenetr_5_5_vit-b_{peft}.json" in result.stdout
    assert "aper_ssf_inr.json" in result.stdout and "batch_size=24" in result.stdout
    fallback = runner.invoke(app, ["recipes", "slca", "--stream", "vtab"])
    assert fallback.exit_code == 0 and "no recipe for stream 'vtab'" in fallback.stdout
    unknown = runner.invoke(app, ["recipes", "slcaa"])
    assert unknown.exit_code == 2 and "Did you mean 'slca'" in unknown.output


@pytest.mark.parametrize(
    ("strategy", "overrides", "steps_per_task"),
    [
        ("adam", {"peft": "vpt-deep"}, 10 * (600 // 16)),
        ("slca", {}, 3 * (600 // 16)),
        ("l2p", {}, 2 * (600 // 16)),
        ("ease", {}, 2 * (600 // 16)),
    ],
)
def test_vit_demo_recipes_run_the_real_vit_at_56_px_with_enough_steps(
    strategy: str, overrides: dict, steps_per_task: int
):
    """`recipe=vit-demo` picks the ViT preset and its size itself, and trains for enough steps
    (600 training images a task) that the loss leaves chance: 3-4x the one-epoch demo's 10-20."""
    spec = RunSpec(
        strategy=strategy,
        stream="split-fashion-mnist-mini",
        overrides={"recipe": "vit-demo", **overrides},
    )
    settings = resolve_run(spec)
    assert settings.backbone == "dinov2-vits14-imgfocus-9b"
    assert settings.backbone_settings["image_size"] == 56
    config = settings.config
    assert config.epochs * (600 // config.batch_size) == steps_per_task >= 70
    if "peft" in overrides:  # ADAM's variant recipe, not the first vit-demo one
        assert config.peft == overrides["peft"]

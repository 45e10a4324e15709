"""DGR (He, "Gradient Reweighting: Towards Imbalanced Class-Incremental Learning", CVPR 2024):
rehearsal whose classifier gradients are rebalanced between classes, old and new.

Each experience trains the whole network (pre-trained backbone + a linear head grown by the new
classes) on the new classes' images and the exemplars of the old ones, as iCaRL does, with two
changes against the imbalance between the many new images and the few exemplars. The
cross-entropy is logit-adjusted by the training set's class prior (log of each class's share of
the images, exemplars included, added to its logit). And after every backward pass the head's
gradient rows are rewritten: each class's row (weight and bias) is scaled by a factor that
equalises the gradient norms the classes have accumulated so far, and the distillation term's
gradient on the old rows is rescaled to the size of the reweighted cross-entropy gradient.

The defining step, as LAMDA-PILOT computes it (`models/dgr.py` at 5240714d):
- `a_c`: the L2 norm of class c's row of the head's weight gradient, float32, added to a float64
  running sum that starts at zero with each experience and runs over every step of every epoch
  (the current step included). Experience 0: the gradient of the whole loss (the cross-entropy
  alone); later: the cross-entropy's alone (`torch.autograd.grad`, separately from the
  distillation's).
- Experience 0: factor `w_c = min_k a_k / a_c`.
- Later (`K` old classes of `N` seen): `w_c = min(a_old) / a_c` for an old class and
  `min(a_new) / a_c` for a new one; with `r = mean(a_new) / mean(a_old)` the old factors are then
  multiplied by `min(1, r)`, the new ones by `min(1, r * exp(-gamma_r * K / N))`.
- Distillation scale `s = ||(w_c g_c)_c|| / ||(d_c)_c||` over this step's norms only: `g_c`
  the cross-entropy's row norms (all seen classes, float64 products), `d_c` the distillation
  loss's row norms (old classes; its norm taken in float32, as numpy does for them).
- The head's gradient is then replaced: old row `w_c * grad_ce_c + s * grad_kd_c`, new row
  `w_c * grad_ce_c` (the factors cast to float32), weight and bias alike. The backbone keeps the
  gradient of the whole loss, `ce + lambda * K / (N - K) * kd`: so `lambda` and the `K / (N - K)`
  weight reach the backbone only; the head's distillation gradient is scaled by `s` instead. No
  quantity is detached or averaged over the batch beyond what the losses do; weight decay is
  added by SGD after the rewrite (it is not reweighted).
- The distillation is iCaRL's (`cilbench.learn.distillation`: soft targets at temperature T, no
  T^2), on the first K logits, against a frozen eval-mode copy of the network from before the
  experience. The logit adjustment is not applied to the distilled logits.

Config: the shared training settings (`epochs`, `batch_size`, `lr`, `weight_decay`, `schedule`
cosine, ...), `temperature` (PILOT `T`), `kd_weight` (PILOT `lambda`), `gamma_r` (PILOT
`gammar_r`), `classifier` (`cnn`, the head's logits, PILOT's CNN accuracy; or `nme`),
`num_workers`, and the shared exemplar memory's `memory_size`, `memory_per_class`, `selection`.

Defaults and recipes come from LAMDA-PILOT at 5240714d (`models/dgr.py`, `models/base.py`,
`utils/inc_net.py` `IncrementalNet`, `exps/dgr.json`, `exps/dgr_inr.json`). The author's
repository (JiangpengHe/imbalanced_cil at 3118f67b) holds byte-identical copies of that `dgr.py`
and both exps files under "Continual Learning with Pretrained Models/"; its ResNet code for the
paper's long-tailed experiments (`src/approach/DGR.py`) differs from PILOT's in the distillation
(the paper's distribution-aware DAKD: teacher targets reweighted by a class prior, times T^2 and
a ratio; no exp damping but a constant `gamma` on the new classes; gradient noise), which PILOT's
pre-trained-model version does not have: cilbench follows PILOT.

`pilot` recipes: SGD momentum 0.9, cosine over 20 epochs per experience, weight decay 5e-4, T 2,
lambda 1, gamma_r 1, IN-1k ViT-B/16; CIFAR-100: lr 1e-3, batch 128, 2000 exemplars in total;
ImageNet-R: lr 5e-4, batch 32, 20 per class. (PILOT's `init_lr`/`init_weight_decay` equal
`lrate`/`weight_decay` in both files, so one setting serves every experience.) The
`split-fashion-mnist-mini` recipe is a short CPU demo on the stream's EfficientNet-Lite0, not a
reference setting (SGD lr 0.01, cosine, 5 epochs, 100 exemplars in total; seed 0: first-experience
epoch losses 0.631, 0.501, 0.467, 0.414, 0.389, final accuracy 72.8 %).

Where cilbench differs, and why:
- A zero distillation gradient: when the new network's old logits equal the teacher's to the
  last bit, PILOT's `s` is a division by zero and the head becomes NaN; cilbench uses `s = 0`
  (the distillation gradient is zero anyway). At the first step of each experience the two
  networks agree up to rounding, so `s` rescales rounding noise to the cross-entropy gradient's
  size, in PILOT and here alike: that first step's old-row update depends on float rounding and
  cannot be reproduced bit for bit across implementations (tools/parity/dgr-results.md).
- The head: `TaskHeads` (one Kaiming-uniform block per experience from the experience's
  generator, zero bias) instead of one `SimpleLinear` grown by copying: the same logits.
- The loss function is not `torch.compile`d (it calls `torch.autograd.grad` inside).
- PILOT's `regularized_cn` moves the prior to CUDA unconditionally; here it follows the logits.
- Memory, herding, NME, augmentation: as iCaRL's (`strategies/icarl.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cilbench.api import RunContext, register_strategy
from cilbench.core.config import NonNegative, Positive
from cilbench.data.streams import Experience
from cilbench.engine.recipes import IN1K, PILOT, Recipe
from cilbench.learn.distillation import distillation_loss
from cilbench.learn.exemplars import MemoryConfig
from cilbench.learn.heads import HeadedNetwork, TaskHeads, frozen_copy, load_network, network_state
from cilbench.learn.rehearsal import RehearsalStrategy
from cilbench.learn.training import EpochLosses, TrainSettings


@dataclass(frozen=True)
class DGRConfig(TrainSettings, MemoryConfig):
    """The shared training settings (PILOT's `exps/dgr.json` as defaults), the exemplar memory,
    the distillation's temperature and weight, the new classes' damping and the classifier."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    schedule: Literal["constant", "cosine", "multistep", "coda-cosine"] = "cosine"
    temperature: Annotated[float, Positive()] = 2.0
    """Distillation temperature T (PILOT `T`)."""
    kd_weight: Annotated[float, NonNegative()] = 1.0
    """lambda: the distillation's weight (times K / (N - K)) in the backbone's loss."""
    gamma_r: Annotated[float, NonNegative()] = 1.0
    """Damping of the new classes' factors, exp(-gamma_r K / N) (PILOT `gammar_r`)."""
    classifier: Literal["cnn", "nme"] = "cnn"
    """cnn: the head's logits (DGR's); nme: nearest mean of exemplars."""
    num_workers: Annotated[int | None, NonNegative()] = None


def log_prior(counts: np.ndarray) -> torch.Tensor:
    """The logit adjustment: log of each class's share of the training images (float32, the
    share computed in float64 first, as PILOT `regularized_cn`)."""
    counts = np.asarray(counts, dtype=np.float64)
    return torch.log(torch.tensor(counts / counts.sum(), dtype=torch.float32))


def reweighting_factors(accumulated: np.ndarray, known: int, gamma_r: float) -> np.ndarray:
    """Per-class factors `w_c` from the accumulated gradient norms `a_c` (float64); `known` = K
    old classes first (0 on experience 0). See the module docstring."""
    a = np.asarray(accumulated, dtype=np.float64)
    if known == 0:
        return np.min(a) / a
    old, new = a[:known], a[known:]
    weights = np.concatenate([np.min(old) / old, np.min(new) / new])
    ratio = np.mean(new) / np.mean(old)
    weights[:known] *= min(1.0, ratio)
    weights[known:] *= min(1.0, ratio * np.exp(-1 * gamma_r * (known / len(a))))
    return weights


def distillation_scale(weights: np.ndarray, ce_norms: np.ndarray, kd_norms: np.ndarray) -> float:
    """`s`: the norm of the reweighted cross-entropy row norms over that of the distillation's
    (float32, as PILOT's numpy computes it); 0 when the distillation gradient is zero."""
    kd = np.linalg.norm(np.asarray(kd_norms, dtype=np.float32))
    if kd == 0:
        return 0.0
    return float(np.linalg.norm(weights * np.asarray(ce_norms, dtype=np.float32)) / kd)


def _rows(grads: list[torch.Tensor]) -> torch.Tensor:
    """Per-class rows of a gradient split over head blocks, concatenated."""
    return torch.cat([g.reshape(len(g), -1) for g in grads], dim=0)


class GradientReweighting:
    """One experience's reweighting of `heads`' gradients: the accumulated norms, and this step's
    cross-entropy and distillation gradients of the head (stored by `record`, written by
    `apply` between the backward pass and the optimiser step)."""

    def __init__(self, heads: TaskHeads, known: int, seen: int, gamma_r: float):
        self.heads, self.known, self.gamma_r = heads, known, gamma_r
        self.accumulated = np.zeros(seen, dtype=np.float64)
        self.ce: tuple[torch.Tensor, torch.Tensor] | None = None
        self.kd: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_factors = np.zeros(seen)
        self.last_scale = 0.0

    def _grads(self, loss: torch.Tensor, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight rows, bias) of `loss`'s gradient on the first `blocks` heads."""
        heads = _linears(self.heads)[:blocks]
        weights: list[torch.Tensor] = [h.weight for h in heads]
        biases: list[torch.Tensor] = [h.bias for h in heads]
        grads = torch.autograd.grad(loss, weights + biases, retain_graph=True)
        return _rows(list(grads[: len(heads)])), _rows(list(grads[len(heads) :]))[:, 0]

    def record(self, ce: torch.Tensor, kd: torch.Tensor) -> None:
        """Keep the head's gradients of the cross-entropy and of the distillation (old heads)."""
        old_blocks = len(_blocks_below(self.heads, self.known))
        self.ce = self._grads(ce, len(self.heads.heads))
        self.kd = self._grads(kd, old_blocks)

    def apply(self) -> None:
        """Accumulate this step's norms and write the reweighted gradients into the head."""
        heads = _linears(self.heads)
        if self.ce is None:  # experience 0: the whole loss's gradient, already in place
            weight = _rows([cast(torch.Tensor, h.weight.grad) for h in heads])
            bias = _rows([cast(torch.Tensor, h.bias.grad) for h in heads])[:, 0]
        else:
            weight, bias = self.ce
        ce_norms = torch.norm(weight, dim=1).detach().cpu().numpy()
        self.accumulated += ce_norms
        factors = reweighting_factors(self.accumulated, self.known, self.gamma_r)
        w = torch.tensor(factors, dtype=torch.float32, device=weight.device)
        new_weight, new_bias = w[:, None] * weight, w * bias
        self.last_factors, self.last_scale = factors, 0.0
        if self.kd is not None and self.known > 0:
            kd_weight, kd_bias = self.kd
            kd_norms = torch.norm(kd_weight[: self.known], dim=1).detach().cpu().numpy()
            scale = distillation_scale(factors, ce_norms, kd_norms)
            s = torch.tensor(scale, dtype=torch.float32, device=weight.device)
            k = self.known
            new_weight[:k] = new_weight[:k] + s * kd_weight[:k]
            new_bias[:k] = new_bias[:k] + s * kd_bias[:k]
            self.last_scale = scale
        start = 0
        for head in heads:
            size = head.out_features
            head.weight.grad = new_weight[start : start + size].detach().clone()
            head.bias.grad = new_bias[start : start + size].detach().clone()
            start += size
        self.ce = self.kd = None


def _linears(heads: TaskHeads) -> list[nn.Linear]:
    return [cast(nn.Linear, head) for head in heads.heads]


def _blocks_below(heads: TaskHeads, known: int) -> list[int]:
    """Sizes of the head blocks that hold the first `known` classes (each experience adds one
    block, so the old classes fill whole blocks)."""
    sizes = heads.sizes
    ends = np.cumsum(sizes)
    return sizes[: int(np.searchsorted(ends, known, side="right"))]


def _pilot(config: str, table: str, lr: float, batch_size: int, memory: dict[str, int]) -> Recipe:
    """LAMDA-PILOT's DGR on one stream."""
    return Recipe(
        {
            "epochs": 20, "lr": lr, "batch_size": batch_size, "weight_decay": 5e-4,
            "schedule": "cosine", "temperature": 2.0, "kd_weight": 1.0, "gamma_r": 1.0,
            "classifier": "cnn", "selection": "herding", **memory,
        },
        PILOT.file(f"exps/{config}", table),
        name="pilot",
        backbone=IN1K,
        notes="SGD momentum 0.9, cosine over the 20 epochs of each experience (models/dgr.py). "
        "GPU memory, estimated on the meta device (tools/parity/foster.py memory; not measured "
        "on a GPU): the frozen teacher ViT-B/16 + the trained one (weights, gradients, momentum: "
        "1.4 GB) + its saved activations at batch " + (
            "128, 224 px, fp32 (<= 21.1 GB): about 22.5 GB and the CUDA context, a 40 GB GPU "
            "(bf16 autocast about halves the activations: 24 GB)"
            if batch_size == 128 else "32, 224 px, fp32 (<= 5.5 GB): about 6.9 GB and the CUDA "
            "context, a 12 GB GPU"),
    )  # fmt: skip


RECIPES: dict[str, Any] = {
    "split-cifar100": [
        _pilot("dgr.json", "LAMDA-PILOT DGR, CIFAR B0 Inc10, IN-1k (fixed_memory false)",
               1e-3, 128, {"memory_size": 2000, "memory_per_class": 0}),
    ],
    "split-imagenet-r": [
        _pilot("dgr_inr.json", "LAMDA-PILOT DGR, IN-R B0 Inc20, IN-1k (fixed_memory true)",
               5e-4, 32, {"memory_size": 4000, "memory_per_class": 20}),
    ],
    "synthetic": {"epochs": 1, "batch_size": 16, "memory_size": 20},
    "split-fashion-mnist-mini": {"epochs": 5, "batch_size": 32, "lr": 0.01, "memory_size": 100},
}  # fmt: skip


@register_strategy("dgr")
class DGR(RehearsalStrategy):
    """Whole network trained with rehearsal, logit adjustment, distillation and per-class
    reweighting of the head's gradients; the head's logits predict."""

    Config = DGRConfig
    recipes = RECIPES

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        self.network = HeadedNetwork(self.backbone, train_backbone=True)
        self.losses = EpochLosses()
        self.factors: dict[str, list[float]] = {}
        """The last step's reweighting factors of each experience trained in this process."""

    def train_experience(self, experience: Experience) -> None:
        generator = self.generator(experience.index)
        known, seen = self.num_seen, experience.num_seen_classes
        extra = seen - self.network.heads.num_classes
        if extra > 0:
            self.network.heads.grow(extra, generator, init="kaiming-uniform")
        self._train(experience, generator, known, seen)
        self.num_seen = seen
        self.network.eval()
        backbone = self.network.backbone
        self.select_exemplars(experience.train, backbone, generator, seen)
        if self.config.classifier == "nme":
            self.class_means = self.exemplar_class_means(backbone, experience.train.source, seen)

    def _train(
        self, experience: Experience, generator: torch.Generator, known: int, seen: int
    ) -> None:
        """Logit-adjusted cross-entropy (+ distillation after the first experience) on the new
        images and the exemplars, every parameter at `lr`, the head's gradients reweighted."""
        config = self.config
        network = self.network
        views = self.views_with_exemplars(experience)
        counts = np.bincount(np.concatenate([v.labels for v in views]), minlength=seen)
        prior = log_prior(counts).to(self.device)
        old = frozen_copy(network) if known > 0 else None
        reweighting = GradientReweighting(network.heads, known, seen, config.gamma_r)
        kd_scale = config.kd_weight * known / max(seen - known, 1)

        def loss_fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits = network(images)[:, :seen]
            ce = F.cross_entropy(logits + prior, labels)
            if old is None:
                return ce
            with torch.no_grad():
                old_logits = old(images)[:, :known]
            kd = distillation_loss(logits[:, :known], old_logits, config.temperature)
            reweighting.record(ce, kd)
            return ce + kd_scale * kd

        network.train()
        losses = self.fit_views(
            loss_fn,
            [{"params": list(network.parameters()), "lr": config.lr}],
            views,
            config.train_settings(),
            generator,
            f"experience {experience.index}",
            compile=False,  # the loss calls autograd.grad
            before_step=reweighting.apply,
        )
        self.losses.record(experience.index, losses)
        self.factors[str(experience.index)] = reweighting.last_factors.tolist()
        network.eval()

    def report(self) -> dict[str, Any]:
        return {
            **self.memory.report(),
            "classifier": self.config.classifier,
            "epoch_losses": self.losses.report(),
            "last_reweighting_factors": self.factors,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            **network_state(self.network),
            **self.memory.state_dict(),
            **self.losses.state_dict(),
            "num_seen": torch.tensor(self.num_seen),
            "class_means": self.class_means,
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        load_network(self.network, state)
        self.memory.load_state_dict(state)
        self.losses.load_state_dict(state)
        self.num_seen = int(state["num_seen"])
        self.class_means = state["class_means"].clone()

    def trainable_parameters(self) -> int:
        return self.network.parameter_count()

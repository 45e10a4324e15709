"""RanPAC: random projection of (first-session adapted) features and a ridge-regression head.

McDonnell et al., "RanPAC: Random Projections and Pre-trained Models for Continual Learning"
(NeurIPS 2023). Optionally a PEFT copy of the backbone is tuned on the first experience (as in
ADAM) and frozen. Features f then go through a fixed random projection h = ReLU(f W), W ~ N(0, 1)
of size D x M. The head keeps the running Gram matrix G = sum h h' and the class-target sums
Q = sum h y' (one-hot y) over every experience, with no stored exemplars, and solves the ridge
regression W_o = (G + lambda I)^-1 Q after each experience; scores are h W_o. Lambda is chosen
after each experience among `ridges` by fitting on 80% of that experience's training features and
measuring the squared error on the other 20%, as the reference code does (an experience too small
to split keeps the previous lambda, 1 at the start).

Config: `peft` ('none' skips the first session), the first-session fields of
`cilbench.learn.first_session.FirstSessionConfig`, `projection_dim` (M), `ridges`,
`validation_fraction`.

Recipes (`cilbench recipes ranpac`): `paper` from the authors' args/<dataset>_publish.csv rows
(Phase 1 = the PEFT variant, 20 epochs, lr 0.01, batch 48; `--set peft=none` picks the no-Phase-1
row); on ImageNet-R, CoRe50 and VTAB they use the IN-1k ViT, on CIFAR-100 the IN-21k one with
Resize(224) and no 256 -> 224 centre crop. `pilot` is LAMDA-PILOT's (IN-1k ViT, adapter; ImageNet-R
with the APER adapter's 10 epochs, lr 0.05, batch 16).

Memory: G is M x M float32 (381 MiB at M = 10000); the solve and the lambda search run in float64,
the precision the small ridges need. The lambda search uses one eigendecomposition, of the smaller
of H H' and H' H, for all candidates instead of one M x M solve per candidate; the selected
lambda is the same. `cilbench profile first-session` measures the peak.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from cilbench.api import RunContext, register_strategy
from cilbench.core.config import NonEmpty, Positive, Range
from cilbench.core.devices import float32_section
from cilbench.core.memory import check_fits
from cilbench.data.streams import Experience
from cilbench.engine.recipes import IN1K, RANPAC, Recipe, pilot_adapter_recipe
from cilbench.learn.first_session import (
    FirstSessionConfig,
    FirstSessionFeatures,
    first_session_settings,
)

RIDGES = tuple(10.0**k for k in range(-8, 9))


@dataclass(frozen=True)
class RanpacConfig(FirstSessionConfig):
    """RanPAC hyper-parameters (first-session defaults: the reference CIFAR-100 adapter row)."""

    peft: Literal["none", "adapter", "ssf", "vpt-shallow", "vpt-deep", "lora", "finetune"] = (
        "adapter"
    )
    projection_dim: Annotated[int, Positive()] = 10000
    ridges: Annotated[tuple[float, ...], NonEmpty(), Positive()] = RIDGES
    validation_fraction: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.2


def select_ridge(
    fit_h: torch.Tensor,
    fit_y: torch.Tensor,
    val_h: torch.Tensor,
    val_y: torch.Tensor,
    ridges: Sequence[float],
) -> float:
    """The ridge whose solution fitted on (fit_h, fit_y) has the least MSE on (val_h, val_y).

    With H = fit_h, W(l) = (H'H + l I)^-1 H'Y = H'(HH' + l I)^-1 Y. One eigendecomposition of the
    smaller Gram matrix (HH' when there are fewer samples than dimensions, else H'H) gives the
    validation predictions of every candidate as L diag(1 / (e + l)) R.
    """
    h, y, hv = fit_h.double(), fit_y.double(), val_h.double()
    if len(h) < h.shape[1]:
        eigenvalues, vectors = torch.linalg.eigh(h @ h.T)
        left, right = hv @ h.T @ vectors, vectors.T @ y
    else:
        eigenvalues, vectors = torch.linalg.eigh(h.T @ h)
        left, right = hv @ vectors, vectors.T @ (h.T @ y)
    eigenvalues = eigenvalues.clamp(min=0)
    losses = [
        F.mse_loss((left / (eigenvalues + ridge)) @ right, val_y.double()).item()
        for ridge in ridges
    ]
    return float(ridges[min(range(len(losses)), key=losses.__getitem__)])


def solve_ridge(gram: torch.Tensor, targets: torch.Tensor, ridge: float) -> torch.Tensor:
    """(G + ridge I)^-1 Q in float64, returned as float32 (M x C)."""
    system = gram.double()
    system.diagonal().add_(ridge)
    return torch.linalg.solve(system, targets.double()).float()


def _paper(peft: str, dataset: str, published: str, **extra: Any) -> Recipe:
    """Row 7 (Phase 1 + RP, M = 10000) or, for peft=none, row 4 of args/<dataset>_publish.csv."""
    row, name = (4, "No Phase 1") if peft == "none" else (7, "Algorithm 1")
    table = f"paper_tables/Table_data_main_{dataset}.csv, {name}: {published} (task-averaged)"
    training = first_session_settings(peft, 20, 0.01, 48, 5e-4) if peft != "none" else {}
    settings = {"peft": peft, **training, "projection_dim": 10000, **extra}
    return Recipe(
        settings,
        RANPAC.file(f"args/{dataset}_publish.csv", table),
        backbone=None if dataset == "cifar224" else IN1K,
        notes=f"row ID {row}",
    )


@register_strategy("ranpac")
class RanPAC(FirstSessionFeatures):
    """Ridge regression on ReLU random projections of (adapted) features, updated per experience."""

    Config = RanpacConfig
    branch_name = "ranpac"
    variant_key: ClassVar[str] = "peft"
    accuracy_convention: ClassVar[str] = "task-averaged"
    recipes: ClassVar[Mapping[str, Any]] = {
        "synthetic": {"epochs": 1, "batch_size": 16, "projection_dim": 256},
        # The offline CPU demos: frozen features from the shared cache, a smaller projection.
        "split-fashion-mnist-mini": {"peft": "none", "projection_dim": 2000},
        "split-fashion-mnist": {"peft": "none", "projection_dim": 2000},
        "split-cifar100": [
            _paper("adapter", "cifar224", "92.2", **{"backbone.crop_pct": 1.0}),
            _paper("none", "cifar224", "89.0", **{"backbone.crop_pct": 1.0}),
            pilot_adapter_recipe("ranpac.json", 20, 0.01, 48, 5e-4, "CIFAR B0 Inc10"),
        ],
        "split-imagenet-r": [
            _paper("ssf", "imagenetr", "77.9"),
            _paper("none", "imagenetr", "71.8"),
            pilot_adapter_recipe("ranpac_inr.json", 10, 0.05, 16, 5e-3, "IN-R B0 Inc20"),
        ],
        "core50": [_paper("adapter", "core50", "96.7"), _paper("none", "core50", "94.3")],
        "vtab": [_paper("ssf", "vtab", "92.2"), _paper("none", "vtab", "92.2")],
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.projection = torch.empty(0)
        self.gram = torch.empty(0)
        self.targets = torch.empty(0)
        self.weights = torch.empty(0)
        self.ridge = 1.0

    def setup(self, context: RunContext) -> None:
        size, dim = self.config.projection_dim, context.backbone.feature_dim
        needed = 4 * (size * size + dim * size + size * context.info.num_classes)
        check_fits(
            needed, f"ranpac projection_dim={size} (a {size}x{size} Gram matrix)", self.device
        )
        super().setup(context)

    def train_experience(self, experience: Experience) -> None:
        generator = self.generator(experience.index)
        self.adapt(experience, generator)
        features, labels = self.features_of(experience.train)
        self.update(features, labels, experience.num_seen_classes, generator)

    def update(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        num_seen_classes: int,
        generator: torch.Generator,
    ) -> None:
        """Add one experience's features to G and Q, choose lambda, and solve for the head."""
        if self.projection.numel() == 0:
            self._start(features.shape[1], generator)
        with float32_section(self.device):  # G and Q in float32, the solve in float64
            projected = self.project(features.to(self.device))
            onehot = F.one_hot(labels.to(self.device), num_seen_classes).float()
            self._accumulate(projected, onehot)
            self.ridge = self._choose_ridge(projected, onehot, generator)
            self.weights = solve_ridge(self.gram, self.targets, self.ridge)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """h = ReLU(f W): the fixed random projection of features (B, D) -> (B, M), float32."""
        with float32_section(features.device):
            return torch.relu(features.float() @ self.projection.to(features.device))

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        with float32_section(features.device):
            return self.project(features) @ self.weights.to(features.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {
            "projection": self.projection,
            "gram": self.gram,
            "targets": self.targets,
            "weights": self.weights,
            "ridge": torch.tensor(self.ridge, dtype=torch.float64),
        }
        return {**state, **self.branch_state()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.projection = state["projection"].to(self.device)
        self.gram = state["gram"].to(self.device)
        self.targets = state["targets"].to(self.device)
        self.weights = state["weights"].to(self.device)
        self.ridge = float(state["ridge"])
        self.load_branch_state(state)

    def report(self) -> dict[str, Any]:
        return {"ridge": self.ridge, **self.branch_report()}

    def _start(self, dim: int, generator: torch.Generator) -> None:
        size = self.config.projection_dim
        self.projection = torch.randn(dim, size, generator=generator).to(self.device)
        self.gram = torch.zeros(size, size, device=self.device)
        self.targets = torch.zeros(size, 0, device=self.device)

    def _accumulate(self, projected: torch.Tensor, onehot: torch.Tensor) -> None:
        """G += H'H and Q += H'Y, widening Q for classes seen for the first time."""
        extra = onehot.shape[1] - self.targets.shape[1]
        if extra > 0:
            self.targets = F.pad(self.targets, (0, extra))
        self.gram.addmm_(projected.T, projected)
        self.targets.addmm_(projected.T, onehot)

    def _choose_ridge(
        self, projected: torch.Tensor, onehot: torch.Tensor, generator: torch.Generator
    ) -> float:
        """Lambda from a random split of this experience (or the last one if it cannot split)."""
        order = torch.randperm(len(projected), generator=generator).to(projected.device)
        cut = int(len(order) * (1 - self.config.validation_fraction))
        if cut == 0 or cut == len(order):
            return self.ridge
        fit, val = order[:cut], order[cut:]
        return select_ridge(
            projected[fit], onehot[fit], projected[val], onehot[val], self.config.ridges
        )

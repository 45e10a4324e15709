"""Knowledge distillation on logits: a new model's logits kept close to a frozen model's.

iCaRL's form as LAMDA-PILOT writes it (`models/icarl.py` `_KD_loss`, 5240714d), the soft-target
cross-entropy of Hinton et al. at temperature T, summed over classes and averaged over the batch,
without the T^2 factor: -(1/B) sum_b sum_c softmax(old_b / T)_c log softmax(new_b / T)_c.

With `class_weights` w it is FOSTER's balanced distillation (Wang et al., ECCV 2022; PILOT
`models/foster.py` `BKD`): each target row is reweighted, p_c w_c / sum_k p_k w_k, before the same
cross-entropy. `class_balanced_weights` gives the weights FOSTER uses there and in its
logit-adjusted cross-entropy: the inverse effective numbers of Cui et al. (CVPR 2019).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def distillation_loss(
    logits: torch.Tensor,
    old_logits: torch.Tensor,
    temperature: float,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft-target cross-entropy of `logits` (B, C) against `old_logits` (B, C) at `temperature`;
    with `class_weights` (C,) the targets are reweighted per class and renormalised per row."""
    log_probs = torch.log_softmax(logits / temperature, dim=1)
    targets = torch.softmax(old_logits.detach() / temperature, dim=1)
    if class_weights is not None:
        targets = targets * class_weights
        targets = targets / targets.sum(dim=1, keepdim=True)
    return -(targets * log_probs).sum() / logits.shape[0]


def class_balanced_weights(counts: Sequence[int] | np.ndarray, beta: float) -> torch.Tensor:
    """Per-class weights (1 - beta) / (1 - beta^n_c) for `counts` n_c, scaled to sum to the number
    of classes (float32): a class with few images weighs more. `beta` in [0, 1)."""
    n = np.asarray(counts, dtype=np.float64)
    if len(n) == 0 or (n <= 0).any():
        raise ValueError(f"class counts must be positive, got {n.tolist()}")
    weights = (1.0 - beta) / (1.0 - np.power(beta, n))
    return torch.tensor(weights / weights.sum() * len(n), dtype=torch.float32)

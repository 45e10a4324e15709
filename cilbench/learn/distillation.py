"""Knowledge distillation on logits: a new model's old-class logits kept close to a frozen copy's.

iCaRL's form as LAMDA-PILOT writes it (`models/icarl.py` `_KD_loss`, 5240714d), the soft-target
cross-entropy of Hinton et al. at temperature T, summed over classes and averaged over the batch,
without the T^2 factor: -(1/B) sum_b sum_c softmax(old_b / T)_c log softmax(new_b / T)_c.
"""

from __future__ import annotations

import torch


def distillation_loss(
    logits: torch.Tensor, old_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Soft-target cross-entropy of `logits` (B, C) against `old_logits` (B, C) at `temperature`."""
    log_probs = torch.log_softmax(logits / temperature, dim=1)
    targets = torch.softmax(old_logits.detach() / temperature, dim=1)
    return -(targets * log_probs).sum() / logits.shape[0]

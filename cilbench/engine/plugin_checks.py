"""Checks on what a strategy hands back to the harness.

A strategy's scores decide every accuracy in the result. NaN scores, or a row whose every score is
-inf, have no meaningful argmax (torch picks some class anyway) and would be scored as predictions,
so a broken strategy would publish a plausible-looking accuracy. `check_scores` stops the run with
the strategy and the experience named instead.
"""

from __future__ import annotations

import torch

from cilbench.core.errors import CilbenchError


class StrategyOutputError(CilbenchError):
    """A strategy returned something the harness cannot score or store."""


def check_scores(scores: torch.Tensor, strategy: str, experience: int) -> None:
    """Refuse scores holding NaN, or rows without a finite best score (all -inf, or +inf)."""
    nan = bool(torch.isnan(scores).any())
    if nan or not bool(torch.isfinite(scores.max(dim=1).values).all()):
        what = "NaN" if nan else "rows without a finite best score (all -inf, or +inf)"
        raise StrategyOutputError(
            f"Strategy {strategy} returned scores with {what} after experience {experience}; "
            "they cannot be scored as predictions. Check the strategy's training (a diverged "
            "loss, a division by zero) or its settings."
        )

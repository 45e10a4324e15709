"""CODA-Prompt's prompt: per-layer weighted sums of components (shared piece of the strategy).

`ComponentPool`: CODA-Prompt's prompt, a sum of components weighted by cos(query * attention_m,
key_m); each experience adds `size / num_tasks` components, keys and attention vectors,
initialised orthonormal to the earlier ones, which stay frozen. The prompts are prefixes for
`cilbench.learn.prompts.prompted_features`.

Where it differs from the reference codes, and why: by default (`gram_schmidt="span"`) new
components are made orthogonal to the *span* of the earlier ones (Gram-Schmidt as a QR
factorisation with Gram-Schmidt's sign convention). The references (GT-RIPL/CODA-Prompt
`models/zoo.py` and LAMDA-PILOT `backbone/prompt.py`, `gram_schmidt`) subtract the projection on
each earlier component separately, which is only exact while the earlier components are still
orthogonal; training breaks that. `gram_schmidt="sequential"` does what they do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cilbench.core.errors import ConfigError
from cilbench.learn.prompts import LayerPrompts, Prompter

GramSchmidt = Literal["span", "sequential"]


def orthonormal_rows(old: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` orthonormal rows, each orthogonal to every row of `old` (s, n): Gram-Schmidt.

    Gaussian draws, minus their projection on the span of `old`, orthonormalised by a QR
    factorisation whose signs follow Gram-Schmidt (positive diagonal of R).
    """
    width = _check_room(old, count)
    draws = torch.randn(count, width, generator=generator, dtype=torch.float64)
    if len(old):
        basis = torch.linalg.qr(old.detach().cpu().double().T).Q  # n, s
        draws = draws - (draws @ basis) @ basis.T
    q, r = torch.linalg.qr(draws.T)
    return (q * torch.sign(torch.diagonal(r))).T.float()


def sequential_orthonormal_rows(
    old: torch.Tensor, count: int, generator: torch.Generator
) -> torch.Tensor:
    """`count` unit rows by classical Gram-Schmidt against `old` (s, n) as LAMDA-PILOT does it.

    Each Gaussian draw loses its projection on every earlier row separately (the old rows as they
    are, then the new rows drawn before it), in float32, then the new rows are normalised
    (LAMDA-PILOT `backbone/prompt.py` `CodaPrompt.gram_schmidt`). Exact while the old rows are
    orthogonal; once training has bent them the new rows keep a component along their span. A
    row of squared norm below 1e-8 is skipped (the reference redraws, forever, on such a row).
    """
    _check_room(old, count)
    rows = old.detach().cpu().float()
    for _ in range(count):
        draw = torch.randn(rows.shape[1], generator=generator)
        squared = (rows * rows).sum(1)
        usable = squared >= 1e-8
        coefficients = (rows[usable] @ draw) / squared[usable]
        rows = torch.cat([rows, (draw - coefficients @ rows[usable])[None]])
    fresh = rows[len(old) :]
    return fresh / fresh.norm(dim=1, keepdim=True)


def _check_room(old: torch.Tensor, count: int) -> int:
    """The row width, after a ConfigError if `count` more orthogonal rows cannot fit."""
    width = old.shape[1]
    if len(old) + count > width:
        raise ConfigError(
            f"CODA-Prompt needs {len(old) + count} orthogonal components of size {width}; "
            f"lower `components` to at most {width} (or the per-experience share below "
            f"{width - len(old) + 1})."
        )
    return int(width)


class ComponentPool(Prompter):
    """CODA-Prompt: per layer, prompt = sum_m cos(q * A_m, K_m) P_m, prefix-tuned.

    `size` components P (length tokens, split into length/2 prefix keys and length/2 values), keys
    K and attention vectors A per layer; experience t owns components [t*s, (t+1)*s) with
    s = size // num_tasks, uses components [0, (t+1)*s) and trains only its own. `gram_schmidt`:
    "span" (`orthonormal_rows`) or LAMDA-PILOT's "sequential" (`sequential_orthonormal_rows`).
    """

    def __init__(
        self,
        dim: int,
        size: int,
        length: int,
        layers: tuple[int, ...],
        num_tasks: int,
        gram_schmidt: GramSchmidt = "span",
    ):
        super().__init__()
        self.orthonormal = GRAM_SCHMIDT[gram_schmidt]
        if length % 2 or length < 2:
            raise ConfigError(f"CODA-Prompt's prompt length must be even (keys | values); {length}")
        self.layers = layers
        self.per_task = size // num_tasks
        if self.per_task < 1:
            raise ConfigError(
                f"CODA-Prompt needs at least one component per experience: components={size} "
                f"for {num_tasks} experiences."
            )
        self.components = nn.Parameter(torch.zeros(len(layers), size, length, dim))
        self.keys = nn.Parameter(torch.zeros(len(layers), size, dim))
        self.attention = nn.Parameter(torch.zeros(len(layers), size, dim))

    def owned(self, task: int) -> slice:
        """The components experience `task` trains."""
        return slice(task * self.per_task, (task + 1) * self.per_task)

    def start_task(self, task: int, generator: torch.Generator) -> None:
        """Gram-Schmidt initialisation of the new components, keys and attention vectors."""
        new = self.owned(task)
        with torch.no_grad():
            for parameter in (self.components, self.keys, self.attention):
                for n in range(len(self.layers)):
                    rows = parameter[n].flatten(1)
                    fresh = self.orthonormal(rows[: new.start], self.per_task, generator)
                    parameter[n, new] = fresh.view_as(parameter[n, new]).to(parameter.device)

    def forward(
        self, query: torch.Tensor, task: int, training: bool = False
    ) -> tuple[LayerPrompts, torch.Tensor]:
        """Each layer's prefix for every query (earlier experiences' parts get no gradient), and
        a zero pull constraint (CODA has none; its orthogonality penalty is off by default)."""
        new = self.owned(task)
        prompts = LayerPrompts()
        half = self.components.shape[2] // 2
        for n, layer in enumerate(self.layers):
            keys, attention, components = (
                torch.cat([p[n, : new.start].detach(), p[n, new]])
                for p in (self.keys, self.attention, self.components)
            )
            attended = F.normalize(query[:, None, :] * attention[None], dim=2)
            weights = torch.einsum("bmd,md->bm", attended, F.normalize(keys, dim=1))
            prompt = torch.einsum("bm,mld->bld", weights, components)
            prompts.prefixes[layer] = (prompt[:, :half], prompt[:, half:])
        return prompts, query.new_zeros(())


GRAM_SCHMIDT: dict[str, Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]] = {
    "span": orthonormal_rows,
    "sequential": sequential_orthonormal_rows,
}

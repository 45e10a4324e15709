"""The keyed prompt pool learner that L2P and DualPrompt share: one Config, one prompter builder.

DualPrompt is L2P's machinery with another configuration (a general prompt, task-masked expert
prompts, prefix-tuning), so both strategies subclass `KeyedPromptLearner` and differ only in
their Config defaults and recipes. The settings LAMDA-PILOT's code gives both live here as
`PILOT_PROMPTS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from cilbench.data.streams import StreamInfo
from cilbench.learn.prompt_learner import PromptLearner, PromptLearnerConfig
from cilbench.learn.prompts import (
    KeyedPrompter,
    Prompter,
    PromptPool,
    Readout,
    VoteTies,
    check_prompt_layers,
    class_position,
)


@dataclass(frozen=True)
class KeyedPromptConfig(PromptLearnerConfig):
    """A keyed prompt pool (optionally with a general prompt); the defaults are L2P's (see
    `strategies/l2p.py`), DualPrompt's Config changes only the defaults."""

    epochs: int = 5
    batch_size: int = 16
    lr: float = 0.03 * 16 / 256
    grad_clip: float | None = 1.0
    pull_coeff: float = 0.1
    pool_size: int = 10
    prompt_length: int = 5
    top_k: int = 5
    prompt_layers: tuple[int, ...] = (0,)
    prefix: bool = False
    general_length: int = 0
    general_layers: tuple[int, ...] = ()
    task_masked: bool = False
    share_previous: bool = False
    readout: Literal["prompts", "token"] = "prompts"
    init_scale: float = 0.01
    init_symmetric: bool = False
    """Prompts and keys uniform in [-init_scale, init_scale) (LAMDA-PILOT: scale 1), not [0, s)."""
    prompt_position: Literal["none", "cls"] = "none"
    vote_ties: VoteTies = "lower-id"
    """How the batch vote breaks equal counts: lower id, or as LAMDA-PILOT's `torch.topk`."""


PILOT_PROMPTS: dict[str, Any] = {
    "optimizer": "adam",
    "schedule": "constant",
    "weight_decay": 0.0,
    "grad_clip": None,
    "init_symmetric": True,
    "init_scale": 1.0,
    "batchwise_prompt": True,
    "vote_ties": "topk",
}
"""What LAMDA-PILOT's L2P and DualPrompt share (`exps/l2p*.json`, `exps/dualprompt*.json`,
`models/l2p.py`, `backbone/prompt.py`): Adam, constant lr, no weight decay, no gradient clipping,
prompts and keys uniform in [-1, 1), the batch vote with `torch.topk`'s tie order."""


class KeyedPromptLearner(PromptLearner):
    """A keyed prompt pool (plus an optional general prompt) on a frozen ViT."""

    Config = KeyedPromptConfig

    @property
    def readout(self) -> Readout:  # type: ignore[override]
        return self.config.readout

    def build_prompter(self, model: Any, info: StreamInfo) -> Prompter:
        config = self.config
        name = type(self).__name__
        check_prompt_layers(model, config.prompt_layers + config.general_layers, name)
        dim = int(model.embed_dim)
        generator = self.generator(-1)
        pool = PromptPool(
            dim, config.pool_size, config.prompt_length, config.prompt_layers, config.prefix
        )
        pool.reset_parameters(generator, config.init_scale, config.init_symmetric)
        general = None
        if config.general_length > 0 and config.general_layers:
            general = PromptPool(
                dim, 1, config.general_length, config.general_layers, prefix=True, keyed=False
            )
            general.reset_parameters(generator, config.init_scale, config.init_symmetric)
        position: torch.Tensor | None = None
        if config.prompt_position == "cls":
            position = class_position(model)
        return KeyedPrompter(
            pool,
            config.top_k,
            general=general,
            batchwise=config.batchwise_prompt,
            task_masked=config.task_masked,
            share_previous=config.share_previous,
            position=position,
            ties=config.vote_ties,
        )

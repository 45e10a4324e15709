"""Prompts for a frozen timm ViT, shared by L2P, DualPrompt and CODA-Prompt.

The backbone never changes; what trains is a small module (a `Prompter`) that turns a query into
per-layer prompts, plus a linear head. The pieces:

- The **query** is the frozen pre-trained model's pooled pre-logits feature of the image,
  `Backbone.forward_features` (for a class-token ViT: the final [CLS] after the last norm, which
  is what the reference codes use). It is exactly what the feature cache stores for the evaluation
  view, so evaluation can read it instead of running the model twice.
- `PromptPool`: `size` prompts with one key each. Matching is the cosine similarity of the query
  with every key, top-k per sample; the reference code's batch vote (`batchwise_prompt`: the k ids
  chosen most often in the batch serve every sample) is `select_top_k(..., batchwise=True)`, ties
  broken towards the lower id or, `ties="topk"`, as LAMDA-PILOT's `torch.topk` breaks them.
  `pull_constraint` is the reference's `reduce_sim`: the sum of cos(query, selected key) over the
  selected keys, averaged over the batch (the loss subtracts coefficient x this).
- **Prompt-tuning** inserts prompt tokens into the sequence before a block (they stay for the later
  blocks); **prefix-tuning** concatenates prefix keys and values to one block's attention (they do
  not enter the sequence). A pool holds, per prompted layer, `length` tokens per prompt, or
  `length` key and `length` value tokens (the original DualPrompt layout, l2p `models/prompt.py`).
- CODA-Prompt's `ComponentPool` (prompts as weighted sums of components) is in
  `cilbench.learn.prompt_components`.
- `prompted_features`: the timm forward with the prompts in place, read out either by timm's own
  pooling of the image tokens ([CLS]; prompts removed first) or as the mean of the output prompt
  tokens (L2P's `prompt` head).

Where it differs from the reference codes, and why:
- Prompt tokens get no position embedding, as in the original L2P code (google-research/l2p
  `models/vit.py`: prompts are prepended after `AddPositionEmbs`). LAMDA-PILOT / l2p-pytorch give
  each prompt a copy of the [CLS] position embedding; `prompt_position="cls"` does that. Prompts
  sit after the prefix tokens ([CLS], registers); without a position the order does not matter.
- Prefix keys and values join the keys and values after the qkv projection (and after timm's
  optional q/k norm), per head, as in every reference code (none of them has a q/k norm).
- The prefix block re-states timm's `Block.forward` and `Attention.forward` with the prefixes
  added (timm has no prefix hook); `check_prompt_layers` refuses blocks of another layout.
- `compensate=True` is LAE's compensatory prefix (LAMDA-PILOT `backbone/vit_lae.py`
  `Prefix.compensate`): after the softmax over all keys, the weights on the prefix keys are
  divided by their sum, so the prefixes add a full attention-weighted value on top of the
  (shrunk) attention to the image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cilbench.core.errors import ConfigError
from cilbench.learn.adapters import is_vit

Readout = Literal["token", "prompts"]
VoteTies = Literal["lower-id", "topk"]
BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


@dataclass
class LayerPrompts:
    """Per block index: prompt tokens to insert (B, n, D), or prefix (keys, values) (B, n, D)."""

    tokens: dict[int, torch.Tensor] = field(default_factory=dict)
    prefixes: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def merge(self, other: LayerPrompts) -> LayerPrompts:
        """Both sets; where both prompt the same layer their tokens are concatenated."""
        tokens = dict(self.tokens)
        for layer, extra in other.tokens.items():
            tokens[layer] = torch.cat([tokens[layer], extra], 1) if layer in tokens else extra
        prefixes = dict(self.prefixes)
        for layer, (keys, values) in other.prefixes.items():
            if layer in prefixes:
                keys = torch.cat([prefixes[layer][0], keys], 1)
                values = torch.cat([prefixes[layer][1], values], 1)
            prefixes[layer] = (keys, values)
        return LayerPrompts(tokens, prefixes)


def check_prompt_layers(model: nn.Module, layers: tuple[int, ...], what: str) -> None:
    """ConfigError unless `model` is a timm ViT with standard blocks at every index in `layers`."""
    if not is_vit(model):
        raise ConfigError(
            f"{what} needs a ViT backbone (timm VisionTransformer); got {type(model).__name__}. "
            "Choose a ViT, e.g. --backbone tiny-vit-random."
        )
    depth = len(model.blocks)  # type: ignore[arg-type]
    bad = [layer for layer in layers if not 0 <= layer < depth]
    if bad:
        raise ConfigError(
            f"{what} names blocks {bad}, but the backbone has {depth} blocks (0..{depth - 1})."
        )
    for layer in layers:
        block = model.blocks[layer]  # type: ignore[index]
        if not all(hasattr(block, part) for part in BLOCK_PARTS):
            raise ConfigError(
                f"{what}: block {layer} is a {type(block).__name__}, not timm's standard Block "
                f"({', '.join(BLOCK_PARTS)}); prefix-tuning needs that layout."
            )


def cosine_similarity(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(B, K) cosine similarities of each query with each key."""
    return F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T


def select_top_k(
    similarity: torch.Tensor, k: int, batchwise: bool = False, ties: VoteTies = "lower-id"
) -> torch.Tensor:
    """(B, k) ids of the most similar keys per sample, or the batch vote of the reference code.

    The vote takes the k ids selected most often across the batch for every sample, so a
    prediction depends on the other images of its batch. Equal counts: `ties="lower-id"` prefers
    the lower id (what the flax original's sorted unique ids and `top_k` give); `ties="topk"`
    ranks the counts as LAMDA-PILOT's `backbone/prompt.py` does (see `_pilot_vote`).
    """
    ids = similarity.topk(k, dim=1).indices
    if not batchwise:
        return ids
    if ties == "topk":
        voted = _pilot_vote(ids, similarity.shape[1], k)
    else:
        counts = torch.bincount(ids.flatten(), minlength=similarity.shape[1])
        voted = torch.argsort(-counts, stable=True)[:k]
    return voted.expand(len(similarity), k)


def _pilot_vote(ids: torch.Tensor, size: int, k: int) -> torch.Tensor:
    """The k most chosen ids, ranked by `torch.topk` over the counts of the chosen ids in
    ascending id order, padded to `size` with zero counts: LAMDA-PILOT's layout, so ties fall as
    `torch.topk` (unspecified order; on the CPU often not the lower id) lets them fall there."""
    chosen, counts = torch.unique(ids, return_counts=True, sorted=True)
    missing = size - len(chosen)
    if missing > 0:
        chosen = torch.cat([chosen, chosen.new_full((missing,), int(ids.min()))])
        counts = torch.cat([counts, counts.new_zeros(missing)])
    return chosen[counts.topk(k).indices]


def pull_constraint(similarity: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Sum of the selected keys' cosine similarities, averaged over the batch (`reduce_sim`)."""
    return similarity.gather(1, ids).sum() / len(similarity)


class Prompter(nn.Module):
    """Turns queries into per-layer prompts; what a `PromptLearner` trains besides its head."""

    def start_task(self, task: int, generator: torch.Generator) -> None:
        """Prepare experience `task`'s parameters before it trains (no-op here)."""

    def forward(
        self, query: torch.Tensor, task: int, training: bool = False
    ) -> tuple[LayerPrompts, torch.Tensor]:
        """(prompts for every query, pull constraint) while at experience `task`."""
        raise NotImplementedError


class PromptPool(nn.Module):
    """`size` prompts of `length` tokens for each layer in `layers`, each prompt with a key.

    Prompt-tuning stores (layers, 1, size, length, D); prefix-tuning (layers, 2, size, length, D),
    keys then values. `keyed=False` gives a pool without keys (DualPrompt's G-prompt: size 1).
    """

    def __init__(
        self,
        dim: int,
        size: int,
        length: int,
        layers: tuple[int, ...],
        prefix: bool,
        keyed: bool = True,
    ):
        super().__init__()
        self.layers = layers
        self.prefix = prefix
        self.prompts = nn.Parameter(torch.zeros(len(layers), 2 if prefix else 1, size, length, dim))
        self.keys = nn.Parameter(torch.zeros(size, dim)) if keyed else None

    @property
    def size(self) -> int:
        return self.prompts.shape[2]

    def reset_parameters(
        self, generator: torch.Generator, scale: float, symmetric: bool = False
    ) -> None:
        """Uniform [0, scale) prompts and keys (flax's `uniform()` has scale 0.01), or
        [-scale, scale) with `symmetric` (LAMDA-PILOT's `uniform_(-1, 1)`: scale 1)."""
        with torch.no_grad():
            for parameter in self.parameters():
                values = torch.rand(parameter.shape, generator=generator)
                values = (2 * values - 1) * scale if symmetric else values * scale
                parameter.copy_(values.to(parameter.device))

    def chosen(self, ids: torch.Tensor, position: torch.Tensor | None = None) -> LayerPrompts:
        """The prompts `ids` (B, k) of every sample, k prompts joined along the tokens.

        `position` (1, 1, D) is added to inserted prompt tokens (see `prompt_position`).
        """
        picked = self.prompts[:, :, ids].flatten(3, 4)  # layers, kv, B, k * length, D
        prompts = LayerPrompts()
        for n, layer in enumerate(self.layers):
            if self.prefix:
                prompts.prefixes[layer] = (picked[n, 0], picked[n, 1])
            else:
                tokens = picked[n, 0]
                prompts.tokens[layer] = tokens if position is None else tokens + position
        return prompts


class KeyedPrompter(Prompter):
    """L2P and DualPrompt: a keyed pool chosen by the query, plus an optional shared pool.

    `task_masked`: during training experience t uses prompts [t*k, (t+1)*k) instead of matching
    keys (DualPrompt's `use_prompt_mask`), while that range fits the pool; `share_previous`: each
    experience's prompts start as a copy of the previous experience's (`shared_prompt_pool`).
    `general`: a key-less pool of size 1 every sample uses (DualPrompt's G-prompt). `ties`: how
    the batch vote breaks equal counts (see `select_top_k`).
    """

    def __init__(
        self,
        pool: PromptPool,
        top_k: int,
        *,
        general: PromptPool | None = None,
        batchwise: bool = False,
        task_masked: bool = False,
        share_previous: bool = False,
        position: torch.Tensor | None = None,
        ties: VoteTies = "lower-id",
    ):
        super().__init__()
        if not 1 <= top_k <= pool.size:
            raise ConfigError(f"top_k must be between 1 and the pool size {pool.size}; got {top_k}")
        self.pool = pool
        self.general = general
        self.top_k = top_k
        self.batchwise = batchwise
        self.task_masked = task_masked
        self.share_previous = share_previous
        self.position = position
        self.ties: VoteTies = ties

    def _task_range(self, task: int) -> slice | None:
        """Experience `task`'s own prompts, or None once the pool has no room left for them."""
        span = slice(task * self.top_k, (task + 1) * self.top_k)
        return span if span.stop <= self.pool.size else None

    def start_task(self, task: int, generator: torch.Generator) -> None:
        """Copy the previous experience's prompts into this one's slot (`share_previous`)."""
        now, before = self._task_range(task), self._task_range(task - 1)
        if self.share_previous and task > 0 and now is not None and before is not None:
            with torch.no_grad():
                self.pool.prompts[:, :, now] = self.pool.prompts[:, :, before]

    def forward(
        self, query: torch.Tensor, task: int, training: bool = False
    ) -> tuple[LayerPrompts, torch.Tensor]:
        """Prompts for every query and the pull constraint of the keys used."""
        assert self.pool.keys is not None
        similarity = cosine_similarity(query, self.pool.keys)
        own = self._task_range(task) if training and self.task_masked else None
        if own is not None:
            ids = torch.arange(own.start, own.stop, device=query.device).expand(len(query), -1)
        else:
            ids = select_top_k(similarity, self.top_k, self.batchwise, self.ties)
        prompts = self.pool.chosen(ids, self.position)
        if self.general is not None:
            shared = torch.zeros(len(query), 1, dtype=torch.long, device=query.device)
            prompts = self.general.chosen(shared, self.position).merge(prompts)
        return prompts, pull_constraint(similarity, ids)


def class_position(model: Any) -> torch.Tensor:
    """(1, 1, D) position embedding of [CLS], which PILOT / l2p-pytorch give prompt tokens."""
    if model.cls_token is None or model.pos_embed is None or model.no_embed_class:
        raise ConfigError(
            "prompt_position='cls' needs a ViT whose [CLS] has a position embedding; "
            "use prompt_position='none'."
        )
    return model.pos_embed[:, :1]


def prompted_features(
    model: Any,
    images: torch.Tensor,
    prompts: LayerPrompts,
    readout: Readout = "token",
    compensate: bool = False,
) -> torch.Tensor:
    """Pooled features (B, D) of a timm ViT run with `prompts` in place (`compensate`: LAE's
    compensatory prefixes, see the module docstring).

    "token": timm's own pooling (and `fc_norm`) of the sequence without the prompt tokens, i.e.
    [CLS] for a class-token ViT. "prompts": the mean of the output prompt tokens after the final
    norm, then `fc_norm` (L2P's `prompt` head).
    """
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    first = model.num_prefix_tokens
    inserted = 0
    for i, block in enumerate(model.blocks):
        if i in prompts.tokens:
            tokens = prompts.tokens[i].to(x.dtype)
            x = torch.cat([x[:, : first + inserted], tokens, x[:, first + inserted :]], dim=1)
            inserted += tokens.shape[1]
        prefix = prompts.prefixes.get(i)
        x = block(x) if prefix is None else _prefixed_block(block, x, *prefix, compensate)
    x = model.norm(x)
    if readout == "prompts":
        return model.fc_norm(x[:, first : first + inserted].mean(dim=1))
    x = torch.cat([x[:, :first], x[:, first + inserted :]], dim=1)
    return model.forward_head(x, pre_logits=True)


def _prefixed_block(
    block: Any, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, compensate: bool
) -> torch.Tensor:
    """timm's `Block.forward` with prefix keys and values in its attention."""
    attended = _prefixed_attention(block.attn, block.norm1(x), keys, values, compensate)
    x = x + block.drop_path1(block.ls1(attended))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def _prefixed_attention(
    attn: Any, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, compensate: bool = False
) -> torch.Tensor:
    """timm's `Attention.forward` with (B, n, D) prefix keys/values joined to each head's."""
    batch, length, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x).reshape(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)

    def per_head(prefix: torch.Tensor) -> torch.Tensor:
        return prefix.to(k.dtype).reshape(batch, -1, heads, head_dim).transpose(1, 2)

    k = torch.cat([per_head(keys), k], dim=2)
    v = torch.cat([per_head(values), v], dim=2)
    dropout = attn.attn_drop.p if attn.training else 0.0
    if compensate:
        out = _compensated_attention(q, k, v, keys.shape[1], dropout)
    else:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    out = attn.norm(out.transpose(1, 2).reshape(batch, length, heads * head_dim))
    gate = getattr(attn, "gate", None)
    if gate is not None:
        out = out * gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out))


def _compensated_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefixes: int, dropout: float
) -> torch.Tensor:
    """Attention whose (post-dropout) weights on the first `prefixes` keys sum to 1 (LAE)."""
    weights = F.dropout((q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1), dropout)
    share = weights[..., :prefixes].sum(-1, keepdim=True).clamp(min=1e-12)
    return torch.cat([weights[..., :prefixes] / share, weights[..., prefixes:]], -1) @ v

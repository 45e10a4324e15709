"""Parameter-efficient fine-tuning (PEFT) of timm ViTs: adapter, SSF, VPT, LoRA, or full finetune.

`apply_peft(model, settings)` changes a timm model in place and leaves exactly the PEFT parameters
trainable; the methods that adapt a pre-trained model on their first session (ADAM/APER, RanPAC)
share it. The variants, following the APER reference code (LAMDA-PILOT `backbone/vit_*.py`):

- `adapter`: AdaptFormer's parallel adapter in every block,
  `x + MLP(LN2(x)) + s * up(drop(relu(down(x))))` with `x` the post-attention residual stream (no
  layer norm in front; in a block with LayerScale, such as DINOv2's, the adapter's output is
  added outside it), bottleneck 64, s = 0.1. `up` starts at zero, so the adapted model equals
  the pre-trained one until it trains.
- `ssf`: a learnable scale and shift (last dimension) after the patch embedding, every qkv,
  attention projection, fc1, fc2, norm1 and norm2, and the final norm; init scale ~ N(1, .02),
  shift ~ N(0, .02).
- `vpt-shallow` / `vpt-deep`: learnable prompt tokens, initialised to zero, appended after the
  patch tokens: one set before the first block kept to the end (shallow), or a new set per block
  dropped after that block (deep). Prompts never reach the pooled output.
- `lora`: low-rank updates of the attention projections (`attn.qkv`, `attn.proj`) through the `peft`
  library; B starts at zero, so the model starts equal to the pre-trained one.
- `finetune`: every parameter trains (any backbone, not only ViTs).

Per-task adapter sets (EASE: one adapter set per task on one frozen ViT): `share_parameters`
makes a freshly built copy use the very parameter tensors of the frozen model before `apply_peft`
adds that task's adapters, so every task's model holds only its own adapters in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal

import torch
from torch import nn

from cilbench.core.config import Positive, Range
from cilbench.core.errors import ConfigError

PeftVariant = Literal["adapter", "ssf", "vpt-shallow", "vpt-deep", "lora", "finetune"]
VIT_ONLY: tuple[str, ...] = ("adapter", "ssf", "vpt-shallow", "vpt-deep", "lora")


@dataclass(frozen=True)
class PeftSettings:
    """Which PEFT variant and its sizes (strategies copy these fields from their Config)."""

    peft: str = "adapter"
    adapter_bottleneck: Annotated[int, Positive()] = 64
    adapter_scale: Annotated[float, Range()] = 0.1
    adapter_dropout: Annotated[float, Range(0, 1, high_open=True)] = 0.1
    vpt_tokens: Annotated[int, Positive()] = 5
    lora_rank: Annotated[int, Positive()] = 8
    lora_alpha: Annotated[int, Positive()] = 16
    lora_dropout: Annotated[float, Range(0, 1, high_open=True)] = 0.0

    def peft_settings(self) -> PeftSettings:
        """The PEFT part of a Config that extends this class."""
        return PeftSettings(**{f.name: getattr(self, f.name) for f in fields(PeftSettings)})


class ParallelAdapter(nn.Module):
    """AdaptFormer bottleneck `scale * up(dropout(relu(down(x))))`; zero at initialisation."""

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.dropout(torch.relu(self.down(x))))


class AdaptedBlock(nn.Module):
    """A timm block plus a parallel adapter fed by the block's MLP-branch input (before norm2).

    The block runs unchanged; a pre-hook on `norm2` keeps its input, and the adapter's output on
    that input is added to the block output, which is `x + MLP(norm2(x)) + adapter(x)`.
    """

    def __init__(self, block: Any, adapter: ParallelAdapter):
        super().__init__()
        self.block = block
        self.adapter = adapter
        self._mlp_input: torch.Tensor | None = None
        block.norm2.register_forward_pre_hook(self._keep_mlp_input)

    def _keep_mlp_input(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._mlp_input = args[0]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.block(x, *args, **kwargs)
        mlp_input, self._mlp_input = self._mlp_input, None
        return out + self.adapter(mlp_input)


class ScaleShift(nn.Module):
    """SSF: `module(x) * scale + shift` over the output's last dimension."""

    def __init__(self, module: nn.Module, dim: int):
        super().__init__()
        self.module = module
        self.scale = nn.Parameter(torch.empty(dim).normal_(1.0, 0.02))
        self.shift = nn.Parameter(torch.empty(dim).normal_(0.0, 0.02))

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.module(*args, **kwargs) * self.scale + self.shift


class PromptedBlocks(nn.Module):
    """The block stack with learnable prompt tokens appended after the patch tokens.

    Shallow: one set of `tokens` prompts before the first block, removed after the last one.
    Deep: a new set before every block, removed after that block.
    """

    def __init__(self, blocks: nn.Sequential, dim: int, tokens: int, deep: bool):
        super().__init__()
        self.blocks = blocks
        self.deep = deep
        self.tokens = tokens
        sets = len(blocks) if deep else 1
        self.prompts = nn.Parameter(torch.zeros(sets, tokens, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens == 0:
            return self.blocks(x)
        if not self.deep:
            x = self.blocks(self._append(x, 0))
            return x[:, : -self.tokens]
        for i, block in enumerate(self.blocks):
            x = block(self._append(x, i))[:, : -self.tokens]
        return x

    def _append(self, x: torch.Tensor, i: int) -> torch.Tensor:
        prompts = self.prompts[i].to(x.dtype).expand(len(x), -1, -1)
        return torch.cat([x, prompts], dim=1)


def is_vit(model: nn.Module) -> bool:
    """Whether `model` is a timm VisionTransformer (patch embedding + a sequence of blocks)."""
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def require_vit(variant: str, model: nn.Module, backbone_name: str = "") -> None:
    """ConfigError naming the ViT-only variants if `variant` needs a ViT and `model` is not one."""
    if variant in VIT_ONLY and not is_vit(model):
        name = backbone_name or type(model).__name__
        raise ConfigError(
            f"peft={variant!r} needs a ViT backbone (timm VisionTransformer), but backbone "
            f"{name!r} is a {type(model).__name__}. The variants {', '.join(VIT_ONLY)} need a ViT; "
            "'finetune' works with any backbone. Choose a ViT (e.g. --backbone tiny-vit-random "
            "or vit_base_patch16_224.augreg_in21k) or --set peft=finetune."
        )


def apply_peft(model: Any, settings: PeftSettings) -> list[str]:
    """Add the PEFT variant to `model` in place; only its parameters stay trainable.

    New parameters are created with torch's global RNG (seed it for reproducibility) on the
    model's device. Returns the names of the trainable parameters.
    """
    variant = settings.peft
    if variant not in PeftVariant.__args__:  # type: ignore[attr-defined]
        raise ConfigError(
            f"peft must be one of {', '.join(PeftVariant.__args__)}; got {variant!r}."  # type: ignore[attr-defined]
        )
    require_vit(variant, model)
    model.requires_grad_(variant == "finetune")
    if variant == "adapter":
        _add_adapters(model, settings)
    elif variant == "ssf":
        _add_ssf(model)
    elif variant in ("vpt-shallow", "vpt-deep"):
        model.blocks = PromptedBlocks(
            model.blocks, model.embed_dim, settings.vpt_tokens, deep=variant == "vpt-deep"
        )
    elif variant == "lora":
        _add_lora(model, settings)
    device = next(model.parameters()).device
    model.to(device)
    return [name for name, p in model.named_parameters() if p.requires_grad]


def share_parameters(model: nn.Module, base: nn.Module) -> int:
    """Make `model` use `base`'s parameter tensors (same names, same shapes); returns how many.

    For per-task adapter sets: build a copy of the frozen model, share its parameters with the
    frozen one, then `apply_peft` the task's adapters; the copies then differ only in those.
    A parameter `base` lacks, or one of another shape, raises.
    """
    modules = dict(model.named_modules())
    own = dict(model.named_parameters())
    count = 0
    for name, parameter in base.named_parameters():
        if name not in own or own[name].shape != parameter.shape:
            raise ValueError(f"cannot share parameter {name!r}: the model has no such tensor")
        owner, _, leaf = name.rpartition(".")
        setattr(modules[owner], leaf, parameter)
        count += 1
    return count


def _add_adapters(model: Any, settings: PeftSettings) -> None:
    for i, block in enumerate(model.blocks):
        adapter = ParallelAdapter(
            model.embed_dim,
            settings.adapter_bottleneck,
            settings.adapter_scale,
            settings.adapter_dropout,
        )
        model.blocks[i] = AdaptedBlock(block, adapter)


def _add_ssf(model: Any) -> None:
    # The patch embedding's last step is its norm (Identity in most ViTs); wrapping that rather
    # than the whole PatchEmbed keeps the attributes timm reads from it (`grid_size` for
    # `dynamic_img_size` models such as DINOv2).
    model.patch_embed.norm = ScaleShift(model.patch_embed.norm, model.embed_dim)
    for block in model.blocks:
        block.attn.qkv = _wrap_linear(block.attn.qkv)
        block.attn.proj = _wrap_linear(block.attn.proj)
        block.mlp.fc1 = _wrap_linear(block.mlp.fc1)
        block.mlp.fc2 = _wrap_linear(block.mlp.fc2)
        block.norm1 = ScaleShift(block.norm1, model.embed_dim)
        block.norm2 = ScaleShift(block.norm2, model.embed_dim)
    for name in ("norm", "fc_norm"):
        if isinstance(getattr(model, name), nn.LayerNorm):
            setattr(model, name, ScaleShift(getattr(model, name), model.embed_dim))


def _wrap_linear(linear: Any) -> ScaleShift:
    return ScaleShift(linear, linear.out_features)


def _add_lora(model: Any, settings: PeftSettings) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=r".*\.attn\.(qkv|proj)",
    )
    inject_adapter_in_model(config, model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)

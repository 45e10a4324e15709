"""What differs between devices, chosen in one place by device type.

On CUDA cilbench computes in bfloat16 under autocast (training and frozen-feature extraction),
pins host memory in data loaders so that copies to the GPU can overlap compute, and waits for the
device before reading a clock. On the CPU it computes in float32 and none of that applies. Every
device-specific path goes through these functions, so a CPU test of the choice covers them.
"""

from __future__ import annotations

import torch


def compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype models run in: bfloat16 on CUDA (tensor cores), float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def autocast(device: torch.device) -> torch.autocast:
    """Mixed-precision context for `device`: bf16 autocast on CUDA, a no-op elsewhere."""
    dtype = compute_dtype(device)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def pins_memory(device: torch.device) -> bool:
    """Whether data loaders feeding `device` should pin host memory (CUDA only)."""
    return device.type == "cuda"


def synchronize(device: torch.device) -> None:
    """Wait for queued work on `device` (CUDA kernels run asynchronously); no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

"""Memory bounds: estimate what a setting allocates and refuse what cannot fit, with the estimate.

A setting such as RanPAC's `projection_dim=2e8` would otherwise end in an allocation traceback
after minutes of work, or in runaway memory. `check_fits` compares an estimate (bytes) with the
memory available now (`MemAvailable`, or the device's free memory on CUDA) and raises a
ConfigError naming the setting, the estimate and what is available.
"""

from __future__ import annotations

import os
from typing import Any

from cilbench.core.errors import ConfigError


def available_bytes(device: Any = "cpu") -> int:
    """Memory that can be allocated now on `device`: the CUDA free memory, else MemAvailable."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def human(size: float) -> str:
    """Bytes as '51.2 GB'."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(size) < 1000 or unit == "PB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    return f"{size:.1f} PB"


def check_fits(needed: float, setting: str, device: Any = "cpu", fix: str = "") -> None:
    """ConfigError when `needed` bytes exceed the memory available on `device`."""
    available = available_bytes(device)
    if needed > available:
        raise ConfigError(
            f"{setting} needs about {human(needed)} of {'GPU ' if 'cuda' in str(device) else ''}"
            f"memory; {human(available)} is available. {fix or 'Choose a smaller value.'}"
        )

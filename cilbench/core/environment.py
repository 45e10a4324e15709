"""What decides a run's float results and timings, recorded in every result's `environment`.

Trained strategies replay bit for bit only on the same CPU instruction set (torch picks AVX2 or
AVX-512 kernels at run time), BLAS library and thread counts (reduction order), library versions
and code. `environment()` records them; `differences(stored, replay)` names those that differ, so
`cilbench run --from` can say why a replay on another machine is not identical.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

DECIDES_FLOATS = (
    "cilbench",
    "git_commit",
    "torch",
    "numpy",
    "timm",
    "cpu_model",
    "cpu_capability",
    "cpu_flags",
    "torch_blas",
    "numpy_blas",
    "torch_threads",
    "blas_threads",
    "cuda",
)
"""The keys `differences` compares (platform, Python and the CPU count change no number)."""
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
"""The instruction-set flags kernels dispatch on (x86); other flags change nothing we compute."""


def environment() -> dict[str, Any]:
    """Versions, hardware, BLAS and threads that can change numbers or timings."""
    import numpy as np
    import timm
    import torch

    from cilbench.core.version import __version__

    return {
        "cilbench": __version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": cpu_flags(),
        "torch_blas": torch_blas(),
        "torch_threads": torch.get_num_threads(),
        **_numpy_blas(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else `platform.processor()`)."""
    found = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), re.MULTILINE)
    return found.group(1).strip() if found else platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The instruction-set flags of `ISA_FLAGS` this CPU has (empty where /proc/cpuinfo is not)."""
    found = re.search(r"^flags\s*:\s*(.+)$", _cpuinfo(), re.MULTILINE)
    flags = set(found.group(1).split()) if found else set()
    return [f for f in ISA_FLAGS if f in flags]


def torch_blas() -> str:
    """torch's BLAS and LAPACK, from its build configuration ('mkl', 'openblas', ...)."""
    import torch

    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=([^,\s]+)", config)
    lapack = re.search(r"LAPACK_INFO=([^,\s]+)", config)
    parts = [f"blas={blas.group(1)}" if blas else "", f"lapack={lapack.group(1)}" if lapack else ""]
    return ", ".join(p for p in parts if p) or "unknown"


def _numpy_blas() -> dict[str, Any]:
    """numpy's BLAS library, version and threads (threadpoolctl, when installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"numpy_blas": "unknown", "blas_threads": None}
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    if not blas:
        return {"numpy_blas": "unknown", "blas_threads": None}
    first = blas[0]
    name = f"{first.get('internal_api')} {first.get('version') or ''}".strip()
    return {"numpy_blas": name, "blas_threads": first.get("num_threads")}


def git_commit() -> str | None:
    """The commit of the checkout cilbench runs from ('+dirty' with uncommitted changes); None
    for an installed package."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def differences(stored: dict[str, Any], replay: dict[str, Any]) -> list[str]:
    """'key: stored -> replay' for every float-deciding key that differs, then one line naming the
    keys the stored result does not record (results written before they were)."""
    found, missing = [], []
    for key in DECIDES_FLOATS:
        if key not in replay:
            continue
        if key not in stored:
            missing.append(key)
        elif stored[key] != replay[key]:
            found.append(f"{key}: {_show(stored[key])} -> {_show(replay[key])}")
    if missing:
        found.append(f"not recorded in the stored result: {', '.join(missing)}")
    return found


def _show(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    return str(value)

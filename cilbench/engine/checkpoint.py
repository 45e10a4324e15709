"""The run checkpoint: a strategy's tensors and the partial result, checksummed like the caches.

One safetensors file (no code runs on load) holds the strategy's state dict and, in its metadata,
the partial `RunResult` JSON, a sha256 per tensor (over dtype, shape and bytes) and a sha256 over
the result and that table. Loading verifies all of it, so damage that leaves the file readable
(an edited result, swapped or edited tensors, a removed tensor) is reported by name and never
resumed from; without this a NaN written into a tensor would surface later as a diverging loss.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from cilbench.backbones.weights import tensor_sha256
from cilbench.core.errors import CorruptFileError
from cilbench.core.files import atomic_path

FORMAT_VERSION = "2"
"""Version 1 (before checksums) is refused: it cannot be verified."""


def save_checkpoint(path: Path, state: dict[str, torch.Tensor], result_json: str) -> None:
    """Write `state` and the partial result to `path` atomically, with their checksums."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    table = json.dumps({name: tensor_sha256(t) for name, t in sorted(tensors.items())})
    metadata = {
        "format": FORMAT_VERSION,
        "result": result_json,
        "tensors": table,
        "sha256": _metadata_sha256(result_json, table),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state, partial result JSON) from `path`, verified; CorruptFileError naming the damage."""
    fix = "Start over with --overwrite (the finished experiences are run again)."
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CorruptFileError(f"Checkpoint {path} is damaged ({error}). {fix}") from error
    problem = _problem(metadata, tensors)
    if problem:
        raise CorruptFileError(f"Checkpoint {path} is damaged: {problem}; not resuming. {fix}")
    return tensors, metadata["result"]


def _metadata_sha256(result_json: str, table: str) -> str:
    return hashlib.sha256(f"{result_json}\0{table}".encode()).hexdigest()


def _problem(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """What is wrong with a readable checkpoint, or '' when every checksum holds."""
    if metadata.get("format") != FORMAT_VERSION or "sha256" not in metadata:
        return "it carries no checksums (written by an older cilbench, or its metadata edited)"
    result, table = metadata.get("result", ""), metadata.get("tensors", "")
    if _metadata_sha256(result, table) != metadata["sha256"]:
        return "its metadata (the partial result or the tensor checksums) was edited"
    expected = json.loads(table)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        return f"tensor {missing[0]!r} is missing ({len(missing)} missing)"
    extra = sorted(set(tensors) - set(expected))
    if extra:
        return f"tensor {extra[0]!r} was added"
    changed = [name for name in sorted(expected) if tensor_sha256(tensors[name]) != expected[name]]
    if changed:
        return f"tensor {changed[0]!r} was changed or swapped ({len(changed)} tensors differ)"
    return ""

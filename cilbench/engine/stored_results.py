"""What a run does about a result already stored under its run id.

`--resume` without a checkpoint says why there is nothing to continue (finished, damaged, or never
started). A finished result computed on another device type or at another precision is not
replaced silently: the run id hashes neither the device nor the default precision, so the same
command on a CPU would otherwise overwrite a GPU's result (`--overwrite` replaces it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cilbench.core.errors import CilbenchError, CorruptFileError
from cilbench.core.results import load_result
from cilbench.engine.spec import LATER_KEYS, same_run


def computed_on(config: dict[str, Any]) -> tuple[str, str]:
    """(device type, precision) a record was computed with; older records ran fp32 on the CPU."""
    device = str(config.get("device", "cpu")).partition(":")[0]
    return device, str(config.get("precision", LATER_KEYS["precision"]))


def refuse_replacing_another_device(result_path: Path, config: dict[str, Any]) -> None:
    """Refuse to overwrite a finished result whose device type or precision differs from
    `config`'s; a damaged or unfinished file is no result to protect."""
    try:
        stored = load_result(result_path) if result_path.exists() else None
    except CorruptFileError:
        return
    if stored is None or not stored.complete:
        return
    theirs, ours = computed_on(stored.config), computed_on(config)
    if theirs != ours:
        raise CilbenchError(
            f"{result_path} holds a finished result computed on {theirs[0]} at {theirs[1]}; "
            f"this run computes on {ours[0]} at {ours[1]}. Pass --overwrite to replace it, or "
            "--out another folder to keep both."
        )


def nothing_to_resume(
    result_path: Path, checkpoint_path: Path, config: dict[str, Any]
) -> CilbenchError:
    """The error for --resume without a checkpoint: finished, damaged result, or never started."""
    if not result_path.exists():
        return CilbenchError(
            f"Nothing to resume: no checkpoint at {checkpoint_path}. Run without --resume to start."
        )
    try:
        result = load_result(result_path)
    except CorruptFileError as error:
        return CorruptFileError(
            f"Nothing to resume: no checkpoint, and the result file is damaged ({error}). "
            "Run without --resume to repeat the run."
        )
    if not result.complete or not same_run(result.config, config):
        return CorruptFileError(
            f"Nothing to resume: no checkpoint, and {result_path} is not the finished result of "
            "this run. Run without --resume to repeat the run."
        )
    return CilbenchError(
        f"Run {result.run_id} already finished: {result_path}. Run without --resume to repeat it."
    )

"""Checks on what a strategy hands back to the harness.

A strategy's scores decide every accuracy in the result. NaN scores, or a row whose every score is
-inf, have no meaningful argmax (torch picks some class anyway) and would be scored as predictions,
so a broken strategy would publish a plausible-looking accuracy. `check_scores` stops the run with
the strategy and the experience named instead. `checked_state` and `checked_report` turn what
`state_dict()` and `report()` return into what a checkpoint and a result file can hold (numpy
converted, shared tensors copied apart, NaN as null), or refuse it naming the entry.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from cilbench.core.errors import CilbenchError

log = logging.getLogger(__name__)


class StrategyOutputError(CilbenchError):
    """A strategy returned something the harness cannot score or store."""


def check_scores(scores: torch.Tensor, strategy: str, experience: int) -> None:
    """Refuse scores holding NaN, or rows without a finite best score (all -inf, or +inf)."""
    nan = bool(torch.isnan(scores).any())
    if nan or not bool(torch.isfinite(scores.max(dim=1).values).all()):
        what = "NaN" if nan else "rows without a finite best score (all -inf, or +inf)"
        raise StrategyOutputError(
            f"Strategy {strategy} returned scores with {what} after experience {experience}; "
            "they cannot be scored as predictions. Check the strategy's training (a diverged "
            "loss, a division by zero) or its settings."
        )


def checked_state(state: Any, strategy: str) -> dict[str, torch.Tensor]:
    """A strategy's `state_dict()` as the checkpoint stores it: name -> CPU tensor.

    Numpy arrays and scalars are converted to tensors; tensors sharing memory (a tied weight, a
    view of another entry) are copied apart, since safetensors refuses to store shared tensors;
    anything else (a list, None, an object, a non-string name) is a StrategyOutputError naming the
    entry.
    """
    if not isinstance(state, Mapping):
        raise StrategyOutputError(
            f"Strategy {strategy}'s state_dict() returned {type(state).__name__}; expected a "
            "mapping of names to tensors."
        )
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, value in state.items():
        if isinstance(value, np.ndarray | np.generic):
            with contextlib.suppress(TypeError):  # strings, objects: refused below
                value = torch.from_numpy(np.array(value))
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            what = f"a {type(value).__name__}" if isinstance(name, str) else "not named by a string"
            raise StrategyOutputError(
                f"Strategy {strategy}'s state_dict() entry {name!r} is {what}; a "
                "checkpoint holds tensors (or numpy arrays) named by strings. Convert it in "
                "state_dict() and back in load_state_dict()."
            )
        tensor = value.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in storages and tensor.numel():
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    return tensors


def checked_report(report: Any, strategy: str) -> dict[str, Any]:
    """A strategy's `report()` as the result file stores it (JSON).

    Numpy scalars and arrays and tensors become numbers and lists; a NaN or infinite number
    becomes null with a warning naming it (JSON has no NaN); anything else that JSON cannot hold
    is a StrategyOutputError naming where it is.
    """
    if not isinstance(report, Mapping):
        raise StrategyOutputError(
            f"Strategy {strategy}'s report() returned {type(report).__name__}; expected a mapping."
        )
    return _json_value(report, f"Strategy {strategy}'s report()", "report")


def _json_value(value: Any, who: str, where: str) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str | int | float | bool):
                raise StrategyOutputError(f"{who} key {key!r} at {where} is not a string.")
            out[str(key)] = _json_value(item, who, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_json_value(item, who, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        log.warning("%s gives %s = %s; stored as null (JSON has no NaN or inf)", who, where, value)
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise StrategyOutputError(
        f"{who} holds a {type(value).__name__} at {where}; a result file holds JSON (numbers, "
        "strings, booleans, null, lists and mappings)."
    )

"""The boundary between a stream (built-in, plug-in or hand-made) and the runner.

A custom stream can hold labels outside its class names, negative labels (numpy indexing would
silently read them as the last class), an empty test set (a division by zero when scoring it),
class ids with gaps, or no experience at all. Each would crash deep inside a run or, worse, give a
result that looks fine; `validate_stream` turns them into one `DataError` naming the stream, the
experience or test set and what is allowed, before anything trains.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from cilbench.core.errors import DataError
from cilbench.data.sources import DatasetView

if TYPE_CHECKING:
    from cilbench.data.streams import Stream


def check_targets(targets: np.ndarray, num_classes: int, where: str) -> None:
    """Refuse class ids outside 0..num_classes-1 (one per class name)."""
    if len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
        bad = sorted({int(t) for t in np.asarray(targets) if not 0 <= t < num_classes})
        raise DataError(
            f"{where}: labels {bad[:10]} are outside 0..{num_classes - 1} "
            f"(one label per class name, {num_classes} names)."
        )


def validate_stream(stream: Stream) -> Stream:
    """Return `stream` unchanged, or raise DataError saying what is wrong with it."""
    name = stream.info.name
    if not stream.experiences:
        raise DataError(f"Stream {name!r} has no experiences: there is nothing to learn.")
    views = [(f"experience {e.index} training set", e.train) for e in stream.experiences]
    views += [(f"test set {j}", view) for j, view in enumerate(stream.test_sets)]
    for where, view in views:
        check_targets(view.labels, stream.info.num_classes, f"Stream {name!r}, {where}")
    for j, view in enumerate(stream.test_sets):
        if not len(view):
            raise DataError(f"Stream {name!r}: test set {j} is empty; it cannot be scored.")
    _check_contiguous(name, stream)
    return stream


def _check_contiguous(name: str, stream: Stream) -> None:
    """Labels are positions in the class order: experience t uses only 0..num_seen_classes-1 and
    together the experiences use every label from 0 up without a gap."""
    for experience in stream.experiences:
        top = int(experience.train.labels.max(initial=-1))
        if top >= experience.num_seen_classes:
            raise DataError(
                f"Stream {name!r}, experience {experience.index}: label {top} but only "
                f"{experience.num_seen_classes} classes seen so far (labels must be "
                "0..num_seen_classes-1)."
            )
    used = _labels(e.train for e in stream.experiences)
    missing = sorted(set(range(max(used, default=-1) + 1)) - used)
    if missing:
        raise DataError(
            f"Stream {name!r}: class ids are not contiguous; no training image has label(s) "
            f"{missing[:10]}. Number the classes 0..n-1 in the order they appear."
        )


def _labels(views: Iterable[DatasetView]) -> set[int]:
    return {int(c) for view in views for c in np.unique(view.labels)}

"""Streams: what a stream is (`Stream`, `Experience`, `StreamBuilder`) and the split policy every
builder shares (class orders and task boundaries).

Data sources (files, downloads) live in each builder under benchmarks/; this module only decides
which classes come when. Class-order conventions:

- `pycil-<seed>` (e.g. `pycil-1993`): `np.random.seed(seed); np.random.permutation(n)`, the order of
  PyCIL, LAMDA-PILOT, APER, SLCA and RanPAC (SLCA also uses 1996 and 1997). Computed with a local
  legacy `RandomState`, which gives the same numbers without touching numpy's global state.
- `natural`: 0..n-1 (L2P, DualPrompt, CODA-Prompt seed 0, VTAB).
- `seed:<N>`: cilbench's own shuffle, `np.random.default_rng(N).permutation(n)`.
- named fixed orders a builder provides (e.g. `icarl` for CIFAR-100).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np

from cilbench.core.config import NonNegative, Positive
from cilbench.core.errors import ConfigError, did_you_mean
from cilbench.data.sources import DatasetView, ImageSource
from cilbench.data.stream_checks import check_targets

Scenario = Literal["class-incremental", "domain-incremental"]


@dataclass(frozen=True)
class StreamInfo:
    """What a strategy may know about the stream before it starts."""

    name: str
    version: str
    scenario: Scenario
    num_classes: int
    num_experiences: int
    class_order: tuple[int, ...]
    """Original label of stream label 0, 1, 2, ..."""
    class_names: tuple[str, ...]
    """Name of stream label 0, 1, 2, ..."""


@dataclass(frozen=True)
class Experience:
    """One step of the stream: its training data and which classes it brings."""

    index: int
    train: DatasetView
    classes: tuple[int, ...]
    """Labels present in this experience's training data."""
    new_classes: tuple[int, ...]
    """Labels seen for the first time in this experience (empty in domain-incremental steps)."""
    num_seen_classes: int
    """Labels 0..num_seen_classes-1 have appeared so far; predictions score exactly these."""


@dataclass(frozen=True)
class Stream:
    """A sequence of experiences plus the test sets the runner evaluates on.

    Test set j is evaluated after every experience t >= `test_available_from[j]`: in a
    class-incremental stream test set j holds the classes of experience j; a domain-incremental
    stream has a single test set available from the start.
    """

    info: StreamInfo
    experiences: tuple[Experience, ...]
    test_sets: tuple[DatasetView, ...]
    test_available_from: tuple[int, ...]

    def __iter__(self) -> Iterator[Experience]:
        return iter(self.experiences)

    def __len__(self) -> int:
        return len(self.experiences)

    def test_sets_after(self, t: int) -> list[int]:
        """Indices of the test sets to evaluate after training experience t."""
        return [j for j, first in enumerate(self.test_available_from) if first <= t]

    def unlabelled_train(self) -> list[DatasetView]:
        """The training images of every experience with their labels removed (see `unlabelled`)."""
        return [unlabelled(e.train) for e in self.experiences]


def unlabelled(view: DatasetView) -> DatasetView:
    """The same images with every label replaced by -1, so that no label can leak through."""
    return DatasetView(view.source, view.indices, np.full(len(view), -1, dtype=np.int64))


class StreamBuilder:
    """Base of stream builders: subclasses are frozen dataclasses of options with `build`."""

    version: ClassVar[str] = "1"
    default_backbone: ClassVar[str] = "tiny-vit-random"
    default_backbone_settings: ClassVar[Mapping[str, Any]] = {}
    """Backbone settings (image_size, ...) applied whenever the default backbone is used."""

    def build(self, data_root: Path | None) -> Stream:
        """Load or locate the data under `data_root` and split it into a stream."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The option values, for the result file."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def class_order(
    convention: str, num_classes: int, named: Mapping[str, Sequence[int]] | None = None
) -> list[int]:
    """The original labels in the order the stream presents them."""
    named = dict(named or {})
    if convention in named:
        order = [int(c) for c in named[convention]]
        if sorted(order) != list(range(num_classes)):
            raise ValueError(f"order {convention!r} is not a permutation of {num_classes} classes")
        return order
    kind, sep, arg = convention.partition("-" if convention.startswith("pycil") else ":")
    try:
        if kind == "pycil" and sep:
            return [int(c) for c in np.random.RandomState(int(arg)).permutation(num_classes)]
        if kind == "seed" and sep:
            return [int(c) for c in np.random.default_rng(int(arg)).permutation(num_classes)]
    except ValueError:
        pass
    if convention == "natural":
        return list(range(num_classes))
    known = ["pycil-1993", "natural", "seed:0", *named]
    raise ConfigError(
        f"Unknown class_order {convention!r}.{did_you_mean(convention, known)} "
        f"Use pycil-<seed>, natural, seed:<N>{''.join(', ' + n for n in named)}."
    )


def task_classes(
    num_classes: int, init_classes: int, increment: int, short_last: bool = False
) -> list[range]:
    """Stream labels per task: `init_classes` first (0 means `increment`), then `increment` each
    (`short_last`: the classes left over form a shorter last task, as Mammoth's seq-cars196)."""
    first = init_classes or increment
    if increment <= 0 or first <= 0 or first > num_classes:
        raise ConfigError(
            f"init_classes={init_classes} and increment={increment} do not fit "
            f"{num_classes} classes."
        )
    rest = num_classes - first
    if rest % increment and not short_last:
        raise ConfigError(
            f"{num_classes} classes do not split into {first} initial classes plus tasks of "
            f"{increment}: {rest} classes would be left for a shorter last task. Choose "
            "init_classes and increment so that they divide evenly."
        )
    bounds = [0, first, *range(first + increment, num_classes + 1, increment)]
    bounds += [num_classes] if bounds[-1] != num_classes else []
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


@dataclass(frozen=True)
class ClassIncrementalOptions(StreamBuilder):
    """Options every class-incremental builder shares (B<init>-Inc<increment> protocol)."""

    init_classes: Annotated[int, NonNegative()] = 0
    increment: Annotated[int, Positive()] = 10
    class_order: str = "pycil-1993"


def class_incremental_stream(
    name: str,
    version: str,
    train: ImageSource,
    test: ImageSource,
    class_names: Sequence[str],
    options: ClassIncrementalOptions,
    named_orders: Mapping[str, Sequence[int]] | None = None,
    short_last: bool = False,
) -> Stream:
    """Split two sources into a class-incremental stream with one test set per experience
    (`short_last`: a last task with the classes left over is allowed)."""
    num_classes = len(class_names)
    for source in (train, test):
        where = f"Stream {name!r}, source {getattr(source, 'name', source.fingerprint)!r}"
        check_targets(source.targets, num_classes, where)
    order = class_order(options.class_order, num_classes, named_orders)
    to_stream_label = np.empty(num_classes, dtype=np.int64)
    to_stream_label[order] = np.arange(num_classes)
    tasks = task_classes(num_classes, options.init_classes, options.increment, short_last)

    def view(source: ImageSource, labels: range) -> DatasetView:
        mapped = to_stream_label[source.targets]
        indices = np.flatnonzero((mapped >= labels.start) & (mapped < labels.stop))
        return DatasetView(source, indices, mapped[indices])

    experiences = tuple(
        Experience(
            index=t,
            train=view(train, labels),
            classes=tuple(labels),
            new_classes=tuple(labels),
            num_seen_classes=labels.stop,
        )
        for t, labels in enumerate(tasks)
    )
    info = StreamInfo(
        name=name,
        version=version,
        scenario="class-incremental",
        num_classes=num_classes,
        num_experiences=len(tasks),
        class_order=tuple(order),
        class_names=tuple(class_names[c] for c in order),
    )
    return Stream(
        info=info,
        experiences=experiences,
        test_sets=tuple(view(test, labels) for labels in tasks),
        test_available_from=tuple(range(len(tasks))),
    )


def domain_incremental_stream(
    name: str,
    version: str,
    train_parts: Sequence[ImageSource],
    test: ImageSource,
    class_names: Sequence[str],
) -> Stream:
    """One experience per training source (a session or domain), all over the same classes.

    There is a single test set, evaluated after every experience; labels are the original ones.
    """
    num_classes = len(class_names)

    def view(source: ImageSource) -> DatasetView:
        return DatasetView(source, np.arange(len(source)), np.asarray(source.targets))

    experiences = []
    seen: set[int] = set()
    for t, source in enumerate(train_parts):
        classes = view(source).classes()
        experiences.append(
            Experience(
                index=t,
                train=view(source),
                classes=classes,
                new_classes=tuple(c for c in classes if c not in seen),
                num_seen_classes=num_classes,
            )
        )
        seen.update(classes)
    info = StreamInfo(
        name=name,
        version=version,
        scenario="domain-incremental",
        num_classes=num_classes,
        num_experiences=len(experiences),
        class_order=tuple(range(num_classes)),
        class_names=tuple(class_names),
    )
    return Stream(info, tuple(experiences), test_sets=(view(test),), test_available_from=(0,))

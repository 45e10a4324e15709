"""Plug-ins and custom streams are checked where they meet the harness (issue 22): bad registered
names, streams whose labels or test sets cannot be scored, and strategies whose scores are not
finite all end in one CilbenchError naming what is wrong, before anything is written."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cilbench.api import STRATEGIES, register_strategy
from cilbench.core.errors import CilbenchError
from cilbench.core.registry import Registry
from cilbench.data.sources import ArraySource, DatasetView
from cilbench.data.streams import ClassIncrementalOptions, Stream, class_incremental_stream
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec
from cilbench.strategies.nmc import NMC
from cilbench.testing import synthetic_stream

NAMES = ("a", "b", "c", "d")


def _custom(targets: list[int], test_targets: list[int] | None = None) -> Stream:
    """A 2-experience stream over 4 named classes from 8x8 grey images with `targets`."""

    def source(labels: list[int], name: str) -> ArraySource:
        images = np.random.default_rng(0).integers(0, 255, (len(labels), 8, 8), dtype=np.uint8)
        return ArraySource(images, np.array(labels), name)

    test = test_targets if test_targets is not None else [0, 1, 2, 3]
    options = ClassIncrementalOptions(init_classes=0, increment=2, class_order="natural")
    return class_incremental_stream(
        "custom", "1", source(targets, "train"), source(test, "test"), NAMES, options
    )


def _relabelled(stream: Stream, t: int, labels: np.ndarray) -> Stream:
    experiences = list(stream.experiences)
    train = experiences[t].train
    experiences[t] = dataclasses.replace(
        experiences[t], train=DatasetView(train.source, train.indices, labels)
    )
    return dataclasses.replace(stream, experiences=tuple(experiences))


def _gap() -> Stream:  # experience 1 uses labels 3 only: label 2 never appears
    stream = synthetic_stream(num_classes=4, increment=2)
    return _relabelled(stream, 1, np.full(len(stream.experiences[1].train), 3))


def _empty() -> Stream:
    stream = synthetic_stream(num_classes=4, increment=2)
    return dataclasses.replace(stream, experiences=(), test_sets=(), test_available_from=())


def _run(stream: Stream | Callable[[], Stream], tmp_path: Path, strategy: str = "nmc") -> None:
    built = stream() if callable(stream) else stream
    run(RunSpec(strategy=strategy, stream=built, backbone="tiny-vit-random", out_dir=tmp_path))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (lambda: Registry("strategy").register("../x"), "names must be kebab-case"),
        (lambda: Registry("strategy").register("a/b"), "names must be kebab-case"),
        (lambda: Registry("stream").register("My_Stream"), "'My_Stream'"),
        (lambda: Registry("stream").register(""), "names must be kebab-case"),
        (lambda: _custom([0, 1, 2, 7]), r"labels \[7\] are outside 0..3"),
        (lambda: _custom([0, 1, 2, -1]), r"labels \[-1\] are outside 0..3"),
        (lambda p: _run(_custom([0, 1, 2, 3], [0, 1]), p), "test set 1 is empty"),
        (lambda p: _run(_gap, p), "not contiguous; no training image has label.s. \\[2\\]"),
        (lambda p: _run(_empty, p), "has no experiences"),
        (lambda: ArraySource(np.zeros((2, 4, 4, 5), np.uint8), np.zeros(2), "x"), "5 channels"),
    ],
)
def test_bad_plugins_and_streams_are_refused_at_the_boundary(
    tmp_path: Path, case: Callable[..., object], message: str
):
    with pytest.raises(CilbenchError, match=message):
        case(tmp_path) if case.__code__.co_argcount else case()
    assert not list(tmp_path.iterdir())  # nothing was written


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_grey_and_alpha_arrays_load_as_rgb(channels: int):
    images = np.arange(2 * 4 * 4 * channels, dtype=np.uint8).reshape(2, 4, 4, channels)
    source = ArraySource(images, np.zeros(2), "x")
    rgb = images[..., :3] if channels == 4 else np.repeat(images[..., :1], 3, axis=-1)
    assert torch.equal(source.load(1), torch.from_numpy(rgb[1]).permute(2, 0, 1))
    assert torch.equal(
        source.load_many(np.array([0, 1])), torch.from_numpy(rgb).permute(0, 3, 1, 2)
    )


@pytest.mark.parametrize(("fill", "what"), [(float("nan"), "NaN"), (-float("inf"), "all -inf")])
def test_non_finite_scores_name_the_strategy_and_experience(tmp_path: Path, fill: float, what: str):
    @register_strategy("broken-scores")
    class BrokenScores(NMC):
        def predict_features(self, features: torch.Tensor) -> torch.Tensor:
            return torch.full_like(super().predict_features(features), fill)

    try:
        with pytest.raises(
            CilbenchError, match=f"BrokenScores returned scores with .*{what}.*after experience 0"
        ):
            _run(synthetic_stream(num_classes=4, increment=2), tmp_path, "broken-scores")
    finally:
        STRATEGIES.unregister("broken-scores")


@pytest.mark.parametrize("when", ["train_experience", "predict_features"])
def test_a_strategy_that_changes_the_frozen_backbone_cannot_poison_the_cache(
    tmp_path: Path, when: str
):
    """Before: the run finished and later features were cached under the pristine backbone's key;
    a plain run then read them (0 images forwarded) and scored far lower."""

    def spoil(backbone) -> None:  # type: ignore[no-untyped-def]
        if when == "train_experience":  # in place
            with torch.inference_mode():
                for parameter in backbone.model.parameters():
                    parameter.mul_(-3.0)
        else:  # tensors replaced
            for parameter in backbone.model.parameters():
                parameter.data = parameter.data.clone() * -3.0

    @register_strategy("backbone-spoiler")
    class Spoiler(NMC):
        def train_experience(self, experience) -> None:  # type: ignore[no-untyped-def]
            super().train_experience(experience)
            if when == "train_experience":
                spoil(self.backbone)

        def predict_features(self, features: torch.Tensor) -> torch.Tensor:
            if when == "predict_features" and not getattr(self, "spoiled", False):
                self.spoiled = True
                spoil(self.backbone)
            return super().predict_features(features)

    stream = synthetic_stream(num_classes=6, increment=2)
    spec = {"stream": stream, "backbone": "tiny-vit-random", "cache_dir": tmp_path / "cache"}
    try:
        with pytest.raises(CilbenchError, match="modified by strategy 'backbone-spoiler'"):
            run(RunSpec(strategy="backbone-spoiler", out_dir=tmp_path / "a", **spec))
    finally:
        STRATEGIES.unregister("backbone-spoiler")
    cached = run(RunSpec(strategy="nmc", out_dir=tmp_path / "b", **spec))
    fresh = run(RunSpec(strategy="nmc", out_dir=tmp_path / "c", **{**spec, "cache_dir": None}))
    assert cached.accuracy_matrix == fresh.accuracy_matrix


SHARED = torch.arange(6.0)
STATES: list[tuple[str, object, str]] = [
    ("numpy array", {"w": np.ones((2, 3), np.float32)}, ""),
    ("numpy scalar", {"n": np.int64(3)}, ""),
    ("one tensor twice", {"a": SHARED, "b": SHARED}, ""),
    ("a view of another", {"a": SHARED, "b": SHARED[:2]}, ""),
    ("a list", {"w": [1.0, 2.0]}, "entry 'w' is a list"),
    ("None", {"w": None}, "entry 'w' is a NoneType"),
    ("numpy strings", {"w": np.array(["x"])}, "entry 'w' is a ndarray"),
    ("an int name", {3: torch.zeros(1)}, "entry 3 is not named by a string"),
    ("not a mapping", [torch.zeros(1)], "returned list; expected a mapping"),
]


@pytest.mark.parametrize(("case", "state", "message"), STATES, ids=[s[0] for s in STATES])
def test_state_dicts_are_converted_or_refused(tmp_path: Path, case, state, message) -> None:  # type: ignore[no-untyped-def]
    """Before: numpy arrays and shared tensors ended in safetensors tracebacks at the first
    checkpoint; lists and None in AttributeErrors."""
    from cilbench.engine.checkpoint import load_checkpoint, save_checkpoint
    from cilbench.engine.plugin_checks import StrategyOutputError, checked_state

    if message:
        with pytest.raises(StrategyOutputError, match=f"Strategy odd's state_dict.* {message}"):
            checked_state(state, "odd")
        return
    save_checkpoint(tmp_path / "c.safetensors", checked_state(state, "odd"), "{}")
    loaded, _ = load_checkpoint(tmp_path / "c.safetensors")
    assert {k: torch.as_tensor(np.asarray(v)).tolist() for k, v in state.items()} == {
        k: v.tolist() for k, v in loaded.items()
    }


REPORTS: list[tuple[str, object, object]] = [
    ("numpy scalar", {"x": np.float32(0.5), "n": np.int64(2)}, {"x": 0.5, "n": 2}),
    ("numpy array and tensor", {"a": np.arange(2), "t": torch.ones(2)}, {"a": [0, 1], "t": [1, 1]}),
    (
        "NaN",
        {"loss": float("nan"), "deep": {"x": [np.float64("inf")]}},
        {"loss": None, "deep": {"x": [None]}},
    ),
    ("int key", {1: "a"}, {"1": "a"}),
    ("a set", {"s": {1}}, "holds a set at report.s"),
    ("an object", {"o": object()}, "holds a object at report.o"),
    ("not a mapping", [1], "returned list; expected a mapping"),
]


@pytest.mark.parametrize(("case", "report", "expected"), REPORTS, ids=[r[0] for r in REPORTS])
def test_reports_are_converted_or_refused(tmp_path: Path, case, report, expected, caplog) -> None:  # type: ignore[no-untyped-def]
    """Before: numpy scalars ended in 'Object of type float32 is not JSON serializable' after
    training; NaN was written as `NaN`, which is not JSON."""
    import json

    @register_strategy("odd-report")
    class OddReport(NMC):
        def report(self):  # type: ignore[no-untyped-def]
            return report

    stream = synthetic_stream(num_classes=4, increment=2)
    spec = RunSpec(
        strategy="odd-report", stream=stream, backbone="tiny-vit-random", out_dir=tmp_path
    )
    try:
        if isinstance(expected, str):
            with pytest.raises(CilbenchError, match=f"Strategy odd-report's report.* {expected}"):
                run(spec)
            return
        result = run(spec)
    finally:
        STRATEGIES.unregister("odd-report")
    assert result.strategy_report == expected
    stored = json.loads((tmp_path / result.run_id / "result.json").read_text(), parse_constant=None)
    assert stored["strategy_report"] == expected
    assert ("stored as null" in caplog.text) == (case == "NaN")

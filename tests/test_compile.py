"""`--compile`: compiled frozen extraction and training give the eager results, and the run id
does not change (the flag is recorded, not hashed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from cilbench.backbones.model import create_backbone
from cilbench.core.callbacks import RunCallback
from cilbench.core.devices import compiled
from cilbench.core.results import load_result
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec, same_run
from cilbench.engine.sweep import sweep


def test_compiled_is_the_function_itself_when_off() -> None:
    def function(x: torch.Tensor) -> torch.Tensor:
        return x

    assert compiled(function, False) is function
    assert compiled(function, True) is not function


@pytest.mark.slow
def test_compiled_extraction_equals_eager_on_the_tiny_backbone() -> None:
    images = torch.rand(3, 3, 32, 32)
    eager = create_backbone("tiny-vit-random", image_size=32)
    fast = create_backbone("tiny-vit-random", image_size=32, compile=True)
    with torch.inference_mode():
        torch.testing.assert_close(fast.forward_features(images), eager.forward_features(images))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["nmc", "finetune"])
def test_a_compiled_run_equals_the_eager_run(strategy: str, tmp_path: Path) -> None:
    """nmc: compiled extraction only; finetune: the compiled training step as well."""
    overrides = {"stream.num_classes": "4", "stream.train_per_class": "6"}
    results = [
        run(
            RunSpec(
                strategy=strategy,
                stream="synthetic",
                overrides=overrides,
                cache_dir=None,
                out_dir=tmp_path / str(flag),
                compile=flag,
            )
        )
        for flag in (False, True)
    ]
    eager, fast = results
    assert fast.config["compile"] is True and eager.config["compile"] is False
    assert fast.run_id == eager.run_id
    for ours, theirs in zip(fast.accuracy_matrix, eager.accuracy_matrix, strict=True):
        assert [a is None for a in ours] == [a is None for a in theirs]
        assert [a for a in ours if a is not None] == pytest.approx(
            [a for a in theirs if a is not None], abs=1e-6
        )


class _Killed(Exception):
    pass


class _KillAfterFirstExperience(RunCallback):
    def on_experience_end(self, experience, accuracies) -> None:  # type: ignore[no-untyped-def]
        raise _Killed


def test_switching_compile_keeps_finished_runs_and_continues_checkpoints(tmp_path: Path) -> None:
    """`compile` changes how a run computes, not what: sweep and --resume treat it as the same
    run, and the result records the setting of the process that finished it."""
    base = RunSpec(
        strategy="nmc",
        stream="synthetic",
        overrides={"stream.num_classes": "4", "stream.train_per_class": "6"},
        cache_dir=None,
        out_dir=tmp_path,
    )
    finished, interrupted = base, dataclasses.replace(base, seed=1)
    (done,) = sweep([finished])
    with pytest.raises(_Killed):
        run(interrupted, callbacks=[_KillAfterFirstExperience()])

    compiled_specs = [dataclasses.replace(s, compile=True) for s in (finished, interrupted)]
    outcomes = {o.spec.seed: o for o in sweep(compiled_specs)}

    assert {seed: o.status for seed, o in outcomes.items()} == {0: "skipped", 1: "resumed"}
    resumed = load_result(outcomes[1].result_path)
    assert resumed.complete and resumed.config["compile"] is True
    assert load_result(done.result_path).config["compile"] is False


def test_only_compile_is_ignored_when_comparing_runs() -> None:
    record = {"strategy": "nmc", "seed": 0, "device": "cpu", "compile": False}
    assert same_run(record, {**record, "compile": True})
    assert not same_run(record, {**record, "device": "cuda"})
    assert not same_run(record, {**record, "seed": 1})

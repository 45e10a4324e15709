"""The run record round-trips: `RunSpec.from_record` of a result's config resolves to its run id."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from cilbench.api import STRATEGIES, STREAMS
from cilbench.core.errors import ConfigError
from cilbench.core.results import load_result
from cilbench.data.augment import AUGMENTATION_PRESETS
from cilbench.engine.recipes import RECIPE_KEY, recipes_of
from cilbench.engine.spec import (
    LATER_STRATEGY_FIELDS,
    RunSpec,
    identity_of,
    resolve_run,
    run_id_of,
    run_record,
    same_run,
)

BOARDS = Path(__file__).resolve().parents[1] / "leaderboards"
BACKBONE_SETTINGS = [{}, {"backbone.image_size": "48", "backbone.normalization": "imagenet"}]
FINGERPRINTS = ["train:0123", "test:4567"]  # stands in for a built stream's data


def _record_and_id(spec: RunSpec, backbone_tag: str | None = None) -> tuple[dict, str]:
    """The record and run id `prepare` would give, without building the stream or backbone."""
    settings = resolve_run(spec)
    assert isinstance(spec.stream, str)
    tag = backbone_tag or str(settings.backbone)
    record = run_record(spec, settings, spec.stream, tag)
    return record, run_id_of(record, FINGERPRINTS, tag)


def _specs_of(strategy: str) -> list[RunSpec]:
    """One spec per (stream recipe, augmentation preset, backbone settings) of `strategy`."""
    cls = STRATEGIES.get(strategy)
    choices: list[tuple[str, dict]] = [("synthetic", {})]
    for stream in (s for s in getattr(cls, "recipes", {}) if s in STREAMS):
        for recipe in recipes_of(cls, stream):
            picks = {RECIPE_KEY: recipe.name}
            if cls.variant_key and cls.variant_key in recipe.settings:
                picks[cls.variant_key] = str(recipe.settings[cls.variant_key])
            choices.append((stream, picks))
    specs = []
    for (stream, picks), preset, backbone in itertools.product(
        choices, AUGMENTATION_PRESETS, BACKBONE_SETTINGS
    ):
        overrides = {**picks, "augment.preset": preset, **backbone}
        specs.append(RunSpec(strategy=strategy, stream=stream, overrides=overrides, seed=3))
    return specs


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_replaying_a_record_resolves_to_the_same_run(strategy):
    for spec in _specs_of(strategy):
        record, run_id = _record_and_id(spec)
        replay = RunSpec.from_record(record)
        assert _record_and_id(replay) == (record, run_id), spec.overrides


def test_a_single_augmentation_field_survives_the_round_trip():
    spec = RunSpec(
        strategy="finetune",
        stream="synthetic",
        overrides={"augment.preset": "flip-only", "augment.scale": "0.3,1", "epochs": "2"},
    )
    record, run_id = _record_and_id(spec)
    assert record["augmentation"]["preset"] == "flip-only"
    assert record["augmentation"]["scale"] == [0.3, 1.0]
    assert _record_and_id(RunSpec.from_record(record)) == (record, run_id)
    default, _ = _record_and_id(RunSpec(strategy="finetune", stream="synthetic"))
    assert _record_and_id(RunSpec.from_record(default))[1] != run_id


@pytest.mark.parametrize(
    "path", sorted(BOARDS.glob("*/*.json")), ids=lambda p: f"{p.parent.name}/{p.stem}"
)
def test_every_published_result_resolves_to_its_own_run_id(path):
    stored = load_result(path)
    spec = RunSpec.from_record(stored.config)
    settings = resolve_run(spec)
    tag = stored.backbone["tag"]
    record = run_record(spec, settings, stored.config["stream"], tag)
    assert run_id_of(record, stored.stream["sources"], tag) == stored.run_id
    assert identity_of(record) == identity_of(stored.config)
    assert record["precision"] == stored.config.get("precision", "fp32") == "fp32"


def test_a_key_added_later_changes_the_run_id_only_away_from_its_old_value():
    """Older results hold no `precision` (they ran at fp32): fp32 keeps their run id, bf16 not."""
    spec = RunSpec(strategy="nmc", stream="synthetic")
    record, run_id = _record_and_id(spec)
    assert record["precision"] == "fp32" and record["device"] == "cpu"
    older = {k: v for k, v in record.items() if k not in ("precision", "compile")}
    assert run_id_of(older, FINGERPRINTS, "t") == run_id_of(record, FINGERPRINTS, "t")
    assert RunSpec.from_record(older).precision == "fp32"
    bf16, bf16_id = _record_and_id(dataclasses.replace(spec, precision="bf16"))
    assert bf16["precision"] == "bf16" and bf16_id != run_id
    assert _record_and_id(RunSpec.from_record(bf16)) == (bf16, bf16_id)
    compiled, compiled_id = _record_and_id(dataclasses.replace(spec, compile=True))
    assert compiled["compile"] is True and compiled_id == run_id
    on_cuda = {**record, "device": "cuda"}
    assert run_id_of(on_cuda, FINGERPRINTS, "t") == run_id_of(record, FINGERPRINTS, "t")


def test_a_wrong_precision_is_refused_naming_what_is_allowed():
    with pytest.raises(ConfigError, match=r"precision.*'auto', 'fp32', 'bf16', 'fp16'"):
        resolve_run(RunSpec(stream="synthetic", precision="fp8"))


def test_run_from_replays_a_run_with_a_non_default_augmentation(tmp_path):
    """The issue's example: a finetune run with `augment.preset=flip-only`, replayed with --from."""
    from typer.testing import CliRunner

    from cilbench.cli.app import app

    first = [
        "run", "--strategy", "finetune", "--stream", "synthetic", "--set",
        "augment.preset=flip-only", "--out", str(tmp_path / "r1"), "--no-cache",
    ]  # fmt: skip
    assert CliRunner().invoke(app, first).exit_code == 0
    (result,) = (tmp_path / "r1").glob("*/*/result.json")
    replay = ["run", "--from", str(result), "--out", str(tmp_path / "r2"), "--no-cache"]
    outcome = CliRunner().invoke(app, replay)
    assert outcome.exit_code == 0, outcome.output
    assert "metrics match the stored result exactly" in outcome.output
    refused = CliRunner().invoke(app, [*replay, "--seed", "1"])
    assert refused.exit_code == 2 and "--seed is not used with --from" in refused.output


@pytest.mark.parametrize("strategy", sorted(LATER_STRATEGY_FIELDS))
def test_a_strategy_field_added_later_changes_the_run_id_only_away_from_its_old_value(strategy):
    """Results of the prompt methods predate their LAMDA-PILOT settings: a record without those
    fields has the run id of one holding them at their old values; another value gets a new id."""
    record, _ = _record_and_id(RunSpec(strategy=strategy, stream="synthetic"))
    later = LATER_STRATEGY_FIELDS[strategy]
    assert all(record["strategy_config"][k] == v for k, v in later.items())
    config = {k: v for k, v in record["strategy_config"].items() if k not in later}
    older = {**record, "strategy_config": config}
    assert run_id_of(older, FINGERPRINTS, "t") == run_id_of(record, FINGERPRINTS, "t")
    assert same_run(older, record)
    field = next(iter(later))
    changed = {**record, "strategy_config": {**record["strategy_config"], field: "other"}}
    assert run_id_of(changed, FINGERPRINTS, "t") != run_id_of(record, FINGERPRINTS, "t")
    assert not same_run(changed, record)

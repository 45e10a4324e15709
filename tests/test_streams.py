"""Stream builders on fake on-disk data in the real formats: protocols, errors, data commands."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from stream_fixtures import (
    WNIDS,
    accept_cifar_fixture,
    write_cifar100,
    write_core50,
    write_cub,
    write_fashion_mnist,
    write_imagenet_a,
    write_imagenet_r,
    write_packaged,
    write_vtab,
)
from typer.testing import CliRunner

from cilbench.api import STRATEGIES, STREAMS
from cilbench.benchmarks import _splits, core50, imagenet_r, vtab
from cilbench.cli.app import app
from cilbench.core.config import resolve
from cilbench.core.errors import DataError
from cilbench.data.streams import class_order
from cilbench.engine.evaluation import evaluate
from cilbench.features import FeatureStore
from cilbench.testing import check_stream, context_for, tiny_backbone

WRITERS = {
    "split-cifar100": write_cifar100,
    "split-imagenet-r": write_imagenet_r,
    "core50": write_core50,
    "vtab": write_vtab,
    "split-fashion-mnist": write_fashion_mnist,
    "split-cub200": lambda root: write_cub(root, layout="packaged"),
    "split-imagenet-a": lambda root: write_imagenet_a(root, layout="split"),
    "split-omnibenchmark": lambda root: write_packaged(root, "omnibenchmark", 300),
    "split-objectnet": lambda root: write_packaged(root, "objectnet", 200),
    "split-cars196": lambda root: write_packaged(root, "cars196", 196, test_name="val"),
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One fixture folder per stream, written once (tests that damage data make their own)."""
    base = tmp_path_factory.mktemp("data")
    found = {name: write(base / name) for name, write in WRITERS.items()}
    found["imagenet-r-split"] = write_imagenet_r(base / "imagenet-r-split", layout="split")
    found["imagenet-a-raw"] = write_imagenet_a(base / "imagenet-a-raw")
    found["cub-official"] = write_cub(base / "cub-official")
    return found


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CILBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CILBENCH_DATA", raising=False)
    monkeypatch.chdir(tmp_path)


def _builder(name: str, **options):  # type: ignore[no-untyped-def]
    return resolve(STREAMS.get(name), options)


def _text(output: str) -> str:
    return " ".join(output.split())


# --- conformance over the registry ------------------------------------------------------------


FIXTURE_OPTIONS = {
    "split-cifar100": {"verify_md5": False},  # fixtures are not the official files
    "split-imagenet-r": {"split": "seeded"},  # the raw fixture; packaged: imagenet-r-split
}


@pytest.mark.parametrize("name", STREAMS.names())
def test_every_stream_passes_check_stream(name: str, roots: dict[str, Path]) -> None:
    check_stream(name, roots.get(name), **FIXTURE_OPTIONS.get(name, {}))


@pytest.mark.parametrize(
    "name, options",
    [
        ("core50", {"scenario": "nc"}),
        ("split-cifar100", {"init_classes": 50, "increment": 10, "class_order": "icarl"}),
        ("split-cifar100", {"increment": 5, "class_order": "natural"}),
        ("split-imagenet-r", {"class_order": "seed:3"}),
    ],
)
def test_protocol_variants_pass_check_stream(name, options, roots) -> None:  # type: ignore[no-untyped-def]
    check_stream(name, roots[name], **options, **FIXTURE_OPTIONS.get(name, {}))


# --- class orders -----------------------------------------------------------------------------


def test_pycil_orders_match_the_published_first_classes() -> None:
    assert class_order("pycil-1993", 100)[:5] == [68, 56, 78, 8, 23]
    assert class_order("pycil-1993", 200)[:5] == [168, 136, 51, 9, 183]


def test_imagenet_r_order_is_pycil_over_sorted_wnids(roots) -> None:  # type: ignore[no-untyped-def]
    stream = _builder("split-imagenet-r", split="seeded").build(roots["split-imagenet-r"])
    assert stream.info.class_order[:5] == (168, 136, 51, 9, 183)
    assert stream.info.class_names[:2] == (WNIDS[168], WNIDS[136])
    first = stream.experiences[0]
    assert len(first.classes) == 20 and len(stream) == 10
    source = first.train.source
    for index, label in zip(first.train.indices, first.train.labels):
        wnid = source.files[index].split("/")[0]
        assert stream.info.class_names[label] == wnid


def test_cifar_icarl_order_and_pixels_match_the_pickles(roots) -> None:  # type: ignore[no-untyped-def]
    root = roots["split-cifar100"]
    stream = _builder("split-cifar100", class_order="icarl", verify_md5=False).build(root)
    assert stream.info.class_order[:4] == (87, 0, 52, 58)
    assert stream.info.class_names[0] == "fine_87"
    with (root / "cifar-100-python" / "train").open("rb") as handle:
        raw = pickle.load(handle, encoding="latin1")
    first = stream.experiences[0].train
    for index, label in zip(first.indices[:5], first.labels[:5]):
        expected = raw["data"][index].reshape(3, 32, 32)
        assert torch.equal(first.source.load(int(index)), torch.from_numpy(expected))
        assert stream.info.class_order[label] == raw["fine_labels"][index]


# --- ImageNet-R split manifest ----------------------------------------------------------------


def test_raw_split_is_stratified_and_counts_match_the_manifest(roots) -> None:  # type: ignore[no-untyped-def]
    root = roots["split-imagenet-r"]
    _builder("split-imagenet-r", split="seeded").build(root)
    manifest = json.loads((root / "imagenet-r-split-v1-seed1993.json").read_text())
    assert manifest["version"] == 1 and len(manifest["sha256"]) == 64
    train, test = set(manifest["train"]), set(manifest["test"])
    assert not train & test and len(train | test) == len(WNIDS) * 5
    per_class = {w: sum(f.startswith(w + "/") for f in test) for w in WNIDS}
    assert set(per_class.values()) == {1}  # round(0.2 * 5) per class
    counts = {"train": len(train), "test": len(test)}
    check_stream("split-imagenet-r", root, split="seeded", counts=counts)


def test_split_is_the_same_on_another_machine(roots, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "elsewhere"
    shutil.copytree(roots["split-imagenet-r"] / "imagenet-r", other / "imagenet-r")
    _builder("split-imagenet-r", split="seeded").build(roots["split-imagenet-r"])
    _builder("split-imagenet-r", split="seeded").build(other)
    name = "imagenet-r-split-v1-seed1993.json"
    mine = json.loads((roots["split-imagenet-r"] / name).read_text())
    theirs = json.loads((other / name).read_text())
    assert mine["sha256"] == theirs["sha256"] and mine["test"] == theirs["test"]
    tree = imagenet_r.SplitImagenetR().scan(other / "imagenet-r")
    reseeded = _splits.make_split(tree, "imagenet-r", 7, 0.2)
    assert reseeded["test"] != mine["test"]


def test_split_manifest_guards_against_edits_and_changed_folders(tmp_path: Path) -> None:
    root = write_imagenet_r(tmp_path / "d")
    builder = _builder("split-imagenet-r", split="seeded")
    builder.build(root)
    path = root / "imagenet-r-split-v1-seed1993.json"
    manifest = json.loads(path.read_text())
    manifest["test"] = manifest["test"][1:]
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="sha256"):
        builder.build(root)
    path.unlink()
    builder.build(root)
    (root / "imagenet-r" / WNIDS[0] / "extra.jpg").write_bytes(
        (root / "imagenet-r" / WNIDS[0] / f"{WNIDS[0]}_0.jpg").read_bytes()
    )
    with pytest.raises(DataError, match="changed since the split manifest"):
        builder.build(root)


def test_pre_split_layout_uses_its_folders(roots) -> None:  # type: ignore[no-untyped-def]
    stream = check_stream(
        "split-imagenet-r", roots["imagenet-r-split"], counts={"train": 800, "test": 200}
    )
    assert stream.info.class_names[0] == WNIDS[168]


# --- CoRe50 -----------------------------------------------------------------------------------


def test_core50_ni_is_eight_sessions_of_all_objects(roots) -> None:  # type: ignore[no-untyped-def]
    stream = check_stream("core50", roots["core50"])
    assert stream.info.scenario == "domain-incremental" and len(stream) == 8
    assert stream.test_available_from == (0,)
    sessions = []
    for experience in stream:
        files = {experience.train.source.files[i] for i in experience.train.indices}
        sessions.append({f.split("/")[0] for f in files})
        assert experience.classes == tuple(range(50)) and experience.num_seen_classes == 50
        assert experience.new_classes == (tuple(range(50)) if experience.index == 0 else ())
    assert sessions == [{f"s{s}"} for s in core50.TRAIN_SESSIONS]
    test_files = stream.test_sets[0].source.files
    assert {f.split("/")[0] for f in test_files} == {"s3", "s7", "s10"}
    assert len(test_files) == 3 * 50 * 2


def test_core50_nc_follows_the_official_batches(roots) -> None:  # type: ignore[no-untyped-def]
    stream = _builder("core50", scenario="nc").build(roots["core50"])
    assert [len(e.classes) for e in stream] == [10] + [5] * 8
    order = np.random.default_rng(100).permutation(50).tolist()  # how the fixture drew run 0
    assert list(stream.info.class_order) == order
    assert stream.info.class_names[0] == core50.CLASS_NAMES[order[0]]
    for experience in stream:
        view = experience.train
        for index, label in zip(view.indices, view.labels):
            assert order[label] == core50.object_label(view.source.files[index])


def test_core50_nc_needs_its_file_lists(roots) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match=r"(?s)run3.*cilbench data fetch core50"):
        _builder("core50", scenario="nc", run=3).build(roots["core50"])


def test_frozen_feature_strategies_run_on_core50_ni(tmp_path: Path) -> None:
    """Experiences without new classes go through every frozen-feature strategy and the
    evaluator (one shared feature store: the frames are forwarded once for all strategies)."""
    stream = _builder("core50").build(write_core50(tmp_path / "d", frames=1))
    backbone = tiny_backbone()
    store = FeatureStore(backbone, cache_dir=None)
    names = [
        n
        for n in STRATEGIES.names()
        if STRATEGIES.get(n).predicts_from_features
        and not STRATEGIES.get(n).class_incremental_only  # core50 ni is domain-incremental
    ]
    assert {"nmc", "simplecil"} <= set(names)
    for name in names:
        cls = STRATEGIES.get(name)
        strategy = cls(resolve(cls.Config, cls.recipes.get("synthetic", {})))
        strategy.setup(context_for(backbone, stream, store))
        strategy.before_stream()
        rows = []
        for experience in stream:
            strategy.train_experience(experience)
            rows.append(evaluate(strategy, stream, experience.index, store))
        assert all(len(row) == 1 and 0 <= row[0] <= 100 for row in rows), name
    assert store.images_forwarded == 11 * 50


# --- VTAB -------------------------------------------------------------------------------------


def test_vtab_keeps_the_dataset_order(roots) -> None:  # type: ignore[no-untyped-def]
    stream = _builder("vtab").build(roots["vtab"])
    assert stream.info.class_order == tuple(range(50))
    assert stream.info.class_names == vtab.CLASS_NAMES
    assert [e.classes for e in stream] == [tuple(range(10 * t, 10 * t + 10)) for t in range(5)]


def test_vtab_warns_about_unexpected_folder_names(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    root = write_vtab(tmp_path / "d")
    for split in ("train", "test"):
        for folder in sorted((root / "vtab" / split).iterdir()):
            folder.rename(folder.with_name(str(int(folder.name))))  # "0".."49": sorts 0, 1, 10
    stream = _builder("vtab").build(root)
    assert "do not match the expected classes" in caplog.text
    assert stream.info.class_names[:3] == ("0", "1", "10")


def test_vtab_requires_fifty_classes(tmp_path: Path) -> None:
    root = write_vtab(tmp_path / "d")
    shutil.rmtree(root / "vtab" / "train" / "49")
    with pytest.raises(DataError, match="49 class folders; expected 50"):
        _builder("vtab").build(root)


# --- errors -----------------------------------------------------------------------------------


def test_run_without_data_prints_the_fetch_command() -> None:
    result = CliRunner().invoke(
        app, ["run", "--strategy", "simplecil", "--stream", "split-imagenet-r"]
    )
    assert result.exit_code == 2
    assert "cilbench data fetch split-imagenet-r --root data" in _text(result.output)
    assert "Traceback" not in result.output


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    root = write_imagenet_r(tmp_path / "d", layout="split")
    stream = _builder("split-imagenet-r").build(root)
    view = stream.experiences[0].train
    path = view.source.root / view.source.files[view.indices[0]]
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match=str(path)):
        view.source.load(int(view.indices[0]))


def test_damaged_cifar_pickle_is_reported(tmp_path: Path) -> None:
    root = write_cifar100(tmp_path / "d")
    path = root / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="truncated, damaged") as error:
        _builder("split-cifar100", verify_md5=False).build(root)
    assert f"cilbench data fetch split-cifar100 --root {root}" in str(error.value)
    with pytest.raises(DataError, match="differ from the official release") as error:
        _builder("split-cifar100").build(root)
    assert str(path) in str(error.value) and "verify_md5=false" in str(error.value)


# --- cilbench data check ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "split-cifar100", "split-imagenet-r", "imagenet-r-split", "core50", "vtab",
        "split-cub200", "cub-official", "split-imagenet-a", "imagenet-a-raw",
        "split-omnibenchmark", "split-objectnet", "split-cars196",
    ],
)  # fmt: skip
def test_data_check_passes_on_fixtures(name: str, roots, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if name == "split-cifar100":
        accept_cifar_fixture(monkeypatch, roots[name])
    stream = {"imagenet-r-split": "split-imagenet-r", "cub-official": "split-cub200"}.get(
        name, "split-imagenet-a" if name == "imagenet-a-raw" else name
    )
    result = CliRunner().invoke(app, ["data", "check", stream, "--root", str(roots[name])])
    assert result.exit_code == 0, result.output
    assert "all checks passed" in result.output
    assert "FAIL" not in result.output


def _damage_truncate(root: Path) -> str:
    path = root / "vtab" / "train" / "07" / "img_1.jpg"
    path.write_bytes(path.read_bytes()[:-10])
    return "train/07/img_1.jpg.*truncated"


def _damage_bytes(root: Path) -> str:
    path = root / "vtab" / "test" / "31" / "img_0.jpg"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    return "test/31/img_0.jpg.*checksum mismatch"


def _damage_folder(root: Path) -> str:
    shutil.rmtree(root / "vtab" / "test" / "12")
    return "Class folder .*test/12 is missing"


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_bytes, _damage_folder])
def test_data_check_names_the_problem(damage, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = write_vtab(tmp_path / "d")
    pattern = damage(root)
    result = CliRunner().invoke(app, ["data", "check", "vtab", "--root", str(root)])
    assert result.exit_code == 2
    assert re.search(pattern, _text(result.output)), result.output


def test_data_check_record_pins_an_existing_copy(tmp_path: Path) -> None:
    root = write_core50(tmp_path / "d", frames=1)
    (root / "core50" / "cilbench-checksums.json").unlink()
    runner = CliRunner()
    unpinned = runner.invoke(app, ["data", "check", "core50", "--root", str(root)])
    assert unpinned.exit_code == 0 and "no manifest" in unpinned.output
    pinned = runner.invoke(app, ["data", "check", "core50", "--root", str(root), "--record"])
    assert pinned.exit_code == 0 and "550 ok" in _text(pinned.output)


def test_data_commands_refuse_streams_without_files() -> None:
    result = CliRunner().invoke(app, ["data", "check", "synthetic"])
    assert result.exit_code == 2 and "no data files" in result.output


def test_vtab_fetch_explains_where_to_put_it() -> None:
    result = CliRunner().invoke(app, ["data", "fetch", "vtab", "--root", "somewhere"])
    assert result.exit_code == 0
    assert "somewhere/vtab" in _text(result.output) and "train/<class>" in result.output

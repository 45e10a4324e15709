"""The streams of issue 20 (CUB-200, ImageNet-A, OmniBenchmark, ObjectNet, Cars-196) on fixtures in
their real on-disk layouts, one test per layout and split, and `stream.split` in results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stream_fixtures import CUB_CLASSES, WNIDS, write_cub, write_imagenet_a, write_packaged
from typer.testing import CliRunner

from cilbench import RunSpec, run
from cilbench.api import STREAMS
from cilbench.boards.leaderboard import protocol_label
from cilbench.cli.app import app
from cilbench.core.config import resolve
from cilbench.core.errors import DataError
from cilbench.core.results import RunResult
from cilbench.testing import check_stream


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CILBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CILBENCH_DATA", raising=False)


def test_cub_official_layout_follows_train_test_split_txt(tmp_path: Path) -> None:
    root = write_cub(tmp_path / "d", layout="official")
    stream = check_stream(
        "split-cub200", root, split="official", counts={"train": 400, "test": 200}
    )
    assert len(stream) == 10 and [len(e.classes) for e in stream] == [20] * 10
    assert stream.info.class_names[0] == CUB_CLASSES[stream.info.class_order[0]]
    view = stream.experiences[0].train
    for index, label in zip(view.indices, view.labels):
        assert view.source.files[index].split("/")[0] == stream.info.class_names[label]
        assert view.source.files[index].endswith(("_0000.jpg", "_0001.jpg"))  # split flag 1
    test_files = stream.test_sets[-1].source.files
    assert all(f.endswith("_0002.jpg") for f in test_files)  # split flag 0


def test_cub_packaged_layout_is_the_default(tmp_path: Path) -> None:
    root = write_cub(tmp_path / "d", layout="packaged")
    stream = check_stream("split-cub200", root, counts={"train": 400, "test": 200})
    assert stream.info.class_order[:5] == (168, 136, 51, 9, 183)
    with pytest.raises(DataError, match="split=official"):
        resolve(STREAMS.get("split-cub200"), {}).build(write_cub(tmp_path / "o"))


def test_imagenet_a_packaged_and_seeded_splits(tmp_path: Path) -> None:
    packaged = write_imagenet_a(tmp_path / "p", layout="split")
    stream = check_stream("split-imagenet-a", packaged, counts={"train": 800, "test": 200})
    assert stream.info.class_names[0] == WNIDS[168]
    raw = write_imagenet_a(tmp_path / "r")
    with pytest.raises(DataError, match=r"--set stream\.split=seeded"):
        resolve(STREAMS.get("split-imagenet-a"), {}).build(raw)
    check_stream("split-imagenet-a", raw, split="seeded", counts={"train": 800, "test": 200})
    manifest = json.loads((raw / "imagenet-a-split-v1-seed1993.json").read_text())
    assert manifest["dataset"] == "imagenet-a" and len(manifest["test"]) == 200
    assert {f.split("/")[0] for f in manifest["test"]} == set(WNIDS)  # one per class


@pytest.mark.parametrize(
    "name, folder, classes, tasks, test_name",
    [
        ("split-omnibenchmark", "omnibenchmark", 300, [30] * 10, "test"),
        ("split-objectnet", "objectnet", 200, [20] * 10, "test"),
        ("split-cars196", "cars196", 196, [20] * 9 + [16], "val"),
        ("split-cars196", "cars196", 196, [20] * 9 + [16], "test"),
    ],
)
def test_packaged_streams(name, folder, classes, tasks, test_name, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = write_packaged(tmp_path / "d", folder, classes, test_name=test_name)
    stream = check_stream(name, root, counts={"train": 2 * classes, "test": classes})
    assert [len(e.classes) for e in stream] == tasks


def test_packaged_fetch_says_where_and_objectnet_names_its_licence() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["data", "fetch", "split-objectnet", "--root", "somewhere"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "objectnet.dev" in text and "somewhere/objectnet" in text
    result = runner.invoke(app, ["data", "fetch", "split-omnibenchmark", "--root", "x"])
    assert "LAMDA-PILOT" in result.output and "train/<class>" in result.output


def test_run_records_the_split_and_boards_show_it(tmp_path: Path) -> None:
    root = write_imagenet_a(tmp_path / "d", per_class=2)
    spec = RunSpec(
        strategy="nmc",
        stream="split-imagenet-a",
        backbone="tiny-vit-random",
        data_root=root,
        overrides={"stream.split": "seeded", "stream.increment": "100"},
        out_dir=tmp_path / "runs",
        cache_dir=None,
    )
    result = run(spec)
    assert result.config["stream_options"]["split"] == "seeded"
    assert isinstance(result, RunResult)
    assert protocol_label(result) == "B0-Inc100, pycil-1993, 2 tasks, split=seeded"

"""Odd inputs end in one clear error naming the value (issue 22, last group; partial).

Before: `ranpac --set ridges=` ended in `min() arg is an empty sequence` after training; a
repeated `--set` key silently kept the last value; `backbone.image_size=4` on a fixed-size ViT
ended in timm's AssertionError; SLCA on a class with one image in a covariance traceback;
`profile --synthetic-jpegs -5` ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cilbench.cli.app import app

RUN = ["run", "--stream", "synthetic", "--device", "cpu", "--set", "stream.num_classes=4"]
CASES = [
    (["--strategy", "ranpac", "--set", "ridges="], "'ridges' must be a non-empty list"),
    (
        ["--set", "stream.increment=1", "--set", "stream.increment=2"],
        "is given twice ('1', then '2')",
    ),
    (["--set", "backbone.image_size=4"], "takes 32 x 32 px inputs; backbone.image_size=4"),
    (["--set", "backbone.image_size=2048"], "backbone.image_size=2048 at batch size 128"),
    (
        ["--strategy", "slca", "--set", "stream.train_per_class=1"],
        "has 1 training image(s) in this experience; its covariance needs at least 2",
    ),
]
IDS = [
    "empty ridges",
    "repeated --set key",
    "image size of a fixed-size ViT",
    "attention memory of a huge image size",
    "one image a class",
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=IDS)
def test_odd_inputs_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, [*RUN, *args, "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in " ".join(result.stderr.replace("│", " ").split())
    assert not list(tmp_path.rglob("result.json"))


def test_a_negative_jpeg_count_is_refused() -> None:
    result = CliRunner().invoke(app, ["profile", "pipeline", "--synthetic-jpegs", "-5"])
    assert result.exit_code == 2
    assert "'--synthetic-jpegs' must be >= 0; got -5" in result.stderr


def test_a_repeated_run_writes_its_csv_events_once(tmp_path: Path) -> None:
    args = [*RUN, "--out", str(tmp_path), "--log", "csv", "--no-cache"]
    for extra in ([], ["--overwrite"]):
        assert CliRunner().invoke(app, [*args, *extra]).exit_code == 0
    (events,) = tmp_path.rglob("events.csv")
    rows = events.read_text().splitlines()
    assert rows[0] == "kind,experience,step,name,value"
    assert len(rows) == len(set(rows)), "a repeated run duplicated its rows"


def _write_idx(path: Path, array) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


def _damage(root: Path, case: str) -> None:
    """One kind of damage to the train split of a Fashion-MNIST fixture."""
    import numpy as np

    from cilbench.benchmarks.fashion_mnist import FILES

    labels, images = root / FILES["train_labels"], root / FILES["train_images"]
    if case == "counts":
        _write_idx(labels, np.zeros(3, np.uint8))
    elif case == "label 200":
        _write_idx(labels, np.full(40, 200, np.uint8))
    elif case == "2-d images":
        _write_idx(images, np.zeros((40, 784), np.uint8))
    elif case == "a class with no image":
        _write_idx(labels, np.repeat(np.arange(9, dtype=np.uint8), 5)[:40])
    elif case == "0-d file":
        labels.write_bytes(bytes([0, 0, 8, 0]))
    elif case == "corrupt gz":
        labels.unlink()
        (root / (FILES["train_labels"] + ".gz")).write_bytes(b"\x1f\x8b\x08\x00garbage")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("counts", "40 images but 3 labels"),
        ("label 200", "found labels up to 200"),
        ("2-d images", "expected (N, 28, 28) images"),
        ("a class with no image", "none of class(es) [8, 9]"),
        ("0-d file", "is not an IDX file of unsigned bytes"),
        ("corrupt gz", "cannot be read"),
    ],
)
def test_damaged_fashion_mnist_files_are_named(tmp_path: Path, case: str, message: str) -> None:
    """Before: tracebacks, and only "Aborted." for a corrupt .gz (click's reading of EOFError)."""
    from stream_fixtures import write_fashion_mnist

    root = write_fashion_mnist(tmp_path / "fm")
    _damage(root, case)
    args = [*RUN[:1], "--stream", "split-fashion-mnist", "--data-root", str(root)]
    result = CliRunner().invoke(app, [*args, "--backbone", "tiny-vit-random", "--no-cache"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())


def test_a_folder_where_the_result_file_belongs_is_named(tmp_path: Path) -> None:
    """Before: IsADirectoryError from os.replace, a traceback after the whole run."""
    args = [*RUN, "--out", str(tmp_path), "--no-cache"]
    assert CliRunner().invoke(app, args).exit_code == 0
    (result,) = tmp_path.rglob("result.json")
    result.unlink()
    result.mkdir()
    outcome = CliRunner().invoke(app, [*args, "--overwrite"])
    assert outcome.exit_code == 2
    assert "is a folder, where cilbench writes a file" in " ".join(outcome.stderr.split())


def test_an_ascii_terminal_prints_a_unicode_path(tmp_path: Path) -> None:
    """Before: UnicodeEncodeError once the run had finished (PYTHONIOENCODING=ascii)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "résultats"
    code = "from cilbench.cli.app import app; app()"
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    done = subprocess.run(
        [sys.executable, "-c", code, *RUN, "--out", str(out), "--no-cache"],
        capture_output=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr.decode()[-500:]
    assert b"r\\xe9sultats" in done.stdout


@pytest.mark.parametrize("suffix", [".safetensors", ".lock"])
def test_a_folder_in_place_of_a_cache_file_is_named(tmp_path: Path, suffix: str) -> None:
    """Before: IsADirectoryError tracebacks from the feature cache and from filelock."""
    args = [*RUN, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert CliRunner().invoke(app, args).exit_code == 0
    damaged = next((tmp_path / "cache").rglob(f"*{suffix}"))
    damaged.with_suffix(".safetensors").unlink()  # a cache miss, so the lock is needed too
    if suffix == ".lock":
        damaged.unlink()
    damaged.mkdir()
    outcome = CliRunner().invoke(app, [*args, "--overwrite"])
    assert outcome.exit_code == 2
    assert "A folder stands where cilbench keeps a file" in " ".join(outcome.stderr.split())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"out_dir": Path("/tmp/a\x00b")}, "'out_dir' holds a NUL byte"),
        ({"overrides": {1: "2"}}, "overrides keys are --set keys (text); got [1]"),
    ],
)
def test_python_api_values_the_command_line_cannot_pass(options: dict, message: str) -> None:
    """Before: ValueError('embedded null byte') and AttributeError on `int.partition`."""
    from cilbench.core.errors import ConfigError
    from cilbench.engine.spec import RunSpec, resolve_run

    with pytest.raises(ConfigError) as caught:
        resolve_run(RunSpec(stream="synthetic", **options))
    assert message in str(caught.value)

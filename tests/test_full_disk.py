"""Full disks for real (issue 22): a small tmpfs filled to the last byte, the file size limit
(`ulimit -f`), and the exact error safetensors raises, never a faked `OSError`.

Before: safetensors' `SafetensorError` ("No space left on device (os error 28)") escaped the
disk-full handling, so a full feature cache killed the run and a full `--out` ended in a
traceback; the decoded cache's memory map died of SIGBUS.
"""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors import SafetensorError
from stream_fixtures import write_imagenet_r
from typer.testing import CliRunner

from cilbench.cli.app import app
from cilbench.core.errors import DiskFullError
from cilbench.data.decoded_cache import DecodedSource
from cilbench.data.sources import FileSource
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec

SYNTHETIC = {"stream.num_classes": "8"}
CLI_RUN = ("run", "--stream", "synthetic", "--set", "stream.num_classes=8", "--device", "cpu")
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs with a folder made while there was room, then filled to the last byte."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        (mount / "folder").mkdir()
        with (mount / "filler").open("wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError:
                pass
        yield mount / "folder"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _spec(tmp_path: Path, **changes) -> RunSpec:  # type: ignore[no-untyped-def]
    settings = {
        "strategy": "nmc",
        "stream": "synthetic",
        "overrides": SYNTHETIC,
        "out_dir": tmp_path / "runs",
        "cache_dir": tmp_path / "cache",
        "device": "cpu",
    }
    return RunSpec(**{**settings, **changes})


def test_a_full_feature_cache_costs_speed_not_the_run(tmp_path, full_disk, caplog) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.WARNING):
        result = run(_spec(tmp_path, cache_dir=full_disk))
    assert result.complete and result.cost["images_forwarded"] > 0
    assert caplog.text.count("cannot be written") == 1 and "No space left" in caplog.text
    assert not list(full_disk.rglob("*.safetensors")) and not list(full_disk.rglob("*.tmp"))


def test_a_full_out_is_one_clear_cli_error(tmp_path: Path, full_disk: Path) -> None:
    args = [*CLI_RUN, "--out", str(full_disk / "runs"), "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "No space left on device while writing" in result.stderr
    assert not list(full_disk.rglob("*.tmp"))


def test_the_decoded_cache_on_a_full_disk_is_an_error_not_sigbus(tmp_path, full_disk) -> None:  # type: ignore[no-untyped-def]
    root = write_imagenet_r(tmp_path / "data", layout="split", per_class=2)
    root = root / "imagenet-r" / "train"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))[:6]
    source = FileSource(root, files, list(range(6)), "fixture")
    with pytest.raises(DiskFullError, match="No space left on device while writing"):
        DecodedSource(source, 64, full_disk)
    assert not list(full_disk.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("module", "what"),
    [("cilbench.engine.checkpoint", "checkpoint"), ("cilbench.features", "features")],
)
def test_the_exact_safetensors_error_is_a_full_disk(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch, caplog, module, what
) -> None:
    import importlib

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise SafetensorError(SAFETENSORS_FULL)

    monkeypatch.setattr(importlib.import_module(module), "save_file", full)
    if what == "checkpoint":
        with pytest.raises(DiskFullError, match=r"No space left on device .*checkpoint"):
            run(_spec(tmp_path))
    else:
        with caplog.at_level(logging.WARNING):
            assert run(_spec(tmp_path)).complete
        assert caplog.text.count("cannot be written") == 1


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))


def test_the_file_size_limit_is_one_clear_error(tmp_path: Path) -> None:
    """`ulimit -f 2` (EFBIG): the feature cache degrades, the result write is a clear error."""
    code = "from cilbench.cli.app import app; app()"
    args = [*CLI_RUN, "--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=_limit_file_size,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "File size limit reached while writing" in done.stderr

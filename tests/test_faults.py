"""Faults and files: damaged checkpoints and caches, full disks, unwritable folders, interrupted
runs, leftover temp files, permissions, unreachable weights, hostile archives."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from stream_fixtures import write_imagenet_r
from typer.testing import CliRunner

from cilbench.backbones.model import create_backbone
from cilbench.cli.app import app
from cilbench.core.callbacks import RunCallback
from cilbench.core.errors import (
    CilbenchError,
    CorruptFileError,
    DataError,
    DiskFullError,
    WeightsUnavailableError,
)
from cilbench.core.files import HOST, atomic_path, remove_stale_temps
from cilbench.data.decoded_cache import DecodedSource
from cilbench.data.downloads import unpack
from cilbench.data.sources import FileSource
from cilbench.engine.checkpoint import load_checkpoint, save_checkpoint
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec

SYNTHETIC = {"stream.num_classes": "8"}  # 4 experiences of 2 classes
CLI_RUN = ("run", "--stream", "synthetic", "--set", "stream.num_classes=8", "--device", "cpu")


class _Interrupt(Exception):
    pass


class _StopAt(RunCallback):
    """Stops the run before experience `index` (experiences before it are checkpointed)."""

    def __init__(self, index: int):
        self.index = index

    def on_experience_start(self, experience) -> None:  # type: ignore[no-untyped-def]
        if experience.index == self.index:
            raise _Interrupt


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


def _interrupted(tmp_path: Path) -> Path:
    """Run two of four experiences, then stop; the checkpoint's path."""
    with pytest.raises(_Interrupt):
        run(_spec(tmp_path), callbacks=[_StopAt(2)])
    (checkpoint,) = (tmp_path / "runs").rglob("checkpoint.safetensors")
    return checkpoint


# --- checkpoints carry checksums --------------------------------------------------------------


def _rewrite(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Re-save a checkpoint after `edit(tensors, metadata)`: readable, but not what was written."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    edit(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)


def _edit_result(tensors, metadata) -> None:  # type: ignore[no-untyped-def]
    metadata["result"] = metadata["result"].replace('"complete": false', '"complete": true')


def _swap(tensors, metadata) -> None:  # type: ignore[no-untyped-def]
    tensors["a"], tensors["b"] = tensors["b"], tensors["a"]


def _nan(tensors, metadata) -> None:  # type: ignore[no-untyped-def]
    tensors["a"][0, 0] = float("nan")


def _remove(tensors, metadata) -> None:  # type: ignore[no-untyped-def]
    del tensors["b"]


def _old_format(tensors, metadata) -> None:  # type: ignore[no-untyped-def]
    del metadata["sha256"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_edit_result, "metadata .* was edited"),
        (_swap, "tensor 'a' was changed or swapped \\(2 tensors differ\\)"),
        (_nan, "tensor 'a' was changed or swapped \\(1 tensors differ\\)"),
        (_remove, "tensor 'b' is missing"),
        (_old_format, "carries no checksums"),
    ],
)
def test_readable_checkpoint_damage_is_detected(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "checkpoint.safetensors"
    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, 3)}
    save_checkpoint(path, state, '{"complete": false}')
    tensors, result = load_checkpoint(path)
    assert result == '{"complete": false}' and torch.equal(tensors["a"], state["a"])
    _rewrite(path, damage)
    with pytest.raises(CorruptFileError, match=message) as error:
        load_checkpoint(path)
    assert "--overwrite" in str(error.value)


def test_nan_in_a_damaged_checkpoint_is_not_blamed_on_training(tmp_path: Path) -> None:
    checkpoint = _interrupted(tmp_path)

    def poison(tensors, metadata) -> None:  # type: ignore[no-untyped-def]
        name = sorted(tensors)[0]
        tensors[name].view(-1)[0] = float("nan")

    _rewrite(checkpoint, poison)
    with pytest.raises(CorruptFileError, match="was changed or swapped") as error:
        run(_spec(tmp_path), resume=True)
    assert "learning rate" not in str(error.value)


# --- resume, overwrite, result files ----------------------------------------------------------


def test_starting_over_a_checkpoint_needs_resume_or_overwrite(tmp_path: Path) -> None:
    checkpoint = _interrupted(tmp_path)
    with pytest.raises(CilbenchError, match="Continue it with --resume, or start over with --ov"):
        run(_spec(tmp_path))
    assert checkpoint.exists()  # nothing deleted
    with pytest.raises(CilbenchError, match="pick one"):
        run(_spec(tmp_path), resume=True, overwrite=True)
    result = run(_spec(tmp_path), overwrite=True)
    assert result.complete and len(result.accuracy_matrix) == 4 and not checkpoint.exists()


def test_overwrite_on_the_command_line(tmp_path: Path) -> None:
    _interrupted(tmp_path)
    args = list(CLI_RUN)
    args += ["--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--json"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.output
    done = CliRunner().invoke(app, [*args, "--overwrite"])
    assert done.exit_code == 0, done.output


def test_resume_validates_a_truncated_result_file(tmp_path: Path) -> None:
    run(_spec(tmp_path))
    (path,) = (tmp_path / "runs").rglob("result.json")
    path.write_text(path.read_text()[:200])
    with pytest.raises(CorruptFileError, match="result file is damaged") as error:
        run(_spec(tmp_path), resume=True)
    assert "already finished" not in str(error.value)
    assert "Run without --resume to repeat the run" in str(error.value)


SIGTERM_DURING_EXPERIENCE_3 = """
import os, signal, sys
from cilbench.api import STRATEGIES
from cilbench.cli.app import app

nmc = STRATEGIES.get("nmc")
train = nmc.train_experience
def terminated_at_2(self, experience):
    if experience.index == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return train(self, experience)
nmc.train_experience = terminated_at_2
sys.argv = ["cilbench", "run", "--stream", "synthetic", "--set", "stream.num_classes=8",
            "--device", "cpu", "--out", sys.argv[1]]
app()
"""


def test_sigterm_prints_how_to_resume(tmp_path: Path) -> None:
    env = {**os.environ, "CILBENCH_CACHE": str(tmp_path / "cache")}
    out = str(tmp_path / "runs")
    stopped = subprocess.run(
        [sys.executable, "-c", SIGTERM_DURING_EXPERIENCE_3, out],
        env=env,
        capture_output=True,
        text=True,
    )
    assert stopped.returncode == 128 + 15, stopped.stderr
    message = " ".join(stopped.stderr.split())
    assert "interrupted (SIGTERM)" in message and "Traceback" not in message
    command = f"cilbench run --stream synthetic --set stream.num_classes=8 --device cpu --out {out}"
    assert message.endswith(f"Continue with: {command} --resume")
    resumed = CliRunner().invoke(
        app,
        [*CLI_RUN, "--out", out, "--resume", "--json"],
        env=env,
    )
    assert resumed.exit_code == 0, resumed.output


# --- temp files, permissions, full disks ------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    dead = folder / f"x.safetensors.{HOST}.{_dead_pid()}.k2j4.tmp"
    alive = folder / f"x.safetensors.{HOST}.{os.getpid()}.a8b1.tmp"
    foreign_old = folder / "x.safetensors.otherhost.12.zz11.tmp"
    foreign_new = folder / "y.safetensors.otherhost.12.zz12.tmp"
    legacy = folder / "checkpoint.tmp"
    for path in (dead, alive, foreign_old, foreign_new, legacy):
        path.write_bytes(b"partial")
    for path in (foreign_old, legacy):
        os.utime(path, (1, 1))  # 1970: long past the one-day limit
    assert sorted(remove_stale_temps(folder)) == sorted([dead, foreign_old, legacy])
    assert alive.exists() and foreign_new.exists()


def test_a_run_cleans_temp_files_left_by_a_killed_run(tmp_path: Path) -> None:
    checkpoint = _interrupted(tmp_path)
    leftovers = [
        checkpoint.with_name(f"checkpoint.safetensors.{HOST}.{_dead_pid()}.abcd.tmp"),
        tmp_path / "cache" / "features" / f"0123.safetensors.{HOST}.{_dead_pid()}.efgh.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"half")
    run(_spec(tmp_path), resume=True)
    assert not any(path.exists() for path in leftovers)


def test_each_writer_gets_its_own_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.safetensors"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        assert f".{HOST}.{os.getpid()}." in first.name


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_created_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        _interrupted(tmp_path)
        run(_spec(tmp_path), resume=True)
        DecodedSource(_image_source(tmp_path), 8, tmp_path / "cache")
    finally:
        os.umask(previous)
    files = [p for p in tmp_path.glob("*/**/*") if p.is_file() and "data" not in p.parts]
    assert {p.suffix for p in files} >= {".json", ".safetensors", ".u8"}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~umask)}


def _enospc(*args, **kwargs):  # type: ignore[no-untyped-def]
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_checkpointing_leaves_nothing_half_written(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import cilbench.engine.checkpoint

    def half_then_full(tensors, path, metadata):  # type: ignore[no-untyped-def]
        Path(path).write_bytes(b"\0" * 100)
        _enospc()

    monkeypatch.setattr(cilbench.engine.checkpoint, "save_file", half_then_full)
    with pytest.raises(DiskFullError, match=r"No space left on device while writing .*checkpoint"):
        run(_spec(tmp_path))
    assert [p for p in (tmp_path / "runs").rglob("*") if p.is_file()] == []


def test_disk_full_while_writing_the_result_is_a_clear_cli_error(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import cilbench.core.files

    real_fsync = os.fsync
    monkeypatch.setattr(cilbench.core.files.os, "fsync", _enospc)
    args = list(CLI_RUN)
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "runs"), "--json"])
    monkeypatch.setattr(cilbench.core.files.os, "fsync", real_fsync)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "No space left on device while writing" in result.stderr
    assert not list(tmp_path.rglob("*.tmp"))


def test_disk_full_feature_cache_degrades_to_memory(tmp_path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    import cilbench.features

    monkeypatch.setattr(cilbench.features, "save_file", _enospc)
    with caplog.at_level(logging.WARNING):
        result = run(_spec(tmp_path))
    assert result.complete
    assert caplog.text.count("cannot be written") == 1
    written = (tmp_path / "cache" / "features").iterdir()
    assert [p for p in written if p.suffix != ".lock"] == []  # the empty lock file may stay


# --- unwritable folders -----------------------------------------------------------------------


def test_unwritable_out_is_refused_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(CilbenchError, match=r"Cannot write to the output folder .*a-file/runs"):
        run(_spec(tmp_path, out_dir=blocker / "runs"), callbacks=[_StopAt(0)])


def test_unwritable_cache_warns_once_and_runs_in_memory(tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        result = run(_spec(tmp_path, cache_dir=blocker / "cache"))
    assert result.complete and result.cost["images_forwarded"] > 0
    assert caplog.text.count("cannot be written") == 1 and "kept in memory" in caplog.text


# --- decoded-image cache checksum -------------------------------------------------------------


def _image_source(tmp_path: Path) -> FileSource:
    root = write_imagenet_r(tmp_path / "data", layout="split", per_class=2)
    root = root / "imagenet-r" / "train"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))[:6]
    return FileSource(root, files, list(range(6)), "fixture")


def _zero_half(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
    path.write_bytes(bytes(data))


def _edit_header(path: Path) -> None:
    header = path.with_suffix(".json")
    header.write_text(header.read_text().replace('"sha256": "', '"sha256": "0'))


@pytest.mark.parametrize("damage", [_zero_half, _edit_header])
def test_decoded_cache_damage_of_the_same_size_is_rebuilt(tmp_path, damage, caplog) -> None:  # type: ignore[no-untyped-def]
    source = _image_source(tmp_path)
    good = DecodedSource(source, 8, tmp_path / "cache")
    expected = [good.load(i) for i in range(len(source))]
    size = good.path.stat().st_size
    damage(good.path)
    assert good.path.stat().st_size == size  # readable, same size: only a checksum can tell
    with caplog.at_level(logging.WARNING):
        again = DecodedSource(source, 8, tmp_path / "cache")
    assert "fails its checksum" in caplog.text
    assert all(torch.equal(again.load(i), expected[i]) for i in range(len(source)))


# --- weights that cannot be downloaded --------------------------------------------------------

HUB_TAG = "vit_tiny_patch16_224.augreg_in21k"


def _no_cached_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import cilbench.backbones.hub

    monkeypatch.setattr(cilbench.backbones.hub, "_weights_cached", lambda tag: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def test_offline_hub_weights_fail_fast_with_one_message(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import timm

    _no_cached_weights(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(timm, "create_model", _never_called)
    backbone = create_backbone(HUB_TAG)
    with pytest.raises(WeightsUnavailableError) as error:
        backbone.model  # noqa: B018
    message = str(error.value)
    assert HUB_TAG in message and "HF_HUB_OFFLINE is set" in message
    assert "Pre-fetch" in message and "file:PATH" in message


_create_model = timm.create_model


def _never_called(*args, **kwargs):  # type: ignore[no-untyped-def]
    """timm.create_model that fails when asked for pretrained weights (a download); building an
    architecture without weights (the run's memory estimate, on the meta device) is allowed."""
    if kwargs.get("pretrained"):
        raise AssertionError("no download may be attempted")
    return _create_model(*args, **kwargs)


def test_unreachable_hub_fails_fast_through_the_cli(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import socket

    import timm

    _no_cached_weights(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "create_connection", _name_not_known)
    monkeypatch.setattr(timm, "create_model", _never_called)
    args = ["run", "--stream", "synthetic", "--backbone", HUB_TAG, "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"Cannot download the weights of timm tag '{HUB_TAG}'" in " ".join(result.stderr.split())
    assert "huggingface.co is unreachable" in result.stderr


def _name_not_known(*args, **kwargs):  # type: ignore[no-untyped-def]
    raise OSError(-2, "Name or service not known")


def test_a_failing_download_is_wrapped(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import timm

    import cilbench.backbones.hub

    _no_cached_weights(monkeypatch, tmp_path)
    monkeypatch.setattr(cilbench.backbones.hub, "_hub_problem", lambda: "")
    monkeypatch.setattr(timm, "create_model", _name_not_known)
    with pytest.raises(WeightsUnavailableError, match=f"'{HUB_TAG}': OSError: .*not known"):
        create_backbone(HUB_TAG).model  # noqa: B018


# --- archives ---------------------------------------------------------------------------------


def test_disk_full_while_unpacking_says_so(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    payload = tmp_path / "payload.txt"
    payload.write_text("x")
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(payload, arcname="data/payload.txt")
    monkeypatch.setattr(tarfile.TarFile, "extract", _enospc)
    with pytest.raises(DiskFullError, match="No space left on device while unpacking"):
        unpack(archive, tmp_path / "out")


def test_path_traversal_archive_is_refused_as_such(tmp_path: Path) -> None:
    payload = tmp_path / "payload.txt"
    payload.write_text("x")
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(payload, arcname="../escaped.txt")
    with pytest.raises(DataError, match=r"was refused: member '\.\./escaped\.txt'") as error:
        unpack(archive, tmp_path / "out")
    assert "truncated" not in str(error.value)
    assert not (tmp_path / "escaped.txt").exists()

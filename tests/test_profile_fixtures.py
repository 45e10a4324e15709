"""Synthetic JPEG folders (`cilbench profile ... --synthetic-jpegs N`); the pipeline profile."""

from __future__ import annotations

import pytest
from PIL import Image
from typer.testing import CliRunner

from cilbench.benchmarks.vtab import Vtab
from cilbench.cli.app import app
from cilbench.core.errors import ConfigError
from cilbench.profiles.fixtures import MARKER, write_synthetic_stream


def test_synthetic_jpegs_have_the_streams_layout_and_realistic_sizes(tmp_path):
    root = write_synthetic_stream("vtab", tmp_path, 100)  # 2 per class: 1 train, 1 test
    stream = Vtab().build(root)
    assert len(stream.experiences) == 5
    train, test = stream.experiences[0].train.source, stream.test_sets[0].source
    assert (len(train), len(test)) == (50, 50)
    for relative in train.files[:5]:  # type: ignore[attr-defined]
        with Image.open(train.root / relative) as image:  # type: ignore[attr-defined]
            assert image.format == "JPEG" and all(300 <= side <= 600 for side in image.size)
    mtime = (root / MARKER).stat().st_mtime_ns
    write_synthetic_stream("vtab", tmp_path, 100)  # the same fixture: kept, not rewritten
    assert (root / MARKER).stat().st_mtime_ns == mtime


def test_synthetic_jpegs_refuse_streams_without_a_writer(tmp_path):
    with pytest.raises(ConfigError, match=r"'vtb'.*vtab"):
        write_synthetic_stream("vtb", tmp_path, 10)


@pytest.mark.slow
def test_pipeline_profile_reports_every_worker_count(tmp_path, monkeypatch):
    """Arrays (the synthetic stream), 0 and 2 workers: figures for both, side by side."""
    monkeypatch.setattr("cilbench.profiles.pipeline.ROUNDS", 1)
    result = CliRunner().invoke(
        app,
        ["profile", "pipeline", "--stream", "synthetic", "--backbone", "tiny-vit-random",
         "--device", "cpu", "--batch-size", "32", "--workers", "0", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    import json

    figures = json.loads(result.output)
    assert figures["training images"] == 6 * 24 and figures["source"] == "ArraySource"
    for workers in (0, 2):
        assert figures[f"{workers} workers: cold extraction (img/s)"] > 0
        assert figures[f"{workers} workers: decode + preprocess alone (img/s)"] > 0
    assert figures["backbone images forwarded in the warm run"] == 0
    fixed = figures["cold extraction: fixed cost (s, intercept)"]
    per_image = figures["cold extraction: per-image cost (ms, slope)"]
    total = figures["cold extraction of 144 images, 0 workers (s)"]
    assert fixed + 144 * per_image / 1000 == pytest.approx(total, abs=2e-3)

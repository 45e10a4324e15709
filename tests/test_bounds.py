"""Settings that cannot fit in memory are refused before any work, with the estimate (issue 22).

Before: `projection_dim=2e8` (RanPAC), `keys_per_codebook=1e8` (DKVB), `ca_samples_per_class=1e8`
(SLCA) and a decoded cache of 100000 px ended in allocation tracebacks or runaway memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cilbench.core.errors import ConfigError
from cilbench.core.memory import human
from cilbench.data.decoded_cache import DecodedSource
from cilbench.data.sources import ArraySource
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec

CASES = [
    ("ranpac", {"projection_dim": "200000000"}, r"ranpac projection_dim=200000000 .* needs about"),
    ("dkvb", {"keys_per_codebook": "100000000"}, r"dkvb .*keys_per_codebook=100000000 .* needs"),
    ("slca", {"ca_samples_per_class": "100000000"}, r"slca ca_samples_per_class=100000000 .*"),
]


@pytest.mark.parametrize(("strategy", "settings", "message"), CASES, ids=[c[0] for c in CASES])
def test_settings_that_cannot_fit_are_refused_with_the_estimate(  # type: ignore[no-untyped-def]
    tmp_path: Path, strategy, settings, message
) -> None:
    overrides = {"stream.num_classes": "4", **settings}
    spec = RunSpec(
        strategy=strategy, stream="synthetic", overrides=overrides, out_dir=tmp_path, device="cpu"
    )
    with pytest.raises(ConfigError, match=f"{message}.* is available"):
        run(spec)
    assert not list(tmp_path.rglob("result.json"))


def test_a_decoded_cache_too_large_for_memory_is_refused(tmp_path: Path) -> None:
    source = ArraySource(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]), "tiny")
    with pytest.raises(ConfigError, match=r"decoded cache of size 100000 .* needs about 240.0 GB"):
        DecodedSource(source, 100000, tmp_path)
    assert not list(tmp_path.rglob("*.u8"))


@pytest.mark.parametrize(("size", "text"), [(512, "512 B"), (2.5e9, "2.5 GB"), (5.1e10, "51.0 GB")])
def test_sizes_read_as_people_write_them(size: float, text: str) -> None:
    assert human(size) == text

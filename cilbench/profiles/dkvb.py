"""`cilbench profile dkvb`: what a DKVB run costs with an empty and with a warm feature cache.

The same run twice in one process, side by side: first with an empty cache (the backbone
forwards every image once), then again with the cache filled. The warm run's time is DKVB's own
work: key initialisation, the key lookups and value training, and evaluation on cached features.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

from cilbench.core.results import RunResult
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec
from cilbench.profiles import Figures, register_profile


@register_profile("dkvb", ignores=("--strategy",))
def profile_dkvb(spec: RunSpec) -> Figures:
    """Cold vs warm wall time of a DKVB run on `spec`'s stream (cache and results in a temp dir)."""
    spec = dataclasses.replace(spec, strategy="dkvb")
    with tempfile.TemporaryDirectory() as tmp:
        runs = dataclasses.replace(spec, cache_dir=Path(tmp) / "cache", out_dir=Path(tmp) / "runs")
        cold, cold_seconds = _timed(runs)
        warm, warm_seconds = _timed(runs)
    report = warm.strategy_report
    return {
        "dkvb run, cold cache (s)": round(cold_seconds, 3),
        "dkvb run, warm cache (s)": round(warm_seconds, 3),
        "warm speed-up": round(cold_seconds / warm_seconds, 1),
        "backbone images forwarded, cold run": int(cold.cost["images_forwarded"]),
        "backbone images forwarded, warm run": int(warm.cost["images_forwarded"]),
        "warm: key initialisation (s)": round(warm.cost["before_stream_seconds"], 3),
        "warm: training, all experiences (s)": round(sum(warm.cost["train_seconds"]), 3),
        "warm: evaluation, all experiences (s)": round(sum(warm.cost["eval_seconds"]), 3),
        "final accuracy (%)": round(warm.metrics["final_accuracy"], 2),
        "forgetting (Chaudhry)": round(warm.metrics["forgetting"], 2),
        "keys ever selected (fraction)": round(report["keys_ever_selected"], 4),
    }


def _timed(spec: RunSpec) -> tuple[RunResult, float]:
    start = time.perf_counter()
    result = run(spec)
    return result, time.perf_counter() - start

"""The board plots: accuracy after each experience, and final accuracy against time.

Each PNG carries a digest of the numbers it draws in its metadata (`PLOT_KEY`), so
`cilbench leaderboard build --check` compares digests, not pixels, and a matplotlib upgrade does
not make a board stale.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cilbench.boards.leaderboard import Row

PLOT_KEY = "cilbench-data"


def rows_digest(rows: Sequence[Row]) -> str:
    data = [(r.name, r.backbone, r.curve, r.stats["final_accuracy"], r.wall_seconds) for r in rows]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()


def plot_digest(path: Path) -> str | None:
    from PIL import Image

    if not path.exists():
        return None
    with Image.open(path) as image:
        return image.info.get(PLOT_KEY)  # type: ignore[no-any-return]


def _save(figure: object, rows: Sequence[Row], path: Path) -> None:
    import matplotlib.pyplot as plt

    metadata = {"Software": None, PLOT_KEY: rows_digest(rows)}
    figure.savefig(path, dpi=100, metadata=metadata)  # type: ignore[attr-defined]
    plt.close(figure)  # type: ignore[arg-type]


LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")


def _styles(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per row: a colour per strategy, a line style and marker per backbone, a legend label."""
    import matplotlib

    colours = matplotlib.colormaps["tab20"].colors  # type: ignore[attr-defined]
    strategies = sorted({r.name for r in rows})
    backbones = sorted({r.backbone for r in rows})
    return [
        {
            "color": colours[strategies.index(r.name) % len(colours)],
            "linestyle": LINE_STYLES[backbones.index(r.backbone) % len(LINE_STYLES)],
            "marker": MARKERS[backbones.index(r.backbone) % len(MARKERS)],
            "label": f"{r.name} ({r.backbone})",
        }
        for r in rows
    ]


def _finish(figure: Any, axes: Any, rows: Sequence[Row], path: Path) -> None:
    """Legend beside the axes (a board has up to a few dozen rows), grid, save."""
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.grid(alpha=0.3)
    figure.tight_layout()
    _save(figure, rows, path)


def accuracy_plot(rows: Sequence[Row], path: Path) -> None:
    """Mean sample-weighted accuracy after each experience, one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 4.8))
    for row, style in zip(rows, _styles(rows)):
        axes.plot(range(1, len(row.curve) + 1), row.curve, **style)
    axes.set_xticks(range(1, max((len(r.curve) for r in rows), default=0) + 1))
    axes.set_xlabel("experiences learned")
    axes.set_ylabel("accuracy on seen classes (%, sample-weighted)")
    _finish(figure, axes, rows, path)


def time_plot(rows: Sequence[Row], path: Path) -> None:
    """Final accuracy (mean ± std) against wall time per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 4.8))
    for row, style in zip(rows, _styles(rows)):
        mean, std = row.stats["final_accuracy"]
        if mean is None:
            continue
        del style["linestyle"]
        axes.errorbar(row.wall_seconds, mean, yerr=std or 0.0, capsize=3, **style)
    axes.set_xscale("log")
    axes.set_xlabel("wall time per run (s, log scale)")
    axes.set_ylabel("final accuracy (%, sample-weighted)")
    _finish(figure, axes, rows, path)

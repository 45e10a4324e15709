"""Generated leaderboard pages: `README.md`, per stream `<stream>.md`, `.csv` and two plots, and
`reference.md` (the rendered `reference.json`).

`build` writes them; `stale` regenerates them in memory and names every file that differs, so a
test (and `cilbench leaderboard build --check`) fails when someone adds a result without
rebuilding. Plots carry a digest of the numbers they draw in their PNG metadata: the check compares
digests, not pixels, so a matplotlib upgrade does not make a board stale.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cilbench.boards.leaderboard import (
    FLAGS,
    METRICS,
    Row,
    aggregate,
    load_board,
)
from cilbench.boards.references import Reference, load_references
from cilbench.core.results import write_atomic

REFERENCE_FILE = "reference.json"
PLOT_KEY = "cilbench-data"
GRID_SCRIPT = "leaderboards/grid.sh"


def streams_on_boards(root: Path) -> list[str]:
    """Stream folders that hold at least one result."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.json")))


def render(root: Path) -> tuple[dict[Path, str], dict[Path, list[Row]]]:
    """Every text page (path -> content) and every plot (path -> the rows it draws)."""
    references = load_references(root / REFERENCE_FILE)
    pages: dict[Path, str] = {root / "reference.md": reference_page(references)}
    plots: dict[Path, list[Row]] = {}
    boards = {}
    for stream in streams_on_boards(root):
        rows = aggregate(load_board(root, stream), references)
        boards[stream] = rows
        pages[root / f"{stream}.md"] = f"# {stream}\n\n{board_table(rows)}\n{plot_links(stream)}"
        pages[root / f"{stream}.csv"] = board_csv(rows)
        plots[root / f"{stream}-accuracy.png"] = rows
        plots[root / f"{stream}-time.png"] = rows
    pages[root / "README.md"] = readme(boards)
    return pages, plots


def build(root: Path) -> list[Path]:
    """Write every page and plot; the paths written."""
    pages, plots = render(root)
    for path, text in pages.items():
        write_atomic(path, text)
    for path, rows in plots.items():
        draw = accuracy_plot if path.name.endswith("-accuracy.png") else time_plot
        draw(rows, path)
    return [*pages, *plots]


def stale(root: Path) -> list[Path]:
    """Generated files missing or not matching the stored results (empty: up to date)."""
    pages, plots = render(root)
    outdated = [p for p, text in pages.items() if not p.exists() or p.read_text() != text]
    outdated += [p for p, rows in plots.items() if _plot_digest(p) != _rows_digest(rows)]
    return outdated


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _flag(flags: dict[str, bool | None], key: str) -> str:
    """yes / no; ? when the strategy leaves it undeclared (None); n/a when it does not apply
    (a strategy reports only the flags that concern it, e.g. no prompt vote without prompts)."""
    if key not in flags:
        return "n/a"
    return {True: "yes", False: "no", None: "?"}[flags[key]]


def _published(row: Row) -> list[str]:
    """published, source, convention, gap cells for a row (the first matching reference)."""
    if not row.references:
        return ["–", "no published number for this protocol", "–", "–"]
    ref = row.references[0]
    value = _fmt(ref.final_accuracy, ref.final_std) + ("" if ref.verified else " (unverified)")
    more = f"; {len(row.references) - 1} more in reference.md" if len(row.references) > 1 else ""
    gap = row.gap(ref)
    return [
        value,
        f"{ref.source} [{ref.evidence}]{more}",
        ref.convention,
        "–" if gap is None else f"{gap:+.2f}",
    ]


HEADER = [
    "strategy",
    "backbone",
    "precision",
    "protocol",
    "seeds",
    *METRICS.values(),
    "trainable params",
    "wall time / run (s)",
    "peak memory (MiB)",
    *FLAGS.values(),
    "published final acc",
    "published source",
    "published convention",
    "gap (ours - published)",
]


def _cells(row: Row) -> list[str]:
    return [
        row.name,
        row.backbone,
        row.precision,
        row.protocol,
        f"{len(row.seeds)} ({', '.join(map(str, row.seeds))})",
        *(_fmt(*row.stats[k]) for k in METRICS),
        f"{row.trainable_parameters:,}",
        f"{row.wall_seconds:.1f}",
        f"{row.peak_memory_mib:.0f}",
        *(_flag(row.flags, k) for k in FLAGS),
        *_published(row),
    ]


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(table_cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table_cell(text: str) -> str:
    """Text from a result file made inert in a markdown table cell: HTML escaped, line breaks
    joined (a newline would end the row and could start a heading), `|` and a leading `#`
    escaped."""
    flat = re.sub(r"[\r\n\v\f\x85\u2028\u2029]+", " ", html.escape(text, quote=False))
    return re.sub(r"^#", r"\\#", flat).replace("|", "\\|")


def board_table(rows: Sequence[Row]) -> str:
    """The markdown table of one board."""
    return _markdown(HEADER, [_cells(r) for r in rows])


def board_csv(rows: Sequence[Row]) -> str:
    """The board as CSV: means and standard deviations in separate columns, raw numbers."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    stats = [f"{k}_{part}" for k in METRICS for part in ("mean", "std")]
    flags = list(FLAGS)
    published = ["published_final_accuracy", "published_source", "published_convention", "gap"]
    costs = ["trainable_parameters", "wall_seconds", "peak_memory_mib"]
    names = ["strategy", "backbone", "precision", "protocol", "seeds"]
    writer.writerow([*names, *stats, *costs, *flags, *published])
    for row in rows:
        ref = row.references[0] if row.references else None
        gap = row.gap(ref) if ref else None
        writer.writerow(
            [row.name, row.backbone, row.precision, row.protocol, " ".join(map(str, row.seeds))]
            + [_raw(v) for k in METRICS for v in row.stats[k]]
            + [row.trainable_parameters, f"{row.wall_seconds:.3f}", f"{row.peak_memory_mib:.1f}"]
            + [_raw(row.flags[k]) if k in row.flags else "n/a" for k in flags]
            + ([ref.final_accuracy, ref.source, ref.convention, _raw(gap)] if ref else [""] * 4)
        )
    return out.getvalue()


def _raw(value: float | bool | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:.4f}"


def plot_links(stream: str) -> str:
    return (
        f"\n![accuracy after each experience]({stream}-accuracy.png)\n"
        f"![final accuracy vs wall time]({stream}-time.png)\n"
    )


CONVENTIONS = """\
Every number is recomputed from the stored accuracy matrices (`cilbench/core/metrics.py`); the
derived fields in the result files are never read. Cells are mean ± sample standard deviation (n -
1) over the seeds of a row (no ± with one seed). Sample-weighted accuracy counts correct test images
over all seen test images (PyCIL, PILOT, APER, SLCA); task-averaged accuracy averages the per-task
accuracies (L2P, DualPrompt, CODA-Prompt, RanPAC). Forgetting (Chaudhry) is the best earlier
accuracy minus the last, averaged over tasks; CODA's F_N averages the drop from one step to the
next. Wall time and peak memory are per run, on the machine in each result's `environment`; wall
time includes feature extraction when the run found the feature cache cold. Flags: `?` means the
strategy does not declare it, `n/a` that it does not apply (no prompt vote without prompts). The
published number is the first entry of `reference.json` for the same strategy, stream, protocol and
backbone; the gap is our mean minus it, in its accuracy convention.
"""


def readme(boards: dict[str, list[Row]]) -> str:
    """The index page: how the boards are made, then every board's table and plots."""
    parts = [
        "# Leaderboards\n",
        "Generated by `cilbench leaderboard build` from the result files in `<stream>/`; never "
        "edit by hand (`cilbench leaderboard build --check` fails when a page is stale). "
        f"Reproduce the published grid with `{GRID_SCRIPT}`.\n",
        CONVENTIONS,
        "Published reference numbers, with sources and verification status: "
        "[reference.md](reference.md).\n",
    ]
    if not boards:
        parts.append("No results are stored yet.\n")
    for stream, rows in boards.items():
        parts.append(f"## {stream}\n\n{board_table(rows)}\nCSV: [{stream}.csv]({stream}.csv)\n")
        parts.append(plot_links(stream))
    return "\n".join(parts)


def reference_page(references: Sequence[Reference]) -> str:
    """`reference.json` as a table."""
    header = [
        "strategy",
        "stream",
        "protocol",
        "backbone",
        "config",
        "final acc",
        "convention",
        "avg inc acc",
        "forgetting",
        "forgetting definition",
        "seeds",
        "source",
        "url",
        "evidence",
        "status",
        "note",
    ]
    rows = [
        [
            r.strategy,
            r.stream,
            ", ".join(f"{k}={v}" for k, v in r.protocol.items()),
            r.backbone,
            ", ".join(f"{k}={v}" for k, v in r.config.items()) or "defaults",
            _fmt(r.final_accuracy, r.final_std),
            r.convention,
            _fmt(r.average_accuracy, None),
            _fmt(r.forgetting, None),
            r.forgetting_definition or "–",
            r.seeds or "–",
            r.source,
            f"<{r.url}>",
            r.evidence,
            "verified" if r.verified else "unverified",
            r.note or "",
        ]
        for r in references
    ]
    return f"# Published reference numbers\n\n{EVIDENCE}\n{_markdown(header, rows)}"


EVIDENCE = """\
Generated from `reference.json` by `cilbench leaderboard build`. Evidence tags: LOG (official
training log or result file), IMG (results-table image in an official repository), README (official
re-implementation's README), DER (derived from official logs), 3P (quoted by a third party, not
checked against the paper), U (unverified), approx (read from a plot). Only LOG, IMG, README and DER
numbers count as verified. Every entry links the paper table or the repository file (at a commit)
it was read from; an unverified entry's note says what could and could not be seen there.
"""


def _rows_digest(rows: Sequence[Row]) -> str:
    data = [(r.name, r.backbone, r.curve, r.stats["final_accuracy"], r.wall_seconds) for r in rows]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()


def _plot_digest(path: Path) -> str | None:
    from PIL import Image

    if not path.exists():
        return None
    with Image.open(path) as image:
        return image.info.get(PLOT_KEY)  # type: ignore[no-any-return]


def _save(figure: object, rows: Sequence[Row], path: Path) -> None:
    import matplotlib.pyplot as plt

    metadata = {"Software": None, PLOT_KEY: _rows_digest(rows)}
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

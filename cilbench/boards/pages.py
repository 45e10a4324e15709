"""Generated leaderboard pages: `README.md`, per stream `<stream>.md`, `.csv` and two plots, and
`reference.md` (the rendered `reference.json`).

`build` writes them; `stale` regenerates them in memory and names every file that differs, so a
test (and `cilbench leaderboard build --check`) fails when someone adds a result without
rebuilding. Plots carry a digest of the numbers they draw in their PNG metadata: the check compares
digests, not pixels, so a matplotlib upgrade does not make a board stale.
"""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Sequence
from pathlib import Path

from cilbench.boards.leaderboard import (
    FLAGS,
    METRICS,
    Row,
    aggregate,
    load_board,
)
from cilbench.boards.plots import accuracy_plot, plot_digest, rows_digest, time_plot
from cilbench.boards.references import Reference, load_references
from cilbench.core.results import write_atomic

REFERENCE_FILE = "reference.json"
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
        pages[root / f"{stream}.md"] = stream_page(stream, rows)
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
    outdated += [p for p, rows in plots.items() if plot_digest(p) != rows_digest(rows)]
    return outdated


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _flag(flags: dict[str, bool | str | None], key: str) -> str:
    """yes / no; ? when the strategy leaves it undeclared (None); n/a when it does not apply
    (a strategy reports only the flags that concern it, e.g. no prompt vote without prompts)."""
    if key not in flags:
        return "n/a"
    if key == "uses_exemplars" and flags[key] and flags.get("exemplar_budget"):
        return str(flags["exemplar_budget"])  # the budget, e.g. '2000 total, herding'
    value = flags[key]
    return value if isinstance(value, str) else {True: "yes", False: "no", None: "?"}[value]


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


MAIN_HEADER = [
    "strategy",
    "backbone",
    "protocol",
    "seeds",
    "convention",
    "final acc",
    "avg inc acc",
    "forgetting",
    "trainable params",
    "train+eval s / run",
    "features extracted",
    "published (gap)",
]
"""The main table: what a reader compares, at most 12 columns (a laptop screen). A precision other
than fp32 is named beside the backbone; the details table has it for every row."""

SHORT_CONVENTION = {"sample-weighted": "sample-wt", "task-averaged": "task-avg"}
DID_NOT_TRAIN = "did not train"
STALE = "written before a change: rerun"

DETAILS_HEADER = [
    "strategy",
    "backbone",
    "precision",
    *METRICS.values(),
    "wall time / run (s)",
    "extraction s / run",
    "cache wait s / run",
    "peak memory (MiB)",
    *FLAGS.values(),
    "published source",
    "published convention",
    "did not train (seeds: why)",
    "written before a change (seeds: which)",
]


def _name(row: Row) -> str:
    marks = [DID_NOT_TRAIN] * bool(row.untrained) + [STALE] * bool(row.stale)
    return f"{row.name} ({', '.join(marks)})" if marks else row.name


def _per_seed(reasons: dict[int, list[str]]) -> str:
    return "; ".join(f"{seed}: {', '.join(why)}" for seed, why in reasons.items()) or "–"


def _seconds(value: float | None) -> str:
    return "not recorded" if value is None else f"{value:.1f}"


def _extraction(row: Row) -> str:
    """Which seeds of this row paid for the feature cache, and how long it took them."""
    if not row.extracted_seeds:
        return "no (cache)"
    seeds = ", ".join(map(str, row.extracted_seeds))
    return f"{row.extract_seconds:.1f} s (seed {seeds})"


def _published_gap(row: Row) -> str:
    if not row.references:
        return "–"
    ref = row.references[0]
    gap = row.gap(ref)
    value = _fmt(ref.final_accuracy, ref.final_std) + ("" if ref.verified else " (unverified)")
    return value if gap is None else f"{value} ({gap:+.2f})"


def _main_cells(row: Row) -> list[str]:
    final = (
        "final_accuracy_task_averaged" if row.convention == "task-averaged" else "final_accuracy"
    )
    average = (
        "average_accuracy_task_averaged"
        if row.convention == "task-averaged"
        else "average_accuracy"
    )
    return [
        _name(row),
        row.backbone if row.precision == "fp32" else f"{row.backbone}, {row.precision}",
        row.protocol,
        f"{len(row.seeds)} ({', '.join(map(str, row.seeds))})",
        SHORT_CONVENTION.get(row.convention, row.convention),
        _fmt(*row.stats[final]),
        _fmt(*row.stats[average]),
        _fmt(*row.stats["forgetting"]),
        f"{row.trainable_parameters:,}",
        _seconds(row.train_eval_seconds),
        _extraction(row),
        _published_gap(row),
    ]


def _details_cells(row: Row) -> list[str]:
    published = _published(row)
    return [
        _name(row),
        row.backbone,
        row.precision,
        *(_fmt(*row.stats[k]) for k in METRICS),
        f"{row.wall_seconds:.1f}",
        f"{row.extract_seconds:.1f}" if row.extracted_seeds else "0.0",
        _seconds(row.cache_wait_seconds),
        f"{row.peak_memory_mib:.0f}",
        *(_flag(row.flags, k) for k in FLAGS),
        published[1],
        published[2],
        _per_seed(row.untrained),
        _per_seed(row.stale),
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
    """The main table of one board (at most 12 columns)."""
    return _markdown(MAIN_HEADER, [_main_cells(r) for r in rows])


def details_table(rows: Sequence[Row]) -> str:
    """Every other column: both conventions, wall time, cache, memory, flags, sources."""
    return _markdown(DETAILS_HEADER, [_details_cells(r) for r in rows])


def stream_page(stream: str, rows: Sequence[Row]) -> str:
    """One board: the main table, the details table, the CSV link and the plots."""
    return (
        f"# {stream}\n\n{TIME_NOTE}\n{board_table(rows)}\n## Details\n\n{details_table(rows)}\n"
        f"CSV (every column, raw numbers): [{stream}.csv]({stream}.csv)\n{plot_links(stream)}"
    )


TIME_NOTE = """\
Conventions, flags and sources: [README.md](README.md). `train+eval s / run` is each run's own
training and evaluation time, the comparable figure: feature extraction and waits on another run's
cache lock are not counted ("not recorded" for results written before cilbench measured the wait;
their total wall time is in the details). `features extracted` says which seeds of a row extracted
the shared frozen features (paid for the cache) and how long that took; other rows read them.
"""


def board_csv(rows: Sequence[Row]) -> str:
    """The board as CSV: means and standard deviations in separate columns, raw numbers."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    stats = [f"{k}_{part}" for k in METRICS for part in ("mean", "std")]
    flags = list(FLAGS)
    published = ["published_final_accuracy", "published_source", "published_convention", "gap"]
    costs = ["trainable_parameters", "wall_seconds", "peak_memory_mib"]
    more = [
        "convention",
        "train_eval_seconds",
        "extract_seconds",
        "extracted_seeds",
        "cache_wait_seconds",
        "did_not_train",
        "exemplar_budget",
        "written_before_a_change",
    ]
    names = ["strategy", "backbone", "precision", "protocol", "seeds"]
    writer.writerow([*names, *stats, *costs, *flags, *published, *more])
    for row in rows:
        ref = row.references[0] if row.references else None
        gap = row.gap(ref) if ref else None
        writer.writerow(
            [row.name, row.backbone, row.precision, row.protocol, " ".join(map(str, row.seeds))]
            + [_raw(v) for k in METRICS for v in row.stats[k]]
            + [row.trainable_parameters, f"{row.wall_seconds:.3f}", f"{row.peak_memory_mib:.1f}"]
            + [_raw(row.flags[k]) if k in row.flags else "n/a" for k in flags]
            + ([ref.final_accuracy, ref.source, ref.convention, _raw(gap)] if ref else [""] * 4)
            + [
                row.convention,
                _raw(row.train_eval_seconds),
                _raw(row.extract_seconds),
                " ".join(map(str, row.extracted_seeds)),
                _raw(row.cache_wait_seconds),
                _raw(bool(row.untrained)),
                row.flags.get("exemplar_budget") or "",
                _raw(bool(row.stale)),
            ]
        )
    return out.getvalue()


def _raw(value: float | bool | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
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
next. The main table shows final and average incremental accuracy in the row's convention (its
published number's, else the one its papers use); both conventions are in the details table and the
CSV. Times and peak memory are per run, on the machine in each result's `environment`.
`train+eval s / run` leaves out feature extraction and waits on another run's cache lock;
`features extracted` names the seeds that paid for the shared feature cache; the details table
keeps the total wall time. A row marked "did not train" records trainable parameters, but its
first-session loss never fell below chance or its accuracy matrix equals a frozen baseline's (NMC,
SimpleCIL) of the same seed and backbone (`cilbench/boards/training_checks.py`). A row marked
"written before a change" holds results computed before a code change that alters them without
changing their settings (`cilbench/boards/stale_rows.py` names the change); rerun it. Flags: `?`
means the strategy does not declare it, `n/a` that it does not apply (no prompt vote without
prompts). The published number is the first entry of `reference.json` for the same strategy,
stream, protocol and backbone; the gap is our mean minus it, in its accuracy convention.
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
        parts.append(
            f"## {stream}\n\n{board_table(rows)}\nDetails (both conventions, wall time, "
            f"memory, flags, sources): [{stream}.md]({stream}.md); "
            f"CSV: [{stream}.csv]({stream}.csv)\n"
        )
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

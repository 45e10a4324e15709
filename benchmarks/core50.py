"""CoRe50: 50 household objects filmed in 11 sessions, 128x128 PNG frames.

Layout under `<data-root>/core50/`: `core50_128x128/s<1..11>/o<1..50>/*.png` and the official
`batches_filelists/NC_inc/run<r>/{train_batch_<bb>_filelist.txt,test_filelist.txt}`. The test
set is sessions 3, 7 and 10. Scenarios (`stream.scenario`):

- `ni` (default, domain-incremental): one experience per training session, in the order s1, s2,
  s4, s5, s6, s8, s9, s11, each with all 50 objects; one test set evaluated after every
  experience (what the NMC paper, L2P and RanPAC report). Read from the folder tree.
- `nc` (class-incremental): the official NC batches of `stream.run` (0..9), 10 objects then 8 x 5.
  The official class order is the objects in batch order (`class_order=official`); any other
  order convention also works. In the file lists the label of an object depends on the run, so
  the original label is always taken from the path (`o<j>` -> j-1).

`cilbench data fetch core50` downloads the two archives with the URLs and md5s Avalanche
publishes (avalanche.benchmarks.datasets.core50.core50_data). `stream.decoded_size=N` reads
frames from a decoded uint8 cache. An unreadable frame stops the run with its path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from cilbench.api import register_stream
from cilbench.benchmarks._shared import (
    IMAGE_SUFFIXES,
    REFERENCE_BACKBONE,
    REFERENCE_PREPROCESSING,
    checksum_rows,
    data_root_or_default,
    missing_data,
    official_note,
)
from cilbench.core.callbacks import Progress
from cilbench.core.config import NonNegative, Range
from cilbench.core.errors import DataError
from cilbench.data.decoded_cache import maybe_decoded
from cilbench.data.downloads import CheckRow, Remote, download, record_checksums, unpack
from cilbench.data.sources import FileSource, ImageSource
from cilbench.data.streams import (
    ClassIncrementalOptions,
    Stream,
    class_incremental_stream,
    domain_incremental_stream,
)

NAME = "core50"
FOLDER = "core50"
IMAGES = "core50_128x128"
TRAIN_SESSIONS = (1, 2, 4, 5, 6, 8, 9, 11)
TEST_SESSIONS = (3, 7, 10)
NUM_OBJECTS = 50
NC_BATCHES = 9
CATEGORIES = (
    "plug_adapter", "mobile_phone", "scissor", "light_bulb", "can",
    "glass", "ball", "marker", "cup", "remote_control",
)  # fmt: skip
CLASS_NAMES = tuple(f"{c}{k}" for c in CATEGORIES for k in range(1, 6))
ARCHIVES = ("core50_128x128.zip", "batches_filelists.zip")
OFFICIAL_COUNTS = {"train": 119_894, "test": 44_972}
LAYOUT = (
    f"  <data-root>/{FOLDER}/{IMAGES}/s1 ... s11/o1 ... o50/*.png\n"
    f"  <data-root>/{FOLDER}/batches_filelists/NC_inc/run0 ... run9/"
    "train_batch_00_filelist.txt ... train_batch_08_filelist.txt, test_filelist.txt"
)
_OBJECT = re.compile(r"(?:^|/)o(\d+)/")


@register_stream(NAME)
@dataclass(frozen=True)
class Core50(ClassIncrementalOptions):
    """CoRe50, `ni` (8 sessions, domain-incremental, default) or `nc` (10 + 8 x 5 objects)."""

    default_backbone = REFERENCE_BACKBONE
    default_backbone_settings = REFERENCE_PREPROCESSING

    scenario: Literal["ni", "nc"] = "ni"
    run: Annotated[int, Range(0, 9)] = 0
    """Which official NC run (0..9) gives the batches in the `nc` scenario."""
    init_classes: int = 10
    increment: int = 5
    class_order: str = "official"
    decoded_size: Annotated[int, NonNegative()] = 0
    """0: decode PNGs on every read; N: read N x N frames from a decoded cache."""

    def build(self, data_root: Path | None = None) -> Stream:
        folder = self._folder(data_root)
        if self.scenario == "ni":
            parts = [
                self._source(folder, session_files(folder, [s]), f"s{s}") for s in TRAIN_SESSIONS
            ]
            test = self._source(folder, session_files(folder, TEST_SESSIONS), "test")
            return domain_incremental_stream(NAME, self.version, parts, test, CLASS_NAMES)
        batches = [
            read_filelist(nc_list(folder, self.run, f"train_batch_{b:02d}"))
            for b in range(NC_BATCHES)
        ]
        train = self._source(folder, [f for batch in batches for f, _ in batch], "nc-train")
        test_files = [f for f, _ in read_filelist(nc_list(folder, self.run, "test"))]
        test = self._source(folder, test_files, "nc-test")
        orders = {"official": official_order(batches)}
        return class_incremental_stream(NAME, self.version, train, test, CLASS_NAMES, self, orders)

    def _source(self, folder: Path, files: list[str], part: str) -> ImageSource:
        labels = [object_label(f) for f in files]
        source = FileSource(folder / IMAGES, files, labels, f"{NAME}-{part}")
        return maybe_decoded(source, self.decoded_size)

    def fetch(self, root: Path, progress: Progress) -> list[str]:
        """Download the frames and file lists (Avalanche's URLs and md5s), unpack, record."""
        from avalanche.benchmarks.datasets.core50 import core50_data

        folder = root / FOLDER
        for filename, url, md5 in core50_data.data:
            if filename in ARCHIVES:
                unpack(download(Remote(url, filename, md5), folder, progress), folder, progress)
        files = session_files(folder, TRAIN_SESSIONS + TEST_SESSIONS)
        record_checksums(folder, [f"{IMAGES}/{f}" for f in files], progress)
        return [f"CoRe50 is ready in {folder} (md5 verified); use --data-root {root}"]

    def check(self, root: Path, progress: Progress, record: bool = False) -> list[CheckRow]:
        """Sessions and objects present, frames per split, NC file lists, checksums."""
        folder = self._folder(root)
        rows = []
        files: dict[str, list[str]] = {}
        for split, sessions in (("train", TRAIN_SESSIONS), ("test", TEST_SESSIONS)):
            files[split] = session_files(folder, sessions)
            note = official_note(len(files[split]), OFFICIAL_COUNTS[split], "frames")
            found = f"{len(files[split])} frames"
            rows.append(
                CheckRow(f"{split}: sessions {sessions}", found, "50 objects each", note=note)
            )
        listed = sum(
            len(read_filelist(nc_list(folder, self.run, f"train_batch_{b:02d}")))
            for b in range(NC_BATCHES)
        )
        rows.append(
            CheckRow(
                f"NC run {self.run} file lists",
                f"{listed} train frames",
                str(len(files["train"])),
                ok=listed == len(files["train"]),
            )
        )
        all_files = [f"{IMAGES}/{f}" for f in files["train"] + files["test"]]
        return rows + checksum_rows(folder, all_files, record, progress)

    def _folder(self, data_root: Path | None) -> Path:
        root = data_root_or_default(data_root)
        folder = root / FOLDER
        if not (folder / IMAGES).is_dir():
            raise missing_data("CoRe50", folder, NAME, LAYOUT, fetchable=True)
        return folder


def session_files(folder: Path, sessions: tuple[int, ...] | list[int]) -> list[str]:
    """Frames of `sessions` relative to the image folder, sorted; every object must be there."""
    files: list[str] = []
    for session in sessions:
        for obj in range(1, NUM_OBJECTS + 1):
            path = folder / IMAGES / f"s{session}" / f"o{obj}"
            if not path.is_dir():
                raise DataError(f"CoRe50 folder {path} is missing. Expected layout:\n{LAYOUT}")
            frames = sorted(p.name for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not frames:
                raise DataError(f"CoRe50 folder {path} holds no frames.")
            files.extend(f"s{session}/o{obj}/{name}" for name in frames)
    return files


def nc_list(folder: Path, run: int, name: str) -> Path:
    """Path of an official NC file list; a clear error when it is missing."""
    path = folder / "batches_filelists" / "NC_inc" / f"run{run}" / f"{name}_filelist.txt"
    if not path.is_file():
        raise DataError(
            f"CoRe50 file list {path} is missing (needed for scenario 'nc', run {run}; runs are "
            f"0..9). Get it with:\n  cilbench data fetch {NAME} --root {folder.parent}"
        )
    return path


def read_filelist(path: Path) -> list[tuple[str, int]]:
    """(relative frame path, label) per line of an official file list."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or not _OBJECT.search(parts[0]):
            raise DataError(
                f"{path}:{number}: expected '<s>/<o>/<frame>.png <label>'; got {line!r}"
            )
        entries.append((parts[0], int(parts[1])))
    return entries


def object_label(relative: str) -> int:
    """0-based object index from a frame path `s<k>/o<j>/...`."""
    match = _OBJECT.search(relative)
    if match is None:
        raise DataError(f"CoRe50 frame path {relative!r} names no object folder o<j>.")
    return int(match.group(1)) - 1


def official_order(batches: list[list[tuple[str, int]]]) -> list[int]:
    """Objects in the order the NC batches bring them (by file-list label within a batch)."""
    order: list[int] = []
    for batch in batches:
        labelled = sorted({(label, object_label(f)) for f, label in batch})
        order.extend(obj for _, obj in labelled if obj not in order)
    if sorted(order) != list(range(NUM_OBJECTS)):
        raise DataError(f"The NC batches cover {len(set(order))} objects; expected {NUM_OBJECTS}.")
    return order

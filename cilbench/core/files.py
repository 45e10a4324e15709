"""Writing files safely: atomic replace, normal permissions, disk-full messages, stale temp files.

Every file cilbench writes (results, checkpoints, feature and decoded-image caches) is written to a
temporary name unique to its writer, `<name>.<host>.<pid>.<random>.tmp` next to the target, and
renamed over the target, so readers see the old file or the new one and two writers never share a
temporary file. A temporary file gets the permissions a plain `open` would give (0666 minus the
umask, not mkstemp's 0600), so a lab can share a cache. Disk full (ENOSPC, EDQUOT) or the file
size limit (EFBIG, `ulimit -f`) becomes a `DiskFullError` naming the file, after the temporary
file is removed, whether the writer raised an `OSError` or, like safetensors, an error of its own
that names the OS error ("No space left on device (os error 28)"). A process killed mid-write
leaves its temporary file behind; `remove_stale_temps` deletes those whose writer is gone.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cilbench.core.errors import CilbenchError, DiskFullError

HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
TEMP_NAME = re.compile(r"\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
FOREIGN_TEMP_AGE = 24 * 3600.0
"""Seconds after which a temporary file of another host (or of an older cilbench) is stale."""
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_errno(error: BaseException) -> int | None:
    """The OS error number behind `error`: an `OSError`'s errno, or the "(os error N)" that Rust
    libraries (safetensors' `SafetensorError`) put in their message; None when there is none."""
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno
    match = _OS_ERROR.search(str(error))
    return int(match[1]) if match else None


def disk_full_error(target: Path, error: BaseException) -> DiskFullError | None:
    """A `DiskFullError` naming `target` when `error` is a full disk or a file size limit."""
    number = os_errno(error)
    if number not in DISK_FULL:
        return None
    if number == errno.EFBIG:
        what = f"File size limit reached while writing {target} (File too large: see `ulimit -f`)"
        fix = "Raise the limit"
    else:
        what = f"No space left on device while writing {target} ({os.strerror(number)})"
        fix = "Free some space"
    return DiskFullError(
        f"{what}. Nothing was half-written: the previous version, if any, is intact. {fix} (or "
        "point --out / --cache-dir elsewhere) and run again."
    )


def file_mode() -> int:
    """What `open(path, "w")` would give a new file: 0666 minus the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path to write `target`'s new content to; renamed over `target` on success.

    On any error the temporary file is removed and `target` keeps its old content; a full disk
    raises DiskFullError.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(
        dir=target.parent, prefix=f"{target.name}.{HOST}.{os.getpid()}.", suffix=".tmp"
    )
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        _replace(tmp, target)
    except Exception as error:  # safetensors raises SafetensorError, not OSError
        full = disk_full_error(target, error)
        if full is not None:
            raise full from error
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _replace(tmp: Path, target: Path) -> None:
    """Rename `tmp` over `target`; a folder where the file belongs is one clear error."""
    try:
        os.replace(tmp, target)
    except IsADirectoryError:
        raise CilbenchError(
            f"{target} is a folder, where cilbench writes a file; move it away and run again."
        ) from None


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never a mix."""
    with atomic_path(path) as tmp, tmp.open("w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())


def reserve(path: Path, size: int) -> None:
    """Give `path` `size` bytes of real disk blocks before a memory map fills it.

    A memory map over a sparse file dies of SIGBUS when the disk fills; reserving the blocks first
    turns a full disk into an ENOSPC here (a `DiskFullError` inside `atomic_path`).
    """
    with path.open("r+b" if path.exists() else "w+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, size)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            free = shutil.disk_usage(path.parent).free
            if free < size:
                raise OSError(errno.ENOSPC, f"{size} bytes needed, {free} free") from error
            handle.truncate(size)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temporary files in `folder` left by writers that died; return what was deleted.

    Stale: written on this host by a process that no longer runs, or over a day old when written
    on another host (a shared cache) or under a name without a writer (older cilbench versions).
    """
    removed = []
    for path in folder.glob("*.tmp*") if folder.is_dir() else ():
        if _is_stale(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _is_stale(path: Path) -> bool:
    match = TEMP_NAME.search(path.name)
    if match and match["host"] == HOST:
        return not _running(int(match["pid"]))
    try:
        return time.time() - path.stat().st_mtime > FOREIGN_TEMP_AGE
    except OSError:
        return False


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def check_writable(folder: Path, what: str) -> None:
    """Create `folder` if needed and prove a file can be written there; CilbenchError if not."""
    problem = writable_problem(folder)
    if problem:
        raise CilbenchError(f"Cannot write to the {what} {folder}: {problem}.")


def writable_problem(folder: Path) -> str:
    """'' when a file can be created in `folder` (created if missing), else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return error.strerror or str(error)
    return ""

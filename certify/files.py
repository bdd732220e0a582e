"""Atomic file writes and the lock of an output directory.

Every output is written to a temporary file beside it, fsynced, then renamed over the old
one: a reader (or a run killed at any moment) sees either the old file or the complete new
one, never a part. ``OutLock`` makes one run at a time own an output directory, from before
planning until its last file is written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from guard.errors import ToolkitError

LOCK_FILE = ".lock"
_TEMP_SUFFIX = ".tmp"


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; best effort (some file systems cannot open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files that a killed writer left in ``folder``; returns them.

    Call it only while holding the folder's ``OutLock``: then no writer is running there.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.glob(f".*{_TEMP_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def move_aside(folder: str | os.PathLike[str], names: Iterable[str], prefix: str = "previous") -> Path | None:
    """Move the files ``names`` of ``folder`` that exist into a new ``folder/<prefix>-<UTC time>/``.

    Returns that folder, or None when there was nothing to move.
    """
    folder = Path(folder)
    present = [folder / n for n in names if (folder / n).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = folder / f"{prefix}-{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = folder / f"{prefix}-{stamp}-{suffix}"
    target.mkdir()
    for path in present:
        shutil.move(str(path), str(target / path.name))
    _fsync_dir(folder)
    return target


class OutLock:
    """An exclusive lock on an output directory (``DIR/.lock``), held by one run at a time.

    Taken with ``flock`` and never waits: a second run fails at once with a ToolkitError naming
    the holder's pid. The kernel releases it when the holder exits, even by SIGKILL, so a
    stale lock file is harmless; the file itself stays (removing it would race). No locking
    where ``fcntl`` is missing (not POSIX).

    Example::

        with OutLock(out):
            ...  # plan, evaluate, write every output
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd = -1

    def acquire(self) -> OutLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            self._fd = fd
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ToolkitError(f"{self.folder} is in use by another run (pid {holder}); wait for it to finish "
                               "or choose another --out") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the lock
            self._fd = -1

    def __enter__(self) -> OutLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

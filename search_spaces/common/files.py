"""Files: atomic writes (readers see the old file or the complete new one), write locks, user text files."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from search_spaces.common.errors import InputFileError, OutputError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Temporary files of `path` left by writers that were killed (their pid is in the name)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(f)` on a temporary file beside `path`, then rename it over `path` (mode 0644 minus umask).
    Temporary files that killed writers left beside `path` are removed first."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"{path}: cannot write here ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_text(path: str | Path, what: str = "file") -> str:
    """A user-named text file's contents; a missing, unreadable or non-UTF-8 file is an `InputFileError`
    naming the path."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise InputFileError(f"{path}: is a directory, not a {what}") from None
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: not a UTF-8 text {what}") from None
    except OSError as err:
        raise InputFileError(f"{path}: cannot read the {what} ({err.strerror or err})") from None


@contextmanager
def exclusive(target: str | Path) -> Iterator[None]:
    """Hold the write lock of `target` (a table, a run folder) for the block: another process that asks
    for it meanwhile gets one `OutputError` line instead of mixing its writes in. The lock is an
    advisory `flock` on a hidden `.NAME.lock` file beside `target`, released when the process ends."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target.parent / f".{target.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise OutputError(f"{target}: cannot write here ({err.strerror or err})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputError(f"{target} is being written by another process; wait for it or choose another "
                          "output") from None
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

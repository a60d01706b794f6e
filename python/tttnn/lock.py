"""One writer at a time per directory: an advisory lock for run and index directories.

`exclusive_writer(directory, what="run")` holds `fcntl.flock(LOCK_EX | LOCK_NB)` on the file
`LOCK_FILE` inside the directory for the duration of a `with` block; a second writer, in this
process or another, gets `LockedError` at once (no waiting), naming the directory and the holder's
pid and host, which the holder writes into the lock file. Readers take no lock and are never
blocked.

Why flock on a kept file:
- The kernel drops the lock when the holder's file descriptor closes, including when the process
  is killed (`kill -9`, OOM): a crashed writer never leaves the directory locked. The lock file
  itself stays behind; that is harmless, its presence means nothing, only the lock on it does.
- The file is never deleted on release: a writer that unlinked it could race a second writer that
  has just opened the old file and a third that creates a new one, and both would "hold" the lock.
- A lock belongs to an open file, not a process: a second `exclusive_writer` on the same directory
  in the same process also fails, and a child forked while the lock is held keeps it held until
  the child exits too (the descriptor is not inherited across `exec`).

Where there is no lock to take, writing goes on unlocked with a `LockUnavailableWarning`: on
Windows (no `fcntl`; `msvcrt.locking` locks byte ranges mandatorily, which we cannot test here)
and on file systems that refuse `flock` (Lustre mounted without `-o flock` answers ENOSYS). NFS
v4 and local file systems lock across hosts and processes as described.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

__all__ = [
    "LOCK_FILE",
    "LockUnavailableWarning",
    "LockedError",
    "WriterLock",
    "exclusive_writer",
]

LOCK_FILE = ".tttnn-writer.lock"
"""Name of the lock file created inside a locked directory."""

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


class LockedError(RuntimeError):
    """Another writer holds the directory. `directory` is the directory, `holder_pid` the pid
    recorded by the holder (None when it could not be read)."""

    def __init__(self, message: str, directory: Path, holder_pid: int | None) -> None:
        super().__init__(message)
        self.directory = directory
        self.holder_pid = holder_pid


class LockUnavailableWarning(UserWarning):
    """No lock could be taken on this platform or file system; writing goes on unlocked."""


class WriterLock:
    """The writer lock of `directory` (created when missing). `acquire()` takes it or raises
    `LockedError`; `release()` lets it go; also a context manager. Not re-entrant."""

    def __init__(self, directory: Union[str, os.PathLike[str]], what: str = "directory") -> None:
        self.directory = Path(directory)
        self.what = what
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock (False after release, or when no lock was possible)."""
        return self._fd is not None

    def acquire(self) -> WriterLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this WriterLock")
        self.directory.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            _warn_unlocked(self.directory, "file locks need fcntl, which this platform lacks")
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise self._locked_error() from None
            if e.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                _warn_unlocked(self.directory, f"the file system refuses flock ({e.strerror})")
                return self
            raise
        # Who holds it, for the message of the next writer (diagnostics only: never trusted).
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "what": self.what,
            "argv": sys.argv[:8],
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(holder) + "\n").encode())
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _locked_error(self) -> LockedError:
        holder: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(self.path.read_text(encoding="utf-8") or "{}")
            if isinstance(loaded, dict):
                holder = loaded
        pid = holder.get("pid") if isinstance(holder.get("pid"), int) else None
        if pid is None:
            who = "another writer (its pid is not recorded yet)"
        else:
            host = holder.get("host")
            who = f"pid {pid}" + (f" on {host}" if isinstance(host, str) and host else "")
            if pid == os.getpid() and host == socket.gethostname():
                who += " (this process)"
            since = holder.get("since")
            if isinstance(since, str):
                who += f", since {since}"
        return LockedError(
            f"{self.what} directory {self.directory} is locked by another writer: {who} "
            f"(lock file {self.path}). Only one writer at a time; the lock is released when "
            "that process ends. Readers are not affected.",
            self.directory,
            pid,
        )


@contextlib.contextmanager
def exclusive_writer(
    directory: Union[str, os.PathLike[str]], what: str = "directory"
) -> Iterator[WriterLock]:
    """Hold the writer lock of `directory` for the `with` block, or raise `LockedError`.

    `what` names the directory in messages ("run", "index"). The directory is created when
    missing.
    """
    with WriterLock(directory, what) as lock:
        yield lock


def _warn_unlocked(directory: Path, why: str) -> None:
    warnings.warn(
        f"writing to {directory} without a writer lock: {why}; make sure no other process "
        "writes there at the same time",
        LockUnavailableWarning,
        stacklevel=3,
    )

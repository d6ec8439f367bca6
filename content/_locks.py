"""Per-ingest locks that hold across processes and die with their holder."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from filelock import FileLock, Timeout


class IngestLock:
    """An exclusive lock on one ingest, taken without waiting.

    It is an flock (through filelock) on the ingest's lock file, so it holds
    across processes and the kernel drops it when its process dies: no stale
    locks. The lock file lives and dies with the ingest, so lock files never
    outnumber ingests. When the ingest is finished (committed or aborted) the
    holder unlinks the file *while still holding the lock*; filelock's acquire
    rejects an unlinked inode and retries on the path, so a waiter that opened
    the old file can never share the lock with one that creates the new file.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        # thread_local=False: a daemon may release on another thread than the
        # one that acquired (stream teardown callbacks). fallback_to_soft=False:
        # a soft lock would outlive a crashed holder.
        self._lock = FileLock(
            str(self._path), timeout=0, thread_local=False, fallback_to_soft=False
        )

    def try_acquire(self) -> bool:
        """Take the lock if it is free; False at once if another holder has it."""
        try:
            self._lock.acquire()
        except Timeout:
            return False
        return True

    def write_note(self, note: str) -> None:
        """Leave `note` in the lock file, for whoever takes the lock after a crash.

        Only the holder writes the file's content (filelock never truncates
        it), and the note goes with the file when the ingest is finished.
        """
        fd = os.open(self._path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
        try:
            os.write(fd, note.encode())
        finally:
            os.close(fd)

    def clear_note(self) -> None:
        """Empty the lock file again."""
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self._path, 0)

    def read_note(self) -> str:
        """The note a holder left in the lock file ("" if none)."""
        try:
            return self._path.read_text()
        except FileNotFoundError:
            return ""

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._lock.is_locked

    def release(self, *, remove: bool = False) -> None:
        """Release the lock; with `remove`, unlink the lock file first (the ingest is gone)."""
        if not self._lock.is_locked:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
        self._lock.release(force=True)

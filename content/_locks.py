"""The lock backend of a local store: per-ingest locks that hold across processes and die
with their holder."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

from filelock import lock_descriptor, unlock_descriptor

from ._fs import translate_os_errors

# A finishing holder unlinks the lock file; a contender that opened it just
# before may lock the unlinked file and must try the path again. Twice in a
# row means the ref is busy being finished and started over: call it held.
_ATTEMPTS = 3
_OPEN_EXISTING = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_UNNAMED = getattr(os, "O_TMPFILE", 0) | os.O_RDWR | os.O_CLOEXEC
# Filesystems (or kernels) without O_TMPFILE, and /proc not mounted.
_NO_UNNAMED_FILES = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT})


class IngestLock:
    """An exclusive lock on one ingest, taken without waiting.

    It is filelock's native lock (an flock) on the ingest's lock file, taken
    through `filelock.lock_descriptor` on a descriptor this object owns, so it
    holds across processes (and against filelock's FileLock on the same file)
    and the kernel drops it when its process dies: no stale locks. The lock
    file lives and dies with the ingest, so lock files never outnumber
    ingests. When the ingest is finished (committed or aborted) the holder
    unlinks the file *while still holding the lock*, and a new holder checks
    that the path still names the file it locked, so a contender that opened
    the old file can never share the lock with one that creates the new file.

    While it commits, the holder keeps a note in the file: what the commit is
    about to store, for whoever takes the lock after a crash.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def try_acquire(self, *, create: bool = True) -> bool:
        """Take the lock if it is free; False at once if another holder has it.

        A lock file this makes appears in place already locked, so nobody
        else (repair above all, which takes free lock files to inspect their
        ingests) can take it between its creation and its locking and so
        refuse its writer. Without `create`, only a lock file that exists is
        taken (False when there is none).

        With `create`, making the file is tried first: a writer's ref is
        new far more often than it is being resumed or contended for, and
        opening a lock file that is not there yet would fail every time.
        """
        for _ in range(_ATTEMPTS):
            taken = self._create_locked() if create else None
            if taken is None:
                try:
                    taken = self._take(os.open(self._path, _OPEN_EXISTING))
                except FileNotFoundError:
                    if not create:
                        return False
                    continue  # finished and unlinked since this found it there
            if taken is not None:
                return taken
            # The file this opened was finished and unlinked, or another
            # writer made the lock file first: contend for the one there now.
        return False

    def _take(self, fd: int) -> bool | None:
        """Lock the open lock file `fd` and keep it: True; False if another holder has it.

        None if the path no longer names that file (its ingest was finished
        meanwhile). Closes `fd` unless it is kept.
        """
        try:
            locked = lock_descriptor(fd, blocking=False)
            named = self._names(fd)
        except BaseException:
            os.close(fd)
            raise
        if locked and named:
            self._fd = fd
            return True
        os.close(fd)  # which lets go of the lock, if taken
        # Locked but no longer named: its holder is finishing the ingest (it
        # unlinks before it unlocks), so the ref is free, not held.
        return False if named else None

    def _create_locked(self) -> bool | None:
        """Lock a new, nameless file and link it in as the lock file; None if one exists."""
        try:
            fd = os.open(self._path.parent, _OPEN_UNNAMED, 0o600)
        except OSError as exc:
            if exc.errno not in _NO_UNNAMED_FILES:
                raise
            # No unnamed files here: create it by name (a repair may take it first).
            return self._take(os.open(self._path, _OPEN_EXISTING | os.O_CREAT, 0o600))
        try:
            lock_descriptor(fd, blocking=True)  # nobody else can see it yet
            # Python calls link(2), which would link /proc's symlink itself,
            # unless given a directory descriptor; the source is absolute, so
            # linkat(2) ignores the one given and follows the link to the file.
            os.link(f"/proc/self/fd/{fd}", self._path, src_dir_fd=fd, follow_symlinks=True)
        except FileExistsError:
            os.close(fd)
            return None
        except FileNotFoundError:
            os.close(fd)  # no /proc to link it through
            return self._take(os.open(self._path, _OPEN_EXISTING | os.O_CREAT, 0o600))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def _names(self, fd: int) -> bool:
        """Whether the lock file's path still names the file open as `fd`."""
        try:
            named = os.stat(self._path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return os.path.samestat(named, os.fstat(fd))

    def exists(self) -> bool:
        """Whether the lock file exists (held or not)."""
        return os.path.lexists(self._path)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def _held_fd(self) -> int:
        if self._fd is None:
            raise RuntimeError("the ingest lock is not held")
        return self._fd

    def write_note(self, note: str) -> None:
        """Leave `note` in the lock file, for whoever takes the lock after a crash."""
        fd = self._held_fd()
        with translate_os_errors("noting a commit"):
            os.ftruncate(fd, 0)
            os.pwrite(fd, note.encode(), 0)

    def clear_note(self) -> None:
        """Empty the lock file again."""
        with translate_os_errors("clearing a commit's note"):
            os.ftruncate(self._held_fd(), 0)

    def read_note(self) -> str:
        """The note a holder left in the lock file ("" if none)."""
        fd = self._held_fd()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def release(self, *, remove: bool = False) -> None:
        """Release the lock; with `remove`, unlink the lock file first (the ingest is gone)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if remove:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path)
            unlock_descriptor(fd)
        finally:
            os.close(fd)


class FileLocks:
    """Ingest locks as ``<key>.lock`` files beside the ingests' bytes (see `IngestLock`)."""

    SUFFIX: Final = ".lock"

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def _lock(self, key: str) -> IngestLock:
        return IngestLock(self._directory / f"{key}{self.SUFFIX}")

    def try_lock(self, key: str, *, create: bool = True) -> IngestLock | None:
        lock = self._lock(key)
        with translate_os_errors("locking an ingest"):
            return lock if lock.try_acquire(create=create) else None

    def exists(self, key: str) -> bool:
        return self._lock(key).exists()

    def existing(self) -> dict[str, bool]:
        found = {}
        for entry in os.scandir(self._directory):
            if not entry.name.endswith(self.SUFFIX):
                continue
            try:
                # A lock file with content carries a commit intent.
                noted = entry.stat(follow_symlinks=False).st_size > 0
            except FileNotFoundError:
                continue  # its ingest ended while this listed them
            found[entry.name.removesuffix(self.SUFFIX)] = noted
        return found

    def close(self) -> None:
        """Nothing to close: each lock owns its descriptor."""


if TYPE_CHECKING:
    from ._backends import LockBackend, RefLock

    # mypy checks here that the file locks keep the lock backend's contract.
    _backend: type[LockBackend] = FileLocks
    _lock: type[RefLock] = IngestLock

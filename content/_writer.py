"""An ingest being written: appends, resumes, truncates, and commits into a blob."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from contentd.errdefs import AlreadyExists, ContentdError, FailedPrecondition, Unimplemented

from ._fs import WRITEBACK_BYTES, start_writeback, translate_os_errors, write_all
from ._locks import IngestLock
from ._metadata import IngestRecord
from ._root import INGEST_MODE, Recording, StoreRoot
from ._types import Closing, Status, datetime_from_ns
from ._validate import (
    new_hasher,
    split_digest,
    validate_digest,
    validate_labels,
    validate_size,
)

_CHUNK = 1 << 20
_log = logging.getLogger("contentd.store")


def drop_empty(labels: Mapping[str, str]) -> dict[str, str]:
    """Labels without the empty values, which mean "no such label" (as in containerd)."""
    return {key: value for key, value in validate_labels(labels).items() if value}


class LocalWriter(Closing):
    """A Writer on a LocalStore ingest; holds the ingest's lock until commit or close.

    The bytes go to ``ingest/<key>`` as they arrive, hashed on the way,
    so commit only has to fsync, verify and rename. An ingest that starts
    from a blob another namespace stored (containerd's shared policy) has no
    data file until something is appended to it.
    """

    def __init__(
        self,
        root: StoreRoot,
        record: IngestRecord,
        lock: IngestLock,
        *,
        labels: Mapping[str, str],
        algorithm: str,
        base_size: int,
    ) -> None:
        self._root = root
        self._namespace = record.namespace
        self._ref = record.ref
        self._key = record.key
        self._lock = lock
        self._total = record.total
        self._expected = record.expected
        self._started_at = record.started_at
        self._updated_at = record.updated_at
        self._labels = dict(labels)
        self._algorithm = algorithm
        self._base = record.base
        self._base_size = base_size
        self._hasher = new_hasher(algorithm)
        self._offset = 0
        # Where the bytes not yet handed to the kernel's writeback start.
        self._written_back = 0
        self._fd: int | None = None
        self._finished = False
        # Set once the ingest no longer exists (committed, or found committed).
        self._gone = False
        # Set once the bytes moved into blobs/: the ingest's data file is gone,
        # and if the record failed to commit, its intent is left for repair.
        self._moved = False
        if self._base is None:
            self._open_data()

    @property
    def ref(self) -> str:
        return self._ref

    @property
    def _data_path(self) -> Path:
        return self._root.ingest_data(self._key)

    def _open_data(self, *, truncate: bool = False) -> None:
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if truncate else 0)
        with translate_os_errors(f"opening ingest {self._ref}"):
            # Private until committed: the bytes of an ingest are its writer's alone.
            fd = os.open(self._data_path, flags, INGEST_MODE)
            try:
                # Resuming: rebuild the digest state from the bytes on disk,
                # which leaves the file position at the end, where writes go.
                while chunk := os.read(fd, _CHUNK):
                    self._hasher.update(chunk)
                    self._offset += len(chunk)
                mtime = os.fstat(fd).st_mtime_ns
            except BaseException:
                os.close(fd)
                raise
        self._fd = fd
        # A writer that crashed never recorded its last write; the file did.
        self._updated_at = max(self._updated_at, mtime)

    def _check_open(self) -> int | None:
        if self._finished:
            raise FailedPrecondition(f"writer for ref {self._ref} is closed")
        return self._fd

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self._check_open()
        if not data:
            return 0
        if self._base is not None:
            self._materialize()
        fd = self._fd
        assert fd is not None
        with translate_os_errors(f"writing ingest {self._ref}"):
            try:
                write_all(fd, data)
            except OSError:
                # Keep the file equal to what the digest has seen.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._offset)
                    os.lseek(fd, self._offset, os.SEEK_SET)
                raise
        self._hasher.update(data)
        self._offset += len(data)
        self._updated_at = time.time_ns()
        if self._offset - self._written_back >= WRITEBACK_BYTES:
            start_writeback(fd, self._written_back, self._offset - self._written_back)
            self._written_back = self._offset
        return len(data)

    def _materialize(self) -> None:
        """Copy the shared blob into this ingest's own data file before appending."""
        base = self._base
        assert base is not None
        self._hasher = new_hasher(self._algorithm)
        self._offset = 0
        self._open_data(truncate=True)
        fd = self._fd
        assert fd is not None
        with (
            translate_os_errors(f"copying {base} into ingest {self._ref}"),
            open(self._root.blob_path(base), "rb") as source,
        ):
            while chunk := source.read(_CHUNK):
                write_all(fd, chunk)
                self._hasher.update(chunk)
                self._offset += len(chunk)
        self._base = None
        self._record_progress()

    def digest(self) -> str:
        if self._base is not None:
            return self._base
        return f"{self._algorithm}:{self._hasher.hexdigest()}"

    @property
    def offset(self) -> int:
        """How many bytes the ingest holds (cheaper than a whole `status`)."""
        return self._base_size if self._base is not None else self._offset

    def status(self) -> Status:
        return Status(
            ref=self._ref,
            offset=self._base_size if self._base is not None else self._offset,
            total=self._total,
            expected=self._expected,
            started_at=datetime_from_ns(self._started_at),
            updated_at=datetime_from_ns(self._updated_at),
        )

    def truncate(self, size: int = 0) -> None:
        self._check_open()
        if size != 0:
            raise Unimplemented(f"truncate of ingest {self._ref} to {size} bytes: only 0 is")
        self._hasher = new_hasher(self._algorithm)
        self._offset = self._written_back = 0
        self._updated_at = time.time_ns()
        if self._base is not None:
            self._base = None
            self._open_data(truncate=True)
            self._record_progress()
            return
        fd = self._fd
        assert fd is not None
        with translate_os_errors(f"truncating ingest {self._ref}"):
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)

    def commit(
        self, size: int = 0, expected: str = "", labels: Mapping[str, str] | None = None
    ) -> str:
        self._check_open()
        try:
            return self._commit(size, expected, self._labels if labels is None else labels)
        finally:
            self._finish()

    def _commit(self, size: int, expected: str, labels: Mapping[str, str]) -> str:
        validate_size("commit size", size)
        if expected:
            validate_digest(expected)
        final_labels = drop_empty(labels)
        actual_size = self._base_size if self._base is not None else self._offset
        if size > 0 and size != actual_size:
            raise FailedPrecondition(f"unexpected commit size {actual_size}, expected {size}")
        actual = self._base if self._base is not None else self._final_digest(expected)
        if expected and expected != actual:
            raise FailedPrecondition(f"unexpected commit digest {actual}, expected {expected}")
        if self._base is not None:
            self._commit_shared(actual, actual_size, final_labels)
        else:
            self._commit_own(actual, actual_size, final_labels)
        return actual

    def _final_digest(self, expected: str) -> str:
        algorithm = split_digest(expected)[0] if expected else self._algorithm
        if algorithm == self._algorithm:
            return self.digest()
        # Verifying against another algorithm than the writer hashed with.
        hasher = new_hasher(algorithm)
        with open(self._data_path, "rb") as data:
            while chunk := data.read(_CHUNK):
                hasher.update(chunk)
        return f"{algorithm}:{hasher.hexdigest()}"

    def _commit_shared(self, digest: str, size: int, labels: dict[str, str]) -> None:
        outcome = Recording()
        self._root.record_blob(
            self._namespace, self._ref, digest, size, labels, source=None, outcome=outcome
        )
        self._gone = True
        if outcome.existed:
            raise AlreadyExists(f"content {digest}")

    def _commit_own(self, digest: str, size: int, labels: dict[str, str]) -> None:
        fd = self._fd
        assert fd is not None
        with translate_os_errors(f"committing {digest}"):
            os.fdatasync(fd)
            # The intent first: whoever finds the bytes read-only finds it too,
            # and makes them writable again if they never moved.
            self._root.write_commit_intent(self._lock, self._namespace, self._ref, digest, labels)
            os.fchmod(fd, 0o444)
        outcome = Recording()
        try:
            self._root.record_blob(
                self._namespace,
                self._ref,
                digest,
                size,
                labels,
                source=self._data_path,
                outcome=outcome,
            )
        except BaseException:
            if not outcome.moved:
                # Still an ingest, to be resumed and appended to.
                with contextlib.suppress(OSError):
                    os.fchmod(fd, INGEST_MODE)
            raise
        finally:
            self._moved = outcome.moved
        self._gone = True
        if outcome.existed:
            raise AlreadyExists(f"content {digest}")

    def _record_progress(self) -> None:
        with self._root.metadata.write(f"recording ingest {self._ref}", durable=False) as tx:
            tx.update_ingest(
                self._namespace,
                self._ref,
                total=self._total,
                expected=self._expected,
                updated_at=self._updated_at,
                base=self._base,
            )

    def _record_progress_quietly(self) -> None:
        # Losing the record of the last write time is harmless (the data
        # file's mtime stands in); failing a close or masking a commit's own
        # error over it is not.
        try:
            self._record_progress()
        except ContentdError as exc:
            _log.warning("could not record progress of ingest %s: %s", self._ref, exc)

    def close(self) -> None:
        """Release the lock and keep the ingest for a later writer to resume."""
        if not self._finished:
            self._finish()

    def _finish(self) -> None:
        self._finished = True
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                os.close(fd)
            if self._gone:
                self._root.remove_ingest_files(self._key, self._lock)
            elif not self._moved:
                # A commit that failed after the bytes moved keeps its
                # intent: the next open, or writer of this ref, finishes it.
                self._lock.clear_note()
                self._record_progress_quietly()
        finally:
            self._lock.release()

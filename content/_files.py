"""The blob backend of a local store: committed blobs and ingests' bytes as files.

Layout under the store root::

    blobs/<algorithm>/<hex>     committed blobs, read-only, shared by namespaces
    ingest/<key>                bytes of an ingest in progress (mode 0600)
    ingest/<key>.lock           its writer's lock (see `_locks`)
    trash/                      blobs being deleted, gone once the delete commits
    quarantine/                 blobs `contentd verify` found bad (see `_verify`)

A blob is published by renaming its ingest's file into blobs/ inside the
metadata transaction that records it, and that directory is fsynced before
the transaction commits; a delete renames it into trash/ inside its own
transaction, and unlinks it once that committed. Sealing an ingest makes its
file read-only: its bytes are verified and must not change before the rename.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final

from contentd.errdefs import InvalidArgument

from ._backends import MetadataTransaction
from ._fs import (
    WRITEBACK_BYTES,
    fsync_directory,
    remove_quietly,
    start_writeback,
    translate_os_errors,
    translate_read_errors,
    write_all,
)
from ._reader import BlobReader
from ._validate import ALGORITHMS, split_digest

#: Mode of an ingest's bytes: its writer's alone until a commit makes them read-only.
INGEST_MODE: Final = 0o600
#: Mode of sealed bytes and committed blobs: anyone with access to the root may read them.
SEALED_MODE: Final = 0o444
_CHUNK: Final = 1 << 20
_LOCK_SUFFIX: Final = ".lock"


class FileIngest:
    """An ingest's bytes in ``ingest/<key>``, open for appending by its writer.

    The file position stays at the end, where appends go. Every 8 MiB the
    kernel is asked to start writing back what was appended (see
    `start_writeback`), so a commit's fsync finds little left to do.
    """

    def __init__(self, path: Path, what: str, *, truncate: bool = False) -> None:
        self._what = what
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if truncate else 0)
        with translate_os_errors(f"opening {what}"):
            # Private until committed: the bytes of an ingest are its writer's alone.
            self._fd = os.open(path, flags, INGEST_MODE)
            try:
                stat = os.fstat(self._fd)
            except BaseException:
                os.close(self._fd)
                raise
        self._size = stat.st_size
        self._modified_ns = stat.st_mtime_ns
        os.lseek(self._fd, 0, os.SEEK_END)  # where appends go
        # Where the bytes not yet handed to the kernel's writeback start.
        self._written_back = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def modified_ns(self) -> int:
        return self._modified_ns

    def chunks(self) -> Iterator[bytes]:
        offset = 0
        while True:
            with translate_os_errors(f"reading {self._what}"):
                chunk = os.pread(self._fd, _CHUNK, offset)
            if not chunk:
                return
            offset += len(chunk)
            yield chunk

    @property
    def keeps_hash(self) -> bool:
        """False: see `keep_hash`."""
        return False

    def saved_hash(self) -> None:
        """None: a resume re-reads the file (see `keep_hash`)."""

    def keep_hash(self, source: Callable[[], bytes | None]) -> None:
        """Ignored: reading back a local file runs at the hash's own speed.

        A state kept beside the bytes would cost every sync and close a
        write (and, to stay true across a power cut, an fsync) to save a
        read that a page cache mostly serves; and the local registry keeps
        its upload writers open between requests, so it rarely resumes.
        """

    def append(self, data: bytes | bytearray | memoryview) -> None:
        with translate_os_errors(f"writing {self._what}"):
            try:
                write_all(self._fd, data)
            except OSError:
                # Keep the file equal to what its writer has hashed.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
                    os.lseek(self._fd, self._size, os.SEEK_SET)
                raise
        self._size += len(data)
        if self._size - self._written_back >= WRITEBACK_BYTES:
            start_writeback(self._fd, self._written_back, self._size - self._written_back)
            self._written_back = self._size

    def truncate(self) -> None:
        with translate_os_errors(f"truncating {self._what}"):
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
        self._size = self._written_back = 0

    def sync(self) -> None:
        with translate_os_errors(f"committing {self._what}"):
            os.fdatasync(self._fd)

    def seal(self) -> None:
        with translate_os_errors(f"committing {self._what}"):
            os.fchmod(self._fd, SEALED_MODE)

    def unseal(self) -> None:
        with translate_os_errors(f"reopening {self._what}"):
            os.fchmod(self._fd, INGEST_MODE)

    def close(self) -> None:
        os.close(self._fd)


class FileBlobs:
    """Blobs and ingest bytes under one store root (see the module's layout)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "blobs"
        self._ingest = root / "ingest"
        self._trash = root / "trash"
        with translate_os_errors("creating the store"):
            # Modes are explicit: what others may do must not depend on the umask.
            for directory in (self._blobs, self._ingest, self._trash):
                directory.mkdir(mode=0o755, exist_ok=True)
            for algorithm in ALGORITHMS:
                (self._blobs / algorithm).mkdir(mode=0o755, exist_ok=True)

    # Paths

    def blob_path(self, digest: str) -> Path:
        algorithm, encoded = split_digest(digest)
        return self._blobs / algorithm / encoded

    def ingest_path(self, key: str) -> Path:
        """Where an ingest's bytes are written."""
        return self._ingest / key

    @property
    def ingest_directory(self) -> Path:
        """The directory of ingests' bytes, where their locks live too."""
        return self._ingest

    # Committed blobs

    def stat(self, digest: str) -> int | None:
        try:
            return os.stat(self.blob_path(digest)).st_size
        except FileNotFoundError:
            return None

    def open_blob(self, digest: str, size: int) -> BlobReader | None:
        try:
            with translate_read_errors(digest):
                fd = os.open(self.blob_path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        return BlobReader(fd, size, digest)

    def publish(self, key: str, digest: str, tx: MetadataTransaction) -> bool:
        target = self.blob_path(digest)
        if self.stat(digest) is not None:
            return False
        with translate_os_errors(f"committing {digest}"):
            os.rename(self.ingest_path(key), target)
        self.make_durable(digest, tx)
        return True

    def make_durable(self, digest: str, tx: MetadataTransaction) -> None:
        directory = self.blob_path(digest).parent
        tx.before_commit(directory, partial(fsync_directory, directory))

    def set_aside(self, digest: str) -> str | None:
        algorithm, encoded = split_digest(digest)
        token = f"{algorithm}.{encoded}.{secrets.token_hex(4)}"
        with translate_os_errors(f"deleting content {digest}"):
            try:
                os.rename(self.blob_path(digest), self._trash / token)
            except FileNotFoundError:
                return None
        return token

    def restore(self, token: str, digest: str) -> bool:
        try:
            os.rename(self._trash / token, self.blob_path(digest))
        except FileNotFoundError:
            return False  # someone else put it back first
        return True

    def drop(self, token: str) -> None:
        remove_quietly(self._trash / token)

    def set_aside_entries(self) -> list[tuple[str, str]]:
        entries = []
        for entry in sorted(self._trash.iterdir()):
            algorithm, _, rest = entry.name.partition(".")
            digest = f"{algorithm}:{rest.partition('.')[0]}"
            try:
                split_digest(digest)
            except InvalidArgument:
                continue  # not a name this store writes; leave it alone
            entries.append((entry.name, digest))
        return entries

    def digests(self) -> Iterator[str]:
        for digest, _ in self.stored_digests():
            yield digest

    def stored_digests(self) -> Iterator[tuple[str, Path]]:
        """Every file in blobs/ named as a digest, with its path (for verification)."""
        for algorithm in ALGORITHMS:
            directory = self._blobs / algorithm
            try:
                names = sorted(entry.name for entry in os.scandir(directory) if entry.is_file())
            except FileNotFoundError:
                continue
            for name in names:
                digest = f"{algorithm}:{name}"
                try:
                    split_digest(digest)
                except InvalidArgument:
                    continue
                yield digest, directory / name

    # Ingests

    def open_ingest(self, key: str, what: str, *, truncate: bool = False) -> FileIngest:
        return FileIngest(self.ingest_path(key), what, truncate=truncate)

    def store_ingest(self, key: str, what: str, data: bytes | bytearray | memoryview) -> None:
        path = self.ingest_path(key)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        with translate_os_errors(f"storing {what}"):
            try:
                fd = os.open(path, flags, SEALED_MODE)
            except FileExistsError:
                # Bytes a one-step commit that died left are read-only: replace, not
                # truncate, them (rarely there: removing first would fail every time).
                remove_quietly(path)
                fd = os.open(path, flags, SEALED_MODE)
            try:
                os.fchmod(fd, SEALED_MODE)  # whatever the umask, as a writer's sealed bytes are
                write_all(fd, data)
                os.fdatasync(fd)
            finally:
                os.close(fd)

    def ingest_size(self, key: str) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.ingest_path(key))
        except FileNotFoundError:
            return None
        return stat.st_size, stat.st_mtime_ns

    def unseal_ingest(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(self.ingest_path(key), INGEST_MODE)

    def remove_ingest(self, key: str) -> None:
        remove_quietly(self.ingest_path(key))

    def ingest_keys(self) -> set[str]:
        return {name for name in os.listdir(self._ingest) if not name.endswith(_LOCK_SUFFIX)}

    def close(self) -> None:
        """Nothing to release: every file is opened and closed by the call that uses it."""


if TYPE_CHECKING:
    from ._backends import BlobBackend, IngestData

    # mypy checks here that the file classes keep the blob backend's contract.
    _backend: type[BlobBackend] = FileBlobs
    _ingest: type[IngestData] = FileIngest

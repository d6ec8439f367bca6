"""Checking stored blobs against their digests, and quarantining the ones that fail.

Reads do not hash (as in containerd, a Read may cover any range of a blob), so
bytes damaged on disk behind the store's back are found by whoever reads a
whole blob and checks it (`contentd get`, `write_blob`'s resume checks) or by
verifying the store. `verify_root` hashes every blob of a store directory;
`verify_namespace` hashes what any `Store` (a daemon, over Read) lists.

Quarantine moves a bad blob's bytes out of ``blobs/`` into
``quarantine/<algorithm>.<hex>.<id>/`` (``blob``, plus ``note.json`` saying
what it was and which namespaces held it, with their labels) and drops its
records in every namespace, in one metadata transaction, so that pushing the
same content again stores it afresh. The entry is made under a ``.pending.``
name inside that transaction and renamed once it commits; whoever opens the
store next finishes an entry left pending by a crash, or undoes it (bytes back
in ``blobs/``) if its transaction never committed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import functools
import itertools
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from contentd.errdefs import DataLoss, InvalidArgument, NotFound

from ._fs import BLOB_MISSING, fsync_directory, translate_os_errors
from ._records import ContentRecord
from ._types import Store
from ._validate import new_hasher, split_digest

if TYPE_CHECKING:
    from ._files import FileBlobs
    from ._sqlite import Metadata, Transaction

#: The folder under a store root that holds quarantined blobs.
QUARANTINE: Final = "quarantine"
_PENDING: Final = ".pending."
_NOTE: Final = "note.json"
_BLOB: Final = "blob"
_CHUNK: Final = 1 << 20
_PAGE: Final = 1000
_IO_FAILED: Final = frozenset({errno.EIO, errno.EUCLEAN})
_log = logging.getLogger("contentd.store")


class BlobState(enum.Enum):
    """What is wrong with a blob that failed verification."""

    #: The bytes are there but do not hash to the digest, or have another size.
    CORRUPT = "corrupt"
    #: A namespace records the blob but its bytes are gone.
    MISSING = "missing"
    #: The disk failed to read the bytes back (an I/O error).
    UNREADABLE = "unreadable"


@dataclasses.dataclass(frozen=True, slots=True)
class BlobCheck:
    """One blob that failed verification."""

    digest: str
    state: BlobState
    #: The size the records give (the file's size for a blob no namespace records).
    size: int
    #: What the bytes on disk hash to and how many there are (None when unread).
    found_digest: str | None = None
    found_size: int | None = None
    #: The namespaces that record the blob (empty over a daemon: only its namespace is seen).
    namespaces: tuple[str, ...] = ()
    #: Where quarantine put the blob's entry, relative to the store root.
    quarantined: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of verifying a store: how many blobs were checked, and the bad ones."""

    checked: int
    problems: tuple[BlobCheck, ...]

    @property
    def clean(self) -> bool:
        """Whether every blob checked is whole."""
        return not self.problems


@dataclasses.dataclass(frozen=True, slots=True)
class _Identity:
    """Which file a blob path named when it was checked (a delete and re-commit makes another)."""

    device: int
    inode: int
    changed: int

    @classmethod
    def of(cls, stat: os.stat_result) -> _Identity:
        return cls(stat.st_dev, stat.st_ino, stat.st_ctime_ns)


def _hash_file(path: Path, algorithm: str) -> tuple[str, int, _Identity]:
    """The digest and size of the file at `path`, and which file it was."""
    hasher = new_hasher(algorithm)
    size = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        identity = _Identity.of(os.fstat(fd))
        while count := os.readv(fd, [buffer]):
            hasher.update(view[:count])
            size += count
    finally:
        os.close(fd)
    return f"{algorithm}:{hasher.hexdigest()}", size, identity


def _check_file(digest: str, size: int, path: Path) -> tuple[BlobCheck | None, _Identity | None]:
    """Hash one blob file; the problem found (None if whole) and the file's identity."""
    try:
        found, found_size, identity = _hash_file(path, split_digest(digest)[0])
    except FileNotFoundError:
        return BlobCheck(digest, BlobState.MISSING, size), None
    except OSError as exc:
        if exc.errno not in _IO_FAILED:
            raise
        try:
            identity = _Identity.of(os.stat(path))
        except OSError:
            identity = None
        return BlobCheck(digest, BlobState.UNREADABLE, size), identity
    if found == digest and found_size == size:
        return None, identity
    return BlobCheck(digest, BlobState.CORRUPT, size, found, found_size), identity


def verify_root(files: FileBlobs, metadata: Metadata, *, quarantine: bool = False) -> VerifyReport:
    """Hash every blob of a store directory: every recorded one and every file in blobs/.

    Files no namespace records are checked too: a commit of their digest
    would adopt them as they are. Safe while other processes (a daemon) use
    the store: a blob deleted while it is checked is not reported, and
    quarantine moves a blob only if its file is still the one found bad.
    """
    problems: list[BlobCheck] = []
    checked = 0
    for found, identity in itertools.chain(
        _recorded(files, metadata), _unrecorded(files, metadata)
    ):
        checked += 1
        problem = found
        if found is not None and quarantine:
            problem = _quarantine(files, metadata, found, identity)
        if problem is not None:
            problems.append(problem)
    return VerifyReport(checked, tuple(problems))


def _recorded(
    files: FileBlobs, metadata: Metadata
) -> Iterator[tuple[BlobCheck | None, _Identity | None]]:
    """Each blob some namespace records, checked: its problem (or None) and its file."""
    after = ""
    while True:
        with metadata.read("listing content to verify") as tx:
            page = tx.recorded_blobs(after, _PAGE)
        for digest, size in page:
            problem, identity = _check_file(digest, size, files.blob_path(digest))
            if problem is not None:
                problem = _confirmed(files, metadata, problem, identity)
            if problem is not None or identity is not None:
                yield problem, identity
        if len(page) < _PAGE:
            return
        after = page[-1][0]


def _confirmed(
    files: FileBlobs, metadata: Metadata, problem: BlobCheck, identity: _Identity | None
) -> BlobCheck | None:
    """`problem` with the namespaces that record it; None if it no longer stands.

    Under the write lock, where no delete is half done: a delete moves the
    file aside inside its transaction, before its record goes.
    """
    digest = problem.digest
    with metadata.write(f"verifying {digest}", durable=False) as tx:
        records = tx.records_everywhere(digest)
        try:
            now: _Identity | None = _Identity.of(os.stat(files.blob_path(digest)))
        except FileNotFoundError:
            now = None
    if not records or now != identity:
        return None  # deleted, or deleted and stored again, while being checked
    return dataclasses.replace(problem, namespaces=tuple(namespace for namespace, _ in records))


def _unrecorded(
    files: FileBlobs, metadata: Metadata
) -> Iterator[tuple[BlobCheck | None, _Identity | None]]:
    """Files in blobs/ no namespace records (a crash's, or being committed), checked."""
    for digest, path in files.stored_digests():
        with metadata.read(f"verifying {digest}") as tx:
            recorded = tx.committed_anywhere(digest) is not None
        if recorded:
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        problem, identity = _check_file(digest, size, path)
        if problem is None or problem.state is not BlobState.MISSING:
            yield problem, identity


def verify_namespace(store: Store, namespace: str) -> VerifyReport:
    """Hash every blob `store` lists (in `namespace`), reading each whole through the store.

    Works on any Store, a daemon's included, where it can only report: the
    Content API has no way to quarantine. A blob the store cannot produce
    (DataLoss) is missing or unreadable; one deleted meanwhile is skipped.
    """
    problems: list[BlobCheck] = []
    checked = 0
    for info in store.walk():
        try:
            problem = _read_whole(store, info.digest, info.size, namespace)
        except NotFound:
            continue  # deleted while being checked
        except DataLoss as exc:
            missing = exc.reason == BLOB_MISSING or (exc.reason is None and "missing" in str(exc))
            state = BlobState.MISSING if missing else BlobState.UNREADABLE
            problem = BlobCheck(info.digest, state, info.size, namespaces=(namespace,))
        checked += 1
        if problem is not None:
            problems.append(problem)
    return VerifyReport(checked, tuple(problems))


def _read_whole(store: Store, digest: str, size: int, namespace: str) -> BlobCheck | None:
    algorithm = split_digest(digest)[0]
    hasher = new_hasher(algorithm)
    found_size = 0
    with store.reader_at(digest) as reader:
        while chunk := reader.read(_CHUNK):
            hasher.update(chunk)
            found_size += len(chunk)
    found = f"{algorithm}:{hasher.hexdigest()}"
    if found == digest and found_size == size:
        return None
    return BlobCheck(digest, BlobState.CORRUPT, size, found, found_size, (namespace,))


# Quarantine


def _note(problem: BlobCheck, records: list[tuple[str, ContentRecord]]) -> dict[str, Any]:
    return {
        "digest": problem.digest,
        "state": problem.state.value,
        "size": problem.size,
        "found_digest": problem.found_digest,
        "found_size": problem.found_size,
        "quarantined_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "records": [
            {
                "namespace": namespace,
                "created_at": record.created_at,
                "updated_at": record.updated_at,
                "labels": record.labels,
            }
            for namespace, record in records
        ],
    }


def _write_note(path: Path, note: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        data = json.dumps(note, ensure_ascii=False, indent=2).encode() + b"\n"
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _quarantine(
    files: FileBlobs, metadata: Metadata, problem: BlobCheck, identity: _Identity | None
) -> BlobCheck | None:
    """Move a bad blob into quarantine and drop its records; the problem as it now stands.

    Returns None if the blob changed since it was checked (deleted, or
    deleted and stored again): then it is left alone.
    """
    digest = problem.digest
    target = files.blob_path(digest)
    folder = files.root / QUARANTINE
    algorithm, encoded = split_digest(digest)
    name = f"{algorithm}.{encoded}.{secrets.token_hex(4)}"
    pending = folder / f"{_PENDING}{name}"
    moved = False
    try:
        # Deletes and commits move blob files only inside write transactions,
        # so inside this one the file cannot change under the checks below.
        with metadata.write(f"quarantining {digest}") as tx:
            records = tx.records_everywhere(digest)
            try:
                now = _Identity.of(os.stat(target))
            except FileNotFoundError:
                now = None
            if now != identity or (now is None and not records):
                return None
            folder.mkdir(mode=0o700, exist_ok=True)
            _sync_before_commit(tx, files.root)
            pending.mkdir(mode=0o700)
            _write_note(pending / _NOTE, _note(problem, records))
            if now is not None:
                os.rename(target, pending / _BLOB)
                moved = True
                _sync_before_commit(tx, target.parent)
            _sync_before_commit(tx, pending)
            _sync_before_commit(tx, folder)
            tx.forget_blob(digest)
            namespaces = tuple(namespace for namespace, _ in records)
    except BaseException:
        # The transaction did not commit: the records still name the blob.
        if moved:
            with contextlib.suppress(OSError):
                os.rename(pending / _BLOB, target)
        shutil.rmtree(pending, ignore_errors=True)
        raise
    with translate_os_errors(f"quarantining {digest}"):
        _finish(pending, folder / name)
    _log.info("quarantined %s blob %s", problem.state.value, digest)
    return dataclasses.replace(problem, namespaces=namespaces, quarantined=f"{QUARANTINE}/{name}")


def _finish(pending: Path, final: Path) -> None:
    """Give a committed quarantine entry its final name."""
    with contextlib.suppress(FileNotFoundError):  # a repair in another process did it
        os.rename(pending, final)
    fsync_directory(final.parent)


def _sync_before_commit(tx: Transaction, directory: Path) -> None:
    """Have `directory` fsynced before `tx` commits (after a rename into or out of it)."""
    tx.before_commit(directory, functools.partial(fsync_directory, directory))


def repair_quarantine(files: FileBlobs, metadata: Metadata) -> None:
    """Finish or undo the quarantine entries a crash left pending.

    An entry whose records all still exist, unchanged, belongs to a
    transaction that never committed: its bytes go back to blobs/. Any other
    was committed: it gets its final name.
    """
    folder = files.root / QUARANTINE
    try:
        if not any(entry.name.startswith(_PENDING) for entry in folder.iterdir()):
            return
    except FileNotFoundError:
        return
    # Inside a write transaction: a quarantine in progress elsewhere holds
    # the lock until it has committed, so every pending entry seen here is
    # either finished or abandoned.
    with metadata.write("repairing an interrupted quarantine") as tx:
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(_PENDING):
                _repair_entry(files, tx, entry, folder / entry.name.removeprefix(_PENDING))


def _repair_entry(files: FileBlobs, tx: Transaction, pending: Path, final: Path) -> None:
    try:
        note = json.loads((pending / _NOTE).read_text())
        digest = str(note["digest"])
        records = [(str(r["namespace"]), int(r["created_at"])) for r in note["records"]]
        target = files.blob_path(digest)
    except (OSError, ValueError, KeyError, TypeError, InvalidArgument):
        # No whole note: the crash came before the bytes moved (the note goes first).
        shutil.rmtree(pending, ignore_errors=True)
        return
    still_recorded = bool(records) and all(
        (record := tx.content(namespace, digest)) is not None and record.created_at == created
        for namespace, created in records
    )
    if not still_recorded:
        _finish(pending, final)
        _log.warning("finished the interrupted quarantine of %s", digest)
        return
    blob = pending / _BLOB
    if blob.exists() and not target.exists():
        os.rename(blob, target)
        _sync_before_commit(tx, target.parent)
    shutil.rmtree(pending, ignore_errors=True)
    _log.warning("undid the interrupted quarantine of %s", digest)

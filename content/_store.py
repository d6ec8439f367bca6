"""LocalStore: the content store on a directory, usable by any number of processes at once."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from contentd.errdefs import (
    REF_LOCKED,
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)

from . import filters
from ._fs import BLOB_MISSING, remove_quietly, translate_os_errors, translate_read_errors, write_all
from ._locks import IngestLock
from ._metadata import BUSY_TIMEOUT, ContentRecord, IngestRecord
from ._reader import BlobReader
from ._root import Recording, StoreRoot, ingest_key
from ._types import Closing, Info, ReaderAt, Status, Store, Writer, datetime_from_ns
from ._validate import (
    CANONICAL_ALGORITHM,
    new_hasher,
    split_digest,
    validate_digest,
    validate_namespace,
    validate_ref,
    validate_size,
)
from ._verify import VerifyReport, verify_root
from ._writer import LocalWriter, drop_empty

#: Namespace used when none is given, as in containerd's clients.
DEFAULT_NAMESPACE = "default"
_PAGE = 1000


def default_root() -> Path:
    """The embedded default store root: $XDG_DATA_HOME/contentd or ~/.local/share/contentd."""
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(data_home) / "contentd"


def _info(record: ContentRecord) -> Info:
    return Info(
        digest=record.digest,
        size=record.size,
        created_at=datetime_from_ns(record.created_at),
        updated_at=datetime_from_ns(record.updated_at),
        labels=record.labels,
    )


def open_store(
    root: str | os.PathLike[str],
    namespace: str = DEFAULT_NAMESPACE,
    *,
    busy_timeout: float = BUSY_TIMEOUT,
) -> LocalStore:
    """Open the store at `root` (created if missing) as `namespace` sees it.

    `busy_timeout` bounds, in seconds, how long a change waits for another
    process's metadata transaction before it fails with Unavailable
    (reason STORE_BUSY).
    """
    return LocalStore(root, namespace, busy_timeout=busy_timeout)


class LocalStore(Closing):
    """The content store in a directory, as one namespace sees it.

    Any number of LocalStores, in any number of processes, may work on one
    root at once: ingest locks are file locks and metadata lives in SQLite.
    Opening repairs what a crashed process left half done. `with_namespace`
    gives views that share this one's files and connections; closing any of
    them closes them all.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        namespace: str = DEFAULT_NAMESPACE,
        *,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        self._namespace = validate_namespace(namespace)
        self._root = StoreRoot.open(Path(root), busy_timeout=busy_timeout)

    @classmethod
    def _view(cls, root: StoreRoot, namespace: str) -> LocalStore:
        view = cls.__new__(cls)
        view._namespace = validate_namespace(namespace)
        view._root = root
        return view

    @property
    def namespace(self) -> str:
        """The namespace this view reads and writes."""
        return self._namespace

    @property
    def path(self) -> Path:
        """The store's root directory."""
        return self._root.path

    def with_namespace(self, namespace: str) -> LocalStore:
        return LocalStore._view(self._root, namespace)

    # Committed content

    def info(self, digest: str) -> Info:
        validate_digest(digest)
        with self._root.metadata.read(f"reading content {digest}") as tx:
            record = tx.content(self._namespace, digest)
        if record is None:
            raise NotFound(f"content {digest}")
        return _info(record)

    def update(
        self,
        digest: str,
        labels: Mapping[str, str],
        fieldpaths: Sequence[str] = (),
    ) -> Info:
        validate_digest(digest)
        for path in fieldpaths:
            if path != "labels" and not path.startswith("labels."):
                raise InvalidArgument(f"cannot update {path!r} field on content info {digest}")
        now = time.time_ns()
        with self._root.metadata.write(f"updating content {digest}") as tx:
            record = tx.content(self._namespace, digest)
            if record is None:
                raise NotFound(f"content {digest}")
            updated = dict(record.labels)
            if not fieldpaths:
                updated = dict(labels)
            for path in fieldpaths:
                if path == "labels":
                    updated = dict(labels)
                else:
                    key = path.removeprefix("labels.")
                    updated[key] = labels.get(key, "")
            updated = drop_empty(updated)
            tx.set_labels(self._namespace, digest, updated, now)
        return _info(ContentRecord(digest, record.size, record.created_at, now, updated))

    def walk(self, *filter_expressions: str) -> Iterator[Info]:
        return map(_info, self.walk_records(*filter_expressions))

    def walk_records(self, *filter_expressions: str) -> Iterator[ContentRecord]:
        """`walk`, as stored records (times in nanoseconds): what a server lists from."""
        match = filters.parse_all(filter_expressions)
        return self._walk(match)

    def _walk(self, match: filters.Filter) -> Iterator[ContentRecord]:
        labels = filters.required_labels(match) or ()
        # Page through the namespace in short read transactions, so a slow
        # consumer never holds the database open.
        after = ""
        while True:
            with self._root.metadata.read("listing content") as tx:
                page = tx.content_page(self._namespace, after, _PAGE, labels)
            if match is filters.MATCH_ALL:
                yield from page
            else:
                for record in page:
                    adaptor = filters.info_adaptor(record.digest, record.size, record.labels)
                    if match.match(adaptor):
                        yield record
            if len(page) < _PAGE:
                return
            after = page[-1].digest

    def delete(self, digest: str) -> None:
        validate_digest(digest)
        target = self._root.blob_path(digest)
        trash = None
        try:
            with self._root.metadata.write(f"deleting content {digest}") as tx:
                if not tx.delete_content(self._namespace, digest):
                    raise NotFound(f"content {digest}")
                if not tx.blob_referenced(digest):
                    # Move the bytes aside inside the transaction: if it never
                    # commits, the next open puts them back.
                    trash = self._root.trash_path(digest)
                    with translate_os_errors(f"deleting content {digest}"):
                        try:
                            os.rename(target, trash)
                        except FileNotFoundError:
                            trash = None
        except BaseException:
            if trash is not None:
                # Not committed (a full disk, say): the record stands, and so
                # must its bytes, now rather than at the next open.
                with contextlib.suppress(OSError):
                    os.rename(trash, target)
            raise
        if trash is not None:
            remove_quietly(trash)

    def reader_at(self, digest: str) -> BlobReader:
        validate_digest(digest)
        with self._root.metadata.read(f"reading content {digest}") as tx:
            record = tx.content(self._namespace, digest)
        if record is None:
            raise NotFound(f"content {digest}")
        try:
            with translate_read_errors(digest):
                fd = os.open(self._root.blob_path(digest), os.O_RDONLY)
        except FileNotFoundError:
            if self._root.settle_delete(digest):
                return self.reader_at(digest)
            with self._root.metadata.read(f"reading content {digest}") as tx:
                deleted = tx.content(self._namespace, digest) is None
            if deleted:
                raise NotFound(f"content {digest}") from None
            raise DataLoss(
                f"content {digest}: its bytes are missing from the store", reason=BLOB_MISSING
            ) from None
        return BlobReader(fd, record.size, digest)

    # Ingests

    def status(self, ref: str) -> Status:
        validate_ref(ref)
        with self._root.metadata.read(f"reading ingest {ref}") as tx:
            record = tx.ingest(self._namespace, ref)
        status = None if record is None else self._status(record)
        if status is None:
            raise NotFound(f"ref {ref}")
        return status

    def _status(self, record: IngestRecord) -> Status | None:
        """The ingest's status; None if it turns out gone (see below)."""
        updated_at = record.updated_at
        if record.base is not None:
            offset = record.total
        else:
            try:
                stat = os.stat(self._root.ingest_data(record.key))
            except FileNotFoundError:
                # A writer that died committing, after its bytes moved into
                # blobs/, leaves a record and no bytes: finish that commit.
                if self._root.repair_ingest(record.key):
                    return None
                offset = 0
            else:
                offset = stat.st_size
                # A live writer records progress on close; the file knows now.
                updated_at = max(updated_at, stat.st_mtime_ns)
        return Status(
            ref=record.ref,
            offset=offset,
            total=record.total,
            expected=record.expected,
            started_at=datetime_from_ns(record.started_at),
            updated_at=datetime_from_ns(updated_at),
        )

    def list_statuses(self, *filter_expressions: str) -> list[Status]:
        match = filters.parse_all(filter_expressions)
        with self._root.metadata.read("listing ingests") as tx:
            records = tx.ingests(self._namespace)
        statuses = []
        for record in records:
            status = self._status(record)
            if status is None:
                continue
            adaptor = filters.status_adaptor(
                status.ref, status.offset, status.total, status.expected
            )
            if match.match(adaptor):
                statuses.append(status)
        return statuses

    def _lock(self, ref: str) -> tuple[str, IngestLock]:
        key = ingest_key(self._namespace, ref)
        lock = self._root.ingest_lock(key)
        with translate_os_errors(f"locking ref {ref}"):
            acquired = lock.try_acquire()
        if not acquired:
            raise Unavailable(f"ref {ref} locked", reason=REF_LOCKED, metadata={"ref": ref})
        return key, lock

    def abort(self, ref: str) -> None:
        validate_ref(ref)
        key, lock = self._lock(ref)
        try:
            with self._root.metadata.write(f"aborting ingest {ref}") as tx:
                found = tx.ingest(self._namespace, ref) is not None
                tx.delete_ingest(self._namespace, ref)
        finally:
            self._root.remove_ingest_files(key, lock)
        if not found:
            raise NotFound(f"ref {ref}")

    def writer(
        self,
        ref: str,
        *,
        total: int = 0,
        expected: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> LocalWriter:
        validate_ref(ref)
        validate_size("total", total)
        algorithm = split_digest(expected)[0] if expected else CANONICAL_ALGORITHM
        labels = drop_empty(labels or {})
        if expected:
            with self._root.metadata.read(f"opening writer for ref {ref}") as tx:
                if tx.content(self._namespace, expected) is not None:
                    raise AlreadyExists(f"content {expected}")
        key, lock = self._lock(ref)
        try:
            record, base_size = self._open_ingest(ref, key, total, expected, lock)
            return LocalWriter(
                self._root, record, lock, labels=labels, algorithm=algorithm, base_size=base_size
            )
        except BaseException:
            self._release_unused(ref, key, lock)
            raise

    def put(
        self,
        ref: str,
        data: bytes | bytearray | memoryview,
        *,
        size: int = 0,
        expected: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Store `data` as a blob through the ingest `ref` in one step; returns its digest.

        It is a writer opened, written, committed and closed at once: the ref
        must be free (Unavailable, REF_LOCKED, otherwise), any ingest on it is
        replaced, `size` and `expected` are verified (FailedPrecondition), and
        a digest the namespace already holds is AlreadyExists. Bytes that fail
        verification leave nothing behind. Meant for small blobs, which it
        stores with one file, one lock and one (group-committed) transaction.
        The bytes are verified first: wrong bytes are FailedPrecondition even
        when the namespace holds them, or holds `expected`.
        """
        validate_ref(ref)
        validate_size("size", size)
        algorithm = split_digest(expected)[0] if expected else CANONICAL_ALGORITHM
        final_labels = drop_empty(labels or {})
        view = memoryview(data).cast("B")
        hasher = new_hasher(algorithm)
        hasher.update(view)
        digest = f"{algorithm}:{hasher.hexdigest()}"
        # The bytes are in hand: verify them before anything else, so that
        # bytes stored under their own digest never pass for another one.
        if size and size != len(view):
            raise FailedPrecondition(f"unexpected commit size {len(view)}, expected {size}")
        if expected and expected != digest:
            raise FailedPrecondition(f"unexpected commit digest {digest}, expected {expected}")
        with self._root.metadata.read(f"storing {digest}") as tx:
            if tx.content(self._namespace, digest) is not None:
                raise AlreadyExists(f"content {digest}")
        key, lock = self._lock(ref)
        source = self._root.ingest_data(key)
        outcome = Recording()
        try:
            self._root.finish_commit(key, lock)
            with translate_os_errors(f"storing {digest}"):
                # Bytes a put that died left are read-only: replace, not truncate, them.
                remove_quietly(source)
                fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
                try:
                    os.fchmod(fd, 0o444)  # whatever the umask, as a writer's blobs are
                    write_all(fd, view)
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
                self._root.write_commit_intent(lock, self._namespace, ref, digest, final_labels)
            self._root.record_blob(
                self._namespace,
                ref,
                digest,
                len(view),
                final_labels,
                source=source,
                outcome=outcome,
            )
        except BaseException:
            if outcome.moved:
                lock.release()  # the record failed after the rename: its intent stays for repair
            else:
                self._root.remove_ingest_files(key, lock)
            raise
        self._root.remove_ingest_files(key, lock)
        if outcome.existed:
            raise AlreadyExists(f"content {digest}")
        return digest

    def _open_ingest(
        self, ref: str, key: str, total: int, expected: str, lock: IngestLock
    ) -> tuple[IngestRecord, int]:
        """Create or resume the ingest record, with the lock held; returns it and its base size.

        An ingest resumes where it stopped, unless the writer now declares a
        different total than the ingest was started with: then, as in
        containerd, those bytes were meant for other content and the ingest
        starts over.
        """
        data = self._root.ingest_data(key)
        # A writer that died mid-commit: finish that first, as a reopen would.
        self._root.finish_commit(key, lock)
        with self._root.metadata.read(f"opening writer for ref {ref}") as tx:
            previous = tx.ingest(self._namespace, ref)
        declared = previous.total if previous is not None else 0
        if previous is not None and total > 0 and declared > 0 and total != declared:
            previous = None
        if previous is None:
            # Bytes without a record are no ingest's (a put that died left
            # them): a new ingest starts empty.
            remove_quietly(data)
        now = time.time_ns()
        # Not fsynced: an ingest record lost to a power cut only loses the
        # ingest's progress (the next open removes its files), never a blob.
        with self._root.metadata.write(f"opening writer for ref {ref}", durable=False) as tx:
            tx.ensure_namespace(self._namespace, now)
            if expected and tx.content(self._namespace, expected) is not None:
                raise AlreadyExists(f"content {expected}")
            base: str | None = None
            base_size = 0
            if expected:
                stored = tx.committed_anywhere(expected)
                # containerd's shared policy: content another namespace stored
                # need not be sent again, if the sizes agree.
                if stored is not None and total in (0, stored.size):
                    base, base_size, total = expected, stored.size, stored.size
            if previous is None:
                record = IngestRecord(self._namespace, ref, key, total, expected, now, now, base)
                tx.delete_ingest(self._namespace, ref)
                tx.insert_ingest(record)
            else:
                if base is None and previous.base is not None:
                    base = previous.base
                    stored = tx.committed_anywhere(base)
                    base_size = stored.size if stored is not None else 0
                record = IngestRecord(
                    self._namespace,
                    ref,
                    key,
                    total or previous.total,
                    expected or previous.expected,
                    previous.started_at,
                    previous.updated_at,
                    base,
                )
                tx.update_ingest(
                    self._namespace,
                    ref,
                    total=record.total,
                    expected=record.expected,
                    updated_at=record.updated_at,
                    base=base,
                )
        if base is not None:
            remove_quietly(data)
        return record, base_size

    def _release_unused(self, ref: str, key: str, lock: IngestLock) -> None:
        """Release a lock taken for a writer that failed to open.

        Taking the lock created the ingest's directory; if no ingest record
        exists either, nothing should be left behind.
        """
        try:
            with self._root.metadata.read(f"opening writer for ref {ref}") as tx:
                exists = tx.ingest(self._namespace, ref) is not None
        except Exception:  # keep the files when unsure; the next open tidies up
            exists = True
        if exists:
            lock.release()
        else:
            self._root.remove_ingest_files(key, lock)

    # Integrity

    def verify(self, *, quarantine: bool = False) -> VerifyReport:
        """Hash every blob of the store (every namespace's) and report those that fail.

        With `quarantine`, each corrupt, unreadable or missing blob is moved
        to ROOT/quarantine/ with a note of who referenced it, and its records
        are dropped in every namespace, so that it can be stored again. Safe
        while other processes, a daemon included, use the store.
        """
        return verify_root(self._root, quarantine=quarantine)

    # Lifetime

    def close(self) -> None:
        """Close the store (every namespace view of it)."""
        self._root.close()


if TYPE_CHECKING:
    # mypy checks here that the local classes satisfy the Store protocols.
    _store: type[Store] = LocalStore
    _reader: type[ReaderAt] = BlobReader
    _writer: type[Writer] = LocalWriter

"""The store's rules, written once over any blob, metadata and lock backends.

What a namespace sees, and what a commit, delete or crash does to it, is
decided here and nowhere else:

- **Namespaces.** Blob bytes are shared; a content record per namespace
  decides visibility, labels and times. A blob's bytes go only when no
  namespace records it and no ingest starts from it.
- **The shared policy** (containerd's): a writer expecting a digest another
  namespace holds starts from those bytes, and commits without resending them.
- **Resume.** An ingest's bytes and record outlive its writer; the next
  writer of the ref goes on from where it stopped, unless it declares
  another total (then those bytes were meant for other content).
- **Commit.** One check (`check_commit`) of size and digest, then the bytes
  are published and recorded in one group-committed transaction. Before the
  bytes move, the writer's lock carries a note of what the commit stores,
  so a crash at any step leaves either no blob or a whole, recorded one.
- **Delete** removes the namespace's record and, with the last reference,
  the bytes (set aside inside the transaction, freed after it commits).
- **Repair** finishes or undoes what a dead process left: interrupted
  commits, orphaned ingest bytes, deletes that never committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Self

from contentd.errdefs import (
    REF_LOCKED,
    Aborted,
    AlreadyExists,
    ContentdError,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unimplemented,
)

from . import filters
from ._backends import (
    BlobBackend,
    IngestData,
    LockBackend,
    MetadataBackend,
    MetadataTransaction,
    RefLock,
)
from ._fs import BLOB_MISSING
from ._gc import CollectionReport, OrphanSearch, claim_ingest, collect, end_ingest
from ._hashstate import Hasher, HashStateError
from ._hashstate import restore as restore_hash
from ._hashstate import resumable as resumable_hasher
from ._images import StoreImages
from ._leases import (
    CONTENT,
    DEFAULT_LEASE_EXPIRY,
    INGEST_EXPIRY_NS,
    INGESTS,
    StoreLeases,
    leased,
    require_lease,
)
from ._meter import NamespaceUsage, StoreMeter
from ._namespaces import StoreNamespaces
from ._records import ContentRecord, IngestRecord, ingest_key
from ._repositories import RepositoryIndex
from ._types import Closing, Info, ReaderAt, Status, datetime_from_ns
from ._validate import (
    CANONICAL_ALGORITHM,
    new_hasher,
    split_digest,
    validate_digest,
    validate_labels,
    validate_namespace,
    validate_ref,
    validate_size,
)

#: Namespace used when none is given, as in containerd's clients.
DEFAULT_NAMESPACE = "default"
_PAGE = 1000
_log = logging.getLogger("contentd.store")
# One encoder for every commit's note: json.dumps with any option makes a new one per call.
_encode_note = json.JSONEncoder(ensure_ascii=False).encode


def check_commit(size: int, expected: str, actual_size: int, digest: Callable[[], str]) -> str:
    """The check every commit makes before it stores anything; returns the actual digest.

    `size` (when not 0) must be the bytes' size, and `expected` (when given)
    their digest, which `digest` computes only once the size agrees.
    """
    if size > 0 and size != actual_size:
        raise FailedPrecondition(f"unexpected commit size {actual_size}, expected {size}")
    actual = digest()
    if expected and expected != actual:
        raise FailedPrecondition(f"unexpected commit digest {actual}, expected {expected}")
    return actual


def drop_empty(labels: Mapping[str, str]) -> dict[str, str]:
    """Labels without the empty values, which mean "no such label" (as in containerd)."""
    return {key: value for key, value in validate_labels(labels).items() if value}


def _info(record: ContentRecord) -> Info:
    return Info(
        digest=record.digest,
        size=record.size,
        created_at=datetime_from_ns(record.created_at),
        updated_at=datetime_from_ns(record.updated_at),
        labels=record.labels,
    )


class Changes:
    """Tells whoever listens (a collection scheduler) of changes to a store's records.

    Each listener is called with whether the change may have freed
    something (a delete: content, a lease or what it held, an image) or
    only added (a commit), after the change committed, in this process.
    """

    def __init__(self) -> None:
        self._listeners: list[Callable[[bool], None]] = []

    def subscribe(self, listener: Callable[[bool], None]) -> None:
        self._listeners.append(listener)

    def note(self, *, deletion: bool) -> None:
        for listener in self._listeners:
            listener(deletion)

    def note_deletion(self) -> None:
        self.note(deletion=True)


@dataclass(frozen=True)
class Backends:
    """The three backends one store runs on, shared by its namespace views."""

    blobs: BlobBackend
    metadata: MetadataBackend
    locks: LockBackend
    changes: Changes = field(default_factory=Changes)
    orphans: OrphanSearch = field(default_factory=OrphanSearch)

    def close(self) -> None:
        self.metadata.close()
        self.blobs.close()
        self.locks.close()


@dataclass
class _Recording:
    """How recording a blob went, filled in as it happens (the caller reads it even on error)."""

    existed: bool = False
    published: bool = False


class BackedStore(Closing):
    """A content store as one namespace sees it, over blob, metadata and lock backends.

    Any number of stores, in any number of processes, may share backends at
    once. Whoever opens the backends calls `repair` once, to finish or undo
    what a dead process left half done (`LocalStore` does as it opens).
    `with_namespace` gives views sharing this one's backends; closing any
    of them closes them all.
    """

    def __init__(self, backends: Backends, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._namespace = validate_namespace(namespace)
        self._backends = backends
        self._blobs = backends.blobs
        self._metadata = backends.metadata
        self._locks = backends.locks
        self._repositories = RepositoryIndex(backends.metadata)
        self._changes = backends.changes
        #: The lease this view's writes are made under (`with_lease`), if any.
        self._lease: str | None = None

    @property
    def namespace(self) -> str:
        """The namespace this view reads and writes."""
        return self._namespace

    @property
    def shared_across_hosts(self) -> bool:
        """Whether daemons on other hosts may serve this store at the same time.

        Then the next request of a client (a registry upload's next chunk)
        may reach another daemon: nothing should keep a ref locked from one
        request to the next. False here; a store whose backends every host
        reaches says True.
        """
        return False

    def _view(self, namespace: str, lease: str | None) -> Self:
        """This store (its backends shared) as `namespace` sees it, writing under `lease`."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view._namespace = namespace
        view._lease = lease
        return view

    def with_namespace(self, namespace: str) -> Self:
        """The same store as `namespace` sees it (writes under no lease)."""
        return self._view(validate_namespace(namespace), None)

    def with_lease(self, lease: str | None) -> Self:
        """The same store, its writes made under `lease` (None: under none).

        As containerd's `containerd-lease` header does: a writer lists its
        ingest on the lease, and its commit swaps the ingest for the blob
        (even one the namespace had already); a lease that does not exist
        makes writes NotFound. Aborting an ingest or deleting a blob takes it
        off the lease too. Writes under no lease make ingests that expire a
        day after their writer last opened them.
        """
        return self._view(self._namespace, lease)

    @property
    def lease_id(self) -> str | None:
        """The lease this view writes under, if any."""
        return self._lease

    @contextlib.contextmanager
    def lease(
        self,
        *,
        expire: timedelta | None = DEFAULT_LEASE_EXPIRY,
        labels: Mapping[str, str] | None = None,
    ) -> Iterator[Self]:
        """A new lease for the block, and a view writing under it (see `leased`)."""
        with leased(self, expire, labels) as view:
            yield view

    @property
    def leases(self) -> StoreLeases:
        """The namespace's leases."""
        return StoreLeases(
            self._metadata, self._namespace, self._changes.note_deletion, self.collect
        )

    @property
    def images(self) -> StoreImages:
        """The namespace's images."""
        return StoreImages(
            self._metadata, self._namespace, self._changes.note_deletion, self.collect
        )

    @property
    def namespaces(self) -> StoreNamespaces:
        """Every namespace of the store."""
        return StoreNamespaces(self._metadata)

    @property
    def changes(self) -> Changes:
        """Where a collection scheduler hears of the store's changes."""
        return self._changes

    @property
    def meter(self) -> StoreMeter:
        """Where whoever counts the store's work hooks in (every namespace view shares it)."""
        return self._metadata.meter

    def usage(self) -> list[NamespaceUsage]:
        """Every namespace's blob count, their bytes and its ingests, from one query."""
        with self._metadata.read("measuring the store") as tx:
            return tx.usage()

    @property
    def repositories(self) -> RepositoryIndex:
        """The registry's repositories, manifests and tags, kept in the store's metadata."""
        return self._repositories

    # Committed content

    def info(self, digest: str) -> Info:
        validate_digest(digest)
        with self._metadata.read(f"reading content {digest}") as tx:
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
        with self._metadata.write(f"updating content {digest}") as tx:
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
        # consumer never holds the metadata open.
        after = ""
        while True:
            with self._metadata.read("listing content") as tx:
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
        token = None
        try:
            with self._metadata.write(f"deleting content {digest}") as tx:
                if not tx.delete_content(self._namespace, digest):
                    raise NotFound(f"content {digest}")
                if self._lease is not None:
                    tx.delete_lease_resource(self._namespace, self._lease, CONTENT, digest)
                if not tx.blob_referenced(digest):
                    # Set the bytes aside inside the transaction: if it never
                    # commits, the next open puts them back.
                    token = self._blobs.set_aside(digest)
        except BaseException:
            if token is not None:
                # Not committed (a full disk, say): the record stands, and so
                # must its bytes, now rather than at the next open.
                with contextlib.suppress(OSError, ContentdError):
                    self._blobs.restore(token, digest)
            raise
        if token is not None:
            self._blobs.drop(token)
        self._changes.note_deletion()

    def reader_at(self, digest: str) -> ReaderAt:
        validate_digest(digest)
        with self._metadata.read(f"reading content {digest}") as tx:
            record = tx.content(self._namespace, digest)
        if record is None:
            raise NotFound(f"content {digest}")
        reader = self._blobs.open_blob(digest, record.size)
        if reader is not None:
            return reader
        if self._settle_delete(digest):
            return self.reader_at(digest)
        with self._metadata.read(f"reading content {digest}") as tx:
            deleted = tx.content(self._namespace, digest) is None
        if deleted:
            raise NotFound(f"content {digest}")
        raise DataLoss(
            f"content {digest}: its bytes are missing from the store", reason=BLOB_MISSING
        )

    def _settle_delete(self, digest: str) -> bool:
        """Whether the bytes of `digest`, found missing, are back now.

        A delete sets the bytes aside inside its transaction, so a reader
        can find them gone while the record it read still stands. This waits
        for a delete in progress to commit and puts back the bytes of one
        that died.
        """
        self._repair_deletes()
        return self._blobs.stat(digest) is not None

    # Ingests

    def status(self, ref: str) -> Status:
        validate_ref(ref)
        with self._metadata.read(f"reading ingest {ref}") as tx:
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
            found = self._blobs.ingest_size(record.key)
            if found is None:
                # A writer that died committing, after its bytes were
                # published, leaves a record and no bytes: finish that commit.
                if self._repair_ingest(record.key):
                    return None
                offset = 0
            else:
                offset, modified = found
                # A live writer records progress on close; the bytes know now.
                updated_at = max(updated_at, modified)
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
        with self._metadata.read("listing ingests") as tx:
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

    def _lock(self, ref: str) -> tuple[str, RefLock]:
        key = ingest_key(self._namespace, ref)
        lock = self._locks.try_lock(key)
        if lock is None:
            refused = self._metadata.meter.lock_refused
            if refused is not None:
                refused()
            raise Unavailable(f"ref {ref} locked", reason=REF_LOCKED, metadata={"ref": ref})
        return key, lock

    def _end_ingest(self, key: str, lock: RefLock, *, bytes_left: bool = True) -> None:
        """Remove a finished ingest's bytes (unless published) and its lock, the lock last."""
        end_ingest(self._backends, key, lock, bytes_left=bytes_left)

    def abort(self, ref: str) -> None:
        validate_ref(ref)
        key, lock = self._lock(ref)
        try:
            with self._metadata.write(f"aborting ingest {ref}") as tx:
                found = tx.ingest(self._namespace, ref) is not None
                tx.delete_ingest(self._namespace, ref)
                if self._lease is not None:
                    tx.delete_lease_resource(self._namespace, self._lease, INGESTS, ref)
        finally:
            self._end_ingest(key, lock)
        if not found:
            raise NotFound(f"ref {ref}")

    def writer(
        self,
        ref: str,
        *,
        total: int = 0,
        expected: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> BackedWriter:
        validate_ref(ref)
        validate_size("total", total)
        algorithm = split_digest(expected)[0] if expected else CANONICAL_ALGORITHM
        labels = drop_empty(labels or {})
        if expected:
            self._refuse_stored(expected, f"opening writer for ref {ref}")
        key, lock = self._lock(ref)
        try:
            record, base_size = self._open_ingest(ref, key, total, expected, lock)
            return BackedWriter(self, record, lock, labels, algorithm, base_size)
        except BaseException:
            self._release_unused(ref, key, lock)
            raise

    def _refuse_stored(self, digest: str, doing: str) -> None:
        """AlreadyExists if the namespace holds `digest`; under a lease, listed on it first.

        The lease keeps what a pull found already there until the image
        that names it exists (containerd does the same).
        """
        if self._lease is None:
            with self._metadata.read(doing) as tx:
                stored = tx.content(self._namespace, digest) is not None
        else:
            with self._metadata.write(doing) as tx:
                stored = tx.content(self._namespace, digest) is not None
                if stored:
                    require_lease(tx, self._namespace, self._lease, "unable to lease content: ")
                    tx.add_lease_resource(self._namespace, self._lease, CONTENT, digest)
        if stored:
            raise AlreadyExists(f"content {digest}")

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
        stores with one write, one lock and one (group-committed) transaction.
        The bytes are verified first: wrong bytes are FailedPrecondition even
        when the namespace holds them, or holds `expected`.
        """
        validate_ref(ref)
        validate_size("size", size)
        algorithm = split_digest(expected)[0] if expected else CANONICAL_ALGORITHM
        final_labels = drop_empty(labels or {})
        view = memoryview(data).cast("B")

        def hashed() -> str:
            hasher = new_hasher(algorithm)
            hasher.update(view)
            return f"{algorithm}:{hasher.hexdigest()}"

        # The bytes are in hand: verify them before anything else, so that
        # bytes stored under their own digest never pass for another one.
        digest = check_commit(size, expected, len(view), hashed)
        self._refuse_stored(digest, f"storing {digest}")
        key, lock = self._lock(ref)
        outcome = _Recording()
        try:
            self._finish_commit(key, lock)
            self._blobs.store_ingest(key, digest, view)
            self._note_commit(lock, ref, digest, final_labels)
            self._record_blob(ref, key, digest, len(view), final_labels, outcome)
        except BaseException:
            if outcome.published:
                lock.release()  # the record failed after publishing: its note stays for repair
            else:
                self._end_ingest(key, lock)
            raise
        self._end_ingest(key, lock, bytes_left=not outcome.published)
        if outcome.existed:
            raise AlreadyExists(f"content {digest}")
        return digest

    def _open_ingest(
        self, ref: str, key: str, total: int, expected: str, lock: RefLock
    ) -> tuple[IngestRecord, int]:
        """Create or resume the ingest record, with the lock held; returns it and its base size.

        An ingest resumes where it stopped, unless the writer now declares a
        different total than the ingest was started with: then, as in
        containerd, those bytes were meant for other content and the ingest
        starts over.
        """
        # A writer that died mid-commit: finish that first, as a reopen would.
        self._finish_commit(key, lock)
        with self._metadata.read(f"opening writer for ref {ref}") as tx:
            previous = tx.ingest(self._namespace, ref)
        declared = previous.total if previous is not None else 0
        if previous is not None and total > 0 and declared > 0 and total != declared:
            previous = None
        if previous is None:
            # Bytes without a record are no ingest's (a put that died left
            # them): a new ingest starts empty.
            self._blobs.remove_ingest(key)
        now = time.time_ns()
        # Not durable: an ingest record lost to a power cut only loses the
        # ingest's progress (the next open removes its bytes), never a blob.
        # A writer under no lease renews its ingest's day; one under a lease
        # lists the ingest on it instead (and must name a lease that exists).
        expires_at = None if self._lease is not None else now + INGEST_EXPIRY_NS
        with self._metadata.write(f"opening writer for ref {ref}", durable=False) as tx:
            if self._lease is not None:
                require_lease(tx, self._namespace, self._lease)
                tx.add_lease_resource(self._namespace, self._lease, INGESTS, ref)
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
                record = IngestRecord(
                    self._namespace, ref, key, total, expected, now, now, base, expires_at
                )
                tx.delete_ingest(self._namespace, ref)
                tx.insert_ingest(record)
            else:
                if base is None and previous.base is not None:
                    # Still the shared bytes it started from, if any namespace, or
                    # at least the disk, still has them; else it starts over.
                    stored = tx.committed_anywhere(previous.base)
                    size = stored.size if stored is not None else self._blobs.stat(previous.base)
                    if size is not None:
                        base, base_size = previous.base, size
                record = IngestRecord(
                    self._namespace,
                    ref,
                    key,
                    total or previous.total,
                    expected or previous.expected,
                    previous.started_at,
                    previous.updated_at,
                    base,
                    expires_at if expires_at is not None else previous.expires_at,
                )
                if expires_at is not None:
                    tx.set_ingest_expiry(self._namespace, ref, expires_at)
                tx.update_ingest(
                    self._namespace,
                    ref,
                    total=record.total,
                    expected=record.expected,
                    updated_at=record.updated_at,
                    base=base,
                )
        if base is not None:
            self._blobs.remove_ingest(key)
        return record, base_size

    def _release_unused(self, ref: str, key: str, lock: RefLock) -> None:
        """Release a lock taken for a writer that failed to open.

        If no ingest record exists either, nothing is left behind.
        """
        try:
            with self._metadata.read(f"opening writer for ref {ref}") as tx:
                exists = tx.ingest(self._namespace, ref) is not None
        except Exception:  # keep the bytes when unsure; the next open tidies up
            exists = True
        if exists:
            lock.release()
        else:
            self._end_ingest(key, lock)

    # Commits

    def _record_blob(
        self,
        ref: str,
        key: str | None,
        digest: str,
        size: int,
        labels: dict[str, str],
        outcome: _Recording,
    ) -> None:
        """Make `digest` visible in the namespace and drop the ingest `ref`, durably.

        It runs in a group commit. With `key` (an ingest's sealed, verified
        bytes), the bytes are published inside the transaction, under the
        write lock a delete also takes, so no delete can set a blob aside
        between this look at it and this record; if another namespace stored
        them already, those verified bytes stay and the ingest's are left
        for the caller to drop. Without `key`, the ingest started from the
        stored blob (the shared policy). `outcome` says whether the namespace
        had the blob already and whether the bytes were published.
        """
        namespace = self._namespace
        lease = self._lease

        def record(tx: MetadataTransaction) -> None:
            if lease is not None:
                # Checked before anything is published: a commit whose lease is
                # gone leaves its ingest as it was.
                require_lease(tx, namespace, lease)
                tx.delete_lease_resource(namespace, lease, INGESTS, ref)
                tx.add_lease_resource(namespace, lease, CONTENT, digest)
            tx.delete_ingest(namespace, ref)
            if tx.content(namespace, digest) is not None:
                outcome.existed = True
                return
            now = time.time_ns()
            tx.ensure_namespace(namespace, now)
            tx.insert_content(namespace, ContentRecord(digest, size, now, now, labels))
            if key is None:
                if self._blobs.stat(digest) is None:
                    # The stored bytes this ingest started from were quarantined
                    # or lost since: recording them would list a blob with no bytes.
                    raise Aborted(f"committing {digest}: its stored bytes were removed meanwhile")
            elif self._blobs.publish(key, digest, tx):
                outcome.published = True

        self._metadata.commit(f"committing {digest}", record)
        self._changes.note(deletion=False)

    def _note_commit(self, lock: RefLock, ref: str, digest: str, labels: dict[str, str]) -> None:
        """Note, before the bytes are published, what a commit stores: a crash leaves enough to
        finish it.

        The note goes with the ingest's lock, which its holder owns, so a
        commit makes nothing of its own (for the local store, no file: file
        churn is what costs most on ext4). It guards against the process
        dying; a power cut before the commit completes only loses a commit
        that was never acknowledged.
        """
        intent = {"namespace": self._namespace, "ref": ref, "digest": digest, "labels": labels}
        lock.write_note(_encode_note(intent))

    def _finish_commit(self, key: str, lock: RefLock) -> bool:
        """Finish or undo a commit its writer did not live to finish; `lock` is held.

        If the verified bytes were published, the blob is recorded in the
        namespace with the labels the commit carried and the ingest is
        dropped (True). Otherwise the note goes and the ingest stays,
        resumable (False).
        """
        note = lock.read_note()
        if not note:
            return False
        try:
            intent: dict[str, Any] = json.loads(note)
            namespace, ref = str(intent["namespace"]), str(intent["ref"])
            digest, labels = validate_digest(str(intent["digest"])), dict(intent["labels"])
            size = self._blobs.stat(digest)
        except (KeyError, TypeError, ValueError, InvalidArgument):
            size = None  # torn by a crash while being written: nothing was published
        if size is None:
            lock.clear_note()
            # The commit sealed the bytes for a publish it never made; resuming
            # appends to them, which only their writer may undo.
            self._blobs.unseal_ingest(key)
            return False
        with self._metadata.write("finishing an interrupted commit") as tx:
            if tx.content(namespace, digest) is None:
                now = time.time_ns()
                tx.insert_content(namespace, ContentRecord(digest, size, now, now, labels))
            tx.delete_ingest(namespace, ref)
            self._blobs.make_durable(digest, tx)
        self._blobs.remove_ingest(key)
        _log.warning("finished the interrupted commit of %s in %s", digest, namespace)
        return True

    # Repair

    def repair(self) -> None:
        """Finish or undo what dead processes left half done.

        Safe while other processes use the store: it touches only ingests
        whose lock is free (their writer is gone) and deletes inside a write
        transaction, which excludes a delete in progress.
        """
        self._repair_deletes()
        self._repair_ingests()

    def _repair_deletes(self) -> None:
        entries = self._blobs.set_aside_entries()
        if not entries:
            return
        with self._metadata.write("repairing deleted blobs") as tx:
            for token, digest in entries:
                if tx.blob_referenced(digest) and self._blobs.stat(digest) is None:
                    # The delete that set it aside never committed.
                    if self._blobs.restore(token, digest):
                        _log.warning("restored blob %s whose delete was interrupted", digest)
                else:
                    self._blobs.drop(token)

    def _repair_ingests(self) -> None:
        with self._metadata.read("listing ingests for repair") as tx:
            known = {record.key for record in tx.all_ingests()}
        locks = self._locks.existing()
        noted = {key for key, has_note in locks.items() if has_note}
        for key in sorted(self._blobs.ingest_keys() | locks.keys()):
            if key in noted or key not in known:
                self._repair_ingest(key)

    def _repair_ingest(self, key: str) -> bool:
        """Finish or remove what a dead writer left of an ingest; whether the ingest is gone.

        An interrupted commit whose bytes were published is finished, and
        bytes with no ingest record are removed; a live writer's ingest is
        left alone, and so is one that a writer can resume.
        """
        if not self._locks.exists(key) and self._blobs.ingest_size(key) is None:
            return False  # nothing is left to repair
        lock = claim_ingest(self._backends, key)
        if lock is None:
            return False  # a live writer holds it
        if self._finish_commit(key, lock):
            self._end_ingest(key, lock)
            return True
        with self._metadata.read("checking an ingest for repair") as tx:
            known = any(record.key == key for record in tx.all_ingests())
        if known:
            lock.release()
            return False
        self._end_ingest(key, lock)
        _log.info("removed ingest bytes with no ingest record (%s)", key)
        return True

    # Garbage collection

    def collect(self, *, dry_run: bool = False) -> CollectionReport:
        """Collect garbage in every namespace now (see `_gc`); what was removed.

        What dead processes left half done is repaired first, so a commit a
        crash cut short is finished, not collected. With `dry_run` nothing
        is removed: the report says what would be.
        """
        if not dry_run:
            self.repair()
        return collect(self._backends, dry_run=dry_run)

    # Lifetime

    def close(self) -> None:
        """Close the store (every namespace view of it)."""
        self._backends.close()


class BackedWriter(Closing):
    """A Writer on an ingest of a BackedStore; holds the ingest's lock until commit or close.

    The bytes go to the blob backend as they arrive, hashed on the way, so
    commit only has to flush, verify and publish. The backend may keep the
    hash's state with the bytes (see `IngestData`): a writer resuming the
    ingest goes on from it, or else re-reads the bytes. An ingest that starts from
    a blob another namespace stored (the shared policy) has no bytes of its
    own until something is appended to it.
    """

    def __init__(
        self,
        store: BackedStore,
        record: IngestRecord,
        lock: RefLock,
        labels: Mapping[str, str],
        algorithm: str,
        base_size: int,
    ) -> None:
        self._store = store
        self._blobs = store._blobs
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
        #: Whether the backend keeps the hash's state with the bytes: only then is the
        #: hash one with a state (hashlib's own is quicker on small writes).
        self._keeps_hash = False
        self._hasher: Hasher | hashlib._Hash = new_hasher(algorithm)
        self._offset = 0
        self._data: IngestData | None = None
        self._finished = False
        # Set once the ingest no longer exists (committed, or found committed).
        self._gone = False
        # Set once the bytes were published: if the record failed to commit,
        # the lock's note is left for repair.
        self._published = False
        if self._base is None:
            self._open_data()

    @property
    def ref(self) -> str:
        return self._ref

    def _open_data(self, *, truncate: bool = False) -> None:
        data = self._blobs.open_ingest(self._key, f"ingest {self._ref}", truncate=truncate)
        try:
            self._keeps_hash = data.keeps_hash
            self._hasher, self._offset = self._new_hasher(), 0
            if data.size and not self._restore_hash(data):
                # Resuming with no usable hash state: rebuild it from the bytes held.
                for chunk in data.chunks():
                    self._hasher.update(chunk)
                    self._offset += len(chunk)
            if self._keeps_hash:
                data.keep_hash(self._hasher_state)
        except BaseException:
            data.close()
            raise
        self._data = data
        # A writer that crashed never recorded its last write; the bytes did.
        self._updated_at = max(self._updated_at, data.modified_ns)

    def _new_hasher(self) -> Hasher | hashlib._Hash:
        if self._keeps_hash:
            return resumable_hasher(self._algorithm)
        return new_hasher(self._algorithm)

    def _restore_hash(self, data: IngestData) -> bool:
        """Go on from the hash state kept with the bytes, if it is theirs; whether it was."""
        saved = data.saved_hash() if self._keeps_hash else None
        if saved is None:
            _log.debug("ingest %s: no hash state is kept with it: re-reading it", self._ref)
            return False
        offset, state = saved
        try:
            if offset != data.size:
                raise HashStateError(f"hash state at {offset} bytes, the ingest holds {data.size}")
            hasher = restore_hash(state, self._algorithm, offset)
        except HashStateError as exc:
            _log.info("ingest %s: its hash state is not used (%s): re-reading it", self._ref, exc)
            return False
        self._hasher, self._offset = hasher, offset
        return True

    def _hasher_state(self) -> bytes | None:
        """The hash state of the bytes written so far, for the backend to keep with them."""
        hasher = self._hasher
        return hasher.state() if isinstance(hasher, Hasher) else None

    def _check_open(self) -> None:
        if self._finished:
            raise FailedPrecondition(f"writer for ref {self._ref} is closed")

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self._check_open()
        if not data:
            return 0
        if self._base is not None:
            self._materialize()
        held = self._data
        assert held is not None
        held.append(data)
        self._hasher.update(data)
        self._offset += len(data)
        self._updated_at = time.time_ns()
        return len(data)

    def _materialize(self) -> None:
        """Copy the shared blob into this ingest's own bytes before appending."""
        base = self._base
        assert base is not None
        self._open_data(truncate=True)
        held = self._data
        assert held is not None
        source = self._blobs.open_blob(base, self._base_size)
        if source is None:
            raise Aborted(f"copying {base} into ingest {self._ref}: its bytes were removed")
        with source:
            while chunk := source.read(1 << 20):
                held.append(chunk)
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
            offset=self.offset,
            total=self._total,
            expected=self._expected,
            started_at=datetime_from_ns(self._started_at),
            updated_at=datetime_from_ns(self._updated_at),
        )

    def truncate(self, size: int = 0) -> None:
        self._check_open()
        if size != 0:
            raise Unimplemented(f"truncate of ingest {self._ref} to {size} bytes: only 0 is")
        # Before the bytes go: the backend may save the (empty) state as they do.
        self._hasher = self._new_hasher()
        self._offset = 0
        self._updated_at = time.time_ns()
        if self._base is not None:
            self._base = None
            self._open_data(truncate=True)
            self._record_progress()
            return
        held = self._data
        assert held is not None
        held.truncate()

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
        if self._base is not None:
            actual = check_commit(size, expected, self._base_size, self.digest)
            self._commit_shared(actual, final_labels)
        else:
            actual = check_commit(size, expected, self._offset, lambda: self._final(expected))
            self._commit_own(actual, final_labels)
        return actual

    def _final(self, expected: str) -> str:
        """The digest of the bytes, in `expected`'s algorithm (the writer's own when none)."""
        algorithm = split_digest(expected)[0] if expected else self._algorithm
        if algorithm == self._algorithm:
            return self.digest()
        held = self._data
        assert held is not None
        hasher = new_hasher(algorithm)
        for chunk in held.chunks():
            hasher.update(chunk)
        return f"{algorithm}:{hasher.hexdigest()}"

    def _commit_shared(self, digest: str, labels: dict[str, str]) -> None:
        outcome = _Recording()
        self._store._record_blob(self._ref, None, digest, self._base_size, labels, outcome)
        self._gone = True
        if outcome.existed:
            raise AlreadyExists(f"content {digest}")

    def _commit_own(self, digest: str, labels: dict[str, str]) -> None:
        held = self._data
        assert held is not None
        held.sync()
        # The note first: whoever finds the bytes sealed finds it too, and
        # unseals them again if they were never published.
        self._store._note_commit(self._lock, self._ref, digest, labels)
        held.seal()
        outcome = _Recording()
        try:
            self._store._record_blob(self._ref, self._key, digest, self._offset, labels, outcome)
        except BaseException:
            if not outcome.published:
                # Still an ingest, to be resumed and appended to.
                with contextlib.suppress(OSError, ContentdError):
                    held.unseal()
            raise
        finally:
            self._published = outcome.published
        self._gone = True
        if outcome.existed:
            raise AlreadyExists(f"content {digest}")

    def _record_progress(self) -> None:
        store = self._store
        with store._metadata.write(f"recording ingest {self._ref}", durable=False) as tx:
            tx.update_ingest(
                store.namespace,
                self._ref,
                total=self._total,
                expected=self._expected,
                updated_at=self._updated_at,
                base=self._base,
            )

    def _record_progress_quietly(self) -> None:
        # Losing the record of the last write time is harmless (the bytes'
        # own time stands in); failing a close or masking a commit's own
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
        held, self._data = self._data, None
        try:
            if held is not None:
                held.close()
            if self._gone:
                self._store._end_ingest(self._key, self._lock, bytes_left=not self._published)
            elif not self._published:
                # A commit that failed after the bytes were published keeps
                # its note: the next open, or writer of this ref, finishes it.
                self._lock.clear_note()
                self._record_progress_quietly()
        finally:
            self._lock.release()


if TYPE_CHECKING:
    from ._types import MetadataStore, Writer

    # mypy checks here that the rules make a Store (with containerd's metadata) and a Writer.
    _store: type[MetadataStore] = BackedStore
    _writer: type[Writer] = BackedWriter

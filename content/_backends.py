"""The three backends a store runs on, and what each one promises.

The store's rules (`_rules`) are written once over these interfaces: which
namespace sees which blob, the shared-content policy, resuming ingests,
verifying commits, deleting, and repairing what a crash left. A backend only
keeps what it is given:

- a `BlobBackend` keeps bytes: committed blobs by digest, and each ingest's
  bytes by its key. It knows no namespaces, refs or labels;
- a `MetadataBackend` keeps records in transactions: namespaces, content and
  ingest records, labels, registry repositories, manifests and tags;
- a `LockBackend` keeps one writer lock per ingest key, held across
  processes and released when its holder dies.

The local store wires them to files, SQLite and flock (`_files`, `_sqlite`,
`_locks`); a distributed store would wire them to object storage and a
database server. Every method raises `contentd.errdefs` classes for the
failures callers can act on (a full disk is ResourceExhausted, a busy
database Unavailable, damaged records DataLoss); anything else is a bug.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from ._meter import NamespaceUsage, StoreMeter
from ._records import ContentRecord, ImageRecord, IngestRecord, LeaseRecord, Referrer
from ._types import ReaderAt

_T = TypeVar("_T")


class IngestData(Protocol):
    """One ingest's bytes, open for its writer, who holds the ingest's lock.

    Appends go to the end. Not durable until `sync`: a crash may lose any
    suffix of what was appended since, never bytes before it, and what
    survives is whatever a reopen reports (`size`).

    **Hash states.** A writer resuming an ingest needs the hash of the bytes
    it holds. A backend where reading them back is dear (object storage) may
    keep the writer's hash state with the bytes, so the next writer, in any
    process, goes on from it and reads nothing:

    - the writer hands over a source of its state once it has the ingest
      open (`keep_hash`). The source gives the state of exactly the bytes of
      the appends that returned since the ingest was opened or truncated:
      the writer updates its hash only after an append succeeds, and resets
      it before a truncate;
    - the backend calls the source only while its bytes are exactly those (at
      `sync`, at `close`, or whenever it saves what it holds; within an
      append, only before any of its bytes count), and stores the state in
      the same atomic write as the size it describes, as ``(offset, state)``;
    - a reopen offers that pair (`saved_hash`). The writer uses it only if
      `offset` is the size the ingest reopened with and the state restores
      for its algorithm and that length (`_hashstate.restore`); otherwise
      (none, stale, damaged, another algorithm) it re-reads the bytes
      (`chunks`), which is always correct, only slower.

    A crash may lose bytes appended after the state was saved, never leave a
    state that disagrees with the bytes it is stored with. A backend that
    keeps no state (reading back is cheap) says so (`keeps_hash`): its writer
    then hashes without one, saves nothing and re-reads on resume.
    """

    @property
    def size(self) -> int:
        """How many bytes the ingest holds."""
        ...

    @property
    def modified_ns(self) -> int:
        """When the bytes last changed, in nanoseconds since the epoch."""
        ...

    def chunks(self) -> Iterator[bytes]:
        """The bytes held, from the start, in pieces (to rebuild a hash on resume)."""
        ...

    @property
    def keeps_hash(self) -> bool:
        """Whether `keep_hash` keeps the writer's state (if not, the writer needs no state)."""
        ...

    def saved_hash(self) -> tuple[int, bytes] | None:
        """The hash state saved with the bytes as they were reopened: (offset, state), or None."""
        ...

    def keep_hash(self, source: Callable[[], bytes | None]) -> None:
        """Keep the writer's hash state, from `source`, with the bytes (see the class's doc).

        `source` returns None when the writer's hash has no state to keep:
        then none is kept.
        """
        ...

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Append all of `data`, or nothing: a failed append leaves the bytes as they were."""
        ...

    def truncate(self) -> None:
        """Drop every byte: the ingest starts over, empty."""
        ...

    def sync(self) -> None:
        """Make the bytes held durable (survive a power cut)."""
        ...

    def seal(self) -> None:
        """Freeze the bytes for a commit: nothing may change them until `unseal` or publish."""
        ...

    def unseal(self) -> None:
        """Undo `seal` after a commit that failed before the bytes were published."""
        ...

    def close(self) -> None: ...


class BlobBackend(Protocol):
    """Blob bytes: committed blobs by digest, read-only once published; ingest bytes by key.

    Publishing is atomic (a blob is whole or absent) and happens inside a
    metadata transaction, so that the transaction that records a blob and
    the one that removes it cannot interleave with each other's checks. A
    crash may leave an ingest's bytes with no ingest record, a published
    blob with no content record (found through the commit's intent), or a
    blob set aside by a delete whose transaction never committed: repair
    (in `_rules`) puts each right.
    """

    # Committed blobs

    def stat(self, digest: str) -> int | None:
        """The size of blob `digest` as published; None if its bytes are not there."""
        ...

    def open_blob(self, digest: str, size: int) -> ReaderAt | None:
        """Blob `digest` of `size` bytes for reading; None if its bytes are missing."""
        ...

    def publish(self, key: str, digest: str, tx: MetadataTransaction) -> bool:
        """Make ingest `key`'s sealed, verified bytes the blob `digest`, inside `tx`.

        False, leaving the ingest's bytes for the caller to remove, if the
        blob is published already; True leaves nothing of the ingest's bytes
        (the caller removes only its lock). The blob is durable once `tx` commits:
        the backend registers with `tx.before_commit` whatever must be
        flushed first.
        """
        ...

    def make_durable(self, digest: str, tx: MetadataTransaction) -> None:
        """Have blob `digest`'s publication durable before `tx` commits.

        For a blob a writer published and died before recording: whoever
        records it must not record bytes a power cut could still take.
        """
        ...

    def set_aside(self, digest: str) -> str | None:
        """Take blob `digest` out of sight, inside the transaction deleting it; a token.

        None if it had no bytes. The token names the bytes until `drop`
        (the transaction committed) or `restore` (it did not).
        """
        ...

    def restore(self, token: str, digest: str) -> bool:
        """Put back bytes set aside whose delete never committed; whether they moved back."""
        ...

    def drop(self, token: str) -> None:
        """Free bytes set aside by a committed delete."""
        ...

    def digests(self) -> Iterator[str]:
        """Every published blob's digest, recorded or not (for collection and verification)."""
        ...

    def set_aside_entries(self) -> list[tuple[str, str]]:
        """Every (token, digest) set aside and not yet dropped or restored (for repair)."""
        ...

    # Ingests

    def open_ingest(self, key: str, what: str, *, truncate: bool = False) -> IngestData:
        """The bytes of ingest `key`, created empty if there are none (or `truncate`).

        `what` names the ingest in error messages ("ingest my-ref").
        """
        ...

    def store_ingest(self, key: str, what: str, data: bytes | bytearray | memoryview) -> None:
        """Replace ingest `key`'s bytes with `data`, durable and sealed: a one-step commit."""
        ...

    def ingest_size(self, key: str) -> tuple[int, int] | None:
        """Ingest `key`'s size and last change (ns), or None if it has no bytes."""
        ...

    def unseal_ingest(self, key: str) -> None:
        """Unseal ingest `key`'s bytes, sealed by a writer that died committing them."""
        ...

    def remove_ingest(self, key: str) -> None:
        """Delete ingest `key`'s bytes, if any."""
        ...

    def ingest_keys(self) -> set[str]:
        """The keys of every ingest that has bytes (for repair)."""
        ...

    def close(self) -> None: ...


class MetadataTransaction(Protocol):
    """The reads and changes of one metadata transaction.

    A write transaction's changes become visible together, and are durable
    when it ends without error (unless opened not durable). A read
    transaction sees one consistent snapshot.
    """

    def before_commit(self, key: Hashable, action: Callable[[], None]) -> None:
        """Run `action` once (per `key`) just before this transaction commits."""
        ...

    # Namespaces

    def ensure_namespace(self, namespace: str, now: int) -> None: ...

    # Content

    def content(self, namespace: str, digest: str) -> ContentRecord | None: ...

    def content_page(
        self,
        namespace: str,
        after: str,
        limit: int,
        labels: Sequence[Mapping[str, str]] = (),
    ) -> list[ContentRecord]:
        """Up to `limit` records after digest `after`, in digest order.

        With `labels`, only records that may hold every key and value of one
        of the mappings (a backend may return more; the caller filters).
        """
        ...

    def insert_content(self, namespace: str, record: ContentRecord) -> None: ...

    def set_labels(
        self, namespace: str, digest: str, labels: Mapping[str, str], updated_at: int
    ) -> None: ...

    def delete_content(self, namespace: str, digest: str) -> bool:
        """Remove the namespace's record; whether there was one."""
        ...

    def committed_anywhere(self, digest: str) -> ContentRecord | None:
        """A record of `digest` in any namespace."""
        ...

    def blob_referenced(self, digest: str) -> bool:
        """Whether any namespace or ingest still needs the bytes of `digest`."""
        ...

    def recorded_blobs(self, after: str, limit: int) -> list[tuple[str, int]]:
        """Up to `limit` (digest, size) pairs any namespace records, after digest `after`."""
        ...

    def records_everywhere(self, digest: str) -> list[tuple[str, ContentRecord]]:
        """Every namespace's record of `digest`, as (namespace, record) pairs."""
        ...

    def forget_blob(self, digest: str) -> None:
        """Drop `digest` from every namespace; ingests that started from it start over."""
        ...

    # Ingests

    def ingest(self, namespace: str, ref: str) -> IngestRecord | None: ...

    def ingests(self, namespace: str) -> list[IngestRecord]: ...

    def all_ingests(self) -> list[IngestRecord]: ...

    def insert_ingest(self, record: IngestRecord) -> None: ...

    def update_ingest(
        self,
        namespace: str,
        ref: str,
        *,
        total: int,
        expected: str,
        updated_at: int,
        base: str | None,
    ) -> None: ...

    def delete_ingest(self, namespace: str, ref: str) -> None: ...

    def set_ingest_expiry(self, namespace: str, ref: str, expires_at: int | None) -> None:
        """When the ingest expires (ns since the epoch), or None: never by itself."""
        ...

    # Namespaces and their labels

    def namespaces(self) -> list[tuple[str, dict[str, str]]]:
        """Every namespace with its labels, by name."""
        ...

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        """The namespace's labels; None if it does not exist."""
        ...

    def usage(self) -> list[NamespaceUsage]:
        """Every namespace's blobs, their bytes and its ingests, by name, in one query."""
        ...

    def set_namespace_labels(self, namespace: str, labels: Mapping[str, str], now: int) -> None:
        """Replace the namespace's labels, creating it if need be."""
        ...

    def namespace_holds(self, namespace: str) -> list[str]:
        """What keeps `namespace` from being deleted: "images", "blobs", where it has any."""
        ...

    def delete_namespace(self, namespace: str) -> bool:
        """Remove the namespace with its leases, ingests and registry records; whether it was."""
        ...

    # Leases

    def lease(self, namespace: str, lease: str) -> LeaseRecord | None: ...

    def leases(self, namespace: str) -> list[LeaseRecord]:
        """The namespace's leases, by id."""
        ...

    def insert_lease(self, namespace: str, record: LeaseRecord) -> None: ...

    def delete_lease(self, namespace: str, lease: str) -> bool:
        """Remove the lease and its list of resources; whether it existed."""
        ...

    def add_lease_resource(self, namespace: str, lease: str, kind: str, resource: str) -> None:
        """List `resource` of type `kind` on the lease (once, however often added)."""
        ...

    def delete_lease_resource(
        self, namespace: str, lease: str, kind: str, resource: str
    ) -> bool: ...

    def lease_resources(self, namespace: str, lease: str) -> list[tuple[str, str]]:
        """(type, id) pairs the lease holds: content, then ingests, then snapshots, sorted."""
        ...

    # Images

    def image(self, namespace: str, name: str) -> ImageRecord | None: ...

    def images(self, namespace: str) -> list[ImageRecord]:
        """The namespace's images, by name."""
        ...

    def put_image(self, namespace: str, record: ImageRecord) -> None:
        """Insert or replace the image `record.name`."""
        ...

    def delete_image(self, namespace: str, name: str) -> bool: ...

    # Registry repositories, manifests and tags

    def link_blob(self, namespace: str, repository: str, digest: str) -> None: ...

    def unlink_blob(self, namespace: str, repository: str, digest: str) -> bool: ...

    def repository_has(self, namespace: str, repository: str, digest: str) -> bool:
        """Whether `repository` holds `digest`, as a blob or as a manifest."""
        ...

    def put_manifest(
        self,
        namespace: str,
        repository: str,
        digest: str,
        media_type: str,
        tag: str | None,
        referrer: Referrer | None,
    ) -> None: ...

    def manifest_media_type(self, namespace: str, repository: str, digest: str) -> str | None: ...

    def resolve_tag(self, namespace: str, repository: str, tag: str) -> str | None: ...

    def delete_manifest(self, namespace: str, repository: str, digest: str) -> bool: ...

    def delete_tag(self, namespace: str, repository: str, tag: str) -> bool: ...

    def tags(
        self, namespace: str, repository: str, after: str, limit: int
    ) -> list[tuple[str, str]]:
        """Up to `limit` (tag, digest) pairs after `after`, in lexical (case-insensitive) order."""
        ...

    def referrers(
        self, namespace: str, repository: str, subject: str, artifact_type: str | None
    ) -> list[dict[str, Any]]: ...

    def repository_exists(self, namespace: str, repository: str) -> bool: ...

    def repositories(self, namespace: str, after: str, limit: int) -> list[str]: ...

    def repository_digests(self, namespace: str) -> set[str]:
        """Every blob and manifest any repository of the namespace holds (collection roots)."""
        ...


class MetadataBackend(Protocol):
    """Transactions over the store's records, shared by every thread of a process.

    Writers exclude each other; readers never wait for writers. A write
    that waits longer than the backend's busy bound for another writer
    fails with Unavailable (reason STORE_BUSY).
    """

    def read(self, doing: str) -> AbstractContextManager[MetadataTransaction]:
        """A read-only transaction: one consistent snapshot."""
        ...

    def write(
        self, doing: str, *, durable: bool = True
    ) -> AbstractContextManager[MetadataTransaction]:
        """A write transaction, committed when the block ends and rolled back on error.

        `durable=False` may skip flushing this commit: it survives the
        process dying but maybe not a power cut. Only for records a later
        open repairs (progress marks).
        """
        ...

    def commit(self, doing: str, body: Callable[[MetadataTransaction], _T]) -> _T:
        """Run `body` in a durable write transaction, maybe shared with concurrent callers.

        A `body` that raises undoes its own changes only; its caller gets
        the exception, and the others' changes commit.
        """
        ...

    @property
    def meter(self) -> StoreMeter:
        """The hooks this backend's group commits call (see `StoreMeter`)."""
        ...

    def close(self) -> None: ...


class RefLock(Protocol):
    """A held writer lock on one ingest key. It dies with its holder's process.

    The holder may leave a note (what a commit is about to store), which
    whoever takes the lock next reads: after a crash, the note is what
    repair finishes or undoes. Notes survive the holder dying, not
    necessarily a power cut.
    """

    def write_note(self, note: str) -> None: ...

    def read_note(self) -> str:
        """The note a holder left ("" if none)."""
        ...

    def clear_note(self) -> None: ...

    def release(self, *, remove: bool = False) -> None:
        """Let go of the lock; with `remove`, its ingest is gone and so may the lock be."""
        ...


class LockBackend(Protocol):
    """Writer locks per ingest key, exclusive across every process sharing the store."""

    def try_lock(self, key: str, *, create: bool = True) -> RefLock | None:
        """The lock on `key` if it is free; None at once if another holder has it.

        Without `create`, only a lock that exists already is taken (repair
        must not make a lock whose writer just finished, or the next writer
        would find it held); backends whose locks always exist ignore it.
        """
        ...

    def exists(self, key: str) -> bool:
        """Whether a lock on `key` exists, held or not (always True where locks always exist)."""
        ...

    def existing(self) -> dict[str, bool]:
        """Every key with a lock that exists, held or not, and whether it carries a note.

        For repair: a note is a commit a crash may have cut short, and a
        lock with no ingest record was left by a writer that died.
        """
        ...

    def close(self) -> None:
        """Let go of what the backend holds open (a connection), and of every lock held with it."""
        ...

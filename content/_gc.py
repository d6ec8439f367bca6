"""Garbage collection with containerd's rules, written once for every backend.

Per namespace, what is reachable from a root stays; the rest goes:

- **Roots.** Unexpired leases and what they hold (content, ingests; a flat
  lease, labelled `containerd.io/gc.flat`, keeps its content without what
  that references); every image's target and what its labels reference;
  ingests not yet expired, or held by a live writer; content labelled
  `containerd.io/gc.root`; and the registry face's repositories, whose blobs
  and manifests stay until deleted from them.
- **References.** A content record's labels `containerd.io/gc.ref.content`
  and `containerd.io/gc.ref.content.<anything>` (or `/<anything>`) name
  other content; an ingest that starts from a stored blob (the shared
  policy) references it.
- **Sweep.** Unreached content records, expired leases and ingests nothing
  keeps go; then the bytes of the blobs those records named (or those
  ingests started from) that no namespace records and no ingest starts from
  any more.
- **Orphans.** Bytes no record names without this collection removing one
  (a crash lost the record, or the ingest that started from a deleted blob
  was aborted) are found by listing every blob and every record, which
  grows with the store: a collection does it only when `OrphanSearch` says
  it is due (the first collection of a store opened in this process, then
  at most once every `ORPHAN_SEARCH_INTERVAL`; every dry run), and outside
  the write transaction, so commits never wait for it.

Marking and sweeping records happen in one metadata write transaction, which
excludes every commit and delete (they write the metadata too), in any
process: a commit publishes and records its blob in one such transaction,
so a collection sees either none of it or all of it. Whether a blob's bytes
go is decided inside that transaction, blob by blob, so bytes a writer
committed after the orphan search listed them stay. Bytes are set aside
inside that transaction and freed once it has committed (put back if it did
not). An ingest's record goes only with its lock taken, so a live writer's
ingest is never collected under it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from contentd.errdefs import ContentdError

from ._backends import MetadataTransaction, RefLock
from ._leases import CONTENT, FLAT_LABEL, INGESTS, lease_expired

if TYPE_CHECKING:
    from ._rules import Backends

#: The content label (any value) that makes the content a root.
ROOT_LABEL: Final = "containerd.io/gc.root"
#: Content labels naming other content: this key, or it followed by "." or "/" and more.
REF_CONTENT: Final = "containerd.io/gc.ref.content"
_PAGE: Final = 1000
#: Seconds between searches for orphaned bytes by a store's collections (see the module).
ORPHAN_SEARCH_INTERVAL: Final = 3600.0


class OrphanSearch:
    """When the collections of one store, in this process, next list every blob for orphans.

    The first collection does, then one at most every `ORPHAN_SEARCH_INTERVAL`
    seconds: a daemon finds what a crash left when it starts, and `contentd gc`
    run on a store directory (a process of its own) always looks.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._last: float | None = None

    def due(self) -> bool:
        """Whether the next collection should search."""
        with self._guard:
            last = self._last
        return last is None or time.monotonic() - last >= ORPHAN_SEARCH_INTERVAL

    def searched(self, started: float) -> None:
        """A collection that began searching at `started` (monotonic) committed."""
        with self._guard:
            self._last = started if self._last is None else max(self._last, started)


@dataclass(frozen=True, slots=True)
class CollectionReport:
    """What one collection removed, or in a dry run would remove, from every namespace."""

    #: Content records removed (a blob in two namespaces counts twice).
    content: int
    leases: int
    ingests: int
    #: Blobs whose bytes were freed, and how many bytes that was.
    blobs: int
    bytes: int
    seconds: float
    dry_run: bool


def content_references(labels: Mapping[str, str]) -> Iterator[str]:
    """The digests a content record's (or an image's) labels reference."""
    for key, value in labels.items():
        if key.startswith(REF_CONTENT) and (
            len(key) == len(REF_CONTENT) or key[len(REF_CONTENT)] in "./"
        ):
            yield value


def claim_ingest(backends: Backends, key: str) -> RefLock | None:
    """The lock of ingest `key` if no live writer holds it; None if one does.

    Writers make the lock first and remove it last, so an ingest without one
    is gone, or bytes some crash left: only then may it be made here.
    Making it otherwise, just after its writer finished, would refuse the
    next writer of that ref.
    """
    lock = backends.locks.try_lock(key, create=False)
    if lock is not None:
        return lock
    if backends.locks.exists(key):
        return None  # a live writer holds it
    return backends.locks.try_lock(key)


def _writer_alive(backends: Backends, key: str) -> bool:
    """Whether a live writer holds ingest `key`'s lock (asked without taking or making it)."""
    lock = backends.locks.try_lock(key, create=False)
    if lock is None:
        return backends.locks.exists(key)
    lock.release()
    return False


def end_ingest(backends: Backends, key: str, lock: RefLock, *, bytes_left: bool = True) -> None:
    """Remove a finished ingest's bytes and its lock; the lock goes last, while held.

    `bytes_left=False`: its bytes were published as a blob, so none are left to remove.
    """
    if bytes_left:
        backends.blobs.remove_ingest(key)
    lock.release(remove=True)


@dataclass
class _Sweep:
    """What a collection removes, gathered while it marks."""

    content: int = 0
    leases: int = 0
    ingests: int = 0
    #: The ingests removed, with their locks, to end once the removal commits.
    claimed: list[tuple[str, RefLock]] = field(default_factory=list)
    #: (token, digest) of bytes set aside, freed once the removal commits.
    set_aside: list[tuple[str, str]] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0


def _records(tx: MetadataTransaction, namespace: str) -> dict[str, dict[str, str]]:
    """Every content record of `namespace`: digest -> labels."""
    records: dict[str, dict[str, str]] = {}
    after = ""
    while True:
        page = tx.content_page(namespace, after, _PAGE)
        for record in page:
            records[record.digest] = record.labels
        if len(page) < _PAGE:
            return records
        after = page[-1].digest


class _Namespace:
    """One namespace's roots, marks and sweep."""

    def __init__(self, backends: Backends, tx: MetadataTransaction, namespace: str) -> None:
        self._backends = backends
        self._tx = tx
        self._namespace = namespace
        self._records = _records(tx, namespace)

    def collect(self, now: datetime, sweep: _Sweep, dry_run: bool) -> set[str]:
        """Mark, then remove (unless `dry_run`) what is unreached.

        The digests whose bytes may have lost their last reference: the
        content removed, and the blobs removed ingests started from.
        """
        tx, namespace = self._tx, self._namespace
        released: set[str] = set()
        roots: set[str] = set()
        flat: set[str] = set()
        leased_ingests: set[str] = set()
        for lease in tx.leases(namespace):
            if lease_expired(lease.labels, now):
                sweep.leases += 1
                tx.delete_lease(namespace, lease.id)
                continue
            kept = flat if FLAT_LABEL in lease.labels else roots
            for kind, resource in tx.lease_resources(namespace, lease.id):
                if kind == CONTENT:
                    kept.add(resource)
                elif kind == INGESTS:
                    leased_ingests.add(resource)
        for image in tx.images(namespace):
            roots.add(image.target.digest)
            roots.update(content_references(image.labels))
        roots.update(tx.repository_digests(namespace))
        roots.update(digest for digest, labels in self._records.items() if ROOT_LABEL in labels)
        roots.update(self._ingests(now, leased_ingests, sweep, dry_run, released))
        marked = self._reach(roots) | flat
        removed = {digest for digest in self._records if digest not in marked}
        sweep.content += len(removed)
        for digest in removed:
            tx.delete_content(namespace, digest)
        return removed | released

    def _ingests(
        self, now: datetime, leased: set[str], sweep: _Sweep, dry_run: bool, released: set[str]
    ) -> Iterator[str]:
        """Sweep the ingests nothing keeps; yield the blobs the kept ones start from.

        The blobs the removed ones started from go into `released`.
        """
        tx, namespace = self._tx, self._namespace
        now_ns = int(now.timestamp() * 1_000_000_000)
        for ingest in tx.ingests(namespace):
            kept = ingest.ref in leased or (
                ingest.expires_at is not None and now_ns <= ingest.expires_at
            )
            # A live writer keeps its ingest: it renews it when it reopens.
            if not kept and dry_run:
                kept = _writer_alive(self._backends, ingest.key)
            elif not kept:
                lock = claim_ingest(self._backends, ingest.key)
                kept = lock is None
                if lock is not None:
                    sweep.claimed.append((ingest.key, lock))
            if not kept:
                sweep.ingests += 1
                tx.delete_ingest(namespace, ingest.ref)
                if ingest.base is not None:
                    released.add(ingest.base)
            elif ingest.base is not None:
                yield ingest.base

    def _reach(self, roots: set[str]) -> set[str]:
        """Every digest reached from `roots` through content labels."""
        reached: set[str] = set()
        pending = list(roots)
        while pending:
            digest = pending.pop()
            if digest in reached:
                continue
            reached.add(digest)
            labels = self._records.get(digest)
            if labels:
                pending.extend(content_references(labels))
        return reached


def _referenced(tx: MetadataTransaction) -> set[str]:
    """Every digest a namespace records, or an ingest starts from, as the sweep left them."""
    referenced = {ingest.base for ingest in tx.all_ingests() if ingest.base is not None}
    after = ""
    while True:
        page = tx.recorded_blobs(after, _PAGE)
        referenced.update(digest for digest, _ in page)
        if len(page) < _PAGE:
            return referenced
        after = page[-1][0]


def _orphan_candidates(backends: Backends) -> set[str]:
    """Blobs no record referenced a moment ago: orphans, and maybe blobs committed since.

    Listed outside any write transaction (it reads the whole store): the
    caller checks each again inside its own.
    """
    with backends.metadata.read("looking for orphaned blobs") as tx:
        referenced = _referenced(tx)
    return set(backends.blobs.digests()) - referenced


def _free_bytes(
    backends: Backends, tx: MetadataTransaction, candidates: set[str], sweep: _Sweep, dry_run: bool
) -> None:
    """Set aside the bytes of the candidates that nothing references, as of `tx`."""
    for digest in sorted(candidates):
        if tx.blob_referenced(digest):
            continue
        size = backends.blobs.stat(digest)
        if size is None:
            continue
        sweep.blobs += 1
        sweep.bytes += size
        if not dry_run:
            token = backends.blobs.set_aside(digest)
            if token is not None:
                sweep.set_aside.append((token, digest))


class _DryRun(Exception):
    """Undoes a dry run's transaction once it has counted what it would remove."""


def collect(backends: Backends, *, dry_run: bool = False) -> CollectionReport:
    """Collect every namespace's garbage now (see the module); what it removed.

    With `dry_run`, nothing is removed: the collection runs as it would, in a
    transaction that is then rolled back, and its bytes are counted, not
    freed. The report says what a collection now would remove.
    """
    started = time.monotonic()
    now = datetime.now(UTC)
    sweep = _Sweep()
    search = dry_run or backends.orphans.due()
    candidates = _orphan_candidates(backends) if search else set()
    try:
        with backends.metadata.write("collecting garbage") as tx:
            for namespace, _ in tx.namespaces():
                candidates |= _Namespace(backends, tx, namespace).collect(now, sweep, dry_run)
            _free_bytes(backends, tx, candidates, sweep, dry_run)
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    except BaseException:
        # Not committed: the records stand, and so must their bytes and ingests.
        for token, digest in sweep.set_aside:
            with contextlib.suppress(OSError, ContentdError):
                backends.blobs.restore(token, digest)
        for _, lock in sweep.claimed:
            lock.release()
        raise
    if not dry_run:
        if search:
            backends.orphans.searched(started)
        for token, _ in sweep.set_aside:
            backends.blobs.drop(token)
        for key, lock in sweep.claimed:
            end_ingest(backends, key, lock)
    return CollectionReport(
        content=sweep.content,
        leases=sweep.leases,
        ingests=sweep.ingests,
        blobs=sweep.blobs,
        bytes=sweep.bytes,
        seconds=time.monotonic() - started,
        dry_run=dry_run,
    )

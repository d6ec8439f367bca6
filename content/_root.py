"""A store root on disk: its layout, and the repair of whatever a crash left behind.

Layout::

    <root>/metadata.db                 SQLite (WAL): namespaces, content and ingest records
    <root>/blobs/<algorithm>/<hex>     committed blobs, read-only, shared by namespaces
    <root>/ingest/<key>/data           bytes of an ingest in progress
    <root>/ingest/<key>/lock           its writer's lock (see IngestLock)
    <root>/trash/                      blobs being deleted, gone once the delete commits

An ingest's key hashes its namespace and ref, so refs never become paths.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from contentd.errdefs import InvalidArgument

from ._fs import fsync_directory, remove_quietly, rmdir_quietly, translate_os_errors
from ._locks import IngestLock
from ._metadata import ContentRecord, IngestRecord, Metadata
from ._validate import ALGORITHMS, split_digest

_log = logging.getLogger("contentd.store")


def ingest_key(namespace: str, ref: str) -> str:
    """The directory name of an ingest: a hash, so any ref is safe on disk."""
    return hashlib.sha256(f"{namespace}\0{ref}".encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class StoreRoot:
    """One store directory, shared by the namespace views of a LocalStore."""

    path: Path
    metadata: Metadata

    @classmethod
    def open(cls, path: Path) -> StoreRoot:
        """Open (creating if needed) the store at `path` and repair what a crash left."""
        with translate_os_errors("creating the store"):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            for algorithm in ALGORITHMS:
                (path / "blobs" / algorithm).mkdir(parents=True, exist_ok=True)
            (path / "ingest").mkdir(exist_ok=True)
            (path / "trash").mkdir(exist_ok=True)
        root = cls(path, Metadata(path / "metadata.db"))
        root.repair()
        return root

    def blob_path(self, digest: str) -> Path:
        algorithm, encoded = split_digest(digest)
        return self.path / "blobs" / algorithm / encoded

    def ingest_dir(self, key: str) -> Path:
        return self.path / "ingest" / key

    def trash_path(self, digest: str) -> Path:
        algorithm, encoded = split_digest(digest)
        return self.path / "trash" / f"{algorithm}.{encoded}.{secrets.token_hex(4)}"

    def remove_ingest_files(self, key: str, lock: IngestLock) -> None:
        """Delete an ingest's files and release its lock; the lock file goes last, while held."""
        directory = self.ingest_dir(key)
        remove_quietly(directory / "data")
        lock.release(remove=True)
        rmdir_quietly(directory)

    def close(self) -> None:
        self.metadata.close()

    # Repair

    def repair(self) -> None:
        """Finish or undo what a crashed process left half done.

        Safe while other processes use the store: it touches only ingests
        whose lock is free (their writer is gone) and works on the trash
        inside a write transaction, which excludes a delete in progress.
        """
        self._repair_trash()
        self._repair_ingests()

    def _repair_trash(self) -> None:
        trash = self.path / "trash"
        entries = sorted(trash.iterdir())
        if not entries:
            return
        with self.metadata.write("repairing deleted blobs") as tx:
            for entry in entries:
                algorithm, _, rest = entry.name.partition(".")
                digest = f"{algorithm}:{rest.partition('.')[0]}"
                try:
                    target = self.blob_path(digest)
                except InvalidArgument:  # not a name this store writes; leave it alone
                    continue
                if tx.blob_referenced(digest) and not target.exists():
                    # The delete that moved it here never committed.
                    os.rename(entry, target)
                    _log.warning("restored blob %s whose delete was interrupted", digest)
                else:
                    remove_quietly(entry)

    def _repair_ingests(self) -> None:
        with self.metadata.read("listing ingests for repair") as tx:
            records = {record.key: record for record in tx.all_ingests()}
        for entry in (self.path / "ingest").iterdir():
            record = records.pop(entry.name, None)
            if record is None:
                self._remove_orphan_ingest(entry.name)
            elif record.committing is not None:
                self._finish_commit_unlocked(record)
        for record in records.values():
            if record.committing is not None:
                self._finish_commit_unlocked(record)

    def _remove_orphan_ingest(self, key: str) -> None:
        lock = IngestLock(self.ingest_dir(key))
        if not lock.try_acquire():
            return  # a live writer is creating it
        with self.metadata.read("checking an ingest for repair") as tx:
            known = any(record.key == key for record in tx.all_ingests())
        if known:
            lock.release()
            return
        self.remove_ingest_files(key, lock)
        _log.info("removed ingest files with no ingest record (%s)", key)

    def _finish_commit_unlocked(self, record: IngestRecord) -> None:
        lock = IngestLock(self.ingest_dir(record.key))
        if not lock.try_acquire():
            return  # its writer is still committing
        if self.finish_commit(record):
            self.remove_ingest_files(record.key, lock)
        else:
            lock.release()

    def finish_commit(self, record: IngestRecord) -> bool:
        """Finish or undo a commit its writer did not live to finish; the ingest lock is held.

        If the verified bytes reached blobs/, the blob is recorded in the
        namespace with the labels the commit carried and the ingest is
        dropped (returns True). Otherwise the mark is cleared and the ingest
        stays, resumable (returns False).
        """
        digest = record.committing
        assert digest is not None
        target = self.blob_path(digest)
        if not target.exists():
            with self.metadata.write("repairing an interrupted commit") as tx:
                tx.update_ingest(
                    record.namespace,
                    record.ref,
                    total=record.total,
                    expected=record.expected,
                    updated_at=record.updated_at,
                    base=record.base,
                )
            return False
        size = target.stat().st_size
        fsync_directory(target.parent)
        with self.metadata.write("finishing an interrupted commit") as tx:
            if tx.content(record.namespace, digest) is None:
                now = time.time_ns()
                tx.insert_content(
                    record.namespace,
                    ContentRecord(digest, size, now, now, dict(record.commit_labels or {})),
                )
            tx.delete_ingest(record.namespace, record.ref)
        remove_quietly(self.ingest_dir(record.key) / "data")
        _log.warning("finished the interrupted commit of %s in %s", digest, record.namespace)
        return True

"""A store root on disk: its layout, and the repair of whatever a crash left behind.

Layout::

    <root>/metadata.db                 SQLite (WAL): namespaces, content and ingest records
    <root>/blobs/<algorithm>/<hex>     committed blobs, read-only, shared by namespaces
    <root>/ingest/<key>                bytes of an ingest in progress
    <root>/ingest/<key>.lock           its writer's lock (see IngestLock); while it
                                       commits, also what it stores (for crash repair)
    <root>/trash/                      blobs being deleted, gone once the delete commits
    <root>/quarantine/                 blobs `contentd verify` found bad (see _verify)

An ingest's key hashes its namespace and ref, so refs never become paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contentd.errdefs import Aborted, InvalidArgument

from ._fs import remove_quietly, translate_os_errors
from ._locks import IngestLock
from ._metadata import BUSY_TIMEOUT, ContentRecord, Metadata, Transaction
from ._validate import ALGORITHMS, split_digest
from ._verify import repair_quarantine

_log = logging.getLogger("contentd.store")

#: Mode of an ingest's bytes: its writer's alone until a commit makes them read-only.
INGEST_MODE = 0o600


def ingest_key(namespace: str, ref: str) -> str:
    """The directory name of an ingest: a hash, so any ref is safe on disk."""
    return hashlib.sha256(f"{namespace}\0{ref}".encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class Recording:
    """How recording a blob went, filled in as it happens (the caller reads it even on error)."""

    existed: bool = False
    moved: bool = False


@dataclass
class StoreRoot:
    """One store directory, shared by the namespace views of a LocalStore."""

    path: Path
    metadata: Metadata

    @classmethod
    def open(cls, path: Path, *, busy_timeout: float = BUSY_TIMEOUT) -> StoreRoot:
        """Open (creating if needed) the store at `path` and repair what a crash left.

        `busy_timeout` bounds each wait for the metadata database's write lock.
        """
        with translate_os_errors("creating the store"):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Modes are explicit: what others may do must not depend on the umask.
            for directory in ("blobs", *(f"blobs/{a}" for a in ALGORITHMS), "ingest", "trash"):
                (path / directory).mkdir(mode=0o755, exist_ok=True)
            # SQLite would create it world-readable; its journals copy the database's mode.
            os.close(os.open(path / "metadata.db", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        root = cls(path, Metadata(path / "metadata.db", busy_timeout=busy_timeout))
        root.repair()
        return root

    def blob_path(self, digest: str) -> Path:
        algorithm, encoded = split_digest(digest)
        return self.path / "blobs" / algorithm / encoded

    def ingest_data(self, key: str) -> Path:
        """Where an ingest's bytes are written."""
        return self.path / "ingest" / key

    def ingest_lock(self, key: str) -> IngestLock:
        """The lock a writer of this ingest holds."""
        return IngestLock(self.path / "ingest" / f"{key}.lock")

    def trash_path(self, digest: str) -> Path:
        algorithm, encoded = split_digest(digest)
        return self.path / "trash" / f"{algorithm}.{encoded}.{secrets.token_hex(4)}"

    def record_blob(
        self,
        namespace: str,
        ref: str,
        digest: str,
        size: int,
        labels: dict[str, str],
        *,
        source: Path | None,
        outcome: Recording,
    ) -> None:
        """Make `digest` visible in `namespace` and drop the ingest `ref`, durably.

        It runs in a group commit (see Metadata.commit). With `source` (an
        ingest's verified bytes), the bytes are renamed into blobs/ inside the
        transaction, under the write lock a delete also takes, so no delete
        can move a blob aside between this look at blobs/ and this record; if
        another namespace stored them already, those verified bytes stay and
        `source` is left for the caller to drop. `outcome` says whether the
        namespace had the blob already and whether `source` moved.
        """

        def record(tx: Transaction) -> None:
            tx.delete_ingest(namespace, ref)
            if tx.content(namespace, digest) is not None:
                outcome.existed = True
                return
            now = time.time_ns()
            tx.ensure_namespace(namespace, now)
            tx.insert_content(namespace, ContentRecord(digest, size, now, now, labels))
            target = self.blob_path(digest)
            if source is None and not target.exists():
                # The stored bytes this ingest started from were quarantined
                # or lost since: recording them would list a blob with no bytes.
                raise Aborted(f"committing {digest}: its stored bytes were removed meanwhile")
            if source is not None and not target.exists():
                with translate_os_errors(f"committing {digest}"):
                    os.rename(source, target)
                outcome.moved = True
                tx.sync_before_commit(target.parent)

        self.metadata.commit(f"committing {digest}", record)

    def remove_ingest_files(self, key: str, lock: IngestLock) -> None:
        """Delete an ingest's files and release its lock; the lock file goes last, while held."""
        remove_quietly(self.ingest_data(key))
        lock.release(remove=True)

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
        repair_quarantine(self)

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
                    try:
                        os.rename(entry, target)
                    except FileNotFoundError:
                        continue  # another repair put it back first
                    _log.warning("restored blob %s whose delete was interrupted", digest)
                else:
                    remove_quietly(entry)

    def settle_delete(self, digest: str) -> bool:
        """Whether the bytes of `digest`, found missing, are back in blobs/ now.

        A delete moves the bytes aside inside its transaction, so a reader
        can find them gone while the record it read still stands. This waits
        for a delete in progress to commit and puts back the bytes of one
        that died.
        """
        self._repair_trash()
        return self.blob_path(digest).exists()

    def _repair_ingests(self) -> None:
        with self.metadata.read("listing ingests for repair") as tx:
            known = {record.key for record in tx.all_ingests()}
        entries = list((self.path / "ingest").iterdir())
        keys = {entry.name.removesuffix(".lock") for entry in entries}
        # A lock file with content carries a commit intent (see write_commit_intent).
        noted = set()
        for entry in entries:
            if entry.name.endswith(".lock"):
                try:
                    noted_size = entry.stat().st_size
                except FileNotFoundError:
                    continue  # its ingest ended while this listed them
                if noted_size:
                    noted.add(entry.name.removesuffix(".lock"))
        for key in sorted(keys):
            if key in noted or key not in known:
                self.repair_ingest(key)

    def repair_ingest(self, key: str) -> bool:
        """Finish or remove what a dead writer left of an ingest; whether the ingest is gone.

        An interrupted commit whose bytes reached blobs/ is finished, and files
        with no ingest record are removed; a live writer's ingest is left
        alone, and so is one that a writer can resume.
        """
        lock = self.ingest_lock(key)
        # Writers make the lock file first and remove it last, so an ingest
        # without one is gone, or bytes some crash left alone: only then may
        # repair create it. Creating it otherwise, just after its writer
        # finished, would refuse the next writer of that ref.
        if not lock.try_acquire(create=False):
            if lock.exists() or not self.ingest_data(key).exists():
                return False  # a live writer holds it, or nothing is left to repair
            if not lock.try_acquire():
                return False
        if self.finish_commit(key, lock):
            self.remove_ingest_files(key, lock)
            return True
        with self.metadata.read("checking an ingest for repair") as tx:
            known = any(record.key == key for record in tx.all_ingests())
        if known:
            lock.release()
            return False
        self.remove_ingest_files(key, lock)
        _log.info("removed ingest files with no ingest record (%s)", key)
        return True

    # Commit intents

    @staticmethod
    def write_commit_intent(
        lock: IngestLock, namespace: str, ref: str, digest: str, labels: dict[str, str]
    ) -> None:
        """Note, before the bytes move, what a commit stores: a crash then leaves enough to finish.

        The note goes in the ingest's lock file, which its holder owns, so a
        commit creates no file of its own (file churn is what costs most on
        ext4). It is not fsynced: it guards against the process dying, and a
        power cut before the commit completes only loses a commit that was
        never acknowledged.
        """
        intent = {"namespace": namespace, "ref": ref, "digest": digest, "labels": labels}
        lock.write_note(json.dumps(intent, ensure_ascii=False))

    @staticmethod
    def commit_intent(lock: IngestLock) -> dict[str, Any] | None:
        note = lock.read_note()
        if not note:
            return None
        try:
            intent: dict[str, Any] = json.loads(note)
        except ValueError:
            return {}  # torn by a crash while being written: the bytes never moved
        return intent

    def finish_commit(self, key: str, lock: IngestLock) -> bool:
        """Finish or undo a commit its writer did not live to finish; `lock` is held.

        If the verified bytes reached blobs/, the blob is recorded in the
        namespace with the labels the commit carried and the ingest is dropped
        (returns True). Otherwise the intent goes and the ingest stays,
        resumable (returns False).
        """
        intent = self.commit_intent(lock)
        if intent is None:
            return False
        try:
            namespace, ref = str(intent["namespace"]), str(intent["ref"])
            digest, labels = str(intent["digest"]), dict(intent["labels"])
            target = self.blob_path(digest)
        except (KeyError, TypeError, ValueError, InvalidArgument):
            target = None
        if target is None or not target.exists():
            lock.clear_note()
            # The commit made the bytes read-only for the move it never made;
            # resuming appends to them, which only their owner may undo.
            with contextlib.suppress(FileNotFoundError):
                os.chmod(self.ingest_data(key), INGEST_MODE)
            return False
        size = target.stat().st_size
        with self.metadata.write("finishing an interrupted commit") as tx:
            if tx.content(namespace, digest) is None:
                now = time.time_ns()
                tx.insert_content(namespace, ContentRecord(digest, size, now, now, labels))
            tx.delete_ingest(namespace, ref)
            tx.sync_before_commit(target.parent)
        remove_quietly(self.ingest_data(key))
        _log.warning("finished the interrupted commit of %s in %s", digest, namespace)
        return True

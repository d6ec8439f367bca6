"""The metadata backend of a local store: its records in one SQLite database (WAL).

Namespaces, content records, ingest records and the registry's repositories,
manifests and tags live in ``ROOT/metadata.db``, so one transaction sees all
of them. A ``registry.db`` left by an earlier version (where the registry kept
its own database) is taken in on open.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from contentd.errdefs import DataLoss, InvalidArgument, ResourceExhausted, Unavailable

from ._fs import STORE_IO_ERROR, translate_os_errors
from ._group import GroupCommit, Pending, WriteTurn
from ._leases import INGEST_EXPIRY_NS
from ._meter import USAGE_QUERY, NamespaceUsage, StoreMeter
from ._records import (
    ContentRecord,
    Descriptor,
    ImageRecord,
    IngestRecord,
    LeaseRecord,
    Referrer,
)

_T = TypeVar("_T")

#: Reason of the Unavailable error raised when the database stays locked too long.
STORE_BUSY: Final = "STORE_BUSY"
#: How long an operation waits for another process's transaction, in seconds.
BUSY_TIMEOUT: Final = 10.0

#: 1: namespaces, content and ingests; 2: the registry's tables, and its
#: registry.db (if any) taken in; 3: leases, images, namespace labels and
#: ingest expiry (garbage collection).
_SCHEMA_VERSION: Final = 3
#: The lease an upgrade to version 3 makes in each namespace, holding every blob
#: stored before there was a collector: nothing an earlier version kept is
#: collected until this lease is deleted.
STORED_BEFORE_GC_LEASE: Final = "contentd.stored-before-gc"
_log = logging.getLogger("contentd.store")
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS namespaces (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
-- A committed blob as one namespace sees it. The bytes are shared on disk
-- under blobs/<algorithm>/<hex>; these rows decide visibility.
CREATE TABLE IF NOT EXISTS content (
    namespace TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    labels TEXT NOT NULL,
    PRIMARY KEY (namespace, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS content_by_digest ON content (digest);
-- An ingest in progress. Its bytes are in ingest/<key>, unless `base` names a
-- stored blob it starts from (containerd's shared policy) and nothing has been
-- appended yet.
CREATE TABLE IF NOT EXISTS ingests (
    namespace TEXT NOT NULL,
    ref TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    total INTEGER NOT NULL,
    expected TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    base TEXT,
    PRIMARY KEY (namespace, ref)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ingests_by_base ON ingests (base) WHERE base IS NOT NULL;
-- The registry face: which repository of a namespace holds which blob, its
-- manifests (with the media type each was pushed with), their referrers and
-- tags. Rows only point at digests: a blob deleted behind the registry's back
-- leaves them dangling, never wrong, and reads check the content first.
CREATE TABLE IF NOT EXISTS repository_blobs (
    namespace TEXT NOT NULL,
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (namespace, repository, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifests (
    namespace TEXT NOT NULL,
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    PRIMARY KEY (namespace, repository, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS referrers (
    namespace TEXT NOT NULL,
    repository TEXT NOT NULL,
    subject TEXT NOT NULL,
    digest TEXT NOT NULL,
    descriptor TEXT NOT NULL,
    artifact_type TEXT NOT NULL,
    PRIMARY KEY (namespace, repository, subject, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tags (
    namespace TEXT NOT NULL,
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (namespace, repository, tag)
) WITHOUT ROWID;
-- Tags list in lexical order, case-insensitive (as the distribution spec asks);
-- tags are ASCII, so lower() is that order, the tag itself breaking ties.
CREATE INDEX IF NOT EXISTS tags_lexical ON tags (namespace, repository, lower(tag), tag);
-- Leases (containerd's): what each holds is listed in lease_resources, by type
-- ("content", "ingests", "snapshots/<snapshotter>") and id.
CREATE TABLE IF NOT EXISTS leases (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    labels TEXT NOT NULL,
    PRIMARY KEY (namespace, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lease_resources (
    namespace TEXT NOT NULL,
    lease TEXT NOT NULL,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (namespace, lease, type, id)
) WITHOUT ROWID;
-- Images (containerd's): a name for a target descriptor.
CREATE TABLE IF NOT EXISTS images (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    media_type TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    annotations TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
) WITHOUT ROWID;
"""
#: What version 3 adds to tables an earlier version made.
_VERSION_3_COLUMNS: Final = (
    "ALTER TABLE ingests ADD COLUMN expires_at INTEGER",
    "ALTER TABLE namespaces ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'",
)
#: The registry's tables and their columns, as an earlier version kept them in
#: ROOT/registry.db.
_REGISTRY_TABLES: Final = {
    "repository_blobs": "namespace, repository, digest",
    "manifests": "namespace, repository, digest, media_type",
    "referrers": "namespace, repository, subject, digest, descriptor, artifact_type",
    "tags": "namespace, repository, tag, digest",
}


_CONTENT_COLUMNS: Final = "digest, size, created_at, updated_at, labels"
_INGEST_COLUMNS: Final = (
    "namespace, ref, key, total, expected, started_at, updated_at, base, expires_at"
)
_IMAGE_COLUMNS: Final = (
    "name, labels, media_type, digest, size, annotations, created_at, updated_at"
)


# Labels are stored as json.dumps wrote them: one object, no surrounding
# whitespace. raw_decode reads that without json.loads's checks around it, in
# half the time, which List pays once per blob.
_decode_labels: Final = json.JSONDecoder().raw_decode


def _content(row: tuple[str, int, int, int, str]) -> ContentRecord:
    return ContentRecord(row[0], row[1], row[2], row[3], _decode_labels(row[4])[0])


_MAX_NARROWING_LABELS: Final = 64
_JSON_ESCAPED: Final = re.compile(r'["\\\x00-\x1f\x7f]')


def _labels_condition(alternatives: Sequence[Mapping[str, str]]) -> tuple[str, list[str]]:
    """The SQL (with its arguments) keeping rows that hold one of `alternatives`' labels."""
    pairs = [key for labels in alternatives for key in labels]
    if (
        not alternatives
        or not all(alternatives)
        # SQLite bounds an expression's depth (1000): a long filter is matched in Python.
        or len(pairs) > _MAX_NARROWING_LABELS
        # SQLite compares a JSON path's key with the key as stored, escapes
        # and all, and a path cannot hold a double quote: such keys are
        # matched in Python.
        or any(_JSON_ESCAPED.search(key) for key in pairs)
    ):
        return "", []
    clauses = []
    arguments = []
    for labels in alternatives:
        clauses.append(" AND ".join(["json_extract(labels, ?) = ?"] * len(labels)))
        for key, value in labels.items():
            arguments += [f'$."{key}"', value]
    return " AND ((" + ") OR (".join(clauses) + "))", arguments


def _ingest(row: tuple[str, str, str, int, str, int, int, str | None, int | None]) -> IngestRecord:
    return IngestRecord(*row)


def _image(row: tuple[str, str, str, str, int, str, int, int]) -> ImageRecord:
    name, labels, media_type, digest, size, annotations, created_at, updated_at = row
    target = Descriptor(media_type, digest, size, _decode_labels(annotations)[0])
    return ImageRecord(name, _decode_labels(labels)[0], target, created_at, updated_at)


# json.dumps with any option makes a new encoder per call; labels are encoded per commit.
_encode: Final = json.JSONEncoder(ensure_ascii=False).encode


def _json(labels: Mapping[str, str]) -> str:
    return _encode(dict(labels))


# ListResources answers content first, then ingests, then snapshots by snapshotter.
_RESOURCE_ORDER: Final = (
    "CASE type WHEN 'content' THEN 0 WHEN 'ingests' THEN 1 ELSE 2 END, type, id"
)


def validate_busy_timeout(seconds: float) -> float:
    """A bound on waiting for the database's write lock: finite and not negative."""
    if not 0 <= seconds < float("inf"):
        raise InvalidArgument(f"busy timeout {seconds}: must be 0 or more seconds")
    return float(seconds)


def busy(doing: str, busy_timeout: float) -> Unavailable:
    """The error of an operation that waited `busy_timeout` seconds for the write lock."""
    return Unavailable(f"{doing}: metadata database busy for {busy_timeout:g}s", reason=STORE_BUSY)


@contextlib.contextmanager
def translate_errors(doing: str, busy_timeout: float = BUSY_TIMEOUT) -> Iterator[None]:
    """Turn SQLite's busy, full, failing and damaged conditions into error classes.

    Busy is Unavailable (STORE_BUSY), full is ResourceExhausted, an I/O error
    is Unavailable (STORE_IO_ERROR) as it is for blobs, and a damaged
    database is DataLoss. Anything else (a constraint, a bad statement) is a
    bug and stays unclassified.
    """
    try:
        with translate_os_errors(doing):
            yield
    except sqlite3.DatabaseError as exc:
        # sqlite_errorcode is the extended code; its low byte is the primary one.
        code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise busy(doing, busy_timeout) from exc
        if code == sqlite3.SQLITE_FULL:
            raise ResourceExhausted(f"{doing}: no space left for metadata") from exc
        if code == sqlite3.SQLITE_IOERR:
            raise Unavailable(
                f"{doing}: I/O error on the metadata database", reason=STORE_IO_ERROR
            ) from exc
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            raise DataLoss(f"{doing}: the metadata database is damaged") from exc
        raise


class Transaction:
    """The statements of one transaction; every method runs inside it."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self.before_commit_actions: dict[Hashable, Callable[[], None]] = {}

    @property
    def connection(self) -> sqlite3.Connection:
        return self._db

    def before_commit(self, key: Hashable, action: Callable[[], None]) -> None:
        """Run `action` once (per `key`) just before this transaction commits.

        A blob renamed into a directory is recorded durably only once the
        directory is: several commits in one group fsync it once.
        """
        self.before_commit_actions.setdefault(key, action)

    # Namespaces

    def ensure_namespace(self, namespace: str, now: int) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO namespaces (name, created_at) VALUES (?, ?)", (namespace, now)
        )

    # Content

    def content(self, namespace: str, digest: str) -> ContentRecord | None:
        row = self._db.execute(
            f"SELECT {_CONTENT_COLUMNS} FROM content WHERE namespace = ? AND digest = ?",
            (namespace, digest),
        ).fetchone()
        return None if row is None else _content(row)

    def content_page(
        self,
        namespace: str,
        after: str,
        limit: int,
        labels: Sequence[Mapping[str, str]] = (),
    ) -> list[ContentRecord]:
        """Up to `limit` records after digest `after`, in digest order.

        With `labels`, only records whose labels hold every key and value of
        at least one of the mappings: the database looks inside the stored
        JSON, so records that cannot match are never decoded.
        """
        narrowing, arguments = _labels_condition(labels)
        rows = self._db.execute(
            f"SELECT {_CONTENT_COLUMNS} FROM content WHERE namespace = ? AND digest > ?"
            f"{narrowing} ORDER BY digest LIMIT ?",
            (namespace, after, *arguments, limit),
        ).fetchall()
        return [_content(row) for row in rows]

    def insert_content(self, namespace: str, record: ContentRecord) -> None:
        self._db.execute(
            f"INSERT INTO content (namespace, {_CONTENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (
                namespace,
                record.digest,
                record.size,
                record.created_at,
                record.updated_at,
                json.dumps(record.labels, ensure_ascii=False),
            ),
        )

    def set_labels(
        self, namespace: str, digest: str, labels: Mapping[str, str], updated_at: int
    ) -> None:
        self._db.execute(
            "UPDATE content SET labels = ?, updated_at = ? WHERE namespace = ? AND digest = ?",
            (json.dumps(dict(labels), ensure_ascii=False), updated_at, namespace, digest),
        )

    def delete_content(self, namespace: str, digest: str) -> bool:
        cursor = self._db.execute(
            "DELETE FROM content WHERE namespace = ? AND digest = ?", (namespace, digest)
        )
        return cursor.rowcount > 0

    def committed_anywhere(self, digest: str) -> ContentRecord | None:
        """A content row for `digest` in any namespace."""
        row = self._db.execute(
            f"SELECT {_CONTENT_COLUMNS} FROM content WHERE digest = ? LIMIT 1", (digest,)
        ).fetchone()
        return None if row is None else _content(row)

    def blob_referenced(self, digest: str) -> bool:
        """Whether any namespace or ingest still needs the bytes of `digest`."""
        row = self._db.execute(
            "SELECT EXISTS (SELECT 1 FROM content WHERE digest = ?)"
            " OR EXISTS (SELECT 1 FROM ingests WHERE base = ?)",
            (digest, digest),
        ).fetchone()
        return bool(row[0])

    def recorded_blobs(self, after: str, limit: int) -> list[tuple[str, int]]:
        """Up to `limit` (digest, size) pairs any namespace records, after digest `after`."""
        rows = self._db.execute(
            "SELECT digest, MAX(size) FROM content WHERE digest > ?"
            " GROUP BY digest ORDER BY digest LIMIT ?",
            (after, limit),
        ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def records_everywhere(self, digest: str) -> list[tuple[str, ContentRecord]]:
        """Every namespace's record of `digest`, as (namespace, record) pairs."""
        rows = self._db.execute(
            f"SELECT namespace, {_CONTENT_COLUMNS} FROM content WHERE digest = ?"
            " ORDER BY namespace",
            (digest,),
        ).fetchall()
        return [(row[0], _content(row[1:])) for row in rows]

    def forget_blob(self, digest: str) -> None:
        """Drop `digest` from every namespace; ingests that started from it start over."""
        self._db.execute("DELETE FROM content WHERE digest = ?", (digest,))
        self._db.execute("UPDATE ingests SET base = NULL WHERE base = ?", (digest,))

    # Ingests

    def ingest(self, namespace: str, ref: str) -> IngestRecord | None:
        row = self._db.execute(
            f"SELECT {_INGEST_COLUMNS} FROM ingests WHERE namespace = ? AND ref = ?",
            (namespace, ref),
        ).fetchone()
        return None if row is None else _ingest(row)

    def ingests(self, namespace: str) -> list[IngestRecord]:
        rows = self._db.execute(
            f"SELECT {_INGEST_COLUMNS} FROM ingests WHERE namespace = ? ORDER BY ref",
            (namespace,),
        ).fetchall()
        return [_ingest(row) for row in rows]

    def all_ingests(self) -> list[IngestRecord]:
        rows = self._db.execute(f"SELECT {_INGEST_COLUMNS} FROM ingests").fetchall()
        return [_ingest(row) for row in rows]

    def insert_ingest(self, record: IngestRecord) -> None:
        self._db.execute(
            f"INSERT INTO ingests ({_INGEST_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.namespace,
                record.ref,
                record.key,
                record.total,
                record.expected,
                record.started_at,
                record.updated_at,
                record.base,
                record.expires_at,
            ),
        )

    def update_ingest(
        self,
        namespace: str,
        ref: str,
        *,
        total: int,
        expected: str,
        updated_at: int,
        base: str | None,
    ) -> None:
        """Record an ingest's progress."""
        self._db.execute(
            "UPDATE ingests SET total = ?, expected = ?, updated_at = ?, base = ?"
            " WHERE namespace = ? AND ref = ?",
            (total, expected, updated_at, base, namespace, ref),
        )

    def delete_ingest(self, namespace: str, ref: str) -> None:
        self._db.execute("DELETE FROM ingests WHERE namespace = ? AND ref = ?", (namespace, ref))

    def set_ingest_expiry(self, namespace: str, ref: str, expires_at: int | None) -> None:
        self._db.execute(
            "UPDATE ingests SET expires_at = ? WHERE namespace = ? AND ref = ?",
            (expires_at, namespace, ref),
        )

    # Namespaces and their labels

    def namespaces(self) -> list[tuple[str, dict[str, str]]]:
        rows = self._db.execute("SELECT name, labels FROM namespaces ORDER BY name").fetchall()
        return [(row[0], _decode_labels(row[1])[0]) for row in rows]

    def usage(self) -> list[NamespaceUsage]:
        rows = self._db.execute(USAGE_QUERY).fetchall()
        return [NamespaceUsage(*row) for row in rows]

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        row = self._db.execute(
            "SELECT labels FROM namespaces WHERE name = ?", (namespace,)
        ).fetchone()
        return None if row is None else cast("dict[str, str]", _decode_labels(row[0])[0])

    def set_namespace_labels(self, namespace: str, labels: Mapping[str, str], now: int) -> None:
        self.ensure_namespace(namespace, now)
        self._db.execute(
            "UPDATE namespaces SET labels = ? WHERE name = ?", (_json(labels), namespace)
        )

    def namespace_holds(self, namespace: str) -> list[str]:
        """What keeps `namespace` from being deleted: "images" and "blobs", where it has any."""
        held = []
        for kind, table in (("images", "images"), ("blobs", "content")):
            row = self._db.execute(
                f"SELECT 1 FROM {table} WHERE namespace = ? LIMIT 1", (namespace,)
            ).fetchone()
            if row is not None:
                held.append(kind)
        return held

    def delete_namespace(self, namespace: str) -> bool:
        """Remove `namespace` with its leases, ingests and registry records; whether it existed."""
        for table in ("leases", "lease_resources", "ingests", *_REGISTRY_TABLES):
            self._db.execute(f"DELETE FROM {table} WHERE namespace = ?", (namespace,))
        cursor = self._db.execute("DELETE FROM namespaces WHERE name = ?", (namespace,))
        return cursor.rowcount > 0

    # Leases

    def lease(self, namespace: str, lease: str) -> LeaseRecord | None:
        row = self._db.execute(
            "SELECT id, created_at, labels FROM leases WHERE namespace = ? AND id = ?",
            (namespace, lease),
        ).fetchone()
        return None if row is None else LeaseRecord(row[0], row[1], _decode_labels(row[2])[0])

    def leases(self, namespace: str) -> list[LeaseRecord]:
        rows = self._db.execute(
            "SELECT id, created_at, labels FROM leases WHERE namespace = ? ORDER BY id",
            (namespace,),
        ).fetchall()
        return [LeaseRecord(row[0], row[1], _decode_labels(row[2])[0]) for row in rows]

    def insert_lease(self, namespace: str, record: LeaseRecord) -> None:
        self._db.execute(
            "INSERT INTO leases (namespace, id, created_at, labels) VALUES (?, ?, ?, ?)",
            (namespace, record.id, record.created_at, _json(record.labels)),
        )

    def delete_lease(self, namespace: str, lease: str) -> bool:
        self._db.execute(
            "DELETE FROM lease_resources WHERE namespace = ? AND lease = ?", (namespace, lease)
        )
        cursor = self._db.execute(
            "DELETE FROM leases WHERE namespace = ? AND id = ?", (namespace, lease)
        )
        return cursor.rowcount > 0

    def add_lease_resource(self, namespace: str, lease: str, kind: str, resource: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO lease_resources VALUES (?, ?, ?, ?)",
            (namespace, lease, kind, resource),
        )

    def delete_lease_resource(self, namespace: str, lease: str, kind: str, resource: str) -> bool:
        cursor = self._db.execute(
            "DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? AND id = ?",
            (namespace, lease, kind, resource),
        )
        return cursor.rowcount > 0

    def lease_resources(self, namespace: str, lease: str) -> list[tuple[str, str]]:
        rows = self._db.execute(
            "SELECT type, id FROM lease_resources WHERE namespace = ? AND lease = ?"
            f" ORDER BY {_RESOURCE_ORDER}",
            (namespace, lease),
        ).fetchall()
        return [(row[0], row[1]) for row in rows]

    # Images

    def image(self, namespace: str, name: str) -> ImageRecord | None:
        row = self._db.execute(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE namespace = ? AND name = ?",
            (namespace, name),
        ).fetchone()
        return None if row is None else _image(row)

    def images(self, namespace: str) -> list[ImageRecord]:
        rows = self._db.execute(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE namespace = ? ORDER BY name",
            (namespace,),
        ).fetchall()
        return [_image(row) for row in rows]

    def put_image(self, namespace: str, record: ImageRecord) -> None:
        """Insert or replace the image `record.name`."""
        target = record.target
        self._db.execute(
            f"INSERT OR REPLACE INTO images (namespace, {_IMAGE_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                namespace,
                record.name,
                _json(record.labels),
                target.media_type,
                target.digest,
                target.size,
                _json(target.annotations),
                record.created_at,
                record.updated_at,
            ),
        )

    def delete_image(self, namespace: str, name: str) -> bool:
        cursor = self._db.execute(
            "DELETE FROM images WHERE namespace = ? AND name = ?", (namespace, name)
        )
        return cursor.rowcount > 0

    # Registry repositories, manifests and tags

    def link_blob(self, namespace: str, repository: str, digest: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO repository_blobs VALUES (?, ?, ?)",
            (namespace, repository, digest),
        )

    def unlink_blob(self, namespace: str, repository: str, digest: str) -> bool:
        cursor = self._db.execute(
            "DELETE FROM repository_blobs WHERE namespace = ? AND repository = ? AND digest = ?",
            (namespace, repository, digest),
        )
        return cursor.rowcount > 0

    def repository_has(self, namespace: str, repository: str, digest: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM repository_blobs WHERE namespace = ?1 AND repository = ?2 "
            "AND digest = ?3 UNION ALL SELECT 1 FROM manifests WHERE namespace = ?1 "
            "AND repository = ?2 AND digest = ?3 LIMIT 1",
            (namespace, repository, digest),
        ).fetchone()
        return row is not None

    def put_manifest(
        self,
        namespace: str,
        repository: str,
        digest: str,
        media_type: str,
        tag: str | None,
        referrer: Referrer | None,
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO manifests VALUES (?, ?, ?, ?)",
            (namespace, repository, digest, media_type),
        )
        if referrer is not None:
            self._db.execute(
                "INSERT OR REPLACE INTO referrers VALUES (?, ?, ?, ?, ?, ?)",
                (
                    namespace,
                    repository,
                    referrer.subject,
                    digest,
                    json.dumps(referrer.descriptor, sort_keys=True),
                    referrer.artifact_type,
                ),
            )
        if tag is not None:
            self._db.execute(
                "INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?)",
                (namespace, repository, tag, digest),
            )

    def manifest_media_type(self, namespace: str, repository: str, digest: str) -> str | None:
        row = self._db.execute(
            "SELECT media_type FROM manifests WHERE namespace = ? AND repository = ? "
            "AND digest = ?",
            (namespace, repository, digest),
        ).fetchone()
        return None if row is None else str(row[0])

    def resolve_tag(self, namespace: str, repository: str, tag: str) -> str | None:
        row = self._db.execute(
            "SELECT digest FROM tags WHERE namespace = ? AND repository = ? AND tag = ?",
            (namespace, repository, tag),
        ).fetchone()
        return None if row is None else str(row[0])

    def delete_manifest(self, namespace: str, repository: str, digest: str) -> bool:
        where = (namespace, repository, digest)
        cursor = self._db.execute(
            "DELETE FROM manifests WHERE namespace = ? AND repository = ? AND digest = ?", where
        )
        self._db.execute(
            "DELETE FROM referrers WHERE namespace = ? AND repository = ? AND digest = ?", where
        )
        self._db.execute(
            "DELETE FROM tags WHERE namespace = ? AND repository = ? AND digest = ?", where
        )
        return cursor.rowcount > 0

    def delete_tag(self, namespace: str, repository: str, tag: str) -> bool:
        cursor = self._db.execute(
            "DELETE FROM tags WHERE namespace = ? AND repository = ? AND tag = ?",
            (namespace, repository, tag),
        )
        return cursor.rowcount > 0

    def tags(
        self, namespace: str, repository: str, after: str, limit: int
    ) -> list[tuple[str, str]]:
        rows = self._db.execute(
            "SELECT tag, digest FROM tags WHERE namespace = ?1 AND repository = ?2 "
            # The first condition is the index's range; the second drops ties up to `after`.
            "AND lower(tag) >= lower(?3) AND (lower(tag), tag) > (lower(?3), ?3) "
            "ORDER BY lower(tag), tag LIMIT ?4",
            (namespace, repository, after, limit),
        ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def referrers(
        self, namespace: str, repository: str, subject: str, artifact_type: str | None
    ) -> list[dict[str, Any]]:
        sql = (
            "SELECT descriptor FROM referrers WHERE namespace = ? AND repository = ? "
            "AND subject = ?"
        )
        parameters = [namespace, repository, subject]
        if artifact_type is not None:
            sql += " AND artifact_type = ?"
            parameters.append(artifact_type)
        rows = self._db.execute(sql + " ORDER BY digest", parameters).fetchall()
        return [cast("dict[str, Any]", json.loads(row[0])) for row in rows]

    def repository_exists(self, namespace: str, repository: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM repository_blobs WHERE namespace = ?1 AND repository = ?2 "
            "UNION ALL SELECT 1 FROM manifests WHERE namespace = ?1 AND repository = ?2 "
            "LIMIT 1",
            (namespace, repository),
        ).fetchone()
        return row is not None

    def repository_digests(self, namespace: str) -> set[str]:
        rows = self._db.execute(
            "SELECT digest FROM repository_blobs WHERE namespace = ?1"
            " UNION SELECT digest FROM manifests WHERE namespace = ?1",
            (namespace,),
        ).fetchall()
        return {str(row[0]) for row in rows}

    def repositories(self, namespace: str, after: str, limit: int) -> list[str]:
        rows = self._db.execute(
            "SELECT repository FROM repository_blobs WHERE namespace = ?1 AND repository > ?2 "
            "UNION SELECT repository FROM manifests WHERE namespace = ?1 AND repository > ?2 "
            "ORDER BY 1 LIMIT ?3",
            (namespace, after, limit),
        ).fetchall()
        return [str(row[0]) for row in rows]


class Metadata:
    """The metadata database of one store root, shared by the threads of a process.

    Each thread reads on its own connection (SQLite connections are not safe
    to use from two threads at once); writes, one at a time in a process,
    all go through one writer connection, whose page cache its own commits
    keep valid (another connection's commit empties a connection's whole
    cache, and its next transaction reads its pages again). WAL mode lets
    readers proceed while one writer commits, in this process or any other.
    Write transactions take the write lock up front (BEGIN IMMEDIATE) so two
    processes never deadlock upgrading read locks. A write waits at most
    `busy_timeout` seconds for the lock, whoever holds it, then fails with
    Unavailable (reason STORE_BUSY); reads never wait for writers.
    """

    def __init__(self, path: Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self._path = path
        self._busy_timeout = validate_busy_timeout(busy_timeout)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        #: The connection every write goes through, made on the first write.
        self._writer: sqlite3.Connection | None = None
        self._guard = threading.Lock()
        # Writers in this process queue here rather than in SQLite: SQLite's
        # busy handler sleeps in steps of up to 100 ms while it waits for the
        # write lock, which wrecks throughput when many threads commit. Other
        # processes still meet SQLite's own wait; both share one bound.
        self._write_turn = WriteTurn(self._busy_timeout, busy)
        #: Hooks for whoever counts this store's commits (see `StoreMeter`).
        self.meter = StoreMeter()
        self._group = GroupCommit[Transaction](self._run_batch, self.meter)
        self._closed = False
        with translate_errors("opening the metadata database", self._busy_timeout):
            connection = self._connection()
            with connection:
                connection.executescript(_SCHEMA)
                if connection.execute("SELECT version FROM schema_version").fetchone() is None:
                    connection.execute("INSERT INTO schema_version (version) VALUES (1)")
        self._upgrade()

    def _upgrade(self) -> None:
        """Bring a database an earlier version wrote up to this one's schema, a step at a time.

        Each step runs in one write transaction that checks the version
        first and marks the new one last, so processes opening the store at
        the same time upgrade it once.
        """
        with self.read("reading the metadata schema version") as tx:
            version = self._version(tx)
        if version >= _SCHEMA_VERSION:
            return
        if version < 2:
            self._take_in_registry_db()
        if version < 3:
            self._start_collecting()

    def _version(self, tx: Transaction) -> int:
        return int(tx.connection.execute("SELECT version FROM schema_version").fetchone()[0])

    def _take_in_registry_db(self) -> None:
        """Version 2: the registry's rows, from the ``registry.db`` an earlier version kept.

        The file is removed once its rows are in; in the same transaction as
        the version mark, so no process copies them twice (which would bring
        back rows deleted in between).
        """
        old = self._path.with_name("registry.db")
        with translate_errors("taking in the registry database", self._busy_timeout):
            connection = self._writer_connection()
            attached = old.exists()
            if attached:
                connection.execute("ATTACH DATABASE ? AS earlier", (str(old),))
            try:
                with self.write("taking in the registry database") as tx:
                    if self._version(tx) >= 2:
                        return  # another process upgraded it meanwhile
                    if attached:
                        self._copy_registry(tx.connection)
                    tx.connection.execute("UPDATE schema_version SET version = 2")
            finally:
                if attached:
                    connection.execute("DETACH DATABASE earlier")
        if attached:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{old}{suffix}")
            _log.info("took the registry's records in from registry.db")

    def _start_collecting(self) -> None:
        """Version 3: leases, images, namespace labels and ingest expiry, for garbage collection.

        What was stored before there was a collector was never meant to be
        collected: in each namespace that holds content, a lease
        (`STORED_BEFORE_GC_LEASE`) keeps every blob, until someone deletes it;
        ingests in progress get the day an ingest opened without a lease gets.
        """
        now = time.time_ns()
        with self.write("adding leases and images to the metadata") as tx:
            if self._version(tx) >= 3:
                return
            connection = tx.connection
            for statement in _VERSION_3_COLUMNS:
                connection.execute(statement)
            connection.execute("UPDATE ingests SET expires_at = ?", (now + INGEST_EXPIRY_NS,))
            labels = _json({"contentd.io/kept": "content stored before garbage collection"})
            connection.execute(
                "INSERT INTO leases (namespace, id, created_at, labels)"
                " SELECT DISTINCT namespace, ?, ?, ? FROM content",
                (STORED_BEFORE_GC_LEASE, now, labels),
            )
            connection.execute(
                "INSERT INTO lease_resources (namespace, lease, type, id)"
                " SELECT namespace, ?, 'content', digest FROM content",
                (STORED_BEFORE_GC_LEASE,),
            )
            connection.execute("UPDATE schema_version SET version = 3")
            kept = connection.execute(
                "SELECT COUNT(*) FROM lease_resources WHERE lease = ?", (STORED_BEFORE_GC_LEASE,)
            ).fetchone()[0]
        if kept:
            _log.info(
                "garbage collection: %d blobs stored before it are kept by the lease %s"
                " in their namespaces; delete it to let them be collected",
                kept,
                STORED_BEFORE_GC_LEASE,
            )

    @staticmethod
    def _copy_registry(connection: sqlite3.Connection) -> None:
        tables = connection.execute("SELECT name FROM earlier.sqlite_master WHERE type = 'table'")
        present = {row[0] for row in tables}
        for table, columns in _REGISTRY_TABLES.items():
            if table in present:
                connection.execute(
                    f"INSERT OR IGNORE INTO main.{table} ({columns})"
                    f" SELECT {columns} FROM earlier.{table}"
                )

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection for reading."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None and not self._closed:
            return connection
        connection = self._connect(self._busy_timeout)
        self._local.connection = connection
        return connection

    def _writer_connection(self) -> sqlite3.Connection:
        """The connection writes go through; only the holder of the write turn uses it.

        Its busy timeout is 0: a write asks SQLite to wait for another
        process only when it finds the database busy (see `_begin`), so a
        write that waited for its turn here needs no statement to shorten
        SQLite's wait to what is left of the bound.
        """
        connection = self._writer
        if connection is None or self._closed:
            connection = self._writer = self._connect(0.0)
        return connection

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("the store is closed")
        # isolation_level=None: transactions are opened explicitly below.
        connection = sqlite3.connect(
            self._path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        connection.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk before it is acknowledged.
        connection.execute("PRAGMA synchronous = FULL")
        with self._guard:
            self._connections.append(connection)
        return connection

    @contextlib.contextmanager
    def read(self, doing: str) -> Iterator[Transaction]:
        """A consistent snapshot for several reads."""
        with translate_errors(doing, self._busy_timeout):
            connection = self._connection()
            connection.execute("BEGIN")
            try:
                yield Transaction(connection)
            finally:
                if connection.in_transaction:
                    connection.execute("COMMIT")

    @contextlib.contextmanager
    def write(self, doing: str, *, durable: bool = True) -> Iterator[Transaction]:
        """A write transaction, committed when the block ends and rolled back on error.

        `durable=False` skips the fsync of this commit: it survives the
        process crashing but maybe not the machine losing power. Use it only
        for records whose loss a later open repairs (progress marks).
        """
        with translate_errors(doing, self._busy_timeout), self._write_turn(doing) as left:
            connection = self._writer_connection()
            if not durable:
                connection.execute("PRAGMA synchronous = NORMAL")
            try:
                self._begin(connection, left)
                try:
                    tx = Transaction(connection)
                    yield tx
                    # Renames the transaction records must be durable first.
                    for action in tx.before_commit_actions.values():
                        action()
                    connection.execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
            finally:
                if not durable:
                    connection.execute("PRAGMA synchronous = FULL")

    @staticmethod
    def _begin(connection: sqlite3.Connection, left: float) -> None:
        """Open a write transaction on the writer connection, waiting at most `left` seconds.

        The first try does not wait; only when another process holds the
        write lock (or is recovering the log) does SQLite wait, for what is
        left of the bound (other threads here may have taken part of it).
        """
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
            if code != sqlite3.SQLITE_BUSY or left <= 0:
                raise
            connection.execute(f"PRAGMA busy_timeout = {int(left * 1000)}")
            try:
                connection.execute("BEGIN IMMEDIATE")
            finally:
                connection.execute("PRAGMA busy_timeout = 0")

    def commit(self, doing: str, body: Callable[[Transaction], _T]) -> _T:
        """Run `body` in a durable write transaction, shared with concurrent callers.

        Group commit: callers that arrive while a batch is being made durable
        wait and go together in the next one, each `body` inside a savepoint
        of one transaction, so a batch costs one fsync of the log (and one of
        each directory the bodies renamed blobs into) however many callers it
        carries. A `body` that raises rolls back its own savepoint only and
        its caller gets the exception; the others commit.
        """
        return self._group.commit(doing, body)

    def _run_batch(self, doing: str, batch: list[Pending[Transaction, Any]]) -> None:
        with self.write(doing) as tx:
            connection = tx.connection
            for pending in batch:
                connection.execute("SAVEPOINT caller")
                try:
                    pending.result = pending.body(tx)
                except Exception as exc:
                    connection.execute("ROLLBACK TO caller")
                    pending.error = exc
                connection.execute("RELEASE caller")

    def close(self) -> None:
        """Close every thread's connection, and the writer's."""
        with self._guard:
            self._closed = True
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()


if TYPE_CHECKING:
    from ._backends import MetadataBackend, MetadataTransaction

    # mypy checks here that SQLite's classes keep the metadata backend's contract.
    _backend: type[MetadataBackend] = Metadata
    _transaction: type[MetadataTransaction] = Transaction

"""What the registry face knows beyond blobs: which repository holds what, and its tags.

Blob bytes, labels and times are the store's. A repository is a view onto the
blobs of one namespace, so membership, manifests (with their media types) and
tags live in a small SQLite database beside the store's own, keyed by namespace
and repository. Rows only ever point at digests: a blob deleted from the store
behind the registry's back makes its rows dangling, never wrong, and every
read checks the store before it answers.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contentd.errdefs import ResourceExhausted, Unavailable

#: Answered by an index that another process holds the write lock of.
REGISTRY_BUSY = "REGISTRY_BUSY"

_SCHEMA = """
PRAGMA journal_mode = WAL;
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
"""


@dataclass(frozen=True)
class Referrer:
    """A manifest as a referrer of its subject: the descriptor listed for it."""

    subject: str
    descriptor: dict[str, Any]
    artifact_type: str


class RegistryIndex:
    """Repository membership, manifests and tags, per namespace, in ``registry.db``.

    Safe to share between threads (one connection, one lock: every query is
    a few rows) and between processes (SQLite's own locking). Every change is
    durable when the method returns.
    """

    def __init__(self, path: Path, *, busy_timeout: float = 10.0) -> None:
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        with _translated("opening the registry index", busy_timeout):
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
        path.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock, _translated(doing, self._busy_timeout):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, doing: str, sql: str, *parameters: object) -> list[tuple[str, ...]]:
        with self._lock, _translated(doing, self._busy_timeout):
            return self._db.execute(sql, parameters).fetchall()

    # Blobs

    def link_blob(self, namespace: str, repository: str, digest: str) -> None:
        """Make blob `digest` part of `repository`."""
        with self._transaction(f"linking {digest} into {repository}") as db:
            db.execute(
                "INSERT OR IGNORE INTO repository_blobs VALUES (?, ?, ?)",
                (namespace, repository, digest),
            )

    def unlink_blob(self, namespace: str, repository: str, digest: str) -> bool:
        """Take blob `digest` out of `repository`; whether it was in it."""
        with self._transaction(f"unlinking {digest} from {repository}") as db:
            cursor = db.execute(
                "DELETE FROM repository_blobs "
                "WHERE namespace = ? AND repository = ? AND digest = ?",
                (namespace, repository, digest),
            )
            return cursor.rowcount > 0

    def has_blob(self, namespace: str, repository: str, digest: str) -> bool:
        """Whether `repository` holds `digest`, as a blob or as a manifest."""
        rows = self._query(
            f"looking up {digest} in {repository}",
            "SELECT 1 FROM repository_blobs WHERE namespace = ?1 AND repository = ?2 "
            "AND digest = ?3 UNION ALL SELECT 1 FROM manifests WHERE namespace = ?1 "
            "AND repository = ?2 AND digest = ?3 LIMIT 1",
            namespace,
            repository,
            digest,
        )
        return bool(rows)

    # Manifests and tags

    def put_manifest(
        self,
        namespace: str,
        repository: str,
        digest: str,
        media_type: str,
        tag: str | None,
        referrer: Referrer | None = None,
    ) -> None:
        """Record manifest `digest` in `repository`, and point `tag` at it if given.

        A manifest with a subject is recorded as one of its referrers, by the
        descriptor the referrers API answers with.
        """
        with self._transaction(f"recording manifest {digest} in {repository}") as db:
            db.execute(
                "INSERT OR REPLACE INTO manifests VALUES (?, ?, ?, ?)",
                (namespace, repository, digest, media_type),
            )
            if referrer is not None:
                db.execute(
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
                db.execute(
                    "INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?)",
                    (namespace, repository, tag, digest),
                )

    def manifest_media_type(self, namespace: str, repository: str, digest: str) -> str | None:
        """The media type manifest `digest` was pushed with, or None if not in `repository`."""
        rows = self._query(
            f"looking up manifest {digest} in {repository}",
            "SELECT media_type FROM manifests WHERE namespace = ? AND repository = ? "
            "AND digest = ?",
            namespace,
            repository,
            digest,
        )
        return rows[0][0] if rows else None

    def resolve_tag(self, namespace: str, repository: str, tag: str) -> str | None:
        """The digest `tag` points at in `repository`, or None."""
        rows = self._query(
            f"resolving tag {tag} of {repository}",
            "SELECT digest FROM tags WHERE namespace = ? AND repository = ? AND tag = ?",
            namespace,
            repository,
            tag,
        )
        return rows[0][0] if rows else None

    def delete_manifest(self, namespace: str, repository: str, digest: str) -> bool:
        """Remove manifest `digest` and every tag pointing at it; whether it was there."""
        with self._transaction(f"deleting manifest {digest} from {repository}") as db:
            cursor = db.execute(
                "DELETE FROM manifests WHERE namespace = ? AND repository = ? AND digest = ?",
                (namespace, repository, digest),
            )
            db.execute(
                "DELETE FROM referrers WHERE namespace = ? AND repository = ? AND digest = ?",
                (namespace, repository, digest),
            )
            db.execute(
                "DELETE FROM tags WHERE namespace = ? AND repository = ? AND digest = ?",
                (namespace, repository, digest),
            )
            return cursor.rowcount > 0

    def delete_tag(self, namespace: str, repository: str, tag: str) -> bool:
        """Remove `tag` (not the manifest it points at); whether it was there."""
        with self._transaction(f"deleting tag {tag} of {repository}") as db:
            cursor = db.execute(
                "DELETE FROM tags WHERE namespace = ? AND repository = ? AND tag = ?",
                (namespace, repository, tag),
            )
            return cursor.rowcount > 0

    def tags(
        self, namespace: str, repository: str, *, after: str = "", limit: int
    ) -> list[tuple[str, str]]:
        """Up to `limit` (tag, digest) pairs of `repository` after `after`, in lexical order.

        Lexical is the distribution spec's order: case-insensitive, ties (tags
        that differ in case alone) in byte order. `after` need not be a tag.
        """
        rows = self._query(
            f"listing tags of {repository}",
            "SELECT tag, digest FROM tags WHERE namespace = ?1 AND repository = ?2 "
            # The first condition is the index's range; the second drops ties up to `after`.
            "AND lower(tag) >= lower(?3) AND (lower(tag), tag) > (lower(?3), ?3) "
            "ORDER BY lower(tag), tag LIMIT ?4",
            namespace,
            repository,
            after,
            limit,
        )
        return [(row[0], row[1]) for row in rows]

    def referrers(
        self, namespace: str, repository: str, subject: str, artifact_type: str | None = None
    ) -> list[dict[str, object]]:
        """The descriptors of manifests in `repository` whose subject is `subject`."""
        sql = (
            "SELECT descriptor FROM referrers WHERE namespace = ? AND repository = ? "
            "AND subject = ?"
        )
        parameters: list[str] = [namespace, repository, subject]
        if artifact_type is not None:
            sql += " AND artifact_type = ?"
            parameters.append(artifact_type)
        rows = self._query(f"listing referrers of {subject}", sql + " ORDER BY digest", *parameters)
        return [json.loads(row[0]) for row in rows]

    def repository_exists(self, namespace: str, repository: str) -> bool:
        """Whether anything was ever pushed to `repository` and is still recorded."""
        rows = self._query(
            f"looking up {repository}",
            "SELECT 1 FROM repository_blobs WHERE namespace = ?1 AND repository = ?2 "
            "UNION ALL SELECT 1 FROM manifests WHERE namespace = ?1 AND repository = ?2 "
            "LIMIT 1",
            namespace,
            repository,
        )
        return bool(rows)

    def repositories(self, namespace: str, *, after: str = "", limit: int) -> list[str]:
        """Up to `limit` repository names after `after`, in lexical order."""
        rows = self._query(
            "listing repositories",
            "SELECT repository FROM repository_blobs WHERE namespace = ?1 AND repository > ?2 "
            "UNION SELECT repository FROM manifests WHERE namespace = ?1 AND repository > ?2 "
            "ORDER BY 1 LIMIT ?3",
            namespace,
            after,
            limit,
        )
        return [row[0] for row in rows]


@contextlib.contextmanager
def _translated(doing: str, busy_timeout: float) -> Iterator[None]:
    """SQLite's busy and full conditions as error classes; anything else stays a bug."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise Unavailable(
                f"{doing}: registry index busy for {busy_timeout:g}s", reason=REGISTRY_BUSY
            ) from exc
        if "full" in text:
            raise ResourceExhausted(f"{doing}: no space left on the device") from exc
        raise

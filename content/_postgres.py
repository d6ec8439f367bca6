"""The metadata and lock backends of a distributed store: PostgreSQL, through psycopg 3.

One store is one PostgreSQL schema (``contentd`` unless the URL's ``schema``
says otherwise), so several stores can share a database. `PostgresMetadata`
keeps the records `_sqlite.Metadata` keeps, with the same transactions:
writers exclude each other cluster-wide (a transaction-level advisory lock),
readers see one snapshot and never wait for writers. `PostgresLocks` keeps
writer locks as session-level advisory locks on a connection of its own, so
a daemon that dies (its connection drops) frees them, and keeps their notes
in a table, so whoever takes a lock next reads them.

Neither ever puts a connection string, user or password in an error message
or a log line: psycopg's connection errors and summaries carry host and user,
so the connections here are made through `_Connection`, which drops them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg.adapt
import psycopg.errors
import psycopg_pool
from psycopg.types.string import StrDumperUnknown, TextLoader

from contentd.errdefs import DataLoss, InvalidArgument, ResourceExhausted, Unavailable

from ._fs import STORE_IO_ERROR
from ._group import GroupCommit, Pending, WriteTurn
from ._meter import USAGE_QUERY, NamespaceUsage, StoreMeter
from ._records import (
    ContentRecord,
    Descriptor,
    ImageRecord,
    IngestRecord,
    LeaseRecord,
    Referrer,
)
from ._sqlite import BUSY_TIMEOUT, busy, validate_busy_timeout

_T = TypeVar("_T")
_log = logging.getLogger("contentd.store")

#: The schema a store's tables live in when its URL names none.
DEFAULT_SCHEMA: Final = "contentd"
#: How long an operation waits for a connection to the database, in seconds,
#: before it fails with Unavailable (the database is down or every
#: connection is busy).
CONNECT_TIMEOUT: Final = 5.0
_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# Migrations, applied in order on open; the version table holds how many ran.
# Version 1 is everything `_sqlite`'s version 3 has. Every text column sorts
# in byte order (COLLATE "C"), as SQLite's do: digests, refs and tags page by
# `>` comparisons that must mean the same on every database.
_MIGRATIONS: Final = (
    """
CREATE TABLE namespaces (
    name text COLLATE "C" PRIMARY KEY,
    created_at bigint NOT NULL,
    labels text NOT NULL DEFAULT '{}'
);
-- A committed blob as one namespace sees it; the blob backend keeps its bytes.
-- Labels are jsonb so that List's label filters are containment tests a GIN
-- index answers.
CREATE TABLE content (
    namespace text COLLATE "C" NOT NULL,
    digest text COLLATE "C" NOT NULL,
    size bigint NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    labels jsonb NOT NULL,
    PRIMARY KEY (namespace, digest)
);
CREATE INDEX content_by_digest ON content (digest);
CREATE INDEX content_labels ON content USING gin (labels jsonb_path_ops);
CREATE TABLE ingests (
    namespace text COLLATE "C" NOT NULL,
    ref text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL UNIQUE,
    total bigint NOT NULL,
    expected text COLLATE "C" NOT NULL,
    started_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    base text COLLATE "C",
    expires_at bigint,
    PRIMARY KEY (namespace, ref)
);
CREATE INDEX ingests_by_base ON ingests (base) WHERE base IS NOT NULL;
CREATE TABLE repository_blobs (
    namespace text COLLATE "C" NOT NULL,
    repository text COLLATE "C" NOT NULL,
    digest text COLLATE "C" NOT NULL,
    PRIMARY KEY (namespace, repository, digest)
);
CREATE TABLE manifests (
    namespace text COLLATE "C" NOT NULL,
    repository text COLLATE "C" NOT NULL,
    digest text COLLATE "C" NOT NULL,
    media_type text NOT NULL,
    PRIMARY KEY (namespace, repository, digest)
);
CREATE TABLE referrers (
    namespace text COLLATE "C" NOT NULL,
    repository text COLLATE "C" NOT NULL,
    subject text COLLATE "C" NOT NULL,
    digest text COLLATE "C" NOT NULL,
    descriptor text NOT NULL,
    artifact_type text COLLATE "C" NOT NULL,
    PRIMARY KEY (namespace, repository, subject, digest)
);
CREATE TABLE tags (
    namespace text COLLATE "C" NOT NULL,
    repository text COLLATE "C" NOT NULL,
    tag text COLLATE "C" NOT NULL,
    digest text COLLATE "C" NOT NULL,
    PRIMARY KEY (namespace, repository, tag)
);
-- Tags list in lexical order, case-insensitive; tags are ASCII, and lower()
-- under the C collation folds ASCII only, the tag itself breaking ties.
CREATE INDEX tags_lexical ON tags (namespace, repository, lower(tag), tag);
CREATE TABLE leases (
    namespace text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    created_at bigint NOT NULL,
    labels text NOT NULL,
    PRIMARY KEY (namespace, id)
);
CREATE TABLE lease_resources (
    namespace text COLLATE "C" NOT NULL,
    lease text COLLATE "C" NOT NULL,
    type text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    PRIMARY KEY (namespace, lease, type, id)
);
CREATE TABLE images (
    namespace text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    labels text NOT NULL,
    media_type text NOT NULL,
    digest text COLLATE "C" NOT NULL,
    size bigint NOT NULL,
    annotations text NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (namespace, name)
);
-- Writer locks (`PostgresLocks`): a row exists from a writer's first lock on
-- an ingest until the ingest is finished, as a lock file does, and carries
-- the holder's note. The lock itself is an advisory lock.
CREATE TABLE locks (
    key text COLLATE "C" PRIMARY KEY,
    note text NOT NULL DEFAULT ''
);
""",
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

_CONTENT_COLUMNS: Final = "digest, size, created_at, updated_at, labels::text"
_INGEST_COLUMNS: Final = (
    "namespace, ref, key, total, expected, started_at, updated_at, base, expires_at"
)
_IMAGE_COLUMNS: Final = (
    "name, labels, media_type, digest, size, annotations, created_at, updated_at"
)
# The tables a namespace's registry records are in.
_REGISTRY_TABLES: Final = ("repository_blobs", "manifests", "referrers", "tags")
_IDLE: Final = psycopg.pq.TransactionStatus.IDLE
# ListResources answers content first, then ingests, then snapshots by snapshotter.
_RESOURCE_ORDER: Final = (
    "CASE type WHEN 'content' THEN 0 WHEN 'ingests' THEN 1 ELSE 2 END, type, id"
)


# PostgreSQL's text holds no NUL character, which refs, lease ids, image names
# and labels may carry. Every string goes in with NUL as \x01\x01 and \x01 as
# \x01\x02, and comes out decoded: a prefix-free code that keeps byte order, so
# comparisons and ORDER BY mean what they mean on the strings themselves.
def _escape(text: str) -> str:
    if "\x00" in text or "\x01" in text:
        return text.replace("\x01", "\x01\x02").replace("\x00", "\x01\x01")
    return text


def _unescape(text: str) -> str:
    return re.sub("\x01([\x01\x02])", lambda m: "\x00" if m[1] == "\x01" else "\x01", text)


class _StrDumper(StrDumperUnknown):
    def dump(self, obj: str) -> bytes:
        # Connections talk UTF-8 (see `_connection_options`).
        return _escape(obj).encode()


class _TextLoader(TextLoader):
    def load(self, data: psycopg.abc.Buffer) -> str:
        raw = bytes(data)
        return _unescape(raw.decode()) if b"\x01" in raw else raw.decode()


_ADAPTERS: Final = psycopg.adapt.AdaptersMap(psycopg.adapters)
_ADAPTERS.register_dumper(str, _StrDumper)
_ADAPTERS.register_loader("text", _TextLoader)


def _labels_json(labels: Mapping[str, str]) -> str:
    """Labels as jsonb text: JSON strings hold NUL only as an escape jsonb refuses."""
    return json.dumps({_escape(k): _escape(v) for k, v in labels.items()}, ensure_ascii=False)


def _labels_from_json(text: str) -> dict[str, str]:
    labels: dict[str, str] = json.loads(text)
    if "\\u0001" in text:  # jsonb writes \x01 as this escape: some string was encoded
        labels = {_unescape(k): _unescape(v) for k, v in labels.items()}
    return labels


def _json(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(labels), ensure_ascii=False)


def _content(row: tuple[Any, ...]) -> ContentRecord:
    return ContentRecord(row[0], row[1], row[2], row[3], _labels_from_json(row[4]))


def _ingest(row: tuple[Any, ...]) -> IngestRecord:
    return IngestRecord(*row)


def _image(row: tuple[Any, ...]) -> ImageRecord:
    name, labels, media_type, digest, size, annotations, created_at, updated_at = row
    target = Descriptor(media_type, digest, size, json.loads(annotations))
    return ImageRecord(name, json.loads(labels), target, created_at, updated_at)


def _advisory_key(schema: str, name: str) -> int:
    """The advisory lock id of `name` in `schema`: a stable 64-bit hash, so stores sharing a
    database never share a lock."""
    digest = hashlib.blake2b(f"{schema}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# Conditions under which a database operation failed through no fault of its own.
_UNREACHABLE: Final = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout)


def translated(exc: BaseException, doing: str, busy_timeout: float) -> BaseException:
    """The error class a PostgreSQL failure while `doing` something is (or `exc` itself).

    A lock wait past the busy bound is Unavailable (STORE_BUSY); a database
    that cannot be reached, restarts or drops the connection is Unavailable
    (STORE_IO_ERROR), as a failing disk is for the local store, and so is
    whatever else the server calls operational (out of memory, a deadlock);
    a full disk is ResourceExhausted; damaged data is DataLoss. Anything else (a
    constraint, a bad statement) is a bug and stays unclassified, as it does
    for SQLite.
    """
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return busy(doing, busy_timeout)
    if isinstance(exc, psycopg.errors.DiskFull):
        return ResourceExhausted(f"{doing}: no space left for metadata")
    if isinstance(exc, psycopg.errors.DataCorrupted | psycopg.errors.IndexCorrupted):
        return DataLoss(f"{doing}: the metadata database is damaged")
    if isinstance(exc, _UNREACHABLE):
        return Unavailable(f"{doing}: metadata database unavailable", reason=STORE_IO_ERROR)
    return exc


@contextlib.contextmanager
def _translate_errors(doing: str, busy_timeout: float) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        error = translated(exc, doing, busy_timeout)
        if error is exc:
            raise
        raise error from exc


class _Connection(psycopg.Connection[tuple[Any, ...]]):
    """A psycopg connection that keeps where it connects, and as whom, to itself.

    libpq's connection errors name the host, port and user, and psycopg's
    summary of a connection (which the pool logs) does too: both are cut
    down to what is safe to show.
    """

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        try:
            return super().connect(conninfo, **kwargs)
        except psycopg.Error as exc:
            # The server's SQLSTATE (a wrong password's 28P01) is safe to keep; the words are not.
            code = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
        # Raised out here, the error keeps no trace of libpq's (not even as its context).
        raise psycopg.OperationalError(f"cannot connect to the database{code}")

    def __repr__(self) -> str:
        status = "closed" if self.closed else self.info.transaction_status.name
        return f"<contentd database connection [{status}]>"


def _connection_options(connect_timeout: float) -> dict[str, Any]:
    """How every connection here is made: autocommit (transactions are begun explicitly),
    strings through the NUL-safe adapters, UTF-8, and a bound on connecting."""
    return {
        "autocommit": True,
        "context": _ADAPTERS,
        "client_encoding": "utf8",
        "connect_timeout": max(1, round(connect_timeout)),
    }


def _connect(conninfo: str, schema: str, connect_timeout: float) -> _Connection:
    connection = _Connection.connect(conninfo, **_connection_options(connect_timeout))
    _configure(schema)(connection)
    return connection


def _configure(schema: str) -> Callable[[_Connection], None]:
    def configure(connection: _Connection) -> None:
        # Every statement names tables bare: the store's schema is all a
        # connection sees (pg_catalog comes first regardless).
        connection.execute(f'SET search_path TO "{schema}"')

    return configure


def migrate(connection: _Connection, schema: str) -> None:
    """Create the store's schema, or bring it up to `SCHEMA_VERSION`, once however many race.

    The migrations run in one transaction holding an advisory lock of the
    schema's, so daemons starting together wait for the first, then find
    nothing left to do.
    """
    with connection.transaction():
        connection.execute(
            "SELECT pg_advisory_xact_lock(%s)", (_advisory_key(schema, "contentd migrations"),)
        )
        connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        row = connection.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            connection.execute("INSERT INTO schema_version (version) VALUES (0)")
            version = 0
        else:
            version = int(row[0])
        if version > SCHEMA_VERSION:
            raise Unavailable(
                f"opening the metadata schema {schema}: version {version} is newer than"
                f" this contentd knows ({SCHEMA_VERSION})"
            )
        for number in range(version, SCHEMA_VERSION):
            connection.execute(_MIGRATIONS[number], prepare=False)
        if version < SCHEMA_VERSION:
            connection.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))
            _log.info("metadata schema %s migrated to version %d", schema, SCHEMA_VERSION)


def parse_url(url: str) -> tuple[str, str]:
    """The libpq connection string and the schema a ``postgresql://`` URL names.

    ``schema=NAME`` among the query parameters picks the schema (default
    `DEFAULT_SCHEMA`); it is no libpq parameter, so it is taken out. The
    rest goes to libpq as it is, so PG* environment variables and
    ``~/.pgpass`` apply. Errors never repeat the URL: it may hold a password.
    """
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise InvalidArgument("metadata URL: not a valid postgresql:// URL") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise InvalidArgument("metadata URL: expected a postgresql:// URL")
    schemas = [value for name, value in query if name == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    rest = urlencode([(name, value) for name, value in query if name != "schema"])
    return urlunsplit(parts._replace(query=rest)), validate_schema(schema)


def validate_schema(schema: str) -> str:
    """Return `schema` if it is a plain lowercase PostgreSQL identifier."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise InvalidArgument(
            f"schema {schema[:70]!r}: must be 1 to 63 lowercase letters, digits or '_',"
            " not starting with a digit"
        )
    return schema


class Transaction:
    """The statements of one transaction; every method runs inside it, on its connection."""

    def __init__(self, connection: _Connection) -> None:
        self._db = connection
        self._cursor = connection.cursor()
        self.before_commit_actions: dict[Hashable, Callable[[], None]] = {}

    @property
    def connection(self) -> _Connection:
        return self._db

    def _run(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()) -> int:
        """Run a statement; how many rows it changed."""
        return self._cursor.execute(sql, parameters).rowcount

    def _one(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any]) -> Any:
        return self._cursor.execute(sql, parameters).fetchone()

    def _all(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any]) -> list[Any]:
        return self._cursor.execute(sql, parameters).fetchall()

    def before_commit(self, key: Hashable, action: Callable[[], None]) -> None:
        """Run `action` once (per `key`) just before this transaction commits."""
        self.before_commit_actions.setdefault(key, action)

    # Namespaces

    def ensure_namespace(self, namespace: str, now: int) -> None:
        self._run(
            "INSERT INTO namespaces (name, created_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (namespace, now),
        )

    # Content

    def content(self, namespace: str, digest: str) -> ContentRecord | None:
        row = self._one(
            f"SELECT {_CONTENT_COLUMNS} FROM content WHERE namespace = %s AND digest = %s",
            (namespace, digest),
        )
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
        at least one of the mappings (jsonb containment, which the GIN index
        on labels answers), so records that cannot match are never decoded.
        """
        narrowing = ""
        arguments: list[Any] = [namespace, after]
        if labels and all(labels):
            narrowing = " AND (" + " OR ".join(["labels @> %s::jsonb"] * len(labels)) + ")"
            arguments += [_labels_json(alternative) for alternative in labels]
        rows = self._all(
            f"SELECT {_CONTENT_COLUMNS} FROM content WHERE namespace = %s AND digest > %s"
            f"{narrowing} ORDER BY digest LIMIT %s",
            (*arguments, limit),
        )
        return [_content(row) for row in rows]

    def insert_content(self, namespace: str, record: ContentRecord) -> None:
        self._run(
            "INSERT INTO content (namespace, digest, size, created_at, updated_at, labels)"
            " VALUES (%s, %s, %s, %s, %s, %s::jsonb)",
            (
                namespace,
                record.digest,
                record.size,
                record.created_at,
                record.updated_at,
                _labels_json(record.labels),
            ),
        )

    def set_labels(
        self, namespace: str, digest: str, labels: Mapping[str, str], updated_at: int
    ) -> None:
        self._run(
            "UPDATE content SET labels = %s::jsonb, updated_at = %s"
            " WHERE namespace = %s AND digest = %s",
            (_labels_json(labels), updated_at, namespace, digest),
        )

    def delete_content(self, namespace: str, digest: str) -> bool:
        return (
            self._run(
                "DELETE FROM content WHERE namespace = %s AND digest = %s", (namespace, digest)
            )
            > 0
        )

    def committed_anywhere(self, digest: str) -> ContentRecord | None:
        """A content row for `digest` in any namespace."""
        row = self._one(
            f"SELECT {_CONTENT_COLUMNS} FROM content WHERE digest = %s LIMIT 1", (digest,)
        )
        return None if row is None else _content(row)

    def blob_referenced(self, digest: str) -> bool:
        """Whether any namespace or ingest still needs the bytes of `digest`."""
        row = self._one(
            "SELECT EXISTS (SELECT 1 FROM content WHERE digest = %(d)s)"
            " OR EXISTS (SELECT 1 FROM ingests WHERE base = %(d)s)",
            {"d": digest},
        )
        return bool(row[0])

    def recorded_blobs(self, after: str, limit: int) -> list[tuple[str, int]]:
        """Up to `limit` (digest, size) pairs any namespace records, after digest `after`."""
        rows = self._all(
            "SELECT digest, MAX(size) FROM content WHERE digest > %s"
            " GROUP BY digest ORDER BY digest LIMIT %s",
            (after, limit),
        )
        return [(row[0], row[1]) for row in rows]

    def records_everywhere(self, digest: str) -> list[tuple[str, ContentRecord]]:
        """Every namespace's record of `digest`, as (namespace, record) pairs."""
        rows = self._all(
            f"SELECT namespace, {_CONTENT_COLUMNS} FROM content WHERE digest = %s"
            " ORDER BY namespace",
            (digest,),
        )
        return [(row[0], _content(row[1:])) for row in rows]

    def forget_blob(self, digest: str) -> None:
        """Drop `digest` from every namespace; ingests that started from it start over."""
        self._run(
            "WITH gone AS (DELETE FROM content WHERE digest = %(d)s)"
            " UPDATE ingests SET base = NULL WHERE base = %(d)s",
            {"d": digest},
        )

    # Ingests

    def ingest(self, namespace: str, ref: str) -> IngestRecord | None:
        row = self._one(
            f"SELECT {_INGEST_COLUMNS} FROM ingests WHERE namespace = %s AND ref = %s",
            (namespace, ref),
        )
        return None if row is None else _ingest(row)

    def ingests(self, namespace: str) -> list[IngestRecord]:
        rows = self._all(
            f"SELECT {_INGEST_COLUMNS} FROM ingests WHERE namespace = %s ORDER BY ref",
            (namespace,),
        )
        return [_ingest(row) for row in rows]

    def all_ingests(self) -> list[IngestRecord]:
        return [_ingest(row) for row in self._all(f"SELECT {_INGEST_COLUMNS} FROM ingests", ())]

    def insert_ingest(self, record: IngestRecord) -> None:
        self._run(
            f"INSERT INTO ingests ({_INGEST_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
        self._run(
            "UPDATE ingests SET total = %s, expected = %s, updated_at = %s, base = %s"
            " WHERE namespace = %s AND ref = %s",
            (total, expected, updated_at, base, namespace, ref),
        )

    def delete_ingest(self, namespace: str, ref: str) -> None:
        self._run("DELETE FROM ingests WHERE namespace = %s AND ref = %s", (namespace, ref))

    def set_ingest_expiry(self, namespace: str, ref: str, expires_at: int | None) -> None:
        self._run(
            "UPDATE ingests SET expires_at = %s WHERE namespace = %s AND ref = %s",
            (expires_at, namespace, ref),
        )

    # Namespaces and their labels

    def namespaces(self) -> list[tuple[str, dict[str, str]]]:
        rows = self._all("SELECT name, labels FROM namespaces ORDER BY name", ())
        return [(row[0], json.loads(row[1])) for row in rows]

    def usage(self) -> list[NamespaceUsage]:
        # SUM of bigint is numeric in PostgreSQL: back to int.
        return [
            NamespaceUsage(name, int(blobs), int(size), int(ingests))
            for name, blobs, size, ingests in self._all(USAGE_QUERY, ())
        ]

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        row = self._one("SELECT labels FROM namespaces WHERE name = %s", (namespace,))
        return None if row is None else cast("dict[str, str]", json.loads(row[0]))

    def set_namespace_labels(self, namespace: str, labels: Mapping[str, str], now: int) -> None:
        self._run(
            "INSERT INTO namespaces (name, created_at, labels) VALUES (%s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET labels = EXCLUDED.labels",
            (namespace, now, _json(labels)),
        )

    def namespace_holds(self, namespace: str) -> list[str]:
        """What keeps `namespace` from being deleted: "images" and "blobs", where it has any."""
        row = self._one(
            "SELECT EXISTS (SELECT 1 FROM images WHERE namespace = %(n)s),"
            " EXISTS (SELECT 1 FROM content WHERE namespace = %(n)s)",
            {"n": namespace},
        )
        return [kind for kind, held in zip(("images", "blobs"), row, strict=True) if held]

    def delete_namespace(self, namespace: str) -> bool:
        """Remove `namespace` with its leases, ingests and registry records; whether it existed."""
        tables = ("leases", "lease_resources", "ingests", *_REGISTRY_TABLES)
        gone = ", ".join(
            f"{table}_gone AS (DELETE FROM {table} WHERE namespace = %(n)s)" for table in tables
        )
        return (
            self._run(f"WITH {gone} DELETE FROM namespaces WHERE name = %(n)s", {"n": namespace})
            > 0
        )

    # Leases

    def lease(self, namespace: str, lease: str) -> LeaseRecord | None:
        row = self._one(
            "SELECT id, created_at, labels FROM leases WHERE namespace = %s AND id = %s",
            (namespace, lease),
        )
        return None if row is None else LeaseRecord(row[0], row[1], json.loads(row[2]))

    def leases(self, namespace: str) -> list[LeaseRecord]:
        rows = self._all(
            "SELECT id, created_at, labels FROM leases WHERE namespace = %s ORDER BY id",
            (namespace,),
        )
        return [LeaseRecord(row[0], row[1], json.loads(row[2])) for row in rows]

    def insert_lease(self, namespace: str, record: LeaseRecord) -> None:
        self._run(
            "INSERT INTO leases (namespace, id, created_at, labels) VALUES (%s, %s, %s, %s)",
            (namespace, record.id, record.created_at, _json(record.labels)),
        )

    def delete_lease(self, namespace: str, lease: str) -> bool:
        return (
            self._run(
                "WITH resources_gone AS (DELETE FROM lease_resources"
                " WHERE namespace = %(n)s AND lease = %(l)s)"
                " DELETE FROM leases WHERE namespace = %(n)s AND id = %(l)s",
                {"n": namespace, "l": lease},
            )
            > 0
        )

    def add_lease_resource(self, namespace: str, lease: str, kind: str, resource: str) -> None:
        self._run(
            "INSERT INTO lease_resources VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (namespace, lease, kind, resource),
        )

    def delete_lease_resource(self, namespace: str, lease: str, kind: str, resource: str) -> bool:
        return (
            self._run(
                "DELETE FROM lease_resources"
                " WHERE namespace = %s AND lease = %s AND type = %s AND id = %s",
                (namespace, lease, kind, resource),
            )
            > 0
        )

    def lease_resources(self, namespace: str, lease: str) -> list[tuple[str, str]]:
        rows = self._all(
            "SELECT type, id FROM lease_resources WHERE namespace = %s AND lease = %s"
            f" ORDER BY {_RESOURCE_ORDER}",
            (namespace, lease),
        )
        return [(row[0], row[1]) for row in rows]

    # Images

    def image(self, namespace: str, name: str) -> ImageRecord | None:
        row = self._one(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE namespace = %s AND name = %s",
            (namespace, name),
        )
        return None if row is None else _image(row)

    def images(self, namespace: str) -> list[ImageRecord]:
        rows = self._all(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE namespace = %s ORDER BY name",
            (namespace,),
        )
        return [_image(row) for row in rows]

    def put_image(self, namespace: str, record: ImageRecord) -> None:
        """Insert or replace the image `record.name`."""
        target = record.target
        self._run(
            f"INSERT INTO images (namespace, {_IMAGE_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (namespace, name) DO UPDATE SET labels = EXCLUDED.labels,"
            " media_type = EXCLUDED.media_type, digest = EXCLUDED.digest,"
            " size = EXCLUDED.size, annotations = EXCLUDED.annotations,"
            " created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at",
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
        return (
            self._run("DELETE FROM images WHERE namespace = %s AND name = %s", (namespace, name))
            > 0
        )

    # Registry repositories, manifests and tags

    def link_blob(self, namespace: str, repository: str, digest: str) -> None:
        self._run(
            "INSERT INTO repository_blobs VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (namespace, repository, digest),
        )

    def unlink_blob(self, namespace: str, repository: str, digest: str) -> bool:
        return (
            self._run(
                "DELETE FROM repository_blobs"
                " WHERE namespace = %s AND repository = %s AND digest = %s",
                (namespace, repository, digest),
            )
            > 0
        )

    def repository_has(self, namespace: str, repository: str, digest: str) -> bool:
        row = self._one(
            "SELECT EXISTS (SELECT 1 FROM repository_blobs"
            " WHERE namespace = %(n)s AND repository = %(r)s AND digest = %(d)s)"
            " OR EXISTS (SELECT 1 FROM manifests"
            " WHERE namespace = %(n)s AND repository = %(r)s AND digest = %(d)s)",
            {"n": namespace, "r": repository, "d": digest},
        )
        return bool(row[0])

    def put_manifest(
        self,
        namespace: str,
        repository: str,
        digest: str,
        media_type: str,
        tag: str | None,
        referrer: Referrer | None,
    ) -> None:
        # One statement: the referrer and the tag go in only when there is one.
        self._run(
            "WITH referrer AS (INSERT INTO referrers"
            " SELECT %(n)s, %(r)s, %(subject)s, %(d)s, %(descriptor)s, %(artifact)s"
            " WHERE %(subject)s::text IS NOT NULL"
            " ON CONFLICT (namespace, repository, subject, digest) DO UPDATE"
            " SET descriptor = EXCLUDED.descriptor, artifact_type = EXCLUDED.artifact_type),"
            " tag AS (INSERT INTO tags SELECT %(n)s, %(r)s, %(tag)s, %(d)s"
            " WHERE %(tag)s::text IS NOT NULL"
            " ON CONFLICT (namespace, repository, tag) DO UPDATE SET digest = EXCLUDED.digest)"
            " INSERT INTO manifests VALUES (%(n)s, %(r)s, %(d)s, %(media)s)"
            " ON CONFLICT (namespace, repository, digest)"
            " DO UPDATE SET media_type = EXCLUDED.media_type",
            {
                "n": namespace,
                "r": repository,
                "d": digest,
                "media": media_type,
                "tag": tag,
                "subject": None if referrer is None else referrer.subject,
                "descriptor": None
                if referrer is None
                else json.dumps(referrer.descriptor, sort_keys=True),
                "artifact": None if referrer is None else referrer.artifact_type,
            },
        )

    def manifest_media_type(self, namespace: str, repository: str, digest: str) -> str | None:
        row = self._one(
            "SELECT media_type FROM manifests"
            " WHERE namespace = %s AND repository = %s AND digest = %s",
            (namespace, repository, digest),
        )
        return None if row is None else str(row[0])

    def resolve_tag(self, namespace: str, repository: str, tag: str) -> str | None:
        row = self._one(
            "SELECT digest FROM tags WHERE namespace = %s AND repository = %s AND tag = %s",
            (namespace, repository, tag),
        )
        return None if row is None else str(row[0])

    def delete_manifest(self, namespace: str, repository: str, digest: str) -> bool:
        where = "namespace = %(n)s AND repository = %(r)s AND digest = %(d)s"
        return (
            self._run(
                f"WITH referrers_gone AS (DELETE FROM referrers WHERE {where}),"
                f" tags_gone AS (DELETE FROM tags WHERE {where})"
                f" DELETE FROM manifests WHERE {where}",
                {"n": namespace, "r": repository, "d": digest},
            )
            > 0
        )

    def delete_tag(self, namespace: str, repository: str, tag: str) -> bool:
        return (
            self._run(
                "DELETE FROM tags WHERE namespace = %s AND repository = %s AND tag = %s",
                (namespace, repository, tag),
            )
            > 0
        )

    def tags(
        self, namespace: str, repository: str, after: str, limit: int
    ) -> list[tuple[str, str]]:
        rows = self._all(
            "SELECT tag, digest FROM tags WHERE namespace = %(n)s AND repository = %(r)s"
            # The first condition is the index's range; the second drops ties up to `after`.
            " AND lower(tag) >= lower(%(a)s::text)"
            " AND (lower(tag), tag) > (lower(%(a)s::text), %(a)s::text)"
            " ORDER BY lower(tag), tag LIMIT %(l)s",
            {"n": namespace, "r": repository, "a": after, "l": limit},
        )
        return [(row[0], row[1]) for row in rows]

    def referrers(
        self, namespace: str, repository: str, subject: str, artifact_type: str | None
    ) -> list[dict[str, Any]]:
        sql = (
            "SELECT descriptor FROM referrers"
            " WHERE namespace = %s AND repository = %s AND subject = %s"
        )
        parameters = [namespace, repository, subject]
        if artifact_type is not None:
            sql += " AND artifact_type = %s"
            parameters.append(artifact_type)
        rows = self._all(sql + " ORDER BY digest", parameters)
        return [cast("dict[str, Any]", json.loads(row[0])) for row in rows]

    def repository_exists(self, namespace: str, repository: str) -> bool:
        row = self._one(
            "SELECT EXISTS (SELECT 1 FROM repository_blobs"
            " WHERE namespace = %(n)s AND repository = %(r)s)"
            " OR EXISTS (SELECT 1 FROM manifests WHERE namespace = %(n)s AND repository = %(r)s)",
            {"n": namespace, "r": repository},
        )
        return bool(row[0])

    def repository_digests(self, namespace: str) -> set[str]:
        rows = self._all(
            "SELECT digest FROM repository_blobs WHERE namespace = %(n)s"
            " UNION SELECT digest FROM manifests WHERE namespace = %(n)s",
            {"n": namespace},
        )
        return {str(row[0]) for row in rows}

    def repositories(self, namespace: str, after: str, limit: int) -> list[str]:
        rows = self._all(
            "SELECT repository FROM repository_blobs WHERE namespace = %(n)s AND repository > %(a)s"
            " UNION SELECT repository FROM manifests WHERE namespace = %(n)s AND repository > %(a)s"
            " ORDER BY 1 LIMIT %(l)s",
            {"n": namespace, "a": after, "l": limit},
        )
        return [str(row[0]) for row in rows]


class PostgresMetadata:
    """A store's records in one schema of a PostgreSQL database, shared by many daemons.

    Connections come from a pool (`pool_min` to `pool_max`); one that dies
    (the server restarted) is replaced, and the operation that met it fails
    with Unavailable (STORE_IO_ERROR), as does one that waits more than
    `connect_timeout` seconds for a connection. Write transactions take a
    transaction-level advisory lock of the schema's first, so they exclude
    each other across every daemon as SQLite's do across processes, waiting
    at most `busy_timeout` seconds (then Unavailable, STORE_BUSY). Reads are
    REPEATABLE READ READ ONLY: one snapshot, never waiting for a writer.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        busy_timeout: float = BUSY_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        pool_min: int = 1,
        pool_max: int = 8,
    ) -> None:
        self._schema = validate_schema(schema)
        self._busy_timeout = validate_busy_timeout(busy_timeout)
        self._connect_timeout = validate_busy_timeout(connect_timeout)
        self._write_key = _advisory_key(schema, "contentd metadata writes")
        # Writers in this process queue here, not in the pool: waiting for the
        # advisory lock would hold a connection that readers need.
        self._write_turn = WriteTurn(self._busy_timeout, busy)
        #: Hooks for whoever counts this store's commits (see `StoreMeter`).
        self.meter = StoreMeter()
        self._group = GroupCommit[Transaction](self._run_batch, self.meter)
        self._pool: psycopg_pool.ConnectionPool[_Connection] = psycopg_pool.ConnectionPool(
            conninfo,
            connection_class=_Connection,
            kwargs=_connection_options(self._connect_timeout),
            min_size=pool_min,
            max_size=max(pool_min, pool_max),
            configure=_configure(schema),
            name=f"contentd-metadata-{schema}",
            timeout=self._connect_timeout,
            open=False,
        )
        doing = "opening the metadata database"
        with _translate_errors(doing, self._busy_timeout):
            self._pool.open()
            try:
                with self._connection(doing) as connection:
                    migrate(connection, schema)
            except BaseException:
                self._pool.close()
                raise

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresMetadata:
        """The metadata in the database and schema a ``postgresql://...?schema=NAME`` URL names."""
        conninfo, schema = parse_url(url)
        return cls(conninfo, schema=schema, **options)

    @property
    def schema(self) -> str:
        return self._schema

    @contextlib.contextmanager
    def _connection(self, doing: str) -> Iterator[_Connection]:
        """A connection from the pool, given back after; broken ones are weeded out."""
        connection = self._pool.getconn()
        broken = False
        try:
            yield connection
        except _UNREACHABLE:
            broken = True
            raise
        finally:
            if broken or connection.closed:
                # Its siblings likely died with it (a restart): test the idle
                # ones now, so the next callers get fresh connections.
                self._pool.putconn(connection)
                with contextlib.suppress(Exception):
                    self._pool.check()
            else:
                self._pool.putconn(connection)

    @contextlib.contextmanager
    def read(self, doing: str) -> Iterator[Transaction]:
        """A consistent snapshot for several reads."""
        with _translate_errors(doing, self._busy_timeout), self._connection(doing) as connection:
            connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield Transaction(connection)
            finally:
                if not connection.closed:
                    connection.execute("ROLLBACK")

    @contextlib.contextmanager
    def write(self, doing: str, *, durable: bool = True) -> Iterator[Transaction]:
        """A write transaction, committed when the block ends and rolled back on error.

        `durable=False` commits without waiting for the log to be flushed:
        the commit survives this process dying, not the database losing
        power. Only for records a later open repairs (progress marks).
        """
        with (
            _translate_errors(doing, self._busy_timeout),
            self._write_turn(doing) as left,
            self._connection(doing) as connection,
        ):
            # READ COMMITTED: each statement sees what writers before this one
            # committed, however long the advisory lock took.
            setup = (
                "BEGIN ISOLATION LEVEL READ COMMITTED;"
                f" SET LOCAL lock_timeout = {max(1, int(left * 1000))};"
                f"{'' if durable else ' SET LOCAL synchronous_commit = off;'}"
                f" SELECT pg_advisory_xact_lock({self._write_key})"
            )
            try:
                connection.execute(setup, prepare=False)
                tx = Transaction(connection)
                yield tx
                for action in tx.before_commit_actions.values():
                    action()
                connection.execute("COMMIT")
            except BaseException:
                if not connection.closed and connection.info.transaction_status != _IDLE:
                    with contextlib.suppress(*_UNREACHABLE):
                        connection.execute("ROLLBACK")
                raise

    def commit(self, doing: str, body: Callable[[Transaction], _T]) -> _T:
        """Run `body` in a durable write transaction, shared with concurrent callers.

        Group commit: callers that arrive while a batch commits wait and go
        together in the next one, each `body` inside a savepoint of one
        transaction, so a batch costs one flush of the database's log
        however many callers it carries. A `body` that raises rolls back its
        own savepoint only and its caller gets the exception; the others
        commit.
        """
        return self._group.commit(doing, body)

    def _run_batch(self, doing: str, batch: list[Pending[Transaction, Any]]) -> None:
        with self.write(doing) as tx:
            connection = tx.connection
            connection.execute("SAVEPOINT caller")
            for number, pending in enumerate(batch):
                try:
                    pending.result = pending.body(tx)
                except Exception as exc:
                    pending.error = translated(exc, doing, self._busy_timeout)
                    undo = "ROLLBACK TO caller; "
                else:
                    undo = ""
                # One round trip ends this caller's savepoint and opens the next's.
                more = " SAVEPOINT caller" if number + 1 < len(batch) else ""
                connection.execute(f"{undo}RELEASE caller;{more}", prepare=False)

    def close(self) -> None:
        """Close every connection."""
        self._pool.close()


class PostgresLock:
    """A writer lock held through `PostgresLocks`: a session advisory lock and its row.

    It lives as long as the session it was taken on: if that connection
    drops, PostgreSQL frees the lock, and every operation here then fails
    with Unavailable, so a writer never goes on as if it still held it.
    """

    def __init__(self, locks: PostgresLocks, session: _Session, key: str) -> None:
        self._locks = locks
        self._session = session
        self._key = key
        self._held = True

    def write_note(self, note: str) -> None:
        self._session.run(
            "noting a commit", "UPDATE locks SET note = %s WHERE key = %s", (note, self._key)
        )

    def read_note(self) -> str:
        row = self._session.run(
            "reading a commit's note", "SELECT note FROM locks WHERE key = %s", (self._key,)
        ).fetchone()
        return "" if row is None else str(row[0])

    def clear_note(self) -> None:
        self._session.run(
            "clearing a commit's note", "UPDATE locks SET note = '' WHERE key = %s", (self._key,)
        )

    def release(self, *, remove: bool = False) -> None:
        """Let go of the lock; with `remove`, its row goes first, while it is held.

        Never fails: a lock whose session was lost is released already, and
        a row left behind is a lock with no ingest, which repair removes.
        """
        if not self._held:
            return
        self._held = False
        self._locks._forget(self._key, self)
        with contextlib.suppress(Unavailable):
            if remove:
                self._session.run(
                    "removing an ingest's lock", "DELETE FROM locks WHERE key = %s", (self._key,)
                )
            self._session.run(
                "releasing an ingest's lock",
                "SELECT pg_advisory_unlock(%s)",
                (self._locks._advisory(self._key),),
            )


class _Session:
    """The connection a `PostgresLocks` holds its advisory locks on, until it is lost."""

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        self.lost = False
        self._guard = threading.Lock()

    def run(
        self, doing: str, sql: str, parameters: Sequence[Any] = ()
    ) -> psycopg.Cursor[tuple[Any, ...]]:
        """Run one statement on the session; Unavailable once the session is lost."""
        with self._guard:
            if self.lost:
                raise Unavailable(
                    f"{doing}: the lock was lost with its database connection",
                    reason=STORE_IO_ERROR,
                )
            try:
                return self.connection.execute(sql, parameters)
            except _UNREACHABLE as exc:
                self.lose()
                raise Unavailable(
                    f"{doing}: lock database unavailable; the locks held are lost",
                    reason=STORE_IO_ERROR,
                ) from exc

    def lose(self) -> None:
        self.lost = True
        with contextlib.suppress(Exception):
            self.connection.close()


#: The server-side TCP probing of a lock connection: idle seconds, then probes
#: `count` times `interval` apart; and a bound (ms) on unacknowledged sends.
LOCK_KEEPALIVES: Final = {
    "tcp_keepalives_idle": 10,
    "tcp_keepalives_interval": 5,
    "tcp_keepalives_count": 3,
    "tcp_user_timeout": 25_000,
}
#: About how long after its host vanished a lock holder's locks are freed.
LOCK_PROBE_SECONDS: Final = 25


class PostgresLocks:
    """Writer locks as PostgreSQL session advisory locks, on one connection of their own.

    A lock is `pg_try_advisory_lock` on a 64-bit hash of (schema, key), so
    the database frees it when its holder's connection drops: a daemon that
    dies leaves no stale lock. PostgreSQL lets one session take its own lock
    again, so the keys this object holds are tracked here and refused to a
    second taker in this process. A row in ``locks`` says a lock exists (a
    writer took it and its ingest is not finished) and keeps its note, for
    whoever takes it after the holder died.

    If the connection is lost, so are the locks on it: their operations
    fail with Unavailable, and the next `try_lock` connects again.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self._conninfo = conninfo
        self._schema = validate_schema(schema)
        self._connect_timeout = validate_busy_timeout(connect_timeout)
        self._guard = threading.Lock()
        self._held: dict[str, PostgresLock] = {}
        self._session: _Session | None = None
        self._closed = False
        with self._translate("opening the lock database"):
            session = self._current()
            try:
                migrate(session.connection, self._schema)
            except BaseException:
                self.close()
                raise

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresLocks:
        """The locks of the store in the schema a ``postgresql://...?schema=NAME`` URL names."""
        conninfo, schema = parse_url(url)
        return cls(conninfo, schema=schema, **options)

    def _translate(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return _translate_errors(doing, self._connect_timeout)

    def _advisory(self, key: str) -> int:
        return _advisory_key(self._schema, key)

    def _current(self) -> _Session:
        """The live session, connecting again if there is none (its locks were lost)."""
        with self._guard:
            if self._closed:
                raise RuntimeError("the lock backend is closed")
            session = self._session
            if session is None or session.lost:
                session = _Session(_connect(self._conninfo, self._schema, self._connect_timeout))
                # A note must survive its holder dying, not the database losing power.
                session.connection.execute("SET synchronous_commit = off")
                # A holder whose host vanishes (no FIN, no RST) would keep its locks
                # until the server's TCP gave up, by default hours later: have the
                # server probe this connection and drop it, and its locks, within
                # about LOCK_PROBE_SECONDS. Ignored on unix sockets.
                for setting, value in LOCK_KEEPALIVES.items():
                    session.connection.execute(f"SET {setting} = {value}")
                self._session = session
                # Locks of the session lost are free for takers in this process again.
                self._held = {k: lock for k, lock in self._held.items() if not lock._session.lost}
            return session

    def _forget(self, key: str, lock: PostgresLock) -> None:
        with self._guard:
            if self._held.get(key) is lock:
                del self._held[key]

    def try_lock(self, key: str, *, create: bool = True) -> PostgresLock | None:
        """The lock on `key` if it is free; None at once if any holder has it (this one too).

        A session found lost on the way is replaced once, so the first
        writer after a database restart does not fail for the connection
        that restart broke.
        """
        doing = "locking an ingest"
        for attempt in range(2):
            with self._translate(doing):
                session = self._current()
            with self._guard:
                if key in self._held:
                    return None
                # Claimed here before the database is asked, so two threads of this
                # process never both take it (the session would let them).
                lock = PostgresLock(self, session, key)
                self._held[key] = lock
            try:
                taken = self._take(session, key, create=create, doing=doing)
            except Unavailable:
                self._forget(key, lock)
                if attempt == 0 and session.lost:
                    continue  # whatever it took died with the session
                raise
            except BaseException:
                self._forget(key, lock)
                raise
            if not taken:
                self._forget(key, lock)
                return None
            return lock
        raise AssertionError("unreachable")

    def _take(self, session: _Session, key: str, *, create: bool, doing: str) -> bool:
        advisory = self._advisory(key)
        if create:
            # The row goes in with the lock in one statement; `exists` asks pg_locks too, so
            # the lock counts as existing before its row commits.
            row = session.run(
                doing,
                "WITH taken AS (SELECT pg_try_advisory_lock(%s) AS ok),"
                " made AS (INSERT INTO locks (key) SELECT %s FROM taken WHERE ok"
                " ON CONFLICT DO NOTHING)"
                " SELECT ok FROM taken",
                (advisory, key),
            ).fetchone()
            return bool(row and row[0])
        row = session.run(doing, "SELECT pg_try_advisory_lock(%s)", (advisory,)).fetchone()
        if not (row and row[0]):
            return False
        # Asked only once the lock is held: a holder finishing removes the row before it lets go.
        if session.run(doing, "SELECT 1 FROM locks WHERE key = %s", (key,)).fetchone():
            return True
        session.run(doing, "SELECT pg_advisory_unlock(%s)", (advisory,))
        return False

    def exists(self, key: str) -> bool:
        """Whether a lock on `key` exists: its row is there, or someone holds it."""
        advisory = self._advisory(key) & 0xFFFFFFFFFFFFFFFF
        doing = "looking for an ingest's lock"
        with self._translate(doing):
            row = (
                self._current()
                .run(
                    doing,
                    "SELECT EXISTS (SELECT 1 FROM locks WHERE key = %s)"
                    " OR EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
                    " AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                    " AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1)",
                    (key, advisory >> 32, advisory & 0xFFFFFFFF),
                )
                .fetchone()
            )
        return bool(row and row[0])

    def existing(self) -> dict[str, bool]:
        """Every key with a lock row, and whether it carries a note."""
        doing = "listing ingest locks"
        with self._translate(doing):
            rows = self._current().run(doing, "SELECT key, note <> '' FROM locks").fetchall()
        return {str(key): bool(noted) for key, noted in rows}

    def close(self) -> None:
        """Close the connection, which lets go of every lock it holds."""
        with self._guard:
            self._closed = True
            session, self._session = self._session, None
            self._held.clear()
        if session is not None:
            session.lose()


if TYPE_CHECKING:
    from ._backends import LockBackend, MetadataBackend, MetadataTransaction, RefLock

    # mypy checks here that PostgreSQL's classes keep the backends' contracts.
    _backend: type[MetadataBackend] = PostgresMetadata
    _transaction: type[MetadataTransaction] = Transaction
    _locks: type[LockBackend] = PostgresLocks
    _lock: type[RefLock] = PostgresLock

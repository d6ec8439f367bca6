"""The store's backends as the contract tests open them, one kind at a time.

Each kind opens a whole set (blobs, metadata, locks) on a place of its own:

- "local": a directory (files, SQLite, flock);
- "cluster": the distributed store, blob bytes in the test session's
  SeaweedFS and records and locks in its PostgreSQL (support/seaweedfs.py,
  support/postgres.py), a prefix and a schema named after the place, so that
  another process opening the same place finds the same store (`cluster_urls`).

Every test parametrised over `KINDS` runs against each; tests/conftest.py
starts the engines for those of kind "cluster". Two halves of the cluster
kind, "s3" (S3 blobs, the rest local) and "postgres" (local blobs, records
and locks in PostgreSQL), are there for the tests of one engine alone. Run as
a script, this module opens a set in a process of its own and acts on it (for
the tests of what holds across processes).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contentd.content import BackedStore, Backends
from contentd.content._files import FileBlobs
from contentd.content._locks import FileLocks
from contentd.content._postgres import PostgresLocks, PostgresMetadata
from contentd.content._s3 import S3Blobs
from contentd.content._sqlite import Metadata

#: The backend sets every backend and store contract test runs against.
KINDS = ("local", "cluster")
#: Every kind `open_backends` knows, and which engines each needs.
ENGINES = {
    "local": (),
    "cluster": ("seaweedfs", "postgres"),
    "s3": ("seaweedfs",),
    "postgres": ("postgres",),
}
#: Where the session's engines publish themselves, for any process to reach them: the
#: `postgres` fixture its DSN, the `seaweedfs` fixture its S3 endpoint and bucket.
DSN_VARIABLE = "CONTENTD_TEST_POSTGRES"
ENDPOINT_ENV = "CONTENTD_TEST_S3_ENDPOINT"
BUCKET_ENV = "CONTENTD_TEST_S3_BUCKET"
#: Part size of S3 ingests in the tests: S3's smallest, so tests cross parts cheaply.
S3_TEST_PART_SIZE = 5 << 20


@dataclass(frozen=True)
class ClusterURLs:
    """Where one cluster store lives: what `--blobs` and `--metadata` name."""

    blobs: str
    metadata: str

    def flags(self) -> tuple[str, ...]:
        """The options of `contentd serve` (or any verb) that open this store."""
        return ("--blobs", self.blobs, "--metadata", self.metadata)


def _engine(variable: str) -> str:
    try:
        return os.environ[variable]
    except KeyError:
        raise RuntimeError(f"no engines for a cluster store: {variable} is not set") from None


def _tag(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:24]


def _blobs_url(name: str) -> str:
    """Where the store called `name` keeps its bytes: a prefix of its own in the test bucket."""
    return f"s3://{_engine(BUCKET_ENV)}/{_tag(name)}?endpoint={_engine(ENDPOINT_ENV)}"


def cluster_urls(name: str) -> ClusterURLs:
    """The store called `name` (any text: it is hashed) on the session's engines."""
    return ClusterURLs(
        blobs=_blobs_url(name), metadata=f"{_engine(DSN_VARIABLE)}?schema=t_{_tag(name)}"
    )


def s3_url(place: Path) -> str:
    """The URL of the S3 blobs for `place` (needs SeaweedFS alone, not PostgreSQL)."""
    return _blobs_url(str(place.resolve()))


def open_backends(kind: str, place: Path, *, busy_timeout: float = 10.0) -> Backends:
    """A set of backends of `kind` on `place`, created if new."""
    place.mkdir(parents=True, exist_ok=True)
    if kind == "local":
        blobs = FileBlobs(place)
        metadata = Metadata(place / "metadata.db", busy_timeout=busy_timeout)
        return Backends(blobs, metadata, FileLocks(blobs.ingest_directory))
    if kind == "s3":
        (place / "locks").mkdir(exist_ok=True)
        metadata = Metadata(place / "metadata.db", busy_timeout=busy_timeout)
        s3 = S3Blobs.from_url(s3_url(place), part_size=S3_TEST_PART_SIZE)
        return Backends(s3, metadata, FileLocks(place / "locks"))
    urls = cluster_urls(str(place.resolve()))
    if kind == "cluster":
        s3 = S3Blobs.from_url(urls.blobs, part_size=S3_TEST_PART_SIZE)
        records = PostgresMetadata.from_url(urls.metadata, busy_timeout=busy_timeout)
        return Backends(s3, records, PostgresLocks.from_url(urls.metadata))
    if kind == "postgres":
        records = PostgresMetadata.from_url(urls.metadata, busy_timeout=busy_timeout)
        return Backends(FileBlobs(place), records, PostgresLocks.from_url(urls.metadata))
    raise ValueError(f"no backend kind {kind!r}")


def open_backed_store(kind: str, place: Path, namespace: str = "default") -> BackedStore:
    """The store's rules over a set of backends of `kind`, repaired as a store opens."""
    store = BackedStore(open_backends(kind, place), namespace)
    store.repair()
    return store


def _hold(kind: str, place: str, key: str, note: str) -> None:
    """Take the lock on `key`, leave `note` on it, say so, and hold it until killed."""
    lock = open_backends(kind, Path(place)).locks.try_lock(key)
    if lock is None:
        print("refused", flush=True)
        return
    if note:
        lock.write_note(note)
    print("holding", flush=True)
    time.sleep(3600)


def _try(kind: str, place: str, key: str) -> None:
    """Say whether the lock on `key` could be taken."""
    lock = open_backends(kind, Path(place)).locks.try_lock(key)
    print("taken" if lock is not None else "refused", flush=True)


ACTIONS: dict[str, Callable[..., None]] = {"hold": _hold, "try": _try}

if __name__ == "__main__":
    action, *arguments = sys.argv[1:]
    ACTIONS[action](*arguments)

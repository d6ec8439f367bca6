"""The store's backends as the contract tests open them, one kind at a time.

Each kind opens a whole set (blobs, metadata, locks) on a place of its own: a
directory for the local kind. The "postgres" kind keeps blobs in files under
the place and records and locks in the tests' PostgreSQL cluster (see
support/postgres.py), in a schema named after the place; it stands in for
the distributed kind (S3 and PostgreSQL) until that joins `KINDS`. Every
test parametrised over `KINDS` runs against each. Run as a script, this
module opens a set in a process of its own and acts on it (for the tests of
what holds across processes).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from contentd.content import BackedStore, Backends
from contentd.content._files import FileBlobs
from contentd.content._locks import FileLocks
from contentd.content._postgres import PostgresLocks, PostgresMetadata
from contentd.content._sqlite import Metadata

#: The backend sets every backend and store contract test runs against.
KINDS = ("local", "postgres")
#: Where the DSN of the tests' PostgreSQL cluster is published (by the
#: `postgres` fixture), for this module in any process to reach it.
DSN_VARIABLE = "CONTENTD_TEST_POSTGRES"


def postgres_schema(place: Path) -> str:
    """The schema of the store on `place`: one per place, so one per test."""
    return "t_" + hashlib.sha256(str(place.resolve()).encode()).hexdigest()[:24]


def open_backends(kind: str, place: Path, *, busy_timeout: float = 10.0) -> Backends:
    """A set of backends of `kind` on `place`, created if new."""
    if kind == "local":
        place.mkdir(parents=True, exist_ok=True)
        blobs = FileBlobs(place)
        metadata = Metadata(place / "metadata.db", busy_timeout=busy_timeout)
        return Backends(blobs, metadata, FileLocks(blobs.ingest_directory))
    if kind == "postgres":
        dsn = os.environ.get(DSN_VARIABLE)
        if dsn is None:
            raise RuntimeError(f"no PostgreSQL for the tests: {DSN_VARIABLE} is not set")
        place.mkdir(parents=True, exist_ok=True)
        schema = postgres_schema(place)
        postgres = PostgresMetadata(dsn, schema=schema, busy_timeout=busy_timeout)
        return Backends(FileBlobs(place), postgres, PostgresLocks(dsn, schema=schema))
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

"""The store's backends as the contract tests open them, one kind at a time.

Each kind opens a whole set (blobs, metadata, locks) on a place of its own: a
directory for the local kind. The "s3" kind keeps blob bytes in S3 (a prefix
of the test session's SeaweedFS bucket, derived from the place, so another
process opening the same place finds the same prefix) and the rest local:
it stands in for the distributed kind (S3 and PostgreSQL) until that exists.
Every test parametrised over `KINDS` runs against each kind; tests/conftest.py
starts SeaweedFS for those of kind "s3". Run as a script, this module opens a
set in a process of its own and acts on it (for the tests of what holds
across processes).
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
from contentd.content._s3 import S3Blobs
from contentd.content._sqlite import Metadata

#: The backend sets every backend and store contract test runs against.
KINDS = ("local", "s3")
#: Part size of the "s3" kind's ingests: S3's smallest, so tests cross parts cheaply.
S3_TEST_PART_SIZE = 5 << 20


def s3_url(place: Path) -> str:
    """The URL of the "s3" kind's blobs for `place`: a prefix of its own in the test bucket."""
    prefix = hashlib.sha256(str(place.resolve()).encode()).hexdigest()[:24]
    endpoint = os.environ["CONTENTD_TEST_S3_ENDPOINT"]
    bucket = os.environ["CONTENTD_TEST_S3_BUCKET"]
    return f"s3://{bucket}/{prefix}?endpoint={endpoint}"


def open_backends(kind: str, place: Path, *, busy_timeout: float = 10.0) -> Backends:
    """A set of backends of `kind` on `place`, created if new."""
    if kind == "local":
        place.mkdir(parents=True, exist_ok=True)
        blobs = FileBlobs(place)
        metadata = Metadata(place / "metadata.db", busy_timeout=busy_timeout)
        return Backends(blobs, metadata, FileLocks(blobs.ingest_directory))
    if kind == "s3":
        place.mkdir(parents=True, exist_ok=True)
        (place / "locks").mkdir(exist_ok=True)
        metadata = Metadata(place / "metadata.db", busy_timeout=busy_timeout)
        s3 = S3Blobs.from_url(s3_url(place), part_size=S3_TEST_PART_SIZE)
        return Backends(s3, metadata, FileLocks(place / "locks"))
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

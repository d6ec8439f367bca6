"""Cluster daemons when an engine fails under them: PostgreSQL restarted, object storage gone.

Two daemons serve one cluster store while clients write through both. The
promises: a client gets `Unavailable` (never an internal error, never a hang)
while an engine is down; nothing a daemon acknowledged is lost; no blob is
listed whose bytes are not all there; and the daemons serve again once the
engine is back, without being restarted.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.backends import ClusterURLs
from support.daemon import DaemonProcess, remote, running_pair
from support.postgres import PostgresCluster
from support.seaweedfs import SeaweedFS

from contentd import errdefs
from contentd.client import write_blob
from contentd.content import digest_of, open_store

pytestmark = pytest.mark.slow

#: How long a daemon may take to serve again once its engine is back.
RECOVERY = 30.0


@pytest.fixture
def daemons(tmp_path: Path, cluster: ClusterURLs) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    with running_pair(tmp_path, *cluster.flags()) as pair:
        yield pair


class Writers:
    """Client threads writing distinct blobs through the daemons until stopped.

    Each records what the daemon acknowledged and what it refused; anything
    but success or Unavailable is kept as a failure.
    """

    def __init__(self, daemons: tuple[DaemonProcess, ...], clients: int = 4) -> None:
        self.acknowledged: dict[str, bytes] = {}
        self.refused: list[errdefs.Unavailable] = []
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._write, args=(daemons[n % len(daemons)], n), daemon=True)
            for n in range(clients)
        ]

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in self._threads), "a writer hung"

    def _write(self, daemon: DaemonProcess, client: int) -> None:
        with remote(daemon) as store:
            count = 0
            while not self._stop.is_set():
                count += 1
                # Mostly small blobs, now and then one that spans several parts.
                size = 3 << 20 if count % 10 == 0 else 4096
                data = hashlib.sha256(f"{client}-{count}".encode()).digest() * (size // 32)
                try:
                    digest = write_blob(store, f"w-{client}-{count}", data, timeout=60)
                except errdefs.Unavailable as exc:
                    with self._lock:
                        self.refused.append(exc)
                    time.sleep(0.05)
                    continue
                except BaseException as exc:
                    with self._lock:
                        self.failures.append(exc)
                    return
                with self._lock:
                    self.acknowledged[digest] = data

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def wait_for_more(self, than: int, what: str) -> None:
        deadline = time.monotonic() + RECOVERY
        while self.count() <= than:
            assert not self.failures, self.failures
            assert time.monotonic() < deadline, f"no blob acknowledged {what}"
            time.sleep(0.1)


def check_store(cluster: ClusterURLs, acknowledged: dict[str, bytes]) -> None:
    """Every acknowledged blob is listed and whole; every listed blob reads back to its digest."""
    with open_store(blobs=cluster.blobs, metadata=cluster.metadata) as store:
        listed = {info.digest: info.size for info in store.walk()}
        assert set(acknowledged) <= set(listed)
        for digest, size in listed.items():
            with store.reader_at(digest) as reader:
                data = reader.read()
            assert len(data) == size
            assert digest_of(data) == digest
            if digest in acknowledged:
                assert data == acknowledged[digest]


def retry_until_served(call: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + RECOVERY
    while True:
        try:
            call()
            return
        except errdefs.Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_postgresql_restarted_under_load_loses_nothing_acknowledged(
    postgres: PostgresCluster,
    cluster: ClusterURLs,
    daemons: tuple[DaemonProcess, DaemonProcess],
) -> None:
    with Writers(daemons) as writers:
        writers.wait_for_more(20, "before the restart")
        # As a crash would: no checkpoint, recovery from the WAL on start.
        postgres.stop("immediate")
        time.sleep(1.5)
        down = writers.count()
        postgres.start()
        writers.wait_for_more(down + 20, "after PostgreSQL came back")
    assert not writers.failures, writers.failures
    # The outage was met, and met with Unavailable alone (Writers keeps anything else).
    assert writers.refused
    check_store(cluster, writers.acknowledged)
    # Both daemons serve again, untouched: a write and a read through each.
    for daemon in daemons:
        with remote(daemon) as store:
            digest = write_blob(store, "after", f"after {daemon.address}".encode())
            assert store.info(digest).size > 0


def test_object_storage_down_is_unavailable_and_lists_nothing_partial(
    seaweedfs: SeaweedFS,
    cluster: ClusterURLs,
    daemons: tuple[DaemonProcess, DaemonProcess],
) -> None:
    first, second = daemons
    kept = b"stored before the outage"
    with remote(first) as a, remote(second) as b:
        kept_digest = write_blob(a, "kept", kept)
        seaweedfs.stop()
        try:
            started = time.monotonic()
            with pytest.raises(errdefs.Unavailable) as refused:
                write_blob(b, "during", b"x" * (6 << 20), timeout=30)
            assert time.monotonic() - started < 20
            assert "object storage" in str(refused.value)
            with pytest.raises(errdefs.Unavailable), b.reader_at(kept_digest) as reader:
                reader.read()
            # What is recorded stays listed; what never reached storage is not.
            assert [info.digest for info in a.walk()] == [kept_digest]
        finally:
            seaweedfs.start()
        retry_until_served(lambda: write_blob(b, "after", b"after the outage"), "a write")
        with a.reader_at(kept_digest) as reader:
            assert reader.read() == kept
    check_store(cluster, {kept_digest: kept})

"""Garbage collection on a cluster store: collections through several daemons at once, beside
writers on every daemon.

A collection marks and sweeps in one exclusive metadata transaction (the advisory lock every
commit and delete takes too), so collections through different daemons run one at a time and
never interleave with a commit: what a lease holds survives any number of them, and what
nothing holds goes, bytes included.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.backends import ClusterURLs
from support.daemon import DaemonProcess, remote, running_pair

from contentd import errdefs
from contentd.client import write_blob
from contentd.content import ROOT_LABEL, digest_of
from contentd.content._s3 import S3Blobs

pytestmark = pytest.mark.slow


@pytest.fixture
def daemons(tmp_path: Path, cluster: ClusterURLs) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    with running_pair(tmp_path, *cluster.flags()) as pair:
        yield pair


def stored_digests(cluster: ClusterURLs) -> set[str]:
    """What the bucket holds, straight from object storage."""
    blobs = S3Blobs.from_url(cluster.blobs)
    try:
        return set(blobs.digests())
    finally:
        blobs.close()


def test_a_collection_through_one_daemon_frees_what_another_stored(
    cluster: ClusterURLs, daemons: tuple[DaemonProcess, DaemonProcess]
) -> None:
    first, second = daemons
    with remote(first) as a, remote(second) as b:
        kept = write_blob(b, "kept", b"kept by its root label", labels={ROOT_LABEL: "yes"})
        garbage = write_blob(b, "garbage", b"held by nothing" * 1000)
        assert {kept, garbage} <= stored_digests(cluster)

        report = a.collect()

        assert report.content == 1
        assert report.blobs == 1
        assert report.bytes == len(b"held by nothing" * 1000)
        assert [info.digest for info in b.walk()] == [kept]
        assert stored_digests(cluster) == {kept}


def test_collections_through_both_daemons_beside_leased_writers_keep_every_leased_blob(
    daemons: tuple[DaemonProcess, DaemonProcess],
) -> None:
    stop = threading.Event()
    failures: list[BaseException] = []
    written: dict[str, list[str]] = {}
    collected: dict[str, int] = {}

    def write(daemon: DaemonProcess, name: str) -> None:
        try:
            with remote(daemon) as store, store.lease() as leased:
                count = 0
                while not stop.is_set():
                    count += 1
                    data = f"{name} {count}".encode() * 100
                    written.setdefault(name, []).append(write_blob(leased, f"{name}-{count}", data))
                    # Garbage beside it, for the collections to take.
                    write_blob(store, f"{name}-loose-{count}", f"loose {name} {count}".encode())
                for digest in written[name]:
                    assert leased.info(digest).size > 0
        except BaseException as exc:
            failures.append(exc)

    def collect(daemon: DaemonProcess) -> None:
        try:
            with remote(daemon) as store:
                while not stop.is_set():
                    store.collect()
                    collected[daemon.address] = collected.get(daemon.address, 0) + 1
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(daemons[n % 2], f"w{n}")) for n in range(4)] + [
        threading.Thread(target=collect, args=(daemon,)) for daemon in daemons
    ]
    for thread in threads:
        thread.start()
    stop.wait(8)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    assert sum(len(digests) for digests in written.values()) > 20
    # Each daemon collected again and again while the others wrote.
    assert len(collected) == 2
    assert min(collected.values()) >= 3, collected
    with remote(daemons[0]) as store:
        # The leases went with their blocks: one last collection leaves nothing.
        store.collect()
        assert list(store.walk()) == []
        with pytest.raises(errdefs.NotFound):
            store.info(digest_of(b"w0 1" * 100))

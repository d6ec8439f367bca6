"""Two daemons serving one cluster store: blobs in SeaweedFS (S3), records and locks in PostgreSQL.

Each test starts two `contentd serve --blobs s3://... --metadata postgresql://...`
daemons on a fresh bucket and schema, and shows that they are one store:
what one stores the other serves, a ref one daemon's writer holds is locked
on the other, and an ingest a killed daemon left resumes through the other.
Their registry faces, as behind a load balancer, take an upload's requests in
any order between them: each request leaves the upload for the next, anywhere.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.backends import ClusterURLs
from support.daemon import DaemonProcess, contentd_command, remote, running_pair
from support.registry_http import OCTET_STREAM, RegistryClient
from support.store_actor import content as actor_content
from support.store_actor import spawn as actor

from contentd import errdefs
from contentd.client import write_blob
from contentd.content import digest_of, open_store

pytestmark = pytest.mark.slow


@pytest.fixture
def daemons(tmp_path: Path, cluster: ClusterURLs) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    with running_pair(tmp_path, *cluster.flags()) as pair:
        yield pair


def test_what_one_daemon_stores_the_other_serves(
    daemons: tuple[DaemonProcess, DaemonProcess],
) -> None:
    first, second = daemons
    small, large = b"a small blob", actor_content(20 << 20)
    with remote(first) as a, remote(second) as b:
        small_digest = write_blob(a, "small", small, labels={"kind": "small"})
        large_digest = write_blob(a, "large", large)

        assert b.info(small_digest).labels == {"kind": "small"}
        with b.reader_at(large_digest) as reader:
            assert reader.size == len(large)
            assert reader.read_at(10, len(large) - 10) == large[-10:]
            assert hashlib.sha256(reader.read()).hexdigest() == large_digest.split(":")[1]
        assert sorted(info.digest for info in b.walk()) == sorted([small_digest, large_digest])

        b.update(small_digest, {"kind": "changed"}, ["labels.kind"])
        assert a.info(small_digest).labels == {"kind": "changed"}
        b.delete(small_digest)
        with pytest.raises(errdefs.NotFound):
            a.info(small_digest)


def test_a_ref_held_through_one_daemon_is_locked_on_the_other(
    daemons: tuple[DaemonProcess, DaemonProcess],
) -> None:
    first, second = daemons
    with remote(first) as a, remote(second) as b:
        writer = a.writer("held")
        try:
            writer.write(b"some bytes")
            with pytest.raises(errdefs.Unavailable) as refused:
                b.writer("held")
            assert refused.value.reason == "REF_LOCKED"
        finally:
            writer.close()
        # Freed with the writer: the other daemon takes it at once.
        b.writer("held").close()


def test_processes_racing_one_ref_across_daemons_store_one_blob(
    tmp_path: Path, cluster: ClusterURLs, daemons: tuple[DaemonProcess, DaemonProcess]
) -> None:
    size = 12 << 20
    go = tmp_path / "go"
    racers = [
        actor("race-daemon", daemon.address, "default", "same-ref", str(go), str(size))
        for daemon in daemons * 4
    ]
    go.touch()
    data = actor_content(size)
    for racer in racers:
        out, err = racer.communicate(timeout=180)
        assert racer.returncode == 0, err
        assert out.strip() == f"stored {digest_of(data)}"
    with open_store(blobs=cluster.blobs, metadata=cluster.metadata) as store:
        assert [info.digest for info in store.walk()] == [digest_of(data)]
        assert store.list_statuses() == []
        with store.reader_at(digest_of(data)) as reader:
            assert hashlib.sha256(reader.read()).hexdigest() == digest_of(data).split(":")[1]


def test_an_ingest_a_killed_daemon_left_resumes_through_the_other(
    daemons: tuple[DaemonProcess, DaemonProcess],
) -> None:
    first, second = daemons
    data = actor_content(40 << 20)
    digest = digest_of(data)
    with remote(first) as a:
        writer = a.writer("resumed", total=len(data), expected=digest)
        writer.write(data[: 30 << 20])
        assert writer.status().offset == 30 << 20
        first.stop(signal.SIGKILL)
        writer.close()
    with remote(second) as b:
        # The dead daemon's database session, and with it its lock, goes with it.
        deadline = time.monotonic() + 30
        while True:
            try:
                resumed = b.writer("resumed", total=len(data), expected=digest)
                break
            except errdefs.Unavailable as exc:
                if exc.reason != "REF_LOCKED" or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with resumed:
            offset = resumed.status().offset
            # What object storage holds: whole parts at least, never more than was sent.
            assert 0 < offset <= 30 << 20
            assert resumed.digest() == digest_of(data[:offset])
            resumed.write(data[offset:])
            resumed.commit(len(data), digest)
        with b.reader_at(digest) as reader:
            assert hashlib.sha256(reader.read()).hexdigest() == digest.split(":")[1]
        assert b.list_statuses() == []


def test_the_command_line_works_on_a_cluster_store_without_a_daemon(
    cluster: ClusterURLs, daemons: tuple[DaemonProcess, DaemonProcess]
) -> None:
    def contentd(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*contentd_command(), *cluster.flags(), *args],
            input=stdin,
            capture_output=True,
            check=False,
            timeout=120,
        )

    data = actor_content(9 << 20)
    ingested = contentd("ingest", "cli-ref", "--label", "from=cli", stdin=data)
    assert ingested.returncode == 0, ingested.stderr
    digest = ingested.stdout.decode().strip()
    assert digest == digest_of(data)

    listed = contentd("--json", "ls")
    assert [entry["digest"] for entry in json.loads(listed.stdout)] == [digest]
    assert contentd("get", digest).stdout == data
    verified = contentd("--json", "verify")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["checked"] == 1
    # What the command line stored, the daemons serve.
    with remote(daemons[1]) as b:
        assert b.info(digest).labels == {"from": "cli"}
    assert contentd("rm", digest).returncode == 0
    with remote(daemons[0]) as a:
        assert list(a.walk()) == []


# The registry faces


@pytest.fixture
def serving(tmp_path: Path, cluster: ClusterURLs) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    """Two daemons with registry faces on one cluster store."""
    http = ("--http", "127.0.0.1:0", "--log-level", "debug")
    with running_pair(tmp_path, *cluster.flags(), *http) as pair:
        yield pair


@pytest.fixture
def registries(
    serving: tuple[DaemonProcess, DaemonProcess],
) -> tuple[RegistryClient, RegistryClient]:
    return RegistryClient(serving[0].http_url), RegistryClient(serving[1].http_url)


def test_a_chunked_upload_goes_on_through_either_daemon(
    serving: tuple[DaemonProcess, DaemonProcess],
    registries: tuple[RegistryClient, RegistryClient],
) -> None:
    a, b = registries
    data = random.Random(31).randbytes(21 << 20)
    digest = digest_of(data)
    location = a.start_upload("team/app")
    # Chunks that end inside a part and across parts (of 8 MiB), to A and B in turn.
    cuts = [0, 3 << 20, (12 << 20) + 5, (17 << 20) + 3, 20 << 20]
    for number, (start, end) in enumerate(itertools.pairwise(cuts)):
        through = (a, b)[number % 2]
        answer = through.patch_chunk(location, data[start:end], start)
        assert answer.status == 202, answer
        assert answer.header("Range") == f"0-{end - 1}"
        location = answer.header("Location") or ""
        # The other daemon knows where the upload stands.
        status = (b, a)[number % 2].get(location)
        assert (status.status, status.header("Range")) == (204, f"0-{end - 1}")
    answer = b.complete_upload(location, digest, data[cuts[-1] :])
    assert answer.status == 201, answer
    assert answer.header("Docker-Content-Digest") == digest
    blob = a.get(f"/v2/team/app/blobs/{digest}")
    assert blob.status == 200, blob
    assert hashlib.sha256(blob.body).hexdigest() == digest.split(":")[1]
    assert a.get(location).status == 404
    assert b.get(location).status == 404
    # Every request reopened the upload from the hash state the one before kept.
    for daemon in serving:
        assert "re-reading it" not in daemon.logged()


def test_an_upload_started_on_one_daemon_is_put_whole_through_the_other(
    registries: tuple[RegistryClient, RegistryClient],
) -> None:
    a, b = registries
    data = random.Random(32).randbytes((9 << 20) + 123)
    digest = digest_of(data)
    location = a.start_upload("team/app")
    status = b.get(location)
    assert (status.status, status.header("Range")) == (204, "0-0")
    answer = b.complete_upload(location, digest, data)
    assert answer.status == 201, answer
    assert a.get(f"/v2/team/app/blobs/{digest}").body == data


def test_a_blob_pushed_in_one_request_to_one_daemon_is_served_by_the_other(
    registries: tuple[RegistryClient, RegistryClient],
) -> None:
    a, b = registries
    data = random.Random(33).randbytes(3 << 20)
    digest = a.push_blob("team/app", data)
    assert b.get(f"/v2/team/app/blobs/{digest}").body == data


def test_a_chunk_sent_while_another_daemon_writes_the_upload_is_416_with_its_range(
    registries: tuple[RegistryClient, RegistryClient],
) -> None:
    a, b = registries
    data = random.Random(34).randbytes(6 << 20)
    location = a.start_upload("team/app")
    assert a.patch_chunk(location, data[: 1 << 20], 0).status == 202
    go_on = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield data[1 << 20 : 3 << 20]
        assert go_on.wait(60)
        yield data[3 << 20 : 4 << 20]

    answers = []
    writing = threading.Thread(
        target=lambda: answers.append(
            a.request("PATCH", location, slow_body(), {"Content-Type": OCTET_STREAM})
        )
    )
    writing.start()
    try:
        # A holds the upload once its writer has taken the first bytes of the body.
        deadline = time.monotonic() + 30
        while a.get(location).header("Range") == f"0-{(1 << 20) - 1}":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = b.patch_chunk(location, data[4 << 20 :], 4 << 20)
        assert refused.status == 416, refused
        assert refused.error_code == "BLOB_UPLOAD_INVALID"
        assert refused.header("Location") == location
        assert refused.header("Range") is not None
    finally:
        go_on.set()
        writing.join(60)
    assert answers[0].status == 202, answers[0]
    assert answers[0].header("Range") == f"0-{(4 << 20) - 1}"
    assert b.get(location).header("Range") == f"0-{(4 << 20) - 1}"
    answer = b.complete_upload(location, digest_of(data), data[4 << 20 :])
    assert answer.status == 201, answer
    assert a.get(f"/v2/team/app/blobs/{digest_of(data)}").body == data

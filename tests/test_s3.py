"""What is particular to blob bytes in S3 (`contentd.content._s3`), beyond the contracts.

The backend and store contracts run on S3 blobs too (the "s3" kind of
support.backends); these tests cover what only object storage has: ingests
crossing many multipart parts and resumed by another daemon, conditional
publishes racing, ranged reads and what they cost in requests, an outage
and the recovery after it, and credentials kept out of every error.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.backends import open_backed_store, s3_url
from support.seaweedfs import BUCKET, SeaweedFS

from contentd import errdefs
from contentd.content import BackedStore, digest_of
from contentd.content._hashstate import restore, resumable
from contentd.content._records import ingest_key
from contentd.content._s3 import CHECKPOINT_PARTS, MIN_PART_SIZE, PARTS_IN_FLIGHT, S3Blobs

PART = MIN_PART_SIZE
KEY = "k" * 64


class NoTransaction:
    """Stands in for the metadata transaction a publish runs in (S3 registers nothing)."""

    def before_commit(self, key: Hashable, action: Callable[[], None]) -> None:
        action()


def new_blobs(**options: Any) -> S3Blobs:
    """S3 blobs under a prefix no other test uses."""
    endpoint = os.environ["CONTENTD_TEST_S3_ENDPOINT"]
    url = f"s3://{BUCKET}/s3-tests/{uuid.uuid4().hex}?endpoint={endpoint}&region=us-east-1"
    return S3Blobs.from_url(url, **{"part_size": PART, **options})


class Requests:
    """Counts the S3 requests a client sends, by operation, and notes the keys they name."""

    def __init__(self, blobs: S3Blobs) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.keys: list[tuple[str, str]] = []
        blobs._client.meta.events.register("before-send.s3.*", self._count)
        blobs._client.meta.events.register("before-parameter-build.s3.*", self._note)

    def _count(self, event_name: str, **_: Any) -> None:
        self.counts[event_name.rsplit(".", 1)[-1]] += 1

    def _note(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.keys.append((model.name, str(params.get("Key", ""))))

    def named(self, operation: str, key: str) -> int:
        """How many `operation` requests named `key`."""
        return self.keys.count((operation, key))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def reset(self) -> None:
        self.counts.clear()
        self.keys.clear()


@pytest.fixture
def blobs(seaweedfs: SeaweedFS) -> Iterator[S3Blobs]:
    opened = new_blobs()
    yield opened
    opened.close()


@pytest.fixture
def store(seaweedfs: SeaweedFS, tmp_path: Path) -> Iterator[BackedStore]:
    opened = open_backed_store("s3", tmp_path / "store")
    yield opened
    opened.close()


def odd_appends(data: bytes, seed: int = 7) -> Iterator[bytes]:
    """`data` in pieces of odd, varied sizes, a few larger than a part."""
    chance = random.Random(seed)
    offset = 0
    while offset < len(data):
        size = chance.choice([1, 4093, 65_537, 999_983, PART + 12_345])
        yield data[offset : offset + size]
        offset += size


def read_whole(blobs: S3Blobs, digest: str, size: int) -> bytes:
    reader = blobs.open_blob(digest, size)
    assert reader is not None
    with reader:
        return reader.read()


# Ingests


def test_a_large_ingest_resumed_by_another_daemon_commits_byte_identical(
    blobs: S3Blobs,
) -> None:
    data = random.Random(1).randbytes(4 * PART + 777_777)
    synced_at = 2 * PART + 333_333
    first = blobs.open_ingest(KEY, "ingest under test")
    for piece in odd_appends(data[:synced_at]):
        first.append(piece)
    first.sync()
    first.append(data[synced_at : synced_at + 4096])  # never synced: a crash may lose it
    # The first daemon dies here (no close); it is not asked anything again.
    other = new_blobs()
    other.prefix = blobs.prefix
    resumed = other.open_ingest(KEY, "ingest under test")
    assert resumed.size == synced_at
    assert b"".join(resumed.chunks()) == data[:synced_at]
    for piece in odd_appends(data[synced_at:], seed=11):
        resumed.append(piece)
    resumed.sync()
    resumed.seal()
    digest = digest_of(data)
    assert other.publish(KEY, digest, NoTransaction())  # type: ignore[arg-type]
    resumed.close()
    assert read_whole(other, digest, len(data)) == data
    assert other.stat(digest) == len(data)
    assert other.ingest_size(KEY) is None
    assert KEY not in other.ingest_keys()
    other.close()


def test_a_large_ingest_streams_parts_and_publishes_with_few_requests(blobs: S3Blobs) -> None:
    data = random.Random(2).randbytes(3 * PART + 1000)
    requests = Requests(blobs)
    ingest = blobs.open_ingest(KEY, "ingest under test")
    for piece in odd_appends(data):
        ingest.append(piece)
    ingest.sync()
    ingest.seal()
    assert requests.counts["UploadPart"] == 3
    requests.reset()
    assert blobs.publish(KEY, digest_of(data), NoTransaction())  # type: ignore[arg-type]
    ingest.close()
    # The tail as the last part, the upload completed, copied to the digest's key,
    # the ingest's objects deleted.
    assert dict(requests.counts) == {
        "UploadPart": 1,
        "CompleteMultipartUpload": 1,
        "CopyObject": 1,
        "DeleteObjects": 1,
    }
    assert read_whole(blobs, digest_of(data), len(data)) == data


def test_a_blob_larger_than_one_copy_is_published_and_set_aside_in_parts(
    seaweedfs: SeaweedFS,
) -> None:
    blobs = new_blobs(copy_limit=PART, copy_part_size=PART)
    data = random.Random(3).randbytes(2 * PART + 5)
    digest = digest_of(data)
    ingest = blobs.open_ingest(KEY, "ingest under test")
    ingest.append(data)
    ingest.seal()
    assert blobs.publish(KEY, digest, NoTransaction())  # type: ignore[arg-type]
    ingest.close()
    assert read_whole(blobs, digest, len(data)) == data
    token = blobs.set_aside(digest)
    assert token is not None
    assert blobs.stat(digest) is None
    assert blobs.restore(token, digest)
    assert read_whole(blobs, digest, len(data)) == data
    blobs.close()


def test_a_failed_append_leaves_the_bytes_as_they_were(
    blobs: S3Blobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest = blobs.open_ingest(KEY, "ingest under test")
    ingest.append(b"kept")
    upload_part = blobs._client.upload_part

    def refuse(**_: Any) -> None:
        raise errdefs.Unavailable("object storage unavailable while writing")

    monkeypatch.setattr(blobs._client, "upload_part", refuse)
    # The part an append fills goes up in the background: the append takes the bytes, held.
    taken = b"kept" + b"x" * (PART + 1)
    ingest.append(taken[4:])
    assert ingest.size == len(taken)
    # An append filling as many parts as go up at once must wait for that one, which
    # fails again: the append takes nothing, not even the parts that would have fitted.
    with pytest.raises(errdefs.Unavailable):
        ingest.append(b"z" * (PARTS_IN_FLIGHT * PART))
    assert ingest.size == len(taken)
    with pytest.raises(errdefs.Unavailable):
        ingest.sync()
    # S3 is back: the held parts go up, and every byte taken is there.
    monkeypatch.setattr(blobs._client, "upload_part", upload_part)
    ingest.sync()
    assert (ingest.size, b"".join(ingest.chunks())) == (len(taken), taken)
    ingest.close()


def test_a_sealed_ingest_refuses_appends(blobs: S3Blobs) -> None:
    ingest = blobs.open_ingest(KEY, "ingest under test")
    ingest.append(b"sealed")
    ingest.seal()
    with pytest.raises(errdefs.FailedPrecondition):
        ingest.append(b"more")
    ingest.unseal()
    ingest.append(b" then more")
    assert b"".join(ingest.chunks()) == b"sealed then more"
    ingest.close()


# Resuming from the hash state kept in the manifest


def s3_of(store: BackedStore) -> S3Blobs:
    blobs = store._blobs
    assert isinstance(blobs, S3Blobs)
    return blobs


@pytest.fixture
def daemons(seaweedfs: SeaweedFS, tmp_path: Path) -> Iterator[tuple[BackedStore, BackedStore]]:
    """Two stores on one place, each with its own S3 client: as two daemons would be."""
    first = open_backed_store("s3", tmp_path / "store")
    second = open_backed_store("s3", tmp_path / "store")
    yield first, second
    second.close()
    first.close()


def write_and_close(store: BackedStore, ref: str, data: bytes, **options: Any) -> None:
    with store.writer(ref, **options) as writer:
        for piece in odd_appends(data):
            writer.write(piece)


def tamper_manifest(store: BackedStore, ref: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the ingest's manifest in S3 with `change` applied to its header."""
    blobs = s3_of(store)
    key = blobs._manifest_key(ingest_key(store.namespace, ref))
    found = blobs._client.get_object(Bucket=blobs.bucket, Key=key)
    header, _, tail = found["Body"].read().partition(b"\n")
    fields = json.loads(header)
    change(fields)
    blobs._client.put_object(
        Bucket=blobs.bucket,
        Key=key,
        Body=json.dumps(fields).encode() + b"\n" + tail,
        Metadata=found["Metadata"],
    )


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_a_writer_resumed_by_another_daemon_reads_none_of_the_ingest(
    daemons: tuple[BackedStore, BackedStore], algorithm: str
) -> None:
    first, second = daemons
    data = random.Random(12).randbytes(3 * PART + 777_777)
    digest = digest_of(data, algorithm)
    cut = 2 * PART + 12_345  # past two part boundaries, inside the tail
    write_and_close(first, "resumed", data[:cut], total=len(data), expected=digest)
    blobs = s3_of(second)
    data_key = blobs.data_key(ingest_key(second.namespace, "resumed"))
    requests = Requests(blobs)
    with second.writer("resumed", total=len(data), expected=digest) as writer:
        # The manifest, and whether its upload is still open: nothing else.
        assert dict(requests.counts) == {"GetObject": 1, "ListParts": 1}
        assert (writer.offset, writer.digest()) == (cut, digest_of(data[:cut], algorithm))
        writer.write(data[cut:])
        assert writer.commit(len(data), digest) == digest
    # The ingest's bytes were never read back, nor completed or copied to be.
    assert requests.named("GetObject", data_key) == 0
    assert requests.counts["UploadPartCopy"] == 0
    assert requests.counts["CompleteMultipartUpload"] == 1  # the publish's own
    assert read_whole(blobs, digest, len(data)) == data


def test_a_writer_that_dies_mid_ingest_loses_a_few_parts_and_resumes_reading_nothing(
    daemons: tuple[BackedStore, BackedStore],
) -> None:
    first, second = daemons
    data = random.Random(14).randbytes(12 * PART)
    digest = digest_of(data)
    step = 1 << 20  # as containerd's clients write: aligned with the parts
    dying = first.writer("dying", total=len(data), expected=digest)
    sent = 10 * PART + 3 * step
    for offset in range(0, sent, step):
        dying.write(data[offset : offset + step])
    # The daemon dies here: no close, no sync, only its lock goes (with its process).
    # What it saved every few parts stands.
    dying._lock.release()
    blobs = s3_of(second)
    data_key = blobs.data_key(ingest_key(second.namespace, "dying"))
    requests = Requests(blobs)
    with second.writer("dying", total=len(data), expected=digest) as resumed:
        lost = sent - resumed.offset
        assert 0 <= lost <= (CHECKPOINT_PARTS + PARTS_IN_FLIGHT + 1) * PART
        assert resumed.offset >= 4 * PART
        assert resumed.digest() == digest_of(data[: resumed.offset])
        resumed.write(data[resumed.offset :])
        assert resumed.commit(len(data), digest) == digest
    assert requests.named("GetObject", data_key) == 0
    assert read_whole(blobs, digest, len(data)) == data


def test_a_resumed_writer_resumes_again_from_its_own_state(
    daemons: tuple[BackedStore, BackedStore],
) -> None:
    first, second = daemons
    data = random.Random(13).randbytes(2 * PART + 99)
    pieces = [data[: PART // 2], data[PART // 2 : PART + 7], data[PART + 7 :]]
    requests = [Requests(s3_of(first)), Requests(s3_of(second))]
    data_key = s3_of(first).data_key(ingest_key(first.namespace, "hopping"))
    for number, piece in enumerate(pieces):
        with (first, second)[number % 2].writer("hopping") as writer:
            assert writer.offset == sum(map(len, pieces[:number]))
            writer.write(piece)
            if number == len(pieces) - 1:
                writer.commit(len(data), digest_of(data))
    assert all(counted.named("GetObject", data_key) == 0 for counted in requests)
    assert read_whole(s3_of(first), digest_of(data), len(data)) == data


def _damage_state(fields: dict[str, Any]) -> None:
    offset, state = fields["hash"]
    raw = bytearray(base64.b64decode(state))
    raw[len(raw) // 2] ^= 0x40
    fields["hash"] = [offset, base64.b64encode(raw).decode()]


def _make_stale(fields: dict[str, Any]) -> None:
    fields["hash"][0] -= 1


def _make_unreadable(fields: dict[str, Any]) -> None:
    fields["hash"] = [fields["hash"][0], "not base64!"]


def _remove(fields: dict[str, Any]) -> None:
    del fields["hash"]  # as manifests written before hash states were


@pytest.mark.parametrize(
    "spoil",
    [_damage_state, _make_stale, _make_unreadable, _remove],
    ids=["damaged", "stale", "unreadable", "absent"],
)
def test_an_unusable_state_falls_back_to_re_reading_and_still_verifies(
    daemons: tuple[BackedStore, BackedStore], spoil: Callable[[dict[str, Any]], None]
) -> None:
    first, second = daemons
    data = random.Random(14).randbytes(2 * PART + 4321)
    cut = PART + 1234
    write_and_close(first, "spoiled", data[:cut])
    tamper_manifest(first, "spoiled", spoil)
    blobs = s3_of(second)
    data_key = blobs.data_key(ingest_key(second.namespace, "spoiled"))
    requests = Requests(blobs)
    with second.writer("spoiled") as writer:
        assert requests.named("GetObject", data_key) == 1  # the bytes, read back once
        assert (writer.offset, writer.digest()) == (cut, digest_of(data[:cut]))
    # Closing saved the rebuilt state: the next resume reads nothing again.
    requests.reset()
    with first.writer("spoiled") as writer:
        writer.write(data[cut:])
        assert writer.commit(len(data), digest_of(data)) == digest_of(data)
    assert requests.named("GetObject", data_key) == 0
    assert read_whole(blobs, digest_of(data), len(data)) == data


def test_a_state_of_another_algorithm_is_not_used(
    daemons: tuple[BackedStore, BackedStore],
) -> None:
    first, second = daemons
    data = random.Random(15).randbytes(PART + 5000)
    write_and_close(first, "changed", data[:PART])  # sha256, the writer's default
    digest = digest_of(data, "sha512")
    with second.writer("changed", expected=digest) as writer:
        assert writer.digest() == digest_of(data[:PART], "sha512")
        writer.write(data[PART:])
        assert writer.commit(len(data), digest) == digest


def test_a_manifest_saved_within_an_append_holds_the_state_of_exactly_its_bytes(
    blobs: S3Blobs,
) -> None:
    data = random.Random(16).randbytes(3 * PART)
    hasher = resumable("sha256")
    ingest = blobs.open_ingest(KEY, "ingest under test")
    ingest.keep_hash(hasher.state)
    for piece in (data[:1000], data[1000:]):  # the second starts the upload, saving a manifest
        ingest.append(piece)
        hasher.update(piece)
    # The writer dies here: what the manifest holds is what another process finds.
    other = new_blobs()
    other.prefix = blobs.prefix
    found = other.open_ingest(KEY, "ingest under test")
    saved = found.saved_hash()
    assert saved is not None
    assert saved[0] == found.size == 1000
    assert restore(saved[1], "sha256", 1000).hexdigest() == digest_of(data[:1000]).split(":")[1]
    found.close()
    other.close()


# Small blobs


@pytest.mark.parametrize("data", [b"", b"x"], ids=["empty", "one-byte"])
def test_tiny_blobs_are_stored_and_read_back(store: BackedStore, data: bytes) -> None:
    digest = store.put("tiny", data)
    with store.reader_at(digest) as reader:
        assert (reader.size, reader.read()) == (len(data), data)
    with store.writer("written", total=len(data)) as writer:
        writer.write(data)
        with pytest.raises(errdefs.AlreadyExists):
            writer.commit(len(data), digest)


def test_a_put_publishes_with_one_put_object(store: BackedStore) -> None:
    blobs = store._blobs
    assert isinstance(blobs, S3Blobs)
    requests = Requests(blobs)
    data = os.urandom(10_000)
    store.put("small", data)
    # The PUT of the blob itself, and one look for what an earlier ingest left on the ref.
    assert dict(requests.counts) == {"PutObject": 1, "GetObject": 1}


def test_a_writer_commits_a_small_blob_with_few_requests(store: BackedStore) -> None:
    blobs = store._blobs
    assert isinstance(blobs, S3Blobs)
    requests = Requests(blobs)
    data = os.urandom(10_000)
    with store.writer("small", total=len(data)) as writer:
        writer.write(data)
        writer.commit(len(data), digest_of(data))
    assert requests.total <= 6, requests.counts


# Publishing


@pytest.mark.parametrize("size", [1000, PART + 1000], ids=["small", "multipart"])
def test_of_two_publishers_racing_one_digest_one_wins_and_the_blob_stays_whole(
    blobs: S3Blobs, size: int
) -> None:
    data = random.Random(4).randbytes(size)
    digest = digest_of(data)
    other = new_blobs()
    other.prefix = blobs.prefix
    ingests = []
    for backend, key in ((blobs, "a" * 64), (other, "b" * 64)):
        ingest = backend.open_ingest(key, "racing ingest")
        ingest.append(data)
        ingest.sync()
        ingest.seal()
        ingests.append((backend, key, ingest))
    barrier = threading.Barrier(2)
    outcomes: list[bool] = []

    def publish(backend: S3Blobs, key: str) -> None:
        barrier.wait()
        outcomes.append(backend.publish(key, digest, NoTransaction()))  # type: ignore[arg-type]

    threads = [threading.Thread(target=publish, args=(b, k)) for b, k, _ in ingests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [False, True]
    assert read_whole(blobs, digest, size) == data
    for backend, key, ingest in ingests:
        ingest.close()
        backend.remove_ingest(key)
    other.close()


# Reading


@pytest.fixture
def stored(blobs: S3Blobs) -> tuple[str, bytes]:
    data = random.Random(5).randbytes(3 * (1 << 20) + 17)
    blobs.store_ingest(KEY, "stored", data)
    digest = digest_of(data)
    assert blobs.publish(KEY, digest, NoTransaction())  # type: ignore[arg-type]
    return digest, data


def test_sequential_reads_stream_one_get(blobs: S3Blobs, stored: tuple[str, bytes]) -> None:
    digest, data = stored
    requests = Requests(blobs)
    reader = blobs.open_blob(digest, len(data))
    assert reader is not None
    with reader:
        pieces = []
        while piece := reader.read(65_537):
            pieces.append(piece)
    assert b"".join(pieces) == data
    assert dict(requests.counts) == {"GetObject": 1}


def test_random_reads_get_their_ranges(blobs: S3Blobs, stored: tuple[str, bytes]) -> None:
    digest, data = stored
    chance = random.Random(6)
    reader = blobs.open_blob(digest, len(data))
    assert reader is not None
    with reader:
        for _ in range(20):
            offset = chance.randrange(len(data))
            size = chance.randrange(1, 300_000)
            assert reader.read_at(size, offset) == data[offset : offset + size]
        assert reader.read_at(10, len(data)) == b""
        reader.seek(1000)
        assert reader.read(5000) + reader.read(5000) == data[1000:11000]


def test_a_read_after_a_random_one_streams_on_from_there(
    blobs: S3Blobs, stored: tuple[str, bytes]
) -> None:
    digest, data = stored
    reader = blobs.open_blob(digest, len(data))
    assert reader is not None
    requests = Requests(blobs)
    with reader:
        reader.seek(500_000)
        pieces = [reader.read(1 << 16) for _ in range(20)]
    assert b"".join(pieces) == data[500_000 : 500_000 + 20 * (1 << 16)]
    assert requests.counts["GetObject"] == 2  # the first range, then one stream


# Outages and errors


def test_an_outage_is_unavailable_within_seconds_and_recovered_from(
    seaweedfs: SeaweedFS, store: BackedStore
) -> None:
    blobs = store._blobs
    assert isinstance(blobs, S3Blobs)
    before = store.put("before", b"stored before the outage")
    large = random.Random(8).randbytes(PART + 10)
    writer = store.writer("large", total=len(large))
    writer.write(large)  # its first part is uploaded
    seaweedfs.stop()
    try:
        attempts: list[Callable[[], object]] = [
            lambda: store.put("during", b"stored during the outage"),
            lambda: store.reader_at(before).read(),
            lambda: blobs.stat(before),
            lambda: list(blobs.digests()),
            lambda: store.writer("another"),
            lambda: writer.commit(len(large), digest_of(large)),
        ]
        for attempt in attempts:
            started = time.monotonic()
            with pytest.raises(errdefs.Unavailable) as failed:
                attempt()
            assert time.monotonic() - started < 5
            assert "object storage unavailable while" in str(failed.value)
    finally:
        seaweedfs.start()
    assert set(blobs.digests()) == {before}
    assert store.put("after", b"stored after the outage") == digest_of(b"stored after the outage")
    with store.reader_at(before) as reader:
        assert reader.read() == b"stored before the outage"
    with store.writer("large", total=len(large)) as resumed:
        resumed.write(large[resumed.offset :])
        resumed.commit(len(large), digest_of(large))
    with store.reader_at(digest_of(large)) as reader:
        assert reader.read() == large


def test_a_missing_bucket_is_named(seaweedfs: SeaweedFS) -> None:
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}?endpoint={seaweedfs.endpoint}"
    with pytest.raises(errdefs.FailedPrecondition, match="no-such-bucket-"):
        S3Blobs.from_url(url)


def test_credentials_never_appear_in_errors_or_logs(
    seaweedfs: SeaweedFS,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="contentd")
    secret = "wrong-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with pytest.raises(errdefs.PermissionDenied) as refused:
        S3Blobs.from_url(s3_url(tmp_path))
    seaweedfs.stop()
    try:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)
        with pytest.raises(errdefs.Unavailable) as unavailable:
            S3Blobs.from_url(s3_url(tmp_path))
    finally:
        seaweedfs.start()
    for text in (str(refused.value), str(unavailable.value), caplog.text):
        assert secret not in text
        assert seaweedfs.secret_key not in text
        assert seaweedfs.access_key not in text


def test_an_http_endpoint_works_with_a_ca_bundle_set(
    seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    blobs = new_blobs()
    assert blobs.stat(digest_of(b"nothing")) is None
    blobs.close()


def test_a_url_with_unknown_parameters_is_invalid() -> None:
    with pytest.raises(errdefs.InvalidArgument):
        S3Blobs.from_url("s3://bucket/prefix?endpoint=http://127.0.0.1:1&colour=blue")
    with pytest.raises(errdefs.InvalidArgument):
        S3Blobs.from_url("https://bucket/prefix")

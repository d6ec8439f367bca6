"""The backend contracts: what every blob, metadata and lock backend promises the store's rules.

The rules (`contentd.content._rules`) rely on these promises and nothing
else, so every backend kind in `support.backends.KINDS` must keep them: today
the local one (files, SQLite, flock). The store's own behaviour over each
kind is tested by tests/test_store_contract.py, which runs there too.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import backends as support_backends
from support.backends import KINDS, open_backends

from contentd import errdefs
from contentd.content import (
    Backends,
    ContentRecord,
    IngestRecord,
    MetadataTransaction,
    Referrer,
    digest_of,
)
from contentd.content._hashstate import restore, resumable

DATA = b"the bytes of a blob" * 100
DIGEST = digest_of(DATA)
KEY = "a" * 64


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def place(tmp_path: Path) -> Path:
    return tmp_path / "backends"


@pytest.fixture
def opened(kind: str, place: Path) -> Iterator[Backends]:
    backends = open_backends(kind, place)
    yield backends
    backends.close()


def publish(backends: Backends, key: str, data: bytes, digest: str) -> bool:
    """Write, seal and publish `data` as an ingest would commit it."""
    ingest = backends.blobs.open_ingest(key, "ingest under test")
    ingest.append(data)
    ingest.sync()
    ingest.seal()
    ingest.close()
    with backends.metadata.write("publishing") as tx:
        return backends.blobs.publish(key, digest, tx)


def fail_inside(backends: Backends, change: Callable[[MetadataTransaction], object]) -> None:
    """Make `change` in a write transaction that then fails."""
    with backends.metadata.write("failing") as tx:
        change(tx)
        raise RuntimeError("the transaction fails")


def read_blob(backends: Backends, digest: str, size: int) -> bytes:
    reader = backends.blobs.open_blob(digest, size)
    assert reader is not None
    with reader:
        return reader.read()


# Blobs


def test_published_bytes_read_back_whole(opened: Backends) -> None:
    assert publish(opened, KEY, DATA, DIGEST)
    assert opened.blobs.stat(DIGEST) == len(DATA)
    assert read_blob(opened, DIGEST, len(DATA)) == DATA
    assert opened.blobs.ingest_size(KEY) is None  # the ingest's bytes became the blob


def test_publishing_a_published_blob_keeps_its_bytes_and_the_ingests(opened: Backends) -> None:
    publish(opened, KEY, DATA, DIGEST)
    other_key = "b" * 64
    assert not publish(opened, other_key, DATA, DIGEST)
    assert read_blob(opened, DIGEST, len(DATA)) == DATA
    assert opened.blobs.ingest_size(other_key) is not None  # left for the caller to remove


def test_a_blob_with_no_bytes_is_absent(opened: Backends) -> None:
    assert opened.blobs.stat(DIGEST) is None
    assert opened.blobs.open_blob(DIGEST, len(DATA)) is None


def test_publishing_in_a_transaction_that_fails_runs_no_commit_action(opened: Backends) -> None:
    ran: list[str] = []
    with pytest.raises(RuntimeError):
        fail_inside(opened, lambda tx: tx.before_commit("key", lambda: ran.append("action")))
    assert ran == []
    with opened.metadata.write("succeeding") as tx:
        tx.before_commit("key", lambda: ran.append("first"))
        tx.before_commit("key", lambda: ran.append("second"))
    assert ran == ["first"]


def test_set_aside_bytes_are_out_of_sight_until_dropped_or_restored(opened: Backends) -> None:
    publish(opened, KEY, DATA, DIGEST)
    token = opened.blobs.set_aside(DIGEST)
    assert token is not None
    assert opened.blobs.stat(DIGEST) is None
    assert opened.blobs.set_aside_entries() == [(token, DIGEST)]
    assert opened.blobs.restore(token, DIGEST)
    assert read_blob(opened, DIGEST, len(DATA)) == DATA
    assert opened.blobs.set_aside_entries() == []
    token = opened.blobs.set_aside(DIGEST)
    assert token is not None
    opened.blobs.drop(token)
    assert opened.blobs.set_aside_entries() == []
    assert not opened.blobs.restore(token, DIGEST)
    assert opened.blobs.stat(DIGEST) is None


def test_setting_aside_a_blob_with_no_bytes_gives_no_token(opened: Backends) -> None:
    assert opened.blobs.set_aside(DIGEST) is None


def test_ingest_bytes_append_read_back_and_truncate(opened: Backends) -> None:
    ingest = opened.blobs.open_ingest(KEY, "ingest under test")
    ingest.append(b"first ")
    ingest.append(memoryview(b"second"))
    assert ingest.size == 12
    assert b"".join(ingest.chunks()) == b"first second"
    ingest.truncate()
    assert ingest.size == 0
    ingest.append(b"again")
    ingest.close()
    reopened = opened.blobs.open_ingest(KEY, "ingest under test")
    assert (reopened.size, b"".join(reopened.chunks())) == (5, b"again")
    reopened.append(b" and more")
    reopened.close()
    size = opened.blobs.ingest_size(KEY)
    assert size is not None
    assert size[0] == 14
    assert KEY in opened.blobs.ingest_keys()


def test_reopening_with_truncate_starts_empty(opened: Backends) -> None:
    ingest = opened.blobs.open_ingest(KEY, "ingest under test")
    ingest.append(b"old bytes")
    ingest.close()
    fresh = opened.blobs.open_ingest(KEY, "ingest under test", truncate=True)
    assert fresh.size == 0
    fresh.close()


def test_an_ingest_stored_in_one_step_is_published_like_a_written_one(opened: Backends) -> None:
    ingest = opened.blobs.open_ingest(KEY, "ingest under test")
    ingest.append(b"bytes a put replaces")
    ingest.close()
    opened.blobs.store_ingest(KEY, DIGEST, DATA)
    assert opened.blobs.ingest_size(KEY) is not None
    with opened.metadata.write("publishing") as tx:
        assert opened.blobs.publish(KEY, DIGEST, tx)
    assert read_blob(opened, DIGEST, len(DATA)) == DATA


def test_a_sealed_ingest_unsealed_takes_appends_again(opened: Backends) -> None:
    ingest = opened.blobs.open_ingest(KEY, "ingest under test")
    ingest.append(b"sealed")
    ingest.seal()
    ingest.close()
    opened.blobs.unseal_ingest(KEY)
    reopened = opened.blobs.open_ingest(KEY, "ingest under test")
    reopened.append(b" then resumed")
    assert b"".join(reopened.chunks()) == b"sealed then resumed"
    reopened.close()


def test_a_hash_state_kept_with_an_ingest_is_that_of_its_bytes_as_reopened(
    opened: Backends,
) -> None:
    hashers = [resumable("sha256")]
    ingest = opened.blobs.open_ingest(KEY, "ingest under test")

    def writers_state() -> bytes | None:
        return hashers[-1].state()

    ingest.keep_hash(writers_state)
    for piece in (b"synced ", b"then truncated"):
        ingest.append(piece)
        hashers[-1].update(piece)
        ingest.sync()
    hashers.append(resumable("sha256"))  # as a writer's hash starts over before a truncate
    ingest.truncate()
    ingest.append(b"after a truncate")
    hashers[-1].update(b"after a truncate")
    ingest.close()
    reopened = opened.blobs.open_ingest(KEY, "ingest under test")
    saved = reopened.saved_hash()
    # A backend may keep none (the writer re-reads); one it keeps describes the bytes.
    if saved is not None:
        assert saved[0] == reopened.size
        resumed = restore(saved[1], "sha256", saved[0])
        assert resumed.hexdigest() == hashlib.sha256(b"".join(reopened.chunks())).hexdigest()
    reopened.close()


def test_removed_ingests_are_gone(opened: Backends) -> None:
    opened.blobs.open_ingest(KEY, "ingest under test").close()
    opened.blobs.remove_ingest(KEY)
    opened.blobs.remove_ingest(KEY)  # removing what is gone is no error
    assert opened.blobs.ingest_size(KEY) is None
    assert KEY not in opened.blobs.ingest_keys()


# Metadata


def record(digest: str = DIGEST, size: int = len(DATA), **labels: str) -> ContentRecord:
    return ContentRecord(digest, size, 1_000, 2_000, dict(labels))


def test_a_write_transaction_commits_together_or_not_at_all(opened: Backends) -> None:
    with pytest.raises(RuntimeError):
        fail_inside(opened, lambda tx: tx.insert_content("ns", record()))
    with opened.metadata.read("reading") as tx:
        assert tx.content("ns", DIGEST) is None
    with opened.metadata.write("succeeding") as tx:
        tx.ensure_namespace("ns", 1)
        tx.insert_content("ns", record(team="a"))
    with opened.metadata.read("reading") as tx:
        assert tx.content("ns", DIGEST) == record(team="a")
        assert tx.content("other", DIGEST) is None
        assert tx.committed_anywhere(DIGEST) == record(team="a")


def test_a_failing_body_in_a_group_commit_undoes_only_itself(opened: Backends) -> None:
    barrier = threading.Barrier(8)
    outcomes: dict[int, str] = {}

    def body(number: int) -> None:
        barrier.wait()

        def change(tx: MetadataTransaction) -> None:
            tx.insert_content("ns", record(digest_of(str(number).encode())))
            if number % 2:
                raise errdefs.InvalidArgument(f"body {number} fails")

        try:
            opened.metadata.commit("committing", change)
        except errdefs.InvalidArgument:
            outcomes[number] = "failed"
        else:
            outcomes[number] = "committed"

    threads = [threading.Thread(target=body, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with opened.metadata.read("reading") as tx:
        for number in range(8):
            found = tx.content("ns", digest_of(str(number).encode())) is not None
            assert found == (outcomes[number] == "committed"), number
    assert sorted(outcomes.values()).count("committed") == 4


def test_content_pages_come_in_digest_order_and_narrow_by_labels(opened: Backends) -> None:
    digests = sorted(digest_of(bytes([n])) for n in range(5))
    with opened.metadata.write("filling") as tx:
        for number, digest in enumerate(digests):
            tx.insert_content("ns", record(digest, 1, team="a" if number % 2 else "b"))
    with opened.metadata.read("paging") as tx:
        first = tx.content_page("ns", "", 2)
        rest = tx.content_page("ns", first[-1].digest, 10)
        narrowed = tx.content_page("ns", "", 10, [{"team": "a"}])
    assert [r.digest for r in first + rest] == digests
    # A backend may return more than the labels select; never fewer.
    assert {digests[1], digests[3]} <= {r.digest for r in narrowed}


def test_labels_and_deletes_change_one_namespace(opened: Backends) -> None:
    with opened.metadata.write("filling") as tx:
        tx.insert_content("one", record(team="a"))
        tx.insert_content("two", record(team="b"))
        tx.set_labels("one", DIGEST, {"team": "c"}, 3_000)
    with opened.metadata.write("deleting") as tx:
        assert tx.delete_content("two", DIGEST)
        assert not tx.delete_content("two", DIGEST)
    with opened.metadata.read("reading") as tx:
        found = tx.content("one", DIGEST)
        assert found is not None
        assert (found.labels, found.updated_at) == ({"team": "c"}, 3_000)
        assert tx.records_everywhere(DIGEST) == [("one", found)]
        assert tx.recorded_blobs("", 10) == [(DIGEST, len(DATA))]


def test_a_blob_is_referenced_while_a_namespace_or_an_ingest_needs_it(opened: Backends) -> None:
    ingest = IngestRecord("ns", "ref", KEY, len(DATA), DIGEST, 1, 1, DIGEST)
    with opened.metadata.write("filling") as tx:
        tx.insert_content("one", record())
        tx.insert_ingest(ingest)
    with opened.metadata.write("deleting") as tx:
        tx.delete_content("one", DIGEST)
        assert tx.blob_referenced(DIGEST)  # the ingest starts from it
        tx.delete_ingest("ns", "ref")
        assert not tx.blob_referenced(DIGEST)


def test_forgetting_a_blob_restarts_the_ingests_that_start_from_it(opened: Backends) -> None:
    ingest = IngestRecord("ns", "ref", KEY, len(DATA), DIGEST, 1, 1, DIGEST)
    with opened.metadata.write("filling") as tx:
        tx.insert_content("one", record())
        tx.insert_ingest(ingest)
    with opened.metadata.write("forgetting") as tx:
        tx.forget_blob(DIGEST)
    with opened.metadata.read("reading") as tx:
        assert tx.committed_anywhere(DIGEST) is None
        found = tx.ingest("ns", "ref")
        assert found is not None
        assert found.base is None


def test_ingest_records_round_trip_and_update(opened: Backends) -> None:
    ingest = IngestRecord("ns", "ref", KEY, 0, "", 1, 1, None)
    with opened.metadata.write("filling") as tx:
        tx.insert_ingest(ingest)
        tx.update_ingest("ns", "ref", total=10, expected=DIGEST, updated_at=5, base=None)
    with opened.metadata.read("reading") as tx:
        assert tx.ingest("ns", "ref") == IngestRecord("ns", "ref", KEY, 10, DIGEST, 1, 5, None)
        assert tx.ingests("ns") == tx.all_ingests()
        assert tx.ingests("other") == []


def test_a_writer_waiting_past_the_busy_bound_is_unavailable(kind: str, place: Path) -> None:
    holder = open_backends(kind, place)
    waiter = open_backends(kind, place, busy_timeout=0.2)
    release = threading.Event()
    holding = threading.Event()

    def hold() -> None:
        with holder.metadata.write("holding"):
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        holding.wait(10)
        started = time.monotonic()
        with pytest.raises(errdefs.Unavailable) as refused, waiter.metadata.write("waiting"):
            pass
        assert refused.value.reason == "STORE_BUSY"
        assert time.monotonic() - started < 5
    finally:
        release.set()
        thread.join()
        holder.close()
        waiter.close()


def test_a_writer_waits_for_another_writer_that_finishes_within_the_busy_bound(
    kind: str, place: Path
) -> None:
    holder = open_backends(kind, place)
    waiter = open_backends(kind, place)
    holding = threading.Event()

    def hold() -> None:
        with holder.metadata.write("holding") as tx:
            tx.ensure_namespace("held", 1)
            holding.set()
            time.sleep(0.3)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        holding.wait(10)
        with waiter.metadata.write("waiting") as tx:
            # It ran after the holder committed: it sees the holder's change.
            assert tx.namespace_labels("held") == {}
            tx.ensure_namespace("waited", 2)
        with waiter.metadata.read("reading") as tx:
            assert [name for name, _ in tx.namespaces()] == ["held", "waited"]
    finally:
        thread.join()
        holder.close()
        waiter.close()


def test_registry_records_follow_their_manifests(opened: Backends) -> None:
    subject = digest_of(b"subject")
    referrer = Referrer(subject, {"digest": DIGEST, "mediaType": "m", "size": 1}, "sbom")
    with opened.metadata.write("pushing") as tx:
        tx.link_blob("ns", "repo", subject)
        tx.put_manifest("ns", "repo", DIGEST, "application/json", "v1", referrer)
        tx.put_manifest("ns", "repo", DIGEST, "application/json", "Latest", None)
    with opened.metadata.read("reading") as tx:
        assert tx.repository_has("ns", "repo", subject)
        assert tx.repository_has("ns", "repo", DIGEST)
        assert tx.resolve_tag("ns", "repo", "v1") == DIGEST
        assert tx.manifest_media_type("ns", "repo", DIGEST) == "application/json"
        assert tx.referrers("ns", "repo", subject, None) == [referrer.descriptor]
        assert tx.referrers("ns", "repo", subject, "other") == []
        assert tx.repositories("ns", "", 10) == ["repo"]
        assert tx.repository_exists("ns", "repo")
        assert not tx.repository_exists("other", "repo")
    with opened.metadata.write("deleting") as tx:
        assert tx.delete_manifest("ns", "repo", DIGEST)
    with opened.metadata.read("reading") as tx:
        assert tx.resolve_tag("ns", "repo", "v1") is None
        assert tx.referrers("ns", "repo", subject, None) == []
        assert tx.tags("ns", "repo", "", 10) == []


def test_tags_list_in_lexical_order_from_any_point(opened: Backends) -> None:
    tags = ["0.1", "a_b", "alpha", "Beta", "latest", "V1", "v1", "v10", "v2"]
    with opened.metadata.write("tagging") as tx:
        for tag in reversed(tags):
            tx.put_manifest("ns", "repo", DIGEST, "m", tag, None)
    with opened.metadata.read("listing") as tx:
        assert [tag for tag, _ in tx.tags("ns", "repo", "", 100)] == tags
        assert [tag for tag, _ in tx.tags("ns", "repo", "beta", 2)] == ["latest", "V1"]
        assert [tag for tag, _ in tx.tags("ns", "repo", "V1", 2)] == ["v1", "v10"]


# Locks


def test_a_held_lock_is_refused_to_another_taker(opened: Backends) -> None:
    lock = opened.locks.try_lock(KEY)
    assert lock is not None
    assert opened.locks.try_lock(KEY) is None
    lock.release()
    again = opened.locks.try_lock(KEY)
    assert again is not None
    again.release(remove=True)


def test_without_create_only_an_existing_lock_is_taken(opened: Backends) -> None:
    assert opened.locks.try_lock(KEY, create=False) is None
    lock = opened.locks.try_lock(KEY)
    assert lock is not None
    lock.release()
    kept = opened.locks.try_lock(KEY, create=False)
    assert kept is not None
    kept.release(remove=True)


def test_a_note_outlives_its_holder_and_is_listed(opened: Backends) -> None:
    lock = opened.locks.try_lock(KEY)
    assert lock is not None
    lock.write_note("what a commit stores")
    lock.release()
    assert opened.locks.existing().get(KEY) is True
    taken = opened.locks.try_lock(KEY)
    assert taken is not None
    assert taken.read_note() == "what a commit stores"
    taken.clear_note()
    assert taken.read_note() == ""
    taken.release(remove=True)
    assert KEY not in opened.locks.existing()


def lock_actor(kind: str, place: Path, *arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            support_backends.__file__,
            arguments[0],
            kind,
            str(place),
            *arguments[1:],
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_lock_holds_across_processes_and_dies_with_its_holder(
    kind: str, place: Path, opened: Backends
) -> None:
    holder = lock_actor(kind, place, "hold", KEY, "noted by a process that died")
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        assert opened.locks.try_lock(KEY) is None
        with lock_actor(kind, place, "try", KEY) as other:
            assert other.communicate(timeout=30)[0].strip() == "refused"
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    # Freed as its holder's death is noticed: at once for a file lock, as soon as the
    # database server sees the connection close for an advisory lock.
    deadline = time.monotonic() + 10
    while (lock := opened.locks.try_lock(KEY)) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lock is not None
    assert lock.read_note() == "noted by a process that died"
    lock.release(remove=True)

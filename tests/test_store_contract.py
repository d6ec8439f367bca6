"""One Store contract, every store: the store's rules over each backend kind, contentd through
RemoteStore, and containerd.

The same tests run against the rules over every set of backends
(`support.backends.KINDS`: today the local one, a directory with no daemon),
against a real `contentd serve` and against a real containerd 1.6 on a
private root, so the Python interface means the same thing everywhere and
contentd stays comparable with containerd. Each test gets namespaces of its
own.

Differences that are deliberate (contentd doing better) are tested elsewhere:
containerd keeps no `expected` digest in ingest statuses, clamps negative read
offsets to zero, and aborts ingests that a writer still holds.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.backends import KINDS, open_backed_store
from support.containerd import start_containerd
from support.daemon import running_daemon
from support.tools import require_tool

from contentd import errdefs
from contentd.client import RemoteStore
from contentd.content import (
    Descriptor,
    Image,
    LeaseResource,
    MetadataStore,
    Store,
    digest_of,
    is_ref_locked,
    write_blob,
)

BLOB = bytes(range(256)) * 40
DIGEST = digest_of(BLOB)
OTHER = b"some other bytes"
OTHER_DIGEST = digest_of(OTHER)

_namespaces = itertools.count()
StoreFactory = Callable[[], MetadataStore]


@pytest.fixture(scope="module")
def contentd_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_daemon(tmp_path_factory.mktemp("contentd") / "root") as daemon:
        yield daemon.address


@pytest.fixture(scope="module")
def containerd_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_tool("containerd", "containerd")
    with start_containerd(tmp_path_factory.mktemp("containerd"), collect=False) as containerd:
        yield containerd.address


@pytest.fixture(params=[*KINDS, "contentd", "containerd"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Stores in fresh namespaces of the backend under test; all closed afterwards."""
    opened: list[MetadataStore] = []
    if kind in KINDS:
        root = open_backed_store(kind, tmp_path / "backends")
        opened.append(root)

        def factory() -> MetadataStore:
            return root.with_namespace(f"ns{next(_namespaces)}")

    else:
        address = request.getfixturevalue(f"{kind}_address")

        def factory() -> MetadataStore:
            store = RemoteStore(address, f"contract{next(_namespaces)}-{time.time_ns()}")
            opened.append(store)
            return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(new_store: StoreFactory) -> MetadataStore:
    return new_store()


@pytest.fixture
def fresh() -> tuple[bytes, str]:
    """Bytes no other test stores, and their digest: the daemons outlive single tests, and
    under the shared policy a blob stored by an earlier test would start ingests full."""
    data = os.urandom(10_000)
    return data, digest_of(data)


def put(store: Store, data: bytes, ref: str = "ref", **labels: str) -> str:
    with store.writer(ref, total=len(data), expected=digest_of(data)) as writer:
        writer.write(data[writer.status().offset :])
        return writer.commit(len(data), digest_of(data), labels)


# Committed content


def test_committed_blob_reads_back_whole(store: Store) -> None:
    assert put(store, BLOB) == DIGEST
    with store.reader_at(DIGEST) as reader:
        assert reader.size == len(BLOB)
        assert reader.read() == BLOB


def test_info_reports_size_labels_and_commit_time(store: Store) -> None:
    before = time.time()
    put(store, BLOB, team="storage")
    after = time.time()
    info = store.info(DIGEST)
    assert (info.digest, info.size, dict(info.labels)) == (DIGEST, len(BLOB), {"team": "storage"})
    assert before - 0.01 <= info.created_at.timestamp() <= after + 0.01


def test_missing_blob_is_not_found(store: Store) -> None:
    with pytest.raises(errdefs.NotFound):
        store.info(DIGEST)
    with pytest.raises(errdefs.NotFound):
        store.reader_at(DIGEST)
    with pytest.raises(errdefs.NotFound):
        store.delete(DIGEST)


def test_malformed_digest_is_invalid(store: Store) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        store.info("sha256:nothex")


def test_reader_reads_ranges_and_seeks(store: Store) -> None:
    put(store, BLOB)
    with store.reader_at(DIGEST) as reader:
        assert reader.read_at(10, 100) == BLOB[100:110]
        assert reader.read_at(50, len(BLOB) - 5) == BLOB[-5:]
        assert reader.read(3) == BLOB[:3]
        reader.seek(200)
        assert reader.read(4) == BLOB[200:204]
        assert reader.tell() == 204


def test_delete_hides_the_blob(store: Store) -> None:
    put(store, BLOB)
    store.delete(DIGEST)
    with pytest.raises(errdefs.NotFound):
        store.info(DIGEST)


# Labels


def test_update_without_paths_replaces_labels(store: Store) -> None:
    put(store, BLOB, a="1", b="2")
    assert dict(store.update(DIGEST, {"c": "3"}).labels) == {"c": "3"}
    assert dict(store.info(DIGEST).labels) == {"c": "3"}


def test_update_with_label_paths_sets_and_removes_keys(store: Store) -> None:
    put(store, BLOB, k1="v1", k2="v2", keep="yes")
    store.update(DIGEST, {"k1": "new", "k3": "v3"}, ["labels.k1", "labels.k2", "labels.k3"])
    assert dict(store.info(DIGEST).labels) == {"k1": "new", "k3": "v3", "keep": "yes"}


def test_update_of_an_immutable_field_is_invalid(store: Store) -> None:
    put(store, BLOB)
    with pytest.raises(errdefs.InvalidArgument):
        store.update(DIGEST, {}, ["size"])


def test_oversized_label_is_invalid(store: Store) -> None:
    put(store, BLOB)
    with pytest.raises(errdefs.InvalidArgument):
        store.update(DIGEST, {"k": "v" * 4096})


# Listing


def test_walk_filters_by_label_and_digest(store: Store) -> None:
    put(store, BLOB, "a", kind="layer")
    put(store, OTHER, "b", kind="config")
    assert [i.digest for i in store.walk("labels.kind==layer")] == [DIGEST]
    assert {i.digest for i in store.walk("labels.kind==layer", "labels.kind==config")} == {
        DIGEST,
        OTHER_DIGEST,
    }
    assert [i.digest for i in store.walk(f"digest=={OTHER_DIGEST}")] == [OTHER_DIGEST]
    assert {i.digest for i in store.walk()} == {DIGEST, OTHER_DIGEST}


def test_bad_filter_is_invalid(store: Store) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        list(store.walk("labels.=="))


def test_list_statuses_filters_by_ref(store: Store) -> None:
    for ref in ("layer-1", "layer-2", "config"):
        with store.writer(ref) as writer:
            writer.write(ref.encode())
    assert sorted(s.ref for s in store.list_statuses()) == ["config", "layer-1", "layer-2"]
    assert sorted(s.ref for s in store.list_statuses("ref~=^layer-")) == ["layer-1", "layer-2"]


# Ingests


def test_status_reports_an_ingest_in_progress(store: Store, fresh: tuple[bytes, str]) -> None:
    data, digest = fresh
    with store.writer("progress", total=len(data), expected=digest) as writer:
        writer.write(data[:100])
    status = store.status("progress")
    assert (status.ref, status.offset, status.total) == ("progress", 100, len(data))
    with pytest.raises(errdefs.NotFound):
        store.status("no-such-ref")


def test_ingest_resumes_at_its_offset(store: Store, fresh: tuple[bytes, str]) -> None:
    data, digest = fresh
    with store.writer("resumed", total=len(data), expected=digest) as writer:
        writer.write(data[:1000])
    with store.writer("resumed", total=len(data), expected=digest) as writer:
        assert writer.status().offset == 1000
        writer.write(data[1000:])
        assert writer.commit(len(data), digest) == digest


def test_small_writes_add_up_to_the_blob(store: Store, fresh: tuple[bytes, str]) -> None:
    data, digest = fresh
    with store.writer("pieces", total=len(data), expected=digest) as writer:
        for start in range(0, len(data), 1000):
            writer.write(data[start : start + 1000])
            assert writer.offset == min(start + 1000, len(data))
        assert writer.status().offset == len(data)
        assert writer.commit(len(data), digest) == digest
    with store.reader_at(digest) as reader:
        assert reader.read() == data


def test_truncate_starts_the_ingest_over(store: Store) -> None:
    with store.writer("restart") as writer:
        writer.write(b"wrong bytes")
        writer.truncate(0)
        writer.write(BLOB)
        assert writer.commit(len(BLOB), DIGEST) == DIGEST


def test_wrong_size_or_digest_fails_and_keeps_the_ingest(store: Store) -> None:
    with store.writer("checked") as writer:
        writer.write(BLOB)
        with pytest.raises(errdefs.FailedPrecondition):
            writer.commit(len(BLOB) + 1)
    with store.writer("checked") as writer, pytest.raises(errdefs.FailedPrecondition):
        writer.commit(len(BLOB), OTHER_DIGEST)
    assert store.status("checked").offset == len(BLOB)


def test_writer_expecting_a_stored_digest_is_already_exists(store: Store) -> None:
    put(store, BLOB)
    with pytest.raises(errdefs.AlreadyExists):
        store.writer("late", expected=DIGEST)


def test_committing_stored_bytes_again_is_already_exists(store: Store) -> None:
    put(store, BLOB)
    with store.writer("again") as writer:
        writer.write(BLOB)
        with pytest.raises(errdefs.AlreadyExists):
            writer.commit(len(BLOB))


def test_second_writer_on_a_held_ref_is_refused_as_locked(store: Store) -> None:
    with store.writer("held") as writer:
        writer.write(b"x")
        with pytest.raises(errdefs.Unavailable) as refused:
            store.writer("held")
        assert is_ref_locked(refused.value)
    store.writer("held").close()


def test_abort_discards_the_ingest(store: Store) -> None:
    with store.writer("gone") as writer:
        writer.write(BLOB)
    store.abort("gone")
    with pytest.raises(errdefs.NotFound):
        store.status("gone")
    with pytest.raises(errdefs.NotFound):
        store.abort("gone")


# Namespaces


def test_namespaces_do_not_see_each_other(new_store: StoreFactory) -> None:
    first, second = new_store(), new_store()
    put(first, BLOB)
    with pytest.raises(errdefs.NotFound):
        second.info(DIGEST)
    assert list(second.walk()) == []
    with first.writer("mine") as writer:
        writer.write(b"x")
    assert second.list_statuses() == []


def test_stored_bytes_are_shared_without_resending(new_store: StoreFactory) -> None:
    first, second = new_store(), new_store()
    put(first, BLOB)
    with second.writer("adopt", total=len(BLOB), expected=DIGEST) as writer:
        assert writer.status().offset == len(BLOB)
        assert writer.commit(len(BLOB), DIGEST) == DIGEST
    with second.reader_at(DIGEST) as reader:
        assert reader.read() == BLOB


def test_delete_in_one_namespace_leaves_the_other(new_store: StoreFactory) -> None:
    first, second = new_store(), new_store()
    put(first, BLOB)
    put(second, BLOB)
    first.delete(DIGEST)
    with second.reader_at(DIGEST) as reader:
        assert reader.read() == BLOB


# put and write_blob


def test_put_stores_small_bytes_in_one_step(store: Store, fresh: tuple[bytes, str]) -> None:
    data, digest = fresh
    assert store.put("small", data, size=len(data), expected=digest, labels={"k": "v"}) == digest
    assert dict(store.info(digest).labels) == {"k": "v"}
    with store.reader_at(digest) as reader:
        assert reader.read() == data


def test_put_replaces_an_ingest_on_its_ref(store: Store, fresh: tuple[bytes, str]) -> None:
    data, digest = fresh
    with store.writer("reused") as writer:
        writer.write(b"earlier bytes")
    assert store.put("reused", data) == digest
    with pytest.raises(errdefs.NotFound):
        store.status("reused")


def test_put_verifies_and_leaves_nothing_when_wrong(store: Store, fresh: tuple[bytes, str]) -> None:
    data, digest = fresh
    with pytest.raises(errdefs.FailedPrecondition):
        store.put("wrong", data, expected=OTHER_DIGEST)
    with pytest.raises(errdefs.FailedPrecondition):
        store.put("wrong", data, size=len(data) + 1)
    with pytest.raises(errdefs.NotFound):
        store.info(digest)


def test_put_of_stored_bytes_under_another_digest_is_refused(
    store: Store, fresh: tuple[bytes, str]
) -> None:
    """Bytes the namespace holds under their own digest never pass for another one."""
    data, digest = fresh
    assert store.put("first", data) == digest
    with pytest.raises(errdefs.FailedPrecondition):
        store.put("again", data, expected=OTHER_DIGEST)
    with pytest.raises(errdefs.NotFound):
        store.info(OTHER_DIGEST)


def test_put_of_stored_content_is_already_exists(store: Store) -> None:
    put(store, BLOB)
    with pytest.raises(errdefs.AlreadyExists):
        store.put("again", BLOB)


def test_put_on_a_held_ref_is_refused_as_locked(store: Store, fresh: tuple[bytes, str]) -> None:
    data, _ = fresh
    with store.writer("held") as writer:
        writer.write(b"x")
        with pytest.raises(errdefs.Unavailable) as refused:
            store.put("held", data)
        assert is_ref_locked(refused.value)


@contextlib.contextmanager
def threads_started() -> Iterator[list[str]]:
    """The names of the threads the threading module starts meanwhile."""
    started: list[str] = []

    def note(frame: object, event: str, arg: object) -> None:
        started.append(threading.current_thread().name)
        sys.setprofile(None)

    threading.setprofile(note)
    try:
        yield started
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("daemon", ["contentd", "containerd"])
def test_put_to_a_daemon_starts_no_thread_in_the_client(
    daemon: str, request: pytest.FixtureRequest
) -> None:
    """A small blob is one request and its answers, read on the caller's thread: a stream
    call would start two threads in the client each time, its largest cost per blob."""
    with RemoteStore(request.getfixturevalue(f"{daemon}_address"), "no-threads") as store:
        blobs = [os.urandom(100) for _ in range(3)]
        with threads_started() as started:
            for number, data in enumerate(blobs):
                digest = store.put(f"thread-{number}-{time.time_ns()}", data, size=len(data))
                assert digest == digest_of(data)
        assert started == []
        for data in blobs:
            with store.reader_at(digest_of(data)) as reader:
                assert reader.read() == data


def test_write_blob_stores_a_stream(store: Store) -> None:
    assert write_blob(store, "stream", io.BytesIO(BLOB), len(BLOB), DIGEST) == DIGEST
    assert store.info(DIGEST).size == len(BLOB)


def test_write_blob_of_stored_content_succeeds(store: Store) -> None:
    put(store, BLOB)
    assert write_blob(store, "dup", BLOB, len(BLOB), DIGEST) == DIGEST


def test_write_blob_resumes_an_interrupted_ingest(store: Store) -> None:
    # Larger than what write_blob stores in one message, which never resumes.
    data = os.urandom(2 << 20)
    digest = digest_of(data)
    with store.writer("half", total=len(data), expected=digest) as writer:
        writer.write(data[:4000])
    sent: list[int] = []
    assert write_blob(store, "half", data, len(data), digest, progress=sent.append) == digest
    assert sent[0] == 4000


def test_write_blob_waits_for_the_ref_to_free(store: Store, fresh: tuple[bytes, str]) -> None:
    data, digest = fresh
    holder = store.writer("contended")
    holder.write(data[:100])
    threading.Timer(0.5, holder.close).start()
    started = time.monotonic()
    assert write_blob(store, "contended", data, len(data), digest, timeout=30) == digest
    assert time.monotonic() - started >= 0.4


# Leases, images and namespaces (containerd's metadata)


def unique(stem: str) -> str:
    return f"{stem}-{time.time_ns()}"


def test_a_write_under_a_lease_lists_its_ingest_then_its_blob(
    store: MetadataStore, fresh: tuple[bytes, str]
) -> None:
    data, digest = fresh
    lease = store.leases.create(unique("pull")).id
    leased = store.with_lease(lease)
    with leased.writer("layer", total=len(data), expected=digest) as writer:
        writer.write(data)
        assert store.leases.resources(lease) == [LeaseResource("layer", "ingests")]
        writer.commit(len(data), digest)
    assert store.leases.resources(lease) == [LeaseResource(digest, "content")]
    store.leases.delete(lease)


def test_a_write_naming_a_lease_that_does_not_exist_is_not_found(
    store: MetadataStore, fresh: tuple[bytes, str]
) -> None:
    data, digest = fresh
    with pytest.raises(errdefs.NotFound):
        store.with_lease("no-such-lease").put("orphan", data)
    with pytest.raises(errdefs.NotFound):
        store.status("orphan")
    with pytest.raises(errdefs.NotFound):
        store.info(digest)


def test_a_blob_already_stored_goes_on_the_lease_of_a_writer_expecting_it(
    store: MetadataStore, fresh: tuple[bytes, str]
) -> None:
    data, digest = fresh
    put(store, data)
    lease = store.leases.create(unique("pull")).id
    with pytest.raises(errdefs.AlreadyExists):
        store.with_lease(lease).writer("again", total=len(data), expected=digest)
    assert store.leases.resources(lease) == [LeaseResource(digest, "content")]
    store.leases.delete(lease)


def test_abort_and_delete_under_a_lease_take_what_they_remove_off_it(
    store: MetadataStore, fresh: tuple[bytes, str]
) -> None:
    data, digest = fresh
    lease = store.leases.create(unique("pull")).id
    leased = store.with_lease(lease)
    with leased.writer("abandoned") as writer:
        writer.write(b"some bytes")
    put(leased, data, ref="kept")
    assert len(store.leases.resources(lease)) == 2
    leased.abort("abandoned")
    leased.delete(digest)
    assert store.leases.resources(lease) == []
    store.leases.delete(lease)


def test_leases_are_created_listed_by_filter_and_deleted(store: MetadataStore) -> None:
    name = unique("lease")
    created = store.leases.create(name, {"team": "ci", "empty": ""})
    assert (created.id, dict(created.labels)) == (name, {"team": "ci"})
    with pytest.raises(errdefs.AlreadyExists):
        store.leases.create(name)
    generated = store.leases.create()
    assert generated.id
    assert [lease.id for lease in store.leases.list("labels.team==ci")] == [name]
    assert {lease.id for lease in store.leases.list()} == {name, generated.id}
    store.leases.delete(name)
    with pytest.raises(errdefs.NotFound):
        store.leases.delete(name)
    store.leases.delete(generated.id)


def test_lease_resources_are_checked_by_type(store: MetadataStore) -> None:
    lease = store.leases.create(unique("lease")).id
    snapshot = LeaseResource("sha256-layer-key", "snapshots/overlayfs")
    store.leases.add_resource(lease, snapshot)
    store.leases.add_resource(lease, snapshot)  # twice is no error
    assert store.leases.resources(lease) == [snapshot]
    with pytest.raises(errdefs.Unimplemented):
        store.leases.add_resource(lease, LeaseResource("x", "containers"))
    with pytest.raises(errdefs.InvalidArgument):
        store.leases.add_resource(lease, LeaseResource("not-a-digest", "content"))
    with pytest.raises(errdefs.NotFound):
        store.leases.add_resource(unique("missing"), snapshot)
    store.leases.delete_resource(lease, snapshot)
    assert store.leases.resources(lease) == []
    store.leases.delete(lease)


def test_a_lease_block_writes_under_a_lease_that_goes_after(
    store: MetadataStore, fresh: tuple[bytes, str]
) -> None:
    data, digest = fresh
    with store.lease(labels={"purpose": "test"}) as leased:
        lease = leased.lease_id
        assert lease is not None
        put(leased, data)
        assert store.leases.resources(lease) == [LeaseResource(digest, "content")]
        found = {item.id: item for item in store.leases.list()}[lease]
        assert "containerd.io/gc.expire" in found.labels
    assert lease not in {item.id for item in store.leases.list()}
    assert store.info(digest).size == len(data)


MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def test_images_are_created_read_updated_and_deleted(store: MetadataStore) -> None:
    name = f"registry.example/{unique('app')}:v1"
    target = Descriptor(MANIFEST_TYPE, DIGEST, 100, {"org.opencontainers.image.ref.name": "v1"})
    created = store.images.create(Image(name, target, {"team": "ci"}))
    assert (created.name, created.target, dict(created.labels)) == (name, target, {"team": "ci"})
    assert created.created_at is not None
    with pytest.raises(errdefs.AlreadyExists):
        store.images.create(Image(name, target))
    assert store.images.get(name).target == target
    assert [image.name for image in store.images.list(f"target.digest=={DIGEST}")] == [name]
    assert store.images.list("labels.team==other") == []
    relabelled = store.images.update(Image(name, target, {"stage": "prod"}), ["labels.stage"])
    assert dict(relabelled.labels) == {"team": "ci", "stage": "prod"}
    retargeted = Descriptor(MANIFEST_TYPE, OTHER_DIGEST, 50)
    updated = store.images.update(Image(name, retargeted), ["target"])
    assert updated.target == retargeted
    assert dict(updated.labels) == {"team": "ci", "stage": "prod"}
    store.images.delete(name)
    with pytest.raises(errdefs.NotFound):
        store.images.get(name)


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("", Descriptor(MANIFEST_TYPE, DIGEST, 1)),
        ("app", Descriptor(MANIFEST_TYPE, "sha256:nothex", 1)),
        ("app", Descriptor(MANIFEST_TYPE, DIGEST, 0)),
        ("app", Descriptor("", DIGEST, 1)),
    ],
    ids=["no-name", "bad-digest", "no-size", "no-media-type"],
)
def test_an_invalid_image_is_refused(store: MetadataStore, name: str, target: Descriptor) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        store.images.create(Image(name, target))


def test_updating_an_image_by_another_field_is_refused(store: MetadataStore) -> None:
    name = unique("app")
    store.images.create(Image(name, Descriptor(MANIFEST_TYPE, DIGEST, 1)))
    with pytest.raises(errdefs.InvalidArgument):
        store.images.update(Image(name, Descriptor(MANIFEST_TYPE, DIGEST, 1)), ["name"])
    store.images.delete(name)


def test_an_unknown_namespace_reads_as_one_without_labels(store: MetadataStore) -> None:
    unknown = store.namespaces.get(unique("nowhere"))
    assert dict(unknown.labels) == {}


def test_a_namespace_holding_blobs_is_not_deleted(store: MetadataStore) -> None:
    put(store, BLOB)
    assert store.namespace in {namespace.name for namespace in store.namespaces.list()}
    with pytest.raises(errdefs.FailedPrecondition):
        store.namespaces.delete(store.namespace)

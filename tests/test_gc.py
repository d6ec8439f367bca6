"""Garbage collection: containerd's roots and references keep content, the rest goes, bytes last.

Each test builds one situation on a fresh store directory and collects it with
`collect()`, the same collection the daemon's scheduler runs. What must stay
is read back whole; what must go is gone from the namespace and, when nothing
else records it, from the disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from contentd import errdefs
from contentd.content import (
    EXPIRE_LABEL,
    FLAT_LABEL,
    Descriptor,
    Image,
    LeaseResource,
    LocalStore,
    digest_of,
    open_store,
)

PAST = "2001-02-03T04:05:06Z"
FUTURE = "2999-01-01T00:00:00+02:00"
MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with open_store(tmp_path / "root", "gc") as opened:
        yield opened


def blob(store: LocalStore, label: str = "", **labels: str) -> str:
    """Store fresh bytes (named by `label` for the reader of a failure) with `labels`."""
    data = f"{label} {os.urandom(8).hex()}".encode()
    return store.put(f"put-{digest_of(data)}", data, labels=labels)


def kept(store: LocalStore, digest: str) -> bool:
    try:
        store.info(digest)
    except errdefs.NotFound:
        return False
    with store.reader_at(digest) as reader:
        assert digest_of(reader.read()) == digest
    return True


def blob_file(store: LocalStore, digest: str) -> Path:
    algorithm, encoded = digest.split(":")
    return store.path / "blobs" / algorithm / encoded


def test_content_nothing_keeps_is_collected_with_its_bytes(store: LocalStore) -> None:
    orphan = blob(store, "orphan")
    report = store.collect()
    assert not kept(store, orphan)
    assert not blob_file(store, orphan).exists()
    assert (report.content, report.blobs) == (1, 1)
    assert report.bytes > 0


def test_a_dry_run_reports_and_removes_nothing(store: LocalStore) -> None:
    orphan = blob(store, "orphan")
    report = store.collect(dry_run=True)
    assert (report.content, report.blobs, report.dry_run) == (1, 1, True)
    assert kept(store, orphan)


def test_content_labelled_as_a_root_stays_whatever_the_value(store: LocalStore) -> None:
    rooted = blob(store, "rooted", **{"containerd.io/gc.root": "false"})
    store.collect()
    assert kept(store, rooted)


def test_references_from_kept_content_are_followed(store: LocalStore) -> None:
    config, layer, other, unnamed = (blob(store, name) for name in ("config", "l0", "x", "un"))
    far = blob(store, "far")
    middle = blob(store, "middle", **{"containerd.io/gc.ref.content/deep": far})
    manifest = blob(
        store,
        "manifest",
        **{
            "containerd.io/gc.root": "1",
            "containerd.io/gc.ref.content.config": config,
            "containerd.io/gc.ref.content.l.0": layer,
            "containerd.io/gc.ref.content": middle,
            "containerd.io/gc.ref.contentx": other,  # no separator: no reference
        },
    )
    store.collect()
    for digest in (manifest, config, layer, middle, far):
        assert kept(store, digest)
    assert not kept(store, other)
    assert not kept(store, unnamed)


def test_an_image_keeps_its_target_and_what_its_labels_reference(store: LocalStore) -> None:
    layer = blob(store, "layer")
    manifest = blob(store, "manifest", **{"containerd.io/gc.ref.content.l.0": layer})
    extra = blob(store, "extra")
    target = Descriptor(MEDIA_TYPE, manifest, 10)
    store.images.create(
        Image("registry.example/app:v1", target, {"containerd.io/gc.ref.content.x": extra})
    )
    store.collect()
    assert all(kept(store, digest) for digest in (manifest, layer, extra))
    store.images.delete("registry.example/app:v1")
    store.collect()
    assert not any(kept(store, digest) for digest in (manifest, layer, extra))


def test_a_lease_keeps_its_content_until_it_is_deleted(store: LocalStore) -> None:
    lease = store.leases.create("pull")
    leased = store.with_lease(lease.id)
    layer = blob(store, "layer")
    manifest = leased.put(
        "manifest", os.urandom(64), labels={"containerd.io/gc.ref.content": layer}
    )
    assert [r.id for r in store.leases.resources("pull")] == [manifest]
    store.collect()
    assert kept(store, manifest)
    assert kept(store, layer)
    store.leases.delete("pull")
    store.collect()
    assert not kept(store, manifest)
    assert not kept(store, layer)


def test_a_flat_lease_keeps_what_it_lists_and_nothing_it_references(store: LocalStore) -> None:
    store.leases.create("flat", {FLAT_LABEL: "true"})
    layer = blob(store, "layer")
    manifest = blob(store, "manifest", **{"containerd.io/gc.ref.content.l.0": layer})
    store.leases.add_resource("flat", LeaseResource(manifest, "content"))
    store.collect()
    assert kept(store, manifest)
    assert not kept(store, layer)


def test_an_expired_lease_keeps_nothing_and_goes(store: LocalStore) -> None:
    store.leases.create("old", {EXPIRE_LABEL: PAST})
    store.leases.create("young", {EXPIRE_LABEL: FUTURE})
    store.leases.create("unreadable", {EXPIRE_LABEL: "next tuesday"})
    digests = {}
    for lease in ("old", "young", "unreadable"):
        digests[lease] = store.with_lease(lease).put(lease, os.urandom(32))
    report = store.collect()
    assert report.leases == 1
    assert [lease.id for lease in store.leases.list()] == ["unreadable", "young"]
    assert not kept(store, digests["old"])
    # An expiry nobody can read never comes, as in containerd.
    assert kept(store, digests["young"])
    assert kept(store, digests["unreadable"])


def test_an_ingest_of_an_expired_lease_goes_unless_its_writer_is_alive(store: LocalStore) -> None:
    store.leases.create("old", {EXPIRE_LABEL: PAST})
    leased = store.with_lease("old")
    with leased.writer("abandoned") as writer:
        writer.write(b"bytes nobody will commit")
    alive = leased.writer("alive")
    alive.write(b"bytes a live writer holds")
    report = store.collect()
    assert report.ingests == 1
    with pytest.raises(errdefs.NotFound):
        store.status("abandoned")
    assert store.status("alive").offset == 25
    # Its lease went with the collection: the commit is refused, the ingest kept.
    with pytest.raises(errdefs.NotFound, match="lease does not exist"):
        alive.commit()
    with store.writer("alive") as resumed:
        assert resumed.offset == 25
        assert resumed.commit() == digest_of(b"bytes a live writer holds")


def test_an_ingest_written_without_a_lease_stays_for_a_day(store: LocalStore) -> None:
    with store.writer("resumable") as writer:
        writer.write(b"half of something")
    store.collect()
    assert store.status("resumable").offset == 17


def test_a_blob_recorded_in_another_namespace_keeps_its_bytes(store: LocalStore) -> None:
    other = store.with_namespace("elsewhere")
    data = os.urandom(100)
    digest = other.put("kept", data, labels={"containerd.io/gc.root": "yes"})
    assert store.put("unkept", data) == digest
    store.collect()
    assert not kept(store, digest)
    assert kept(other, digest)


def test_a_shared_ingest_keeps_the_blob_it_starts_from(store: LocalStore) -> None:
    data = os.urandom(100)
    digest = store.put("first", data)
    other = store.with_namespace("elsewhere")
    writer = other.writer("adopting", total=len(data), expected=digest)
    writer.close()
    store.collect()
    # Gone from the namespace that held it; its bytes stay for the ingest that starts from them.
    assert not kept(store, digest)
    with other.writer("adopting", total=len(data), expected=digest) as resumed:
        assert resumed.commit(len(data), digest) == digest
    assert kept(other, digest)


def test_registry_repositories_keep_their_blobs_and_manifests(store: LocalStore) -> None:
    layer, manifest, unlinked = (blob(store, name) for name in ("layer", "manifest", "gone"))
    store.repositories.link_blob("gc", "team/app", layer)
    store.repositories.link_blob("gc", "team/app", unlinked)
    store.repositories.put_manifest("gc", "team/app", manifest, MEDIA_TYPE, None)
    assert store.repositories.unlink_blob("gc", "team/app", unlinked)
    store.collect()
    assert kept(store, layer)
    assert kept(store, manifest)  # untagged, it stays until it is deleted
    assert not kept(store, unlinked)


def test_unrecorded_blob_bytes_are_freed(store: LocalStore) -> None:
    digest = blob(store, "recorded", **{"containerd.io/gc.root": "1"})
    stray = blob_file(store, digest).with_name(digest_of(b"stray").split(":")[1])
    stray.write_bytes(b"stray")
    report = store.collect()
    assert not stray.exists()
    assert report.blobs == 1
    assert kept(store, digest)


def test_orphaned_bytes_are_looked_for_when_a_store_is_opened_not_at_every_collection(
    store: LocalStore,
) -> None:
    digest = blob(store, "recorded", **{"containerd.io/gc.root": "1"})
    store.collect()  # the first since the store opened: it listed every blob
    stray = blob_file(store, digest).with_name(digest_of(b"stray").split(":")[1])
    stray.write_bytes(b"stray")
    assert store.collect().blobs == 0
    assert stray.exists()
    assert store.collect(dry_run=True).blobs == 1  # a dry run always looks
    with open_store(store.path, "gc") as reopened:
        assert reopened.collect().blobs == 1
    assert not stray.exists()
    assert kept(store, digest)


def test_the_bytes_only_a_collected_ingest_started_from_go_with_it(store: LocalStore) -> None:
    store.collect()  # done looking for orphans: what follows goes as a change
    data = os.urandom(100)
    digest = store.put("first", data)
    other = store.with_namespace("elsewhere")
    other.leases.create("old", {EXPIRE_LABEL: PAST})
    other.with_lease("old").writer("adopting", total=len(data), expected=digest).close()
    store.delete(digest)
    assert blob_file(store, digest).exists()  # the ingest starts from it
    report = store.collect()
    assert (report.ingests, report.blobs, report.bytes) == (1, 1, len(data))
    assert not blob_file(store, digest).exists()

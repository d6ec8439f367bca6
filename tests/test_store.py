"""LocalStore: the content store on a directory, as one process uses it."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contentd import errdefs
from contentd.content import Info, LocalStore, Status, _fs, digest_of, open_store

BLOB = b"hello, content store\n" * 50
DIGEST = digest_of(BLOB)
OTHER = b"other bytes"
OTHER_DIGEST = digest_of(OTHER)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with open_store(tmp_path / "root") as opened:
        yield opened


def put(store: LocalStore, data: bytes, ref: str = "ref", **labels: str) -> str:
    with store.writer(ref, total=len(data), expected=digest_of(data)) as writer:
        writer.write(data[writer.status().offset :])
        return writer.commit(labels=labels)


# Writing and reading


def test_committed_blob_reads_back(store: LocalStore) -> None:
    assert put(store, BLOB) == DIGEST
    with store.reader_at(DIGEST) as reader:
        assert reader.size == len(BLOB)
        assert reader.read() == BLOB


def test_info_describes_the_commit(store: LocalStore) -> None:
    before = time.time()
    put(store, BLOB, team="storage")
    after = time.time()
    info = store.info(DIGEST)
    assert isinstance(info, Info)
    assert (info.digest, info.size, dict(info.labels)) == (DIGEST, len(BLOB), {"team": "storage"})
    assert before - 0.001 <= info.created_at.timestamp() <= after
    assert info.updated_at == info.created_at


def test_commit_returns_digest_without_expectations(store: LocalStore) -> None:
    with store.writer("plain") as writer:
        writer.write(BLOB[:10])
        writer.write(BLOB[10:])
        assert writer.digest() == DIGEST
        assert writer.commit() == DIGEST


def test_empty_blob_commits(store: LocalStore) -> None:
    with store.writer("empty") as writer:
        assert writer.commit(0, digest_of(b"")) == digest_of(b"")
    assert store.info(digest_of(b"")).size == 0


def test_committed_blob_is_read_only_on_disk(store: LocalStore) -> None:
    put(store, BLOB)
    mode = (store.path / "blobs" / "sha256" / DIGEST.split(":")[1]).stat().st_mode
    assert stat.S_IMODE(mode) & 0o222 == 0


def test_sha512_expectation_is_verified_with_sha512(store: LocalStore) -> None:
    expected = "sha512:" + hashlib.sha512(BLOB).hexdigest()
    with store.writer("long", expected=expected) as writer:
        writer.write(BLOB)
        assert writer.commit(len(BLOB), expected) == expected
    assert store.info(expected).size == len(BLOB)


def test_info_of_missing_blob_is_not_found(store: LocalStore) -> None:
    with pytest.raises(errdefs.NotFound, match=f"content {DIGEST}: not found"):
        store.info(DIGEST)


# Commit verification


def test_wrong_size_fails_and_keeps_the_ingest(store: LocalStore) -> None:
    with store.writer("sized") as writer:
        writer.write(BLOB)
        with pytest.raises(errdefs.FailedPrecondition, match="unexpected commit size"):
            writer.commit(len(BLOB) + 1)
    assert store.status("sized").offset == len(BLOB)


def test_wrong_digest_fails_and_keeps_the_ingest(store: LocalStore) -> None:
    with store.writer("digested") as writer:
        writer.write(BLOB)
        with pytest.raises(errdefs.FailedPrecondition, match="unexpected commit digest"):
            writer.commit(0, OTHER_DIGEST)
    with store.writer("digested") as writer:
        assert writer.status().offset == len(BLOB)
        assert writer.commit(0, DIGEST) == DIGEST


def test_commit_ends_the_writer(store: LocalStore) -> None:
    writer = store.writer("once")
    writer.write(BLOB)
    writer.commit()
    with pytest.raises(errdefs.FailedPrecondition, match="closed"):
        writer.write(b"more")


def test_commit_of_stored_digest_is_already_exists_and_drops_the_ingest(store: LocalStore) -> None:
    put(store, BLOB)
    with store.writer("again") as writer:
        writer.write(BLOB)
        with pytest.raises(errdefs.AlreadyExists, match=f"content {DIGEST}"):
            writer.commit()
    with pytest.raises(errdefs.NotFound):
        store.status("again")


def test_writer_expecting_stored_digest_is_already_exists_at_once(store: LocalStore) -> None:
    put(store, BLOB)
    with pytest.raises(errdefs.AlreadyExists):
        store.writer("late", expected=DIGEST)
    with pytest.raises(errdefs.NotFound):
        store.status("late")


# Locks


def test_second_writer_on_held_ref_is_refused_at_once(store: LocalStore) -> None:
    with store.writer("held"):
        started = time.monotonic()
        with pytest.raises(errdefs.Unavailable) as refused:
            store.writer("held")
        assert time.monotonic() - started < 0.5
    assert refused.value.reason == errdefs.REF_LOCKED
    assert refused.value.metadata == {"ref": "held"}
    assert str(refused.value) == "ref held locked: unavailable"


def test_lock_frees_on_close_commit_and_abort(store: LocalStore) -> None:
    store.writer("r").close()
    writer = store.writer("r")
    writer.write(BLOB)
    writer.commit()
    store.writer("r").close()
    store.abort("r")
    store.writer("r").close()


def test_another_view_of_the_store_sees_the_lock(store: LocalStore, tmp_path: Path) -> None:
    with (
        open_store(tmp_path / "root") as second,
        store.writer("shared-ref"),
        pytest.raises(errdefs.Unavailable),
    ):
        second.writer("shared-ref")


def test_abort_of_held_ref_is_refused(store: LocalStore) -> None:
    with store.writer("busy"), pytest.raises(errdefs.Unavailable):
        store.abort("busy")
    store.abort("busy")


def test_locks_are_per_namespace(store: LocalStore) -> None:
    with store.writer("same"), store.with_namespace("other").writer("same"):
        pass


def test_lock_files_do_not_accumulate(store: LocalStore) -> None:
    for i in range(20):
        with store.writer(f"ref-{i}") as writer:
            writer.write(str(i).encode())
            writer.commit()
        with store.writer(f"aborted-{i}") as writer:
            writer.write(b"x")
        store.abort(f"aborted-{i}")
        with pytest.raises(errdefs.NotFound):
            store.abort(f"never-{i}")
    assert list((store.path / "ingest").iterdir()) == []


# Resume and truncate


def test_resume_continues_at_the_offset(store: LocalStore) -> None:
    with store.writer("resumed", total=len(BLOB), expected=DIGEST) as writer:
        writer.write(BLOB[:100])
        first = writer.status()
    with store.writer("resumed", total=len(BLOB), expected=DIGEST) as writer:
        status = writer.status()
        assert status.offset == 100
        assert status.started_at == first.started_at
        assert status.updated_at == first.updated_at
        assert writer.digest() == digest_of(BLOB[:100])
        writer.write(BLOB[100:])
        assert writer.commit(len(BLOB), DIGEST) == DIGEST


def test_a_different_total_starts_the_ingest_over(store: LocalStore) -> None:
    with store.writer("sized", total=100) as writer:
        writer.write(b"x" * 60)
        first = writer.status()
    with store.writer("sized", total=len(BLOB)) as writer:
        status = writer.status()
        assert (status.offset, status.total) == (0, len(BLOB))
        assert status.started_at > first.started_at
        writer.write(BLOB)
        assert writer.commit(len(BLOB), DIGEST) == DIGEST


def test_an_unknown_total_resumes_whatever_the_ingest_declared(store: LocalStore) -> None:
    with store.writer("sized", total=100) as writer:
        writer.write(b"x" * 60)
    with store.writer("sized") as writer:
        assert (writer.status().offset, writer.status().total) == (60, 100)


def test_truncate_restarts_the_ingest(store: LocalStore) -> None:
    with store.writer("restart") as writer:
        writer.write(b"garbage")
        writer.truncate(0)
        assert writer.status().offset == 0
        assert writer.digest() == digest_of(b"")
        writer.write(BLOB)
        assert writer.commit() == DIGEST


def test_truncate_to_nonzero_is_unimplemented(store: LocalStore) -> None:
    with store.writer("t") as writer:
        writer.write(b"abc")
        with pytest.raises(errdefs.Unimplemented):
            writer.truncate(1)


def test_status_is_an_ingest_not_a_blob(store: LocalStore) -> None:
    with store.writer("progress", total=len(BLOB), expected=DIGEST) as writer:
        writer.write(BLOB[:7])
    status = store.status("progress")
    assert isinstance(status, Status)
    assert (status.ref, status.offset, status.total, status.expected) == (
        "progress",
        7,
        len(BLOB),
        DIGEST,
    )
    with pytest.raises(errdefs.NotFound):
        store.info(DIGEST)


def test_list_statuses_filters_by_ref(store: LocalStore) -> None:
    for ref in ("layer-1", "layer-2", "config"):
        store.writer(ref).close()
    assert sorted(s.ref for s in store.list_statuses()) == ["config", "layer-1", "layer-2"]
    assert sorted(s.ref for s in store.list_statuses("ref~=^layer-")) == ["layer-1", "layer-2"]
    assert [s.ref for s in store.list_statuses("ref==config", "ref==nope")] == ["config"]


def test_abort_discards_the_ingest(store: LocalStore) -> None:
    with store.writer("gone") as writer:
        writer.write(BLOB)
    store.abort("gone")
    with pytest.raises(errdefs.NotFound):
        store.status("gone")
    with store.writer("gone") as writer:
        assert writer.status().offset == 0


def test_abort_of_unknown_ref_is_not_found(store: LocalStore) -> None:
    with pytest.raises(errdefs.NotFound, match="ref nothing: not found"):
        store.abort("nothing")


def test_any_ref_is_safe_because_refs_are_never_paths(store: LocalStore) -> None:
    for ref in ("../../escape", "/etc/passwd", "a\x00b", "ünïcödé ref", "x" * 1024):
        with store.writer(ref) as writer:
            writer.write(ref.encode("utf-8", "surrogatepass"))
            writer.commit()
    names = {p.name for p in store.path.iterdir()}
    assert names == {
        "blobs",
        "ingest",
        "trash",
        "metadata.db",
        "metadata.db-wal",
        "metadata.db-shm",
    }
    assert not (store.path.parent / "escape").exists()


# Labels


def test_update_replaces_labels_without_field_paths(store: LocalStore) -> None:
    put(store, BLOB, a="1", b="2")
    info = store.update(DIGEST, {"c": "3"})
    assert dict(info.labels) == {"c": "3"}
    assert dict(store.info(DIGEST).labels) == {"c": "3"}
    assert info.updated_at > info.created_at


def test_update_with_label_paths_touches_only_those(store: LocalStore) -> None:
    put(store, BLOB, k1="v1", k2="v2", keep="yes")
    info = store.update(DIGEST, {"k1": "new", "k3": "v3"}, ["labels.k1", "labels.k2", "labels.k3"])
    assert dict(info.labels) == {"k1": "new", "k3": "v3", "keep": "yes"}


def test_empty_label_value_removes_the_label(store: LocalStore) -> None:
    put(store, BLOB, k="v")
    assert dict(store.update(DIGEST, {"k": ""}, ["labels.k"]).labels) == {}


def test_update_of_other_fields_is_invalid(store: LocalStore) -> None:
    put(store, BLOB)
    with pytest.raises(errdefs.InvalidArgument, match="cannot update 'size'"):
        store.update(DIGEST, {}, ["size"])


def test_oversized_label_is_invalid_and_changes_nothing(store: LocalStore) -> None:
    put(store, BLOB, k="v")
    with pytest.raises(errdefs.InvalidArgument, match="4096"):
        store.update(DIGEST, {"k": "x" * 4096})
    assert dict(store.info(DIGEST).labels) == {"k": "v"}


def test_oversized_commit_label_is_invalid(store: LocalStore) -> None:
    with store.writer("big-label") as writer:
        writer.write(BLOB)
        with pytest.raises(errdefs.InvalidArgument):
            writer.commit(labels={"k" * 2048: "v" * 2049})


def test_update_of_missing_blob_is_not_found(store: LocalStore) -> None:
    with pytest.raises(errdefs.NotFound):
        store.update(DIGEST, {"a": "b"})


# Listing


def test_walk_lists_everything_without_filters(store: LocalStore) -> None:
    digests = {put(store, f"blob {i}".encode(), f"r{i}") for i in range(5)}
    assert {info.digest for info in store.walk()} == digests


def test_walk_filters_on_labels_and_digest(store: LocalStore) -> None:
    put(store, BLOB, "a", kind="layer")
    put(store, OTHER, "b", kind="config")
    assert [i.digest for i in store.walk("labels.kind==layer")] == [DIGEST]
    assert {i.digest for i in store.walk("labels.kind")} == {DIGEST, OTHER_DIGEST}
    assert [i.digest for i in store.walk(f"digest=={OTHER_DIGEST}")] == [OTHER_DIGEST]
    assert {i.digest for i in store.walk("labels.kind==layer", "labels.kind==config")} == {
        DIGEST,
        OTHER_DIGEST,
    }


def test_walk_pages_through_many_blobs(store: LocalStore) -> None:
    count = 1050  # more than one page of 1000
    digests = set()
    for i in range(count):
        digests.add(put(store, i.to_bytes(4, "big"), f"ref-{i}"))
    assert {info.digest for info in store.walk()} == digests


def test_bad_filter_is_invalid_before_listing(store: LocalStore) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        store.walk("labels.x=")
    with pytest.raises(errdefs.InvalidArgument):
        store.list_statuses("ref~=(")


# Namespaces


def test_namespaces_do_not_see_each_others_blobs(store: LocalStore) -> None:
    put(store, BLOB)
    other = store.with_namespace("other")
    with pytest.raises(errdefs.NotFound):
        other.info(DIGEST)
    with pytest.raises(errdefs.NotFound):
        other.reader_at(DIGEST)
    assert list(other.walk()) == []


def test_shared_blob_is_adopted_without_resending(store: LocalStore) -> None:
    put(store, BLOB)
    other = store.with_namespace("other")
    with other.writer("ref", total=len(BLOB), expected=DIGEST) as writer:
        status = writer.status()
        assert (status.offset, status.total) == (len(BLOB), len(BLOB))
        assert writer.digest() == DIGEST
        assert writer.commit(len(BLOB), DIGEST) == DIGEST
    with other.reader_at(DIGEST) as reader:
        assert reader.read() == BLOB


def test_shared_blob_can_be_appended_to(store: LocalStore) -> None:
    put(store, BLOB)
    longer = BLOB + b"appended bytes"
    other = store.with_namespace("other")
    with other.writer("ref", total=len(BLOB), expected=DIGEST) as writer:
        assert writer.status().offset == len(BLOB)
        writer.write(b"appended bytes")
        assert writer.commit(len(longer), digest_of(longer)) == digest_of(longer)
    with pytest.raises(errdefs.NotFound):
        other.info(DIGEST)
    assert store.info(DIGEST).size == len(BLOB)
    with other.reader_at(digest_of(longer)) as reader:
        assert reader.read() == longer


def test_labels_and_times_are_per_namespace(store: LocalStore) -> None:
    put(store, BLOB, owner="a")
    other = store.with_namespace("other")
    with other.writer("ref", expected=DIGEST) as writer:
        writer.commit(labels={"owner": "b"})
    assert dict(store.info(DIGEST).labels) == {"owner": "a"}
    assert dict(other.info(DIGEST).labels) == {"owner": "b"}


def test_ingests_are_per_namespace(store: LocalStore) -> None:
    store.writer("only-here").close()
    assert store.with_namespace("other").list_statuses() == []


def test_invalid_namespace_is_refused(store: LocalStore) -> None:
    for bad in ("", "../x", "a b", "-lead", "x" * 77):
        with pytest.raises(errdefs.InvalidArgument):
            store.with_namespace(bad)


# Delete


def test_delete_removes_from_the_namespace_and_disk(store: LocalStore) -> None:
    put(store, BLOB)
    store.delete(DIGEST)
    with pytest.raises(errdefs.NotFound):
        store.info(DIGEST)
    assert not any((store.path / "blobs" / "sha256").iterdir())
    assert not any((store.path / "trash").iterdir())


def test_bytes_stay_while_another_namespace_holds_them(store: LocalStore) -> None:
    put(store, BLOB)
    other = store.with_namespace("other")
    put(other, BLOB)
    store.delete(DIGEST)
    with other.reader_at(DIGEST) as reader:
        assert reader.read() == BLOB
    other.delete(DIGEST)
    assert not any((store.path / "blobs" / "sha256").iterdir())


def test_bytes_stay_while_a_shared_ingest_starts_from_them(store: LocalStore) -> None:
    put(store, BLOB)
    other = store.with_namespace("other")
    with other.writer("adopt", expected=DIGEST) as writer:
        store.delete(DIGEST)
        writer.commit()
    with other.reader_at(DIGEST) as reader:
        assert reader.read() == BLOB


def test_delete_of_missing_blob_is_not_found(store: LocalStore) -> None:
    with pytest.raises(errdefs.NotFound):
        store.delete(DIGEST)


def test_blob_deleted_then_written_again(store: LocalStore) -> None:
    put(store, BLOB)
    store.delete(DIGEST)
    put(store, BLOB)
    with store.reader_at(DIGEST) as reader:
        assert reader.read() == BLOB


# Reading


def test_read_at_reads_ranges_and_stops_at_the_end(store: LocalStore) -> None:
    put(store, BLOB)
    with store.reader_at(DIGEST) as reader:
        assert reader.read_at(5, 7) == BLOB[7:12]
        assert reader.read_at(100, len(BLOB) - 3) == BLOB[-3:]
        assert reader.read_at(10, len(BLOB)) == b""


def test_reader_is_a_seekable_file(store: LocalStore) -> None:
    put(store, BLOB)
    with store.reader_at(DIGEST) as reader:
        assert reader.read(4) == BLOB[:4]
        assert reader.tell() == 4
        reader.seek(-3, os.SEEK_END)
        assert reader.read() == BLOB[-3:]
        reader.seek(10)
        buffer = bytearray(6)
        assert reader.readinto(buffer) == 6
        assert bytes(buffer) == BLOB[10:16]


def test_negative_read_offset_is_invalid(store: LocalStore) -> None:
    put(store, BLOB)
    with store.reader_at(DIGEST) as reader, pytest.raises(errdefs.InvalidArgument):
        reader.read_at(1, -1)


def test_read_past_the_end_is_out_of_range(store: LocalStore) -> None:
    put(store, BLOB)
    with store.reader_at(DIGEST) as reader, pytest.raises(errdefs.OutOfRange):
        reader.read_at(1, len(BLOB) + 1)


def test_missing_bytes_are_data_loss(store: LocalStore) -> None:
    put(store, BLOB)
    blob = store.path / "blobs" / "sha256" / DIGEST.split(":")[1]
    blob.unlink()
    with pytest.raises(errdefs.DataLoss):
        store.reader_at(DIGEST)


# Validation


@pytest.mark.parametrize(
    "digest",
    [
        "",
        "sha256",
        "sha256:",
        "sha256:abc",
        "md5:" + "0" * 32,
        "sha256:" + "G" * 64,
        "sha256:" + "A" * 64,
        "sha512:" + "0" * 64,
        "sha256:" + "0" * 65,
        "SHA256:" + "0" * 64,
    ],
)
def test_malformed_digest_is_invalid(store: LocalStore, digest: str) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        store.info(digest)
    if digest:  # an empty expectation means "none"
        with pytest.raises(errdefs.InvalidArgument):
            store.writer("r", expected=digest)


def test_empty_and_overlong_refs_are_invalid(store: LocalStore) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        store.writer("")
    with pytest.raises(errdefs.InvalidArgument):
        store.writer("x" * 1025)


def test_negative_sizes_are_invalid(store: LocalStore) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        store.writer("r", total=-1)
    with store.writer("r") as writer, pytest.raises(errdefs.InvalidArgument):
        writer.commit(-1)


def test_error_messages_never_show_paths(store: LocalStore) -> None:
    put(store, BLOB)
    (store.path / "blobs" / "sha256" / DIGEST.split(":")[1]).unlink()
    with pytest.raises(errdefs.DataLoss) as caught:
        store.reader_at(DIGEST)
    assert str(store.path) not in str(caught.value)


def test_root_is_private(tmp_path: Path) -> None:
    with open_store(tmp_path / "fresh"):
        assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o700


def test_large_ingests_hand_their_bytes_to_writeback_before_commit(store: LocalStore) -> None:
    # Linux offers sync_file_range; without it every commit's fsync writes
    # the whole blob while its stream waits.
    if sys.platform == "linux":
        assert _fs._sync_file_range is not None
    chunk = os.urandom(1 << 20)
    expected = hashlib.sha256(chunk * (3 * _fs.WRITEBACK_BYTES >> 20)).hexdigest()
    with store.writer("large", total=3 * _fs.WRITEBACK_BYTES) as writer:
        for _ in range(3 * _fs.WRITEBACK_BYTES >> 20):
            writer.write(chunk)
        assert writer.commit() == f"sha256:{expected}"
    with store.reader_at(f"sha256:{expected}") as blob:
        assert hashlib.sha256(blob.read()).hexdigest() == expected

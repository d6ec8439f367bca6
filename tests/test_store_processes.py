"""LocalStore across processes: locks that hold and die with their holder, racing, crashing."""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.store_actor import CRASH_POINTS
from support.store_actor import content as actor_content
from support.store_actor import spawn as actor

from contentd import errdefs
from contentd.content import LocalStore, digest_of, open_store


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def store(root: Path) -> Iterator[LocalStore]:
    with open_store(root) as opened:
        yield opened


def test_lock_holds_across_processes_and_dies_with_its_holder(
    root: Path, store: LocalStore
) -> None:
    holder = actor("hold", str(root), "default", "layer")
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(errdefs.Unavailable) as refused:
            store.writer("layer")
        assert refused.value.reason == errdefs.REF_LOCKED
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    with store.writer("layer") as writer:
        # The killed writer's bytes are there to resume from.
        assert writer.status().offset == 1000
        assert writer.digest() == digest_of(actor_content(1000))


def test_racing_processes_store_exactly_one_blob(root: Path, store: LocalStore) -> None:
    size = 2_000_000
    go = root.parent / "go"
    racers = [actor("race", str(root), "default", "same-ref", str(go), str(size)) for _ in range(8)]
    go.touch()
    outcomes = []
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
        outcomes.append(out.strip())
    assert outcomes.count("committed") >= 1
    assert set(outcomes) <= {"committed", "unavailable", "exists"}
    data = actor_content(size)
    assert [info.digest for info in store.walk()] == [digest_of(data)]
    with store.reader_at(digest_of(data)) as reader:
        assert hashlib.sha256(reader.read()).hexdigest() == digest_of(data).split(":")[1]
    assert list((root / "blobs" / "sha256").iterdir()) == [
        root / "blobs" / "sha256" / digest_of(data).split(":")[1]
    ]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_during_commit_leaves_no_blob_or_a_whole_one(root: Path, point: str) -> None:
    open_store(root).close()
    crashed = actor("crash", str(root), "default", "crashing", point)
    out, err = crashed.communicate(timeout=60)
    assert crashed.returncode == -signal.SIGKILL, (out, err)
    data = actor_content(300_000)
    digest = digest_of(data)
    with open_store(root) as reopened:
        listed = [info.digest for info in reopened.walk()]
        if listed:
            assert listed == [digest]
            with reopened.reader_at(digest) as reader:
                assert reader.read() == data
            with pytest.raises(errdefs.NotFound):
                reopened.status("crashing")
        else:
            # Not committed: the ingest is intact and resumes to a verified commit.
            assert point in ("after-fsync", "after-mark")
            with reopened.writer("crashing", total=len(data), expected=digest) as writer:
                assert writer.status().offset == len(data)
                assert writer.commit(len(data), digest) == digest
        # No lock is left held, and nothing is left lying around.
        reopened.writer("crashing").close()
        reopened.abort("crashing")
        assert list((root / "ingest").iterdir()) == []
        blobs = list((root / "blobs" / "sha256").iterdir())
        assert [p.name for p in blobs] == [digest.split(":")[1]]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_during_put_leaves_no_blob_or_a_whole_one(root: Path, point: str) -> None:
    open_store(root).close()
    crashed = actor("crash-put", str(root), "default", "putting", point)
    out, err = crashed.communicate(timeout=60)
    assert crashed.returncode == -signal.SIGKILL, (out, err)
    data = actor_content(300_000)
    digest = digest_of(data)
    with open_store(root) as reopened:
        listed = [info.digest for info in reopened.walk()]
        if listed:
            # Killed after the bytes moved: the reopen finished the commit, labels too.
            assert point in ("after-rename", "after-metadata")
            assert listed == [digest]
            assert dict(reopened.info(digest).labels) == {"via": "put"}
            with reopened.reader_at(digest) as reader:
                assert reader.read() == data
        else:
            assert point in ("after-fsync", "after-mark")
        assert reopened.list_statuses() == []
        reopened.writer("putting").close()  # no lock is left held
        reopened.abort("putting")
        assert list((root / "ingest").iterdir()) == []


def test_interrupted_delete_is_undone_on_open(root: Path, store: LocalStore) -> None:
    data = b"precious"
    digest = digest_of(data)
    with store.writer("p") as writer:
        writer.write(data)
        writer.commit()
    # What a delete leaves if it dies after moving the bytes aside but before
    # its transaction commits: the record still there, the bytes in trash/.
    blob = root / "blobs" / "sha256" / digest.split(":")[1]
    blob.rename(root / "trash" / f"sha256.{digest.split(':')[1]}.dead")
    with open_store(root) as reopened, reopened.reader_at(digest) as reader:
        assert reader.read() == data
    assert list((root / "trash").iterdir()) == []


def test_orphan_ingest_files_are_removed_on_open(root: Path, store: LocalStore) -> None:
    orphan = root / "ingest" / ("f" * 64)
    orphan.write_bytes(b"left by a crash")
    orphan.with_suffix(".lock").touch()
    with open_store(root):
        assert list((root / "ingest").iterdir()) == []

"""Faults under the store: a full disk, a failing disk, a busy metadata database.

Each runs against a real daemon and against a daemonless store, on a real
filesystem mounted by the test: a size-limited tmpfs for a full disk, ext4 on
a loop device cut short for real I/O errors from the kernel. Mounting needs
root; without it these tests skip and say so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from support.daemon import DaemonProcess, contentd_command, start_daemon
from support.grpc_client import CALL_TIMEOUT, content_stub, namespaced

from contentd import errdefs
from contentd.client import RemoteStore
from contentd.content import (
    BLOB_UNREADABLE,
    STORE_BUSY,
    STORE_IO_ERROR,
    Store,
    digest_of,
    open_store,
    write_blob,
)
from contentd.proto import content_pb2 as api

MIB = 1 << 20
#: Bound on waiting for the metadata write lock in the busy tests, in seconds.
BUSY_BOUND = 1.0


def pattern(size: int, seed: int) -> bytes:
    """`size` bytes that differ for every seed (and do not compress away)."""
    block = hashlib.sha512(seed.to_bytes(8, "big")).digest()
    return (block * (size // len(block) + 1))[:size]


def run_root(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def mount(*arguments: str) -> None:
    """`mount ARGUMENTS`, or skip the test saying why it cannot mount."""
    if shutil.which("mount") is None:
        pytest.skip("mount not found on PATH (install util-linux)")
    result = run_root("mount", *arguments)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a test filesystem (root needed): {result.stderr.strip()}")


def unmount(target: Path) -> None:
    if run_root("umount", str(target)).returncode != 0:
        run_root("umount", "--lazy", str(target))


def assert_no_internals(error: errdefs.ContentdError, root: Path) -> None:
    """The message says what failed, never where: no path, no traceback."""
    assert str(root) not in str(error)
    assert not re.search(r"/[\w.-]+/", error.message)
    assert "Traceback" not in str(error)


def read_all(store: Store, digest: str) -> bytes:
    with store.reader_at(digest) as reader:
        return reader.read()


@dataclass
class Target:
    """A store under test: reached through a daemon or opened directly, and its root."""

    store: Store
    root: Path
    daemon: DaemonProcess | None = None

    def assert_daemon_healthy(self) -> None:
        """The daemon still runs, and it never let an unclassified error through."""
        if self.daemon is not None:
            assert self.daemon.process.poll() is None
            assert "Traceback" not in self.daemon.logged()
            assert "internal error" not in self.daemon.logged()


@contextlib.contextmanager
def target(kind: str, root: Path, *serve_args: str) -> Iterator[Target]:
    if kind == "local":
        with open_store(root) as store:
            yield Target(store, root)
        return
    daemon = start_daemon(root, *serve_args)
    try:
        with RemoteStore(daemon.address) as store:
            yield Target(store, root, daemon)
    finally:
        daemon.stop()


# A full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, mounted for the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=8m,mode=0700", "contentd-test", str(disk))
    try:
        yield disk
    finally:
        unmount(disk)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the disk to the last byte with a file outside the store; then free `leave` bytes."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, chunk)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        if leave:
            os.ftruncate(fd, os.fstat(fd).st_size - leave)
    finally:
        os.close(fd)
    return filler


@pytest.fixture(params=["daemon", "local"])
def on_small_disk(request: pytest.FixtureRequest, small_disk: Path) -> Iterator[Target]:
    with target(request.param, small_disk / "root") as opened:
        yield opened


def test_a_blob_larger_than_the_disk_is_resource_exhausted_and_leaves_the_rest_whole(
    on_small_disk: Target,
) -> None:
    store, root = on_small_disk.store, on_small_disk.root
    small, streamed = pattern(100_000, 1), pattern(3 * MIB // 2, 2)
    kept = [write_blob(store, "small", small), write_blob(store, "streamed", streamed)]
    with pytest.raises(errdefs.ResourceExhausted) as full:
        write_blob(store, "huge", pattern(16 * MIB, 3))
    assert "no space left" in full.value.message
    assert_no_internals(full.value, root)
    # Reads, Info and List go on, and what was stored is intact.
    assert read_all(store, kept[0]) == small
    assert read_all(store, kept[1]) == streamed
    assert store.info(kept[1]).size == len(streamed)
    assert sorted(info.digest for info in store.walk()) == sorted(kept)
    on_small_disk.assert_daemon_healthy()


def test_aborting_the_failed_ingest_frees_its_space(on_small_disk: Target) -> None:
    store = on_small_disk.store
    with pytest.raises(errdefs.ResourceExhausted):
        write_blob(store, "huge", pattern(16 * MIB, 3))
    assert store.status("huge").offset > 4 * MIB  # the bytes that fitted are kept, resumable
    following = pattern(4 * MIB, 4)
    with pytest.raises(errdefs.ResourceExhausted):
        write_blob(store, "following", following)
    store.abort("huge")
    assert write_blob(store, "following", following) == digest_of(following)
    assert read_all(store, digest_of(following)) == following
    on_small_disk.assert_daemon_healthy()


def test_changes_whose_records_do_not_fit_are_resource_exhausted_and_change_nothing(
    on_small_disk: Target,
) -> None:
    store, root = on_small_disk.store, on_small_disk.root
    data = pattern(200_000, 5)
    digest = write_blob(store, "kept", data, labels={"team": "ci"})
    filler = fill(root.parent)
    refused: list[errdefs.ResourceExhausted] = []
    for change in (
        lambda: store.update(digest, {"team": "ops"}, ["labels.team"]),
        lambda: store.delete(digest),
        lambda: write_blob(store, "tiny", b"tiny"),
    ):
        with pytest.raises(errdefs.ResourceExhausted) as full:
            change()
        assert_no_internals(full.value, root)
        refused.append(full.value)
    assert "no space left for metadata" in refused[0].message
    # The failed delete kept the blob: its record and its bytes.
    assert store.info(digest).labels == {"team": "ci"}
    assert read_all(store, digest) == data
    on_small_disk.assert_daemon_healthy()
    filler.unlink()
    store.delete(digest)
    assert list(store.walk()) == []


def test_a_commit_whose_record_does_not_fit_is_resource_exhausted_and_resumes_later(
    on_small_disk: Target,
) -> None:
    store, root = on_small_disk.store, on_small_disk.root
    data = pattern(2 * MIB, 6)
    digest = digest_of(data)
    writer = store.writer("layer", total=len(data), expected=digest)
    try:
        writer.write(data)
        assert writer.status().offset == len(data)  # on disk, not in flight
        # Room for the commit's own note, none for the record.
        filler = fill(root.parent, leave=4096)
        with pytest.raises(errdefs.ResourceExhausted) as full:
            writer.commit(len(data), digest)
    finally:
        writer.close()
    assert "no space left for metadata" in full.value.message
    assert_no_internals(full.value, root)
    assert list(store.walk()) == []
    on_small_disk.assert_daemon_healthy()
    filler.unlink()
    assert write_blob(store, "layer", data, digest=digest) == digest
    assert read_all(store, digest) == data


def test_a_small_blob_whose_commit_note_does_not_fit_is_resource_exhausted(
    on_small_disk: Target,
) -> None:
    store, root = on_small_disk.store, on_small_disk.root
    data = pattern(65536, 7)
    write_blob(store, "warm", b"warm")  # the database's first pages, so only the blob is new
    filler = fill(root.parent, leave=len(data))
    with pytest.raises(errdefs.ResourceExhausted) as full:
        write_blob(store, "small", data)
    assert_no_internals(full.value, root)
    assert [info.size for info in store.walk()] == [4]
    on_small_disk.assert_daemon_healthy()
    filler.unlink()
    assert write_blob(store, "small", data) == digest_of(data)
    assert read_all(store, digest_of(data)) == data


# A failing disk


#: FS_IOC_FIEMAP and FIEMAP_FLAG_SYNC from <linux/fiemap.h>.
_FIEMAP = 0xC020660B
_FIEMAP_SYNC = 1
_FIEMAP_HEADER = struct.Struct("=QQLLLL")
_FIEMAP_EXTENT = struct.Struct("=QQQ16xL12x")


def disk_extents(path: Path) -> list[tuple[int, int]]:
    """Where a file's bytes lie on its device: (offset, length) pairs, flushed first."""
    slots = 64
    request = bytearray(_FIEMAP_HEADER.size + slots * _FIEMAP_EXTENT.size)
    _FIEMAP_HEADER.pack_into(request, 0, 0, 2**64 - 1, _FIEMAP_SYNC, 0, slots, 0)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, _FIEMAP, request)
    finally:
        os.close(fd)
    mapped = _FIEMAP_HEADER.unpack_from(request)[3]
    extents = []
    for index in range(mapped):
        _, physical, length, _ = _FIEMAP_EXTENT.unpack_from(
            request, _FIEMAP_HEADER.size + index * _FIEMAP_EXTENT.size
        )
        extents.append((physical, length))
    return extents


@dataclass
class FailingDisk:
    """ext4 on a loop device over a file, which the test can cut short under the mounted fs.

    Blocks past the device's end fail in the kernel's block layer, so reading
    or writing them gives the filesystem, and the store, a real EIO.
    """

    image: Path
    device: str
    mountpoint: Path

    @staticmethod
    def settle(paths: list[Path]) -> None:
        """Flush files, so that ext4 allocates their blocks now rather than at some later flush."""
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def cut_before(self, victim: Path, keep: list[Path]) -> None:
        """End the device where `victim`'s bytes start; every file in `keep` must lie before."""
        start = min(offset for offset, _ in disk_extents(victim))
        for path in keep:
            if path.exists() and any(o + n > start for o, n in disk_extents(path)):
                pytest.skip(f"ext4 placed {path.name} after the blob to cut off; cannot cut")
        os.truncate(self.image, start)
        result = run_root("losetup", "--set-capacity", self.device)
        assert result.returncode == 0, result.stderr
        # Its pages are clean since the commit's fsync: drop them, so reads go to the device.
        fd = os.open(victim, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


@pytest.fixture
def failing_disk(tmp_path: Path) -> Iterator[FailingDisk]:
    for tool, package in (("losetup", "util-linux"), ("mkfs.ext4", "e2fsprogs")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found on PATH (install {package})")
    image = tmp_path / "disk.img"
    with open(image, "wb") as file:
        file.truncate(32 * MIB)
    # No journal: a journal block past the cut would turn the whole fs read-only.
    made = run_root("mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-b", "4096", str(image))
    assert made.returncode == 0, made.stderr
    attached = run_root("losetup", "--find", "--show", str(image))
    if attached.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    try:
        mount("-t", "ext4", "-o", "errors=continue", device, str(mountpoint))
        try:
            yield FailingDisk(image, device, mountpoint)
        finally:
            unmount(mountpoint)
    finally:
        run_root("losetup", "--detach", device)


def test_bytes_the_disk_cannot_read_are_data_loss_and_writes_it_fails_are_unavailable(
    failing_disk: FailingDisk,
) -> None:
    root = failing_disk.mountpoint / "root"
    kept_data, lost_data = pattern(20_000, 1), pattern(MIB, 2)
    daemon = start_daemon(root)
    try:
        with RemoteStore(daemon.address) as store:
            kept = write_blob(store, "kept", kept_data)
            database = [root / f"metadata.db{suffix}" for suffix in ("", "-wal", "-shm")]
            # Give the database's files their blocks now, ahead of the blob to lose.
            failing_disk.settle(database)
            lost = write_blob(store, "lost", lost_data)
            failing_disk.cut_before(
                root / "blobs" / "sha256" / lost.removeprefix("sha256:"),
                keep=[root / "blobs" / "sha256" / kept.removeprefix("sha256:"), *database],
            )
            with pytest.raises(errdefs.DataLoss) as unreadable:
                read_all(store, lost)
            assert unreadable.value.reason == BLOB_UNREADABLE
            assert_no_internals(unreadable.value, root)
            # Everything else still reads.
            assert read_all(store, kept) == kept_data
            assert sorted(info.digest for info in store.walk()) == sorted([kept, lost])
            # New bytes land past the cut: the commit's fsync fails.
            with pytest.raises(errdefs.Unavailable) as failed:
                write_blob(store, "new", pattern(2 * MIB, 3))
            assert failed.value.reason == STORE_IO_ERROR
            assert_no_internals(failed.value, root)
            assert store.info(kept).size == len(kept_data)
        assert daemon.process.poll() is None
        assert "Traceback" not in daemon.logged()
        with open_store(root) as local:
            with pytest.raises(errdefs.DataLoss):
                read_all(local, lost)
            assert read_all(local, kept) == kept_data
        verified = subprocess.run(
            [*contentd_command(), "--root", str(root), "--json", "verify"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert verified.returncode == 12, verified.stderr
        problems = json.loads(verified.stdout)["problems"]
        assert [(p["digest"], p["state"]) for p in problems] == [(lost, "unreadable")]
    finally:
        daemon.stop()


# A busy metadata database

#: Holds the metadata database's write lock until its stdin closes, as a stuck process would.
HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
sys.stdin.read()
"""
#: A daemonless process storing one small blob; prints "stored" or the Unavailable reason.
CONTENDER = """
import sys
from contentd import errdefs
from contentd.content import open_store
root, bound, ref = sys.argv[1:]
with open_store(root, busy_timeout=float(bound)) as store:
    try:
        store.put(ref, ref.encode())
    except errdefs.Unavailable as exc:
        print(exc.reason)
    else:
        print("stored")
"""


@contextlib.contextmanager
def metadata_held(root: Path) -> Iterator[None]:
    """Another process holds a write transaction open on the store's database."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root / "metadata.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "holding"
        yield
    finally:
        holder.stdin.close()  # the process ends, and its transaction with it
        holder.wait(timeout=30)
        holder.stdout.close()


def contenders(root: Path, count: int) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(root), str(BUSY_BOUND), f"daemonless-{index}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(count)
    ]


def outcomes(processes: list[subprocess.Popen[str]]) -> list[str]:
    return [process.communicate(timeout=60)[0].strip() for process in processes]


def concurrently(*calls: Callable[[], object]) -> list[BaseException | None]:
    """Run calls in threads at once; what each raised (None if it returned)."""
    raised: list[BaseException | None] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            calls[index]()
        except BaseException as exc:
            raised[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return raised


def test_writers_fail_store_busy_while_another_process_holds_the_database_past_the_bound(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    with target("daemon", root, "--store-busy-timeout", str(BUSY_BOUND)) as served:
        store = served.store
        data = pattern(300_000, 1)
        digest = write_blob(store, "before", data, labels={"k": "v"})
        streamed = pattern(2 * MIB, 2)
        with metadata_held(root):
            # Reads never wait for writers.
            assert read_all(store, digest) == data
            assert [info.labels for info in store.walk()] == [{"k": "v"}]
            daemonless = contenders(root, 2)
            raised = concurrently(
                lambda: write_blob(store, "small", b"small"),
                lambda: write_blob(store, "streamed", streamed),
                lambda: store.update(digest, {"k": "w"}, ["labels.k"]),
                lambda: store.delete(digest),
            )
            assert outcomes(daemonless) == [STORE_BUSY, STORE_BUSY]
            for error in raised:
                assert isinstance(error, errdefs.Unavailable), error
                assert error.reason == STORE_BUSY
                assert f"busy for {BUSY_BOUND:g}s" in error.message
            # On the wire: UNAVAILABLE, with the reason in a google.rpc.ErrorInfo.
            assert served.daemon is not None
            with content_stub(served.daemon.address) as stub, pytest.raises(grpc.RpcError) as call:
                stub.Update(
                    api.UpdateRequest(info=api.Info(digest=digest, labels={"k": "x"})),
                    metadata=namespaced("default"),
                    timeout=CALL_TIMEOUT,
                )
            assert call.value.code() == grpc.StatusCode.UNAVAILABLE
            assert errdefs.from_grpc(call.value).reason == STORE_BUSY
        # The holder let go: everything works again, and nothing was damaged.
        assert outcomes(contenders(root, 2)) == ["stored", "stored"]
        assert write_blob(store, "streamed", streamed) == digest_of(streamed)
        assert store.update(digest, {"k": "w"}, ["labels.k"]).labels == {"k": "w"}
        assert read_all(store, digest) == data
        served.assert_daemon_healthy()
    with sqlite3.connect(root / "metadata.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with open_store(root) as local:
        assert len(list(local.walk())) == 4


def test_a_busy_bound_must_be_finite_and_not_negative(tmp_path: Path) -> None:
    for bound in (-1.0, float("inf"), float("nan")):
        with pytest.raises(errdefs.InvalidArgument):
            open_store(tmp_path / "root", busy_timeout=bound)

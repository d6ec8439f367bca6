"""write_blob and open_writer: waiting out other writers, resuming, verifying, bounding."""

from __future__ import annotations

import io
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contentd import errdefs
from contentd.content import (
    Backoff,
    LocalStore,
    digest_of,
    is_ref_locked,
    open_store,
    open_writer,
    write_blob,
)

DATA = os.urandom(3 * (1 << 20) + 123)
DIGEST = digest_of(DATA)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with open_store(tmp_path / "root") as opened:
        yield opened


class Pipe(io.RawIOBase):
    """A source that can only be read forward, like stdin from a pipe."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        return self._data.readinto(buffer)


def interrupted(store: LocalStore, ref: str, data: bytes, *, expected: str = "") -> None:
    """Leave an ingest holding `data`, as a writer that died would."""
    with store.writer(ref, expected=expected) as writer:
        writer.write(data)


# Backoff


@given(seed=st.integers(), first=st.floats(0.001, 0.1), cap=st.floats(0.1, 5))
def test_backoff_waits_grow_to_the_cap_with_full_jitter(
    seed: int, first: float, cap: float
) -> None:
    delays = Backoff(first=first, cap=cap).delays(random.Random(seed))
    ceiling = first
    for delay in (next(delays) for _ in range(30)):
        assert 0 <= delay <= ceiling
        ceiling = min(cap, ceiling * 2)


def test_backoff_jitter_spreads_racers_apart() -> None:
    waits = [next(Backoff(first=1.0).delays(random.Random(seed))) for seed in range(50)]
    assert len(set(waits)) == 50


# Recognising a locked ref


def test_contentd_lock_error_is_ref_locked() -> None:
    err = errdefs.Unavailable("ref r locked", reason=errdefs.REF_LOCKED, metadata={"ref": "r"})
    assert is_ref_locked(err)


def test_containerd_lock_error_is_ref_locked() -> None:
    # containerd sends no ErrorInfo; its message names the lock.
    assert is_ref_locked(errdefs.Unavailable("ref default/1/r locked for 3ms (since ...)"))


def test_other_unavailability_is_not_a_locked_ref() -> None:
    assert not is_ref_locked(errdefs.Unavailable("failed to connect to all addresses"))
    assert not is_ref_locked(errdefs.Unavailable("busy", reason="STORE_BUSY"))
    assert not is_ref_locked(errdefs.NotFound("ref r locked"))


# open_writer


def test_open_writer_waits_until_the_ref_frees(store: LocalStore) -> None:
    holder = store.writer("r")
    threading.Timer(0.3, holder.close).start()
    started = time.monotonic()
    with open_writer(store, "r", timeout=10):
        assert time.monotonic() - started >= 0.25


def test_open_writer_gives_up_at_its_deadline(store: LocalStore) -> None:
    with store.writer("r"):
        started = time.monotonic()
        with pytest.raises(errdefs.DeadlineExceeded, match="opening a writer for ref r"):
            open_writer(store, "r", timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 2


def test_open_writer_stops_when_canceled(store: LocalStore) -> None:
    cancel = threading.Event()
    with store.writer("r"):
        threading.Timer(0.2, cancel.set).start()
        with pytest.raises(errdefs.Canceled):
            open_writer(store, "r", cancel=cancel)


def test_open_writer_does_not_retry_other_errors(store: LocalStore) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        open_writer(store, "", timeout=10)


# write_blob


def test_write_blob_stores_bytes_and_returns_their_digest(store: LocalStore) -> None:
    assert write_blob(store, "r", DATA) == DIGEST
    with store.reader_at(DIGEST) as reader:
        assert reader.read() == DATA


def test_write_blob_commits_labels(store: LocalStore) -> None:
    write_blob(store, "r", DATA, labels={"k": "v"})
    assert dict(store.info(DIGEST).labels) == {"k": "v"}


def test_write_blob_verifies_size_and_digest(store: LocalStore) -> None:
    with pytest.raises(errdefs.FailedPrecondition):
        write_blob(store, "r", DATA, size=len(DATA) - 1)
    with pytest.raises(errdefs.FailedPrecondition):
        write_blob(store, "r2", DATA, digest=digest_of(b"something else"))


def test_write_blob_of_stored_content_needs_no_bytes(store: LocalStore) -> None:
    write_blob(store, "first", DATA)
    assert write_blob(store, "second", Pipe(b""), len(DATA), DIGEST) == DIGEST


def test_write_blob_resumes_by_seeking(store: LocalStore) -> None:
    interrupted(store, "r", DATA[:1_000_000], expected=DIGEST)
    source = io.BytesIO(DATA)
    sent: list[int] = []
    assert write_blob(store, "r", source, len(DATA), DIGEST, progress=sent.append) == DIGEST
    assert sent[0] == 1_000_000


def test_write_blob_resumes_a_pipe_by_reading_past_what_is_there(store: LocalStore) -> None:
    interrupted(store, "r", DATA[:1_500_000], expected=DIGEST)
    sent: list[int] = []
    assert write_blob(store, "r", Pipe(DATA), len(DATA), DIGEST, progress=sent.append) == DIGEST
    assert sent[0] == 1_500_000


def test_without_a_digest_resumed_bytes_are_checked_against_the_source(store: LocalStore) -> None:
    interrupted(store, "r", DATA[:1000])
    assert write_blob(store, "r", DATA) == DIGEST


def test_without_a_digest_foreign_bytes_are_replaced(store: LocalStore) -> None:
    interrupted(store, "r", b"not the source's bytes at all")
    assert write_blob(store, "r", io.BytesIO(DATA)) == DIGEST
    with store.reader_at(DIGEST) as reader:
        assert reader.read() == DATA


def test_with_a_digest_foreign_bytes_fail_the_commit_and_start_over(store: LocalStore) -> None:
    interrupted(store, "r", b"x" * 5000)
    assert write_blob(store, "r", io.BytesIO(DATA), len(DATA), DIGEST) == DIGEST


def test_foreign_bytes_before_a_pipe_cannot_be_replaced(store: LocalStore) -> None:
    interrupted(store, "r", b"not the source's bytes at all")
    with pytest.raises(errdefs.FailedPrecondition, match="differ from the source"):
        write_blob(store, "r", Pipe(DATA))
    assert store.status("r").offset == len(b"not the source's bytes at all")


def test_source_shorter_than_the_ingest_is_refused(store: LocalStore) -> None:
    interrupted(store, "r", DATA[:5000], expected=DIGEST)
    with pytest.raises(errdefs.FailedPrecondition, match="source ended"):
        write_blob(store, "r", Pipe(DATA[:100]), len(DATA), DIGEST)


def test_write_blob_stops_when_canceled_and_keeps_the_ingest(store: LocalStore) -> None:
    cancel = threading.Event()

    def cancel_after_first_chunk(done: int) -> None:
        if done:
            cancel.set()

    with pytest.raises(errdefs.Canceled):
        write_blob(store, "r", DATA, cancel=cancel, progress=cancel_after_first_chunk)
    assert 0 < store.status("r").offset < len(DATA)
    assert write_blob(store, "r", DATA) == DIGEST


def test_negative_size_is_invalid(store: LocalStore) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        write_blob(store, "r", DATA, size=-1)


def test_racing_threads_all_succeed_with_one_blob(store: LocalStore) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def racer() -> None:
        try:
            results.append(write_blob(store, "same", DATA, len(DATA), DIGEST, timeout=60))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [DIGEST] * 8
    assert [info.digest for info in store.walk()] == [DIGEST]

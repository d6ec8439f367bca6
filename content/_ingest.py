"""Writing blobs into any Store: waiting out other writers, resuming, verifying, committing."""

from __future__ import annotations

import hashlib
import io
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO, Final

from contentd.errdefs import (
    REF_LOCKED,
    TOO_MANY_INGESTS,
    TOO_MANY_WRITE_STREAMS,
    AlreadyExists,
    Canceled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    classify,
    find,
)
from contentd.errdefs import Unavailable as _Unavailable

from ._types import Store, Writer
from ._validate import digest_of

#: Bytes read from the source and sent per write.
COPY_CHUNK: Final = 1 << 20
#: Sources up to this size are stored in one step with `Store.put`.
SMALL_BLOB: Final = 1 << 20


def is_ref_locked(err: BaseException) -> bool:
    """Whether `err` says the ref is held by another writer.

    contentd says so with reason REF_LOCKED; containerd, which sends no
    reason, with an Unavailable error whose message says "locked".
    """
    found = find(err)
    if found is None or classify(found) is not _Unavailable:
        return False
    if found.reason is not None:
        return found.reason == REF_LOCKED
    return " locked" in found.message


def _passes_with_time(err: _Unavailable | ResourceExhausted) -> bool:
    """Whether waiting may cure `err`: a held ref, or a daemon out of Write streams for now."""
    if isinstance(err, ResourceExhausted):
        return err.reason in (TOO_MANY_WRITE_STREAMS, TOO_MANY_INGESTS)
    return is_ref_locked(err)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, first * 2**n)).

    Full jitter spreads racing writers out instead of waking them together.
    """

    first: float = 0.005
    cap: float = 1.0
    multiplier: float = 2.0

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """An endless sequence of waits."""
        rng = rng or random.Random()
        ceiling = self.first
        while True:
            yield rng.uniform(0, ceiling)
            ceiling = min(self.cap, ceiling * self.multiplier)


class _Deadline:
    """A bound on a whole operation: an optional timeout and an optional cancel event."""

    def __init__(self, timeout: float | None, cancel: threading.Event | None, doing: str) -> None:
        self._end = None if timeout is None else time.monotonic() + timeout
        self._cancel = cancel or threading.Event()
        self._doing = doing

    def check(self) -> None:
        if self._cancel.is_set():
            raise Canceled(self._doing)
        if self._end is not None and time.monotonic() >= self._end:
            raise DeadlineExceeded(self._doing)

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if the deadline comes first; raise if it has passed."""
        if self._end is not None:
            seconds = min(seconds, max(0.0, self._end - time.monotonic()))
        self._cancel.wait(seconds)
        self.check()


def open_writer(
    store: Store,
    ref: str,
    *,
    total: int = 0,
    expected: str = "",
    labels: Mapping[str, str] | None = None,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    backoff: Backoff | None = None,
) -> Writer:
    """Open a writer on `ref`, waiting while another writer holds it.

    Retries on a locked ref, and on a daemon refusing more Write streams for
    now, with `backoff` until the lock frees, `timeout`
    seconds pass (DeadlineExceeded) or `cancel` is set (Canceled). Every other
    error, AlreadyExists for `expected` included, is raised at once.
    """
    deadline = _Deadline(timeout, cancel, f"opening a writer for ref {ref}")
    return _open_writer(store, ref, total, expected, labels, deadline, backoff or Backoff())


def _open_writer(
    store: Store,
    ref: str,
    total: int,
    expected: str,
    labels: Mapping[str, str] | None,
    deadline: _Deadline,
    backoff: Backoff,
) -> Writer:
    delays = backoff.delays()
    while True:
        deadline.check()
        try:
            return store.writer(ref, total=total, expected=expected, labels=labels)
        except (_Unavailable, ResourceExhausted) as exc:
            if not _passes_with_time(exc):
                raise
        deadline.sleep(next(delays))


def _as_stream(source: BinaryIO | bytes | bytearray | memoryview) -> BinaryIO:
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source)
    return source


def _seekable(stream: BinaryIO) -> bool:
    try:
        return stream.seekable()
    except (AttributeError, ValueError):
        return False


def write_blob(
    store: Store,
    ref: str,
    source: BinaryIO | bytes | bytearray | memoryview,
    size: int | None = None,
    digest: str | None = None,
    labels: Mapping[str, str] | None = None,
    *,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    backoff: Backoff | None = None,
    progress: Callable[[int], None] | None = None,
    lazy: bool = False,
) -> str:
    """Store the bytes of `source` under `ref` and return their digest.

    The same code works on a LocalStore and a RemoteStore. It waits out other
    writers of the ref (retrying with `backoff`); content that is already
    stored (AlreadyExists for `digest`) counts as success; an interrupted
    ingest resumes from its offset, by seeking `source` if it can or else
    reading past the bytes already there. `size` and `digest`, when given,
    are verified by the store on commit.

    Bytes a resumed ingest already holds are trusted only when the commit
    verifies them: with a `digest`, a mismatch starts the ingest over (when
    `source` can seek back); without one, they are compared with the source's
    first bytes before anything is appended.

    `timeout` bounds the whole call (DeadlineExceeded) and `cancel`, when set,
    stops it (Canceled); the ingest is kept for a later resume either way.
    `progress` is called with the number of bytes in the ingest as it grows.

    `lazy` says `source` is costly to read (a download): nothing is read
    from it before the ref's writer is held, so content another writer
    stores meanwhile is never read, and a small source is not stored in one
    step (`Store.put` needs its bytes before it can wait for the ref).
    """
    if size is not None and size < 0:
        raise InvalidArgument(f"size {size}: must not be negative")
    deadline = _Deadline(timeout, cancel, f"writing ref {ref}")
    backoff = backoff or Backoff()
    small = None if lazy else _small(source, size)
    if small is not None:
        return _put(store, ref, small, size, digest, labels, deadline, backoff, progress)
    stream = _as_stream(source)
    restart = False
    while True:
        try:
            writer = _open_writer(store, ref, size or 0, digest or "", labels, deadline, backoff)
        except AlreadyExists:
            if digest:
                return digest
            raise
        with writer:
            if restart:
                writer.truncate(0)
            resumed = _position(writer, stream, verify=not digest)
            try:
                _copy(writer, stream, resumed, deadline, progress)
                return writer.commit(size or 0, digest or "", labels)
            except AlreadyExists:
                return digest or writer.digest()
            except FailedPrecondition:
                # Bytes left by an earlier attempt did not match: start over,
                # if the source can be read again from its start.
                if restart or resumed == 0 or not _seekable(stream):
                    raise
                restart = True
                stream.seek(0)


def _small(source: BinaryIO | bytes | bytearray | memoryview, size: int | None) -> bytes | None:
    """The whole source, when it is small enough to store in one message."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source) if len(source) <= SMALL_BLOB else None
    if size is None or size > SMALL_BLOB:
        return None
    data = source.read(size + 1)
    if len(data) > size:
        raise FailedPrecondition(f"source is longer than its declared size {size}")
    return data


def _put(
    store: Store,
    ref: str,
    data: bytes,
    size: int | None,
    digest: str | None,
    labels: Mapping[str, str] | None,
    deadline: _Deadline,
    backoff: Backoff,
    progress: Callable[[int], None] | None,
) -> str:
    delays = backoff.delays()
    while True:
        deadline.check()
        try:
            stored = store.put(ref, data, size=size or 0, expected=digest or "", labels=labels)
        except AlreadyExists:
            stored = digest or digest_of(data)
        except (_Unavailable, ResourceExhausted) as exc:
            if not _passes_with_time(exc):
                raise
            deadline.sleep(next(delays))
            continue
        if progress:
            progress(len(data))
        return stored


def _position(writer: Writer, stream: BinaryIO, *, verify: bool) -> int:
    """Bring `stream` to where the ingest ends; returns that offset (0 if it starts over)."""
    # Not `status()`: a daemon's writer knows its offset from opening, and a
    # STAT would cost every blob one more round trip.
    offset = writer.offset
    if offset == 0:
        return 0
    if not verify:
        if _seekable(stream):
            stream.seek(offset)
        else:
            _skip(stream, offset)
        return offset
    # No digest to check the whole commit against: compare what the ingest
    # holds with the source's first bytes before appending to them.
    held = writer.digest()
    algorithm = held.partition(":")[0]
    if _seekable(stream):
        stream.seek(0)
    prefix = _skip(stream, offset, hashlib.new(algorithm) if algorithm else None)
    if prefix == held:
        return offset
    if not _seekable(stream):
        raise FailedPrecondition(
            f"ingest {writer.ref} holds {offset} bytes that differ from the source, "
            "which cannot be read again: abort the ingest and retry"
        )
    writer.truncate(0)
    stream.seek(0)
    return 0


def _skip(stream: BinaryIO, count: int, hasher: hashlib._Hash | None = None) -> str:
    """Read past `count` bytes; returns their digest when hashing them."""
    remaining = count
    while remaining:
        chunk = stream.read(min(COPY_CHUNK, remaining))
        if not chunk:
            raise FailedPrecondition(
                f"source ended after {count - remaining} bytes, before the ingest's {count}"
            )
        if hasher is not None:
            hasher.update(chunk)
        remaining -= len(chunk)
    return f"{hasher.name}:{hasher.hexdigest()}" if hasher is not None else ""


def _copy(
    writer: Writer,
    stream: BinaryIO,
    done: int,
    deadline: _Deadline,
    progress: Callable[[int], None] | None,
) -> None:
    if progress:
        progress(done)
    while chunk := stream.read(COPY_CHUNK):
        deadline.check()
        writer.write(chunk)
        done += len(chunk)
        if progress:
            progress(done)

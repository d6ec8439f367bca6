"""The client side of every workload, run in processes of its own.

Each client is a separate process (multiprocessing, spawn), so no client shares a GIL
with another or with the harness, which samples the daemon meanwhile. `run_clients` starts
them, waits until every one has connected and prepared (opened its files, built its
data), then releases them together and collects what each returns. Clients time
themselves with `time.monotonic()`, which on Linux is one clock for every process, so
windows from different clients compare directly.

Every client talks through the same code whichever server it talks to:
`contentd.client.RemoteStore` and `contentd.client.write_blob`.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import queue
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Final, Protocol, TypeVar

from contentd.client import RemoteStore
from contentd.content import write_blob

#: Bytes per WRITE message and per read() of a large blob.
CHUNK: Final = 1 << 20
#: How long a spawned client may take to import, connect and prepare.
READY_TIMEOUT: Final = 120.0
#: A label containerd's garbage collector treats as a root: content carrying it stays.
GC_ROOT: Final = "containerd.io/gc.root"
#: Bound on each unary call and on opening each stream.
CALL_TIMEOUT: Final = 120.0
#: How long a client that has sent its result may take to exit.
EXIT_TIMEOUT: Final = 10.0

_SPAWN = multiprocessing.get_context("spawn")


def gc_root_labels(**extra: str) -> dict[str, str]:
    """Labels that keep a blob from containerd's collector, plus `extra`."""
    return {GC_ROOT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}


def sha256_digest(data: bytes) -> str:
    """The OCI digest string of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Window:
    """When a client's measured work started and ended, on the shared monotonic clock."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def span(windows: Sequence[Window]) -> float:
    """Seconds from the earliest start to the latest end of `windows`."""
    return max(w.end for w in windows) - min(w.start for w in windows)


class Go(Protocol):
    """What a client calls once it is prepared: waits for the start, returns its time."""

    def __call__(self) -> float: ...


J = TypeVar("J")
R = TypeVar("R")
Client = Callable[[RemoteStore, J, Go], R]


@dataclass(frozen=True)
class Blob:
    """A file of content on disk with its size and digest."""

    path: Path
    size: int
    digest: str


# The clients. Each prepares, calls go(), does the measured work and returns its result.


@dataclass(frozen=True)
class LargeIngest:
    """Ingest `blob` under `ref` in CHUNK-sized writes, committing with `labels`."""

    blob: Blob
    ref: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Timed:
    """A client's measured window and how many bytes or items it moved."""

    window: Window
    count: int
    digests: tuple[str, ...] = ()
    #: The client process's CPU seconds (every thread's) over its window, where measured.
    cpu_seconds: float | None = None


def ingest_large(store: RemoteStore, job: LargeIngest, go: Go) -> Timed:
    """One writer, one Write stream: the shape of an image layer pull."""
    with job.blob.path.open("rb", buffering=0) as source:
        start = go()
        with store.writer(job.ref, total=job.blob.size, expected=job.blob.digest) as writer:
            while piece := source.read(CHUNK):
                writer.write(piece)
            digest = writer.commit(job.blob.size, job.blob.digest, job.labels)
        end = time.monotonic()
    if digest != job.blob.digest:
        raise RuntimeError(f"committed {digest}, expected {job.blob.digest}")
    return Timed(Window(start, end), job.blob.size, (digest,))


@dataclass(frozen=True)
class LargeRead:
    """Stream the blob `digest` of `size` bytes in CHUNK-sized reads."""

    digest: str
    size: int


def read_large(store: RemoteStore, job: LargeRead, go: Go) -> Timed:
    """Read a whole blob sequentially, counting (not hashing) its bytes."""
    start = go()
    received = 0
    with store.reader_at(job.digest) as reader:
        while piece := reader.read(CHUNK):
            received += len(piece)
    end = time.monotonic()
    if received != job.size:
        raise RuntimeError(f"read {received} bytes of {job.digest}, expected {job.size}")
    return Timed(Window(start, end), received)


@dataclass(frozen=True)
class SmallBlobs:
    """Write random blobs of `size` bytes for `seconds`, each followed by an Info."""

    size: int
    seconds: float
    labels: Mapping[str, str]


def small_blobs(store: RemoteStore, job: SmallBlobs, go: Go) -> Timed:
    """write_blob (open, write, commit: durable once answered) then info, until time is up."""
    prefix = f"small-{os.getpid()}-{os.urandom(4).hex()}"
    start = go()
    cpu_at_start = time.process_time()
    deadline = start + job.seconds
    count = 0
    end = start
    while end < deadline:
        data = os.urandom(job.size)
        digest = sha256_digest(data)
        write_blob(store, f"{prefix}-{count}", data, job.size, digest, job.labels)
        if store.info(digest).size != job.size:
            raise RuntimeError(f"info of {digest} reports the wrong size")
        count += 1
        end = time.monotonic()
    return Timed(Window(start, end), count, cpu_seconds=time.process_time() - cpu_at_start)


def listing_content(index: int) -> bytes:
    """Distinct small content for blob number `index` of the listing workload."""
    return f"contentd benchmark listing blob {index:09d}\n".encode()


def listing_kind(index: int) -> str:
    """The `kind` label of blob number `index`: half are a, half b."""
    return "a" if index % 2 == 0 else "b"


@dataclass(frozen=True)
class Populate:
    """Write listing blobs number `first`, `first + step`, ... below `stop`."""

    first: int
    stop: int
    step: int


def populate(store: RemoteStore, job: Populate, go: Go) -> Timed:
    """Store one share of the listing blobs, labelled with their kind."""
    labels = {kind: gc_root_labels(kind=kind) for kind in ("a", "b")}
    start = go()
    count = 0
    for index in range(job.first, job.stop, job.step):
        data = listing_content(index)
        kind = listing_kind(index)
        write_blob(store, f"list-{index}", data, len(data), sha256_digest(data), labels[kind])
        count += 1
    return Timed(Window(start, time.monotonic()), count)


@dataclass(frozen=True)
class Listing:
    """List the namespace `rounds` times with `filters`, expecting `expected` blobs."""

    filters: tuple[str, ...]
    expected: int
    rounds: int


@dataclass(frozen=True)
class Listed:
    """The seconds each listing round took."""

    rounds: tuple[float, ...] = field(default=())


def list_blobs(store: RemoteStore, job: Listing, go: Go) -> Listed:
    """Time whole walks of the namespace, checking each returns every expected blob."""
    go()
    rounds = []
    for _ in range(job.rounds):
        start = time.monotonic()
        count = len(list(store.walk(*job.filters)))
        rounds.append(time.monotonic() - start)
        if count != job.expected:
            raise RuntimeError(f"listing {job.filters} returned {count}, expected {job.expected}")
    return Listed(tuple(rounds))


@dataclass(frozen=True)
class Contend:
    """Ingest `blob` under the shared `ref` with write_blob, waiting out the others."""

    blob: Blob
    ref: str
    labels: Mapping[str, str]
    timeout: float


def contend(store: RemoteStore, job: Contend, go: Go) -> Timed:
    """One of many writers of one ref: write_blob retries until the content exists."""
    with job.blob.path.open("rb") as source:
        start = go()
        digest = write_blob(
            store,
            job.ref,
            source,
            job.blob.size,
            job.blob.digest,
            job.labels,
            timeout=job.timeout,
        )
        end = time.monotonic()
    return Timed(Window(start, end), job.blob.size, (digest,))


# Running clients in processes.


@dataclass(frozen=True)
class _Gate:
    """The child's side of the start: say it is ready, then wait for the go."""

    index: int
    events: multiprocessing.Queue[tuple[str, int, object]]
    go: Event
    timeout: float

    def __call__(self) -> float:
        self.events.put(("ready", self.index, None))
        if not self.go.wait(self.timeout):
            raise TimeoutError("no go from the harness")
        return time.monotonic()


def _child(
    index: int,
    client: Client[J, R],
    job: J,
    address: str,
    namespace: str,
    events: multiprocessing.Queue[tuple[str, int, object]],
    go: Event,
    timeout: float,
) -> None:
    try:
        with RemoteStore(address, namespace, timeout=CALL_TIMEOUT) as store:
            store.wait_ready(timeout=READY_TIMEOUT)
            result = client(store, job, _Gate(index, events, go, timeout))
    except BaseException:
        events.put(("error", index, traceback.format_exc()))
    else:
        events.put(("done", index, result))


class ClientError(RuntimeError):
    """A client process failed or ran out of time."""


def run_clients(
    client: Client[J, R],
    jobs: Sequence[J],
    *,
    addresses: Sequence[str],
    namespace: str,
    timeout: float,
    on_ready: Callable[[], None] = lambda: None,
) -> list[R]:
    """Run `client(store, job, go)` for each job, each in a process of its own, the jobs
    dealt in turn across `addresses` (daemons serving one store).

    Once every client has called `go()` (prepared and waiting), `on_ready` runs and then
    all are released together. Returns their results in job order. Raises ClientError
    when one fails, or when they are not all done `timeout` seconds after the release;
    no process outlives the call.
    """
    events: multiprocessing.Queue[tuple[str, int, object]] = _SPAWN.Queue()
    go = _SPAWN.Event()
    processes: list[SpawnProcess] = []
    results: dict[int, R] = {}
    try:
        for index, job in enumerate(jobs):
            process = _SPAWN.Process(
                target=_child,
                args=(
                    index,
                    client,
                    job,
                    addresses[index % len(addresses)],
                    namespace,
                    events,
                    go,
                    READY_TIMEOUT + timeout,
                ),
                name=f"bench-client-{index}",
                daemon=True,
            )
            process.start()
            processes.append(process)
        ready: set[int] = set()
        deadline = time.monotonic() + READY_TIMEOUT
        released = False
        while len(results) < len(jobs):
            if not released and len(ready) == len(jobs):
                on_ready()
                go.set()
                released = True
                deadline = time.monotonic() + timeout
            try:
                kind, index, payload = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                stage = "finish" if released else "get ready"
                raise ClientError(
                    f"{len(jobs) - len(results)} of {len(jobs)} {client.__name__} clients "
                    f"did not {stage} in time"
                ) from None
            if kind == "ready":
                ready.add(index)
            elif kind == "error":
                raise ClientError(f"{client.__name__} client {index} failed:\n{payload}")
            else:
                results[index] = payload  # type: ignore[assignment]
        for process in processes:
            process.join(timeout=EXIT_TIMEOUT)
        return [results[index] for index in range(len(jobs))]
    finally:
        # After a failure the others may still be working (or waiting for a go): end them.
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join()
        events.close()
        events.join_thread()

"""The workloads of the side-by-side benchmark, each a set of measured cases.

A workload runs against one server at a time: the harness starts the server, calls
`run`, and stops it. Each case launches its clients (see `clients`), measures the daemon
process from the moment every client is ready until the last one is done, and yields a
`Result`. Cases marked not `counted` are reported for information only (how long the
listing's population took, and the small-blob workload's references: what bounds its
rate on this machine).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Final, TypeVar

import go_clients
from clients import (
    Blob,
    Contend,
    LargeIngest,
    LargeRead,
    Listing,
    Populate,
    SmallBlobs,
    Timed,
    contend,
    gc_root_labels,
    ingest_large,
    list_blobs,
    populate,
    read_large,
    run_clients,
    small_blobs,
    span,
)
from clients import Client as ClientFunction
from go_clients import GoRun
from measure import Monitor, Usage, combined
from servers import NULL_SERVER, NullServer, Running

from contentd.client import RemoteStore
from contentd.errdefs import NotFound

MIB: Final = 1 << 20
GIB: Final = 1 << 30
MB: Final = 1e6
SMALL_BLOB: Final = 4096
LIST_ROUNDS: Final = 3
LIST_FILTER: Final = "labels.kind==a"
CONTENTION_REF: Final = "same-ref"
LARGE_REF: Final = "bench-large"
#: The name results of contentd's store measured without gRPC go under.
STORE_ALONE: Final = "store-alone"

J = TypeVar("J")
R = TypeVar("R")


@dataclass(frozen=True)
class Scale:
    """How big each workload is."""

    large_size: int
    small_seconds: float
    small_clients: tuple[int, ...]
    list_count: int
    populate_writers: int
    contention_clients: int
    contention_size: int
    #: Clients of the small-blob workload driven by the Go load client.
    go_small_clients: tuple[int, ...]

    # Timeouts assume throughputs far below anything either server manages, so they only
    # catch a hang.

    def large_timeout(self) -> float:
        return 120 + self.large_size / (2 * MB)

    def small_timeout(self) -> float:
        return self.small_seconds + 120

    def populate_timeout(self) -> float:
        return 120 + self.list_count / 20

    def list_timeout(self) -> float:
        return 120 + LIST_ROUNDS * self.list_count / 500

    def contention_timeout(self) -> float:
        return 120 + self.contention_clients * self.contention_size / (2 * MB)


FULL: Final = Scale(
    large_size=GIB,
    small_seconds=15.0,
    small_clients=(1, 8),
    list_count=100_000,
    populate_writers=8,
    contention_clients=16,
    contention_size=64 * MIB,
    go_small_clients=(1, 8, 32),
)
#: The full run on a cluster store: populating 100,000 blobs through S3 and PostgreSQL
#: takes a quarter of an hour here, so both servers list a fifth of that.
FULL_CLUSTER: Final = dataclasses.replace(FULL, list_count=20_000)
QUICK: Final = Scale(
    large_size=64 * MIB,
    small_seconds=2.0,
    small_clients=(1, 8),
    list_count=2_000,
    populate_writers=8,
    contention_clients=4,
    contention_size=8 * MIB,
    go_small_clients=(1, 8, 32),
)


def human_bytes(size: int) -> str:
    """1 GiB, 64 MiB, 4 KiB: sizes as the workload titles name them."""
    for unit, factor in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


@dataclass(frozen=True)
class Result:
    """One case's outcome on one server."""

    case: str
    title: str
    server: str
    value: float
    unit: str
    #: Whether a larger value is better (rates) or worse (seconds).
    higher_is_better: bool
    #: False for figures reported for information only, outside the comparison.
    counted: bool
    #: The daemon process over the measured window (None when it was not measured).
    usage: Usage | None
    raw: dict[str, object] = field(default_factory=dict)


class Data:
    """Source files the clients read, made once per run and shared by both servers."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._blobs: dict[str, Blob] = {}
        self._go_load: Path | None = None

    def go_load(self) -> Path:
        """The Go load client's binary, built the first time it is asked for."""
        if self._go_load is None:
            self._go_load = go_clients.build(self.directory / "goload")
        return self._go_load

    def random_blob(self, name: str, size: int) -> Blob:
        """A file of `size` random bytes, written the first time it is asked for."""
        blob = self._blobs.get(name)
        if blob is not None and blob.size == size:
            return blob
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}.bin"
        hasher = hashlib.sha256()
        with path.open("wb") as out:
            remaining = size
            while remaining:
                piece = os.urandom(min(remaining, 16 * MIB))
                hasher.update(piece)
                out.write(piece)
                remaining -= len(piece)
        blob = Blob(path, size, "sha256:" + hasher.hexdigest())
        self._blobs[name] = blob
        return blob


@dataclass
class Context:
    """What a workload needs to run against one server."""

    server: Running
    scale: Scale
    data: Data
    progress: Callable[[str], None]
    #: The CPU seconds the store's engines have used so far, when it has engines to measure.
    engines_cpu: Callable[[], float] | None = None

    def clients(
        self,
        client: ClientFunction[J, R],
        jobs: Sequence[J],
        *,
        namespace: str,
        timeout: float,
        measure: bool = True,
    ) -> tuple[list[R], Usage | None]:
        """Run `client` once per job in processes of their own (dealt across the server's
        daemons), measuring the daemons (and the engines, if any) from the moment all are
        ready until all are done (unless `measure` is false)."""
        return self.measured(
            lambda on_ready: run_clients(
                client,
                jobs,
                addresses=self.server.addresses,
                namespace=namespace,
                timeout=timeout,
                on_ready=on_ready,
            ),
            measure=measure,
        )

    def go_load(
        self, binary: Path, arguments: Sequence[str], *, namespace: str, timeout: float
    ) -> tuple[GoRun, Usage]:
        """Run the Go load client with `arguments` against the server's first daemon,
        measuring the daemons (and the engines, if any) over its run."""
        ran, usage = self.measured(
            lambda on_ready: go_clients.run(
                binary,
                self.server.address,
                namespace,
                arguments,
                timeout=timeout,
                on_ready=on_ready,
            )
        )
        assert usage is not None
        return ran, usage

    def measured(
        self, run: Callable[[Callable[[], None]], R], *, measure: bool = True
    ) -> tuple[R, Usage | None]:
        """Call `run(on_ready)`, measuring the daemons (and the engines, if any) from
        `on_ready()`, which it calls once its clients are ready, until it returns (unless
        `measure` is false)."""
        # Bytes an earlier step left dirty would otherwise be written back on this one's time.
        os.sync()
        monitors = [Monitor(pid) for pid in self.server.pids]
        engines_at_start = 0.0

        def on_ready() -> None:
            nonlocal engines_at_start
            if self.engines_cpu is not None:
                engines_at_start = self.engines_cpu()
            for monitor in monitors:
                monitor.start()

        try:
            results = run(on_ready if measure else lambda: None)
        finally:
            for monitor in monitors:
                monitor.stop()
        if not measure:
            return results, None
        usage = combined([monitor.usage for monitor in monitors])
        if self.engines_cpu is not None:
            spent = self.engines_cpu() - engines_at_start
            usage = dataclasses.replace(usage, engines_cpu_seconds=spent)
        return results, usage

    def store(self, namespace: str) -> RemoteStore:
        """A client in the harness itself, for checks outside the measured windows."""
        return RemoteStore(self.server.address, namespace, timeout=60.0)


@dataclass
class References:
    """What a workload needs to measure its references, outside any server under test."""

    workdir: Path
    scale: Scale
    data: Data
    progress: Callable[[str], None]


class Workload(ABC):
    """A named workload: `--only NAME` selects it."""

    name: ClassVar[str]
    namespace: ClassVar[str]

    def unavailable(self) -> str | None:
        """Why the workload cannot run on this machine, or None when it can."""
        return None

    def prepare(self, data: Data, scale: Scale) -> None:  # noqa: B027 (most need nothing)
        """Make source data, before any server starts."""

    @abstractmethod
    def run(self, ctx: Context) -> list[Result]:
        """Run every case against `ctx.server`."""

    def references(self, ctx: References) -> list[Result]:
        """Measure what bounds the workload on this machine, once both servers ran it."""
        return []

    def result(
        self,
        ctx: Context,
        case: str,
        title: str,
        value: float,
        unit: str,
        usage: Usage | None,
        *,
        higher_is_better: bool,
        counted: bool = True,
        **raw: object,
    ) -> Result:
        ctx.progress(f"{ctx.server.name}: {title}: {value:,.2f} {unit}")
        return Result(
            case=f"{self.name}/{case}" if case else self.name,
            title=title,
            server=ctx.server.name,
            value=value,
            unit=unit,
            higher_is_better=higher_is_better,
            counted=counted,
            usage=usage,
            raw=raw,
        )

    def streaming_rate(
        self, ctx: Context, title: str, size: int, timed: Timed, usage: Usage | None
    ) -> Result:
        """The result of moving `size` bytes in `timed`: MB/s."""
        seconds = timed.window.seconds
        rate = size / MB / seconds
        return self.result(
            ctx, "", title, rate, "MB/s", usage, higher_is_better=True, seconds=seconds
        )


class LargeIngestWorkload(Workload):
    """One large blob in 1 MiB WRITE messages, committed with a gc.root label."""

    name = "large-ingest"
    namespace = "bench-large"

    def prepare(self, data: Data, scale: Scale) -> None:
        data.random_blob("large", scale.large_size)

    def run(self, ctx: Context) -> list[Result]:
        blob = ctx.data.random_blob("large", ctx.scale.large_size)
        job = LargeIngest(blob, LARGE_REF, gc_root_labels())
        [timed], usage = ctx.clients(
            ingest_large, [job], namespace=self.namespace, timeout=ctx.scale.large_timeout()
        )
        title = f"large ingest: {human_bytes(blob.size)} in 1 MiB writes"
        return [self.streaming_rate(ctx, title, blob.size, timed, usage)]


class LargeReadWorkload(Workload):
    """The large blob streamed back with Read, 1 MiB at a time."""

    name = "large-read"
    namespace = LargeIngestWorkload.namespace

    def prepare(self, data: Data, scale: Scale) -> None:
        data.random_blob("large", scale.large_size)

    def run(self, ctx: Context) -> list[Result]:
        blob = ctx.data.random_blob("large", ctx.scale.large_size)
        with ctx.store(self.namespace) as store:
            try:
                store.info(blob.digest)
            except NotFound:
                ctx.progress(f"{ctx.server.name}: ingesting the large blob first (not measured)")
                ctx.clients(
                    ingest_large,
                    [LargeIngest(blob, LARGE_REF, gc_root_labels())],
                    namespace=self.namespace,
                    timeout=ctx.scale.large_timeout(),
                    measure=False,
                )
        [timed], usage = ctx.clients(
            read_large,
            [LargeRead(blob.digest, blob.size)],
            namespace=self.namespace,
            timeout=ctx.scale.large_timeout(),
        )
        title = f"large read: {human_bytes(blob.size)} in 1 MiB reads"
        return [self.streaming_rate(ctx, title, blob.size, timed, usage)]


class SmallBlobsWorkload(Workload):
    """4 KiB blobs: write, durable commit (labelled), then Info; 1 and 8 client processes.

    Its references, outside the comparison, bound what any server could reach here: the
    same clients against a gRPC server that stores nothing, and contentd's store alone,
    with no gRPC, driven by as many threads as there were clients.
    """

    name = "small"
    namespace = "bench-small"

    def run(self, ctx: Context) -> list[Result]:
        daemons = len(ctx.server.addresses)
        # Several daemons on one store: the cases with a client for each of them at least.
        on = f", {daemons} contentd daemons on one store" if daemons > 1 else ""
        return [
            self._measure(
                ctx,
                clients,
                f"small blobs: 4 KiB write+commit+info, {_counted(clients, 'client')}{on}",
            )
            for clients in ctx.scale.small_clients
            if clients >= daemons
        ]

    def _measure(self, ctx: Context, clients: int, title: str, *, counted: bool = True) -> Result:
        job = SmallBlobs(SMALL_BLOB, ctx.scale.small_seconds, gc_root_labels())
        timed, usage = ctx.clients(
            small_blobs,
            [job] * clients,
            namespace=self.namespace,
            timeout=ctx.scale.small_timeout(),
        )
        count = sum(t.count for t in timed)
        seconds = span([t.window for t in timed])
        return self.result(
            ctx,
            f"{clients}",
            title,
            count / seconds,
            "blobs/s",
            usage,
            higher_is_better=True,
            counted=counted,
            blobs=count,
            seconds=seconds,
            per_client=[t.count for t in timed],
            client_cpu_seconds=sum(t.cpu_seconds or 0.0 for t in timed),
        )

    def references(self, ctx: References) -> list[Result]:
        results = []
        server = NullServer(ctx.workdir / NULL_SERVER)
        running = server.start()
        try:
            on_null = Context(running, ctx.scale, ctx.data, ctx.progress)
            for clients in ctx.scale.small_clients:
                what = _counted(clients, "client")
                title = f"small blobs, {what}: a gRPC server that stores nothing"
                results.append(self._measure(on_null, clients, title, counted=False))
        finally:
            server.stop()
        for clients in ctx.scale.small_clients:
            results.append(self._store_alone(ctx, clients))
        return results

    def _store_alone(self, ctx: References, threads: int) -> Result:
        os.sync()
        title = f"small blobs, {_counted(threads, 'thread')}: contentd's store alone, no gRPC"
        command = [
            sys.executable,
            str(Path(__file__).with_name("store_alone.py")),
            str(ctx.workdir / STORE_ALONE),
            str(threads),
            str(ctx.scale.small_seconds),
            str(SMALL_BLOB),
            json.dumps(gc_root_labels()),
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=ctx.scale.small_timeout(), check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"store_alone.py failed:\n{done.stderr[-4000:]}")
        measured = json.loads(done.stdout)
        cpu = measured["user_seconds"] + measured["system_seconds"]
        rate = measured["blobs"] / measured["seconds"]
        ctx.progress(f"{STORE_ALONE}: {title}: {rate:,.2f} blobs/s")
        return Result(
            case=f"{self.name}/{threads}",
            title=title,
            server=STORE_ALONE,
            value=rate,
            unit="blobs/s",
            higher_is_better=True,
            counted=False,
            usage=Usage(peak_rss=0, hwm=measured["max_rss"], cpu_seconds=cpu, samples=0),
            raw=measured,
        )


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class ListingWorkload(Workload):
    """A namespace of many small labelled blobs, listed whole and through a label filter."""

    name = "listing"
    namespace = "bench-list"

    def run(self, ctx: Context) -> list[Result]:
        count, writers = ctx.scale.list_count, ctx.scale.populate_writers
        ctx.progress(f"{ctx.server.name}: populating {count:,} blobs with {writers} writers")
        jobs = [Populate(first, count, writers) for first in range(writers)]
        timed, usage = ctx.clients(
            populate, jobs, namespace=self.namespace, timeout=ctx.scale.populate_timeout()
        )
        seconds = span([t.window for t in timed])
        results = [
            self.result(
                ctx,
                "populate",
                f"listing: populate {count:,} blobs, {writers} writers (not counted)",
                seconds,
                "s",
                usage,
                higher_is_better=False,
                counted=False,
                blobs=sum(t.count for t in timed),
                blobs_per_second=count / seconds,
                writers=writers,
            )
        ]
        half = math.ceil(count / 2)
        cases = (
            ("all", (), count, f"listing: List all {count:,} (best of {LIST_ROUNDS})"),
            (
                "filtered",
                (LIST_FILTER,),
                half,
                f"listing: List {LIST_FILTER} ({half:,}; best of {LIST_ROUNDS})",
            ),
        )
        for case, filters, expected, title in cases:
            [listed], usage = ctx.clients(
                list_blobs,
                [Listing(filters, expected, LIST_ROUNDS)],
                namespace=self.namespace,
                timeout=ctx.scale.list_timeout(),
            )
            results.append(
                self.result(
                    ctx,
                    case,
                    title,
                    min(listed.rounds),
                    "s",
                    usage,
                    higher_is_better=False,
                    rounds=list(listed.rounds),
                )
            )
        return results


class ContentionWorkload(Workload):
    """Many clients ingesting the same content on one ref, through write_blob's retries."""

    name = "contention"
    namespace = "bench-contention"

    def prepare(self, data: Data, scale: Scale) -> None:
        data.random_blob("contention", scale.contention_size)

    def run(self, ctx: Context) -> list[Result]:
        scale = ctx.scale
        blob = ctx.data.random_blob("contention", scale.contention_size)
        timeout = scale.contention_timeout()
        job = Contend(blob, CONTENTION_REF, gc_root_labels(), timeout)
        timed, usage = ctx.clients(
            contend, [job] * scale.contention_clients, namespace=self.namespace, timeout=timeout
        )
        seconds = span([t.window for t in timed])
        wrong = [t.digests for t in timed if t.digests != (blob.digest,)]
        if wrong:
            raise RuntimeError(f"contention: clients returned {wrong}, expected {blob.digest}")
        with ctx.store(self.namespace) as store:
            stored = sum(1 for info in store.walk() if info.digest == blob.digest)
            ingests = len(store.list_statuses())
        if stored != 1:
            raise RuntimeError(f"contention: {stored} blobs listed with {blob.digest}, not 1")
        title = (
            f"lock contention: {scale.contention_clients} clients, one ref, "
            f"{human_bytes(blob.size)} (until all succeed)"
        )
        return [
            self.result(
                ctx,
                "",
                title,
                seconds,
                "s",
                usage,
                higher_is_better=False,
                per_client_seconds=[t.window.seconds for t in timed],
                ingests_left=ingests,
            )
        ]


class GoWorkload(Workload):
    """A workload driven by the Go load client (`go_clients`), built once per run."""

    def unavailable(self) -> str | None:
        return go_clients.unavailable()

    def prepare(self, data: Data, scale: Scale) -> None:
        data.go_load()


class SmallBlobsGoWorkload(GoWorkload):
    """4 KiB blobs as `small` writes them, by containerd's Go client instead: WriteBlob
    (labelled, durable once answered) then Info, each client on a connection of its own."""

    name = "small-go"
    namespace = "bench-small-go"

    def run(self, ctx: Context) -> list[Result]:
        scale = ctx.scale
        results = []
        for clients in scale.go_small_clients:
            arguments = go_clients.small_arguments(
                clients, scale.small_seconds, SMALL_BLOB, gc_root_labels()
            )
            ran, usage = ctx.go_load(
                ctx.data.go_load(),
                arguments,
                namespace=self.namespace,
                timeout=scale.small_timeout(),
            )
            ran.check(f"{self.name} with {clients} clients")
            seconds = ran.window.seconds
            title = f"small blobs, Go clients: 4 KiB WriteBlob+Info, {_counted(clients, 'client')}"
            results.append(
                self.result(
                    ctx,
                    f"{clients}",
                    title,
                    ran.blobs / seconds,
                    "blobs/s",
                    usage,
                    higher_is_better=True,
                    blobs=ran.blobs,
                    seconds=seconds,
                    per_client=list(ran.counts),
                    client_cpu_seconds=ran.cpu_seconds,
                )
            )
        return results


class ContentionGoWorkload(GoWorkload):
    """`contention` by containerd's Go client: WriteBlob of one content under one ref, its
    OpenWriter retrying the ref's lock, every client on a connection of its own."""

    name = "contention-go"
    namespace = "bench-contention-go"

    def prepare(self, data: Data, scale: Scale) -> None:
        super().prepare(data, scale)
        # Content of its own: the shared policy would find `contention`'s in any namespace.
        data.random_blob(self.name, scale.contention_size)

    def run(self, ctx: Context) -> list[Result]:
        scale = ctx.scale
        blob = ctx.data.random_blob(self.name, scale.contention_size)
        timeout = scale.contention_timeout()
        arguments = go_clients.contend_arguments(
            scale.contention_clients,
            blob.path,
            blob.digest,
            CONTENTION_REF,
            gc_root_labels(),
            timeout,
        )
        ran, usage = ctx.go_load(
            ctx.data.go_load(), arguments, namespace=self.namespace, timeout=timeout
        )
        ran.check(self.name)
        if ran.listed != 1:
            raise RuntimeError(f"{self.name}: {ran.listed} blobs listed with {blob.digest}, not 1")
        title = (
            f"lock contention, Go clients: {scale.contention_clients} clients, one ref, "
            f"{human_bytes(blob.size)} (until all succeed)"
        )
        return [
            self.result(
                ctx,
                "",
                title,
                ran.window.seconds,
                "s",
                usage,
                higher_is_better=False,
                per_client_seconds=[end - ran.start for end in ran.ends],
                client_cpu_seconds=ran.cpu_seconds,
            )
        ]


WORKLOADS: Final[tuple[Workload, ...]] = (
    LargeIngestWorkload(),
    LargeReadWorkload(),
    SmallBlobsWorkload(),
    ListingWorkload(),
    ContentionWorkload(),
    SmallBlobsGoWorkload(),
    ContentionGoWorkload(),
)

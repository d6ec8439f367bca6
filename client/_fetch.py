"""Fetching an image's tree from a registry into a store: the engine of `pull`.

The downloads run on an asyncio event loop, the store's calls on threads
beside it, the bytes handed over a chunk at a time (`contentd.client._transfer`).
When one transfer fails for good the others are canceled: their downloads
are closed at once, their threads stop at the next chunk, and the call
returns only once every thread and connection of the pull has ended.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import io
import os
import threading
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from typing import BinaryIO, Final, cast

from contentd.content import (
    CONTENT,
    DEFAULT_LEASE_EXPIRY,
    EXPIRE_LABEL,
    Descriptor,
    Image,
    Images,
    LeaseResource,
    MetadataStore,
    write_blob,
)
from contentd.errdefs import (
    AlreadyExists,
    Canceled,
    ContentdError,
    DataLoss,
    FailedPrecondition,
)

from ._manifests import (
    child_gc_labels,
    distribution_source_label,
    is_index,
    is_manifest,
    kind,
    parse_manifest,
    ref_key,
    select_children,
)
from ._platforms import PlatformMatcher
from ._reference import Reference
from ._registry import RegistryClient
from ._registry_options import RegistryOptions
from ._transfer import (
    EventHandler,
    Transfer,
    TransferEvent,
    first_error,
    info_or_none,
    read_all,
)

#: How often a thread waiting for bytes looks whether the pull was canceled.
_CANCEL_POLL: Final = 0.25
#: Bytes of a download waiting for its thread beyond which the loop stops reading it...
_BUFFERED: Final = 4 << 20
#: ...until the thread has taken them down to this.
_RESUME: Final = 1 << 20


def _record(images: Images, image: Image) -> Image:
    """Name the target: a new image, or an existing one pointed at it (as containerd does)."""
    try:
        return images.create(image)
    except AlreadyExists:
        return images.update(image, ["target"])


class Fetch(Transfer):
    """One pull's fetching: its registry client, its lease and what it has seen."""

    def __init__(
        self,
        store: MetadataStore,
        reference: Reference,
        name: str,
        matcher: PlatformMatcher | None,
        options: RegistryOptions,
        concurrency: int,
        on_event: EventHandler | None,
        progress: bool,
    ) -> None:
        super().__init__(store, concurrency, on_event, "contentd-pull", progress)
        self._reference = reference
        self._name = name
        self._matcher = matcher
        self._options = options
        self._seen: set[str] = set()
        self._registry: RegistryClient | None = None

    async def run(self) -> Image:
        image = await self.run_threads(self._pull())
        target = image.target
        self.emit(
            TransferEvent(
                "recorded", target.digest, target.size, target.media_type, name=self._name
            )
        )
        return image

    async def _pull(self) -> Image:
        async with RegistryClient(self._reference.api_host, self._options) as registry:
            self._registry = registry
            target = await registry.resolve(self._reference)
            self.emit(
                TransferEvent(
                    "resolved", target.digest, target.size, target.media_type, name=self._name
                )
            )
            if self.store.lease_id is not None:
                # The caller's lease keeps what is fetched, and outlives the pull.
                await self._dispatch(self.store, target)
                return await self.call(_record, self.store.images, Image(self._name, target))
            expires = (datetime.now(UTC) + DEFAULT_LEASE_EXPIRY).isoformat(timespec="seconds")
            lease = await self.call(self.store.leases.create, "", {EXPIRE_LABEL: expires})
            leased = self.store.with_lease(lease.id)
            await self._dispatch(leased, target)
            image = await self.call(_record, leased.images, Image(self._name, target))
            # The image keeps everything now. On failure the lease stays, until it
            # expires, so that the next pull resumes the ingests it holds.
            await self.call(self.store.leases.delete, lease.id)
            return image

    # The tree

    async def _dispatch(self, store: MetadataStore, root: Descriptor) -> None:
        """Fetch `root` and what it names; the first failure cancels the rest and is raised."""
        try:
            async with asyncio.TaskGroup() as group:
                self._spawn(group, store, root)
        except BaseExceptionGroup as failed:
            raise first_error(failed) from None

    def _spawn(
        self, group: asyncio.TaskGroup, store: MetadataStore, descriptor: Descriptor
    ) -> None:
        if descriptor.digest not in self._seen:
            self._seen.add(descriptor.digest)
            group.create_task(self._handle(group, store, descriptor))

    async def _handle(
        self, group: asyncio.TaskGroup, store: MetadataStore, descriptor: Descriptor
    ) -> None:
        await self._fetch(store, descriptor)
        if not (is_index(descriptor.media_type) or is_manifest(descriptor.media_type)):
            return
        data = await self.call(read_all, store, descriptor.digest)
        manifest = parse_manifest(descriptor, data)
        labels = child_gc_labels(manifest.children)
        if labels:
            paths = [f"labels.{key}" for key in labels]
            await self.call(store.update, descriptor.digest, labels, paths)
        for child in select_children(manifest, self._matcher):
            self._spawn(group, store, child.descriptor)

    async def _fetch(self, store: MetadataStore, descriptor: Descriptor) -> None:
        """Store `descriptor`'s content unless the namespace has it (then lease it)."""
        digest = descriptor.digest
        info = await self.call(info_or_none, store, digest)
        if info is not None:
            # Leased before it is relied on, then looked at again: a collection
            # between the two looks might have taken it.
            assert store.lease_id is not None
            resource = LeaseResource(digest, CONTENT)
            await self.call(store.leases.add_resource, store.lease_id, resource)
            info = await self.call(info_or_none, store, digest)
        if info is not None:
            await self.record_source(store, info, self._reference.host, self._reference.repository)
            self.emit(self.event("skipped", descriptor, reason="present"))
            return
        key, source = distribution_source_label(self._reference.host, self._reference.repository)
        async with self.slots:
            await self._transfer(store, descriptor, {key: source})

    async def _transfer(
        self, store: MetadataStore, descriptor: Descriptor, labels: dict[str, str]
    ) -> None:
        assert self._registry is not None
        ref = ref_key(descriptor)
        source = _BlobSource(
            asyncio.get_running_loop(),
            self._registry,
            self._reference.repository,
            descriptor,
            self.cancel,
            lambda offset: self.emit(self.event("started", descriptor, offset=offset)),
        )
        where = f"{kind(descriptor.media_type)} {descriptor.digest} from {self._reference.locator}"

        def work() -> None:
            try:
                with source:
                    write_blob(
                        store,
                        ref,
                        cast(BinaryIO, source),
                        size=descriptor.size,
                        digest=descriptor.digest,
                        labels=labels,
                        cancel=self.cancel,
                        progress=self.progress(descriptor),
                        lazy=True,
                    )
            except FailedPrecondition as exc:
                if not source.opened:
                    raise
                # The store would not commit the registry's bytes: they are not the
                # descriptor's. Nothing was committed; the bytes are no use to resume.
                with suppress(ContentdError):
                    store.abort(ref)
                raise DataLoss(
                    f"{where}: the registry served content that does not match its "
                    f"digest ({exc.message})",
                    reason="DIGEST_INVALID",
                    metadata={"digest": descriptor.digest},
                ) from exc

        await self.in_thread(work, on_cancel=source.cancel)
        if source.opened:
            self.emit(self.event("done", descriptor))
        else:
            self.emit(self.event("skipped", descriptor, reason="stored"))


class _Download:
    """One download of a blob from `offset`, run on the pull's event loop, its pieces queued
    for the thread that writes them.

    The loop reads the body as it arrives and hands each piece on as it came
    (no joining, no copy), while the thread hashes and writes the ones
    before: the two overlap. At most `_BUFFERED` bytes wait for the thread;
    beyond that the loop stops reading the body until the thread has taken
    them down to `_RESUME` (backpressure, with one wake-up of the loop per
    pause rather than one per piece).
    """

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self._ready = threading.Condition(threading.Lock())
        self._pieces: collections.deque[bytes | memoryview] = collections.deque()
        self._buffered = 0
        self._failure: BaseException | None = None
        # Set by the loop when it pauses for room; the thread wakes it up.
        self._paused = False
        self._room = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.task: concurrent.futures.Future[None] | None = None

    # The loop's side

    async def deliver(self, piece: bytes) -> None:
        """Queue `piece` for the thread; wait for room if too much is queued already."""
        with self._ready:
            self._pieces.append(piece)
            self._buffered += len(piece)
            self._ready.notify()
            if self._buffered < _BUFFERED:
                return
            self._room.clear()
            self._paused = True
            self._loop = asyncio.get_running_loop()
        await self._room.wait()

    def fail(self, error: BaseException) -> None:
        """End the download with `error`, raised to the thread at its next take."""
        with self._ready:
            self._failure = error
            self._ready.notify()

    # The thread's side

    def take(self, limit: int, cancel: threading.Event, doing: str) -> bytes | memoryview:
        """The next piece, at most `limit` bytes; waits for one, and raises the download's
        error, or Canceled as soon as the pull is."""
        with self._ready:
            while not self._pieces:
                if self._failure is not None:
                    raise self._failure
                if cancel.is_set():
                    raise Canceled(doing)
                self._ready.wait(_CANCEL_POLL)
            piece = self._pieces.popleft()
            if len(piece) > limit:
                rest = memoryview(piece)[limit:]
                piece = memoryview(piece)[:limit]
                self._pieces.appendleft(rest)
            self._buffered -= len(piece)
            if self._paused and self._buffered <= _RESUME:
                self._paused = False
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._room.set)
            return piece


class _BlobSource(io.RawIOBase):
    """A registry's blob as a seekable file for `write_blob`, downloaded on the pull's event loop.

    Nothing is requested until the first read; a read from past 0 (a resumed
    ingest) asks for a Range. A read returns what has arrived (at most what
    was asked for), as a raw file's does, and reads stop at the descriptor's
    size. It is used from one of the pull's threads, never from the loop's.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        registry: RegistryClient,
        repository: str,
        descriptor: Descriptor,
        cancel: threading.Event,
        on_open: Callable[[int], None],
    ) -> None:
        super().__init__()
        self._loop = loop
        self._registry = registry
        self._repository = repository
        self._descriptor = descriptor
        self._cancel = cancel
        self._on_open = on_open
        self._position = 0
        self._download: _Download | None = None
        #: Whether the registry was asked for any of the content.
        self.opened = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._position
        elif whence == os.SEEK_END:
            offset += self._descriptor.size
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        if offset != self._position:
            self._drop()
            self._position = offset
        return offset

    def read(self, size: int | None = -1) -> bytes | memoryview:
        remaining = self._descriptor.size - self._position
        if size is None or size < 0 or size > remaining:
            size = remaining
        if size <= 0:
            return b""
        download = self._download
        if download is None:
            download = self._start()
        piece = download.take(size, self._cancel, f"fetching {self._descriptor.digest}")
        self._position += len(piece)
        return piece

    def _start(self) -> _Download:
        if self._cancel.is_set():
            raise Canceled(f"fetching {self._descriptor.digest}")
        download = self._download = _Download(self._position)
        download.task = asyncio.run_coroutine_threadsafe(self._fetch(download), self._loop)
        return download

    async def _fetch(self, download: _Download) -> None:
        """Download from `download.offset` to the end into `download` (on the loop)."""
        descriptor = self._descriptor
        try:
            response = await self._registry.open_blob(
                self._repository,
                descriptor,
                download.offset,
                manifest=is_index(descriptor.media_type) or is_manifest(descriptor.media_type),
            )
            try:
                self.opened = True
                self._on_open(download.offset)
                # A registry that ignores Range sends it all: skip what the ingest has.
                skip = download.offset - response.start
                remaining = descriptor.size - download.offset
                while remaining > 0:
                    piece = await response.read_chunk()
                    if not piece:
                        got = descriptor.size - remaining
                        raise DataLoss(
                            f"{kind(descriptor.media_type)} {descriptor.digest}: the registry's "
                            f"answer ended after {got} of its {descriptor.size} bytes",
                            reason="SIZE_INVALID",
                            metadata={"digest": descriptor.digest},
                        )
                    if skip:
                        skipped = min(skip, len(piece))
                        skip -= skipped
                        piece = piece[skipped:]
                    piece = piece[:remaining]
                    if piece:
                        remaining -= len(piece)
                        await download.deliver(piece)
            finally:
                response.close()
        except asyncio.CancelledError:
            download.fail(Canceled(f"fetching {descriptor.digest}"))
            raise
        except BaseException as exc:
            download.fail(exc)
            raise

    def _drop(self) -> None:
        """Stop the download (the loop closes its connection)."""
        download, self._download = self._download, None
        if download is not None and download.task is not None:
            download.task.cancel()

    def cancel(self) -> None:
        """Stop a download in progress at once (called from the loop)."""
        self._drop()

    def close(self) -> None:
        self._drop()
        super().close()

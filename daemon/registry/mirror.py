"""The pull-through mirror: the registry face in front of an upstream registry (`--http-upstream`).

A pull of something the store lacks is fetched from the upstream registry,
under the same repository name, into the store, and kept; what the store
holds is served from it, whether or not the upstream can be reached. Pushes
and deletes are refused (UNSUPPORTED), as docker distribution's proxy mode
refuses them. Its model is distribution's ``registry/proxy``, with these
choices:

- **One fetch per blob.** Within the daemon, clients asking for the same
  missing blob of a repository at once share one `BlobFetch` (the in-flight
  map). Across daemons sharing the store, the fetch writes through a store
  writer under the ref ``mirror-<digest>``: another daemon's writer finds it
  locked (REF_LOCKED) and waits, as `write_blob` does, until the blob is
  committed, then serves it from the store. (distribution's proxy fetches
  again for every client that comes while a fetch is in flight.)
- **Served while it streams in.** The fetch tees the upstream body into the
  store writer and into a spool file, an unlinked temporary file that every
  client of this daemon reads as it grows, from its start whenever it came.
  The Store interface has no reader for an ingest in progress (containerd's
  has none either), and in object storage an ingest's bytes are parts that
  nobody can read before the commit; a spool serves them at once and holds
  no blob in memory. Clients of another daemon wait for the commit.
- **Never a corrupt blob.** The last byte is held back from every client
  until the store has verified the digest and committed the blob; a blob
  that fails (its digest, its size, the upstream going away) is not kept,
  and clients already sent part of it have their connection cut short,
  while later ones get the error itself (DATA_LOSS or UNAVAILABLE).
- **A client leaving does not stop the fetch**: it runs to its end and the
  blob is kept, as distribution's proxy does; the next pull finds it.
- **Kept from garbage collection.** A fetch writes under a lease of its own,
  deleted once the blob (or manifest) is recorded in the repository, whose
  blobs and manifests are collection roots.
- **Tags** are asked of the upstream (HEAD) at every pull, and the local tag
  is pointed where upstream's is; when the upstream cannot be reached (or
  answers anything but "unknown"), the tag held locally serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import urlsplit

from aiohttp import web

from contentd.client import RegistryClient, RegistryOptions
from contentd.content import (
    DEFAULT_LEASE_EXPIRY,
    EXPIRE_LABEL,
    Descriptor,
    MetadataStore,
    Writer,
    open_writer,
)
from contentd.errdefs import (
    AlreadyExists,
    Canceled,
    ContentdError,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)

from .context import IO_CHUNK, REGISTRY_HEADERS, RegistryContext, is_stored
from .errors import blob_unknown

_log = logging.getLogger("contentd.daemon")

#: The ingest ref of a blob or manifest on its way in from upstream: one per digest, so
#: that daemons sharing the store fetch it once.
MIRROR_REF_PREFIX: Final = "mirror-"
_BLOB_TYPE: Final = "application/octet-stream"


def mirror_ref(digest: str) -> str:
    """The ingest ref a mirror fetches `digest` under."""
    return f"{MIRROR_REF_PREFIX}{digest}"


@dataclass(frozen=True)
class Upstream:
    """The registry a mirror pulls through from, and how to reach it.

    `url` is ``https://HOST[:PORT]`` (``http://`` for a local registry);
    `ca` a PEM file of CAs its certificate may chain to (None: the system's);
    credentials come from `auth_file` (docker's config.json format) if given,
    else from the files `contentd pull` reads.
    """

    url: str
    ca: Path | None = None
    auth_file: Path | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument(f"upstream {self.url!r}: expected https://HOST[:PORT]")
        if parts.path.strip("/") or parts.query or parts.fragment or parts.username:
            raise InvalidArgument(
                f"upstream {self.url!r}: give the registry's address alone, without "
                "path, query or credentials"
            )
        if parts.scheme == "http" and self.ca is not None:
            raise InvalidArgument(f"upstream {self.url!r}: a CA file needs https")

    @property
    def host(self) -> str:
        """``HOST[:PORT]`` of the upstream registry."""
        return urlsplit(self.url).netloc

    def registry_options(self) -> RegistryOptions:
        """How the registry client reaches the upstream."""
        return RegistryOptions(
            plain_http=urlsplit(self.url).scheme == "http",
            tls_ca=self.ca,
            auth_file=self.auth_file,
        )


def upstream_failure(error: ContentdError) -> ContentdError:
    """What a client is told when the upstream failed it: NotFound as it is (the caller makes
    it the registry's code), corrupt content as DATA_LOSS, anything else UNAVAILABLE.

    The upstream's refusals (its authentication, its errors) are the mirror's
    trouble, not the client's: they must not ask the client for credentials.
    """
    if isinstance(error, NotFound | DataLoss | Unavailable):
        return error
    return Unavailable(f"upstream: {error.message}")


class BlobFetch:
    """One blob on its way from upstream into the store, and to the clients waiting for it.

    Its state only changes on the event loop, each change waking the
    clients that wait (`changed`).
    """

    def __init__(self, digest: str) -> None:
        self.digest = digest
        #: Whether the upstream's body is coming through the spool.
        self.streaming = False
        #: The body's length, if upstream said.
        self.size: int | None = None
        #: Bytes in the spool so far.
        self.received = 0
        #: The store holds the blob, verified, and the repository has it.
        self.stored = False
        self.error: ContentdError | None = None
        self._spool: IO[bytes] | None = None
        self._users = 1  # the fetch itself, until it ends
        self._changed = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.stored or self.error is not None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        """Wait for the next change."""
        await self._changed.wait()

    def begin(self, size: int | None) -> None:
        """The upstream answered: its bytes come through the spool from now on."""
        # Open for as long as a client reads it (see `let_go`): no with-block fits.
        self._spool = tempfile.TemporaryFile(prefix="contentd-mirror-")  # noqa: SIM115
        self.size = size
        self.streaming = True
        self._notify()

    def append(self, data: bytes) -> None:
        """Bytes from upstream, for the clients. A temporary file's write lands in the page
        cache: cheap enough for the event loop, which then wakes the clients at once."""
        assert self._spool is not None
        os.write(self._spool.fileno(), data)
        self.received += len(data)
        self._notify()

    def released(self) -> int:
        """Bytes the clients may have: all once verified, else all but the last."""
        return self.received if self.stored else max(0, self.received - 1)

    def read(self, offset: int, limit: int) -> bytes:
        assert self._spool is not None
        return os.pread(self._spool.fileno(), limit, offset)

    def finish(self, error: ContentdError | None) -> None:
        """The fetch ended: stored, or failed with `error`."""
        if error is None:
            self.stored = True
        else:
            self.error = error
        self._notify()
        self.let_go()

    def hold(self) -> None:
        """A client reads the spool: it stays until `let_go`."""
        self._users += 1

    def let_go(self) -> None:
        self._users -= 1
        if self._users == 0 and self._spool is not None:
            self._spool.close()
            self._spool = None


class Mirror:
    """The upstream registry, and what is being fetched from it."""

    def __init__(self, context: RegistryContext, upstream: Upstream) -> None:
        self.upstream = upstream
        self._store = context.store
        self._namespace = context.store.namespace
        self._index = context.index
        self._run = context.run
        self._registry = RegistryClient(upstream.host, upstream.registry_options())
        self._blobs: dict[tuple[str, str], BlobFetch] = {}
        self._manifests: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = threading.Event()

    @property
    def registry(self) -> RegistryClient:
        """The client of the upstream registry (open between `open` and `close`)."""
        return self._registry

    async def open(self) -> None:
        await self._registry.__aenter__()

    async def close(self) -> None:
        """Stop every fetch (what was fetched of a blob is not kept), then the client."""
        self._closing.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._registry.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            # Whoever waited has its error; with nobody left waiting it is not news.
            task.exception()

    @contextlib.asynccontextmanager
    async def leased(self) -> AsyncIterator[MetadataStore]:
        """The store, writing under a lease of its own for the block (kept a day if the daemon
        dies meanwhile, as a pull's)."""
        expires = (datetime.now(UTC) + DEFAULT_LEASE_EXPIRY).isoformat(timespec="seconds")
        lease = await self._run(self._store.leases.create, "", {EXPIRE_LABEL: expires})
        try:
            yield self._store.with_lease(lease.id)
        finally:
            with contextlib.suppress(ContentdError):
                await self._run(self._store.leases.delete, lease.id)

    # Manifests: fetched once however many ask, by (repository, digest).

    async def once(self, key: tuple[str, str], work: Callable[[], Awaitable[None]]) -> None:
        """Run `work()` unless it is running for `key` already; wait for it either way.

        It runs to its end even if every caller goes away.
        """
        task = self._manifests.get(key)
        if task is None:

            async def run() -> None:
                try:
                    await work()
                finally:
                    del self._manifests[key]

            task = self._manifests[key] = self._spawn(run())
        await asyncio.shield(task)

    # Blobs

    async def blob(self, request: web.Request, name: str, digest: str) -> web.StreamResponse | None:
        """GET or HEAD of blob `digest`, which repository `name` lacks, from upstream.

        A HEAD asks the upstream alone (nothing is fetched), as
        distribution's proxy does. A GET joins or starts the blob's fetch
        and streams it as it comes, unless it asks for a Range or the blob
        reached the store another way: then None, once the repository has
        it, says to serve it from the store.
        """
        stored = await self._run(is_stored, self._store, digest)
        if request.method == "HEAD" or stored:
            try:
                size = await self._registry.blob_size(name, digest)
            except ContentdError as exc:
                raise self._blob_failure(exc, digest) from None
            if request.method == "HEAD":
                return await _describe(request, digest, size)
            # The store has the bytes (from another repository): the upstream has them in
            # this one too, so they may be served from here.
            await self._run(self._index.link_blob, self._namespace, name, digest)
            return None
        key = (name, digest)
        fetch = self._blobs.get(key)
        if fetch is None:
            fetch = self._blobs[key] = BlobFetch(digest)
            self._spawn(self._fetch(fetch, name))
        fetch.hold()
        try:
            while not (fetch.streaming or fetch.done):
                await fetch.changed()
            if fetch.streaming and "Range" not in request.headers and fetch.error is None:
                return await self._stream(request, fetch)
            while not fetch.done:
                await fetch.changed()
            if fetch.error is not None:
                raise self._blob_failure(fetch.error, digest)
            return None
        finally:
            fetch.let_go()

    def _blob_failure(self, error: ContentdError, digest: str) -> ContentdError:
        failure = upstream_failure(error)
        if isinstance(failure, NotFound):
            return blob_unknown(digest)
        return failure

    async def _fetch(self, fetch: BlobFetch, name: str) -> None:
        """Fetch the blob into the store under a lease, then record it in the repository."""
        digest = fetch.digest
        error: ContentdError | None = None
        try:
            async with self.leased() as leased:
                ref = mirror_ref(digest)
                try:
                    writer = await self._run(
                        open_writer, leased, ref, expected=digest, cancel=self._closing
                    )
                except AlreadyExists:
                    # Another daemon on the store fetched it meanwhile; the upstream
                    # must still have it in this repository.
                    await self._registry.blob_size(name, digest)
                else:
                    await self._download(fetch, name, leased, writer)
                await self._run(self._index.link_blob, self._namespace, name, digest)
        except ContentdError as exc:
            error = exc
        except asyncio.CancelledError:
            error = Unavailable("the registry is shutting down")
            raise
        except Exception:
            _log.exception("mirror: fetching %s of %s", digest, name)
            error = Unavailable(f"fetching {digest} from the upstream failed")
        finally:
            del self._blobs[(name, digest)]
            if error is not None and not isinstance(error, NotFound | Canceled):
                _log.warning("mirror: %s of %s: %s", digest, name, error)
            fetch.finish(error)

    async def _download(
        self, fetch: BlobFetch, name: str, store: MetadataStore, writer: Writer
    ) -> None:
        """Tee the upstream body into the spool and the writer; commit it, verified."""
        ref = writer.ref
        committed = False
        try:
            if writer.offset:
                # Bytes a daemon that died left: the spool needs every byte, so start over.
                await self._run(writer.truncate, 0)
            body = await self._registry.open_blob(name, Descriptor(_BLOB_TYPE, fetch.digest, 0))
            try:
                fetch.begin(body.length)
                await self._pump(fetch, body.read_any, writer)
            finally:
                body.close()
            where = f"{fetch.digest} from {self.upstream.host}/{name}"
            if fetch.size is not None and fetch.received != fetch.size:
                raise DataLoss(
                    f"{where}: the upstream's answer ended after {fetch.received} of its "
                    f"{fetch.size} bytes",
                    reason="SIZE_INVALID",
                )
            try:
                await self._run(writer.commit, fetch.received, fetch.digest)
            except AlreadyExists:
                pass
            except FailedPrecondition as exc:
                raise DataLoss(
                    f"{where}: the upstream served content that does not match its digest "
                    f"({exc.message})",
                    reason="DIGEST_INVALID",
                ) from None
            committed = True
        finally:
            await asyncio.shield(self._run(writer.close))
            if not committed:
                # Nothing of a failed fetch is kept: the next one starts over anyway.
                with contextlib.suppress(ContentdError):
                    await asyncio.shield(self._run(store.abort, ref))

    async def _pump(
        self, fetch: BlobFetch, read: Callable[[int], Awaitable[bytes]], writer: Writer
    ) -> None:
        """Copy the body: to the clients as each piece comes, to the store a megabyte at a time
        (written on the thread pool while the next arrives)."""
        buffer = bytearray()
        pending: asyncio.Future[object] | None = None
        try:
            while chunk := await read(IO_CHUNK):
                fetch.append(chunk)
                buffer += chunk
                if len(buffer) >= IO_CHUNK:
                    if pending is not None:
                        await pending
                    pending, buffer = self._run(writer.write, buffer), bytearray()
            if pending is not None:
                await pending
                pending = None
            if buffer:
                await self._run(writer.write, buffer)
        finally:
            if pending is not None:
                # Never leave the writer in use on another thread once this returns.
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pending)

    async def _stream(self, request: web.Request, fetch: BlobFetch) -> web.StreamResponse:
        """Send the blob from the spool as it grows; cut the answer short if the fetch fails."""
        headers = {
            "Docker-Content-Digest": fetch.digest,
            "ETag": f'"{fetch.digest}"',
            "Content-Type": _BLOB_TYPE,
            **REGISTRY_HEADERS,
        }
        response = web.StreamResponse(status=200, headers=headers)
        if fetch.size is not None:
            response.content_length = fetch.size
        await response.prepare(request)
        offset = 0
        while True:
            released = fetch.released()
            if offset < released:
                data = fetch.read(offset, min(IO_CHUNK, released - offset))
                await response.write(data)
                offset += len(data)
            elif fetch.error is not None:
                # The headers are out: all that can tell the client is a body cut short.
                if request.transport is not None:
                    request.transport.close()
                raise ConnectionResetError(f"fetching {fetch.digest} failed: {fetch.error}")
            elif fetch.stored:
                await response.write_eof()
                return response
            else:
                await fetch.changed()


async def _describe(request: web.Request, digest: str, size: int) -> web.StreamResponse:
    """The answer to a HEAD of a blob of `size` bytes."""
    headers = {
        "Docker-Content-Digest": digest,
        "ETag": f'"{digest}"',
        "Content-Type": _BLOB_TYPE,
        **REGISTRY_HEADERS,
    }
    response = web.StreamResponse(status=200, headers=headers)
    response.content_length = size
    await response.prepare(request)
    await response.write_eof()
    return response

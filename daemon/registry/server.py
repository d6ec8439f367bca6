"""The registry's server: its options, its aiohttp application, and its thread and event loop.

Blobs are the store's blobs in one namespace, upload sessions are its ingests
(see `uploads`), and repositories, manifests and tags are records in the
store's own metadata (its `RepositoryIndex`). Requests are served by aiohttp
on an event loop of its own thread, through one middleware (authentication,
read-only mode and a mirror's, errors as registry errors) to the `Router`; every blocking
store call runs on a small thread pool, and blob GETs go out with sendfile, so
no blob is ever held in memory whole.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from contentd.content import BlobLocator
from contentd.daemon._tls import TLSFiles
from contentd.errdefs import FailedPrecondition, InvalidArgument, Unauthenticated, Unimplemented

from .auth import Htpasswd
from .blobs import BlobHandler
from .context import REGISTRY_HEADERS, RegistryContext, RegistryStore
from .errors import ServerLog, error_answer, one_line, registry_error
from .listing import CatalogHandler, ReferrersHandler, TagsHandler
from .manifests import MANIFEST_INVALID, MAX_MANIFEST_BYTES, ManifestHandler
from .mirror import Mirror, Upstream
from .routes import Router, route_template
from .uploads import UploadHandler, UploadSessions

_log = logging.getLogger("contentd.daemon")

#: The socket read buffer per connection: larger reads, fewer wakeups per MiB.
READ_BUFFER: Final = 1 << 20
#: How often idle upload writers are looked for.
IDLE_SWEEP: Final = 5.0
#: Bounds on how often abandoned uploads are looked for: a quarter of their TTL.
PURGE_EVERY: Final = (0.5, 3600.0)


@dataclass(frozen=True)
class HttpOptions:
    """How the HTTP face serves; the CLI's `--http*` flags map onto these."""

    #: ``host:port`` to listen on; port 0 picks a free one.
    address: str
    #: The store namespace whose blobs the registry serves.
    namespace: str = "default"
    #: An htpasswd file of bcrypt hashes: every request must authenticate.
    htpasswd: Path | None = None
    #: Answer only GET and HEAD; every change is UNSUPPORTED.
    read_only: bool = False
    #: Seconds an upload's writer stays open between its requests.
    upload_idle_timeout: float = 60.0
    #: Keep an upload's writer open between its requests; None: unless the store
    #: is shared across hosts, where the next request may reach another daemon.
    hold_upload_writers: bool | None = None
    #: Upload writers kept open at once; past it idle ones close, busy ones refuse.
    max_open_uploads: int = 128
    #: Seconds an upload may sit untouched before it is aborted (its bytes freed).
    upload_ttl: float = 24 * 3600.0
    #: Threads for blocking store calls.
    workers: int = 16
    #: Answer blob GETs with a redirect to a URL valid this many seconds, straight
    #: into object storage, when the store keeps blobs there (a `BlobLocator`).
    redirect_blobs: float | None = None
    #: Be a pull-through mirror of this registry: fetch what is pulled and missing from
    #: it, keep it, and refuse pushes and deletes (UNSUPPORTED).
    upstream: Upstream | None = None


class HttpServer:
    """The registry on its own thread and event loop: bind, `start`, `stop`."""

    def __init__(
        self,
        store: RegistryStore,
        options: HttpOptions,
        *,
        grace: float = 10.0,
        tls: TLSFiles | None = None,
        observe: Middleware | None = None,
    ) -> None:
        """`observe`, when given, sees every request first (the daemon's metrics)."""
        host, sep, port = options.address.rpartition(":")
        if not sep or not port.isdigit():
            raise InvalidArgument(f"HTTP address {options.address!r}: expected host:port")
        host = host.removeprefix("[").removesuffix("]") or "0.0.0.0"
        self._options = options
        self._grace = grace
        self._observe = observe
        self._executor = futures.ThreadPoolExecutor(
            max_workers=options.workers, thread_name_prefix="contentd-http"
        )
        served = store.with_namespace(options.namespace)
        if options.redirect_blobs is not None and not isinstance(served, BlobLocator):
            raise FailedPrecondition("redirecting blob downloads needs a store in object storage")
        context = RegistryContext(
            served, store.repositories, self._executor, redirect_blobs=options.redirect_blobs
        )
        self._mirror: Mirror | None = None
        if options.upstream is not None:
            self._mirror = Mirror(context, options.upstream)
            context = dataclasses.replace(context, mirror=self._mirror)
        self._run = context.run
        self._auth = Htpasswd(options.htpasswd) if options.htpasswd else None
        hold = options.hold_upload_writers
        self._uploads = UploadSessions(
            context.store,
            context.run,
            options.upload_idle_timeout,
            options.max_open_uploads,
            hold_writers=not store.shared_across_hosts if hold is None else hold,
        )
        self._router = Router(
            BlobHandler(context),
            UploadHandler(context, self._uploads),
            ManifestHandler(context),
            TagsHandler(context),
            ReferrersHandler(context),
            CatalogHandler(context),
        )
        try:
            self._socket = socket.create_server((host, int(port)), reuse_port=False)
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot listen on {options.address} for HTTP: {exc.strerror}"
            ) from None
        self._ssl = tls.ssl_context() if tls is not None else None
        bound_host, bound_port = self._socket.getsockname()[:2]
        scheme = "https" if self._ssl is not None else "http"
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"{scheme}://{shown}:{bound_port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="contentd-http")
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._purger: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Serve from now on; returns once the server accepts connections."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()

    async def _start(self) -> None:
        self._runner = web.AppRunner(
            self._application(),
            access_log=None,
            handle_signals=False,
            read_bufsize=READ_BUFFER,
            shutdown_timeout=self._grace,
            logger=ServerLog(logging.getLogger("contentd.http"), {}),
        )
        await self._runner.setup()
        if self._mirror is not None:
            await self._mirror.open()
        site = web.SockSite(self._runner, self._socket, ssl_context=self._ssl)
        await site.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        self._purger = asyncio.get_running_loop().create_task(self._purge())

    def _application(self) -> web.Application:
        middlewares: list[Middleware] = [self._middleware]
        if self._observe is not None:
            middlewares.insert(0, self._observe)
        app = web.Application(middlewares=middlewares, client_max_size=MAX_MANIFEST_BYTES)
        app.router.add_route("*", "/{path:.*}", self._router.dispatch)
        return app

    # Every request: authentication, read-only mode (a mirror's too), and errors as
    # registry errors.

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.monotonic()
        response = await self._answer(request, handler)
        if not _log.isEnabledFor(logging.DEBUG):
            return response
        duration_ms = round((time.monotonic() - started) * 1000, 3)
        method = f"{request.method} {route_template(request)}"
        request_id = secrets.token_hex(8)
        _log.debug(
            "%s %d in %.1f ms (namespace %r, request %s)",
            method,
            response.status,
            duration_ms,
            self._options.namespace,
            request_id,
            extra={
                "request_id": request_id,
                "method": method,
                "namespace": self._options.namespace,
                "code": response.status,
                "duration_ms": duration_ms,
            },
        )
        return response

    async def _answer(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            if self._auth is not None:
                user = await self._run(self._auth.check, request.headers.get("Authorization"))
                if user is None:
                    raise registry_error(Unauthenticated, "authentication required", "UNAUTHORIZED")
            if request.method not in ("GET", "HEAD"):
                if self._mirror is not None:
                    raise registry_error(
                        Unimplemented,
                        f"{request.method}: the registry is a mirror of "
                        f"{self._mirror.upstream.url}",
                        "UNSUPPORTED",
                    )
                if self._options.read_only:
                    raise registry_error(
                        Unimplemented, f"{request.method}: the registry is read-only", "UNSUPPORTED"
                    )
            response = await handler(request)
        except web.HTTPException:
            raise
        except ConnectionError:
            # The client went away mid-request; what it sent is kept (uploads resume).
            _log.debug("%s %s: the client went away", request.method, request.path)
            return web.Response(status=499)
        except (HttpProcessingError, web.RequestPayloadError) as exc:
            # A body refused as it streamed in (one that fails to decode its
            # Content-Encoding, say): the client's error, answered as one.
            code = "BLOB_UPLOAD_INVALID" if "/blobs/uploads" in request.path else MANIFEST_INVALID
            refused = registry_error(
                InvalidArgument, f"malformed request body: {one_line(exc)}", code
            )
            response = error_answer(request, refused)
        except Exception as exc:
            response = error_answer(request, exc)
        if not response.prepared:
            response.headers.update(REGISTRY_HEADERS)
        return response

    def held_writers(self) -> int:
        """Upload writers open now, each holding its ingest's lock."""
        return self._uploads.held_writers()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(IDLE_SWEEP)
            try:
                await self._uploads.close_idle()
            except Exception:
                _log.exception("closing idle uploads")

    async def _purge(self) -> None:
        """Abort abandoned uploads now (a restart finds them too), then every so often."""
        ttl = self._options.upload_ttl
        low, high = PURGE_EVERY
        while True:
            try:
                await self._uploads.purge_abandoned(ttl)
            except Exception:
                _log.exception("purging abandoned uploads")
            await asyncio.sleep(min(max(ttl / 4, low), high))

    def stop(self) -> None:
        """Stop accepting, give running requests the grace period, close every upload writer."""
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)
            try:
                future.result(timeout=self._grace + 30)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join()
        self._loop.close()
        self._executor.shutdown(wait=True)
        self._socket.close()

    async def _stop(self) -> None:
        for task in (self._sweeper, self._purger):
            if task is not None:
                task.cancel()
        if self._runner is not None:
            await self._runner.shutdown()
            started = time.monotonic()
            await self._runner.cleanup()
            _log.debug("HTTP requests drained in %.2fs", time.monotonic() - started)
        if self._mirror is not None:
            await self._mirror.close()
        await self._uploads.close_all()

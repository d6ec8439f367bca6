"""The HTTP face: the OCI distribution API (registry v2) over the daemon's store.

Blobs are the store's blobs in one namespace, upload sessions are its ingests
(see `uploads`), and repositories, manifests and tags are recorded in the
`RegistryIndex`. Requests are served by aiohttp on an event loop of its own
thread; every blocking store call runs on a small thread pool, and blob GETs
go out with sendfile, so no blob is ever held in memory whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import re
import socket
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, ParamSpec, TypeVar, cast
from urllib.parse import quote, urlencode

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from contentd.content import BlobReader, LocalStore, LocalWriter, validate_digest
from contentd.daemon._tls import TLSFiles
from contentd.errdefs import (
    AlreadyExists,
    ContentdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unauthenticated,
    Unimplemented,
    to_http,
)

from .auth import Htpasswd
from .index import Referrer, RegistryIndex
from .manifests import MAX_MANIFEST_BYTES, OCI_INDEX, parse_manifest
from .uploads import UploadSessions, new_session_id, upload_ref

_log = logging.getLogger("contentd.daemon")

T = TypeVar("T")
P = ParamSpec("P")

API_VERSION: Final = ("Docker-Distribution-API-Version", "registry/2.0")
#: Instead of aiohttp's own, which names library and Python versions to anyone who asks.
SERVER: Final = ("Server", "contentd")
#: Bytes handed to a writer per call off the event loop: large enough that the
#: hop costs nothing next to hashing and writing them, small enough to stream.
WRITE_CHUNK: Final = 1 << 20
#: Bodies of monolithic pushes up to this size are stored in one step.
SMALL_BODY: Final = 1 << 20
#: The socket read buffer per connection: larger reads, fewer wakeups per MiB.
READ_BUFFER: Final = 1 << 20
#: Repositories in one page when the client does not say (tags are all listed).
DEFAULT_PAGE: Final = 1000
MAX_PAGE: Final = 10_000
#: Tags read from the index per step while a whole tag list streams out.
TAG_STREAM_PAGE: Final = 1000
#: The Content-Type of the registry's JSON answers.
JSON_TYPE: Final = "application/json; charset=utf-8"
#: How often idle upload writers are looked for.
IDLE_SWEEP: Final = 5.0
#: Bounds on how often abandoned uploads are looked for: a quarter of their TTL.
PURGE_EVERY: Final = (0.5, 3600.0)

# The distribution spec's grammar: path components of lowercase letters and
# digits, separated by '.', '_', '__' or dashes; tags as docker's.
_NAME: Final = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
_MAX_NAME: Final = 255
_TAG: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_ROUTES: Final = (
    ("upload", re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<arg>[^/]*)")),
    ("blob", re.compile(r"/v2/(?P<name>.+)/blobs/(?P<arg>[^/]+)")),
    ("manifest", re.compile(r"/v2/(?P<name>.+)/manifests/(?P<arg>[^/]+)")),
    ("tags", re.compile(r"/v2/(?P<name>.+)/tags/list")),
    ("referrers", re.compile(r"/v2/(?P<name>.+)/referrers/(?P<arg>[^/]+)")),
)


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
    #: Upload writers kept open at once; past it idle ones close, busy ones refuse.
    max_open_uploads: int = 128
    #: Seconds an upload may sit untouched before it is aborted (its bytes freed).
    upload_ttl: float = 24 * 3600.0
    #: Threads for blocking store calls.
    workers: int = 16


def _error(cls: type[ContentdError], message: str, code: str, **metadata: str) -> ContentdError:
    return cls(message, reason=code, metadata=metadata)


# What some errors add to their answer: headers (the upload's Range on a 416).
# Statuses are the errdefs table's alone.
_ANSWER_HEADERS: weakref.WeakKeyDictionary[ContentdError, dict[str, str]] = (
    weakref.WeakKeyDictionary()
)


def _answered_with(error: ContentdError, *, headers: dict[str, str]) -> ContentdError:
    _ANSWER_HEADERS[error] = headers
    return error


def _blob_unknown(digest: str) -> ContentdError:
    return _error(NotFound, f"blob {digest}", "BLOB_UNKNOWN", digest=digest)


def _manifest_unknown(reference: str) -> ContentdError:
    return _error(NotFound, f"manifest {reference}", "MANIFEST_UNKNOWN", reference=reference)


def _digest_invalid(message: str) -> ContentdError:
    return _error(InvalidArgument, message, "DIGEST_INVALID")


def _parse_digest(text: str) -> str:
    try:
        return validate_digest(text)
    except InvalidArgument:
        raise _digest_invalid(f"digest {text[:80]!r} is not <algorithm>:<hex>") from None


def _parse_name(name: str) -> str:
    if len(name) > _MAX_NAME or not _NAME.fullmatch(name):
        raise _error(InvalidArgument, f"repository name {name[:80]!r}", "NAME_INVALID")
    return name


def _page_size(request: web.Request) -> int | None:
    """The page size `n` a listing asks for; None when it asks for none."""
    text = request.query.get("n")
    if text is None or text == "":
        return None
    if not text.isdigit():
        raise _error(
            InvalidArgument,
            f"page size n={text[:20]!r}: must be a whole number",
            "PAGINATION_NUMBER_INVALID",
        )
    return min(int(text), MAX_PAGE)


def _next_link(path: str, limit: int, last: str) -> str:
    return f'<{path}?{urlencode({"n": limit, "last": last})}>; rel="next"'


def _parse_content_range(text: str) -> tuple[int, int]:
    """A PATCH's ``Content-Range: <start>-<end>`` (inclusive), ``bytes`` prefix allowed."""
    match = re.fullmatch(r"\s*(?:bytes[ =])?(\d+)-(\d+)\s*", text)
    if match is None or int(match[2]) < int(match[1]):
        raise _error(OutOfRange, f"Content-Range {text[:60]!r}", "RANGE_INVALID")
    return int(match[1]), int(match[2])


_UNSATISFIABLE: Final = (-1, -1)
_BYTE_RANGE: Final = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``[start, stop)`` a Range header asks of `size` bytes (RFC 9110, 14.1.2).

    None serves the whole blob: no header, or one this server does not take
    (several ranges, another unit, nonsense), which RFC 9110 lets it ignore.
    `_UNSATISFIABLE` when the range lies past the end, or asks for 0 bytes.
    """
    match = _BYTE_RANGE.fullmatch(header) if header else None
    if match is None or not (match[1] or match[2]):
        return None
    if not match[1]:  # "-N": the last N bytes
        suffix = int(match[2])
        return (max(0, size - suffix), size) if suffix and size else _UNSATISFIABLE
    first = int(match[1])
    if match[2] and int(match[2]) < first:
        return None
    if first >= size:
        return _UNSATISFIABLE
    last = int(match[2]) if match[2] else size - 1
    return first, min(last + 1, size)


def _if_range_holds(header: str | None, digest: str) -> bool:
    """Whether a Range may be served under `If-Range` (RFC 9110 13.1.5).

    The blob's strong ETag (its quoted digest, or the bare digest) holds; a
    weak ETag, another one, or a date never does: this server sends no
    Last-Modified, so a date can match nothing it said.
    """
    if header is None:
        return True
    validator = header.strip()
    return validator in (f'"{digest}"', digest)


class Registry:
    """The distribution API's handlers over one store namespace."""

    def __init__(
        self,
        store: LocalStore,
        index: RegistryIndex,
        options: HttpOptions,
        executor: futures.ThreadPoolExecutor,
    ) -> None:
        self._store = store.with_namespace(options.namespace)
        self._namespace = options.namespace
        self._index = index
        self._options = options
        self._executor = executor
        self._auth = Htpasswd(options.htpasswd) if options.htpasswd else None
        self._uploads = UploadSessions(
            self._store, self._run, options.upload_idle_timeout, options.max_open_uploads
        )

    def _run(
        self, function: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[T]:
        """Call `function` on the thread pool: store calls block."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, functools.partial(function, *args, **kwargs))

    @property
    def uploads(self) -> UploadSessions:
        return self._uploads

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_MANIFEST_BYTES)
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        return app

    # Every request: authentication, read-only mode, and errors as registry errors.

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            if self._auth is not None:
                user = await self._run(self._auth.check, request.headers.get("Authorization"))
                if user is None:
                    raise _error(Unauthenticated, "authentication required", "UNAUTHORIZED")
            if self._options.read_only and request.method not in ("GET", "HEAD"):
                raise _error(
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
            code = "BLOB_UPLOAD_INVALID" if "/blobs/uploads" in request.path else "MANIFEST_INVALID"
            refused = _error(InvalidArgument, f"malformed request body: {_one_line(exc)}", code)
            response = self._error_response(request, refused)
        except Exception as exc:
            response = self._error_response(request, exc)
        if not response.prepared:
            response.headers[API_VERSION[0]] = API_VERSION[1]
            response.headers[SERVER[0]] = SERVER[1]
        return response

    def _error_response(self, request: web.Request, exc: Exception) -> web.Response:
        answer = to_http(exc)
        status = answer.status
        headers: dict[str, str] = {"Content-Type": answer.content_type}
        if status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="contentd"'
        if isinstance(exc, ContentdError) and exc in _ANSWER_HEADERS:
            headers.update(_ANSWER_HEADERS.pop(exc))
        response = web.Response(status=status, body=answer.body, headers=headers)
        _log.debug("%s %s: %d %s", request.method, request.path, answer.status, exc)
        return response

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        method = request.method
        if path in ("/v2", "/v2/"):
            if method not in ("GET", "HEAD"):
                raise _error(Unimplemented, f"{method} /v2/", "UNSUPPORTED")
            return web.json_response({})
        if path == "/v2/_catalog" and method == "GET":
            return await self._catalog(request)
        for route, pattern in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            name = _parse_name(match["name"])
            kind, arg = route, match.groupdict().get("arg")
            if kind == "blob" and arg == "uploads":
                kind, arg = "upload", ""  # POST /v2/<name>/blobs/uploads, no slash
            handler = self._handlers.get((kind, method, bool(arg)))
            if handler is None:
                raise _error(Unimplemented, f"{method} {kind}", "UNSUPPORTED")
            return await handler(self, request, name, arg or "")
        raise _error(NotFound, f"no route {path[:80]!r}", "NOT_FOUND")

    # Blobs

    async def _blob(self, request: web.Request, name: str, arg: str) -> web.StreamResponse:
        digest = _parse_digest(arg)
        if not await self._run(self._index.has_blob, self._namespace, name, digest):
            raise _blob_unknown(digest)
        try:
            reader = await self._run(self._store.reader_at, digest)
        except NotFound:
            raise _blob_unknown(digest) from None
        try:
            return await self._send_blob(request, reader, digest)
        finally:
            reader.close()

    async def _send_blob(
        self, request: web.Request, reader: BlobReader, digest: str
    ) -> web.StreamResponse:
        size = reader.size
        start, count, status = 0, size, 200
        headers = {
            "Docker-Content-Digest": digest,
            "ETag": f'"{digest}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Cache-Control": "max-age=31536000",
            API_VERSION[0]: API_VERSION[1],
            SERVER[0]: SERVER[1],
        }
        wanted = None
        # A HEAD describes the whole blob, as without Range; a Range whose
        # If-Range names other content asks for the whole blob (RFC 9110 13.1.5).
        if request.method != "HEAD" and _if_range_holds(request.headers.get("If-Range"), digest):
            wanted = _byte_range(request.headers.get("Range"), size)
        if wanted is _UNSATISFIABLE:
            raise _answered_with(
                _error(
                    OutOfRange,
                    f"range of {digest} beyond its {size} bytes",
                    "RANGE_NOT_SATISFIABLE",
                ),
                headers={"Content-Range": f"bytes */{size}"},
            )
        if wanted is not None:
            first, stop = wanted
            start, count, status = first, stop - first, 206
            headers["Content-Range"] = f"bytes {first}-{stop - 1}/{size}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = count
        await response.prepare(request)
        if request.method == "HEAD" or count == 0:
            await response.write_eof()
            return response
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("the client went away")
        try:
            # sendfile needs only the file's descriptor (and seek), which the reader has.
            await asyncio.get_running_loop().sendfile(
                transport, cast("IO[bytes]", reader), start, count
            )
        except NotImplementedError:  # TLS: the bytes must pass through the loop
            offset, end = start, start + count
            while offset < end:
                chunk = await self._run(reader.read_at, min(WRITE_CHUNK, end - offset), offset)
                if not chunk:
                    break
                await response.write(chunk)
                offset += len(chunk)
        await response.write_eof()
        return response

    async def _delete_blob(self, request: web.Request, name: str, arg: str) -> web.StreamResponse:
        digest = _parse_digest(arg)
        if not await self._run(self._index.unlink_blob, self._namespace, name, digest):
            raise _blob_unknown(digest)
        return web.Response(status=202, headers={"Docker-Content-Digest": digest})

    # Uploads

    def _upload_headers(self, name: str, session: str, offset: int) -> dict[str, str]:
        return {
            "Location": f"/v2/{name}/blobs/uploads/{session}",
            "Range": f"0-{max(offset - 1, 0)}",
            "Docker-Upload-UUID": session,
        }

    def _created(self, name: str, digest: str) -> web.Response:
        return web.Response(
            status=201,
            headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest},
        )

    async def _start_upload(self, request: web.Request, name: str, _: str) -> web.StreamResponse:
        query = request.query
        mount, source = query.get("mount"), query.get("from")
        # A mount that cannot be done, whatever the reason, starts an upload instead
        # (the spec's SHOULD; the client then pushes the blob).
        if mount and source and _NAME.fullmatch(source) and len(source) <= _MAX_NAME:
            with contextlib.suppress(InvalidArgument):
                digest = validate_digest(mount)
                if await self._mount(name, source, digest):
                    return self._created(name, digest)
        if "digest" in query:
            digest = _parse_digest(query["digest"])
            await self._store_whole(request, digest)
            await self._run(self._index.link_blob, self._namespace, name, digest)
            return self._created(name, digest)
        session, offset = await self._uploads.start(name)
        return web.Response(status=202, headers=self._upload_headers(name, session, offset))

    async def _mount(self, name: str, source: str, digest: str) -> bool:
        """Link `digest` from repository `source` into `name`, if `source` has it."""
        if not await self._present(source, digest):
            return False
        await self._run(self._index.link_blob, self._namespace, name, digest)
        return True

    async def _store_whole(self, request: web.Request, digest: str) -> None:
        """A monolithic push: the body is the whole blob."""
        ref = upload_ref("monolithic", new_session_id())
        length = request.content_length
        if length is not None and length <= SMALL_BODY:
            data = await request.read()
            try:
                await self._run(self._store.put, ref, data, expected=digest)
            except AlreadyExists:
                pass
            except FailedPrecondition as exc:
                raise _digest_invalid(str(exc)) from None
            return
        writer = await self._run(self._store.writer, ref)
        try:
            await self._receive(request, writer)
            await self._commit(writer, digest)
        finally:
            await self._run(writer.close)
            with contextlib.suppress(NotFound):
                await self._run(self._store.abort, ref)

    async def _receive(self, request: web.Request, writer: LocalWriter) -> int:
        """Append the request body to `writer`; returns how many bytes it had.

        The event loop keeps reading the socket while a thread hashes and
        writes the previous megabyte.
        """
        received = 0
        buffer = bytearray()
        pending: asyncio.Future[int] | None = None
        try:
            async for chunk in request.content.iter_any():
                buffer += chunk
                received += len(chunk)
                if len(buffer) >= WRITE_CHUNK:
                    if pending is not None:
                        await pending
                    pending, buffer = self._run(writer.write, buffer), bytearray()
        finally:
            # Whatever arrived is kept, even from a client that went away: the
            # upload's offset tells it where to resume.
            if pending is not None:
                await pending
            if buffer:
                await self._run(writer.write, buffer)
        return received

    async def _commit(self, writer: LocalWriter, digest: str) -> None:
        try:
            await self._run(writer.commit, 0, digest)
        except AlreadyExists:
            pass
        except FailedPrecondition as exc:
            raise _digest_invalid(str(exc)) from None

    def _check_chunk(self, request: web.Request, session: str, offset: int, name: str) -> None:
        """A chunk must start where the upload stands and be as long as it says."""
        text = request.headers.get("Content-Range")
        if text is None:
            return
        start, end = _parse_content_range(text)
        if start != offset:
            raise _answered_with(
                _error(
                    OutOfRange,
                    f"upload {session}: chunk starts at {start}, the upload holds {offset} bytes",
                    "RANGE_INVALID",
                ),
                headers=self._upload_headers(name, session, offset),
            )
        length = request.content_length
        if length is not None and length != end - start + 1:
            raise _error(
                InvalidArgument,
                f"upload {session}: Content-Range {start}-{end} but {length} bytes",
                "SIZE_INVALID",
            )

    async def _patch_upload(
        self, request: web.Request, name: str, session: str
    ) -> web.StreamResponse:
        async with self._uploads.use(name, session) as entry:
            writer = entry.writer
            assert writer is not None
            self._check_chunk(request, session, writer.offset, name)
            await self._receive(request, writer)
            offset = writer.offset
        return web.Response(status=202, headers=self._upload_headers(name, session, offset))

    async def _complete_upload(
        self, request: web.Request, name: str, session: str
    ) -> web.StreamResponse:
        text = request.query.get("digest")
        if not text:
            raise _digest_invalid(f"upload {session}: completing needs ?digest=")
        digest = _parse_digest(text)
        async with self._uploads.use(name, session) as entry:
            writer = entry.writer
            assert writer is not None
            self._check_chunk(request, session, writer.offset, name)
            await self._receive(request, writer)
            try:
                await self._commit(writer, digest)
            finally:
                await self._uploads.finish(entry)
        await self._run(self._index.link_blob, self._namespace, name, digest)
        return self._created(name, digest)

    async def _upload_status(
        self, request: web.Request, name: str, session: str
    ) -> web.StreamResponse:
        offset = await self._uploads.offset(name, session)
        return web.Response(status=204, headers=self._upload_headers(name, session, offset))

    async def _cancel_upload(
        self, request: web.Request, name: str, session: str
    ) -> web.StreamResponse:
        await self._uploads.cancel(name, session)
        return web.Response(status=204, headers={"Docker-Upload-UUID": session})

    # Manifests

    async def _resolve(self, name: str, reference: str) -> tuple[str, str]:
        """The digest and media type `reference` (a tag or digest) names in `name`."""
        if ":" in reference:
            digest = _parse_digest(reference)
        elif _TAG.fullmatch(reference):
            found = await self._run(self._index.resolve_tag, self._namespace, name, reference)
            if found is None:
                raise _manifest_unknown(reference)
            digest = found
        else:
            # No manifest can have such a tag: unknown, as the spec's pulls expect.
            raise _manifest_unknown(reference[:80])
        media_type = await self._run(self._index.manifest_media_type, self._namespace, name, digest)
        if media_type is None:
            raise _manifest_unknown(reference)
        return digest, media_type

    async def _get_manifest(
        self, request: web.Request, name: str, reference: str
    ) -> web.StreamResponse:
        digest, media_type = await self._resolve(name, reference)
        try:
            body = await self._run(self._read_blob, digest)
        except NotFound:
            raise _manifest_unknown(reference) from None
        headers = {"Docker-Content-Digest": digest, "ETag": f'"{digest}"'}
        return web.Response(body=body, headers=headers, content_type=media_type)

    def _read_blob(self, digest: str) -> bytes:
        with self._store.reader_at(digest) as reader:
            return reader.read()

    async def _put_manifest(
        self, request: web.Request, name: str, reference: str
    ) -> web.StreamResponse:
        length = request.content_length
        if length is not None and length > MAX_MANIFEST_BYTES:
            # 413: the spec's answer to a manifest over the registry's limit.
            raise _error(
                InvalidArgument,
                f"manifest of {length} bytes: more than the {MAX_MANIFEST_BYTES} allowed",
                "MANIFEST_TOO_LARGE",
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _error(
                InvalidArgument,
                f"manifest of more than the {MAX_MANIFEST_BYTES} bytes allowed",
                "MANIFEST_TOO_LARGE",
            ) from None
        tag: str | None = None
        if ":" in reference:
            digest = _parse_digest(reference)
            algorithm = digest.split(":", 1)[0]
            actual = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
            if actual != digest:
                raise _digest_invalid(f"manifest is {actual}, not {digest}")
        elif _TAG.fullmatch(reference):
            tag = reference
            digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        else:
            raise _error(InvalidArgument, f"tag {reference[:80]!r}", "MANIFEST_INVALID")
        manifest = parse_manifest(body, request.headers.get("Content-Type", ""))
        for needed in manifest.blobs:
            if not await self._present(name, needed):
                raise _error(
                    NotFound,
                    f"manifest names blob {needed}",
                    "MANIFEST_BLOB_UNKNOWN",
                    digest=needed,
                )
        for needed in manifest.manifests:
            known = await self._run(self._index.manifest_media_type, self._namespace, name, needed)
            if known is None or not await self._present(name, needed):
                raise _error(
                    NotFound,
                    f"index names manifest {needed}",
                    "MANIFEST_BLOB_UNKNOWN",
                    digest=needed,
                )
        with contextlib.suppress(AlreadyExists):
            await self._run(
                self._store.put, upload_ref(name, new_session_id()), body, expected=digest
            )
        referrer = None
        if manifest.subject is not None:
            descriptor: dict[str, Any] = {
                "mediaType": manifest.media_type,
                "digest": digest,
                "size": len(body),
            }
            if manifest.artifact_type:
                descriptor["artifactType"] = manifest.artifact_type
            if manifest.annotations:
                descriptor["annotations"] = manifest.annotations
            referrer = Referrer(manifest.subject, descriptor, manifest.artifact_type)
        await self._run(
            self._index.put_manifest,
            self._namespace,
            name,
            digest,
            manifest.media_type,
            tag,
            referrer,
        )
        headers = {
            "Location": f"/v2/{name}/manifests/{digest}",
            "Docker-Content-Digest": digest,
        }
        if manifest.subject is not None:
            headers["OCI-Subject"] = manifest.subject
        return web.Response(status=201, headers=headers)

    async def _present(self, name: str, digest: str) -> bool:
        """Whether `name` holds `digest` and the store still has its bytes."""
        if not await self._run(self._index.has_blob, self._namespace, name, digest):
            return False
        return await self._run(self._stored, digest)

    async def _delete_manifest(
        self, request: web.Request, name: str, reference: str
    ) -> web.StreamResponse:
        if ":" in reference:
            digest = _parse_digest(reference)
            found = await self._run(self._index.delete_manifest, self._namespace, name, digest)
        elif _TAG.fullmatch(reference):
            found = await self._run(self._index.delete_tag, self._namespace, name, reference)
        else:
            raise _error(InvalidArgument, f"tag {reference[:80]!r}", "MANIFEST_INVALID")
        if not found:
            raise _manifest_unknown(reference)
        return web.Response(status=202)

    # Listing

    async def _referrers(self, request: web.Request, name: str, arg: str) -> web.StreamResponse:
        subject = _parse_digest(arg)
        artifact_type = request.query.get("artifactType") or None
        manifests = await self._run(
            self._index.referrers, self._namespace, name, subject, artifact_type
        )
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
        # Exactly the media type, as the spec requires: no charset parameter.
        response = web.Response(body=body.encode(), headers={"Content-Type": OCI_INDEX})
        if artifact_type is not None:
            response.headers["OCI-Filters-Applied"] = "artifactType"
        return response

    async def _tags(self, request: web.Request, name: str, _: str) -> web.StreamResponse:
        """The repository's tags in lexical order: a page with `n`, else all of them."""
        limit = _page_size(request)
        last = request.query.get("last", "")
        if not await self._run(self._index.repository_exists, self._namespace, name):
            raise _error(NotFound, f"repository {name}", "NAME_UNKNOWN", name=name)
        if limit is None:
            return await self._stream_tags(request, name, last)
        tags = await self._run(self._live_tags, name, last, limit + 1)
        response = web.json_response({"name": name, "tags": tags[:limit]})
        if len(tags) > limit and limit:
            response.headers["Link"] = _next_link(
                f"/v2/{quote(name)}/tags/list", limit, tags[limit - 1]
            )
        return response

    async def _stream_tags(self, request: web.Request, name: str, last: str) -> web.StreamResponse:
        """Every tag after `last`, written out a page at a time: never one huge string."""
        response = web.StreamResponse(
            headers={
                "Content-Type": JSON_TYPE,
                API_VERSION[0]: API_VERSION[1],
                SERVER[0]: SERVER[1],
            }
        )
        await response.prepare(request)
        await response.write(f'{{"name": {json.dumps(name)}, "tags": ['.encode())
        separator = ""
        after: str | None = last
        try:
            while after is not None:
                live, after = await self._run(self._tag_page, name, after, TAG_STREAM_PAGE)
                if live:
                    await response.write((separator + json.dumps(live)[1:-1]).encode())
                    separator = ", "
        except Exception:
            # The status is sent: cut the answer short rather than end a list
            # that lacks tags. The client sees a broken body, not a short list.
            _log.exception("listing tags of %s", name)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write(b"]}")
        await response.write_eof()
        return response

    def _tag_page(self, name: str, after: str, limit: int) -> tuple[list[str], str | None]:
        """The live tags among the next `limit` tags after `after`, and where the next page starts.

        A manifest deleted over gRPC (`ctr content rm`) leaves its tags in the
        index, where reading them answers MANIFEST_UNKNOWN; they are not listed
        (and are again if the manifest is stored again). The next page starts
        after the last tag read, live or not; None once none are left.
        """
        rows = self._index.tags(self._namespace, name, after=after, limit=limit)
        stored: dict[str, bool] = {}
        live = []
        for tag, digest in rows:
            if digest not in stored:
                stored[digest] = self._stored(digest)
            if stored[digest]:
                live.append(tag)
        return live, (rows[-1][0] if len(rows) == limit else None)

    def _live_tags(self, name: str, after: str, limit: int) -> list[str]:
        """Up to `limit` live tags of `name` in lexical order after `after` (see `_tag_page`)."""
        live: list[str] = []
        start: str | None = after
        while start is not None and len(live) < limit:
            found, start = self._tag_page(name, start, limit - len(live))
            live += found
        return live

    def _stored(self, digest: str) -> bool:
        try:
            self._store.info(digest)
        except NotFound:
            return False
        return True

    async def _catalog(self, request: web.Request) -> web.StreamResponse:
        limit = _page_size(request)
        if limit is None:
            limit = DEFAULT_PAGE
        last = request.query.get("last", "")
        names = await self._run(
            self._index.repositories, self._namespace, after=last, limit=limit + 1
        )
        response = web.json_response({"repositories": names[:limit]})
        if len(names) > limit and limit:
            response.headers["Link"] = _next_link("/v2/_catalog", limit, names[limit - 1])
        return response

    _Handler = Callable[["Registry", web.Request, str, str], Awaitable[web.StreamResponse]]
    #: (route, method, whether the route's last part is given) -> handler.
    _handlers: Final[dict[tuple[str, str, bool], _Handler]] = {
        ("blob", "GET", True): _blob,
        ("blob", "HEAD", True): _blob,
        ("blob", "DELETE", True): _delete_blob,
        ("upload", "POST", False): _start_upload,
        ("upload", "PATCH", True): _patch_upload,
        ("upload", "PUT", True): _complete_upload,
        ("upload", "GET", True): _upload_status,
        ("upload", "DELETE", True): _cancel_upload,
        ("manifest", "GET", True): _get_manifest,
        ("manifest", "HEAD", True): _get_manifest,
        ("manifest", "PUT", True): _put_manifest,
        ("manifest", "DELETE", True): _delete_manifest,
        ("tags", "GET", False): _tags,
        ("referrers", "GET", True): _referrers,
    }


def _one_line(error: BaseException, limit: int = 200) -> str:
    """An error's words on one line, cut short: parser errors quote what the client sent."""
    # aiohttp's parser errors start with their status: "400, message: ...".
    text = re.sub(r"^\d{3}, message:\s*", "", " ".join(str(error).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _ServerLog(logging.LoggerAdapter[logging.Logger]):
    """The log aiohttp's connection handler writes to, with malformed requests put in their place.

    aiohttp logs every request its parser refuses (a URL past its line
    limit, a malformed header) at ERROR with a traceback, then answers it
    400 before any handler sees it, and logs a body that fails to decode
    again as it drains it after the answer. That is the client's mistake,
    not the server's: it becomes one INFO line. Anything else stays as
    aiohttp logs it.
    """

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else None
        if isinstance(error, (HttpProcessingError, web.RequestPayloadError)):
            # aiohttp passes the client's address as the one argument, when it has it.
            origin = f" from {args[0]}" if args else ""
            self.logger.info("refused a malformed request%s: %s", origin, _one_line(error))
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


class HttpServer:
    """The registry on its own thread and event loop: bind, `start`, `stop`."""

    def __init__(
        self,
        store: LocalStore,
        options: HttpOptions,
        *,
        grace: float = 10.0,
        tls: TLSFiles | None = None,
    ) -> None:
        host, sep, port = options.address.rpartition(":")
        if not sep or not port.isdigit():
            raise InvalidArgument(f"HTTP address {options.address!r}: expected host:port")
        host = host.removeprefix("[").removesuffix("]") or "0.0.0.0"
        self._options = options
        self._grace = grace
        self._executor = futures.ThreadPoolExecutor(
            max_workers=options.workers, thread_name_prefix="contentd-http"
        )
        self._index = RegistryIndex(store.path / "registry.db")
        self._registry = Registry(store, self._index, options, self._executor)
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
            self._registry.application(),
            access_log=None,
            handle_signals=False,
            read_bufsize=READ_BUFFER,
            shutdown_timeout=self._grace,
            logger=_ServerLog(logging.getLogger("contentd.http"), {}),
        )
        await self._runner.setup()
        site = web.SockSite(self._runner, self._socket, ssl_context=self._ssl)
        await site.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        self._purger = asyncio.get_running_loop().create_task(self._purge())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(IDLE_SWEEP)
            try:
                await self._registry.uploads.close_idle()
            except Exception:
                _log.exception("closing idle uploads")

    async def _purge(self) -> None:
        """Abort abandoned uploads now (a restart finds them too), then every so often."""
        ttl = self._options.upload_ttl
        low, high = PURGE_EVERY
        while True:
            try:
                await self._registry.uploads.purge_abandoned(ttl)
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
        self._index.close()
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
        await self._registry.uploads.close_all()

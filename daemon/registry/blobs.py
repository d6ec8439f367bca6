"""Blobs: GET and HEAD of ``/v2/<name>/blobs/<digest>`` (Range, If-Range, sendfile), and DELETE.

A mirror (see `mirror`) fetches what the repository lacks from its upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import IO, Final, cast

from aiohttp import web

from contentd.content import BlobLocator, ReaderAt
from contentd.errdefs import NotFound, OutOfRange

from .context import REGISTRY_HEADERS, ResourceHandler
from .errors import answered_with, blob_unknown, registry_error
from .routes import parse_digest

_UNSATISFIABLE: Final = (-1, -1)
#: What one read of a blob kept elsewhere (object storage) fetches while the last is sent.
STREAM_CHUNK: Final = 4 << 20
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


def _has_descriptor(reader: ReaderAt) -> bool:
    """Whether the reader's bytes are one open file (io objects without one raise)."""
    fileno = getattr(reader, "fileno", None)
    if fileno is None:
        return False
    try:
        fileno()
    except (OSError, ValueError):
        return False
    return True


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


class BlobHandler(ResourceHandler):
    """A repository's blobs, read from the store and sent with sendfile."""

    async def get(self, request: web.Request, name: str, arg: str) -> web.StreamResponse:
        """GET or HEAD a blob."""
        digest = parse_digest(arg)
        if self._mirror is not None:
            if not await self._present(name, digest):
                answer = await self._mirror.blob(request, name, digest)
                if answer is not None:
                    return answer
        elif not await self._run(self._index.has_blob, self._namespace, name, digest):
            raise blob_unknown(digest)
        if self._redirect_blobs is not None and request.method == "GET":
            return await self._redirect(digest, self._redirect_blobs)
        try:
            reader = await self._run(self._store.reader_at, digest)
        except NotFound:
            raise blob_unknown(digest) from None
        try:
            return await self._send(request, reader, digest)
        finally:
            reader.close()

    async def _redirect(self, digest: str, expires_in: float) -> web.StreamResponse:
        """Send the client to the blob in object storage, as docker distribution does on S3.

        307 keeps the method; the client sends its Range, if any, there.
        """
        store = self._store
        assert isinstance(store, BlobLocator)
        try:
            url = await self._run(store.blob_url, digest, expires_in=expires_in)
        except NotFound:
            raise blob_unknown(digest) from None
        headers = {"Location": url, "Docker-Content-Digest": digest, **REGISTRY_HEADERS}
        return web.Response(status=307, headers=headers)

    async def _send(
        self, request: web.Request, reader: ReaderAt, digest: str
    ) -> web.StreamResponse:
        size = reader.size
        start, count, status = 0, size, 200
        headers = {
            "Docker-Content-Digest": digest,
            "ETag": f'"{digest}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Cache-Control": "max-age=31536000",
            **REGISTRY_HEADERS,
        }
        wanted = None
        # A HEAD describes the whole blob, as without Range; a Range whose
        # If-Range names other content asks for the whole blob (RFC 9110 13.1.5).
        if request.method != "HEAD" and _if_range_holds(request.headers.get("If-Range"), digest):
            wanted = _byte_range(request.headers.get("Range"), size)
        if wanted is _UNSATISFIABLE:
            raise answered_with(
                registry_error(
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
        if not _has_descriptor(reader):
            # Bytes kept elsewhere (object storage) have no descriptor to send.
            await self._stream(response, reader, start, count)
            await response.write_eof()
            return response
        try:
            # sendfile needs only the file's descriptor (and seek), which the reader has.
            await asyncio.get_running_loop().sendfile(
                transport, cast("IO[bytes]", reader), start, count
            )
        except NotImplementedError:  # TLS: the bytes must pass through the loop
            await self._stream(response, reader, start, count)
        await response.write_eof()
        return response

    async def _stream(
        self, response: web.StreamResponse, reader: ReaderAt, start: int, count: int
    ) -> None:
        """Send `count` bytes from `start`, reading the next chunk while one is being sent."""
        offset, end = start, start + count
        reading = self._run(reader.read_at, min(STREAM_CHUNK, end - offset), offset)
        while True:
            chunk = await reading
            offset += len(chunk)
            more = bool(chunk) and offset < end
            if more:
                reading = self._run(reader.read_at, min(STREAM_CHUNK, end - offset), offset)
            try:
                if chunk:
                    await response.write(chunk)
            except BaseException:
                if more:
                    # Not left reading for nobody: its result, or error, is awaited here.
                    with contextlib.suppress(Exception):
                        await reading
                raise
            if not more:
                return

    async def delete(self, request: web.Request, name: str, arg: str) -> web.StreamResponse:
        """DELETE a blob: take it out of the repository (the store keeps its bytes)."""
        digest = parse_digest(arg)
        if not await self._run(self._index.unlink_blob, self._namespace, name, digest):
            raise blob_unknown(digest)
        return web.Response(status=202, headers={"Docker-Content-Digest": digest})

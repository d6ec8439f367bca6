"""Blob uploads: their handlers, and their sessions, each a store ingest kept open between requests.

A session is the ingest ``registry-upload/<repository>/<id>``: its bytes and
offset are the store's, so an upload resumes (and survives a restart) from
what the store kept. How long a request's writer stays open depends on who
may serve the next request:

- one daemon alone (a local store): reopening a writer may re-read what the
  ingest holds to rebuild its hash, so between the requests of one upload
  the writer stays open (and its ref locked) until the upload completes, is
  canceled, or sits idle for `idle_timeout` seconds;
- daemons on many hosts (a store `shared_across_hosts`, behind a load
  balancer): the next request may reach another daemon, so each request
  closes the writer before it answers. Its bytes are then durable with
  their hash state, and the next request, anywhere, reopens the writer from
  that state without reading the bytes back.

A request that finds the upload's ref held by another process (another
daemon's request on the same upload) waits for it briefly, then is answered
416 BLOB_UPLOAD_INVALID with the upload's Range as the store has it: a chunk
sent while another is under way is out of order, and the client resumes from
that Range. Within one daemon, requests on one upload take turns.

An upload nobody touches for much longer (a day, by default) is abandoned:
`purge_abandoned` aborts it and frees its bytes.

`UploadHandler` serves ``/v2/<name>/blobs/uploads/``: starting an upload (or
storing a blob in one request, or mounting it from another repository),
its chunks, its status, completing and canceling it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aiohttp import web

from contentd.content import Store, Writer, validate_digest
from contentd.errdefs import (
    REF_LOCKED,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    Unavailable,
)

from .context import IO_CHUNK, RegistryContext, ResourceHandler
from .errors import answered_with, digest_invalid, registry_error, upload_unknown
from .routes import is_name, parse_digest

UPLOAD_REF_PREFIX: Final = "registry-upload/"
#: Refused: every upload writer the daemon keeps open is in use.
TOO_MANY_UPLOADS: Final = "TOO_MANY_UPLOADS"
#: Bodies of monolithic pushes up to this size are stored in one step.
SMALL_BODY: Final = 1 << 20
#: Seconds a request waits for its upload's ref while another process holds it.
BUSY_WAIT: Final = 1.0

#: Runs a blocking store call off the event loop.
Runner = Callable[..., "asyncio.Future[Any]"]

_log = logging.getLogger("contentd.daemon")


def upload_ref(repository: str, session: str) -> str:
    """The ingest ref of upload `session` to `repository`."""
    return f"{UPLOAD_REF_PREFIX}{repository}/{session}"


def new_session_id() -> str:
    return str(uuid.uuid4())


def valid_session_id(session: str) -> bool:
    try:
        return str(uuid.UUID(session)) == session
    except ValueError:
        return False


class OpenUpload:
    """An upload session's writer while requests use it; one request at a time."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.writer: Writer | None = None
        #: Committed or canceled: the session is over.
        self.finished = False
        self.lock = asyncio.Lock()
        self.last_used = time.monotonic()


class UploadSessions:
    """The open writers of upload sessions, by ref, on one event loop.

    With `hold_writers`, a writer stays open between its upload's requests
    (until idle for `idle_timeout`); without, each request closes it (see
    the module's doc). A ref another process holds is waited for up to
    `busy_wait` seconds.
    """

    def __init__(
        self,
        store: Store,
        run: Runner,
        idle_timeout: float,
        max_open: int = 128,
        *,
        hold_writers: bool = True,
        busy_wait: float = BUSY_WAIT,
    ) -> None:
        self._store = store
        self._run = run
        self._idle_timeout = idle_timeout
        self._max_open = max_open
        self._hold_writers = hold_writers
        self._busy_wait = busy_wait
        self._open: dict[str, OpenUpload] = {}

    def held_writers(self) -> int:
        """Writers open now; callable from any thread (it reads a copy of the table)."""
        return sum(1 for entry in list(self._open.values()) if entry.writer is not None)

    @property
    def hold_writers(self) -> bool:
        """Whether writers stay open between an upload's requests."""
        return self._hold_writers

    async def _make_room(self) -> None:
        """Keep at most `max_open` writers open (each holds a file and a lock).

        The least recently used one no request is using is closed (its upload
        reopens when next used); when every one is in use, the new upload is
        refused, as TOOMANYREQUESTS.
        """
        while True:
            open_now = [entry for entry in self._open.values() if entry.writer is not None]
            if len(open_now) < self._max_open:
                return
            idle = [entry for entry in open_now if not entry.lock.locked()]
            if not idle:
                raise ResourceExhausted(
                    f"{self._max_open} uploads in progress at once",
                    reason=TOO_MANY_UPLOADS,
                    metadata={"limit": str(self._max_open)},
                )
            victim = min(idle, key=lambda entry: entry.last_used)
            async with victim.lock:
                await self._close(victim.ref, victim)

    async def start(self, repository: str) -> tuple[str, int]:
        """A new session for `repository`: its id and offset (0)."""
        session = new_session_id()
        ref = upload_ref(repository, session)
        entry = OpenUpload(ref)
        self._open[ref] = entry
        async with entry.lock:
            try:
                await self._make_room()
                entry.writer = await self._run(self._store.writer, ref)
            except BaseException:
                self._open.pop(ref, None)
                raise
            if not self._hold_writers:
                await self._close(ref, entry)
        return session, 0

    @contextlib.asynccontextmanager
    async def use(self, repository: str, session: str) -> AsyncIterator[OpenUpload]:
        """The session's writer, held for this request alone; BLOB_UPLOAD_UNKNOWN if none.

        A session not open in this process (the daemon restarted, it sat
        idle, or writers are not held) is reopened from its ingest; without
        held writers, it is closed again before the request answers.
        """
        if not valid_session_id(session):
            raise upload_unknown(session)
        ref = upload_ref(repository, session)
        while True:
            entry = self._open.get(ref)
            if entry is None:
                entry = self._open[ref] = OpenUpload(ref)
            await entry.lock.acquire()
            if self._open.get(ref) is entry:
                break
            entry.lock.release()  # closed while idle, or ended, while this request waited
            if entry.finished:
                raise upload_unknown(session)
        try:
            if entry.writer is None:
                try:
                    await self._make_room()
                    entry.writer = await self._reopen(repository, session, ref)
                except BaseException:
                    self._open.pop(ref, None)
                    raise
            try:
                yield entry
            finally:
                entry.last_used = time.monotonic()
                if entry.finished:
                    self._open.pop(ref, None)
                elif not self._hold_writers:
                    # Before the answer: the client's next request may reach another daemon.
                    await self._close(ref, entry)
        finally:
            entry.lock.release()

    async def _reopen(self, repository: str, session: str, ref: str) -> Writer:
        """The session's writer, from its ingest; a ref another process holds is waited for.

        Past `busy_wait`, 416 BLOB_UPLOAD_INVALID with the upload's Range.
        """
        deadline = time.monotonic() + self._busy_wait
        delay = 0.02
        while True:
            try:
                writer: Writer = await self._run(self._reopen_now, ref, session)
            except Unavailable as exc:
                if exc.reason != REF_LOCKED:
                    raise
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    offset = await self.offset(repository, session)
                    raise answered_with(
                        registry_error(
                            OutOfRange,
                            f"upload {session}: another request is writing to it",
                            "RANGE_INVALID",
                        ),
                        headers=_upload_headers(repository, session, offset),
                    ) from None
            else:
                return writer
            await asyncio.sleep(min(delay, remaining))
            delay = min(2 * delay, 0.2)

    def _reopen_now(self, ref: str, session: str) -> Writer:
        try:
            self._store.status(ref)
        except NotFound:
            raise upload_unknown(session) from None
        return self._store.writer(ref)

    async def offset(self, repository: str, session: str) -> int:
        """How many bytes the session holds, without taking it from a request using it."""
        if not valid_session_id(session):
            raise upload_unknown(session)
        ref = upload_ref(repository, session)
        entry = self._open.get(ref)
        writer = entry.writer if entry is not None else None
        if writer is not None:
            return writer.offset
        try:
            status = await self._run(self._store.status, ref)
        except NotFound:
            raise upload_unknown(session) from None
        return int(status.offset)

    async def cancel(self, repository: str, session: str) -> None:
        """End the session and discard its bytes."""
        async with self.use(repository, session) as entry:
            entry.finished = True
            await self._close_writer(entry)
            try:
                await self._run(self._store.abort, entry.ref)
            except NotFound:
                raise upload_unknown(session) from None

    async def finish(self, entry: OpenUpload) -> None:
        """Forget `entry`'s writer (committed, or failed to) and discard what is left of it."""
        entry.finished = True
        await self._close_writer(entry)
        with contextlib.suppress(NotFound, Unavailable):
            await self._run(self._store.abort, entry.ref)

    async def close_idle(self) -> None:
        """Close writers no request has used for the idle timeout; their ingests stay."""
        deadline = time.monotonic() - self._idle_timeout
        for ref, entry in list(self._open.items()):
            if entry.last_used < deadline and not entry.lock.locked():
                async with entry.lock:
                    await self._close(ref, entry)

    async def purge_abandoned(self, ttl: float) -> int:
        """Abort every upload untouched for `ttl` seconds; returns how many were.

        As docker-registry purges old uploads: a client that started an
        upload and went away would otherwise leave its ingest, and its bytes,
        for ever. An upload a request is using is left alone, and so is one
        another process holds (the store refuses the abort). Requests for a
        purged upload wait for the purge, then find it unknown.
        """
        cutoff = datetime.now(UTC) - timedelta(seconds=ttl)
        statuses = await self._run(self._store.list_statuses)
        purged = 0
        for status in statuses:
            ref = status.ref
            if not ref.startswith(UPLOAD_REF_PREFIX) or status.updated_at >= cutoff:
                continue
            entry = self._open.get(ref)
            if entry is None:
                entry = self._open[ref] = OpenUpload(ref)
                entry.last_used = float("-inf")
            if entry.lock.locked():
                continue  # in use right now
            async with entry.lock:
                if self._open.get(ref) is not entry or entry.last_used > time.monotonic() - ttl:
                    continue
                try:
                    await self._close_writer(entry)
                    await self._run(self._store.abort, ref)
                except (NotFound, Unavailable):
                    continue  # gone meanwhile, or another process's writer holds it
                finally:
                    if self._open.get(ref) is entry:
                        del self._open[ref]
                entry.finished = True
                purged += 1
                _log.info("aborted upload %s: untouched for more than %gs", ref, ttl)
        return purged

    async def close_all(self) -> None:
        for ref, entry in list(self._open.items()):
            async with entry.lock:
                await self._close(ref, entry)

    async def _close(self, ref: str, entry: OpenUpload) -> None:
        """Close `entry`'s writer, then forget it (the caller holds its lock).

        The entry leaves `_open` only once its writer has let go of the ref:
        a request for the same upload meanwhile waits on the entry's lock and
        then reopens the ref, rather than finding no entry and failing on a
        ref still locked (REF_LOCKED) by the writer being closed.
        """
        try:
            await self._close_writer(entry)
        finally:
            if self._open.get(ref) is entry:
                del self._open[ref]

    async def _close_writer(self, entry: OpenUpload) -> None:
        """Close `entry`'s writer, if it has one open; from now on it has none."""
        writer, entry.writer = entry.writer, None
        if writer is not None:
            await self._run(writer.close)


def _parse_content_range(text: str) -> tuple[int, int]:
    """A PATCH's ``Content-Range: <start>-<end>`` (inclusive), ``bytes`` prefix allowed."""
    match = re.fullmatch(r"\s*(?:bytes[ =])?(\d+)-(\d+)\s*", text)
    if match is None or int(match[2]) < int(match[1]):
        raise registry_error(OutOfRange, f"Content-Range {text[:60]!r}", "RANGE_INVALID")
    return int(match[1]), int(match[2])


def _upload_headers(name: str, session: str, offset: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{name}/blobs/uploads/{session}",
        "Range": f"0-{max(offset - 1, 0)}",
        "Docker-Upload-UUID": session,
    }


def _created(name: str, digest: str) -> web.Response:
    return web.Response(
        status=201,
        headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest},
    )


def _check_chunk(request: web.Request, session: str, offset: int, name: str) -> None:
    """A chunk must start where the upload stands and be as long as it says."""
    text = request.headers.get("Content-Range")
    if text is None:
        return
    start, end = _parse_content_range(text)
    if start != offset:
        raise answered_with(
            registry_error(
                OutOfRange,
                f"upload {session}: chunk starts at {start}, the upload holds {offset} bytes",
                "RANGE_INVALID",
            ),
            headers=_upload_headers(name, session, offset),
        )
    length = request.content_length
    if length is not None and length != end - start + 1:
        raise registry_error(
            InvalidArgument,
            f"upload {session}: Content-Range {start}-{end} but {length} bytes",
            "SIZE_INVALID",
        )


async def _stored_as_pushed(storing: Awaitable[object]) -> None:
    """Wait for pushed bytes to be stored under the digest they were pushed with.

    Bytes the store already holds under that digest are success; bytes of
    another digest are DIGEST_INVALID.
    """
    try:
        await storing
    except AlreadyExists:
        pass
    except FailedPrecondition as exc:
        raise digest_invalid(str(exc)) from None


class UploadHandler(ResourceHandler):
    """A repository's blob uploads, each request on its session's open writer."""

    def __init__(self, context: RegistryContext, sessions: UploadSessions) -> None:
        super().__init__(context)
        self._uploads = sessions

    async def start(self, request: web.Request, name: str, _: str) -> web.StreamResponse:
        """POST: mount the blob, store it whole, or start an upload session for it."""
        query = request.query
        mount, source = query.get("mount"), query.get("from")
        # A mount that cannot be done, whatever the reason, starts an upload instead
        # (the spec's SHOULD; the client then pushes the blob).
        if mount and source and is_name(source):
            with contextlib.suppress(InvalidArgument):
                digest = validate_digest(mount)
                if await self._mount(name, source, digest):
                    return _created(name, digest)
        if "digest" in query:
            digest = parse_digest(query["digest"])
            await self._store_whole(request, digest)
            await self._run(self._index.link_blob, self._namespace, name, digest)
            return _created(name, digest)
        session, offset = await self._uploads.start(name)
        return web.Response(status=202, headers=_upload_headers(name, session, offset))

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
            await _stored_as_pushed(self._run(self._store.put, ref, data, expected=digest))
            return
        writer = await self._run(self._store.writer, ref)
        try:
            await self._receive(request, writer)
            await _stored_as_pushed(self._run(writer.commit, 0, digest))
        finally:
            await self._run(writer.close)
            with contextlib.suppress(NotFound):
                await self._run(self._store.abort, ref)

    async def _receive(self, request: web.Request, writer: Writer) -> None:
        """Append the request body to `writer`.

        The event loop keeps reading the socket while a thread hashes and
        writes the previous megabyte.
        """
        buffer = bytearray()
        pending: asyncio.Future[int] | None = None
        try:
            async for chunk in request.content.iter_any():
                buffer += chunk
                if len(buffer) >= IO_CHUNK:
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

    async def _append(
        self, request: web.Request, name: str, session: str, entry: OpenUpload
    ) -> Writer:
        """Append the request's chunk to the upload, once it is checked against what it holds."""
        writer = entry.writer
        assert writer is not None
        _check_chunk(request, session, writer.offset, name)
        await self._receive(request, writer)
        return writer

    async def patch(self, request: web.Request, name: str, session: str) -> web.StreamResponse:
        """PATCH: append a chunk to the upload."""
        async with self._uploads.use(name, session) as entry:
            writer = await self._append(request, name, session, entry)
            offset = writer.offset
        return web.Response(status=202, headers=_upload_headers(name, session, offset))

    async def complete(self, request: web.Request, name: str, session: str) -> web.StreamResponse:
        """PUT ?digest=: append the last chunk, if any, and commit the blob under that digest."""
        text = request.query.get("digest")
        if not text:
            raise digest_invalid(f"upload {session}: completing needs ?digest=")
        digest = parse_digest(text)
        async with self._uploads.use(name, session) as entry:
            writer = await self._append(request, name, session, entry)
            try:
                await _stored_as_pushed(self._run(writer.commit, 0, digest))
            finally:
                await self._uploads.finish(entry)
        await self._run(self._index.link_blob, self._namespace, name, digest)
        return _created(name, digest)

    async def status(self, request: web.Request, name: str, session: str) -> web.StreamResponse:
        """GET: how many bytes the upload holds."""
        offset = await self._uploads.offset(name, session)
        return web.Response(status=204, headers=_upload_headers(name, session, offset))

    async def cancel(self, request: web.Request, name: str, session: str) -> web.StreamResponse:
        """DELETE: end the upload and discard its bytes."""
        await self._uploads.cancel(name, session)
        return web.Response(status=204, headers={"Docker-Upload-UUID": session})

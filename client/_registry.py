"""An OCI distribution (registry v2) client on aiohttp: resolve references, read manifests
and blobs (from an offset, with Range), write them (uploads, mounts, manifests), authorized
as the registry asks.

One `RegistryClient` talks to one registry host over one connection pool;
it is asynchronous so that many transfers share a thread, and so that an
asyncio server (a pull-through mirror) can use it as it is. Errors are
`contentd.errdefs` classes: a registry's error answer is decoded from its
body (``{"errors": [...]}``), prefixed with what was being done.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, Callable, Mapping
from types import TracebackType
from typing import Final, Self
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import aiohttp

from contentd.content import Descriptor, digest_of
from contentd.errdefs import (
    DataLoss,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
    from_http,
    wrap,
)

from ._auth import Authorizer, find_credentials, repository_scope
from ._manifests import MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, is_index, is_manifest, kind
from ._reference import Reference
from ._registry_options import RegistryOptions

#: Redirects followed per request (blob downloads may redirect to object storage).
MAX_REDIRECTS: Final = 5
#: Bytes of an error answer's body read to decode it.
_MAX_ERROR_BODY: Final = 64 * 1024
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_USER_AGENT: Final = "contentd"

#: A request's body: bytes, or chunks as they come.
Body = bytes | AsyncIterable[bytes]


class BlobResponse:
    """An open download of a blob: its body streams from `start` (0 if Range was ignored)."""

    def __init__(self, response: aiohttp.ClientResponse, start: int) -> None:
        self._response = response
        self.start = start

    async def read_chunk(self) -> bytes:
        """The next piece of the body as it came off the connection, not copied; empty at its
        end. For handing bytes on as they come without joining them."""
        try:
            while True:
                data, chunk_ended = await self._response.content.readchunk()
                # Empty and at a chunk's end: only an HTTP chunk ended, not the body.
                if data or not chunk_ended:
                    return data
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(
                f"reading from {self._response.url.host}: {exc or 'timed out'}"
            ) from None

    async def read_any(self, limit: int) -> bytes:
        """What has arrived of the body, up to `limit` bytes, waiting only when nothing has;
        empty at its end. For passing bytes on as they come (a mirror's clients)."""
        try:
            return await self._response.content.read(limit)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(
                f"reading from {self._response.url.host}: {exc or 'timed out'}"
            ) from None

    @property
    def length(self) -> int | None:
        """The body's length, if the registry said (Content-Length)."""
        return self._response.content_length

    def close(self) -> None:
        """Let the connection go: back to the pool if the body was read out, else closed."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class RegistryClient:
    """The registry v2 API of one host, for async with-blocks.

    ``async with RegistryClient("registry.example", options) as registry:``
    opens the connection pool; leaving the block closes every connection.
    """

    def __init__(self, host: str, options: RegistryOptions | None = None) -> None:
        self.host = host
        self.options = options or RegistryOptions()
        scheme = "http" if self.options.plain_http else "https"
        self.base = f"{scheme}://{host}"
        self._ssl = self.options.ssl_context()
        self._session: aiohttp.ClientSession | None = None
        self._authorizers: dict[str, Authorizer] = {}

    async def __aenter__(self) -> Self:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.options.connect_timeout,
            sock_read=self.options.read_timeout,
        )
        connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": _USER_AGENT},
            auto_decompress=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("RegistryClient used outside its async with-block")
        return self._session

    def _authorizer(self, repository: str) -> Authorizer:
        found = self._authorizers.get(repository)
        if found is None:
            credentials = self.options.credentials
            if credentials is None and self.options.read_auth_files:
                credentials = find_credentials(
                    self.host, repository, auth_file=self.options.auth_file
                )
            found = self._authorizers[repository] = Authorizer(self.session, credentials)
        return found

    async def request(
        self,
        method: str,
        repository: str,
        path: str,
        *,
        doing: str,
        headers: Mapping[str, str] | None = None,
        scope: str | None = None,
        body: Callable[[], Body] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send a request to ``/v2/<repository>/<path>``, authorized and redirected as asked.

        `path` may also be a URL or an absolute path (an upload's Location).
        `scope` is the token scope asked for (by default pulling from
        `repository`); `body` makes the request's body, afresh for each try
        (a challenge answered, a redirect followed). Returns the open response
        for a 2xx answer; raises the registry's error (decoded, prefixed with
        `doing`) for any other.
        """
        authorizer = self._authorizer(repository)
        scope = scope or repository_scope(repository)
        url = urljoin(f"{self.base}/v2/{repository}/", path)
        sent_headers = dict(headers or {})
        # Credentials go to the registry only, never to where it sends an upload or a download.
        authorization = await authorizer.header(scope) if _same_origin(url, self.base) else None
        retried = False
        redirects = 0
        while True:
            if authorization is not None:
                sent_headers["Authorization"] = authorization
            else:
                sent_headers.pop("Authorization", None)
            try:
                response = await self.session.request(
                    method,
                    url,
                    headers=sent_headers,
                    data=body() if body is not None else None,
                    allow_redirects=False,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise Unavailable(f"{doing}: {exc or 'timed out'}") from None
            if response.status == 401 and not retried and _same_origin(url, self.base):
                challenge = response.headers.get("WWW-Authenticate", "")
                await _discard(response)
                retried = True
                if await authorizer.challenged(challenge, scope, authorization):
                    authorization = await authorizer.header(scope)
                    continue
                raise Unauthenticated(
                    f"{doing}: the registry asks for authorization that no credentials found "
                    "can give (see REGISTRY_AUTH_FILE)"
                )
            if response.status in _REDIRECTS and "Location" in response.headers:
                redirects += 1
                location = urljoin(url, response.headers["Location"])
                await _discard(response)
                if redirects > MAX_REDIRECTS:
                    raise Unavailable(f"{doing}: more than {MAX_REDIRECTS} redirects")
                url = location
                if not _same_origin(url, self.base):
                    authorization = None
                continue
            if 200 <= response.status < 300:
                return response
            answer = await response.content.read(_MAX_ERROR_BODY)
            response.close()
            raise wrap(from_http(response.status, answer), doing)

    async def resolve(self, reference: Reference) -> Descriptor:
        """The descriptor a tag or digest names: HEAD, as containerd resolves, else GET."""
        doing = f"resolving {reference}"
        headers = {"Accept": MANIFEST_ACCEPT}
        path = f"manifests/{reference.object}"
        response = await self.request(
            "HEAD", reference.repository, path, doing=doing, headers=headers
        )
        try:
            media_type = _media_type(response)
            digest = response.headers.get("Docker-Content-Digest", "")
            length = response.headers.get("Content-Length", "")
        finally:
            response.close()
        if reference.digest:
            digest = reference.digest
        if digest and media_type and length.isdigit() and int(length) > 0:
            return Descriptor(media_type, digest, int(length))
        # Some registries describe a manifest only in a GET's answer.
        data, media_type = await self.get_manifest(reference.repository, reference.object, doing)
        if reference.digest and digest_of(data, reference.digest.partition(":")[0]) != digest:
            raise DataLoss(
                f"{doing}: the registry's manifest does not match the digest",
                reason="DIGEST_INVALID",
            )
        return Descriptor(media_type, digest or digest_of(data), len(data))

    async def get_manifest(
        self, repository: str, reference: str, doing: str = ""
    ) -> tuple[bytes, str]:
        """The bytes and media type of the manifest `reference` (a tag or digest) names.

        The bytes are not checked against a digest; `doing` prefixes errors.
        """
        doing = doing or f"fetching manifest {reference} from {self.host}/{repository}"
        headers = {"Accept": MANIFEST_ACCEPT}
        path = f"manifests/{reference}"
        response = await self.request("GET", repository, path, doing=doing, headers=headers)
        try:
            data = await response.content.read(MAX_MANIFEST_BYTES + 1)
            if len(data) > MAX_MANIFEST_BYTES:
                raise InvalidArgument(
                    f"{doing}: the manifest is larger than {MAX_MANIFEST_BYTES} bytes",
                    reason="MANIFEST_TOO_LARGE",
                )
            return data, _media_type(response)
        finally:
            response.close()

    async def blob_size(self, repository: str, digest: str) -> int:
        """The size of blob `digest` in `repository` (a HEAD); NotFound if it has none."""
        doing = f"looking up {digest} in {self.host}/{repository}"
        response = await self.request("HEAD", repository, f"blobs/{digest}", doing=doing)
        length = response.content_length
        response.close()
        if length is None:
            raise Unavailable(f"{doing}: the registry gave no Content-Length")
        return length

    async def open_blob(
        self, repository: str, descriptor: Descriptor, offset: int = 0, *, manifest: bool = False
    ) -> BlobResponse:
        """Start downloading `descriptor`'s content from `offset` (a Range request past 0).

        A manifest or index (`manifest`) is read from the manifests endpoint,
        anything else from the blobs endpoint. The answer's `start` is where
        its body begins: 0 when the registry ignored the Range.
        """
        endpoint = "manifests" if manifest else "blobs"
        headers = {"Accept": f"{descriptor.media_type}, {MANIFEST_ACCEPT}"} if manifest else {}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        doing = f"fetching {descriptor.digest} from {self.host}/{repository}"
        response = await self.request(
            "GET", repository, f"{endpoint}/{descriptor.digest}", doing=doing, headers=headers
        )
        start = 0
        if response.status == 206:
            start = _range_start(response.headers.get("Content-Range", ""))
            if start != offset:
                response.close()
                raise Unavailable(f"{doing}: asked for bytes from {offset}, got them from {start}")
        return BlobResponse(response, start)

    # Writing

    async def exists(self, repository: str, descriptor: Descriptor, reference: str = "") -> bool:
        """Whether `repository` holds `descriptor`'s content: a HEAD, as containerd's push asks.

        A blob is asked for by digest, a manifest or index by `reference` (a
        tag, which must then name this digest) or by digest.
        """
        manifest = is_index(descriptor.media_type) or is_manifest(descriptor.media_type)
        reference = reference or descriptor.digest
        path = f"{'manifests' if manifest else 'blobs'}/{reference}"
        try:
            response = await self.request(
                "HEAD",
                repository,
                path,
                doing=f"looking for {descriptor.digest} in {self.host}/{repository}",
                headers={"Accept": f"{descriptor.media_type}, */*"},
                scope=repository_scope(repository, "pull,push"),
            )
        except NotFound:
            return False
        found = response.headers.get("Docker-Content-Digest", "")
        response.close()
        return descriptor.digest in (reference, found)

    async def mount_blob(self, repository: str, descriptor: Descriptor, source: str) -> str | None:
        """Ask for `descriptor`'s blob in `repository` from `source`, another repository here.

        None if the registry mounted it; else the Location of the upload
        session it opened instead (the spec's answer to a mount it cannot do).
        A source the credentials may not read is not asked of again: a plain
        upload starts instead, as containerd's push does.
        """
        query = urlencode({"mount": descriptor.digest, "from": source})
        doing = f"mounting {descriptor.digest} from {source} into {self.host}/{repository}"
        scope = f"{repository_scope(repository, 'pull,push')} {repository_scope(source)}"
        try:
            response = await self.request(
                "POST", repository, f"blobs/uploads/?{query}", doing=doing, scope=scope
            )
        except Unauthenticated:
            return await self.start_upload(repository, descriptor)
        return await _upload_location(response, doing)

    async def start_upload(self, repository: str, descriptor: Descriptor) -> str:
        """Open an upload session for `descriptor`'s blob; its Location."""
        doing = (
            f"pushing {kind(descriptor.media_type)} {descriptor.digest} to {self.host}/{repository}"
        )
        response = await self.request(
            "POST",
            repository,
            "blobs/uploads/",
            doing=doing,
            scope=repository_scope(repository, "pull,push"),
        )
        location = await _upload_location(response, doing)
        if location is None:
            raise Unavailable(f"{doing}: the registry answered an upload's start with 201")
        return location

    async def upload_blob(
        self,
        repository: str,
        location: str,
        descriptor: Descriptor,
        body: Callable[[], Body],
        *,
        stream: bool,
    ) -> None:
        """Send `descriptor`'s bytes (made by `body`) to the upload session at `location`.

        In one PUT with its digest (a monolithic upload), or with `stream` in
        one PATCH and then an empty PUT with its digest, as docker's client
        sends a large blob (some registries, and proxies before them, limit
        what one PUT may carry).
        """
        doing = (
            f"pushing {kind(descriptor.media_type)} {descriptor.digest} to {self.host}/{repository}"
        )
        scope = repository_scope(repository, "pull,push")
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(descriptor.size),
        }
        if stream:
            response = await self.request(
                "PATCH", repository, location, doing=doing, headers=headers, scope=scope, body=body
            )
            location = response.headers.get("Location", location)
            await _discard(response)
            headers["Content-Length"] = "0"
            body = _empty
        response = await self.request(
            "PUT",
            repository,
            _with_query(location, digest=descriptor.digest),
            doing=doing,
            headers=headers,
            scope=scope,
            body=body,
        )
        await _discard(response)

    async def put_manifest(
        self, repository: str, reference: str, descriptor: Descriptor, data: bytes
    ) -> None:
        """Store the manifest or index `data` (described by `descriptor`) under `reference`."""
        doing = (
            f"pushing {kind(descriptor.media_type)} {descriptor.digest} "
            f"to {self.host}/{repository}:{reference}"
        )
        response = await self.request(
            "PUT",
            repository,
            f"manifests/{reference}",
            doing=doing,
            headers={"Content-Type": descriptor.media_type},
            scope=repository_scope(repository, "pull,push"),
            body=lambda: data,
        )
        stored = response.headers.get("Docker-Content-Digest", descriptor.digest)
        await _discard(response)
        if stored != descriptor.digest:
            raise DataLoss(f"{doing}: the registry stored it as {stored}", reason="DIGEST_INVALID")


def _empty() -> bytes:
    return b""


async def _upload_location(response: aiohttp.ClientResponse, doing: str) -> str | None:
    """Where an upload session continues (202), or None when the blob is there already (201)."""
    location = response.headers.get("Location")
    status = response.status
    await _discard(response)
    if status == 201:
        return None
    if not location:
        raise Unavailable(f"{doing}: the registry answered {status} without a Location")
    return location


def _with_query(url: str, **params: str) -> str:
    """`url` with `params` added to its query (an upload's Location keeps its own state there)."""
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), *params.items()])
    return urlunsplit(parts._replace(query=query))


def _same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def _media_type(response: aiohttp.ClientResponse) -> str:
    return response.headers.get("Content-Type", "").split(";")[0].strip()


def _range_start(content_range: str) -> int:
    unit, _, spec = content_range.partition(" ")
    first = spec.partition("-")[0]
    if unit != "bytes" or not first.isdigit():
        raise Unavailable(f"the registry answered a Range with Content-Range {content_range!r}")
    return int(first)


async def _discard(response: aiohttp.ClientResponse) -> None:
    """Read a small answer out so its connection can be reused; close it otherwise."""
    with contextlib.suppress(aiohttp.ClientError):
        await response.content.read(_MAX_ERROR_BODY)
    if response.content.at_eof():
        response.release()
    else:
        response.close()

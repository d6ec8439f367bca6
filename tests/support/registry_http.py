"""Raw HTTP to the registry face: requests as written, answers as received, nothing interpreted.

Tests of the distribution API must see exactly what a client sees (status, every header,
the body's bytes), so this speaks the stdlib's `http.client`, one connection per request,
and never follows redirects or retries. Every error answer is checked on the way in for
text that must never reach a client (the store's root, temporary paths, Python traces).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

OCTET_STREAM = "application/octet-stream"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def digest_of(data: bytes) -> str:
    """The sha256 digest of `data`, as the registry names blobs."""
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def basic_authorization(user: str, password: str) -> str:
    """An ``Authorization`` header value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def canonical(document: dict[str, Any]) -> bytes:
    """`document` as JSON with sorted keys and no spaces."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type: str, body: bytes) -> dict[str, Any]:
    """The OCI descriptor of `body`."""
    return {"mediaType": media_type, "digest": digest_of(body), "size": len(body)}


def image_manifest(config: bytes, layers: list[bytes], *, media_type: str = OCI_MANIFEST) -> bytes:
    """An image manifest of `config` and `layers`, OCI or (by `media_type`) Docker schema 2."""
    docker = media_type == DOCKER_MANIFEST
    return canonical(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, config),
            "layers": [descriptor(DOCKER_LAYER if docker else OCI_LAYER, b) for b in layers],
        }
    )


def index_of(manifests: list[tuple[str, bytes]], *, media_type: str = OCI_INDEX) -> bytes:
    """An index (or Docker manifest list) of `manifests`, each given as (media type, body)."""
    return canonical(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [descriptor(kind, body) for kind, body in manifests],
        }
    )


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: status, headers and the whole body."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_codes(self) -> list[str]:
        """The ``code`` of each entry of a registry error body."""
        return [entry["code"] for entry in self.json()["errors"]]

    @property
    def error_code(self) -> str:
        """The code of a registry error body that holds exactly one error."""
        codes = self.error_codes
        assert len(codes) == 1, f"expected one error, got {codes}"
        return codes[0]

    def __repr__(self) -> str:
        return f"Answer({self.status}, {dict(self.headers)}, {self.body[:300]!r})"


class RegistryClient:
    """Requests to one registry base URL, each on a fresh connection.

    `forbidden` are strings no error body may contain; an answer that holds
    one fails the request at once, whichever test made it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        authorization: str | None = None,
        forbidden: Iterable[str] = (),
        timeout: float = 30.0,
    ) -> None:
        parts = urlsplit(base_url)
        assert parts.scheme == "http", base_url
        assert parts.hostname, base_url
        assert parts.port, base_url
        self.base_url = base_url
        self.host = parts.hostname
        self.port = parts.port
        self.authorization = authorization
        self.forbidden = tuple(forbidden)
        self.timeout = timeout

    def _target(self, url: str) -> str:
        """A request target from a path or an absolute URL of this registry (a Location)."""
        parts = urlsplit(url)
        if parts.scheme:
            assert (parts.hostname, parts.port) == (self.host, self.port), url
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def request(
        self,
        method: str,
        url: str,
        body: bytes | Iterable[bytes] = b"",
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send one request; a body given as an iterable goes out chunked, without a length."""
        sent = dict(headers or {})
        if self.authorization is not None:
            sent.setdefault("Authorization", self.authorization)
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            if isinstance(body, bytes):
                if body or method in ("POST", "PUT", "PATCH"):
                    sent.setdefault("Content-Length", str(len(body)))
                connection.request(method, self._target(url), body=body or None, headers=sent)
            else:
                connection.request(
                    method, self._target(url), body=body, headers=sent, encode_chunked=True
                )
            response = connection.getresponse()
            answer = Answer(response.status, response.headers, response.read())
        finally:
            connection.close()
        if answer.status >= 400:
            for text in self.forbidden:
                assert text.encode() not in answer.body, f"{method} {url}: {text!r} leaked"
        return answer

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> Answer:
        return self.request("GET", url, headers=headers)

    def head(self, url: str, headers: Mapping[str, str] | None = None) -> Answer:
        return self.request("HEAD", url, headers=headers)

    def delete(self, url: str) -> Answer:
        return self.request("DELETE", url)

    def raw(self, request: bytes) -> bytes:
        """Send `request` as bytes on a socket and return everything until the server closes.

        `http.client` reads no body after HEAD whatever the server sends, so
        whether a HEAD answer carries bytes can be seen only on the socket.
        """
        with socket.create_connection((self.host, self.port), timeout=self.timeout) as conn:
            conn.sendall(request)
            received = bytearray()
            while chunk := conn.recv(65536):
                received += chunk
        return bytes(received)

    # The steps most tests take on the way to the behaviour they check.

    def push_blob(self, repository: str, data: bytes) -> str:
        """Push `data` to `repository` in one monolithic POST; returns its digest."""
        digest = digest_of(data)
        answer = self.request(
            "POST",
            f"/v2/{repository}/blobs/uploads/?digest={digest}",
            data,
            {"Content-Type": OCTET_STREAM},
        )
        assert answer.status == 201, answer
        return digest

    def start_upload(self, repository: str) -> str:
        """Open an upload session in `repository`; returns its Location."""
        answer = self.request("POST", f"/v2/{repository}/blobs/uploads/")
        assert answer.status == 202, answer
        location = answer.header("Location")
        assert location, answer
        return location

    def patch_chunk(self, location: str, data: bytes, start: int) -> Answer:
        """PATCH `data` as the chunk at `start` of the upload at `location`."""
        return self.request(
            "PATCH",
            location,
            data,
            {
                "Content-Type": OCTET_STREAM,
                "Content-Range": f"{start}-{start + len(data) - 1}",
            },
        )

    def complete_upload(self, location: str, digest: str, final_chunk: bytes = b"") -> Answer:
        """PUT the upload at `location` with ``?digest=``, its last bytes in the body."""
        separator = "&" if "?" in location else "?"
        return self.request(
            "PUT",
            f"{location}{separator}digest={digest}",
            final_chunk,
            {"Content-Type": OCTET_STREAM},
        )

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> Answer:
        return self.request(
            "PUT", f"/v2/{repository}/manifests/{reference}", body, {"Content-Type": media_type}
        )

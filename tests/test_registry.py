"""The registry face on the wire: every distribution API route, raw, against a real daemon.

One daemon (`contentd serve --http`, its own `--http-namespace`) serves most of the module;
a second, seeded by a first run on the same root, serves with `--http-htpasswd` and
`--http-read-only`; the restart tests start their own. Requests go out with the stdlib's
`http.client` (tests/support/registry_http.py), one connection each, so every test sees the
status, headers and body a registry client would. Each test pushes into a repository of its
own with bytes of its own, so no test sees another's blobs, tags or uploads.

Expectations follow the OCI distribution spec and, where it leaves room, docker distribution
2.8. Every error answer is checked on its way in for the store's root, ``/tmp`` and Python
tracebacks (`RegistryClient.forbidden`), so no test can pass while an error leaks.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
from support.daemon import DaemonProcess, start_daemon
from support.registry_http import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    OCTET_STREAM,
    Answer,
    RegistryClient,
    basic_authorization,
    canonical,
    descriptor,
    digest_of,
    image_manifest,
    index_of,
)

from contentd.client import RemoteStore
from contentd.errdefs import NotFound

NAMESPACE = "registry-http"
USER = "pusher"
PASSWORD = "s3cret pass phrase"
LEAKS = ("/tmp", "Traceback")


#: Above the size the server stores in one step: the streamed monolithic path.
LARGE = 3 * (1 << 20) + 17


# Fixtures


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("registry")
    started = start_daemon(root, "--http", "127.0.0.1:0", "--http-namespace", NAMESPACE)
    try:
        yield started
    finally:
        started.stop()


def client_for(daemon: DaemonProcess, authorization: str | None = None) -> RegistryClient:
    return RegistryClient(
        daemon.http_url, authorization=authorization, forbidden=(str(daemon.root), *LEAKS)
    )


@pytest.fixture(scope="module")
def registry(daemon: DaemonProcess) -> RegistryClient:
    return client_for(daemon)


@pytest.fixture
def repo() -> str:
    """A repository no other test pushes to."""
    return f"tests/{uuid.uuid4().hex[:12]}"


# Manifests, built as a client would push them.


@dataclass(frozen=True)
class Image:
    manifest: bytes
    media_type: str
    config: bytes
    layer: bytes

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)


def push_image(
    registry: RegistryClient, repo: str, reference: str | None, *, media_type: str = OCI_MANIFEST
) -> Image:
    """Push a config, one layer and their manifest (by `reference`, or by its digest)."""
    config = canonical({"architecture": "amd64", "os": "linux", "nonce": uuid.uuid4().hex})
    layer = os.urandom(300)
    registry.push_blob(repo, config)
    registry.push_blob(repo, layer)
    image = Image(image_manifest(config, [layer], media_type=media_type), media_type, config, layer)
    answer = registry.put_manifest(repo, reference or image.digest, image.manifest, media_type)
    assert answer.status == 201, answer
    return image


def assert_error(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, answer
    assert (answer.header("Content-Type") or "").startswith("application/json"), answer
    assert answer.error_code == code, answer


def upload_uuid(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


# The base route


def test_base_answers_200_with_the_api_version(registry: RegistryClient) -> None:
    answer = registry.get("/v2/")
    assert answer.status == 200
    assert answer.header("Docker-Distribution-API-Version") == "registry/2.0"
    assert answer.json() == {}


def test_unknown_path_is_404(registry: RegistryClient) -> None:
    answer = registry.get("/v2/some/repo/widgets/list")
    assert_error(answer, 404, "NOT_FOUND")
    assert answer.header("Docker-Distribution-API-Version") == "registry/2.0"


def test_path_outside_v2_is_404(registry: RegistryClient) -> None:
    assert_error(registry.get("/v1/_ping"), 404, "NOT_FOUND")


# Blobs


def test_blob_head_gives_length_and_digest_without_body(
    registry: RegistryClient, repo: str
) -> None:
    data = os.urandom(1000)
    digest = registry.push_blob(repo, data)
    answer = registry.head(f"/v2/{repo}/blobs/{digest}")
    assert answer.status == 200
    assert answer.header("Content-Length") == "1000"
    assert answer.header("Docker-Content-Digest") == digest
    assert answer.body == b""


def test_blob_get_returns_its_bytes(registry: RegistryClient, repo: str) -> None:
    data = os.urandom(5000)
    digest = registry.push_blob(repo, data)
    answer = registry.get(f"/v2/{repo}/blobs/{digest}")
    assert answer.status == 200
    assert answer.header("Content-Length") == "5000"
    assert answer.header("Docker-Content-Digest") == digest
    assert answer.body == data


@pytest.mark.parametrize(
    ("range_header", "start", "stop"),
    [("bytes=10-19", 10, 20), ("bytes=900-", 900, 1000), ("bytes=-50", 950, 1000)],
    ids=["first-last", "open-ended", "suffix"],
)
def test_blob_range_request_is_206_with_content_range(
    registry: RegistryClient, repo: str, range_header: str, start: int, stop: int
) -> None:
    data = os.urandom(1000)
    digest = registry.push_blob(repo, data)
    answer = registry.get(f"/v2/{repo}/blobs/{digest}", {"Range": range_header})
    assert answer.status == 206, answer
    assert answer.header("Content-Range") == f"bytes {start}-{stop - 1}/1000"
    assert answer.header("Content-Length") == str(stop - start)
    assert answer.body == data[start:stop]


@pytest.mark.parametrize("range_header", ["bytes=1000-", "bytes=2000-2999"])
def test_blob_range_beyond_the_end_is_416(
    registry: RegistryClient, repo: str, range_header: str
) -> None:
    digest = registry.push_blob(repo, os.urandom(1000))
    answer = registry.get(f"/v2/{repo}/blobs/{digest}", {"Range": range_header})
    assert_error(answer, 416, "UNSUPPORTED")
    assert answer.json()["errors"][0]["detail"]["reason"] == "RANGE_NOT_SATISFIABLE"
    assert answer.header("Content-Range") == "bytes */1000"


def test_blob_suffix_range_of_zero_bytes_is_416(registry: RegistryClient, repo: str) -> None:
    # RFC 9110 14.1.1: a suffix range of length zero is unsatisfiable.
    digest = registry.push_blob(repo, os.urandom(1000))
    answer = registry.get(f"/v2/{repo}/blobs/{digest}", {"Range": "bytes=-0"})
    assert_error(answer, 416, "UNSUPPORTED")
    assert answer.header("Content-Range") == "bytes */1000"


def test_if_range_naming_the_blob_serves_the_range(registry: RegistryClient, repo: str) -> None:
    data = os.urandom(1000)
    digest = registry.push_blob(repo, data)
    for validator in (f'"{digest}"', digest):
        headers = {"Range": "bytes=10-19", "If-Range": validator}
        answer = registry.get(f"/v2/{repo}/blobs/{digest}", headers)
        assert answer.status == 206, answer
        assert answer.body == data[10:20]


@pytest.mark.parametrize(
    "validator",
    ['"sha256:' + "0" * 64 + '"', 'W/"{digest}"', "Wed, 21 Oct 2015 07:28:00 GMT"],
    ids=["other-etag", "weak-etag", "date"],
)
def test_if_range_not_naming_the_blob_serves_the_whole_blob(
    registry: RegistryClient, repo: str, validator: str
) -> None:
    # RFC 9110 13.1.5: a validator that does not match makes the server ignore Range;
    # If-Range compares strongly, and this server sends no Last-Modified a date could match.
    data = os.urandom(1000)
    digest = registry.push_blob(repo, data)
    headers = {"Range": "bytes=10-19", "If-Range": validator.format(digest=digest)}
    answer = registry.get(f"/v2/{repo}/blobs/{digest}", headers)
    assert answer.status == 200, answer
    assert answer.header("Content-Range") is None
    assert answer.header("Content-Length") == "1000"
    assert answer.body == data


@pytest.mark.parametrize("range_header", ["bytes=10-19", "bytes=5000-"], ids=["inside", "beyond"])
def test_blob_head_with_a_range_answers_as_without_one(
    registry: RegistryClient, repo: str, range_header: str
) -> None:
    digest = registry.push_blob(repo, os.urandom(1000))
    answer = registry.head(f"/v2/{repo}/blobs/{digest}", {"Range": range_header})
    assert answer.status == 200, answer
    assert answer.header("Content-Length") == "1000"
    assert answer.header("Content-Range") is None


def test_missing_blob_get_is_404_blob_unknown(registry: RegistryClient, repo: str) -> None:
    digest = digest_of(os.urandom(10))
    registry.push_blob(repo, os.urandom(10))  # the repository exists; the blob does not
    answer = registry.get(f"/v2/{repo}/blobs/{digest}")
    assert_error(answer, 404, "BLOB_UNKNOWN")
    assert answer.json()["errors"][0]["detail"]["metadata"]["digest"] == digest


def test_missing_blob_head_is_404_without_body(registry: RegistryClient, repo: str) -> None:
    digest = digest_of(os.urandom(10))
    answer = registry.head(f"/v2/{repo}/blobs/{digest}")
    assert answer.status == 404
    raw = registry.raw(
        f"HEAD /v2/{repo}/blobs/{digest} HTTP/1.1\r\n"
        f"Host: {registry.host}\r\nConnection: close\r\n\r\n".encode()
    )
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 "), raw
    assert rest == b""


@pytest.mark.parametrize(
    "digest",
    ["sha256:abc", "sha256:" + "g" * 64, "nodigest", "sha256:" + "A" * 64, "md5:" + "0" * 32],
)
def test_malformed_blob_digest_is_400_digest_invalid(
    registry: RegistryClient, repo: str, digest: str
) -> None:
    assert_error(registry.get(f"/v2/{repo}/blobs/{digest}"), 400, "DIGEST_INVALID")


def test_blob_of_another_repository_is_404_blob_unknown(registry: RegistryClient) -> None:
    owner, other = f"tests/{uuid.uuid4().hex[:12]}", f"tests/{uuid.uuid4().hex[:12]}"
    digest = registry.push_blob(owner, os.urandom(100))
    registry.push_blob(other, os.urandom(100))
    assert_error(registry.get(f"/v2/{other}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert registry.head(f"/v2/{other}/blobs/{digest}").status == 404


def test_blob_delete_is_202_then_404(registry: RegistryClient, repo: str) -> None:
    digest = registry.push_blob(repo, os.urandom(100))
    answer = registry.delete(f"/v2/{repo}/blobs/{digest}")
    assert answer.status == 202, answer
    assert_error(registry.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert_error(registry.delete(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


# Uploads


def test_upload_start_is_202_with_location_uuid_and_empty_range(
    registry: RegistryClient, repo: str
) -> None:
    answer = registry.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert answer.status == 202, answer
    location = answer.header("Location")
    assert location is not None
    assert location.startswith(f"/v2/{repo}/blobs/uploads/")
    assert answer.header("Docker-Upload-UUID") == upload_uuid(location)
    assert answer.header("Range") == "0-0"
    assert answer.header("Content-Length") == "0"


def test_upload_in_three_ordered_chunks_completes_201(registry: RegistryClient, repo: str) -> None:
    data = os.urandom(2500)
    location = registry.start_upload(repo)
    for start, stop in ((0, 1000), (1000, 2000), (2000, 2500)):
        answer = registry.patch_chunk(location, data[start:stop], start)
        assert answer.status == 202, answer
        assert answer.header("Range") == f"0-{stop - 1}"
        assert answer.header("Docker-Upload-UUID") == upload_uuid(location)
        location = answer.header("Location") or ""
    digest = digest_of(data)
    answer = registry.complete_upload(location, digest)
    assert answer.status == 201, answer
    assert answer.header("Location") == f"/v2/{repo}/blobs/{digest}"
    assert answer.header("Docker-Content-Digest") == digest
    assert registry.get(f"/v2/{repo}/blobs/{digest}").body == data


def test_upload_patch_without_content_range_streams(registry: RegistryClient, repo: str) -> None:
    pieces = [os.urandom(70_000), os.urandom(1), os.urandom(30_000)]
    data = b"".join(pieces)
    location = registry.start_upload(repo)
    answer = registry.request("PATCH", location, iter(pieces), {"Content-Type": OCTET_STREAM})
    assert answer.status == 202, answer
    assert answer.header("Range") == f"0-{len(data) - 1}"
    digest = digest_of(data)
    assert registry.complete_upload(location, digest).status == 201
    assert registry.get(f"/v2/{repo}/blobs/{digest}").body == data


def test_out_of_order_chunk_is_416_with_the_current_range(
    registry: RegistryClient, repo: str
) -> None:
    data = os.urandom(3000)
    location = registry.start_upload(repo)
    assert registry.patch_chunk(location, data[:1000], 0).status == 202
    answer = registry.patch_chunk(location, data[2000:], 2000)
    assert_error(answer, 416, "BLOB_UPLOAD_INVALID")
    assert answer.json()["errors"][0]["detail"]["reason"] == "RANGE_INVALID"
    assert answer.header("Range") == "0-999"
    assert answer.header("Location") == location
    assert registry.get(location).header("Range") == "0-999"


def test_upload_goes_on_from_its_range_after_a_refused_chunk(
    registry: RegistryClient, repo: str
) -> None:
    data = os.urandom(3000)
    location = registry.start_upload(repo)
    registry.patch_chunk(location, data[:1000], 0)
    assert registry.patch_chunk(location, data[1500:], 1500).status == 416
    assert registry.patch_chunk(location, data[1000:], 1000).status == 202
    assert registry.complete_upload(location, digest_of(data)).status == 201
    assert registry.get(f"/v2/{repo}/blobs/{digest_of(data)}").body == data


def test_final_chunk_out_of_order_in_the_put_is_416_and_keeps_the_upload(
    registry: RegistryClient, repo: str
) -> None:
    data = os.urandom(2000)
    location = registry.start_upload(repo)
    registry.patch_chunk(location, data[:1000], 0)
    answer = registry.request(
        "PUT",
        f"{location}?digest={digest_of(data)}",
        data[1000:],
        {"Content-Range": "1500-2499", "Content-Type": OCTET_STREAM},
    )
    assert_error(answer, 416, "BLOB_UPLOAD_INVALID")
    assert answer.header("Range") == "0-999"
    assert registry.get(location).header("Range") == "0-999"


def test_chunk_longer_than_its_content_range_is_400_size_invalid(
    registry: RegistryClient, repo: str
) -> None:
    location = registry.start_upload(repo)
    answer = registry.request(
        "PATCH", location, os.urandom(50), {"Content-Range": "0-99", "Content-Type": OCTET_STREAM}
    )
    assert_error(answer, 400, "SIZE_INVALID")


def test_upload_status_is_204_with_range(registry: RegistryClient, repo: str) -> None:
    location = registry.start_upload(repo)
    registry.patch_chunk(location, os.urandom(1234), 0)
    answer = registry.get(location)
    assert answer.status == 204, answer
    assert answer.header("Range") == "0-1233"
    assert answer.header("Location") == location
    assert answer.header("Docker-Upload-UUID") == upload_uuid(location)
    assert answer.body == b""


def test_upload_completes_with_the_final_chunk_in_the_put(
    registry: RegistryClient, repo: str
) -> None:
    data = os.urandom(2500)
    location = registry.start_upload(repo)
    assert registry.patch_chunk(location, data[:1000], 0).status == 202
    digest = digest_of(data)
    answer = registry.complete_upload(location, digest, data[1000:])
    assert answer.status == 201, answer
    assert answer.header("Docker-Content-Digest") == digest
    assert registry.get(f"/v2/{repo}/blobs/{digest}").body == data


def test_completed_upload_is_gone(registry: RegistryClient, repo: str) -> None:
    location = registry.start_upload(repo)
    data = os.urandom(100)
    assert registry.complete_upload(location, digest_of(data), data).status == 201
    assert_error(registry.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(registry.patch_chunk(location, b"more", 100), 404, "BLOB_UPLOAD_UNKNOWN")


def test_upload_completed_with_a_wrong_digest_is_400_and_gone(
    registry: RegistryClient, repo: str
) -> None:
    location = registry.start_upload(repo)
    registry.patch_chunk(location, os.urandom(1000), 0)
    wrong = digest_of(b"something else")
    assert_error(registry.complete_upload(location, wrong), 400, "DIGEST_INVALID")
    assert_error(registry.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert registry.head(f"/v2/{repo}/blobs/{wrong}").status == 404


def test_upload_completed_without_digest_is_400_digest_invalid(
    registry: RegistryClient, repo: str
) -> None:
    location = registry.start_upload(repo)
    registry.patch_chunk(location, os.urandom(100), 0)
    answer = registry.request("PUT", location, b"", {"Content-Type": OCTET_STREAM})
    assert_error(answer, 400, "DIGEST_INVALID")


def test_upload_delete_is_204_then_404_upload_unknown(registry: RegistryClient, repo: str) -> None:
    location = registry.start_upload(repo)
    registry.patch_chunk(location, os.urandom(100), 0)
    answer = registry.delete(location)
    assert answer.status == 204, answer
    assert_error(registry.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(registry.patch_chunk(location, b"more", 100), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(registry.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize("session", [str(uuid.UUID(int=7)), "not-a-session", ".."])
@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
def test_unknown_upload_is_404_upload_unknown(
    registry: RegistryClient, repo: str, session: str, method: str
) -> None:
    query = f"?digest={digest_of(b'x')}" if method == "PUT" else ""
    body = b"x" if method in ("PATCH", "PUT") else b""
    answer = registry.request(method, f"/v2/{repo}/blobs/uploads/{session}{query}", body)
    assert_error(answer, 404, "BLOB_UPLOAD_UNKNOWN")


def test_upload_of_another_repository_is_404_upload_unknown(registry: RegistryClient) -> None:
    owner, other = f"tests/{uuid.uuid4().hex[:12]}", f"tests/{uuid.uuid4().hex[:12]}"
    location = registry.start_upload(owner)
    registry.patch_chunk(location, os.urandom(100), 0)
    answer = registry.get(f"/v2/{other}/blobs/uploads/{upload_uuid(location)}")
    assert_error(answer, 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize("size", [1000, LARGE], ids=["small", "large"])
def test_monolithic_post_with_digest_is_201(registry: RegistryClient, repo: str, size: int) -> None:
    data = os.urandom(size)
    digest = digest_of(data)
    answer = registry.request(
        "POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data, {"Content-Type": OCTET_STREAM}
    )
    assert answer.status == 201, answer
    assert answer.header("Location") == f"/v2/{repo}/blobs/{digest}"
    assert answer.header("Docker-Content-Digest") == digest
    assert registry.get(f"/v2/{repo}/blobs/{digest}").body == data


@pytest.mark.parametrize("size", [1000, LARGE], ids=["small", "large"])
def test_monolithic_post_with_a_wrong_digest_is_400(
    registry: RegistryClient, repo: str, size: int
) -> None:
    wrong = digest_of(os.urandom(10))
    answer = registry.request(
        "POST",
        f"/v2/{repo}/blobs/uploads/?digest={wrong}",
        os.urandom(size),
        {"Content-Type": OCTET_STREAM},
    )
    assert_error(answer, 400, "DIGEST_INVALID")
    assert registry.head(f"/v2/{repo}/blobs/{wrong}").status == 404


@pytest.mark.parametrize("size", [1000, LARGE], ids=["small", "large"])
def test_monolithic_post_of_stored_bytes_under_another_digest_is_400_and_links_nothing(
    registry: RegistryClient, daemon: DaemonProcess, repo: str, size: int
) -> None:
    # The bytes are stored under their own digest already; they must not be taken
    # for content of another digest, nor that digest linked into the repository.
    data = os.urandom(size)
    registry.push_blob(repo, data)
    wrong = digest_of(os.urandom(10))
    answer = registry.request(
        "POST", f"/v2/{repo}/blobs/uploads/?digest={wrong}", data, {"Content-Type": OCTET_STREAM}
    )
    assert_error(answer, 400, "DIGEST_INVALID")
    assert registry.head(f"/v2/{repo}/blobs/{wrong}").status == 404
    with RemoteStore(daemon.address, namespace=NAMESPACE) as store, pytest.raises(NotFound):
        store.info(wrong)


@pytest.mark.parametrize("size", [1000, LARGE], ids=["small", "large"])
def test_pushing_a_blob_already_stored_is_201_in_both_repositories(
    registry: RegistryClient, repo: str, size: int
) -> None:
    data = os.urandom(size)
    first = f"tests/{uuid.uuid4().hex[:12]}"
    digest = registry.push_blob(first, data)
    assert registry.push_blob(repo, data) == digest
    for name in (first, repo):
        assert registry.get(f"/v2/{name}/blobs/{digest}").body == data


def test_chunked_upload_of_a_blob_already_stored_is_201(
    registry: RegistryClient, repo: str
) -> None:
    data = os.urandom(2000)
    digest = registry.push_blob(f"tests/{uuid.uuid4().hex[:12]}", data)
    location = registry.start_upload(repo)
    registry.patch_chunk(location, data, 0)
    answer = registry.complete_upload(location, digest)
    assert answer.status == 201, answer
    assert answer.header("Docker-Content-Digest") == digest
    assert registry.get(f"/v2/{repo}/blobs/{digest}").body == data


@pytest.mark.parametrize("size", [1000, LARGE], ids=["small", "large"])
def test_blob_pushed_under_a_sha512_digest_is_served_under_it(
    registry: RegistryClient, repo: str, size: int
) -> None:
    data = os.urandom(size)
    digest = f"sha512:{hashlib.sha512(data).hexdigest()}"
    answer = registry.request(
        "POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data, {"Content-Type": OCTET_STREAM}
    )
    assert answer.status == 201, answer
    assert answer.header("Docker-Content-Digest") == digest
    fetched = registry.get(f"/v2/{repo}/blobs/{digest}")
    assert fetched.header("Docker-Content-Digest") == digest
    assert fetched.body == data


def test_mount_from_a_repository_holding_the_blob_is_201(
    registry: RegistryClient, repo: str
) -> None:
    source = f"tests/{uuid.uuid4().hex[:12]}"
    data = os.urandom(500)
    digest = registry.push_blob(source, data)
    answer = registry.request("POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={source}")
    assert answer.status == 201, answer
    assert answer.header("Location") == f"/v2/{repo}/blobs/{digest}"
    assert answer.header("Docker-Content-Digest") == digest
    assert registry.get(f"/v2/{repo}/blobs/{digest}").body == data


def test_mount_from_a_repository_without_the_blob_starts_an_upload(
    registry: RegistryClient, repo: str
) -> None:
    source = f"tests/{uuid.uuid4().hex[:12]}"
    registry.push_blob(source, os.urandom(10))
    digest = digest_of(os.urandom(500))
    answer = registry.request("POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={source}")
    assert answer.status == 202, answer
    location = answer.header("Location")
    assert location is not None
    assert location.startswith(f"/v2/{repo}/blobs/uploads/")
    assert answer.header("Docker-Upload-UUID") == upload_uuid(location)
    assert registry.get(location).status == 204
    assert registry.head(f"/v2/{repo}/blobs/{digest}").status == 404


@pytest.mark.parametrize(
    "query",
    ["mount=sha256:zz&from={source}", "mount={digest}&from=Not..A..Name"],
    ids=["malformed-digest", "invalid-source"],
)
def test_mount_with_unusable_arguments_falls_back_to_an_upload(
    registry: RegistryClient, repo: str, query: str
) -> None:
    # The spec: a registry unable to mount SHOULD answer 202 and start an upload;
    # docker distribution 2.8 ignores mount arguments it cannot parse and does so.
    source = f"tests/{uuid.uuid4().hex[:12]}"
    digest = registry.push_blob(source, os.urandom(10))
    url = f"/v2/{repo}/blobs/uploads/?" + query.format(source=source, digest=digest)
    answer = registry.request("POST", url)
    assert answer.status == 202, answer
    assert (answer.header("Location") or "").startswith(f"/v2/{repo}/blobs/uploads/")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_upload_survives_a_daemon_restart(tmp_path: Path, how: signal.Signals) -> None:
    data = os.urandom(200_000)
    half = len(data) // 2
    first = start_daemon(tmp_path, "--http", "127.0.0.1:0")
    try:
        location = client_for(first).start_upload("restart/me")
        assert client_for(first).patch_chunk(location, data[:half], 0).status == 202
    finally:
        first.stop(how)
    second = start_daemon(tmp_path, "--http", "127.0.0.1:0")
    try:
        registry = client_for(second)
        status = registry.get(location)
        assert status.status == 204, status
        assert status.header("Range") == f"0-{half - 1}"
        answer = registry.patch_chunk(location, data[half:], half)
        assert answer.status == 202, answer
        digest = digest_of(data)
        assert registry.complete_upload(location, digest).status == 201
        assert registry.get(f"/v2/restart/me/blobs/{digest}").body == data
    finally:
        second.stop()


def test_uploads_untouched_past_their_ttl_are_aborted(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, "--http", "127.0.0.1:0", "--http-upload-ttl", "1.5")
    try:
        registry = client_for(daemon)
        abandoned = registry.start_upload("ttl/abandoned")
        assert registry.patch_chunk(abandoned, os.urandom(1000), 0).status == 202
        busy = registry.start_upload("ttl/busy")
        with RemoteStore(daemon.address, namespace="default") as store:
            with store.writer("not-an-upload") as writer:
                writer.write(b"an ingest of another client")
            offset = 0
            deadline = time.monotonic() + 30
            # The busy upload gets a byte every 0.3 s meanwhile: it is not abandoned.
            while registry.get(abandoned).status != 404:
                assert time.monotonic() < deadline, daemon.logged()
                assert registry.patch_chunk(busy, b"b", offset).status == 202
                offset += 1
                time.sleep(0.3)
            assert_error(registry.patch_chunk(abandoned, b"more", 1000), 404, "BLOB_UPLOAD_UNKNOWN")
            assert registry.get(busy).header("Range") == f"0-{offset - 1}"
            refs = {status.ref for status in store.list_statuses()}
        assert "not-an-upload" in refs
        assert not [ref for ref in refs if ref.endswith(upload_uuid(abandoned))]
        assert [ref for ref in refs if ref.endswith(upload_uuid(busy))]
        assert f"aborted upload registry-upload/ttl/abandoned/{upload_uuid(abandoned)}" in (
            daemon.logged()
        )
    finally:
        daemon.stop()


def test_a_request_the_parser_refuses_is_400_and_one_log_line(
    registry: RegistryClient, daemon: DaemonProcess
) -> None:
    logged_before = len(daemon.log)
    answer = registry.get("/v2/" + "a" * 10_000 + "/tags/list")
    assert answer.status == 400, answer
    deadline = time.monotonic() + 10
    while not any("refused a malformed request" in line for line in daemon.log[logged_before:]):
        assert time.monotonic() < deadline, daemon.logged()
        time.sleep(0.05)
    new = daemon.log[logged_before:]
    assert not [line for line in new if "Traceback" in line or " ERROR " in line], new


def test_a_body_that_fails_to_decode_is_400_blob_upload_invalid(
    registry: RegistryClient, daemon: DaemonProcess, repo: str
) -> None:
    location = registry.start_upload(repo)
    logged_before = len(daemon.log)
    headers = {"Content-Encoding": "gzip", "Content-Type": OCTET_STREAM}
    answer = registry.request("PATCH", location, b"not gzip at all" * 10, headers)
    assert_error(answer, 400, "BLOB_UPLOAD_INVALID")
    time.sleep(0.3)  # aiohttp drains, and logs, the rest of the body after answering
    new = daemon.log[logged_before:]
    assert not [line for line in new if "Traceback" in line or " ERROR " in line], new


def test_a_collection_keeps_what_manifests_name_and_frees_what_repositories_dropped(
    tmp_path: Path,
) -> None:
    daemon = start_daemon(tmp_path, "--http", "127.0.0.1:0")
    try:
        registry = client_for(daemon)
        tagged = push_image(registry, "gc/app", "v1")
        untagged = push_image(registry, "gc/app", None)
        # Taken out of the repository, but its tagged manifest still names it.
        layer = digest_of(tagged.layer)
        assert registry.delete(f"/v2/gc/app/blobs/{layer}").status == 202
        dropped = registry.push_blob("gc/app", os.urandom(100))
        assert registry.delete(f"/v2/gc/app/blobs/{dropped}").status == 202
        with RemoteStore(daemon.address, namespace="default") as store:
            labels = dict(store.info(tagged.digest).labels)
            assert labels == {
                "containerd.io/gc.ref.content.config": digest_of(tagged.config),
                "containerd.io/gc.ref.content.l.0": layer,
            }
            report = store.collect()
            assert (report.content, report.blobs) == (1, 1)
            with pytest.raises(NotFound):
                store.info(dropped)
            for kept in (tagged.digest, layer, untagged.digest, digest_of(untagged.layer)):
                assert store.info(kept).size > 0
        assert registry.get("/v2/gc/app/manifests/v1").body == tagged.manifest
    finally:
        daemon.stop()


# The same store over gRPC


def test_blob_pushed_over_http_is_a_store_blob_over_grpc(
    registry: RegistryClient, daemon: DaemonProcess, repo: str
) -> None:
    data = os.urandom(4096)
    digest = registry.push_blob(repo, data)
    with RemoteStore(daemon.address, namespace=NAMESPACE) as store:
        assert store.info(digest).size == len(data)
        with store.reader_at(digest) as reader:
            assert reader.read() == data


def test_blob_pushed_over_http_is_not_in_other_namespaces(
    registry: RegistryClient, daemon: DaemonProcess, repo: str
) -> None:
    digest = registry.push_blob(repo, os.urandom(64))
    with RemoteStore(daemon.address, namespace="default") as store, pytest.raises(NotFound):
        store.info(digest)


def test_upload_in_progress_is_an_ingest_over_grpc(
    registry: RegistryClient, daemon: DaemonProcess, repo: str
) -> None:
    location = registry.start_upload(repo)
    registry.patch_chunk(location, os.urandom(777), 0)
    session = upload_uuid(location)
    with RemoteStore(daemon.address, namespace=NAMESPACE) as store:
        ingests = [s for s in store.list_statuses() if s.ref.endswith(session)]
    assert len(ingests) == 1, ingests
    assert repo in ingests[0].ref
    assert ingests[0].offset == 777


# Manifests


def test_manifest_put_by_tag_is_201_with_location_and_digest(
    registry: RegistryClient, repo: str
) -> None:
    config, layer = os.urandom(50), os.urandom(300)
    registry.push_blob(repo, config)
    registry.push_blob(repo, layer)
    body = image_manifest(config, [layer])
    answer = registry.put_manifest(repo, "v1", body, OCI_MANIFEST)
    assert answer.status == 201, answer
    assert answer.header("Location") == f"/v2/{repo}/manifests/{digest_of(body)}"
    assert answer.header("Docker-Content-Digest") == digest_of(body)


def test_manifest_put_by_digest_is_201(registry: RegistryClient, repo: str) -> None:
    image = push_image(registry, repo, None)
    assert registry.get(f"/v2/{repo}/manifests/{image.digest}").body == image.manifest


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_manifest_get_returns_the_pushed_bytes_and_type(
    registry: RegistryClient, repo: str, by: str
) -> None:
    image = push_image(registry, repo, "latest")
    reference = "latest" if by == "tag" else image.digest
    answer = registry.get(f"/v2/{repo}/manifests/{reference}", {"Accept": OCI_MANIFEST})
    assert answer.status == 200, answer
    assert answer.body == image.manifest
    assert answer.header("Content-Type") == OCI_MANIFEST
    assert answer.header("Docker-Content-Digest") == image.digest


def test_manifest_head_gives_length_type_and_digest(registry: RegistryClient, repo: str) -> None:
    image = push_image(registry, repo, "latest")
    answer = registry.head(f"/v2/{repo}/manifests/latest")
    assert answer.status == 200, answer
    assert answer.header("Content-Length") == str(len(image.manifest))
    assert answer.header("Content-Type") == OCI_MANIFEST
    assert answer.header("Docker-Content-Digest") == image.digest


def test_docker_v2_manifest_keeps_its_media_type(registry: RegistryClient, repo: str) -> None:
    image = push_image(registry, repo, "docker", media_type=DOCKER_MANIFEST)
    answer = registry.get(f"/v2/{repo}/manifests/docker", {"Accept": DOCKER_MANIFEST})
    assert answer.status == 200, answer
    assert answer.header("Content-Type") == DOCKER_MANIFEST
    assert answer.body == image.manifest


@pytest.mark.parametrize(
    ("index_type", "manifest_type"),
    [(OCI_INDEX, OCI_MANIFEST), (DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)],
    ids=["oci-index", "docker-list"],
)
def test_index_of_pushed_manifests_is_201(
    registry: RegistryClient, repo: str, index_type: str, manifest_type: str
) -> None:
    images = [push_image(registry, repo, None, media_type=manifest_type) for _ in range(2)]
    body = index_of([(manifest_type, i.manifest) for i in images], media_type=index_type)
    answer = registry.put_manifest(repo, "multi", body, index_type)
    assert answer.status == 201, answer
    assert answer.header("Docker-Content-Digest") == digest_of(body)
    fetched = registry.get(f"/v2/{repo}/manifests/multi", {"Accept": index_type})
    assert fetched.header("Content-Type") == index_type
    assert fetched.body == body


def test_tag_points_at_the_manifest_last_pushed_to_it(registry: RegistryClient, repo: str) -> None:
    push_image(registry, repo, "moving")
    second = push_image(registry, repo, "moving")
    answer = registry.get(f"/v2/{repo}/manifests/moving")
    assert answer.header("Docker-Content-Digest") == second.digest
    assert answer.body == second.manifest


def test_manifest_content_type_parameters_are_ignored(registry: RegistryClient, repo: str) -> None:
    image = push_image(registry, repo, None)
    answer = registry.put_manifest(repo, "v1", image.manifest, f"{OCI_MANIFEST}; charset=utf-8")
    assert answer.status == 201, answer
    assert registry.get(f"/v2/{repo}/manifests/v1").header("Content-Type") == OCI_MANIFEST


def test_manifest_without_content_type_is_typed_by_its_media_type_field(
    registry: RegistryClient, repo: str
) -> None:
    image = push_image(registry, repo, None, media_type=DOCKER_MANIFEST)
    answer = registry.request("PUT", f"/v2/{repo}/manifests/untyped", image.manifest)
    assert answer.status == 201, answer
    assert registry.get(f"/v2/{repo}/manifests/untyped").header("Content-Type") == DOCKER_MANIFEST


def test_manifest_is_also_served_as_a_blob(registry: RegistryClient, repo: str) -> None:
    image = push_image(registry, repo, "latest")
    answer = registry.get(f"/v2/{repo}/blobs/{image.digest}")
    assert answer.status == 200, answer
    assert answer.body == image.manifest


@pytest.mark.parametrize("missing", ["layer", "config"])
def test_manifest_naming_a_missing_blob_is_400_manifest_blob_unknown(
    registry: RegistryClient, repo: str, missing: str
) -> None:
    config, layer = os.urandom(50), os.urandom(300)
    registry.push_blob(repo, layer if missing == "config" else config)
    answer = registry.put_manifest(repo, "v1", image_manifest(config, [layer]), OCI_MANIFEST)
    assert_error(answer, 400, "MANIFEST_BLOB_UNKNOWN")
    absent = digest_of(layer if missing == "layer" else config)
    assert answer.json()["errors"][0]["detail"]["metadata"]["digest"] == absent
    assert_error(registry.get(f"/v2/{repo}/manifests/v1"), 404, "MANIFEST_UNKNOWN")


def test_manifest_naming_a_blob_of_another_repository_is_400(
    registry: RegistryClient, repo: str
) -> None:
    elsewhere = f"tests/{uuid.uuid4().hex[:12]}"
    config, layer = os.urandom(50), os.urandom(300)
    registry.push_blob(repo, config)
    registry.push_blob(elsewhere, layer)
    answer = registry.put_manifest(repo, "v1", image_manifest(config, [layer]), OCI_MANIFEST)
    assert_error(answer, 400, "MANIFEST_BLOB_UNKNOWN")


def test_index_naming_a_missing_manifest_is_400_manifest_blob_unknown(
    registry: RegistryClient, repo: str
) -> None:
    pushed = push_image(registry, repo, None)
    never_pushed = image_manifest(os.urandom(10), [os.urandom(10)])
    body = index_of([(OCI_MANIFEST, pushed.manifest), (OCI_MANIFEST, never_pushed)])
    answer = registry.put_manifest(repo, "multi", body, OCI_INDEX)
    assert_error(answer, 400, "MANIFEST_BLOB_UNKNOWN")


def _schema1() -> bytes:
    return canonical({"schemaVersion": 1, "name": "x", "tag": "v1", "fsLayers": []})


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", OCI_MANIFEST),
        (b"[]", OCI_MANIFEST),
        (_schema1(), "application/vnd.docker.distribution.manifest.v1+json"),
        (_schema1(), OCI_MANIFEST),
        ("mismatch", DOCKER_MANIFEST),
        (canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}), OCI_MANIFEST),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "schema1",
        "schema1-as-oci",
        "media-type-mismatch",
        "no-config",
    ],
)
def test_invalid_manifest_is_400_manifest_invalid(
    registry: RegistryClient, repo: str, body: bytes | str, content_type: str
) -> None:
    if body == "mismatch":
        config = os.urandom(50)
        registry.push_blob(repo, config)
        body = image_manifest(config, [], media_type=OCI_MANIFEST)
    assert isinstance(body, bytes)
    answer = registry.put_manifest(repo, "bad", body, content_type)
    assert_error(answer, 400, "MANIFEST_INVALID")


def test_manifest_put_by_a_digest_of_other_bytes_is_400_digest_invalid(
    registry: RegistryClient, repo: str
) -> None:
    config = os.urandom(50)
    registry.push_blob(repo, config)
    body = image_manifest(config, [])
    other = digest_of(body + b" ")
    answer = registry.put_manifest(repo, other, body, OCI_MANIFEST)
    assert_error(answer, 400, "DIGEST_INVALID")
    assert_error(registry.get(f"/v2/{repo}/manifests/{other}"), 404, "MANIFEST_UNKNOWN")


def test_manifest_over_the_size_limit_is_413(registry: RegistryClient, repo: str) -> None:
    # The spec: a registry enforcing a manifest size limit SHOULD answer 413 Payload Too Large.
    config = os.urandom(50)
    registry.push_blob(repo, config)
    document = json.loads(image_manifest(config, []))
    document["annotations"] = {"padding": "x" * (5 << 20)}
    answer = registry.put_manifest(repo, "huge", canonical(document), OCI_MANIFEST)
    assert answer.status == 413, answer


def test_a_referrer_is_listed_by_the_referrers_api_of_its_subject(
    registry: RegistryClient, repo: str
) -> None:
    # OCI-Subject tells the client the registry processed the subject, so it
    # does not maintain the referrers tag itself: the referrers API must list it.
    subject = push_image(registry, repo, "base")
    document = json.loads(image_manifest(subject.config, []))
    document["artifactType"] = "application/vnd.example.signature"
    document["annotations"] = {"org.example.signed-by": "ci"}
    document["subject"] = descriptor(OCI_MANIFEST, subject.manifest)
    body = canonical(document)
    answer = registry.put_manifest(repo, digest_of(body), body, OCI_MANIFEST)
    assert answer.status == 201, answer
    assert answer.header("OCI-Subject") == subject.digest
    referrers = registry.get(f"/v2/{repo}/referrers/{subject.digest}")
    assert referrers.status == 200, referrers
    # The spec: exactly this media type, no parameters.
    assert referrers.header("Content-Type") == "application/vnd.oci.image.index.v1+json"
    assert referrers.json()["manifests"] == [
        {
            "mediaType": OCI_MANIFEST,
            "digest": digest_of(body),
            "size": len(body),
            "artifactType": "application/vnd.example.signature",
            "annotations": {"org.example.signed-by": "ci"},
        }
    ]
    filtered = registry.get(
        f"/v2/{repo}/referrers/{subject.digest}?artifactType=application/vnd.example.sbom"
    )
    assert filtered.json()["manifests"] == []
    assert filtered.header("OCI-Filters-Applied") == "artifactType"
    # Deleting the referrer takes it off the list.
    assert registry.delete(f"/v2/{repo}/manifests/{digest_of(body)}").status == 202
    assert registry.get(f"/v2/{repo}/referrers/{subject.digest}").json()["manifests"] == []


@pytest.mark.parametrize(
    "reference",
    ["nosuchtag", digest_of(b"no such manifest"), ".INVALID_MANIFEST_NAME", "-dash", "a" * 129],
    ids=["tag", "digest", "invalid-tag", "leading-dash", "129-chars"],
)
def test_unknown_manifest_is_404_manifest_unknown(
    registry: RegistryClient, repo: str, reference: str
) -> None:
    push_image(registry, repo, "present")
    assert_error(registry.get(f"/v2/{repo}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")
    assert registry.head(f"/v2/{repo}/manifests/{reference}").status == 404


@pytest.mark.parametrize("tag", [".INVALID_MANIFEST_NAME", "a" * 129], ids=["dot", "129-chars"])
def test_manifest_put_under_an_invalid_tag_is_400_manifest_invalid(
    registry: RegistryClient, repo: str, tag: str
) -> None:
    image = push_image(registry, repo, "valid")
    answer = registry.put_manifest(repo, tag, image.manifest, OCI_MANIFEST)
    assert_error(answer, 400, "MANIFEST_INVALID")


def test_manifest_delete_by_digest_is_202_and_removes_its_tags(
    registry: RegistryClient, repo: str
) -> None:
    image = push_image(registry, repo, "one")
    registry.put_manifest(repo, "two", image.manifest, OCI_MANIFEST)
    push_image(registry, repo, "kept")
    answer = registry.delete(f"/v2/{repo}/manifests/{image.digest}")
    assert answer.status == 202, answer
    assert_error(registry.get(f"/v2/{repo}/manifests/{image.digest}"), 404, "MANIFEST_UNKNOWN")
    assert_error(registry.get(f"/v2/{repo}/manifests/one"), 404, "MANIFEST_UNKNOWN")
    assert_error(registry.get(f"/v2/{repo}/manifests/two"), 404, "MANIFEST_UNKNOWN")
    assert registry.get(f"/v2/{repo}/tags/list").json()["tags"] == ["kept"]


def test_manifest_delete_by_tag_is_202_and_keeps_the_manifest(
    registry: RegistryClient, repo: str
) -> None:
    image = push_image(registry, repo, "gone")
    answer = registry.delete(f"/v2/{repo}/manifests/gone")
    assert answer.status == 202, answer
    assert_error(registry.get(f"/v2/{repo}/manifests/gone"), 404, "MANIFEST_UNKNOWN")
    assert registry.get(f"/v2/{repo}/manifests/{image.digest}").body == image.manifest


def test_manifest_delete_of_an_unknown_digest_is_404(registry: RegistryClient, repo: str) -> None:
    push_image(registry, repo, "present")
    answer = registry.delete(f"/v2/{repo}/manifests/{digest_of(b'never')}")
    assert_error(answer, 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize(
    "name",
    ["Upper/case", "foo..bar", "a/../b", "a" * 256, "trailing/", "-leading", "a//b"],
    ids=[
        "uppercase",
        "double-dot",
        "dot-dot-segment",
        "256-chars",
        "trailing-slash",
        "leading-dash",
        "empty-component",
    ],
)
def test_invalid_repository_name_is_400_name_invalid(registry: RegistryClient, name: str) -> None:
    assert_error(registry.get(f"/v2/{name}/manifests/latest"), 400, "NAME_INVALID")
    answer = registry.request("POST", f"/v2/{name}/blobs/uploads/")
    assert_error(answer, 400, "NAME_INVALID")


def test_repository_name_of_255_chars_is_valid(registry: RegistryClient) -> None:
    name = "a" * 255
    assert_error(registry.get(f"/v2/{name}/tags/list"), 404, "NAME_UNKNOWN")


# Listing


LEXICAL_TAGS = ["0.1", "a_b", "alpha", "Beta", "latest", "V1", "v1", "v10", "v2"]


def test_tags_list_is_in_lexical_order_whatever_the_case(
    registry: RegistryClient, repo: str
) -> None:
    # The spec: tags in lexical ("case-insensitive alphanumeric") order; tags that differ
    # in case alone follow byte order.
    image = push_image(registry, repo, "v2")
    for tag in ("v10", "latest", "V1", "Beta", "v1", "alpha", "a_b", "0.1"):
        registry.put_manifest(repo, tag, image.manifest, OCI_MANIFEST)
    answer = registry.get(f"/v2/{repo}/tags/list")
    assert answer.status == 200, answer
    assert (answer.header("Content-Type") or "").startswith("application/json"), answer
    assert answer.json() == {"name": repo, "tags": LEXICAL_TAGS}
    assert answer.header("Link") is None


def test_tags_list_pages_follow_lexical_order(registry: RegistryClient, repo: str) -> None:
    image = push_image(registry, repo, LEXICAL_TAGS[0])
    for tag in reversed(LEXICAL_TAGS[1:]):
        registry.put_manifest(repo, tag, image.manifest, OCI_MANIFEST)
    pages = []
    url: str | None = f"/v2/{repo}/tags/list?n=2"
    while url is not None:
        answer = registry.get(url)
        pages.append(answer.json()["tags"])
        link = answer.header("Link")
        found = re.fullmatch(r'<([^>]+)>;\s*rel="next"', link) if link else None
        url = found[1] if found else None
        assert len(pages) <= len(LEXICAL_TAGS), pages
    assert [tag for page in pages for tag in page] == LEXICAL_TAGS
    assert all(len(page) == 2 for page in pages[:-1])
    # `last` need not be a tag: the page starts past where it would sort.
    assert registry.get(f"/v2/{repo}/tags/list?n=3&last=alpha").json()["tags"] == [
        "Beta",
        "latest",
        "V1",
    ]
    assert registry.get(f"/v2/{repo}/tags/list?n=2&last=b").json()["tags"] == ["Beta", "latest"]


def test_tags_list_pages_follow_the_link_header_to_the_end(
    registry: RegistryClient, repo: str
) -> None:
    tags = [f"t{i}" for i in range(5)]
    image = push_image(registry, repo, tags[0])
    for tag in tags[1:]:
        registry.put_manifest(repo, tag, image.manifest, OCI_MANIFEST)
    pages: list[list[str]] = []
    url: str | None = f"/v2/{repo}/tags/list?n=2"
    while url is not None:
        answer = registry.get(url)
        assert answer.status == 200, answer
        assert answer.json()["name"] == repo
        pages.append(answer.json()["tags"])
        link = answer.header("Link")
        if link is None:
            url = None
        else:
            found = re.fullmatch(r'<([^>]+)>;\s*rel="next"', link)
            assert found is not None, link
            url = found[1]
        assert len(pages) <= 5, pages
    assert pages == [["t0", "t1"], ["t2", "t3"], ["t4"]]


def test_tags_list_after_last_starts_past_it(registry: RegistryClient, repo: str) -> None:
    image = push_image(registry, repo, "a")
    for tag in ("b", "c", "d"):
        registry.put_manifest(repo, tag, image.manifest, OCI_MANIFEST)
    answer = registry.get(f"/v2/{repo}/tags/list?n=2&last=b")
    assert answer.json()["tags"] == ["c", "d"]
    assert answer.header("Link") is None


def test_tags_list_of_zero_is_empty_without_link(registry: RegistryClient, repo: str) -> None:
    push_image(registry, repo, "a")
    answer = registry.get(f"/v2/{repo}/tags/list?n=0")
    assert answer.status == 200, answer
    assert answer.json()["tags"] == []
    assert answer.header("Link") is None


def tag_many(registry: RegistryClient, repo: str, manifest: bytes, tags: list[str]) -> None:
    """Point each of `tags` at `manifest`, over one kept-alive connection (they are many)."""
    connection = http.client.HTTPConnection(registry.host, registry.port, timeout=30)
    try:
        for tag in tags:
            connection.request(
                "PUT",
                f"/v2/{repo}/manifests/{tag}",
                body=manifest,
                headers={"Content-Type": OCI_MANIFEST},
            )
            response = connection.getresponse()
            response.read()
            assert response.status == 201, (tag, response.status)
    finally:
        connection.close()


def test_tags_list_without_n_streams_every_tag(registry: RegistryClient, repo: str) -> None:
    # More than a page of the index, and than the 1000 a default page once held.
    tags = [f"t{number:04d}" for number in range(1201)]
    image = push_image(registry, repo, tags[0])
    tag_many(registry, repo, image.manifest, tags[1:])
    answer = registry.get(f"/v2/{repo}/tags/list")
    assert answer.status == 200, answer
    assert answer.json() == {"name": repo, "tags": tags}
    assert answer.header("Link") is None
    # Written out as it is read, not built whole first: no length known up front.
    assert answer.header("Transfer-Encoding") == "chunked"
    assert answer.header("Content-Length") is None
    assert (answer.header("Content-Type") or "").startswith("application/json")
    after = registry.get(f"/v2/{repo}/tags/list?last=t1100").json()["tags"]
    assert after == tags[1101:]


@pytest.mark.parametrize("size", ["many", "-1", "1.5"])
def test_tags_list_page_size_that_is_no_number_is_400_unsupported(
    registry: RegistryClient, repo: str, size: str
) -> None:
    push_image(registry, repo, "a")
    answer = registry.get(f"/v2/{repo}/tags/list?n={size}")
    assert_error(answer, 400, "UNSUPPORTED")
    assert answer.json()["errors"][0]["detail"]["reason"] == "PAGINATION_NUMBER_INVALID"


def test_tags_list_leaves_out_tags_whose_manifest_was_removed_over_grpc(
    registry: RegistryClient, daemon: DaemonProcess, repo: str
) -> None:
    kept = push_image(registry, repo, "kept")
    removed = push_image(registry, repo, "removed")
    for tag in ("also-removed", "b-removed"):
        registry.put_manifest(repo, tag, removed.manifest, OCI_MANIFEST)
    with RemoteStore(daemon.address, namespace=NAMESPACE) as store:
        store.delete(removed.digest)
    # A page of one holds the one live tag, though two dead ones sort before it;
    # the dead one after it earns no link to an empty page.
    answer = registry.get(f"/v2/{repo}/tags/list?n=1")
    assert answer.json()["tags"] == ["kept"]
    assert answer.header("Link") is None
    assert_error(registry.get(f"/v2/{repo}/manifests/removed"), 404, "MANIFEST_UNKNOWN")
    # Stored again, the manifest is listed under its tags again.
    registry.put_manifest(repo, removed.digest, removed.manifest, OCI_MANIFEST)
    answer = registry.get(f"/v2/{repo}/tags/list")
    assert answer.json()["tags"] == ["also-removed", "b-removed", "kept", "removed"]
    assert kept.digest != removed.digest


def test_tags_list_of_an_unknown_repository_is_404_name_unknown(
    registry: RegistryClient, repo: str
) -> None:
    assert_error(registry.get(f"/v2/{repo}/tags/list"), 404, "NAME_UNKNOWN")


def test_catalog_lists_repositories_sorted(registry: RegistryClient) -> None:
    stem = uuid.uuid4().hex[:12]
    names = [f"catalog/{stem}/b", f"catalog/{stem}/a"]
    for name in names:
        registry.push_blob(name, os.urandom(10))
    answer = registry.get("/v2/_catalog")
    assert answer.status == 200, answer
    listed = answer.json()["repositories"]
    assert listed == sorted(listed)
    assert [n for n in listed if n.startswith(f"catalog/{stem}/")] == sorted(names)


def test_catalog_pages_follow_the_link_header(registry: RegistryClient) -> None:
    registry.push_blob(f"catalog/{uuid.uuid4().hex[:12]}", os.urandom(10))
    registry.push_blob(f"catalog/{uuid.uuid4().hex[:12]}", os.urandom(10))
    whole = registry.get("/v2/_catalog").json()["repositories"]
    first = registry.get("/v2/_catalog?n=1")
    assert first.json()["repositories"] == whole[:1]
    link = first.header("Link") or ""
    found = re.fullmatch(r'<([^>]+)>;\s*rel="next"', link)
    assert found is not None, link
    assert registry.get(found[1]).json()["repositories"] == whole[1:2]


# Basic auth and read-only mode, on a daemon of their own


@dataclass(frozen=True)
class Seeded:
    """What was pushed before the guarded daemon started."""

    daemon: DaemonProcess
    repo: str
    blob: bytes
    image: Image

    def client(self, authorization: str | None) -> RegistryClient:
        return client_for(self.daemon, authorization)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """A daemon with `--http-htpasswd` and `--http-read-only`, seeded by a first run."""
    root = tmp_path_factory.mktemp("guarded")
    seeding = start_daemon(root, "--http", "127.0.0.1:0")
    try:
        seeder = client_for(seeding)
        blob = os.urandom(700)
        seeder.push_blob("seeded/app", blob)
        image = push_image(seeder, "seeded/app", "latest")
    finally:
        seeding.stop()
    htpasswd = root.parent / "htpasswd"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{USER}:{hashed}\n")
    started = start_daemon(
        root, "--http", "127.0.0.1:0", "--http-htpasswd", str(htpasswd), "--http-read-only"
    )
    try:
        yield Seeded(started, "seeded/app", blob, image)
    finally:
        started.stop()


AUTHORIZED = basic_authorization(USER, PASSWORD)


def test_request_without_credentials_is_401_with_a_basic_challenge(guarded: Seeded) -> None:
    answer = guarded.client(None).get("/v2/")
    assert_error(answer, 401, "UNAUTHORIZED")
    challenge = answer.header("WWW-Authenticate") or ""
    assert re.fullmatch(r'Basic realm="[^"]+"', challenge), challenge
    assert answer.header("Docker-Distribution-API-Version") == "registry/2.0"


@pytest.mark.parametrize(
    "authorization",
    [
        basic_authorization(USER, "wrong"),
        basic_authorization("nobody", PASSWORD),
        basic_authorization(USER, ""),
        "Basic !!not-base64!!",
        "Bearer some-token",
    ],
    ids=["wrong-password", "unknown-user", "empty-password", "malformed", "other-scheme"],
)
def test_request_with_bad_credentials_is_401(guarded: Seeded, authorization: str) -> None:
    answer = guarded.client(authorization).get(
        f"/v2/{guarded.repo}/blobs/{digest_of(guarded.blob)}"
    )
    assert_error(answer, 401, "UNAUTHORIZED")
    assert (answer.header("WWW-Authenticate") or "").startswith("Basic realm=")


def test_request_with_the_right_credentials_is_200(guarded: Seeded) -> None:
    answer = guarded.client(AUTHORIZED).get("/v2/")
    assert answer.status == 200, answer
    assert answer.header("Docker-Distribution-API-Version") == "registry/2.0"


def test_unauthenticated_write_is_401_before_read_only(guarded: Seeded) -> None:
    answer = guarded.client(None).request("POST", f"/v2/{guarded.repo}/blobs/uploads/")
    assert_error(answer, 401, "UNAUTHORIZED")


def test_read_only_registry_serves_reads(guarded: Seeded) -> None:
    registry = guarded.client(AUTHORIZED)
    digest = digest_of(guarded.blob)
    assert registry.get(f"/v2/{guarded.repo}/blobs/{digest}").body == guarded.blob
    assert registry.head(f"/v2/{guarded.repo}/blobs/{digest}").status == 200
    manifest = registry.get(f"/v2/{guarded.repo}/manifests/latest")
    assert manifest.status == 200, manifest
    assert manifest.body == guarded.image.manifest
    assert registry.get(f"/v2/{guarded.repo}/tags/list").json()["tags"] == ["latest"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/{repo}/blobs/uploads/"),
        ("POST", "/v2/{repo}/blobs/uploads/?digest={blob}"),
        ("PATCH", "/v2/{repo}/blobs/uploads/" + str(uuid.UUID(int=1))),
        ("PUT", "/v2/{repo}/blobs/uploads/" + str(uuid.UUID(int=1)) + "?digest={blob}"),
        ("DELETE", "/v2/{repo}/blobs/uploads/" + str(uuid.UUID(int=1))),
        ("DELETE", "/v2/{repo}/blobs/{blob}"),
        ("PUT", "/v2/{repo}/manifests/latest"),
        ("DELETE", "/v2/{repo}/manifests/latest"),
        ("DELETE", "/v2/{repo}/manifests/{manifest}"),
    ],
)
def test_read_only_registry_refuses_writes_405_unsupported(
    guarded: Seeded, method: str, path: str
) -> None:
    registry = guarded.client(AUTHORIZED)
    url = path.format(
        repo=guarded.repo, blob=digest_of(guarded.blob), manifest=guarded.image.digest
    )
    body = guarded.image.manifest if "manifests" in url else b""
    answer = registry.request(method, url, body, {"Content-Type": OCI_MANIFEST})
    assert_error(answer, 405, "UNSUPPORTED")
    assert registry.get(f"/v2/{guarded.repo}/manifests/latest").status == 200
    assert registry.head(f"/v2/{guarded.repo}/blobs/{digest_of(guarded.blob)}").status == 200


# Errors never leak


def test_error_bodies_hold_no_paths_or_traces(daemon: DaemonProcess, repo: str) -> None:
    # A client without the guard every other test has, so the answers reach this check.
    registry = RegistryClient(daemon.http_url)
    location = registry.start_upload(repo)
    answers = [
        registry.get(f"/v2/{repo}/blobs/{digest_of(b'absent')}"),
        registry.get(f"/v2/{repo}/blobs/sha256:zz"),
        registry.get(f"/v2/{repo}/blobs/uploads/{uuid.UUID(int=3)}"),
        registry.complete_upload(location, digest_of(b"not these bytes")),
        registry.put_manifest(repo, "x", b"{", OCI_MANIFEST),
        registry.get("/v2/Bad/tags/list"),
        registry.get("/v2/../../etc/passwd"),
        registry.get(f"/v2/{repo}/tags/list?n=many"),
        registry.request("PATCH", "/v2/"),
    ]
    for answer in answers:
        assert answer.status >= 400, answer
        assert answer.json()["errors"], answer
        for text in (str(daemon.root), *LEAKS):
            assert text.encode() not in answer.body, answer

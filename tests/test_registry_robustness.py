"""The registry face under abuse: killed mid-upload, flooded with uploads, fed hostile requests."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.daemon import DaemonProcess, start_daemon

from contentd.client import RemoteStore
from contentd.errdefs import DESCRIPTORS

MIB = 1 << 20


def _host_port(daemon: DaemonProcess) -> tuple[str, int]:
    parts = urlsplit(daemon.http_url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def request(
    daemon: DaemonProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(*_host_port(daemon), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        connection.close()


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def start_upload(daemon: DaemonProcess, name: str = "robust/app") -> str:
    status, headers, _ = request(daemon, "POST", f"/v2/{name}/blobs/uploads/")
    assert status == 202, status
    return headers["Location"]


def upload_offset(daemon: DaemonProcess, location: str) -> int:
    status, headers, _ = request(daemon, "GET", location)
    assert status == 204, status
    end = int(headers["Range"].split("-")[1])
    return 0 if end == 0 else end + 1


def complete_upload(daemon: DaemonProcess, location: str, data: bytes) -> int:
    """Send what the upload lacks of `data` from where it stands, then complete it.

    Returns the offset the upload stood at.
    """
    offset = upload_offset(daemon, location)
    status, _, _ = request(
        daemon, "PATCH", location, data[offset:], {"Content-Range": f"{offset}-{len(data) - 1}"}
    )
    assert status == 202
    status, _, _ = request(daemon, "PUT", f"{location}?digest={sha256(data)}")
    assert status == 201
    return offset


class PartialPatch:
    """A PATCH whose headers and first bytes went out, and whose body is still owed."""

    def __init__(self, daemon: DaemonProcess, location: str, total: int, first: bytes) -> None:
        self.socket = socket.create_connection(_host_port(daemon), timeout=30)
        head = (
            f"PATCH {location} HTTP/1.1\r\nHost: registry\r\nContent-Length: {total}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        self.socket.sendall(head.encode() + first)

    def finish(self, rest: bytes) -> int:
        self.socket.sendall(rest)
        answer = http.client.HTTPResponse(self.socket)
        answer.begin()
        answer.read()
        self.socket.close()
        return answer.status

    def abandon(self) -> None:
        self.socket.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def registry(root: Path) -> Iterator[DaemonProcess]:
    daemon = start_daemon(root, "--http", "127.0.0.1:0")
    try:
        yield daemon
    finally:
        daemon.stop()


def _wait_for_offset(daemon: DaemonProcess, location: str, at_least: int) -> int:
    deadline = time.monotonic() + 10
    while (offset := upload_offset(daemon, location)) < at_least:
        assert time.monotonic() < deadline, f"upload stuck at {offset}"
        time.sleep(0.02)
    return offset


def test_upload_killed_mid_patch_resumes_after_restart(root: Path) -> None:
    data = os.urandom(6 * MIB + 123)
    daemon = start_daemon(root, "--http", "127.0.0.1:0")
    try:
        location = start_upload(daemon)
        patch = PartialPatch(daemon, location, len(data), data[: 4 * MIB])
        _wait_for_offset(daemon, location, 3 * MIB)
        daemon.kill()
        patch.abandon()
    finally:
        daemon.kill()
    daemon = start_daemon(root, "--http", "127.0.0.1:0")
    try:
        offset = complete_upload(daemon, location, data)
        assert 3 * MIB <= offset <= 4 * MIB
        status, _, body = request(daemon, "GET", f"/v2/robust/app/blobs/{sha256(data)}")
        assert status == 200
        assert body == data
    finally:
        daemon.stop()


def test_acknowledged_push_survives_sigkill(root: Path) -> None:
    layer, config = os.urandom(MIB), b'{"architecture":"amd64","os":"linux"}'
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    daemon = start_daemon(root, "--http", "127.0.0.1:0")
    try:
        for blob in (layer, config):
            status, _, _ = request(
                daemon, "POST", f"/v2/robust/app/blobs/uploads/?digest={sha256(blob)}", blob
            )
            assert status == 201
        status, _, _ = request(
            daemon,
            "PUT",
            "/v2/robust/app/manifests/v1",
            manifest,
            {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert status == 201
    finally:
        daemon.kill()
    daemon = start_daemon(root, "--http", "127.0.0.1:0")
    try:
        status, headers, body = request(daemon, "GET", "/v2/robust/app/manifests/v1")
        assert status == 200
        assert body == manifest
        assert headers["Docker-Content-Digest"] == sha256(manifest)
        status, _, body = request(daemon, "GET", f"/v2/robust/app/blobs/{sha256(layer)}")
        assert status == 200
        assert body == layer
    finally:
        daemon.stop()


def test_uploads_past_the_open_writer_limit_close_idle_ones_and_refuse_when_all_are_busy(
    root: Path,
) -> None:
    daemon = start_daemon(root, "--http", "127.0.0.1:0", "--http-max-uploads", "2")
    try:
        idle = [start_upload(daemon) for _ in range(3)]  # the oldest idle writer closes
        # More than the megabyte the registry buffers, so the first bytes reach the
        # store while the rest is still owed: both uploads are busy.
        chunk = b"x" * (MIB + 1000)
        busy = [PartialPatch(daemon, location, 2 * len(chunk), chunk) for location in idle[:2]]
        for location in idle[:2]:
            _wait_for_offset(daemon, location, MIB)
        status, _, body = request(daemon, "POST", "/v2/robust/app/blobs/uploads/")
        assert status == 429
        error = json.loads(body)["errors"][0]
        assert error["code"] == "TOOMANYREQUESTS"
        assert error["detail"]["reason"] == "TOO_MANY_UPLOADS"
        assert [patch.finish(chunk) for patch in busy] == [202, 202]
        # Every upload, closed or not, still completes with its bytes.
        for location in idle:
            offset = upload_offset(daemon, location)
            data = b"x" * offset
            status, _, _ = request(daemon, "PUT", f"{location}?digest={sha256(data)}")
            assert status == 201
    finally:
        daemon.stop()


def test_an_open_upload_is_an_ingest_over_grpc_and_a_pushed_blob_a_blob(
    registry: DaemonProcess,
) -> None:
    data = os.urandom(300_000)
    location = start_upload(registry, "grpc/view")
    status, _, _ = request(registry, "PATCH", location, data)
    assert status == 202
    with RemoteStore(registry.address, namespace="default") as store:
        (ingest,) = [s for s in store.list_statuses() if location.rsplit("/", 1)[1] in s.ref]
        assert ingest.offset == len(data)
        status, _, _ = request(registry, "PUT", f"{location}?digest={sha256(data)}")
        assert status == 201
        assert store.info(sha256(data)).size == len(data)
        assert not store.list_statuses()


# Hostile requests: every answer is deliberate, never a 500, and the daemon stays up.

# Methods HTTP knows: a request the HTTP parser itself rejects (an unknown method, a
# malformed request line) gets the server library's plain 400 before any route sees it.
_METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
_SEGMENTS = st.sampled_from(
    [
        "v2",
        "blobs",
        "uploads",
        "manifests",
        "tags",
        "list",
        "_catalog",
        "app",
        "Team",
        "a..b",
        "sha256:" + "0" * 64,
        "sha256:zz",
        "sha512:" + "f" * 128,
        "latest",
        "%2e%2e",
        "..",
        "00000000-0000-0000-0000-000000000000",
        "",
        "x" * 300,
    ]
)
_PATHS = st.lists(_SEGMENTS, min_size=1, max_size=7).map(lambda parts: "/v2/" + "/".join(parts))
_QUERIES = st.sampled_from(
    [
        "",
        "?digest=sha256:" + "1" * 64,
        "?digest=bogus",
        "?mount=sha256:" + "2" * 64 + "&from=other",
        "?mount=nope&from=UPPER",
        "?n=-1",
        "?n=99999999999999999999",
        "?n=abc&last=%00",
        "?last=zzz",
    ]
)
_HEADERS = st.dictionaries(
    st.sampled_from(["Content-Range", "Range", "Content-Type", "Authorization", "Accept"]),
    st.sampled_from(
        [
            "0-10",
            "bytes=0-",
            "bytes=-5",
            "bytes=5-1",
            "bytes=0-1,3-4",
            "99999999999999999999-1",
            "garbage",
            "application/vnd.oci.image.index.v1+json",
            "Basic !!!",
            "",
        ]
    ),
    max_size=3,
)
_BODIES = st.one_of(
    st.just(b""),
    st.binary(max_size=512),
    st.sampled_from(
        [
            b"{}",
            b'{"schemaVersion":2,"manifests":[{"digest":"sha256:x"}]}',
            b'{"schemaVersion":2,"config":{},"layers":null}',
            b"[]",
            b"\xff\xfe",
        ]
    ),
)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = start_daemon(tmp_path_factory.mktemp("fuzz") / "root", "--http", "127.0.0.1:0")
    try:
        yield daemon
    finally:
        daemon.stop()


@settings(
    max_examples=int(os.environ.get("CONTENTD_FUZZ_EXAMPLES", "1")) * 300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(method=_METHODS, path=_PATHS, query=_QUERIES, headers=_HEADERS, body=_BODIES)
def test_hostile_requests_get_deliberate_answers(
    fuzzed: DaemonProcess,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
) -> None:
    status, _, answer = request(fuzzed, method, path + query, body, headers)
    assert status < 500, (status, answer[:300])
    if status >= 400 and method != "HEAD":
        errors = json.loads(answer)["errors"]
        assert errors
        assert errors[0]["code"] in DESCRIPTORS
        text = answer.decode()
        assert str(fuzzed.root) not in text
        assert "/tmp" not in text
        assert "Traceback" not in text
    assert fuzzed.process.poll() is None
    assert request(fuzzed, "GET", "/v2/")[0] == 200


def test_sigterm_with_an_upload_mid_body_keeps_its_bytes(root: Path) -> None:
    daemon = start_daemon(root, "--http", "127.0.0.1:0", "--grace", "1")
    data = os.urandom(2 * MIB)
    try:
        location = start_upload(daemon)
        patch = PartialPatch(daemon, location, len(data), data[:MIB])
        _wait_for_offset(daemon, location, 1)
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=20) == 0
        patch.abandon()
    finally:
        daemon.kill()
    daemon = start_daemon(root, "--http", "127.0.0.1:0")
    try:
        offset = complete_upload(daemon, location, data)
        assert 0 < offset <= MIB
    finally:
        daemon.stop()

"""The registry client: push and pull one blob over HTTP, each in a process of its own.

Plain `http.client` from the standard library, the same code for both registries, one
connection per operation. A push goes the way docker and skopeo push a layer: `POST
/v2/NAME/blobs/uploads/` for a session, one `PATCH` streaming the whole file (1 MiB
blocks), then `PUT LOCATION&digest=...` to complete it. A pull is `GET
/v2/NAME/blobs/DIGEST` read with `readinto` 1 MiB at a time, counted but not hashed, so the
client spends as little as it can and the server's speed shows; `check_size` (HEAD) and
`check_digest` (a hashed GET) check the blob outside the measured windows.

`run_client` starts the operation in a spawned process, waits until it has opened its file
and connected, calls `on_ready` (the harness opens its measuring window), then lets it go.
The client times itself on the system-wide monotonic clock.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import queue
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPResponse
from multiprocessing.synchronize import Event
from typing import IO, Final, Protocol, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit

from clients import Blob, Timed, Window

#: Bytes per socket send of the PATCH body and per readinto of the GET.
CHUNK: Final = 1 << 20
#: How long a spawned client may take to start, open its file and connect.
READY_TIMEOUT: Final = 60.0
#: How long a client that has sent its result may take to exit.
EXIT_TIMEOUT: Final = 10.0
#: Bound on each socket operation.
SOCKET_TIMEOUT: Final = 120.0

_SPAWN = multiprocessing.get_context("spawn")


class RegistryError(RuntimeError):
    """A registry answered something other than what the protocol calls for."""


class Go(Protocol):
    """What a client calls once it is prepared: waits for the start, returns its time."""

    def __call__(self) -> float: ...


def connect(url: str) -> HTTPConnection:
    """An open connection to the registry at `url` (http://HOST:PORT)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"not an http://HOST:PORT URL: {url}")
    connection = HTTPConnection(parts.hostname, parts.port, timeout=SOCKET_TIMEOUT, blocksize=CHUNK)
    connection.connect()
    return connection


def exchange(
    connection: HTTPConnection,
    method: str,
    target: str,
    expected: int,
    *,
    body: IO[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
) -> HTTPResponse:
    """Send one request, read the whole answer (so the connection can carry the next one),
    and insist on status `expected`."""
    connection.request(method, target, body=body, headers=dict(headers or {}))
    response = connection.getresponse()
    payload = response.read()
    if response.status != expected:
        raise RegistryError(
            f"{method} {target}: {response.status} {response.reason} "
            f"(expected {expected}): {payload[:1000].decode(errors='replace')}"
        )
    return response


def upload_target(url: str, location: str | None) -> str:
    """The request target (path and query) of an upload's Location, which may be absolute
    or relative; refuses one that points at another server."""
    if not location:
        raise RegistryError("the registry gave no Location for the upload")
    absolute = urlsplit(urljoin(url + "/", location))
    if absolute.netloc != urlsplit(url).netloc:
        raise RegistryError(f"upload Location {location} is on another server than {url}")
    return absolute.path + (f"?{absolute.query}" if absolute.query else "")


def with_digest(target: str, digest: str) -> str:
    """`target` with `digest=...` added to whatever query string it carries already."""
    return target + ("&" if "?" in target else "?") + urlencode({"digest": digest})


def blob_path(repository: str, digest: str) -> str:
    return f"/v2/{repository}/blobs/{digest}"


@dataclass(frozen=True)
class Push:
    """Push the file `blob` into `repository` of the registry at `url`."""

    url: str
    repository: str
    blob: Blob


@dataclass(frozen=True)
class Pushed(Timed):
    """A push's window, and how it divides between its three requests."""

    #: Seconds from sending each request to reading its answer: POST, PATCH, PUT.
    phases: tuple[float, ...] = ()


def push_blob(job: Push, go: Go) -> Pushed:
    """POST, one PATCH with the whole file, PUT with the digest: timed from the POST's send
    to the PUT's answer."""
    connection = connect(job.url)
    try:
        with job.blob.path.open("rb", buffering=0) as source:
            start = go()
            started = exchange(
                connection,
                "POST",
                f"/v2/{job.repository}/blobs/uploads/",
                202,
                headers={"Content-Length": "0"},
            )
            posted = time.monotonic()
            patched = exchange(
                connection,
                "PATCH",
                upload_target(job.url, started.getheader("Location")),
                202,
                body=source,
                headers={
                    "Content-Length": str(job.blob.size),
                    "Content-Type": "application/octet-stream",
                },
            )
            sent = time.monotonic()
            target = with_digest(
                upload_target(job.url, patched.getheader("Location")), job.blob.digest
            )
            exchange(connection, "PUT", target, 201, headers={"Content-Length": "0"})
            end = time.monotonic()
    finally:
        connection.close()
    phases = (posted - start, sent - posted, end - sent)
    return Pushed(Window(start, end), job.blob.size, (job.blob.digest,), phases=phases)


@dataclass(frozen=True)
class Pull:
    """Pull the blob `digest` of `size` bytes from `repository` of the registry at `url`."""

    url: str
    repository: str
    digest: str
    size: int


def pull_blob(job: Pull, go: Go) -> Timed:
    """GET, read 1 MiB at a time into one buffer, counting the bytes: timed from the GET's
    send to the last byte."""
    connection = connect(job.url)
    buffer = memoryview(bytearray(CHUNK))
    try:
        start = go()
        connection.request("GET", blob_path(job.repository, job.digest))
        response = connection.getresponse()
        if response.status != 200:
            raise RegistryError(
                f"GET {blob_path(job.repository, job.digest)}: {response.status} "
                f"{response.reason}: {response.read()[:1000].decode(errors='replace')}"
            )
        received = 0
        while count := response.readinto(buffer):
            received += count
        end = time.monotonic()
    finally:
        connection.close()
    if received != job.size:
        raise RegistryError(f"pulled {received} bytes of {job.digest}, expected {job.size}")
    return Timed(Window(start, end), received)


def check_size(url: str, repository: str, blob: Blob) -> None:
    """Outside any measured window: HEAD reports the blob's size (and its digest, if it
    names one)."""
    connection = connect(url)
    path = blob_path(repository, blob.digest)
    try:
        head = exchange(connection, "HEAD", path, 200)
    finally:
        connection.close()
    length = head.getheader("Content-Length")
    if length != str(blob.size):
        raise RegistryError(f"HEAD {path}: Content-Length {length}, expected {blob.size}")
    named = head.getheader("Docker-Content-Digest")
    if named is not None and named != blob.digest:
        raise RegistryError(f"HEAD {path}: Docker-Content-Digest {named}")


def check_digest(url: str, repository: str, blob: Blob) -> None:
    """Outside any measured window: GET returns bytes whose sha256 is the blob's digest."""
    connection = connect(url)
    path = blob_path(repository, blob.digest)
    hasher = hashlib.sha256()
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        if response.status != 200:
            raise RegistryError(f"GET {path}: {response.status} {response.reason}")
        while piece := response.read(CHUNK):
            hasher.update(piece)
    finally:
        connection.close()
    if f"sha256:{hasher.hexdigest()}" != blob.digest:
        raise RegistryError(f"GET {path} returned bytes of sha256:{hasher.hexdigest()}")


# Running a client in a process of its own.

J = TypeVar("J")
R = TypeVar("R")


@dataclass(frozen=True)
class _Gate:
    """The child's side of the start: say it is ready, then wait for the go."""

    events: multiprocessing.Queue[tuple[str, object]]
    go: Event
    timeout: float

    def __call__(self) -> float:
        self.events.put(("ready", None))
        if not self.go.wait(self.timeout):
            raise TimeoutError("no go from the harness")
        return time.monotonic()


def _child(
    operation: Callable[[J, Go], R],
    job: J,
    events: multiprocessing.Queue[tuple[str, object]],
    go: Event,
    timeout: float,
) -> None:
    try:
        result = operation(job, _Gate(events, go, timeout))
    except BaseException:
        events.put(("error", traceback.format_exc()))
    else:
        events.put(("done", result))


class ClientError(RuntimeError):
    """The client process failed or ran out of time."""


def run_client(
    operation: Callable[[J, Go], R],
    job: J,
    *,
    timeout: float,
    on_ready: Callable[[], None] = lambda: None,
) -> R:
    """Run `operation(job, go)` in a spawned process and return what it returns.

    Once it has called `go()` (prepared and waiting), `on_ready` runs and then it is
    released. Raises ClientError when it fails, or when it is not done `timeout` seconds
    after the release; the process never outlives the call.
    """
    events: multiprocessing.Queue[tuple[str, object]] = _SPAWN.Queue()
    go = _SPAWN.Event()
    process = _SPAWN.Process(
        target=_child,
        args=(operation, job, events, go, READY_TIMEOUT + timeout),
        name=f"registry-{operation.__name__}",
        daemon=True,
    )
    process.start()
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                kind, payload = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                stage = "finish" if go.is_set() else "get ready"
                raise ClientError(f"{operation.__name__} did not {stage} in time") from None
            if kind == "ready":
                on_ready()
                go.set()
                deadline = time.monotonic() + timeout
            elif kind == "error":
                raise ClientError(f"{operation.__name__} failed:\n{payload}")
            else:
                process.join(timeout=EXIT_TIMEOUT)
                return payload  # type: ignore[return-value]
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        events.close()
        events.join_thread()

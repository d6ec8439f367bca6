"""Raw gRPC on contentd's Content API, for tests that speak the wire themselves.

    python grpc_client.py hold ADDRESS NAMESPACE REF    write a little on a Write stream, keep it

The `hold` actor prints "holding" once its WRITE is answered and then waits,
stream open, until it is killed: a client that vanishes without a goodbye.
"""

from __future__ import annotations

import queue
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Self

import grpc

from contentd.proto import content_pb2 as api
from contentd.proto import content_pb2_grpc

#: Deadline of calls that should answer at once, generous for a loaded machine.
CALL_TIMEOUT = 20.0
#: What the `hold` actor writes before it waits.
HELD_DATA = b"held by a client that never says goodbye"

_NO_PROXY = (("grpc.enable_http_proxy", 0),)


def connect(address: str) -> grpc.Channel:
    """A channel to `address` (unix:///... or host:port), never through an HTTP proxy."""
    return grpc.insecure_channel(address, options=_NO_PROXY)


@contextmanager
def content_stub(address: str) -> Iterator[content_pb2_grpc.ContentStub]:
    """A Content stub on its own channel, closed when the block ends."""
    with connect(address) as channel:
        yield content_pb2_grpc.ContentStub(channel)


def namespaced(namespace: str) -> tuple[tuple[str, str], ...]:
    """Request metadata naming `namespace`, as containerd's clients send it."""
    return (("containerd-namespace", namespace),)


class WriteStream:
    """A Write call driven one request at a time: `send` a request, get its answer.

    Requests go out only when sent, so a test decides when the stream is busy,
    idle, half-closed (`close`) or canceled (`cancel`). Leaving the with-block
    cancels whatever is still open.
    """

    def __init__(
        self,
        stub: content_pb2_grpc.ContentStub,
        namespace: str | None,
        *,
        timeout: float = CALL_TIMEOUT,
    ) -> None:
        self._requests: queue.Queue[api.WriteContentRequest | None] = queue.Queue()
        metadata = namespaced(namespace) if namespace is not None else ()
        self.call = stub.Write(iter(self._requests.get, None), metadata=metadata, timeout=timeout)

    def send(self, request: api.WriteContentRequest) -> api.WriteContentResponse:
        """Send one request and wait for its answer; a failed call raises grpc.RpcError."""
        self._requests.put(request)
        return self.receive()

    def receive(self) -> api.WriteContentResponse:
        """The next answer; a failed call raises grpc.RpcError."""
        response: api.WriteContentResponse = next(self.call)
        return response

    def close(self) -> None:
        """Half-close: the client has nothing more to send."""
        self._requests.put(None)

    def cancel(self) -> None:
        """Cancel the call, as a client giving up does."""
        self.call.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()
        # Unblock the thread gRPC feeds requests from.
        self.close()


def stat(ref: str, total: int = 0, expected: str = "") -> api.WriteContentRequest:
    return api.WriteContentRequest(action=api.STAT, ref=ref, total=total, expected=expected)


def write(ref: str, data: bytes, offset: int = 0) -> api.WriteContentRequest:
    return api.WriteContentRequest(action=api.WRITE, ref=ref, offset=offset, data=data)


def commit(
    ref: str,
    *,
    data: bytes = b"",
    offset: int = 0,
    total: int = 0,
    expected: str = "",
    labels: dict[str, str] | None = None,
) -> api.WriteContentRequest:
    return api.WriteContentRequest(
        action=api.COMMIT,
        ref=ref,
        data=data,
        offset=offset,
        total=total,
        expected=expected,
        labels=labels,
    )


def poll(attempt: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Call `attempt` until it returns True or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if attempt():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def _hold(address: str, namespace: str, ref: str) -> None:
    with content_stub(address) as stub, WriteStream(stub, namespace, timeout=600) as stream:
        stream.send(write(ref, HELD_DATA))
        print("holding", flush=True)
        time.sleep(600)


if __name__ == "__main__":
    verb, *arguments = sys.argv[1:]
    if verb != "hold" or len(arguments) != 3:
        sys.exit(__doc__)
    _hold(*arguments)

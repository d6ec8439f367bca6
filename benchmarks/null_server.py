"""A Content server that stores nothing: the cheapest a Python gRPC server can answer.

    python benchmarks/null_server.py unix:///path/to/socket

It answers the calls the small-blob clients make (a Write that commits, then Info) the
way a store would, with the digest of the bytes it was sent and the size it recorded,
and keeps nothing but a map of digest to size in memory: no file, no fsync, no lock, no
database. Its gRPC server is built as contentd's is (grpcio's synchronous server over a
thread pool of contentd's default size), so the small-blob rate the same clients reach
against it is what a Python gRPC server on this machine allows before any store is
behind it. The harness runs it as a reference, outside the comparison. Like contentd and
containerd it answers `grpc.health.v1.Health` (SERVING once it listens), which is how
the harness knows it is ready; it stops on SIGTERM.
"""

from __future__ import annotations

import hashlib
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from types import FrameType
from typing import Final

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from contentd.proto import content_pb2 as api
from contentd.proto import content_pb2_grpc

#: contentd's default `--workers`.
WORKERS: Final = 64


class NullContent(content_pb2_grpc.ContentServicer):
    """Write and Info answered as a store would, with nothing stored."""

    def __init__(self) -> None:
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def Write(
        self, request_iterator: Iterator[api.WriteContentRequest], context: grpc.ServicerContext
    ) -> Iterator[api.WriteContentResponse]:
        hasher = hashlib.sha256()
        offset = 0
        for request in request_iterator:
            if request.data:
                hasher.update(request.data)
                offset += len(request.data)
            answer = api.WriteContentResponse(action=request.action, offset=offset)
            if request.action == api.COMMIT:
                digest = "sha256:" + hasher.hexdigest()
                if request.expected and request.expected != digest:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "unexpected digest")
                with self._lock:
                    self._sizes[digest] = offset
                answer.digest = digest
                answer.total = offset
                yield answer
                return
            yield answer

    def Info(self, request: api.InfoRequest, context: grpc.ServicerContext) -> api.InfoResponse:
        with self._lock:
            size = self._sizes.get(request.digest)
        if size is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"content {request.digest}: not found")
        return api.InfoResponse(info=api.Info(digest=request.digest, size=size))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: null_server.py ADDRESS", file=sys.stderr)
        return 2
    address = argv[0]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=WORKERS), maximum_concurrent_rpcs=WORKERS
    )
    # gRPC's own registration and decoding: the cheapest way to serve the service.
    content_pb2_grpc.add_ContentServicer_to_server(NullContent(), server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    if not server.add_insecure_port(address):
        print(f"null_server.py: cannot listen on {address}", file=sys.stderr)
        return 1
    stopped = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    print(f"serving on {address}", file=sys.stderr, flush=True)
    stopped.wait()
    server.stop(grace=None).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

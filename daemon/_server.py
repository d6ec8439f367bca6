"""The daemon: a gRPC server with containerd's Content, Leases, Images and Namespaces services,
health and reflection, over one store, and its garbage collection scheduler."""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import socket
import stat
import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from contentd.errdefs import FailedPrecondition, InvalidArgument
from contentd.proto import (
    content_pb2,
    gc_pb2,
    images_pb2,
    leases_pb2,
    namespace_pb2,
    transfer_pb2,
)
from contentd.proto.wire import (
    CONTENT_SERVICE,
    GC_SERVICE,
    IMAGES_SERVICE,
    LEASES_SERVICE,
    MAX_MESSAGE_BYTES,
    NAMESPACES_SERVICE,
    TRANSFER_SERVICE,
)

from ._activation import SocketRelay, socket_address
from ._boundary import add_service
from ._collection import CollectedStore, CollectionPolicy, Collections
from ._gc import GCService
from ._images import ImagesService
from ._leases import LeasesService
from ._metrics import GRPC_API, MeteredStore, Metrics
from ._namespaces import NamespacesService
from ._service import ContentService, ListedStore
from ._tls import TLSFiles, is_loopback
from ._transfer import DEFAULT_MAX_TRANSFERS, TransferService
from .registry import HttpOptions, HttpServer, RegistryStore

CONTENT_DESCRIPTOR: Final = content_pb2.DESCRIPTOR.services_by_name["Content"]
LEASES_DESCRIPTOR: Final = leases_pb2.DESCRIPTOR.services_by_name["Leases"]
IMAGES_DESCRIPTOR: Final = images_pb2.DESCRIPTOR.services_by_name["Images"]
NAMESPACES_DESCRIPTOR: Final = namespace_pb2.DESCRIPTOR.services_by_name["Namespaces"]
GC_DESCRIPTOR: Final = gc_pb2.DESCRIPTOR.services_by_name["GC"]
TRANSFER_DESCRIPTOR: Final = transfer_pb2.DESCRIPTOR.services_by_name["Transfer"]
#: Every service the daemon serves (containerd's, then its own), as health checks and
#: reflection name them.
SERVICES: Final = (
    CONTENT_SERVICE,
    LEASES_SERVICE,
    IMAGES_SERVICE,
    NAMESPACES_SERVICE,
    GC_SERVICE,
    TRANSFER_SERVICE,
)
#: Mode of a unix socket the daemon creates: owner and group may connect.
SOCKET_MODE = 0o660

_log = logging.getLogger("contentd.daemon")


class ServedStore(ListedStore, RegistryStore, CollectedStore, MeteredStore, Protocol):
    """What the daemon serves: a Store that lists its stored records, keeps containerd's
    metadata and the registry's repositories, tells its collector of its changes, and
    lets its work be counted."""


@dataclass(frozen=True)
class ServerOptions:
    """How the daemon serves; the CLI's `serve` flags map onto these."""

    addresses: Sequence[str]
    socket_group: str | None = None
    workers: int = 64
    #: Write streams at once; None: three quarters of the workers, so the
    #: rest stay free for every other call.
    max_write_streams: int | None = None
    #: Write streams at once in one namespace; None: only max_write_streams
    #: bounds them.
    max_ingests_per_namespace: int | None = None
    #: Seconds a Write stream may wait for its client before it is canceled
    #: (its lock released, its ingest kept); None never cancels.
    write_idle_timeout: float | None = 300.0
    #: Pulls the daemon fetches itself at once (the Transfer service); more are refused.
    #: 0 serves no Transfer service: clients fetch themselves.
    max_transfers: int = DEFAULT_MAX_TRANSFERS
    grace: float = 10.0
    #: TLS for TCP addresses (unix sockets stay plaintext); None serves plaintext.
    tls: TLSFiles | None = None
    #: The registry (OCI distribution API) on a TCP address of its own; None: off.
    http: HttpOptions | None = None
    #: When garbage collections run (containerd's scheduler settings).
    collection: CollectionPolicy = field(default_factory=CollectionPolicy)
    #: ``host:port`` to serve Prometheus metrics on (port 0 picks one); None: no metrics.
    metrics: str | None = None
    extra_options: Sequence[tuple[str, int | str]] = field(default_factory=tuple)
    #: Listening unix sockets systemd passed (socket activation); an address naming one's
    #: path is served through it rather than bound anew.
    activated: Sequence[socket.socket] = field(default_factory=tuple)

    def write_stream_limit(self) -> int:
        """The number of Write streams the daemon runs at once."""
        if self.max_write_streams is not None:
            return self.max_write_streams
        return max(1, self.workers * 3 // 4)


def _socket_path(address: str) -> Path | None:
    if address.startswith("unix://"):
        return Path(address.removeprefix("unix://"))
    if address.startswith("unix:"):
        return Path(address.removeprefix("unix:"))
    return None


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file a dead daemon left; refuse if a live one answers on it."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FailedPrecondition(
            f"cannot listen on unix://{path}: the path exists and is no socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        _log.info("replacing stale socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    finally:
        probe.close()
    raise FailedPrecondition(f"cannot listen on unix://{path}: another daemon is serving there")


class Daemon:
    """contentd serving one store: create, `start`, then `stop` (or `wait` for a signal)."""

    def __init__(self, store: ServedStore, options: ServerOptions) -> None:
        if not options.addresses and not options.activated:
            raise InvalidArgument("no address to listen on")
        self._store = store
        self._options = options
        self._stopped = threading.Event()
        grpc_options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # A second daemon on the same TCP port must fail, not share it.
            ("grpc.so_reuseport", 0),
            # Probe idle connections, so a TCP peer that vanished without
            # closing is noticed and its calls canceled.
            ("grpc.keepalive_time_ms", 120_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            # Accept clients' keepalive pings down to one a minute.
            ("grpc.http2.min_ping_interval_without_data_ms", 60_000),
            *options.extra_options,
        ]
        self._executor = futures.ThreadPoolExecutor(
            max_workers=options.workers, thread_name_prefix="contentd-rpc"
        )
        # Without --metrics nothing is measured: no interceptor, hook or middleware.
        self._metrics = None if options.metrics is None else Metrics(store, options.metrics)
        metrics = self._metrics
        self._server = grpc.server(
            self._executor,
            interceptors=None if metrics is None else [metrics.grpc],
            options=grpc_options,
            # Past this many RPCs at once, callers get RESOURCE_EXHAUSTED at
            # once instead of queueing behind long-lived Write streams.
            maximum_concurrent_rpcs=options.workers,
        )
        self._content = ContentService(
            store,
            max_write_streams=options.write_stream_limit(),
            write_idle_timeout=options.write_idle_timeout,
            max_write_streams_per_namespace=options.max_ingests_per_namespace,
            ingested=None if metrics is None else metrics.ingested_bytes.labels(GRPC_API),
            read=None if metrics is None else metrics.read_bytes.labels(GRPC_API),
        )
        add_service(self._content, CONTENT_DESCRIPTOR, self._server)
        self._collections = Collections(
            store, options.collection, None if metrics is None else metrics.collected
        )
        add_service(LeasesService(store, self._collections), LEASES_DESCRIPTOR, self._server)
        add_service(ImagesService(store, self._collections), IMAGES_DESCRIPTOR, self._server)
        add_service(NamespacesService(store.namespaces), NAMESPACES_DESCRIPTOR, self._server)
        add_service(GCService(store, self._collections), GC_DESCRIPTOR, self._server)
        # Without transfers the service is not served at all: clients get UNIMPLEMENTED
        # and fetch themselves, and the daemon never reaches out to a registry for them.
        self._transfers: TransferService | None = None
        self._services: tuple[str, ...] = SERVICES
        if options.max_transfers > 0:
            self._transfers = TransferService(store, options.max_transfers)
            add_service(self._transfers, TRANSFER_DESCRIPTOR, self._server)
        else:
            self._services = tuple(name for name in SERVICES if name != TRANSFER_SERVICE)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*self._services, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self._credentials = options.tls.server_credentials() if options.tls else None
        self.addresses: list[str] = []
        self._sockets: list[Path] = []
        activated = [socket_address(sock) for sock in options.activated]
        for address in options.addresses:
            path = _socket_path(address)
            if path is None or f"unix://{path.absolute()}" not in activated:
                self.addresses.append(self._listen(address))
        self._relay: SocketRelay | None = None
        if options.activated:
            self._relay = SocketRelay(options.activated)
            previous = os.umask(0o177)  # the private socket: the daemon's user only
            try:
                bound = self._server.add_insecure_port(self._relay.private_address)
            finally:
                os.umask(previous)
            if bound == 0:
                raise FailedPrecondition("cannot listen on the socket activation's relay")
            self.addresses += activated
        self._activated = activated
        self._http: HttpServer | None = None
        if options.http is not None:
            self._http = HttpServer(
                store,
                options.http,
                grace=options.grace,
                tls=options.tls,
                observe=None if metrics is None else metrics.registry_requests.middleware,
            )
        if metrics is not None:
            metrics.count_locks(self._content.held_locks)
            if self._http is not None:
                metrics.count_locks(self._http.held_writers)
            # Last: nothing after it can fail and leave its server running.
            metrics.serve()

    def _listen(self, address: str) -> str:
        path = _socket_path(address)
        if path is None:
            if self._credentials is not None:
                port = self._server.add_secure_port(address, self._credentials)
            else:
                port = self._server.add_insecure_port(address)
            if port == 0:
                raise FailedPrecondition(f"cannot listen on {address}")
            host = address.rsplit(":", 1)[0]
            return f"{host}:{port}"
        path = path.absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        _clear_stale_socket(path)
        # The socket is created with the process umask; narrow it for the
        # bind so the file never exists with wider permissions than 0660.
        previous = os.umask(0o777 & ~SOCKET_MODE)
        try:
            bound = self._server.add_insecure_port(f"unix://{path}")
        finally:
            os.umask(previous)
        if bound == 0:
            raise FailedPrecondition(f"cannot listen on unix://{path}")
        os.chmod(path, SOCKET_MODE)
        if self._options.socket_group:
            group = self._options.socket_group
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
            os.chown(path, -1, gid)
        self._sockets.append(path)
        return f"unix://{path}"

    def start(self) -> None:
        """Start serving; logs one line per listening address once ready."""
        if self._metrics is not None and self._options.metrics is not None:
            if not is_loopback(self._options.metrics):
                _log.warning(
                    "serving metrics on %s, beyond this host: anyone who can reach it can read "
                    "them",
                    self._metrics.url,
                )
            _log.info("serving metrics on %s", self._metrics.url)
        if self._http is not None and self._options.http is not None:
            self._http.start()
            if self._http.url.startswith("http:") and not is_loopback(self._options.http.address):
                _log.warning(
                    "serving the registry over plaintext HTTP on %s: use --tls-cert/--tls-key",
                    self._http.url,
                )
            _log.info("serving HTTP on %s", self._http.url)
        self._server.start()
        if self._relay is not None:
            self._relay.start()
        self._collections.start()
        self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        for service in self._services:
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        tls = self._options.tls
        if tls is not None:
            clients = f"; clients need a certificate from {tls.client_ca}" if tls.client_ca else ""
            _log.info("TCP addresses serve TLS with %s%s", tls.cert, clients)
        for address in self.addresses:
            if tls is None and _socket_path(address) is None and not is_loopback(address):
                _log.warning(
                    "serving plaintext on %s: anyone who can reach it can read and write the "
                    "store; use --tls-cert/--tls-key",
                    address,
                )
            passed = " (socket passed by systemd)" if address in self._activated else ""
            _log.info("serving on %s%s", address, passed)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, give running ones `grace` seconds, then cancel the rest.

        Canceled Write streams close their writers, so every lock is released
        and every ingest kept for resuming. Returns once every handler has
        finished, so the store can be closed safely afterwards.
        """
        if self._stopped.is_set():
            return
        self._health.enter_graceful_shutdown()
        if self._http is not None:
            self._http.stop()
        grace = self._options.grace if grace is None else grace
        if self._relay is not None:
            self._relay.stop_accepting()
        # A pull may run for minutes: it stops now, its ingests kept for the next to resume.
        if self._transfers is not None:
            self._transfers.stop()
        self._server.stop(grace).wait()
        # gRPC's stop returns while the threads of canceled calls are still
        # unwinding (closing writers, recording progress); the store must
        # outlive them.
        self._executor.shutdown(wait=True)
        if self._relay is not None:
            self._relay.close()
        self._content.close()
        self._collections.stop()
        if self._metrics is not None:
            self._metrics.stop()
        for path in self._sockets:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._stopped.set()
        _log.info("stopped")

    def wait(self) -> None:
        """Block until `stop` has finished."""
        self._stopped.wait()

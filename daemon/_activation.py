"""systemd socket activation: the unix sockets systemd listens on for us, and how they are served.

systemd binds the socket (contentd.socket), starts the daemon on the first connection and
passes the listening socket as descriptor 3 on, with LISTEN_FDS (how many) and LISTEN_PID
(our pid) in the environment (sd_listen_fds(3)). The socket stays systemd's: connections
that arrive while the daemon restarts wait in its queue for the next one.

grpcio cannot serve a listening descriptor it did not create: its Python API takes
addresses only, and its wheels are built without the core's systemd support
(grpc/grpc#19133, #30485). Binding the socket's path anew would take it from systemd
and strand the connection that started us. So the daemon accepts on systemd's socket
itself and relays each connection to the gRPC server on a private unix socket, in a
directory only the daemon's user may enter: a copy through the daemon per byte, for
sockets that behave exactly as systemd's contract says.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import socket
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from contentd.errdefs import InvalidArgument

#: The first descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START: Final = 3
#: The environment of socket activation; read once, then removed, as sd_listen_fds(1) does,
#: so that no child process takes the sockets for its own.
ACTIVATION_ENVIRONMENT: Final = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
#: Bytes a relay moves per read.
_RELAY_CHUNK: Final = 1 << 20

_log = logging.getLogger("contentd.daemon")


def inherited_sockets() -> list[socket.socket]:
    """The listening unix sockets systemd passed this process; none when it passed none.

    Descriptors passed to another process (LISTEN_PID not ours) are not ours to take.
    InvalidArgument when the environment is malformed or a descriptor is no listening
    unix stream socket: a unit that passes a TCP socket is refused, not half served.
    """
    count, pid = os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_PID")
    for name in ACTIVATION_ENVIRONMENT:
        os.environ.pop(name, None)
    if count is None or pid != str(os.getpid()):
        return []
    if not count.isdigit():
        raise InvalidArgument(f"socket activation: LISTEN_FDS={count[:20]!r} is no count")
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            raise InvalidArgument(f"socket activation: descriptor {fd} is no socket") from None
        # No child of ours inherits it (systemd passes it without close-on-exec).
        sock.set_inheritable(False)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
            raise InvalidArgument(
                f"socket activation: descriptor {fd} is no listening unix stream socket "
                "(only ListenStream= unix sockets can be passed to contentd)"
            )
        sockets.append(sock)
    return sockets


def socket_address(sock: socket.socket) -> str:
    """The address a client gives for the listening unix socket `sock`."""
    name = sock.getsockname()
    if isinstance(name, bytes):  # an abstract socket: "\0name"
        return f"unix-abstract:{name[1:].decode(errors='replace')}"
    return f"unix://{name}"


class _Connection:
    """One client connection and its twin on the gRPC server, relayed both ways by two
    threads; the second to finish closes both sockets."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self._running = 2
        self._lock = threading.Lock()

    def start(self) -> None:
        for source, sink in ((self.client, self.server), (self.server, self.client)):
            threading.Thread(
                target=self._pump, args=(source, sink), name="contentd-relay", daemon=True
            ).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        buffer = bytearray(_RELAY_CHUNK)
        view = memoryview(buffer)
        try:
            while received := source.recv_into(buffer):
                sink.sendall(view[:received])
            # The one side finished sending: tell the other, which may still answer.
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            # A reset or a close on either side ends both directions.
            self.cut()
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            self.client.close()
            self.server.close()

    def cut(self) -> None:
        """End both directions at once (a peer vanished, or the daemon stops)."""
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class SocketRelay:
    """Serves systemd's listening sockets through a private unix socket the gRPC server
    listens on: `private_address` for the server, then `start`, `stop_accepting`, `close`."""

    def __init__(self, listeners: Sequence[socket.socket]) -> None:
        self._listeners = list(listeners)
        # mkdtemp makes the directory 0700: no other user reaches the server behind it.
        self._directory = Path(tempfile.mkdtemp(prefix="contentd-"))
        self._target = str(self._directory / "grpc.sock")
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._accept, name="contentd-accept", daemon=True)

    @property
    def private_address(self) -> str:
        """The address the gRPC server listens on for the relayed connections."""
        return f"unix://{self._target}"

    def start(self) -> None:
        """Accept on systemd's sockets from now on."""
        self._thread.start()

    def _accept(self) -> None:
        with selectors.DefaultSelector() as selector:
            for listener in self._listeners:
                listener.setblocking(False)
                selector.register(listener, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj == self._wake_read:
                        return
                    assert isinstance(key.fileobj, socket.socket)
                    self._relay(key.fileobj)

    def _relay(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return  # gone from the queue before we took it
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.connect(self._target)
        except OSError as exc:
            _log.warning("cannot relay a connection to the gRPC server: %s", exc.strerror)
            client.close()
            server.close()
            return
        connection = _Connection(client, server)
        with self._lock:
            self._connections = {known for known in self._connections if known.client.fileno() >= 0}
            self._connections.add(connection)
        connection.start()

    def stop_accepting(self) -> None:
        """Leave new connections in systemd's queue, for the daemon it starts next."""
        if self._thread.is_alive():
            os.write(self._wake_write, b"x")
            self._thread.join()

    def close(self) -> None:
        """Cut the connections still relayed and let go of the sockets (systemd keeps its own)."""
        self.stop_accepting()
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            connection.cut()
        for listener in self._listeners:
            listener.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        shutil.rmtree(self._directory, ignore_errors=True)

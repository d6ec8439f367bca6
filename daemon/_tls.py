"""TLS on the daemon's TCP listeners: certificates from PEM files, reloaded when they change.

Unix sockets stay plaintext: their file mode decides who may connect. On TCP
anyone who can reach the port can, so a plaintext listener that is not on the
loopback interface is worth a warning (`is_loopback`).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from contentd.errdefs import InvalidArgument

_log = logging.getLogger("contentd.daemon")

#: What identifies a version of a file: a rotation changes at least one of them.
_FileStamp = tuple[int, int, int]


def is_loopback(address: str) -> bool:
    """Whether a ``host:port`` listening address accepts connections from this machine only."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # A name may resolve anywhere, and an empty host means every interface.
        return False


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"TLS {what} {path}: {exc.strerror}") from None


def _refuse_encrypted_key() -> bytes:
    # ssl would otherwise prompt on the terminal; gRPC cannot use such a key at all.
    raise InvalidArgument("the key is encrypted; the daemon needs an unencrypted key")


def _check_certificates(data: bytes, path: Path, what: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=data.decode("ascii", "replace")
        )
    except ssl.SSLError:
        raise InvalidArgument(f"TLS {what} {path}: no PEM certificate in it") from None


@dataclass(frozen=True)
class _Loaded:
    cert: bytes
    key: bytes
    client_ca: bytes | None
    #: A server context holding the same pair (and client CAs), for the HTTP face.
    context: ssl.SSLContext

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key, self.cert)], root_certificates=self.client_ca
        )


@dataclass(frozen=True)
class TLSFiles:
    """The PEM files TCP listeners serve TLS with.

    `cert` holds the daemon's certificate chain, `key` its unencrypted private
    key; with `client_ca`, clients must present a certificate signed by one of
    its certificates (mutual TLS). The files are read again when they change,
    so a rotated certificate serves new connections without a restart, on the
    gRPC listeners and on the registry alike.
    """

    cert: Path
    key: Path
    client_ca: Path | None = None

    def check(self) -> None:
        """Read and check the files; InvalidArgument says what is wrong with them."""
        self._load()

    def _load(self) -> _Loaded:
        cert = _read(self.cert, "certificate")
        key = _read(self.key, "key")
        _check_certificates(cert, self.cert, "certificate")
        client_ca = None
        if self.client_ca is not None:
            client_ca = _read(self.client_ca, "client CA")
            _check_certificates(client_ca, self.client_ca, "client CA")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key, password=_refuse_encrypted_key)
        except InvalidArgument as exc:
            raise InvalidArgument(f"TLS key {self.key}: {exc.message}") from None
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise InvalidArgument(
                    f"TLS key {self.key} does not belong to certificate {self.cert}"
                ) from None
            raise InvalidArgument(f"TLS key {self.key}: no PEM private key in it") from None
        except OSError as exc:
            raise InvalidArgument(f"TLS key {self.key}: {exc.strerror}") from None
        if client_ca is not None:
            context.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
            context.verify_mode = ssl.CERT_REQUIRED
        return _Loaded(cert, key, client_ca, context)

    def _stamps(self) -> tuple[_FileStamp, ...] | None:
        stamps = []
        for path in (self.cert, self.key, self.client_ca):
            if path is None:
                continue
            try:
                status = os.stat(path)
            except OSError:
                return None
            stamps.append((status.st_ino, status.st_mtime_ns, status.st_size))
        return tuple(stamps)

    @functools.cached_property
    def _follower(self) -> _Follower:
        # One for both faces, so a rotation is read (and logged) once.
        return _Follower(self)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for `grpc.Server.add_secure_port`, following changes to the files."""
        follower = self._follower
        served = follower.current()

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            loaded = follower.current()
            if loaded is served:
                return None
            served = loaded
            return loaded.configuration()

        return grpc.dynamic_ssl_server_credentials(
            served.configuration(),
            # The stubs miss that None keeps the current configuration.
            fetch,  # type: ignore[arg-type]
            require_client_authentication=self.client_ca is not None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A server context for asyncio's TLS, following changes to the files."""
        return _FollowingContext.following(self._follower)


class _Follower:
    """The files as last loaded, loaded again when they change.

    Files caught mid-rotation (a new certificate beside the old key) fail to
    load: the current pair stays until the next change completes it.
    """

    def __init__(self, files: TLSFiles) -> None:
        self._files = files
        self._guard = threading.Lock()
        self._stamps = files._stamps()
        self._current = files._load()

    def current(self) -> _Loaded:
        """The files as they are now, loaded again if they changed since the last look."""
        with self._guard:
            stamps = self._files._stamps()
            if stamps is None or stamps == self._stamps:
                return self._current
            self._stamps = stamps
            try:
                loaded = self._files._load()
            except InvalidArgument as exc:
                _log.warning("keeping the current TLS certificate: %s", exc.message)
                return self._current
            self._current = loaded
        _log.info("reloaded the TLS certificate from %s", self._files.cert)
        return loaded


class _FollowingContext(ssl.SSLContext):
    """An SSLContext whose every new connection is served by the files as they are then.

    asyncio starts each server-side connection with `wrap_bio`, as gRPC asks
    its fetcher before each handshake; a context cannot drop a client CA once
    loaded, so each change makes a whole new context rather than amend this one.
    """

    _follower: _Follower

    @classmethod
    def following(cls, follower: _Follower) -> _FollowingContext:
        context = cls(ssl.PROTOCOL_TLS_SERVER)
        context._follower = follower
        return context

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return self._follower.current().context.wrap_bio(
            incoming, outgoing, server_side, server_hostname, session
        )

"""TLS for RemoteStore: which certificates may sign the daemon's, and the client's own."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from contentd.errdefs import InvalidArgument

#: A file name, as a string or a path.
StrPath = str | os.PathLike[str]


def _read(path: StrPath, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"TLS {what} {os.fspath(path)}: {exc.strerror}") from None


def _refuse_encrypted_key() -> bytes:
    # ssl would otherwise prompt on the terminal; gRPC cannot use such a key at all.
    raise InvalidArgument("the key is encrypted; gRPC needs an unencrypted key")


@dataclass(frozen=True)
class TLSConfig:
    """How a RemoteStore speaks TLS to a daemon on a TCP address.

    `ca` is a PEM file of the certificates that may sign the daemon's (None
    trusts the system's roots). `cert` and `key`, both or neither, are PEM
    files of this client's certificate chain and unencrypted private key, for
    daemons that require client certificates (mutual TLS). `server_name` is the
    name the daemon's certificate must be valid for, when it differs from the
    address's host.

        RemoteStore("store.example:7443", tls=TLSConfig(ca="ca.pem"))
    """

    ca: StrPath | None = None
    cert: StrPath | None = None
    key: StrPath | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise InvalidArgument("a TLS client certificate and its key go together: give both")

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Read the files into gRPC credentials; InvalidArgument says what is wrong with them."""
        ca = None
        if self.ca is not None:
            ca = _read(self.ca, "CA")
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
                    cadata=ca.decode("ascii", "replace")
                )
            except ssl.SSLError:
                raise InvalidArgument(
                    f"TLS CA {os.fspath(self.ca)}: no PEM certificate in it"
                ) from None
        if self.cert is None or self.key is None:
            return grpc.ssl_channel_credentials(ca)
        cert = _read(self.cert, "certificate")
        key = _read(self.key, "key")
        named = f"TLS certificate {os.fspath(self.cert)} and key {os.fspath(self.key)}"
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
                self.cert, self.key, password=_refuse_encrypted_key
            )
        except InvalidArgument as exc:
            raise InvalidArgument(f"TLS key {os.fspath(self.key)}: {exc.message}") from None
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise InvalidArgument(f"{named} do not belong together") from None
            raise InvalidArgument(f"{named}: not a PEM certificate chain and key") from None
        return grpc.ssl_channel_credentials(ca, private_key=key, certificate_chain=cert)

    def channel_options(self) -> list[tuple[str, str]]:
        """The channel options `server_name` asks for."""
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]

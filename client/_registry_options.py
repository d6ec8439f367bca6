"""How to reach registries (`RegistryOptions`), apart from the client that uses them.

A pull through a daemon checks these options and sends them on without
loading an HTTP client: the daemon does the fetching.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from contentd.errdefs import InvalidArgument

if TYPE_CHECKING:
    from ._auth import Credentials


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries: plain HTTP (local ones), which CAs to trust, whose credentials.

    `tls_ca` is a PEM file of certificates that may sign a registry's, or
    `tls_ca_pem` the certificates themselves (None: the system's). Credentials
    come from `auth_file` if given, else from the usual auth files (see
    `contentd.client._auth`); `credentials` overrides both. Without
    `read_auth_files` no auth file is read: a daemon pulling for a caller uses
    the credentials the caller sent, never the files of its own user.
    """

    plain_http: bool = False
    tls_ca: str | os.PathLike[str] | None = None
    auth_file: str | os.PathLike[str] | None = None
    credentials: Credentials | None = None
    tls_ca_pem: bytes | None = None
    read_auth_files: bool = True
    connect_timeout: float = 30.0
    #: Seconds a read may wait for the next bytes before the transfer fails.
    read_timeout: float = 300.0

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.plain_http:
            return None
        if self.tls_ca_pem is not None:
            try:
                return ssl.create_default_context(cadata=self.tls_ca_pem.decode("ascii", "replace"))
            except ssl.SSLError:
                raise InvalidArgument("TLS CA: no PEM certificate in it") from None
        try:
            return ssl.create_default_context(
                cafile=os.fspath(self.tls_ca) if self.tls_ca is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgument(f"TLS CA file {self.tls_ca}: {exc}") from None

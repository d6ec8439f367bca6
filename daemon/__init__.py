"""The gRPC daemon: containerd's Content service over a content store.

`Daemon` serves a store (any `Store` that lists its records and keeps repositories) on
unix sockets and TCP addresses, with the gRPC health and reflection services beside it;
`contentd serve` runs one.
"""

from contentd.content import default_root
from contentd.proto.wire import (
    CONTENT_SERVICE,
    MAX_MESSAGE_BYTES,
    NAMESPACE_HEADER,
    default_address,
    info_message,
    status_message,
)

from ._server import Daemon, ServerOptions
from ._service import ContentService

__all__ = [
    "CONTENT_SERVICE",
    "MAX_MESSAGE_BYTES",
    "NAMESPACE_HEADER",
    "ContentService",
    "Daemon",
    "ServerOptions",
    "default_address",
    "default_root",
    "info_message",
    "status_message",
]

"""What a request's metadata says: the namespace it works in, and the lease it writes under."""

from __future__ import annotations

import grpc

from contentd.errdefs import FailedPrecondition
from contentd.proto.wire import LEASE_HEADER, NAMESPACE_HEADER


def request_headers(context: grpc.ServicerContext) -> tuple[str, str | None]:
    """The request's namespace and lease, as containerd's clients send them.

    The namespace is required (FailedPrecondition without it, as containerd
    answers). The lease is None when the header is absent; a header present
    but empty names the lease "", which exists nowhere (as in containerd).
    """
    namespace = ""
    lease: str | None = None
    for key, value in context.invocation_metadata() or ():
        if not isinstance(value, str):
            continue
        if key == NAMESPACE_HEADER and not namespace:
            namespace = value
        elif key == LEASE_HEADER and lease is None:
            lease = value
    if not namespace:
        raise FailedPrecondition("namespace is required")
    return namespace, lease


def request_namespace(context: grpc.ServicerContext) -> str:
    """The request's namespace (see `request_headers`)."""
    return request_headers(context)[0]

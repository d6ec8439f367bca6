"""contentd's one error taxonomy, mapped to gRPC codes and HTTP statuses and back.

Raise a class with a message saying what was being done::

    raise NotFound(f"content {digest}")        # "content sha256:...: not found"
    raise Unavailable(f"ref {ref} locked", reason="REF_LOCKED", metadata={"ref": ref})

Tell classes apart with `classify` or the ``is_*`` helpers, which look
through ``raise ... from ...`` chains. The classes, their gRPC codes, HTTP
statuses and when the store raises each are documented in one place,
docs/errors.md, generated from this package (``python -m contentd.errdefs``).

At a server boundary, `to_grpc_status` and `to_http` turn any exception into
an answer (unclassified ones into a generic Internal error with a logged id);
clients decode answers with `from_grpc` and `from_http`. Decoded errors are
also instances of `RemoteError`, whose words a server does not pass on.
"""

from typing import TYPE_CHECKING

from ._classes import (
    ERROR_CLASSES,
    Aborted,
    AlreadyExists,
    Canceled,
    Conflict,
    ContentdError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    NotModified,
    OutOfRange,
    PermissionDenied,
    RemoteError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    classify,
    find,
    is_aborted,
    is_already_exists,
    is_canceled,
    is_conflict,
    is_data_loss,
    is_deadline_exceeded,
    is_failed_precondition,
    is_internal,
    is_invalid_argument,
    is_not_found,
    is_not_modified,
    is_out_of_range,
    is_permission_denied,
    is_resource_exhausted,
    is_unauthenticated,
    is_unavailable,
    is_unimplemented,
    is_unknown,
    rebase,
    wrap,
)
from ._http import (
    CLASS_DESCRIPTORS,
    DESCRIPTORS,
    REASON_DESCRIPTORS,
    REASONS,
    REGISTRY_DESCRIPTORS,
    ErrorDescriptor,
    HttpError,
    descriptor_for,
    from_http,
    to_http,
)
from ._public import INTERNAL_ERROR_REASON, public_error

if TYPE_CHECKING:
    from ._grpc import (
        ERROR_DOMAIN,
        STATUS_DETAILS_KEY,
        GrpcStatus,
        from_grpc,
        from_grpc_parts,
        to_grpc_status,
    )

# The gRPC mapping loads grpc and protobuf; the store raises these classes in
# processes that speak no gRPC, so its names are imported on first use.
_GRPC_NAMES = frozenset(
    {
        "ERROR_DOMAIN",
        "STATUS_DETAILS_KEY",
        "GrpcStatus",
        "from_grpc",
        "from_grpc_parts",
        "to_grpc_status",
    }
)

#: The reason of an Unavailable error for a ref another writer holds.
REF_LOCKED = "REF_LOCKED"
#: Reasons of the ResourceExhausted errors refusing a Write stream beyond the
#: daemon's limit, and beyond its namespace's: both pass once streams end.
TOO_MANY_WRITE_STREAMS = "TOO_MANY_WRITE_STREAMS"
TOO_MANY_INGESTS = "TOO_MANY_INGESTS"
#: The reason of the ResourceExhausted error refusing a pull the daemon would fetch
#: beyond its limit of transfers at once; it passes once transfers end.
TOO_MANY_TRANSFERS = "TOO_MANY_TRANSFERS"

__all__ = [
    "CLASS_DESCRIPTORS",
    "DESCRIPTORS",
    "ERROR_CLASSES",
    "ERROR_DOMAIN",
    "INTERNAL_ERROR_REASON",
    "REASONS",
    "REASON_DESCRIPTORS",
    "REF_LOCKED",
    "REGISTRY_DESCRIPTORS",
    "STATUS_DETAILS_KEY",
    "TOO_MANY_INGESTS",
    "TOO_MANY_TRANSFERS",
    "TOO_MANY_WRITE_STREAMS",
    "Aborted",
    "AlreadyExists",
    "Canceled",
    "Conflict",
    "ContentdError",
    "DataLoss",
    "DeadlineExceeded",
    "ErrorDescriptor",
    "FailedPrecondition",
    "GrpcStatus",
    "HttpError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "NotModified",
    "OutOfRange",
    "PermissionDenied",
    "RemoteError",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "classify",
    "descriptor_for",
    "find",
    "from_grpc",
    "from_grpc_parts",
    "from_http",
    "is_aborted",
    "is_already_exists",
    "is_canceled",
    "is_conflict",
    "is_data_loss",
    "is_deadline_exceeded",
    "is_failed_precondition",
    "is_internal",
    "is_invalid_argument",
    "is_not_found",
    "is_not_modified",
    "is_out_of_range",
    "is_permission_denied",
    "is_resource_exhausted",
    "is_unauthenticated",
    "is_unavailable",
    "is_unimplemented",
    "is_unknown",
    "public_error",
    "rebase",
    "to_grpc_status",
    "to_http",
    "wrap",
]


if not TYPE_CHECKING:  # mypy would read every unknown name as this function's answer

    def __getattr__(name: str) -> object:
        if name in _GRPC_NAMES:
            from . import _grpc  # noqa: PLC0415

            value = getattr(_grpc, name)
            globals()[name] = value
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_GRPC_NAMES})

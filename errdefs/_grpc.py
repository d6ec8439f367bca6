"""gRPC mapping, both ways: errors to status codes with ErrorInfo details, and back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from ._classes import (
    ERROR_CLASSES,
    Conflict,
    ContentdError,
    FailedPrecondition,
    NotModified,
    Unknown,
    rebase,
    remote_class,
)
from ._public import public_error

#: The trailing-metadata key gRPC uses for a serialized google.rpc.Status.
STATUS_DETAILS_KEY = "grpc-status-details-bin"
#: The ErrorInfo domain of errors contentd raises.
ERROR_DOMAIN = "contentd"
_BY_CODE: dict[grpc.StatusCode, type[ContentdError]] = {}
for _cls in ERROR_CLASSES:
    # Conflict and NotModified share FailedPrecondition's code; the first
    # class listed for a code is the one a bare code decodes to.
    _BY_CODE.setdefault(_cls.grpc_code, _cls)

# StatusCode values are (int, name) pairs.
_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class GrpcStatus(grpc.Status):
    """A status ready for ``context.abort_with_status`` (sync) or ``context.abort`` (asyncio)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, bytes], ...] = field(default=())


def to_grpc_status(err: BaseException, *, passthrough_remote: bool = False) -> GrpcStatus:
    """Map any exception to the status a server should answer with.

    The error shown is `public_error(err)`: a classified error keeps its class,
    message, reason and metadata (reason and metadata in a google.rpc.ErrorInfo
    detail); anything else becomes INTERNAL with a generic message and a logged
    error id.
    """
    return _status_for(public_error(err, passthrough_remote=passthrough_remote))


def _status_for(err: ContentdError) -> GrpcStatus:
    message = str(err)
    code = err.grpc_code
    trailing: tuple[tuple[str, bytes], ...] = ()
    if err.reason is not None or err.metadata:
        info = error_details_pb2.ErrorInfo(
            reason=err.reason or "", domain=ERROR_DOMAIN, metadata=err.metadata
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
        trailing = ((STATUS_DETAILS_KEY, status.SerializeToString()),)
    return GrpcStatus(code=code, details=message, trailing_metadata=trailing)


class _RpcErrorLike(Protocol):
    def code(self) -> grpc.StatusCode: ...

    def details(self) -> str | None: ...

    def trailing_metadata(self) -> object: ...


def from_grpc(err: _RpcErrorLike) -> ContentdError:
    """Decode a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``).

    The result is an instance of the class the code maps to, with the message
    rebased (no ``: not found: not found``), reason and metadata restored from
    the ErrorInfo detail, and marked as a RemoteError.
    """
    return from_grpc_parts(err.code(), err.details() or "", _details_blob(err.trailing_metadata()))


def from_grpc_parts(
    code: grpc.StatusCode | int, message: str, details: bytes | None = None
) -> ContentdError:
    """Decode a status from its code, message and serialized google.rpc.Status."""
    if isinstance(code, int):
        code = _BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    cls = _class_for(code, message)
    reason: str | None = None
    metadata: dict[str, str] = {}
    info = _error_info(details)
    if info is not None:
        reason = info.reason or None
        metadata = dict(info.metadata)
    return remote_class(cls)(rebase(cls, message), reason=reason, metadata=metadata)


def _class_for(code: grpc.StatusCode, message: str) -> type[ContentdError]:
    cls = _BY_CODE.get(code, Unknown)
    if cls is FailedPrecondition:
        # containerd's rule: these two share a code and differ by their words.
        for special in (Conflict, NotModified):
            if message == special.description or message.endswith(": " + special.description):
                return special
    return cls


def _details_blob(trailing: object) -> bytes | None:
    if not trailing:
        return None
    entries: Sequence[tuple[str, str | bytes]]
    try:
        entries = list(trailing)  # type: ignore[call-overload]  # sync tuples or aio Metadata
    except TypeError:
        return None
    for entry in entries:
        key, value = entry[0], entry[1]
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def _error_info(details: bytes | None) -> error_details_pb2.ErrorInfo | None:
    if not details:
        return None
    status = status_pb2.Status()
    try:
        status.ParseFromString(details)
    except DecodeError:  # a peer's malformed detail must not mask its error
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info
    return None

"""HTTP mapping, both ways: one table of error descriptors, registry-style JSON bodies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ._classes import (
    ERROR_CLASSES,
    AlreadyExists,
    Canceled,
    Conflict,
    ContentdError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    NotModified,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    rebase,
    remote_class,
)
from ._public import public_error


@dataclass(frozen=True)
class ErrorDescriptor:
    """One HTTP error code: what it is called, says and means, its status and class."""

    code: str
    message: str
    description: str
    http_status: int
    error_class: type[ContentdError]
    #: The error reason this entry answers, when the code's usual status does
    #: not fit it: BLOB_UPLOAD_INVALID is 400, but 416 for a chunk out of order.
    reason: str | None = None


def _class_descriptor(cls: type[ContentdError]) -> ErrorDescriptor:
    when = (cls.__doc__ or "").strip().splitlines()[0]
    return ErrorDescriptor(cls.http_code, cls.description, when, cls.http_status, cls)


#: The general descriptor of each error class, used when no registry code fits.
CLASS_DESCRIPTORS: tuple[ErrorDescriptor, ...] = tuple(map(_class_descriptor, ERROR_CLASSES))

#: The OCI distribution API's codes (docker distribution's errcode table) that
#: are not already a class's general code.
REGISTRY_DESCRIPTORS: tuple[ErrorDescriptor, ...] = (
    ErrorDescriptor(
        "BLOB_UNKNOWN",
        "blob unknown to registry",
        "The blob is not in the repository.",
        404,
        NotFound,
    ),
    ErrorDescriptor(
        "BLOB_UPLOAD_INVALID",
        "blob upload invalid",
        "The upload failed; the client may retry it from the start.",
        400,
        InvalidArgument,
    ),
    ErrorDescriptor(
        "BLOB_UPLOAD_UNKNOWN",
        "blob upload unknown to registry",
        "No upload session with that id; it was completed, canceled or never started.",
        404,
        NotFound,
    ),
    ErrorDescriptor(
        "DIGEST_INVALID",
        "provided digest did not match uploaded content",
        "The digest is malformed, or the uploaded bytes do not hash to it.",
        400,
        InvalidArgument,
    ),
    # NotFound to Python and gRPC callers, but 400 on HTTP: docker-registry's status,
    # which registry clients know (the spec names none).
    ErrorDescriptor(
        "MANIFEST_BLOB_UNKNOWN",
        "manifest references a manifest or blob unknown to registry",
        "A manifest was pushed before a blob or manifest it references.",
        400,
        NotFound,
    ),
    ErrorDescriptor(
        "MANIFEST_INVALID",
        "manifest invalid",
        "The manifest could not be parsed or does not validate.",
        400,
        InvalidArgument,
    ),
    ErrorDescriptor(
        "MANIFEST_UNKNOWN",
        "manifest unknown",
        "No manifest with that tag or digest in the repository.",
        404,
        NotFound,
    ),
    ErrorDescriptor(
        "NAME_INVALID",
        "invalid repository name",
        "The repository name is not a valid distribution name.",
        400,
        InvalidArgument,
    ),
    ErrorDescriptor(
        "NAME_UNKNOWN",
        "repository name not known to registry",
        "No repository with that name.",
        404,
        NotFound,
    ),
    ErrorDescriptor(
        "SIZE_INVALID",
        "provided length did not match content length",
        "The Content-Length or the upload's size does not match the content.",
        400,
        InvalidArgument,
    ),
    ErrorDescriptor(
        "UNSUPPORTED",
        "the operation is unsupported",
        "The method or parameter is not supported (for example pushing in read-only mode).",
        405,
        Unimplemented,
    ),
    ErrorDescriptor(
        "BLOB_EXISTS",
        "blob already exists",
        "The blob is already stored; nothing was written.",
        409,
        AlreadyExists,
    ),
)

#: Answers chosen by an error's reason: a code of the spec's table with a status
#: its entry above does not give, for errors the spec has no code of their own for.
REASON_DESCRIPTORS: tuple[ErrorDescriptor, ...] = (
    ErrorDescriptor(
        "BLOB_UPLOAD_INVALID",
        "blob upload invalid",
        "A chunk's Content-Range is malformed or does not start at the upload's offset.",
        416,
        OutOfRange,
        reason="RANGE_INVALID",
    ),
    ErrorDescriptor(
        "UNSUPPORTED",
        "the operation is unsupported",
        "A blob read's Range lies wholly beyond the blob's end.",
        416,
        OutOfRange,
        reason="RANGE_NOT_SATISFIABLE",
    ),
    ErrorDescriptor(
        "UNSUPPORTED",
        "the operation is unsupported",
        "The page size `n` of a listing is not a whole number.",
        400,
        InvalidArgument,
        reason="PAGINATION_NUMBER_INVALID",
    ),
    ErrorDescriptor(
        "MANIFEST_INVALID",
        "manifest invalid",
        "The manifest is larger than the registry accepts.",
        413,
        InvalidArgument,
        reason="MANIFEST_TOO_LARGE",
    ),
)

#: Every descriptor by its code: the single table handlers, docs and clients read.
DESCRIPTORS: dict[str, ErrorDescriptor] = {
    d.code: d for d in (*CLASS_DESCRIPTORS, *REGISTRY_DESCRIPTORS)
}
#: The entries chosen by reason, by that reason.
REASONS: dict[str, ErrorDescriptor] = {d.reason: d for d in REASON_DESCRIPTORS if d.reason}
# How an answer decodes: its code and status together, where a reason's entry
# gives that code another status and class.
_BY_CODE_AND_STATUS: dict[tuple[str, int], ErrorDescriptor] = {
    (d.code, d.http_status): d for d in (*DESCRIPTORS.values(), *REASON_DESCRIPTORS)
}

# A bare status (no body, as in answers to HEAD) decodes by this table, which
# follows containerd's errhttp. Statuses several classes share decode to one of
# them: 409 to Conflict, 500 to Internal.
_BY_STATUS: dict[int, type[ContentdError]] = {
    304: NotModified,
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    405: Unimplemented,
    409: Conflict,
    412: FailedPrecondition,
    416: OutOfRange,
    429: ResourceExhausted,
    499: Canceled,
    500: Internal,
    501: Unimplemented,
    503: Unavailable,
    504: DeadlineExceeded,
}


@dataclass(frozen=True)
class HttpError:
    """An error as an HTTP answer: status, JSON body and the descriptor chosen."""

    status: int
    body: bytes
    descriptor: ErrorDescriptor
    content_type: str = "application/json; charset=utf-8"


def descriptor_for(err: ContentdError, code: str | None = None) -> ErrorDescriptor:
    """The descriptor to answer `err` with.

    `code` (a handler's choice, such as BLOB_UNKNOWN) wins when it belongs to
    the error's class; then the error's reason if it selects an entry of its
    class (`REASONS`) or names a code of its class; else the class's general
    descriptor.
    """
    cls = err.error_class()
    for candidate in (code, err.reason):
        for table in (REASONS, DESCRIPTORS):
            descriptor = table.get(candidate or "")
            if descriptor is not None and descriptor.error_class is cls:
                return descriptor
    return DESCRIPTORS[cls.http_code]


def to_http(
    err: BaseException, *, code: str | None = None, passthrough_remote: bool = False
) -> HttpError:
    """Map any exception to an HTTP error answer.

    The body is ``{"errors": [{"code", "message", "detail"}]}``; the message is
    the error as text and the detail carries reason and metadata. Unclassified
    exceptions become a generic 500 with an error id (see `public_error`).
    """
    public = public_error(err, passthrough_remote=passthrough_remote)
    descriptor = descriptor_for(public, code)
    entry: dict[str, Any] = {"code": descriptor.code, "message": str(public)}
    detail: dict[str, Any] = {}
    if public.reason is not None:
        detail["reason"] = public.reason
    if public.metadata:
        detail["metadata"] = public.metadata
    if detail:
        entry["detail"] = detail
    body = json.dumps({"errors": [entry]}, ensure_ascii=False).encode()
    return HttpError(descriptor.http_status, body, descriptor)


def from_http(status: int, body: bytes | str | None = None) -> ContentdError:
    """Decode an HTTP error answer into its error class (marked as a RemoteError).

    The first entry of a registry-style body decides the class through its
    code; without a usable body the status decides. Messages are rebased,
    reason and metadata restored from the detail.
    """
    entry = _first_entry(body)
    descriptor = None
    if entry:
        code = str(entry.get("code", ""))
        descriptor = _BY_CODE_AND_STATUS.get((code, status)) or DESCRIPTORS.get(code)
    cls = descriptor.error_class if descriptor is not None else _BY_STATUS.get(status, Unknown)
    message = entry.get("message") if entry else None
    if not isinstance(message, str):
        message = descriptor.message if descriptor else ""
    reason: str | None = None
    metadata: dict[str, str] = {}
    detail = entry.get("detail") if entry else None
    if isinstance(detail, dict):
        if isinstance(detail.get("reason"), str):
            reason = detail["reason"]
        raw_metadata = detail.get("metadata")
        if isinstance(raw_metadata, dict):
            metadata = {str(k): str(v) for k, v in raw_metadata.items()}
    if reason is None and descriptor is not None and descriptor.code != cls.http_code:
        reason = descriptor.reason or descriptor.code  # keep which registry answer it was
    if cls is Unknown and descriptor is None:
        metadata.setdefault("http_status", str(status))
    return remote_class(cls)(rebase(cls, message), reason=reason, metadata=metadata)


def _first_entry(body: bytes | str | None) -> dict[str, Any] | None:
    if not body:
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(parsed, dict):
        return None
    errors = parsed.get("errors")
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None
    return errors[0]

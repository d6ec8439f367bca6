"""The error classes: one exception type per class, and the helpers that tell them apart."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    import grpc

_E = TypeVar("_E", bound="ContentdError")


class _GrpcCode:
    """A class's gRPC status code: named here, looked up in grpc when first read.

    The store raises these classes, and a process that only uses the store
    (a daemonless client) should not pay for loading grpc; only code that
    speaks gRPC reads the code, and it has grpc loaded already.
    """

    __slots__ = ("_code", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._code: grpc.StatusCode | None = None

    def __get__(self, instance: object, owner: type[object] | None = None) -> grpc.StatusCode:
        code = self._code
        if code is None:
            # Here, not at the top: see the class.
            import grpc  # noqa: PLC0415

            code = self._code = grpc.StatusCode[self._name]
        return code


class ContentdError(Exception):
    """Base of every error contentd raises on purpose.

    The class says what kind of failure it is and decides the gRPC code and
    HTTP status; the message says what was being done, for people. ``str()``
    joins them the way containerd does: ``content sha256:...: not found``.

    ``reason`` is an optional machine-readable UPPER_SNAKE_CASE word (for
    example ``REF_LOCKED``) and ``metadata`` optional string pairs (for example
    ``{"ref": "..."}``); both travel over gRPC in a ``google.rpc.ErrorInfo``
    detail and over HTTP in the error body's ``detail``.
    """

    #: The class's words, appended to the message: "not found".
    description: ClassVar[str] = "unknown"
    #: The gRPC status code this class maps to.
    grpc_code = _GrpcCode("UNKNOWN")
    #: The HTTP status this class maps to.
    http_status: ClassVar[int] = 500
    #: The class's own error code in HTTP error bodies, when no registry
    #: descriptor (such as BLOB_UNKNOWN) fits better.
    http_code: ClassVar[str] = "UNKNOWN"

    def __init__(
        self,
        message: str = "",
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        if not self.message:
            return self.description
        return f"{self.message}: {self.description}"

    def __repr__(self) -> str:
        extra = ""
        if self.reason is not None:
            extra += f", reason={self.reason!r}"
        if self.metadata:
            extra += f", metadata={self.metadata!r}"
        return f"{type(self).__name__}({self.message!r}{extra})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle their positional args only; keep reason and
        # metadata when errors cross process boundaries.
        return (_rebuild, (type(self), self.message, self.reason, self.metadata))

    @classmethod
    def error_class(cls) -> type[ContentdError]:
        """The canonical class in the taxonomy (a remote error's local class)."""
        for klass in cls.__mro__:
            if klass in _CANONICAL:
                return klass
        return Unknown


def _rebuild(cls: type[_E], message: str, reason: str | None, metadata: dict[str, str]) -> _E:
    return cls(message, reason=reason, metadata=metadata)


class Unknown(ContentdError):
    """The failure could not be classified; also what an unmapped remote code becomes."""

    description = "unknown"
    grpc_code = _GrpcCode("UNKNOWN")
    http_status = 500
    http_code = "UNKNOWN"


class InvalidArgument(ContentdError):
    """A request is malformed: a bad digest, ref, namespace, offset, label, filter or field path."""

    description = "invalid argument"
    grpc_code = _GrpcCode("INVALID_ARGUMENT")
    http_status = 400
    http_code = "INVALID_ARGUMENT"


class NotFound(ContentdError):
    """No committed blob with that digest, or no ingest with that ref, in the namespace."""

    description = "not found"
    grpc_code = _GrpcCode("NOT_FOUND")
    http_status = 404
    http_code = "NOT_FOUND"


class AlreadyExists(ContentdError):
    """The blob being written or committed is already stored in the namespace."""

    description = "already exists"
    grpc_code = _GrpcCode("ALREADY_EXISTS")
    http_status = 409
    http_code = "ALREADY_EXISTS"


class PermissionDenied(ContentdError):
    """The caller may not do this (a read-only store, a denied credential)."""

    description = "permission denied"
    grpc_code = _GrpcCode("PERMISSION_DENIED")
    http_status = 403
    http_code = "DENIED"


class ResourceExhausted(ContentdError):
    """The disk is full, or a limit on streams, ingests or message sizes was reached."""

    description = "resource exhausted"
    grpc_code = _GrpcCode("RESOURCE_EXHAUSTED")
    http_status = 429
    http_code = "TOOMANYREQUESTS"


class FailedPrecondition(ContentdError):
    """A commit does not match its expected size or digest, or a namespace is missing."""

    description = "failed precondition"
    grpc_code = _GrpcCode("FAILED_PRECONDITION")
    http_status = 412
    http_code = "FAILED_PRECONDITION"


class Conflict(ContentdError):
    """The change conflicts with the current state of the object."""

    description = "conflict"
    grpc_code = _GrpcCode("FAILED_PRECONDITION")
    http_status = 409
    http_code = "CONFLICT"


class NotModified(ContentdError):
    """The object is unchanged since the caller last saw it."""

    description = "not modified"
    grpc_code = _GrpcCode("FAILED_PRECONDITION")
    http_status = 304
    http_code = "NOT_MODIFIED"


class Aborted(ContentdError):
    """The operation was abandoned because of a concurrent change; retrying may succeed."""

    description = "aborted"
    grpc_code = _GrpcCode("ABORTED")
    http_status = 409
    http_code = "ABORTED"


class OutOfRange(ContentdError):
    """A read starts past the end of a blob, or a write is not at the ingest's offset."""

    description = "out of range"
    grpc_code = _GrpcCode("OUT_OF_RANGE")
    http_status = 416
    http_code = "OUT_OF_RANGE"


class Unimplemented(ContentdError):
    """The operation is not supported (for example truncating an ingest to a non-zero size)."""

    description = "not implemented"
    grpc_code = _GrpcCode("UNIMPLEMENTED")
    http_status = 501
    http_code = "UNIMPLEMENTED"


class Internal(ContentdError):
    """A bug or an unexpected failure; the caller sees only a generic message and an error id."""

    description = "internal"
    grpc_code = _GrpcCode("INTERNAL")
    http_status = 500
    http_code = "INTERNAL"


class Unavailable(ContentdError):
    """Locked ref (REF_LOCKED), busy store (STORE_BUSY) or failing disk (STORE_IO_ERROR); retry."""

    description = "unavailable"
    grpc_code = _GrpcCode("UNAVAILABLE")
    http_status = 503
    http_code = "UNAVAILABLE"


class DataLoss(ContentdError):
    """Stored bytes are missing (BLOB_MISSING), unreadable (BLOB_UNREADABLE) or corrupt."""

    description = "data loss"
    grpc_code = _GrpcCode("DATA_LOSS")
    http_status = 500
    http_code = "DATA_LOSS"


class Unauthenticated(ContentdError):
    """The request carries no valid credentials."""

    description = "unauthenticated"
    grpc_code = _GrpcCode("UNAUTHENTICATED")
    http_status = 401
    http_code = "UNAUTHORIZED"


class Canceled(ContentdError):
    """The caller canceled the operation."""

    description = "canceled"
    grpc_code = _GrpcCode("CANCELLED")
    http_status = 499
    http_code = "CANCELED"


class DeadlineExceeded(ContentdError):
    """The operation did not finish before its deadline."""

    description = "deadline exceeded"
    grpc_code = _GrpcCode("DEADLINE_EXCEEDED")
    http_status = 504
    http_code = "DEADLINE_EXCEEDED"


#: Every error class, in the order the documentation table lists them.
ERROR_CLASSES: tuple[type[ContentdError], ...] = (
    Unknown,
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Conflict,
    NotModified,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
    Canceled,
    DeadlineExceeded,
)
_CANONICAL = frozenset(ERROR_CLASSES)


class RemoteError(ContentdError):
    """Marks an error decoded from another service's answer.

    A remote error is also an instance of its class (``NotFound`` and so on),
    so callers handle it like any other; the marker lets a server decline to
    pass another service's words on to its own callers verbatim.
    """


_remote_classes: dict[type[ContentdError], type[ContentdError]] = {}


def remote_class(cls: type[ContentdError]) -> type[ContentdError]:
    """The remote variant of an error class: an instance of both it and RemoteError."""
    cls = cls.error_class()
    remote = _remote_classes.get(cls)
    if remote is None:
        remote = type(f"Remote{cls.__name__}", (cls, RemoteError), {"__module__": __name__})
        _remote_classes[cls] = remote
    return remote


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__


def find(err: BaseException | None) -> ContentdError | None:
    """The outermost ContentdError in `err`'s cause chain (``raise ... from ...``), if any."""
    for link in _chain(err):
        if isinstance(link, ContentdError):
            return link
    return None


def classify(err: BaseException | None) -> type[ContentdError] | None:
    """The error class of `err`, looking through its cause chain; None if it has none."""
    found = find(err)
    return None if found is None else found.error_class()


def wrap(err: _E, context: str) -> _E:
    """A new error of the same class whose message puts `context` in front.

    ``wrap(NotFound("content sha256:..."), "reading blob")`` reads
    ``reading blob: content sha256:...: not found``. Reason and metadata are
    kept and the original becomes the cause.
    """
    message = f"{context}: {err.message}" if err.message else context
    wrapped = type(err)(message, reason=err.reason, metadata=err.metadata)
    wrapped.__cause__ = err
    return wrapped


def _is(err: BaseException | None, cls: type[ContentdError]) -> bool:
    found = classify(err)
    return found is not None and issubclass(found, cls)


def is_unknown(err: BaseException | None) -> bool:
    """Whether `err` classifies as Unknown (see `classify`)."""
    return _is(err, Unknown)


def is_invalid_argument(err: BaseException | None) -> bool:
    """Whether `err` classifies as InvalidArgument (see `classify`)."""
    return _is(err, InvalidArgument)


def is_not_found(err: BaseException | None) -> bool:
    """Whether `err` classifies as NotFound (see `classify`)."""
    return _is(err, NotFound)


def is_already_exists(err: BaseException | None) -> bool:
    """Whether `err` classifies as AlreadyExists (see `classify`)."""
    return _is(err, AlreadyExists)


def is_permission_denied(err: BaseException | None) -> bool:
    """Whether `err` classifies as PermissionDenied (see `classify`)."""
    return _is(err, PermissionDenied)


def is_resource_exhausted(err: BaseException | None) -> bool:
    """Whether `err` classifies as ResourceExhausted (see `classify`)."""
    return _is(err, ResourceExhausted)


def is_failed_precondition(err: BaseException | None) -> bool:
    """Whether `err` classifies as FailedPrecondition (see `classify`)."""
    return _is(err, FailedPrecondition)


def is_conflict(err: BaseException | None) -> bool:
    """Whether `err` classifies as Conflict (see `classify`)."""
    return _is(err, Conflict)


def is_not_modified(err: BaseException | None) -> bool:
    """Whether `err` classifies as NotModified (see `classify`)."""
    return _is(err, NotModified)


def is_aborted(err: BaseException | None) -> bool:
    """Whether `err` classifies as Aborted (see `classify`)."""
    return _is(err, Aborted)


def is_out_of_range(err: BaseException | None) -> bool:
    """Whether `err` classifies as OutOfRange (see `classify`)."""
    return _is(err, OutOfRange)


def is_unimplemented(err: BaseException | None) -> bool:
    """Whether `err` classifies as Unimplemented (see `classify`)."""
    return _is(err, Unimplemented)


def is_internal(err: BaseException | None) -> bool:
    """Whether `err` classifies as Internal (see `classify`)."""
    return _is(err, Internal)


def is_unavailable(err: BaseException | None) -> bool:
    """Whether `err` classifies as Unavailable (see `classify`)."""
    return _is(err, Unavailable)


def is_data_loss(err: BaseException | None) -> bool:
    """Whether `err` classifies as DataLoss (see `classify`)."""
    return _is(err, DataLoss)


def is_unauthenticated(err: BaseException | None) -> bool:
    """Whether `err` classifies as Unauthenticated (see `classify`)."""
    return _is(err, Unauthenticated)


def is_canceled(err: BaseException | None) -> bool:
    """Whether `err` classifies as Canceled (see `classify`)."""
    return _is(err, Canceled)


def is_deadline_exceeded(err: BaseException | None) -> bool:
    """Whether `err` classifies as DeadlineExceeded (see `classify`)."""
    return _is(err, DeadlineExceeded)


def rebase(cls: type[ContentdError], message: str) -> str:
    """Strip the class's own words from the end of a received message.

    A message that crossed a boundary already ends in ``: not found``;
    decoding it into NotFound again must not read ``...: not found: not found``.
    """
    if message == cls.description:
        return ""
    suffix = ": " + cls.description
    return message.removesuffix(suffix)

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class CollectRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class CollectResponse(_message.Message):
    __slots__ = ("content", "leases", "ingests", "blobs", "bytes", "seconds", "dry_run")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    INGESTS_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    content: int
    leases: int
    ingests: int
    blobs: int
    bytes: int
    seconds: float
    dry_run: bool
    def __init__(self, content: _Optional[int] = ..., leases: _Optional[int] = ..., ingests: _Optional[int] = ..., blobs: _Optional[int] = ..., bytes: _Optional[int] = ..., seconds: _Optional[float] = ..., dry_run: _Optional[bool] = ...) -> None: ...

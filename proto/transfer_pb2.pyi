from . import images_pb2 as _images_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PullRequest(_message.Message):
    __slots__ = ("reference", "platform", "all_platforms", "name", "plain_http", "concurrency", "tls_ca", "credentials", "events")
    class Events(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ALL: _ClassVar[PullRequest.Events]
        STEPS: _ClassVar[PullRequest.Events]
        LAST: _ClassVar[PullRequest.Events]
    ALL: PullRequest.Events
    STEPS: PullRequest.Events
    LAST: PullRequest.Events
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    ALL_PLATFORMS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLAIN_HTTP_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    TLS_CA_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    reference: str
    platform: str
    all_platforms: bool
    name: str
    plain_http: bool
    concurrency: int
    tls_ca: bytes
    credentials: RegistryCredentials
    events: PullRequest.Events
    def __init__(self, reference: _Optional[str] = ..., platform: _Optional[str] = ..., all_platforms: _Optional[bool] = ..., name: _Optional[str] = ..., plain_http: _Optional[bool] = ..., concurrency: _Optional[int] = ..., tls_ca: _Optional[bytes] = ..., credentials: _Optional[_Union[RegistryCredentials, _Mapping]] = ..., events: _Optional[_Union[PullRequest.Events, str]] = ...) -> None: ...

class RegistryCredentials(_message.Message):
    __slots__ = ("username", "password")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class PullEvent(_message.Message):
    __slots__ = ("kind", "digest", "size", "media_type", "ref", "offset", "name", "reason", "image")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    digest: str
    size: int
    media_type: str
    ref: str
    offset: int
    name: str
    reason: str
    image: _images_pb2.Image
    def __init__(self, kind: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., media_type: _Optional[str] = ..., ref: _Optional[str] = ..., offset: _Optional[int] = ..., name: _Optional[str] = ..., reason: _Optional[str] = ..., image: _Optional[_Union[_images_pb2.Image, _Mapping]] = ...) -> None: ...

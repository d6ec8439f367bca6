"""The one place where exceptions become gRPC statuses, and where each request is logged."""

from __future__ import annotations

import functools
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Final, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from contentd.errdefs import InvalidArgument, to_grpc_status
from contentd.proto.wire import NAMESPACE_HEADER

_log = logging.getLogger("contentd.daemon")
#: Each served class's full gRPC service name, as `add_service` registered it: request
#: lines name the full method (/containerd.services.content.v1.Content/Info).
_SERVICE_NAMES: dict[type, str] = {}

_Service = TypeVar("_Service")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Message = TypeVar("_Message", bound=Message)

UnaryHandler = Callable[[_Service, _Request, grpc.ServicerContext], _Response]
StreamHandler = Callable[[_Service, _Request, grpc.ServicerContext], Iterator[_Response]]


class Undecodable:
    """A request whose bytes are no message of the RPC's request type.

    gRPC answers a request it fails to decode with INTERNAL, a server's fault.
    The fault is the caller's, so requests are decoded with `request_decoder`,
    which hands this on instead, and the handlers answer it InvalidArgument.
    """

    __slots__ = ("problem", "type_name")

    def __init__(self, type_name: str, problem: str) -> None:
        self.type_name = type_name
        self.problem = problem

    def error(self) -> InvalidArgument:
        """The error to answer the request with."""
        return InvalidArgument(f"request is no valid {self.type_name} message: {self.problem}")


def request_decoder(message_type: type[_Message]) -> Callable[[bytes], _Message | Undecodable]:
    """A request deserializer for gRPC that never fails: bad bytes become an Undecodable."""
    type_name = message_type.DESCRIPTOR.full_name
    parse = message_type.FromString

    def decode(data: bytes) -> _Message | Undecodable:
        try:
            return parse(data)
        except DecodeError as exc:
            # "Error parsing message with type '...': <what was wrong>"
            return Undecodable(type_name, str(exc).rpartition(": ")[2] or "malformed")

    return decode


def decoded(requests: Iterator[_Message | Undecodable]) -> Iterator[_Message]:
    """A request stream's messages, failing with InvalidArgument at the first undecodable one."""
    for request in requests:
        if isinstance(request, Undecodable):
            raise request.error()
        yield request


class _Call:
    """One call as its request line tells it: made when the handler starts, logged once at
    its end with its id, full method, namespace, code and duration (`REQUEST_FIELDS`).

    Request lines are debug lines: below that level a call costs one clock reading, since
    this runs on every call of the small-blob path.
    """

    __slots__ = ("context", "name", "service", "started")

    def __init__(self, service: object, name: str, context: grpc.ServicerContext) -> None:
        self.started = time.monotonic()
        self.service = service
        self.name = name
        self.context = context

    def _namespace(self) -> str:
        # The header as sent, or "" (the handler refuses a call without one, and says so).
        return next(
            (
                value
                for key, value in self.context.invocation_metadata() or ()
                if key == NAMESPACE_HEADER and isinstance(value, str)
            ),
            "",
        )

    def log(self, code: str, outcome: str = "") -> None:
        if not _log.isEnabledFor(logging.DEBUG):
            return
        duration_ms = round((time.monotonic() - self.started) * 1000, 3)
        service = type(self.service)
        method = f"/{_SERVICE_NAMES.get(service, service.__name__)}/{self.name}"
        namespace = self._namespace()
        request_id = secrets.token_hex(8)
        _log.debug(
            "%s %s in %.1f ms%s (namespace %r, request %s)",
            method,
            code,
            duration_ms,
            outcome,
            namespace,
            request_id,
            extra={
                "request_id": request_id,
                "method": method,
                "namespace": namespace,
                "code": code,
                "duration_ms": duration_ms,
            },
        )

    def abandoned(self) -> None:
        # Canceled, past its deadline, or disconnected: the caller left without an answer.
        self.log(grpc.StatusCode.CANCELLED.name, ", abandoned by the caller")


def _answer(call: _Call, exc: Exception, context: grpc.ServicerContext) -> None:
    """Abort the RPC with the status for `exc`; return quietly if the caller already left."""
    if not context.is_active():
        call.abandoned()
        return
    status = to_grpc_status(exc)
    call.log(status.code.name, f": {status.details}")
    context.abort_with_status(status)


def unary(
    method: UnaryHandler[_Service, _Request, _Response],
) -> UnaryHandler[_Service, _Request, _Response]:
    """Answer a unary RPC's exceptions with statuses from contentd.errdefs."""
    name = method.__name__

    @functools.wraps(method)
    def handler(self: _Service, request: _Request, context: grpc.ServicerContext) -> _Response:
        call = _Call(self, name, context)
        try:
            if isinstance(request, Undecodable):
                raise request.error()
            response = method(self, request, context)
        except Exception as exc:
            _answer(call, exc, context)
            return None  # type: ignore[return-value]  # the caller is gone
        call.log(grpc.StatusCode.OK.name)
        return response

    return handler


def streaming(
    method: StreamHandler[_Service, _Request, _Response],
) -> StreamHandler[_Service, _Request, _Response]:
    """Answer a response-streaming RPC's exceptions with statuses from contentd.errdefs."""
    name = method.__name__

    @functools.wraps(method)
    def handler(
        self: _Service, request: _Request, context: grpc.ServicerContext
    ) -> Iterator[_Response]:
        call = _Call(self, name, context)
        try:
            if isinstance(request, Undecodable):
                raise request.error()
            yield from method(self, request, context)
        except GeneratorExit:
            # gRPC drops a stream whose caller left while it waited at a
            # yield; closing the generator still runs the handler's cleanup.
            call.abandoned()
            raise
        except Exception as exc:
            _answer(call, exc, context)
            return  # the caller is gone
        call.log(grpc.StatusCode.OK.name)

    return handler


# How gRPC serves a method, by whether its requests and its answers stream.
_METHOD_HANDLERS: Final = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_service(service: object, described: ServiceDescriptor, server: grpc.Server) -> None:
    """Serve `service`'s methods on `server` as the generated registration does, but for decoding.

    Requests reach the handlers through `request_decoder`, so bytes that are no
    valid message are answered InvalidArgument, not gRPC's INTERNAL.
    """
    _SERVICE_NAMES[type(service)] = described.full_name
    handlers = {}
    for method in described.methods:
        make_handler = _METHOD_HANDLERS[method.client_streaming, method.server_streaming]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        handlers[method.name] = make_handler(
            getattr(service, method.name),
            request_deserializer=request_decoder(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(described.full_name, handlers),)
    )

"""The one place where exceptions become gRPC statuses, and where each request is logged."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from contentd.errdefs import to_grpc_status

_log = logging.getLogger("contentd.daemon")

_Service = TypeVar("_Service")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

UnaryHandler = Callable[[_Service, _Request, grpc.ServicerContext], _Response]
StreamHandler = Callable[[_Service, _Request, grpc.ServicerContext], Iterator[_Response]]


def _log_done(method: str, started: float) -> None:
    _log.debug("%s OK in %.1f ms", method, (time.monotonic() - started) * 1000)


def _log_abandoned(method: str, started: float) -> None:
    elapsed_ms = (time.monotonic() - started) * 1000
    _log.debug("%s abandoned by the caller after %.1f ms", method, elapsed_ms)


def _answer(method: str, started: float, exc: Exception, context: grpc.ServicerContext) -> None:
    """Abort the RPC with the status for `exc`; return quietly if the caller already left."""
    if not context.is_active():
        # Canceled, past its deadline, or disconnected: no one to answer.
        _log_abandoned(method, started)
        return
    status = to_grpc_status(exc)
    elapsed_ms = (time.monotonic() - started) * 1000
    _log.debug("%s %s in %.1f ms: %s", method, status.code.name, elapsed_ms, status.details)
    context.abort_with_status(status)


def unary(
    method: UnaryHandler[_Service, _Request, _Response],
) -> UnaryHandler[_Service, _Request, _Response]:
    """Answer a unary RPC's exceptions with statuses from contentd.errdefs."""
    name = method.__name__

    @functools.wraps(method)
    def handler(self: _Service, request: _Request, context: grpc.ServicerContext) -> _Response:
        started = time.monotonic()
        try:
            response = method(self, request, context)
        except Exception as exc:
            _answer(name, started, exc, context)
            return None  # type: ignore[return-value]  # the caller is gone
        _log_done(name, started)
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
        started = time.monotonic()
        try:
            yield from method(self, request, context)
        except GeneratorExit:
            # gRPC drops a stream whose caller left while it waited at a
            # yield; closing the generator still runs the handler's cleanup.
            _log_abandoned(name, started)
            raise
        except Exception as exc:
            _answer(name, started, exc, context)
            return  # the caller is gone
        _log_done(name, started)

    return handler

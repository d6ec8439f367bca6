"""gRPC mapping: every class crosses a real gRPC server and comes back whole."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contentd import errdefs
from contentd.errdefs import ERROR_CLASSES, ContentdError

METHOD = "/contentd.test.Errors/Raise"

# The error a call should raise, keyed by the request bytes.
_pending: dict[bytes, BaseException] = {}


def _raise_pending(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort_with_status(errdefs.to_grpc_status(_pending.pop(request)))
    raise AssertionError("abort_with_status returns only by raising")


@pytest.fixture(scope="module")
def call() -> Iterator[Callable[[BaseException], grpc.RpcError]]:
    """Raise an exception inside a real gRPC server; return what the client received."""
    handler = grpc.method_handlers_generic_handler(
        "contentd.test.Errors",
        {"Raise": grpc.unary_unary_rpc_method_handler(_raise_pending)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    with tempfile.TemporaryDirectory() as tmp:
        address = f"unix://{os.path.join(tmp, 'errors.sock')}"
        server.add_insecure_port(address)
        server.start()
        channel = grpc.insecure_channel(address)
        stub = channel.unary_unary(METHOD)
        counter = iter(range(1 << 62))

        def invoke(err: BaseException) -> grpc.RpcError:
            key = str(next(counter)).encode()
            _pending[key] = err
            try:
                stub(key, timeout=10)
            except grpc.RpcError as received:
                return received
            raise AssertionError("the call succeeded")

        yield invoke
        channel.close()
        server.stop(None)


labels = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
messages = st.text(max_size=200)
reasons = st.from_regex(r"[A-Z][A-Z0-9_]{0,30}", fullmatch=True)
metadatas = st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True), labels)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cls=st.sampled_from(ERROR_CLASSES), message=messages, reason=reasons, metadata=metadatas)
def test_every_class_round_trips(
    call: Callable[[BaseException], Any],
    cls: type[ContentdError],
    message: str,
    reason: str,
    metadata: dict[str, str],
) -> None:
    received = call(cls(message, reason=reason, metadata=metadata))
    assert received.code() == cls.grpc_code
    decoded = errdefs.from_grpc(received)
    assert decoded.error_class() is cls
    assert isinstance(decoded, cls)
    assert isinstance(decoded, errdefs.RemoteError)
    assert str(decoded) == str(cls(message))
    assert decoded.reason == reason
    assert decoded.metadata == metadata


@pytest.mark.parametrize("cls", ERROR_CLASSES)
def test_class_without_reason_round_trips(
    call: Callable[[BaseException], Any], cls: type[ContentdError]
) -> None:
    decoded = errdefs.from_grpc(call(cls("content sha256:00")))
    assert decoded.error_class() is cls
    assert decoded.message == "content sha256:00"
    assert decoded.reason is None
    assert decoded.metadata == {}


def test_no_doubled_class_words_after_two_round_trips(
    call: Callable[[BaseException], Any],
) -> None:
    first = errdefs.from_grpc(call(errdefs.NotFound("content sha256:00")))
    second = errdefs.from_grpc(call(errdefs.NotFound(first.message)))
    assert str(second) == "content sha256:00: not found"


def test_ref_locked_reaches_the_client(call: Callable[[BaseException], Any]) -> None:
    err = errdefs.Unavailable(
        "ref layer-1 locked", reason=errdefs.REF_LOCKED, metadata={"ref": "layer-1"}
    )
    received = call(err)
    assert received.code() == grpc.StatusCode.UNAVAILABLE
    assert received.details() == "ref layer-1 locked: unavailable"
    decoded = errdefs.from_grpc(received)
    assert decoded.reason == errdefs.REF_LOCKED
    assert decoded.metadata == {"ref": "layer-1"}


def test_classified_cause_decides_the_code(call: Callable[[BaseException], Any]) -> None:
    try:
        raise RuntimeError("outer") from errdefs.OutOfRange("read past object length 4 bytes")
    except RuntimeError as err:
        received = call(err)
    assert received.code() == grpc.StatusCode.OUT_OF_RANGE
    assert received.details() == "read past object length 4 bytes: out of range"


def test_unclassified_error_is_internal_and_keeps_its_text_to_the_log(
    call: Callable[[BaseException], Any], caplog: pytest.LogCaptureFixture
) -> None:
    secret = "/var/lib/contentd/blobs/sha256/abc: Permission denied"
    with caplog.at_level(logging.ERROR, logger="contentd.errors"):
        received = call(PermissionError(13, "Permission denied", secret))
    assert received.code() == grpc.StatusCode.INTERNAL
    assert "/var/lib" not in received.details()
    assert "Traceback" not in received.details()
    decoded = errdefs.from_grpc(received)
    error_id = decoded.metadata["error_id"]
    assert decoded.reason == errdefs.INTERNAL_ERROR_REASON
    assert error_id in received.details()
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged
    assert logged[0].exc_info is not None


def test_remote_words_are_not_passed_on(call: Callable[[BaseException], Any]) -> None:
    remote = errdefs.from_grpc(call(errdefs.NotFound("upstream secret /srv/x", reason="GONE")))
    forwarded = call(remote)
    assert forwarded.code() == grpc.StatusCode.NOT_FOUND
    assert "secret" not in forwarded.details()
    assert errdefs.from_grpc(forwarded).reason == "GONE"
    assert "secret" in errdefs.to_grpc_status(remote, passthrough_remote=True).details


@pytest.mark.parametrize(
    ("message", "cls"),
    [
        ("thing: conflict", errdefs.Conflict),
        ("not modified", errdefs.NotModified),
        ("thing: failed precondition", errdefs.FailedPrecondition),
        ("namespace is required", errdefs.FailedPrecondition),
    ],
)
def test_failed_precondition_words_choose_the_class(message: str, cls: type[ContentdError]) -> None:
    decoded = errdefs.from_grpc_parts(grpc.StatusCode.FAILED_PRECONDITION, message)
    assert decoded.error_class() is cls


def test_unknown_code_number_decodes_to_unknown() -> None:
    decoded = errdefs.from_grpc_parts(99, "strange: unknown")
    assert decoded.error_class() is errdefs.Unknown
    assert decoded.message == "strange"


def test_malformed_details_do_not_mask_the_error() -> None:
    decoded = errdefs.from_grpc_parts(grpc.StatusCode.NOT_FOUND, "x: not found", b"\xff\x00junk")
    assert decoded.error_class() is errdefs.NotFound
    assert decoded.reason is None

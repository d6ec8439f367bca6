"""The limits that protect the daemon, each hit over the wire against a real `contentd serve`.

| limit | value | refused with |
|---|---|---|
| a message, either way | 16 MiB | RESOURCE_EXHAUSTED (test_daemon.py) |
| calls at once | --workers, 64 | RESOURCE_EXHAUSTED |
| Write streams at once | --max-write-streams, 48 | RESOURCE_EXHAUSTED, TOO_MANY_WRITE_STREAMS |
| ... in one namespace | --max-ingests-per-namespace | RESOURCE_EXHAUSTED, TOO_MANY_INGESTS |
| an idle Write stream | --write-idle-timeout, 300 s | CANCELLED (test_daemon.py) |
| a label's key and value | 4096 bytes | INVALID_ARGUMENT |
| a blob's labels | 256, of 64 KiB together | INVALID_ARGUMENT |
| an Update's field paths | 512 | INVALID_ARGUMENT |
| a ref | 1024 bytes | INVALID_ARGUMENT |
| a filter; a call's filters together | 64 KiB | INVALID_ARGUMENT |
| a regular expression | 1024 characters, 1 MiB compiled | INVALID_ARGUMENT |
| regular expressions in a call | 64 | INVALID_ARGUMENT |

Tests of the flags start a daemon of their own; the rest share one, each in a namespace
of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.daemon import DaemonProcess, running_daemon
from support.grpc_client import (
    CALL_TIMEOUT,
    WriteStream,
    commit,
    content_stub,
    namespaced,
    poll,
    stat,
    write,
)

from contentd import errdefs
from contentd.client import RemoteStore
from contentd.content import digest_of, write_blob
from contentd.proto import content_pb2 as api
from contentd.proto import content_pb2_grpc

Code = grpc.StatusCode
#: Words that would give away the daemon's internals in an error.
PRIVATE = (tempfile.gettempdir(), "blobs/", "ingest/", "metadata.db", "Traceback")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("limits") / "root") as running:
        yield running


def refusal(call: Callable[[], object], code: grpc.StatusCode) -> errdefs.ContentdError:
    """Make a call that must fail with `code`; its error, decoded, and checked for leaks."""
    with pytest.raises(grpc.RpcError) as failed:
        call()
    error = failed.value
    assert error.code() == code, error.details()
    for private in PRIVATE:
        assert private not in (error.details() or "")
    return errdefs.from_grpc(error)


def healthy(channel: grpc.Channel) -> bool:
    request = health_pb2.HealthCheckRequest(service="")
    answer = health_pb2_grpc.HealthStub(channel).Check(request, timeout=CALL_TIMEOUT)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def put(
    stub: content_pb2_grpc.ContentStub,
    ns: str,
    data: bytes,
    labels: dict[str, str] | None = None,
) -> str:
    """Commit `data` in one message; returns its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    message = commit(f"put-{digest}", data=data, total=len(data), expected=digest, labels=labels)
    answers = list(stub.Write(iter([message]), metadata=namespaced(ns), timeout=CALL_TIMEOUT))
    assert [answer.digest for answer in answers] == [digest]
    return digest


def update(
    stub: content_pb2_grpc.ContentStub, ns: str, digest: str, labels: dict[str, str], *paths: str
) -> api.Info:
    request = api.UpdateRequest(
        info=api.Info(digest=digest, labels=labels),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )
    return stub.Update(request, metadata=namespaced(ns), timeout=CALL_TIMEOUT).info


def labels_of(stub: content_pb2_grpc.ContentStub, ns: str, digest: str) -> dict[str, str]:
    request = api.InfoRequest(digest=digest)
    return dict(stub.Info(request, metadata=namespaced(ns), timeout=CALL_TIMEOUT).info.labels)


def listed(stub: content_pb2_grpc.ContentStub, ns: str, *filters: str) -> list[str]:
    request = api.ListContentRequest(filters=filters)
    answers = stub.List(request, metadata=namespaced(ns), timeout=CALL_TIMEOUT)
    return sorted(info.digest for answer in answers for info in answer.info)


def active(stub: content_pb2_grpc.ContentStub, ns: str, *filters: str) -> list[str]:
    request = api.ListStatusesRequest(filters=filters)
    answer = stub.ListStatuses(request, metadata=namespaced(ns), timeout=CALL_TIMEOUT)
    return sorted(status.ref for status in answer.statuses)


def many_labels(count: int, size: int = 1) -> dict[str, str]:
    """`count` labels whose keys and values together take `size` bytes each (at least 5)."""
    return {f"k{i:04}": "v" * (size - 5) or "v" for i in range(count)}


# Calls at once


def test_calls_beyond_the_workers_are_refused_at_once_until_one_ends(tmp_path: Path) -> None:
    with (
        running_daemon(tmp_path / "root", "--workers", "2", "--max-write-streams", "2") as running,
        content_stub(running.address) as stub,
        WriteStream(stub, "default") as first,
        WriteStream(stub, "default") as second,
    ):
        first.send(write("busy-1", b"abc"))
        second.send(write("busy-2", b"abc"))
        request = api.StatusRequest(ref="busy-1")

        def status() -> object:
            return stub.Status(request, metadata=namespaced("default"), timeout=CALL_TIMEOUT)

        error = refusal(status, Code.RESOURCE_EXHAUSTED)
        assert "Concurrent RPC limit exceeded" in error.message
        first.close()
        assert list(first.call) == []

        def answers() -> bool:
            try:
                status()
            except grpc.RpcError:
                return False
            return True

        assert poll(answers, timeout=5)


# Write streams at once, in all and in one namespace


def test_write_streams_beyond_max_write_streams_are_refused(tmp_path: Path) -> None:
    with (
        running_daemon(tmp_path / "root", "--max-write-streams", "1") as running,
        content_stub(running.address) as stub,
        WriteStream(stub, "one") as first,
    ):
        # A stream is admitted when its call starts: the second starts once the first is in.
        first.send(write("first", b"abc"))
        with WriteStream(stub, "two") as second:
            error = refusal(lambda: second.send(stat("second")), Code.RESOURCE_EXHAUSTED)
    assert error.reason == "TOO_MANY_WRITE_STREAMS"
    assert error.message == "1 write streams in progress, the daemon's limit; retry"


def test_write_streams_beyond_the_namespace_limit_are_refused_and_others_admitted(
    tmp_path: Path,
) -> None:
    with (
        running_daemon(tmp_path / "root", "--max-ingests-per-namespace", "2") as running,
        content_stub(running.address) as stub,
        WriteStream(stub, "greedy") as first,
        WriteStream(stub, "greedy") as second,
        contextlib.ExitStack() as stack,
    ):
        # A stream is admitted when its call starts: the third starts once two are in.
        first.send(write("first", b"abc"))
        second.send(write("second", b"abc"))
        third = stack.enter_context(WriteStream(stub, "greedy"))
        elsewhere = stack.enter_context(WriteStream(stub, "modest"))
        error = refusal(lambda: third.send(write("third", b"abc")), Code.RESOURCE_EXHAUSTED)
        assert error.reason == "TOO_MANY_INGESTS"
        assert error.metadata == {"namespace": "greedy", "limit": "2"}
        assert error.message == "2 write streams in progress in namespace greedy, its limit; retry"
        # Other namespaces still get streams; this one gets one once one of its own ends.
        assert elsewhere.send(write("other", b"abc")).offset == 3
        first.close()
        assert list(first.call) == []
        with WriteStream(stub, "greedy") as fourth:
            assert fourth.send(write("fourth", b"abcd")).offset == 4
        refusal(
            lambda: stub.Status(
                api.StatusRequest(ref="third"), metadata=namespaced("greedy"), timeout=CALL_TIMEOUT
            ),
            Code.NOT_FOUND,
        )


@pytest.mark.parametrize("small", [True, False], ids=["put", "streamed"])
def test_write_blob_waits_for_a_write_stream_of_its_namespace(tmp_path: Path, small: bool) -> None:
    data = os.urandom(1000 if small else (2 << 20))
    outcome: list[str | BaseException] = []
    with (
        running_daemon(tmp_path / "root", "--max-ingests-per-namespace", "1") as running,
        RemoteStore(running.address, namespace="narrow") as store,
    ):
        holder = store.writer("holding")
        holder.write(b"abc")

        def write() -> None:
            try:
                outcome.append(write_blob(store, "waiting", data, timeout=60))
            except BaseException as exc:
                outcome.append(exc)

        waiting = threading.Thread(target=write)
        waiting.start()
        # Refused (TOO_MANY_INGESTS) while the holder streams, it retries
        # instead of failing; once the holder commits, it gets a stream.
        waiting.join(1.0)
        assert waiting.is_alive()
        assert not outcome
        holder.commit()
        holder.close()
        waiting.join(60)
        assert outcome == [digest_of(data)]
        with store.reader_at(digest_of(data)) as blob:
            assert blob.read() == data


# Labels


def test_label_of_4096_bytes_is_accepted_and_of_4097_refused(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, ns.encode(), labels={"k": "v" * 4095})
    error = refusal(
        lambda: update(stub, ns, digest, {"k": "v" * 4096}, "labels.k"), Code.INVALID_ARGUMENT
    )
    assert error.message == "label 'k': key and value longer than 4096 bytes"
    refusal(lambda: put(stub, ns, b"other", labels={"k": "v" * 4096}), Code.INVALID_ARGUMENT)
    assert labels_of(stub, ns, digest) == {"k": "v" * 4095}


def test_256_labels_are_accepted_and_a_257th_refused(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, ns.encode(), labels=many_labels(256))
    error = refusal(
        lambda: update(stub, ns, digest, {"one-more": "v"}, "labels.one-more"),
        Code.INVALID_ARGUMENT,
    )
    assert error.message == "257 labels: more than 256 on one blob"
    assert labels_of(stub, ns, digest) == many_labels(256)
    refusal(lambda: put(stub, ns, b"other", labels=many_labels(257)), Code.INVALID_ARGUMENT)


def test_removing_labels_of_a_full_blob_is_not_counted_against_it(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, ns.encode(), labels=many_labels(256))
    # An empty value removes a label: the blob ends with 255, plus one new one.
    update(stub, ns, digest, {"k0000": "", "new": "v"}, "labels.k0000", "labels.new")
    assert len(labels_of(stub, ns, digest)) == 256


def test_labels_of_64_kib_together_are_accepted_and_more_refused(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, ns.encode(), labels=many_labels(16, 4096))
    error = refusal(lambda: update(stub, ns, digest, {"x": "y"}, "labels.x"), Code.INVALID_ARGUMENT)
    assert error.message == "labels of 65538 bytes together: more than 65536 on one blob"
    refusal(lambda: put(stub, ns, b"other", labels=many_labels(17, 4000)), Code.INVALID_ARGUMENT)


def test_commit_with_too_many_labels_is_refused_and_keeps_the_ingest(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    with WriteStream(stub, ns) as stream:
        stream.send(write("labelled", b"abc"))
        error = refusal(
            lambda: stream.send(commit("labelled", offset=3, labels=many_labels(300))),
            Code.INVALID_ARGUMENT,
        )
    assert error.message == "300 labels: more than 256 on one blob"
    assert active(stub, ns) == ["labelled"]


# Update field paths


def test_update_of_512_paths_is_accepted_and_of_513_refused(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, ns.encode(), labels={"keep": "1"})
    paths = [f"labels.k{i}" for i in range(512)]
    assert dict(update(stub, ns, digest, {"k7": "set"}, *paths).labels) == {
        "keep": "1",
        "k7": "set",
    }
    error = refusal(
        lambda: update(stub, ns, digest, {}, *paths, "labels.keep"), Code.INVALID_ARGUMENT
    )
    assert error.message == "update of 513 field paths: more than 512"
    assert labels_of(stub, ns, digest) == {"keep": "1", "k7": "set"}


# Refs


def test_ref_of_1024_bytes_is_accepted_and_of_1025_refused(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    longest = "é" * 512
    with WriteStream(stub, ns) as stream:
        assert stream.send(write(longest, b"abc")).offset == 3
        stream.close()
        assert list(stream.call) == []
    assert active(stub, ns) == [longest]
    too_long = "é" * 512 + "x"
    with WriteStream(stub, ns) as stream:
        error = refusal(lambda: stream.send(write(too_long, b"abc")), Code.INVALID_ARGUMENT)
    assert error.message.endswith(": longer than 1024 bytes")
    for call in (stub.Status, stub.Abort):
        request = (api.StatusRequest if call is stub.Status else api.AbortRequest)(ref=too_long)
        refusal(
            lambda: call(request, metadata=namespaced(ns), timeout=CALL_TIMEOUT),  # noqa: B023
            Code.INVALID_ARGUMENT,
        )
    assert active(stub, ns) == [longest]


# Filters


def test_filter_of_64_kib_is_accepted_and_longer_refused(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, ns.encode(), labels={"a": "1"})
    longest = 'labels.a!="' + "x" * (65536 - 12) + '"'
    assert len(longest) == 65536
    assert listed(stub, ns, longest) == [digest]
    error = refusal(lambda: listed(stub, ns, longest + "z"), Code.INVALID_ARGUMENT)
    assert error.message.endswith("... (65537 characters): longer than 65536 characters")
    refusal(lambda: active(stub, ns, longest + "z"), Code.INVALID_ARGUMENT)


def test_filters_of_more_than_64_kib_together_are_refused(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    put(stub, ns, ns.encode(), labels={"a": "1"})
    many = ["labels.a==1"] * 6000
    error = refusal(lambda: listed(stub, ns, *many), Code.INVALID_ARGUMENT)
    assert (
        error.message == "6000 filters of 66000 characters together: longer than 65536 characters"
    )
    refusal(lambda: active(stub, ns, *many), Code.INVALID_ARGUMENT)


@pytest.mark.parametrize("pattern", [r"^(a+)+$", r"^(a|aa)*$", r"(.*a){30}$"])
def test_regular_expression_that_backtracks_in_re_lists_and_the_daemon_keeps_answering(
    channel: grpc.Channel, stub: content_pb2_grpc.ContentStub, ns: str, pattern: str
) -> None:
    # A backtracking engine (Python's re) takes exponential time on these, holding the
    # GIL: the whole daemon would stop answering, health checks included.
    bait = "a" * 4000 + "!"
    digest = put(stub, ns, ns.encode(), labels={"a": bait})
    with WriteStream(stub, ns) as stream:
        stream.send(write(bait[-1000:], b"abc"))
        stream.close()
        assert list(stream.call) == []
    assert listed(stub, ns, f"labels.a~={pattern}") == []
    assert listed(stub, ns, "labels.a~=^a+!$") == [digest]
    assert active(stub, ns, f"ref~={pattern}") == []
    assert healthy(channel)


def test_regular_expression_of_1024_characters_is_accepted_and_of_1025_refused(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, ns.encode(), labels={"a": "x" * 1024})
    assert listed(stub, ns, "labels.a~=" + "x" * 1024) == [digest]
    error = refusal(lambda: listed(stub, ns, "labels.a~=" + "x" * 1025), Code.INVALID_ARGUMENT)
    assert error.message.endswith("is longer than 1024 characters")


def test_a_call_may_hold_64_regular_expressions_and_not_65(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, ns.encode(), labels={"a": "x"})
    patterns = [f"labels.a~=^x$|^n{count}$" for count in range(64)]
    assert listed(stub, ns, *patterns) == [digest]
    # Counted across a call's filters and within one filter alike.
    for filters in ([*patterns, "labels.a~=y"], [",".join([*patterns, "labels.a~=y"])]):
        error = refusal(lambda: listed(stub, ns, *filters), Code.INVALID_ARGUMENT)  # noqa: B023
        assert error.message.endswith("more than the 64 a call's filters may hold")
        error = refusal(lambda: active(stub, ns, *filters), Code.INVALID_ARGUMENT)  # noqa: B023
        assert error.message.endswith("more than the 64 a call's filters may hold")


def test_regular_expression_that_needs_backtracking_is_refused(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    error = refusal(lambda: listed(stub, ns, r"labels.a~=(a)\1"), Code.INVALID_ARGUMENT)
    assert error.message.endswith(r'invalid escape sequence: "\\1"')


def test_regular_expression_too_large_to_compile_within_1_mib_is_refused(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    error = refusal(lambda: listed(stub, ns, r"labels.a~=\pL{1000}"), Code.INVALID_ARGUMENT)
    assert error.message.endswith("too large to compile within 1 MiB")
    error = refusal(lambda: active(stub, ns, r"ref~=\pL{1000}"), Code.INVALID_ARGUMENT)
    assert error.message.endswith("too large to compile within 1 MiB")

"""The daemon on the wire: containerd's Content API served by a real `contentd serve` process.

The reference semantics are containerd 1.6's services/content/contentserver. Most
tests share one daemon and keep to a namespace of their own; those that stop,
kill or reconfigure a daemon start their own.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from stat import S_IMODE, S_ISSOCK

import grpc
import pytest
from google.protobuf import descriptor_pool, field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from support.daemon import DaemonProcess, contentd_command, running_daemon, start_daemon
from support.grpc_client import (
    CALL_TIMEOUT,
    HELD_DATA,
    WriteStream,
    commit,
    connect,
    content_stub,
    namespaced,
    poll,
    stat,
    write,
)

from contentd import errdefs
from contentd.content import LocalStore, digest_of, open_store
from contentd.daemon._memory import pin_allocator_thresholds
from contentd.daemon._streams import HANDOFF_SECONDS
from contentd.proto import content_pb2 as api
from contentd.proto import content_pb2_grpc

Code = grpc.StatusCode
CONTENT_SERVICE = "containerd.services.content.v1.Content"
GRPC_CLIENT = Path(__file__).resolve().parent / "support" / "grpc_client.py"
MiB = 1 << 20
#: How long a freed ref may take to be writable again.
RELEASE_SECONDS = 2.0
#: Timestamps carry microseconds: allow for the truncation, in nanoseconds.
TIMESTAMP_SLACK = 1000
#: Words that would give away the daemon's internals: where its files are, or a traceback.
PRIVATE = (tempfile.gettempdir(), "blobs/", "ingest/", "metadata.db", "Traceback")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("shared") / "root"
    with running_daemon(root, "--log-level", "debug") as running:
        yield running


@pytest.fixture
def beside(daemon: DaemonProcess, ns: str) -> Iterator[LocalStore]:
    """The daemon's own store, opened daemonless by this process, in the test's namespace."""
    with open_store(daemon.root, ns) as store:
        yield store


def refusal(call: Callable[[], object], code: grpc.StatusCode) -> errdefs.ContentdError:
    """Make a call that must fail with `code`; its error, decoded, and checked for leaks."""
    with pytest.raises(grpc.RpcError) as failed:
        call()
    error = failed.value
    assert error.code() == code, error.details()
    details = error.details() or ""
    for private in PRIVATE:
        assert private not in details
    return errdefs.from_grpc(error)


def content(ns: str, size: int = 0, tag: str = "") -> bytes:
    """Bytes no other test writes; at least `size` long."""
    unit = f"{ns} {tag} ".encode()
    return unit * max(1, -(-size // len(unit)))


def put(
    stub: content_pb2_grpc.ContentStub,
    ns: str,
    data: bytes,
    ref: str = "put",
    labels: dict[str, str] | None = None,
) -> str:
    """Commit `data` through the daemon in one message; returns its digest."""
    digest = digest_of(data)
    with WriteStream(stub, ns) as stream:
        answer = stream.send(
            commit(ref, data=data, total=len(data), expected=digest, labels=labels)
        )
        # A commit ends the stream.
        assert list(stream.call) == []
    assert (answer.offset, answer.digest) == (len(data), digest)
    return digest


def put_beside(store: LocalStore, data: bytes) -> str:
    """Commit `data` daemonless, into the daemon's root."""
    with store.writer(f"beside-{digest_of(data)}") as writer:
        writer.write(data)
        return writer.commit()


def start_ingest(stub: content_pb2_grpc.ContentStub, ns: str, ref: str, data: bytes) -> None:
    """Write `data` on `ref` and end the stream, keeping the ingest for resuming."""
    with WriteStream(stub, ns) as stream:
        assert stream.send(write(ref, data)).offset == len(data)
        stream.close()
        # The stream ends cleanly only after the daemon has let go of the ref.
        assert list(stream.call) == []


def info(stub: content_pb2_grpc.ContentStub, ns: str, digest: str) -> api.Info:
    answer = stub.Info(
        api.InfoRequest(digest=digest), metadata=namespaced(ns), timeout=CALL_TIMEOUT
    )
    return answer.info


def read(
    stub: content_pb2_grpc.ContentStub, ns: str, digest: str, offset: int = 0, size: int = 0
) -> list[api.ReadContentResponse]:
    request = api.ReadContentRequest(digest=digest, offset=offset, size=size)
    return list(stub.Read(request, metadata=namespaced(ns), timeout=CALL_TIMEOUT))


def status(stub: content_pb2_grpc.ContentStub, ns: str, ref: str) -> api.Status:
    answer = stub.Status(api.StatusRequest(ref=ref), metadata=namespaced(ns), timeout=CALL_TIMEOUT)
    return answer.status


def update(
    stub: content_pb2_grpc.ContentStub,
    ns: str,
    digest: str,
    labels: dict[str, str],
    *paths: str,
) -> api.Info:
    request = api.UpdateRequest(
        info=api.Info(digest=digest, labels=labels),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )
    return stub.Update(request, metadata=namespaced(ns), timeout=CALL_TIMEOUT).info


def listed(stub: content_pb2_grpc.ContentStub, ns: str, *filters: str) -> list[str]:
    request = api.ListContentRequest(filters=filters)
    answers = stub.List(request, metadata=namespaced(ns), timeout=CALL_TIMEOUT)
    return sorted(item.digest for answer in answers for item in answer.info)


def reopened_offset(stub: content_pb2_grpc.ContentStub, ns: str, ref: str) -> int:
    """The offset a new Write stream on `ref` starts at, once the ref is free (within 2 s)."""
    deadline = time.monotonic() + RELEASE_SECONDS
    while True:
        with WriteStream(stub, ns) as stream:
            try:
                return stream.send(stat(ref)).offset
            except grpc.RpcError as error:
                if error.code() != Code.UNAVAILABLE or time.monotonic() > deadline:
                    raise
        time.sleep(0.02)


def logged_ms(daemon: DaemonProcess, pattern: str) -> float:
    """The duration the daemon logged for the request whose debug line matches `pattern`."""
    found: list[re.Match[str]] = []

    def appeared() -> bool:
        found[:] = re.finditer(rf" in ([0-9.]+) ms: {pattern}", daemon.logged())
        return bool(found)

    assert poll(appeared, timeout=5), daemon.logged()
    return float(found[-1].group(1))


def health(channel: grpc.Channel, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    answer = health_pb2_grpc.HealthStub(channel).Check(request, timeout=CALL_TIMEOUT)
    return answer.status


# The Write stream


def test_stat_as_first_message_answers_offset_zero_total_and_times(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    before = time.time_ns() - TIMESTAMP_SLACK
    with WriteStream(stub, ns) as stream:
        answer = stream.send(stat("fresh", total=42))
    after = time.time_ns()
    assert (answer.action, answer.offset, answer.total) == (api.STAT, 0, 42)
    assert answer.digest == digest_of(b"")
    assert before <= answer.started_at.ToNanoseconds() <= after
    assert answer.started_at.ToNanoseconds() <= answer.updated_at.ToNanoseconds() <= after


def test_write_appends_and_answers_offset_and_running_digest(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    with WriteStream(stub, ns) as stream:
        first = stream.send(write("appending", b"hello, "))
        second = stream.send(write("appending", b"world", offset=7))
    assert (first.action, first.offset, first.digest) == (api.WRITE, 7, digest_of(b"hello, "))
    assert (second.offset, second.digest) == (12, digest_of(b"hello, world"))


def test_commit_verifies_and_the_blob_is_visible_with_commit_labels(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    data = content(ns, 1000)
    digest = digest_of(data)
    before = time.time_ns() - TIMESTAMP_SLACK
    with WriteStream(stub, ns) as stream:
        stream.send(write("layer", data[:600]))
        answer = stream.send(
            commit(
                "layer",
                data=data[600:],
                offset=600,
                total=len(data),
                expected=digest,
                labels={"team": "storage"},
            )
        )
        # A commit ends the stream.
        assert list(stream.call) == []
    after = time.time_ns()
    assert (answer.action, answer.offset, answer.digest) == (api.COMMIT, len(data), digest)
    stored = info(stub, ns, digest)
    assert (stored.digest, stored.size, dict(stored.labels)) == (
        digest,
        len(data),
        {"team": "storage"},
    )
    assert before <= stored.created_at.ToNanoseconds() <= after
    assert stored.updated_at == stored.created_at
    assert b"".join(chunk.data for chunk in read(stub, ns, digest)) == data
    refusal(lambda: status(stub, ns, "layer"), Code.NOT_FOUND)


def test_first_message_without_ref_is_invalid_argument(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    with WriteStream(stub, ns) as stream:
        error = refusal(lambda: stream.send(stat("")), Code.INVALID_ARGUMENT)
    assert error.message == "first message must have a reference"


def test_write_at_a_wrong_offset_is_out_of_range_in_containerds_words(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    with WriteStream(stub, ns) as stream:
        stream.send(write("gap", b"abc"))
        error = refusal(lambda: stream.send(write("gap", b"def", offset=5)), Code.OUT_OF_RANGE)
    assert error.message == "write @5 must occur at current offset 3"
    assert status(stub, ns, "gap").offset == 3


def test_write_at_offset_zero_restarts_a_started_ingest(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    start_ingest(stub, ns, "restart", b"stale bytes")
    with WriteStream(stub, ns) as stream:
        assert stream.send(stat("restart")).offset == len(b"stale bytes")
        answer = stream.send(write("restart", b"new"))
    assert (answer.offset, answer.digest) == (3, digest_of(b"new"))


def test_commit_of_wrong_size_fails_precondition_and_keeps_the_ingest(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    with WriteStream(stub, ns) as stream:
        stream.send(write("short", b"abc"))
        error = refusal(
            lambda: stream.send(commit("short", offset=3, total=10)), Code.FAILED_PRECONDITION
        )
    assert "size" in error.message
    assert status(stub, ns, "short").offset == 3
    assert reopened_offset(stub, ns, "short") == 3


def test_commit_of_wrong_digest_fails_precondition_and_keeps_the_ingest(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    wrong = digest_of(content(ns, tag="never stored"))
    with WriteStream(stub, ns) as stream:
        stream.send(write("corrupt", b"abc"))
        error = refusal(
            lambda: stream.send(commit("corrupt", offset=3, expected=wrong)),
            Code.FAILED_PRECONDITION,
        )
    assert wrong in error.message
    assert status(stub, ns, "corrupt").offset == 3


def test_writer_expecting_a_stored_digest_is_already_exists(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    data = content(ns)
    digest = put(stub, ns, data)
    with WriteStream(stub, ns) as stream:
        error = refusal(lambda: stream.send(stat("again", expected=digest)), Code.ALREADY_EXISTS)
    assert digest in error.message


def test_expecting_a_stored_digest_mid_stream_is_already_exists_and_drops_the_ingest(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    data = content(ns)
    digest = put(stub, ns, data)
    with WriteStream(stub, ns) as stream:
        stream.send(write("late", data[:3]))
        error = refusal(
            lambda: stream.send(commit("late", data=data[3:], offset=3, expected=digest)),
            Code.ALREADY_EXISTS,
        )
    assert digest in error.message
    refusal(lambda: status(stub, ns, "late"), Code.NOT_FOUND)


def test_blob_stored_in_another_namespace_commits_without_resending(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    data = content(ns, 5000)
    digest = put(stub, ns, data)
    other = f"{ns}-other"
    with WriteStream(stub, other) as stream:
        # containerd's shared policy: the bytes are there already.
        assert stream.send(stat("shared", total=len(data), expected=digest)).offset == len(data)
        answer = stream.send(commit("shared", offset=len(data), total=len(data), expected=digest))
    assert (answer.offset, answer.digest) == (len(data), digest)
    assert info(stub, other, digest).size == len(data)


# Ref locks


def test_ref_held_by_an_idle_stream_is_refused_after_the_handoff_wait(
    daemon: DaemonProcess, stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    ref = f"held-{ns}"
    with WriteStream(stub, ns) as holder:
        holder.send(write(ref, b"abc"))
        started = time.monotonic()
        with WriteStream(stub, ns) as second:
            error = refusal(lambda: second.send(stat(ref)), Code.UNAVAILABLE)
        elapsed = time.monotonic() - started
    assert isinstance(error, errdefs.Unavailable)
    assert (error.reason, error.metadata) == (errdefs.REF_LOCKED, {"ref": ref})
    assert elapsed < 1.0
    # The daemon waited for the holder to hand the ref over, and no longer.
    waited = logged_ms(daemon, rf"ref {re.escape(ref)} locked")
    assert HANDOFF_SECONDS * 1000 <= waited < 1000


def test_ref_held_by_another_process_is_refused_at_once(
    daemon: DaemonProcess, stub: content_pb2_grpc.ContentStub, beside: LocalStore, ns: str
) -> None:
    ref = f"elsewhere-{ns}"
    with beside.writer(ref) as held:
        held.write(b"abc")
        with WriteStream(stub, ns) as second:
            error = refusal(lambda: second.send(stat(ref)), Code.UNAVAILABLE)
    assert (error.reason, error.metadata) == (errdefs.REF_LOCKED, {"ref": ref})
    assert logged_ms(daemon, rf"ref {re.escape(ref)} locked") < HANDOFF_SECONDS * 1000 / 2


def test_half_closed_stream_hands_its_ref_to_the_next_stream(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    with WriteStream(stub, ns) as first:
        first.send(write("handoff", b"abc"))
        first.close()
        with WriteStream(stub, ns) as second:
            # No REF_LOCKED for a ref its holder has already let go.
            assert second.send(stat("handoff")).offset == 3


def test_canceled_stream_releases_its_ref(stub: content_pb2_grpc.ContentStub, ns: str) -> None:
    with WriteStream(stub, ns) as holder:
        holder.send(write("canceled", b"abc"))
        holder.cancel()
    assert reopened_offset(stub, ns, "canceled") == 3


def test_stream_past_its_deadline_releases_its_ref(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    with WriteStream(stub, ns, timeout=1.0) as holder:
        holder.send(write("late", b"abc"))
        refusal(holder.receive, Code.DEADLINE_EXCEEDED)
    assert reopened_offset(stub, ns, "late") == 3


def test_closed_channel_releases_its_ref(
    daemon: DaemonProcess, stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    own = connect(daemon.address)
    with WriteStream(content_pb2_grpc.ContentStub(own), ns) as holder:
        holder.send(write("dropped", b"abc"))
        own.close()
    assert reopened_offset(stub, ns, "dropped") == 3


def test_killed_client_process_releases_its_ref(
    daemon: DaemonProcess, stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    with subprocess.Popen(
        [sys.executable, str(GRPC_CLIENT), "hold", daemon.address, ns, "vanished"],
        stdout=subprocess.PIPE,
        text=True,
    ) as client:
        try:
            assert client.stdout is not None
            assert client.stdout.readline().strip() == "holding"
        finally:
            client.kill()
    assert reopened_offset(stub, ns, "vanished") == len(HELD_DATA)


def test_abort_of_a_ref_held_by_a_stream_is_refused(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    with WriteStream(stub, ns) as holder:
        holder.send(write("busy", b"abc"))
        error = refusal(
            lambda: stub.Abort(
                api.AbortRequest(ref="busy"), metadata=namespaced(ns), timeout=CALL_TIMEOUT
            ),
            Code.UNAVAILABLE,
        )
        assert error.reason == errdefs.REF_LOCKED
    assert reopened_offset(stub, ns, "busy") == 3


# Namespaces


def test_request_without_namespace_is_failed_precondition(
    stub: content_pb2_grpc.ContentStub,
) -> None:
    request = api.InfoRequest(digest=digest_of(b""))
    error = refusal(lambda: stub.Info(request, timeout=CALL_TIMEOUT), Code.FAILED_PRECONDITION)
    assert error.message == "namespace is required"


def test_write_stream_without_namespace_is_failed_precondition(
    stub: content_pb2_grpc.ContentStub,
) -> None:
    with WriteStream(stub, None) as stream:
        error = refusal(lambda: stream.send(stat("anywhere")), Code.FAILED_PRECONDITION)
    assert error.message == "namespace is required"


@pytest.mark.parametrize("namespace", ["../x", "a b", "x/y", "-x", "x" * 77])
def test_invalid_namespace_is_invalid_argument(
    stub: content_pb2_grpc.ContentStub, namespace: str
) -> None:
    request = api.InfoRequest(digest=digest_of(b""))
    error = refusal(
        lambda: stub.Info(request, metadata=namespaced(namespace), timeout=CALL_TIMEOUT),
        Code.INVALID_ARGUMENT,
    )
    assert "namespace" in error.message


def test_blobs_are_invisible_in_other_namespaces(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, content(ns))
    other = f"{ns}-other"
    refusal(lambda: info(stub, other, digest), Code.NOT_FOUND)
    refusal(lambda: read(stub, other, digest), Code.NOT_FOUND)
    assert listed(stub, other) == []
    assert listed(stub, ns) == [digest]


# Read


def test_read_streams_chunks_of_at_most_one_mib_at_their_offsets(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    data = content(ns, 3 * MiB + 12345)
    digest = put(stub, ns, data)
    chunks = read(stub, ns, digest)
    assert len(chunks) == 4
    assert all(len(chunk.data) <= MiB for chunk in chunks)
    offset = 0
    for chunk in chunks:
        assert chunk.offset == offset
        assert chunk.data == data[offset : offset + len(chunk.data)]
        offset += len(chunk.data)
    assert offset == len(data)


def test_read_of_offset_and_size_answers_that_range(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    data = content(ns, 1000)
    digest = put(stub, ns, data)
    chunks = read(stub, ns, digest, offset=100, size=50)
    assert [(chunk.offset, chunk.data) for chunk in chunks] == [(100, data[100:150])]


def test_read_size_zero_or_past_the_end_reads_to_the_end(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    data = content(ns, 1000)
    digest = put(stub, ns, data)
    to_end = [(100, data[100:])]
    assert [(c.offset, c.data) for c in read(stub, ns, digest, offset=100)] == to_end
    assert [(c.offset, c.data) for c in read(stub, ns, digest, 100, 10**9)] == to_end


def test_read_at_the_end_answers_no_data(stub: content_pb2_grpc.ContentStub, ns: str) -> None:
    data = content(ns, 1000)
    digest = put(stub, ns, data)
    assert b"".join(chunk.data for chunk in read(stub, ns, digest, offset=len(data))) == b""


def test_read_past_the_end_is_out_of_range(stub: content_pb2_grpc.ContentStub, ns: str) -> None:
    data = content(ns, 1000)
    digest = put(stub, ns, data)
    error = refusal(lambda: read(stub, ns, digest, offset=len(data) + 1), Code.OUT_OF_RANGE)
    assert str(len(data)) in error.message


def test_read_at_a_negative_offset_is_invalid_argument(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    # containerd reads from 0 instead; contentd tells the caller of its bug.
    digest = put(stub, ns, content(ns))
    error = refusal(lambda: read(stub, ns, digest, offset=-1), Code.INVALID_ARGUMENT)
    assert "offset" in error.message


def test_read_of_a_missing_digest_is_not_found(stub: content_pb2_grpc.ContentStub, ns: str) -> None:
    missing = digest_of(content(ns, tag="never written"))
    error = refusal(lambda: read(stub, ns, missing), Code.NOT_FOUND)
    assert str(error) == f"content {missing}: not found"


@pytest.mark.parametrize(
    "digest", ["", "sha256", "sha256:abc", "md5:" + "0" * 32, "sha256:" + "A" * 64]
)
@pytest.mark.parametrize("method", ["Info", "Read", "Delete", "Update"])
def test_malformed_digest_is_invalid_argument(
    stub: content_pb2_grpc.ContentStub, ns: str, method: str, digest: str
) -> None:
    calls: dict[str, Callable[[], object]] = {
        "Info": lambda: info(stub, ns, digest),
        "Read": lambda: read(stub, ns, digest),
        "Delete": lambda: stub.Delete(
            api.DeleteContentRequest(digest=digest), metadata=namespaced(ns), timeout=CALL_TIMEOUT
        ),
        "Update": lambda: update(stub, ns, digest, {"a": "b"}, "labels"),
    }
    error = refusal(calls[method], Code.INVALID_ARGUMENT)
    assert "digest" in error.message


# Labels, listing, ingests and deletion


def test_update_with_labels_mask_replaces_every_label(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, content(ns), labels={"old": "1", "keep": "1"})
    created = info(stub, ns, digest)
    updated = update(stub, ns, digest, {"new": "2"}, "labels")
    assert dict(updated.labels) == {"new": "2"}
    assert dict(info(stub, ns, digest).labels) == {"new": "2"}
    assert updated.created_at == created.created_at
    assert updated.updated_at.ToNanoseconds() > created.updated_at.ToNanoseconds()


def test_update_with_a_label_path_changes_only_that_label(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, content(ns), labels={"a": "1", "b": "1", "c": "1"})
    # "labels.b" absent from the request's labels: b is removed.
    updated = update(stub, ns, digest, {"a": "2", "b": "", "z": "ignored"}, "labels.a", "labels.b")
    assert dict(updated.labels) == {"a": "2", "c": "1"}
    assert dict(info(stub, ns, digest).labels) == {"a": "2", "c": "1"}


def test_update_with_an_empty_mask_replaces_every_label(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, content(ns), labels={"old": "1"})
    assert dict(update(stub, ns, digest, {"new": "2"}).labels) == {"new": "2"}
    assert dict(info(stub, ns, digest).labels) == {"new": "2"}


@pytest.mark.parametrize("path", ["size", "digest", "created_at", "labelsx"])
def test_update_of_an_unsupported_field_is_invalid_argument(
    stub: content_pb2_grpc.ContentStub, ns: str, path: str
) -> None:
    digest = put(stub, ns, content(ns), labels={"old": "1"})
    error = refusal(lambda: update(stub, ns, digest, {}, path), Code.INVALID_ARGUMENT)
    assert path in error.message
    assert dict(info(stub, ns, digest).labels) == {"old": "1"}


def test_update_of_a_missing_blob_is_not_found(stub: content_pb2_grpc.ContentStub, ns: str) -> None:
    missing = digest_of(content(ns, tag="never written"))
    refusal(lambda: update(stub, ns, missing, {"a": "b"}, "labels"), Code.NOT_FOUND)


def test_list_filters_by_label_value_and_presence_and_ors_filters(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    team_a = put(stub, ns, content(ns, tag="a"), labels={"team": "a"})
    team_b = put(stub, ns, content(ns, tag="b"), labels={"team": "b", "keep": "yes"})
    plain = put(stub, ns, content(ns, tag="plain"))
    assert listed(stub, ns) == sorted([team_a, team_b, plain])
    assert listed(stub, ns, "labels.team==a") == [team_a]
    assert listed(stub, ns, "labels.keep") == [team_b]
    assert listed(stub, ns, "labels.team==a", "labels.keep") == sorted([team_a, team_b])
    assert listed(stub, ns, "labels.team==a,labels.keep") == []
    assert listed(stub, ns, "labels.team!=a") == sorted([team_b, plain])


def test_list_filter_that_does_not_parse_is_invalid_argument(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    refusal(lambda: listed(stub, ns, "labels.team=="), Code.INVALID_ARGUMENT)


@pytest.mark.slow
def test_list_sends_every_info_exactly_once_across_batches(
    stub: content_pb2_grpc.ContentStub, beside: LocalStore, ns: str
) -> None:
    # More than one answer holds. Written daemonless on the daemon's own root,
    # which is quicker than through the daemon, and the daemon sees them at once.
    digests = {put_beside(beside, content(ns, tag=str(number))) for number in range(1001)}
    request = api.ListContentRequest()
    answers = list(stub.List(request, metadata=namespaced(ns), timeout=CALL_TIMEOUT))
    assert len(answers) >= 2
    sent = [item.digest for answer in answers for item in answer.info]
    assert len(sent) == len(digests)
    assert set(sent) == digests


def test_list_answers_stay_near_a_mebibyte_when_labels_are_large(
    stub: content_pb2_grpc.ContentStub, beside: LocalStore, ns: str
) -> None:
    # 20 blobs of about 60 KB of labels each: far fewer than the item bound,
    # so only the byte bound can split them.
    labels = {f"large-{number}": "v" * 4000 for number in range(15)}
    digests = set()
    for number in range(20):
        with beside.writer(f"labelled-{number}", labels=labels) as writer:
            writer.write(content(ns, tag=f"labelled-{number}"))
            digests.add(writer.commit())
    request = api.ListContentRequest()
    answers = list(stub.List(request, metadata=namespaced(ns), timeout=CALL_TIMEOUT))
    assert len(answers) >= 2
    assert all(answer.ByteSize() < (1 << 20) + 70_000 for answer in answers)
    assert {item.digest for answer in answers for item in answer.info} == digests
    assert all(dict(item.labels) == labels for answer in answers for item in answer.info)


def test_list_statuses_filters_by_ref_pattern(stub: content_pb2_grpc.ContentStub, ns: str) -> None:
    for ref in ("layer-1", "layer-2", "config"):
        start_ingest(stub, ns, ref, ref.encode())
    request = api.ListStatusesRequest(filters=["ref~=^layer-"])
    answer = stub.ListStatuses(request, metadata=namespaced(ns), timeout=CALL_TIMEOUT)
    assert sorted((s.ref, s.offset) for s in answer.statuses) == [("layer-1", 7), ("layer-2", 7)]


def test_status_describes_an_ingest(stub: content_pb2_grpc.ContentStub, ns: str) -> None:
    expected = digest_of(b"abcdef")
    with WriteStream(stub, ns) as stream:
        stream.send(stat("described", total=6, expected=expected))
        stream.send(write("described", b"abc"))
        described = status(stub, ns, "described")
    assert (described.ref, described.offset, described.total, described.expected) == (
        "described",
        3,
        6,
        expected,
    )
    assert described.started_at.ToNanoseconds() <= described.updated_at.ToNanoseconds()


def test_status_of_an_unknown_ref_is_not_found(stub: content_pb2_grpc.ContentStub, ns: str) -> None:
    error = refusal(lambda: status(stub, ns, "unknown"), Code.NOT_FOUND)
    assert "unknown" in error.message


def test_abort_removes_the_ingest(stub: content_pb2_grpc.ContentStub, ns: str) -> None:
    start_ingest(stub, ns, "unwanted", b"abc")
    stub.Abort(api.AbortRequest(ref="unwanted"), metadata=namespaced(ns), timeout=CALL_TIMEOUT)
    refusal(lambda: status(stub, ns, "unwanted"), Code.NOT_FOUND)
    assert reopened_offset(stub, ns, "unwanted") == 0


def test_abort_of_an_unknown_ref_is_not_found(stub: content_pb2_grpc.ContentStub, ns: str) -> None:
    refusal(
        lambda: stub.Abort(
            api.AbortRequest(ref="unknown"), metadata=namespaced(ns), timeout=CALL_TIMEOUT
        ),
        Code.NOT_FOUND,
    )


def test_deleted_blob_is_not_found(stub: content_pb2_grpc.ContentStub, ns: str) -> None:
    digest = put(stub, ns, content(ns))
    request = api.DeleteContentRequest(digest=digest)
    stub.Delete(request, metadata=namespaced(ns), timeout=CALL_TIMEOUT)
    refusal(lambda: info(stub, ns, digest), Code.NOT_FOUND)
    refusal(lambda: read(stub, ns, digest), Code.NOT_FOUND)
    refusal(
        lambda: stub.Delete(request, metadata=namespaced(ns), timeout=CALL_TIMEOUT),
        Code.NOT_FOUND,
    )


# Message sizes


def test_single_write_of_15_mib_is_accepted(stub: content_pb2_grpc.ContentStub, ns: str) -> None:
    data = content(ns, 15 * MiB)[: 15 * MiB]
    with WriteStream(stub, ns) as stream:
        assert stream.send(write("big", data)).offset == len(data)
        answer = stream.send(commit("big", offset=len(data), total=len(data)))
    assert answer.digest == digest_of(data)
    assert info(stub, ns, answer.digest).size == len(data)


def test_message_over_16_mib_is_resource_exhausted_and_the_daemon_stays_up(
    channel: grpc.Channel, stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    with WriteStream(stub, ns) as stream:
        stream.send(write("huge", b"abc"))
        oversized = write("huge", b"x" * (16 * MiB + 1), offset=3)
        error = refusal(lambda: stream.send(oversized), Code.RESOURCE_EXHAUSTED)
    # gRPC's words: the daemon's limit refused it, not this client's.
    assert "Received message larger than max" in error.message
    assert health(channel) == health_pb2.HealthCheckResponse.SERVING
    assert reopened_offset(stub, ns, "huge") == 3


# Errors keep the daemon's internals to themselves


def test_blob_missing_behind_the_stores_back_is_data_loss(
    daemon: DaemonProcess, stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, content(ns))
    (daemon.root / "blobs" / "sha256" / digest.removeprefix("sha256:")).unlink()
    error = refusal(lambda: read(stub, ns, digest), Code.DATA_LOSS)
    assert digest in error.message
    assert info(stub, ns, digest).digest == digest


def test_unexpected_failure_is_internal_with_an_error_id_the_daemon_logs(
    daemon: DaemonProcess, stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, content(ns))
    blob = daemon.root / "blobs" / "sha256" / digest.removeprefix("sha256:")
    # A directory where the blob should be: opening works, reading fails (EISDIR).
    blob.unlink()
    blob.mkdir()
    error = refusal(lambda: read(stub, ns, digest), Code.INTERNAL)
    assert error.reason == errdefs.INTERNAL_ERROR_REASON
    error_id = error.metadata["error_id"]
    assert error.message == f"unexpected server error (error id {error_id})"
    assert poll(lambda: f"internal error {error_id}" in daemon.logged(), timeout=5)


# The server around the service


@pytest.mark.parametrize("service", ["", CONTENT_SERVICE])
def test_health_check_answers_serving(channel: grpc.Channel, service: str) -> None:
    assert health(channel, service) == health_pb2.HealthCheckResponse.SERVING


def test_write_streams_beyond_the_limit_are_refused_and_other_calls_still_answer(
    tmp_path: Path,
) -> None:
    # Four workers leave room for three Write streams; the fourth worker stays free.
    with (
        running_daemon(tmp_path / "root", "--workers", "4") as running,
        content_stub(running.address) as stub,
        connect(running.address) as channel,
        WriteStream(stub, "default") as first,
        WriteStream(stub, "default") as second,
        WriteStream(stub, "default") as third,
        contextlib.ExitStack() as stack,
    ):
        for number, stream in enumerate((first, second, third)):
            stream.send(write(f"idle-{number}", b"abc"))
        # A stream is admitted when its call starts: the fourth starts once three are in.
        fourth = stack.enter_context(WriteStream(stub, "default"))
        error = refusal(lambda: fourth.send(write("one-too-many", b"abc")), Code.RESOURCE_EXHAUSTED)
        assert error.reason == "TOO_MANY_WRITE_STREAMS"
        assert health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert status(stub, "default", "idle-0").offset == 3


def test_idle_write_stream_is_canceled_and_releases_its_ref(tmp_path: Path) -> None:
    with (
        running_daemon(tmp_path / "root", "--write-idle-timeout", "0.5") as running,
        content_stub(running.address) as stub,
        WriteStream(stub, "default") as idle,
    ):
        idle.send(write("forgotten", b"abcde"))
        with pytest.raises(grpc.RpcError) as ended:
            idle.receive()
        assert ended.value.code() == Code.CANCELLED
        with WriteStream(stub, "default") as resumed:
            assert resumed.send(stat("forgotten")).offset == 5
    assert "canceling a write stream idle for over 0.5s" in running.logged()


def test_busy_write_stream_is_not_idle(tmp_path: Path) -> None:
    with (
        running_daemon(tmp_path / "root", "--write-idle-timeout", "0.5") as running,
        content_stub(running.address) as stub,
        WriteStream(stub, "default") as busy,
    ):
        busy.send(stat("steady"))
        for _ in range(8):
            time.sleep(0.2)
            busy.send(write("steady", b"x", offset=busy.send(stat("steady")).offset))
    assert "canceling a write stream" not in running.logged()


def test_reflection_lists_the_content_service(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    assert CONTENT_SERVICE in database.get_services()
    service = descriptor_pool.DescriptorPool(database).FindServiceByName(CONTENT_SERVICE)
    assert {method.name for method in service.methods} == {
        "Info",
        "Update",
        "List",
        "Delete",
        "Read",
        "Status",
        "ListStatuses",
        "Write",
        "Abort",
    }


def test_unix_socket_is_mode_0660(daemon: DaemonProcess) -> None:
    mode = os.stat(daemon.socket).st_mode
    assert S_ISSOCK(mode)
    assert S_IMODE(mode) == 0o660


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory for a daemon's socket, its path short enough for a unix socket."""
    directory = Path(tempfile.mkdtemp(prefix="cd-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_stale_socket_of_a_killed_daemon_is_replaced(tmp_path: Path, socket_dir: Path) -> None:
    killed = start_daemon(tmp_path / "root", socket_dir=socket_dir)
    killed.kill()
    assert S_ISSOCK(os.stat(killed.socket).st_mode)
    successor = start_daemon(tmp_path / "root", socket_dir=socket_dir)
    try:
        with connect(successor.address) as channel:
            assert health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert "replacing stale socket" in successor.logged()
    finally:
        successor.stop()


def test_second_daemon_on_a_live_socket_fails_and_the_first_keeps_serving(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path / "root") as first:
        second = subprocess.run(
            [
                *contentd_command(),
                "serve",
                "--root",
                str(tmp_path / "root"),
                "--address",
                first.address,
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert f"cannot listen on {first.address}: another daemon is serving there" in (
            second.stderr
        )
        assert "Traceback" not in second.stderr
        assert S_ISSOCK(os.stat(first.socket).st_mode)
        with connect(first.address) as channel:
            assert health(channel) == health_pb2.HealthCheckResponse.SERVING


@contextlib.contextmanager
def serving(args: list[str], env: dict[str, str]) -> Iterator[str]:
    """Run the CLI with `args` until it serves; yields the address it logged, then stops it
    with SIGTERM and checks it exited cleanly."""
    with subprocess.Popen(
        [*contentd_command(), *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **env},
    ) as process:
        assert process.stderr is not None
        address = next(
            (
                line.split("serving on ")[1].strip()
                for line in process.stderr
                if "serving on " in line
            ),
            None,
        )
        if address is None:
            raise AssertionError("the daemon exited before serving")
        try:
            yield address
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0


def test_serve_without_options_uses_the_embedded_default(tmp_path: Path) -> None:
    # README's Quick start: `contentd serve` on a fresh machine, no root needed.
    data_home = tmp_path / "data"
    with serving(["serve"], {"XDG_DATA_HOME": str(data_home)}) as address:
        assert address == f"unix://{data_home / 'contentd' / 'contentd.sock'}"
        with connect(address) as channel:
            assert health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert (data_home / "contentd" / "metadata.db").exists()


def test_the_client_finds_the_default_daemon_with_no_options(tmp_path: Path) -> None:
    data_home = tmp_path / "data"
    env = {"XDG_DATA_HOME": str(data_home)}
    with serving(["serve"], env):
        client_env = {**os.environ, **env}
        client_env.pop("CONTENTD_ADDRESS", None)
        client_env.pop("CONTENTD_ROOT", None)
        listed = subprocess.run(
            [*contentd_command(), "--json", "ls"],
            env=client_env,
            capture_output=True,
            check=False,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr


def test_global_root_names_the_store_to_serve(tmp_path: Path) -> None:
    root = tmp_path / "given"
    with serving(
        ["--root", str(root), "serve"], {"XDG_DATA_HOME": str(tmp_path / "unused")}
    ) as address:
        assert address == f"unix://{root / 'contentd.sock'}"
    assert not (tmp_path / "unused").exists()


def test_socket_group_owns_the_socket(tmp_path: Path) -> None:
    group = 4242  # any id: the test runs as root, who may give files to any group
    if os.getuid() != 0:
        group = os.getgid()
    with running_daemon(tmp_path / "root", "--socket-group", str(group)) as running:
        assert os.stat(running.socket).st_gid == group


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_and_terminate_stop_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    running = start_daemon(tmp_path / "root")
    assert running.stop(sig) == 0, running.logged()
    assert not os.path.exists(running.socket)
    assert "shutting down" in running.logged()


def test_sigterm_with_an_open_write_stream_stops_within_the_grace_and_keeps_the_ingest(
    tmp_path: Path,
) -> None:
    grace = 1.0
    first = start_daemon(tmp_path / "root", "--grace", str(grace))
    try:
        with content_stub(first.address) as stub, WriteStream(stub, "default") as stream:
            stream.send(write("in-flight", b"abcde"))
            started = time.monotonic()
            exit_status = first.stop(signal.SIGTERM)
            elapsed = time.monotonic() - started
            with pytest.raises(grpc.RpcError):
                stream.receive()
    finally:
        first.kill()
    assert exit_status == 0, first.logged()
    assert "stopped" in first.logged()
    assert elapsed < grace + 3
    with running_daemon(tmp_path / "root") as second, content_stub(second.address) as stub:
        assert status(stub, "default", "in-flight").offset == 5
        with WriteStream(stub, "default") as stream:
            # At once: the lock died with the stream, and with the daemon.
            assert stream.send(stat("in-flight")).offset == 5


def test_sigterm_with_open_write_streams_exits_0(tmp_path: Path) -> None:
    # Many streams, so some writer is still closing when the store closes.
    for attempt in range(5):
        running = start_daemon(tmp_path / f"root{attempt}", "--grace", "0.2", "--workers", "200")
        try:
            with content_stub(running.address) as stub, contextlib.ExitStack() as streams:
                for number in range(150):
                    stream = streams.enter_context(WriteStream(stub, "default"))
                    stream.send(write(f"in-flight-{number}", b"abc"))
                exit_status = running.stop(signal.SIGTERM)
        finally:
            running.kill()
        assert exit_status == 0, running.logged()


def test_debug_log_has_one_line_per_request(tmp_path: Path) -> None:
    with (
        running_daemon(tmp_path / "root", "--log-level", "debug") as running,
        content_stub(running.address) as stub,
    ):
        digest = put(stub, "default", b"logged")
        for _ in range(2):
            info(stub, "default", digest)
        refusal(lambda: info(stub, "default", digest_of(b"absent")), Code.NOT_FOUND)
        read(stub, "default", digest)
        expected = Counter({"Write": 1, "Info": 3, "Read": 1})
        requests: Counter[str] = Counter()

        def all_logged() -> bool:
            requests.clear()
            requests.update(
                re.findall(
                    r"contentd\.daemon: /containerd\.services\.content\.v1\.Content/(\w+)"
                    r" [A-Z_]+ in [0-9.]+ ms",
                    running.logged(),
                )
            )
            return requests == expected

        assert poll(all_logged, timeout=5), (requests, running.logged())
        assert "/containerd.services.content.v1.Content/Info NOT_FOUND in" in running.logged()


def test_debug_log_has_a_line_for_a_read_its_caller_cancels(tmp_path: Path) -> None:
    with (
        running_daemon(tmp_path / "root", "--log-level", "debug") as running,
        content_stub(running.address) as stub,
    ):
        # Far more than the transport buffers: the daemon is mid-stream when the caller leaves.
        digest = put(stub, "default", b"x" * (15 * MiB))
        request = api.ReadContentRequest(digest=digest)
        call = stub.Read(request, metadata=namespaced("default"), timeout=CALL_TIMEOUT)
        assert len(next(call).data) == MiB
        call.cancel()
        read_line = "contentd.daemon: /containerd.services.content.v1.Content/Read "
        assert poll(lambda: read_line in running.logged(), timeout=2)


def test_tcp_address_logs_its_port_and_serves(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "root", "--address", "127.0.0.1:0") as running:
        found: list[str] = []

        def port_logged() -> bool:
            found[:] = re.findall(r"serving on 127\.0\.0\.1:(\d+)", running.logged())
            return bool(found)

        assert poll(port_logged, timeout=5), running.logged()
        assert int(found[0]) > 0
        with content_stub(f"127.0.0.1:{found[0]}") as stub:
            digest = put(stub, "default", b"over tcp")
            assert info(stub, "default", digest).size == len(b"over tcp")


def test_allocator_thresholds_pin_on_glibc() -> None:
    # Without the pin, large messages may cost fresh pages each (see daemon/_memory.py).
    assert pin_allocator_thresholds() == (platform.libc_ver()[0] == "glibc")


def test_list_and_info_describe_a_blob_identically(
    stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, content(ns, tag="described twice"), labels={"k": "v"})
    (listed,) = [
        info
        for batch in stub.List(api.ListContentRequest(), metadata=namespaced(ns))
        for info in batch.info
    ]
    assert listed == info(stub, ns, digest)


# Hostile input


@pytest.mark.parametrize(
    "method", ["Info", "Update", "List", "Delete", "Read", "Status", "ListStatuses", "Abort"]
)
def test_request_that_is_no_valid_message_is_invalid_argument(
    channel: grpc.Channel, ns: str, method: str
) -> None:
    # Field 1 (a digest, ref, filter or Info) holding bytes that are not UTF-8.
    undecodable = b"\x0a\x02\xff\xfe"
    path = f"/{CONTENT_SERVICE}/{method}"

    def call() -> object:
        if method in ("List", "Read"):
            answers = channel.unary_stream(path)(
                undecodable, metadata=namespaced(ns), timeout=CALL_TIMEOUT
            )
            return list(answers)
        return channel.unary_unary(path)(undecodable, metadata=namespaced(ns), timeout=CALL_TIMEOUT)

    error = refusal(call, Code.INVALID_ARGUMENT)
    assert error.message.startswith("request is no valid containerd.services.content.v1.")


def test_write_message_that_is_no_valid_message_is_invalid_argument_and_keeps_the_ingest(
    channel: grpc.Channel, stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    messages = [write("undecodable", b"abc").SerializeToString(), b"\x12\x02\xff\xfe"]
    call = channel.stream_stream(f"/{CONTENT_SERVICE}/Write")
    error = refusal(
        lambda: list(call(iter(messages), metadata=namespaced(ns), timeout=CALL_TIMEOUT)),
        Code.INVALID_ARGUMENT,
    )
    assert error.message.startswith(
        "request is no valid containerd.services.content.v1.WriteContentRequest message"
    )
    assert reopened_offset(stub, ns, "undecodable") == 3


@pytest.mark.parametrize(
    ("first", "refused"),
    [
        (api.WriteContentRequest(action=7, ref="odd", data=b"abc"), "unknown write action 7"),
        (write("odd", b"abc", offset=-1), "write offset -1: must not be negative"),
        (
            commit("odd", offset=3, labels={"k": "v" * 5000}),
            "label 'k': key and value longer than 4096 bytes",
        ),
    ],
)
def test_write_stream_refused_at_its_first_message_leaves_no_ingest(
    stub: content_pb2_grpc.ContentStub, ns: str, first: api.WriteContentRequest, refused: str
) -> None:
    with WriteStream(stub, ns) as stream:
        error = refusal(lambda: stream.send(first), Code.INVALID_ARGUMENT)
    assert error.message == refused
    refusal(lambda: status(stub, ns, "odd"), Code.NOT_FOUND)


def test_sigusr1_prints_every_threads_stack_and_keeps_serving(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "root") as daemon:
        daemon.process.send_signal(signal.SIGUSR1)
        assert poll(lambda: "Current thread" in daemon.logged(), timeout=10)
        assert "Thread 0x" in daemon.logged()  # the others too
        assert daemon.process.poll() is None
        with content_stub(daemon.address) as stub, pytest.raises(grpc.RpcError) as missing:
            status(stub, "default", "no-such-ref")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

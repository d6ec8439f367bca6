"""containerd.services.content.v1.Content over a content store, with containerd 1.6's semantics."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Protocol

import grpc
from google.protobuf import empty_pb2

from contentd.content import (
    CONTENT,
    LeaseResource,
    MetadataStore,
    RecordWalker,
    Writer,
    validate_labels,
    validate_update_paths,
)
from contentd.content import validate_digest as _validate_digest
from contentd.errdefs import (
    AlreadyExists,
    ContentdError,
    InvalidArgument,
    OutOfRange,
)
from contentd.proto import content_pb2 as api
from contentd.proto import content_pb2_grpc
from contentd.proto.wire import (
    add_record,
    info_message,
    status_message,
    timestamp_from_datetime,
)

from ._boundary import decoded, streaming, unary
from ._requests import request_headers
from ._streams import StreamRegistry, StreamState

#: Largest Read chunk, as in containerd.
READ_CHUNK = 1 << 20
#: List answers are batched up to about this many bytes (containerd batches by 100 items).
LIST_BATCH_BYTES = 1 << 20
_LIST_BATCH_ITEMS = 1000
#: The actions a Write message may ask for; proto3 enums let any other number through.
_WRITE_ACTIONS = frozenset({api.STAT, api.WRITE, api.COMMIT})

_log = logging.getLogger("contentd.daemon")


class ByteCount(Protocol):
    """Where bytes moved are counted (a Prometheus counter)."""

    def inc(self, amount: float = 1) -> None: ...


class ListedStore(MetadataStore, RecordWalker, Protocol):
    """A store the Content service serves: it lists its stored records (no Info built), and
    writes under leases."""


class ContentService(content_pb2_grpc.ContentServicer):
    """The Content API over a store; each request picks its namespace from its metadata."""

    def __init__(
        self,
        store: ListedStore,
        *,
        max_write_streams: int,
        write_idle_timeout: float | None,
        max_write_streams_per_namespace: int | None = None,
        ingested: ByteCount | None = None,
        read: ByteCount | None = None,
    ) -> None:
        """`ingested` and `read`, when given, count the bytes of Write and Read messages."""
        self._store = store
        self._ingested = ingested
        self._read = read
        self._streams = StreamRegistry(
            max_write_streams, write_idle_timeout, max_write_streams_per_namespace
        )

    def close(self) -> None:
        """Stop the service's background work (the idle Write stream watchdog)."""
        self._streams.close()

    def held_locks(self) -> int:
        """Ingest locks Write streams hold now."""
        return self._streams.held()

    def _namespaced(self, context: grpc.ServicerContext) -> ListedStore:
        """The store as the request's namespace sees it, under the request's lease if any.

        As in containerd, only writes (Write, and Abort and Delete, which
        take what they remove off the lease) act on the lease.
        """
        namespace, lease = request_headers(context)
        store = self._store.with_namespace(namespace)
        return store if lease is None else store.with_lease(lease)

    @unary
    def Info(self, request: api.InfoRequest, context: grpc.ServicerContext) -> api.InfoResponse:
        store = self._namespaced(context)
        return api.InfoResponse(info=info_message(store.info(request.digest)))

    @unary
    def Update(
        self, request: api.UpdateRequest, context: grpc.ServicerContext
    ) -> api.UpdateResponse:
        store = self._namespaced(context)
        paths = validate_update_paths(request.update_mask.paths)
        info = store.update(request.info.digest, dict(request.info.labels), list(paths))
        return api.UpdateResponse(info=info_message(info))

    @streaming
    def List(
        self, request: api.ListContentRequest, context: grpc.ServicerContext
    ) -> Iterator[api.ListContentResponse]:
        store = self._namespaced(context)
        response = api.ListContentResponse()
        batch_bytes = 0
        for record in store.walk_records(*request.filters):
            batch_bytes += add_record(response.info, record)
            if batch_bytes >= LIST_BATCH_BYTES or len(response.info) >= _LIST_BATCH_ITEMS:
                yield response
                response = api.ListContentResponse()
                batch_bytes = 0
        if response.info:
            yield response

    @unary
    def Delete(
        self, request: api.DeleteContentRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._namespaced(context).delete(request.digest)
        return empty_pb2.Empty()

    @streaming
    def Read(
        self, request: api.ReadContentRequest, context: grpc.ServicerContext
    ) -> Iterator[api.ReadContentResponse]:
        store = self._namespaced(context)
        _validate_digest(request.digest)
        if request.offset < 0:
            # containerd reads from 0 instead; a negative offset is a caller's bug.
            raise InvalidArgument(f"read offset {request.offset}: must not be negative")
        if request.size < 0:
            raise InvalidArgument(f"read size {request.size}: must not be negative")
        with store.reader_at(request.digest) as reader:
            if request.offset > reader.size:
                raise OutOfRange(f"read past object length {reader.size} bytes")
            end = reader.size
            if request.size and request.offset + request.size < end:
                end = request.offset + request.size
            offset = request.offset
            counted = self._read
            while offset < end:
                data = reader.read_at(min(READ_CHUNK, end - offset), offset)
                if not data:
                    break
                if counted is not None:
                    counted.inc(len(data))
                yield api.ReadContentResponse(offset=offset, data=data)
                offset += len(data)

    @unary
    def Status(
        self, request: api.StatusRequest, context: grpc.ServicerContext
    ) -> api.StatusResponse:
        store = self._namespaced(context)
        return api.StatusResponse(status=status_message(store.status(request.ref)))

    @unary
    def ListStatuses(
        self, request: api.ListStatusesRequest, context: grpc.ServicerContext
    ) -> api.ListStatusesResponse:
        store = self._namespaced(context)
        statuses = store.list_statuses(*request.filters)
        return api.ListStatusesResponse(statuses=[status_message(s) for s in statuses])

    @unary
    def Abort(self, request: api.AbortRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        store = self._namespaced(context)
        # Like a new writer, an abort may meet a stream that is just ending.
        self._streams.open((store.namespace, request.ref), lambda: store.abort(request.ref))
        return empty_pb2.Empty()

    @streaming
    def Write(
        self, request_iterator: Iterator[api.WriteContentRequest], context: grpc.ServicerContext
    ) -> Iterator[api.WriteContentResponse]:
        store = self._namespaced(context)
        requests = decoded(request_iterator)
        with self._streams.admitted(context, store.namespace) as state:
            request = self._streams.receive(state, requests)
            if request is None:
                return  # the caller hung up before saying anything
            yield from self._write_stream(store, state, request, requests)

    def _write_stream(
        self,
        store: ListedStore,
        state: StreamState,
        request: api.WriteContentRequest,
        request_iterator: Iterator[api.WriteContentRequest],
    ) -> Iterator[api.WriteContentResponse]:
        ref = request.ref
        if not ref:
            raise InvalidArgument("first message must have a reference")
        self._check(request)
        total = max(request.total, 0)
        expected = request.expected
        key = (store.namespace, ref)
        if request.action == api.COMMIT and request.offset == 0:
            # Everything in one message: store it in one step. (A commit at
            # offset 0 restarts any ingest on the ref, as the API says.)
            labels = dict(request.labels) if request.labels else None
            data = request.data
            if self._ingested is not None:
                self._ingested.inc(len(data))
            digest = self._streams.open(
                key,
                lambda: store.put(ref, data, size=total, expected=expected, labels=labels),
            )
            yield api.WriteContentResponse(
                action=api.COMMIT, offset=len(data), total=total, digest=digest
            )
            return
        # The writer holds the ref's lock for as long as this stream lives;
        # leaving this block for any reason (commit, error, the caller
        # leaving) releases it before the stream's status is sent.
        writer = self._streams.open(key, lambda: store.writer(ref, total=total, expected=expected))
        with self._streams.holding(key, state), writer:
            first = True
            while True:
                state.yielding = False
                if not first:
                    self._check(request)
                if request.expected:
                    expected = request.expected
                    if not first:  # opening the writer checked the first one
                        self._refuse_stored(store, writer, expected)
                first = False
                if request.total > 0:
                    total = request.total
                response = api.WriteContentResponse(action=request.action, offset=writer.offset)
                if request.action == api.STAT:
                    status = writer.status()
                    response.started_at.CopyFrom(timestamp_from_datetime(status.started_at))
                    response.updated_at.CopyFrom(timestamp_from_datetime(status.updated_at))
                    response.total = total
                else:
                    response.offset = self._write(writer, request, writer.offset, self._ingested)
                    if request.action == api.COMMIT:
                        labels = dict(request.labels) if request.labels else None
                        writer.commit(total, expected, labels)
                        response.total = total
                response.digest = writer.digest()
                state.waiting()
                yield response
                if request.action == api.COMMIT:
                    return
                next_request = self._streams.receive(state, request_iterator)
                if next_request is None:
                    return  # the caller closed its side: keep the ingest for resuming
                request = next_request

    @staticmethod
    def _check(request: api.WriteContentRequest) -> None:
        """Refuse a message that cannot be acted on before acting on any of it.

        A stream's first message opens (and may create) its ingest; refused
        here, bad input leaves the store as it was.
        """
        if request.action not in _WRITE_ACTIONS:
            raise InvalidArgument(f"unknown write action {request.action}")
        if request.action == api.STAT:
            return
        if request.offset < 0:
            raise InvalidArgument(f"write offset {request.offset}: must not be negative")
        if request.action == api.COMMIT and request.labels:
            validate_labels(request.labels)

    @staticmethod
    def _write(
        writer: Writer, request: api.WriteContentRequest, offset: int, ingested: ByteCount | None
    ) -> int:
        """Apply a WRITE or COMMIT message's data; returns the ingest's new offset."""
        if request.offset > 0 and request.offset != offset:
            raise OutOfRange(f"write @{request.offset} must occur at current offset {offset}")
        if request.offset == 0 and offset > 0:
            # Writing at zero restarts the ingest, as the API promises.
            writer.truncate(0)
            offset = 0
        # Each access to a bytes field copies it out of the message: once.
        data = request.data
        if data:
            offset += writer.write(data)
            if ingested is not None:
                ingested.inc(len(data))
        return offset

    @staticmethod
    def _refuse_stored(store: ListedStore, writer: Writer, expected: str) -> None:
        """Fail the write, dropping its ingest, if `expected` is already committed.

        Under a lease, the stored blob goes on the lease instead of the
        ingest, as a writer opened on it would have put it (containerd
        leaves it off here, and a collection may take it before the image
        that needs it exists).
        """
        try:
            store.info(expected)
        except ContentdError:
            return
        writer.close()
        with contextlib.suppress(ContentdError):
            store.abort(writer.ref)
        if store.lease_id is not None:
            with contextlib.suppress(ContentdError):
                store.leases.add_resource(store.lease_id, LeaseResource(expected, CONTENT))
        raise AlreadyExists(f"blob with expected digest {expected} exists")

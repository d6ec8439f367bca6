"""RemoteStore: the Store interface over a daemon's Content API (contentd's or containerd's)."""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Final, TypeVar

import grpc
import grpc.experimental
from google.protobuf import field_mask_pb2

from contentd.content import (
    DEFAULT_LEASE_EXPIRY,
    DEFAULT_NAMESPACE,
    Closing,
    CollectionReport,
    Info,
    MetadataStore,
    ReaderAt,
    SeekableBlob,
    Status,
    Writer,
    check_commit,
    leased,
    validate_namespace,
)
from contentd.errdefs import (
    ContentdError,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    Unimplemented,
    Unknown,
    from_grpc,
)
from contentd.proto import content_pb2 as api
from contentd.proto import content_pb2_grpc, gc_pb2, transfer_pb2
from contentd.proto.gc_pb2_grpc import GCStub
from contentd.proto.transfer_pb2_grpc import TransferStub
from contentd.proto.wire import (
    CONTENT_SERVICE,
    LEASE_HEADER,
    MAX_MESSAGE_BYTES,
    NAMESPACE_HEADER,
    collection_from_message,
    datetime_from_timestamp,
    image_from_message,
    info_from_message,
    status_from_message,
)

from ._metadata import Headers, RemoteImages, RemoteLeases, RemoteNamespaces, call
from ._tls import TLSConfig

if TYPE_CHECKING:
    from contentd.content import Image

    from ._pull import PullSpec
    from ._transfer import EventHandler

#: Bytes per WRITE message: big enough to keep the link busy, small enough to stream.
WRITE_CHUNK: Final = 1 << 20
#: WRITE requests a writer keeps in flight before it waits for an answer.
WRITE_WINDOW: Final = 4

#: The Content service's Write method, as it is named on the wire.
WRITE_METHOD: Final = f"/{CONTENT_SERVICE}/Write"

_T = TypeVar("_T")


def channel_target(address: str) -> str:
    """A gRPC target for an address: ``unix:///path``, a bare ``/path``, or ``host:port``."""
    if address.startswith("/"):
        return f"unix://{address}"
    return address


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Raise a failed call as its contentd.errdefs class (a RemoteError)."""
    try:
        yield
    except grpc.RpcError as exc:
        raise from_grpc(exc) from exc


def _open_channel(
    target: str,
    settings: Sequence[tuple[str, object]],
    credentials: grpc.ChannelCredentials | None,
) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target, options=settings)
    return grpc.secure_channel(target, credentials, options=settings)


class _Channel:
    """One gRPC channel and stub, shared by the namespace views of a RemoteStore."""

    def __init__(
        self,
        address: str,
        timeout: float | None,
        options: Sequence[tuple[str, object]],
        tls: TLSConfig | None,
    ):
        self.address = address
        self.timeout = timeout
        settings: list[tuple[str, object]] = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # Notice a dead daemon during long idle streams (held
            # writers). Five minutes is the shortest interval gRPC servers,
            # containerd's included, accept by default without answering
            # with GOAWAY "too many pings".
            ("grpc.keepalive_time_ms", 300_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            *(tls.channel_options() if tls else ()),
            *options,
        ]
        target = channel_target(address)
        credentials = tls.channel_credentials() if tls else None
        self.channel = _open_channel(target, settings, credentials)
        self.stub = content_pb2_grpc.ContentStub(self.channel)  # type: ignore[no-untyped-call]
        # `put` sends a Write stream one request, so it calls Write as a
        # unary-stream method (the same frames on the wire), on a second
        # channel that reads answers on the calling thread. For a stream
        # call grpcio's synchronous API starts one thread to feed the
        # requests and another to read the answers: 1.4-1.8 ms of client CPU
        # per small blob, against 0.5-0.6 ms this way. Both channels share
        # one connection. Only `put` uses the second: it reads no answer
        # ahead, which slowed Read of a large blob by a third.
        self._caller_reads = _open_channel(
            target,
            [*settings, (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)],
            credentials,
        )
        self.write_once = self._caller_reads.unary_stream(
            WRITE_METHOD,
            request_serializer=api.WriteContentRequest.SerializeToString,
            response_deserializer=api.WriteContentResponse.FromString,
        )

    def close(self) -> None:
        self._caller_reads.close()
        self.channel.close()


class RemoteStore(Closing):
    """A content store served by a daemon, as one namespace sees it.

    It implements `contentd.content.Store`, so code written for LocalStore
    runs against a daemon unchanged; errors are `contentd.errdefs` classes,
    decoded from the daemon's answers with their reason and metadata. It talks
    to contentd and to containerd alike.

    `timeout` bounds each call, in seconds (None: no bound), except Read and
    Write streams, which last as long as their data does. `tls` (a TLSConfig)
    speaks TLS to a daemon serving it on TCP; without it the channel is
    plaintext, as unix sockets are. Close the store (or use it as a context
    manager) to close its channel; `with_namespace` views share the channel.
    """

    def __init__(
        self,
        address: str,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        timeout: float | None = 30.0,
        channel_options: Sequence[tuple[str, object]] = (),
        tls: TLSConfig | None = None,
    ) -> None:
        self._namespace = validate_namespace(namespace)
        self._channel = _Channel(address, timeout, channel_options, tls)
        self._lease: str | None = None
        self._metadata: Headers = ((NAMESPACE_HEADER, self._namespace),)

    @classmethod
    def _view(cls, channel: _Channel, namespace: str, lease: str | None = None) -> RemoteStore:
        view = cls.__new__(cls)
        view._namespace = validate_namespace(namespace)
        view._channel = channel
        view._lease = lease
        view._metadata = ((NAMESPACE_HEADER, view._namespace),)
        if lease is not None:
            view._metadata += ((LEASE_HEADER, lease),)
        return view

    @property
    def namespace(self) -> str:
        """The namespace this view reads and writes."""
        return self._namespace

    @property
    def address(self) -> str:
        """The daemon's address."""
        return self._channel.address

    def with_namespace(self, namespace: str) -> RemoteStore:
        """The same store as `namespace` sees it (writes under no lease)."""
        return RemoteStore._view(self._channel, namespace)

    # Leases, images and namespaces

    def with_lease(self, lease: str | None) -> RemoteStore:
        """The same store, its writes made under `lease` (sent as ``containerd-lease``)."""
        return RemoteStore._view(self._channel, self._namespace, lease)

    @property
    def lease_id(self) -> str | None:
        """The lease this view writes under, if any."""
        return self._lease

    @contextlib.contextmanager
    def lease(
        self,
        *,
        expire: timedelta | None = DEFAULT_LEASE_EXPIRY,
        labels: Mapping[str, str] | None = None,
    ) -> Iterator[RemoteStore]:
        """A new lease for the block, and a view writing under it, as containerd's
        `client.WithLease` does (see `contentd.content.leased`)."""
        with leased(self, expire, labels) as view:
            yield view

    @property
    def leases(self) -> RemoteLeases:
        """The namespace's leases."""
        return RemoteLeases(self._channel.channel, self._metadata[:1], self._channel.timeout)

    @property
    def images(self) -> RemoteImages:
        """The namespace's images."""
        return RemoteImages(self._channel.channel, self._metadata[:1], self._channel.timeout)

    @property
    def namespaces(self) -> RemoteNamespaces:
        """Every namespace of the daemon's store."""
        return RemoteNamespaces(self._channel.channel, self._channel.timeout)

    def collect(self, *, dry_run: bool = False) -> CollectionReport:
        """Have the daemon collect garbage now; what it removed (contentd's own service)."""
        stub = GCStub(self._channel.channel)  # type: ignore[no-untyped-call]
        request = gc_pb2.CollectRequest(dry_run=dry_run)
        # A collection waits for the metadata's write lock, and a big store
        # takes a while to mark: no call timeout of the store's.
        response = call(stub.Collect, request, (), None)
        return collection_from_message(response)

    def pull_in_daemon(
        self, spec: PullSpec, on_event: EventHandler | None, progress: bool = True
    ) -> Image:
        """Have the daemon fetch `spec` into its store itself (contentd's Transfer service),
        telling `on_event` of each step, and of each blob's bytes if `progress`: the daemon
        sends no event nobody hears.

        Unimplemented (a RemoteError) before any event: the daemon has no such
        service (containerd), and nothing was done. Leaving early (Ctrl-C)
        cancels the call, and the daemon's pull with it.
        """
        from ._transfer import TransferEvent  # noqa: PLC0415

        options = spec.options
        request = transfer_pb2.PullRequest(
            reference=str(spec.reference),
            platform="" if spec.platform is None else str(spec.platform),
            all_platforms=spec.platform is None,
            name=spec.name,
            plain_http=options.plain_http,
            concurrency=spec.concurrency,
            tls_ca=options.tls_ca_pem or b"",
        )
        if on_event is None:
            request.events = transfer_pb2.PullRequest.LAST
        elif not progress:
            request.events = transfer_pb2.PullRequest.STEPS
        if options.credentials is not None:
            request.credentials.username = options.credentials.username
            request.credentials.password = options.credentials.password
        stub = TransferStub(self._channel.channel)  # type: ignore[no-untyped-call]
        # A pull lasts as long as its downloads do: no call timeout of the store's.
        stream = stub.Pull(request, metadata=self._metadata)
        image: Image | None = None
        try:
            with _translated():
                # Read to the end of the call: the daemon ends it once the pull has.
                for message in stream:
                    if message.HasField("image"):
                        image = image_from_message(message.image)
                    if on_event is not None:
                        on_event(
                            TransferEvent(
                                message.kind,
                                message.digest,
                                message.size,
                                message.media_type,
                                message.ref,
                                message.offset,
                                message.name,
                                message.reason,
                            )
                        )
        except BaseException:
            stream.cancel()  # interrupted here (Ctrl-C, a failing handler): the daemon stops too
            raise
        if image is None:
            raise Unknown(f"pulling {spec.reference}: the daemon ended the pull without an image")
        return image

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the daemon accepts connections; Unavailable if it does not in time.

        A unix socket that does not exist fails at once: nothing will answer
        there. The error carries gRPC's account of the last connection attempt
        (refused, a failed TLS handshake), which is often the whole story.
        """
        target = channel_target(self.address)
        if target.startswith("unix://") and not os.path.exists(target.removeprefix("unix://")):
            raise Unavailable(f"no daemon answering at {self.address}: no such socket")
        try:
            grpc.channel_ready_future(self._channel.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            why = self._connection_failure()
            raise Unavailable(f"no daemon answering at {self.address}{why}") from None

    def _connection_failure(self) -> str:
        # A call on a channel that failed to connect fails at once, with the reason.
        try:
            self._channel.stub.Status(api.StatusRequest(), metadata=self._metadata, timeout=1.0)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE and exc.details():
                return f" ({exc.details()})"
        return ""

    # Committed content

    def info(self, digest: str) -> Info:
        with _translated():
            response = self._channel.stub.Info(
                api.InfoRequest(digest=digest),
                metadata=self._metadata,
                timeout=self._channel.timeout,
            )
        return info_from_message(response.info)

    def update(
        self,
        digest: str,
        labels: Mapping[str, str],
        fieldpaths: Sequence[str] = (),
    ) -> Info:
        request = api.UpdateRequest(
            info=api.Info(digest=digest, labels=dict(labels)),
            update_mask=field_mask_pb2.FieldMask(paths=list(fieldpaths)),
        )
        with _translated():
            response = self._channel.stub.Update(
                request, metadata=self._metadata, timeout=self._channel.timeout
            )
        return info_from_message(response.info)

    def walk(self, *filter_expressions: str) -> Iterator[Info]:
        call = self._channel.stub.List(
            api.ListContentRequest(filters=list(filter_expressions)),
            metadata=self._metadata,
            timeout=self._channel.timeout,
        )
        # Read the first batch now, so a bad filter fails here as it does on
        # a LocalStore, not on the caller's first next().
        with _translated():
            first = next(call, None)
        return self._walk(call, first)

    @staticmethod
    def _walk(
        call: Iterator[api.ListContentResponse], first: api.ListContentResponse | None
    ) -> Iterator[Info]:
        if first is None:
            return
        for info in first.info:
            yield info_from_message(info)
        with _translated():
            for batch in call:
                for info in batch.info:
                    yield info_from_message(info)

    def delete(self, digest: str) -> None:
        with _translated():
            self._channel.stub.Delete(
                api.DeleteContentRequest(digest=digest),
                metadata=self._metadata,
                timeout=self._channel.timeout,
            )

    def reader_at(self, digest: str) -> RemoteReader:
        size = self.info(digest).size
        return RemoteReader(self._channel.stub, self._metadata, digest, size)

    # Ingests

    def status(self, ref: str) -> Status:
        with _translated():
            response = self._channel.stub.Status(
                api.StatusRequest(ref=ref), metadata=self._metadata, timeout=self._channel.timeout
            )
        return status_from_message(response.status)

    def list_statuses(self, *filter_expressions: str) -> list[Status]:
        with _translated():
            response = self._channel.stub.ListStatuses(
                api.ListStatusesRequest(filters=list(filter_expressions)),
                metadata=self._metadata,
                timeout=self._channel.timeout,
            )
        return [status_from_message(status) for status in response.statuses]

    def abort(self, ref: str) -> None:
        with _translated():
            self._channel.stub.Abort(
                api.AbortRequest(ref=ref), metadata=self._metadata, timeout=self._channel.timeout
            )

    def writer(
        self,
        ref: str,
        *,
        total: int = 0,
        expected: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> RemoteWriter:
        return RemoteWriter(
            self._channel,
            self._metadata,
            ref,
            total=total,
            expected=expected,
            labels=labels,
        )

    def put(
        self,
        ref: str,
        data: bytes | bytearray | memoryview,
        *,
        size: int = 0,
        expected: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Store small `data` through `ref` in one message: a Write whose only request commits.

        The Content API lets a COMMIT carry the data; one round trip stores
        the blob on contentd and containerd alike. `data` must fit in one
        message (16 MiB with containerd's limits).
        """
        request = api.WriteContentRequest(
            action=api.COMMIT,
            ref=ref,
            total=size,
            expected=expected,
            data=bytes(data),
            labels=dict(labels or {}),
        )
        call = self._channel.write_once(
            request, metadata=self._metadata, timeout=self._channel.timeout
        )
        with _translated():
            # containerd 1.6 answers a commit twice; the first answer counts.
            responses: list[api.WriteContentResponse] = list(call)
        if not responses:
            raise Unknown(f"write stream for ref {ref} ended without an answer")
        answer = responses[0]
        # The daemon checked; so does the client, as any store's commit is checked.
        return check_commit(size, expected, answer.offset, lambda: answer.digest)

    # Lifetime

    def close(self) -> None:
        """Close the channel (shared by every namespace view of this store)."""
        self._channel.close()


class RemoteReader(SeekableBlob):
    """A blob on a daemon, as a binary file object with `read_at` and `size`.

    Sequential reads keep one Read stream open from the current position and
    hold at most one message (1 MiB) beyond what was asked for; `read_at`
    asks for exactly its range, and seeking elsewhere starts a new stream.
    """

    def __init__(
        self,
        stub: content_pb2_grpc.ContentStub,
        metadata: tuple[tuple[str, str], ...],
        digest: str,
        size: int,
    ) -> None:
        super().__init__(digest, size)
        self._stub = stub
        self._metadata = metadata
        self._responses: Iterator[api.ReadContentResponse] | None = None
        # Received but not yet read, and where it sits in the blob.
        self._pending = memoryview(b"")
        self._pending_offset = 0

    def _open_stream(self, offset: int, size: int = 0) -> Iterator[api.ReadContentResponse]:
        return self._stub.Read(  # type: ignore[no-any-return]
            api.ReadContentRequest(digest=self.digest, offset=offset, size=size),
            metadata=self._metadata,
        )

    def read_at(self, size: int, offset: int) -> bytes:
        if size < 0:
            raise InvalidArgument(f"read of {self.digest}: size {size} must not be negative")
        self._check_offset(offset)
        self._check_open()
        size = min(size, self._size - offset)
        if size == 0:
            return b""
        with _translated():
            return b"".join(r.data for r in self._open_stream(offset, size))

    def _piece(self, offset: int, limit: int) -> bytes | memoryview:
        """Up to `limit` received bytes from `offset`, fetching the next message if needed."""
        if self._responses is None or offset != self._pending_offset:
            self._drop_stream()
            self._responses = self._open_stream(offset)
            self._pending_offset = offset
        if not self._pending:
            with _translated():
                response = next(self._responses, None)
            if response is None:
                self._drop_stream()
                return b""
            data = response.data
            if len(data) <= limit:
                # The whole message is wanted: hand it over as it came.
                self._pending_offset += len(data)
                return data
            self._pending = memoryview(data)
        piece = self._pending[:limit]
        self._pending = self._pending[limit:]
        self._pending_offset += len(piece)
        return piece

    def _read_into(self, view: memoryview, offset: int) -> int:
        piece = self._piece(offset, len(view))
        view[: len(piece)] = piece
        return len(piece)

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0:
            return self.readall()
        self._check_open()
        if size == 0 or self._position >= self._size:
            return b""
        piece = self._piece(self._position, min(size, self._size - self._position))
        self._position += len(piece)
        return piece if isinstance(piece, bytes) else bytes(piece)

    def _drop_stream(self) -> None:
        if self._responses is not None:
            self._responses.cancel()  # type: ignore[attr-defined]
        self._responses = None
        self._pending = memoryview(b"")

    def readall(self) -> bytes:
        # Stream from the position, rather than asking for the whole rest at once.
        parts = []
        while chunk := self.read(WRITE_CHUNK):
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed:
            self._drop_stream()
        super().close()


class _Requests:
    """The request side of a Write stream: an iterator gRPC drains while we feed it."""

    _END: Final = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()

    def put(self, request: api.WriteContentRequest) -> None:
        self._queue.put(request)

    def end(self) -> None:
        self._queue.put(self._END)

    def __iter__(self) -> Iterator[api.WriteContentRequest]:
        while (item := self._queue.get()) is not self._END:
            assert isinstance(item, api.WriteContentRequest)
            yield item


class RemoteWriter(Closing):
    """An ingest on a daemon: one Write stream, holding the ref's lock while it lives.

    Writes smaller than `WRITE_CHUNK` are gathered into messages of that
    size (a download hands on pieces of whatever size the network gave, and
    every message costs both sides the same however small), sent when full
    and before any other request. Writes are pipelined: up to `WRITE_WINDOW`
    WRITE requests are in flight before the writer waits for the oldest
    answer, so the daemon writes one chunk while the next is on its way, and
    never more than the window runs ahead of it (backpressure). Every
    answer's offset is still checked, in order. Other requests wait for all
    answers first. `close` half-closes the stream and waits for the daemon
    to end it, so the lock is released when `close` returns.
    """

    def __init__(
        self,
        channel: _Channel,
        metadata: tuple[tuple[str, str], ...],
        ref: str,
        *,
        total: int,
        expected: str,
        labels: Mapping[str, str] | None,
    ) -> None:
        self._ref = ref
        self._total = total
        self._expected = expected
        self._labels = dict(labels or {})
        self._requests = _Requests()
        self._call = channel.stub.Write(iter(self._requests), metadata=metadata)
        self._responses: Iterator[api.WriteContentResponse] = self._call
        self._guard = threading.Lock()
        self._finished = False
        self._offset = 0
        self._digest = ""
        # The offset each WRITE in flight should answer with, oldest first.
        self._in_flight: collections.deque[int] = collections.deque()
        # Small writes not sent yet, and their length together.
        self._gathered: list[bytes] = []
        self._gathered_size = 0
        try:
            response = self._send(
                api.WriteContentRequest(action=api.STAT, ref=ref, total=total, expected=expected)
            )
        except BaseException:
            self._end()
            raise
        self._offset = response.offset

    @property
    def ref(self) -> str:
        return self._ref

    @property
    def offset(self) -> int:
        """How many bytes the ingest holds once the writes made so far land."""
        return self._offset + self._gathered_size

    def _check_open(self) -> None:
        if self._finished:
            raise FailedPrecondition(f"writer for ref {self._ref} is closed")

    def _receive(self) -> api.WriteContentResponse:
        with _translated():
            response = next(self._responses, None)
        if response is None:
            self._end()
            raise Unknown(f"write stream for ref {self._ref} ended without an answer")
        if response.digest:
            self._digest = response.digest
        return response

    def _receive_write(self) -> None:
        """Take the answer to the oldest WRITE in flight and check where it left the ingest."""
        expected = self._in_flight.popleft()
        response = self._receive()
        if response.offset != expected:
            raise Unknown(
                f"write to ref {self._ref} answered offset {response.offset}, expected {expected}"
            )

    def _send(self, request: api.WriteContentRequest) -> api.WriteContentResponse:
        """Send a request and wait for its answer, after those of every WRITE before it."""
        self._check_open()
        with self._guard:
            self._flush()
            while self._in_flight:
                self._receive_write()
            self._requests.put(request)
            return self._receive()

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self._check_open()
        view = memoryview(data).cast("B")
        with self._guard:
            if self._gathered_size + len(view) < WRITE_CHUNK:
                self._gathered.append(bytes(view) if not isinstance(data, bytes) else data)
                self._gathered_size += len(view)
                return len(view)
            self._flush()
            for start in range(0, len(view), WRITE_CHUNK):
                chunk = view[start : start + WRITE_CHUNK]
                if isinstance(data, bytes) and len(view) <= WRITE_CHUNK:
                    self._send_write(data)  # fits one message as it is: no copy
                else:
                    self._send_write(bytes(chunk))
        return len(view)

    def _flush(self) -> None:
        """Send the gathered small writes, as one WRITE."""
        if self._gathered:
            gathered = self._gathered
            self._gathered, self._gathered_size = [], 0
            self._send_write(gathered[0] if len(gathered) == 1 else b"".join(gathered))

    def _send_write(self, payload: bytes) -> None:
        if len(self._in_flight) >= WRITE_WINDOW:
            self._receive_write()
        self._requests.put(
            api.WriteContentRequest(action=api.WRITE, offset=self._offset, data=payload)
        )
        self._offset += len(payload)
        self._in_flight.append(self._offset)

    def digest(self) -> str:
        with self._guard:
            self._flush()
            while self._in_flight:
                self._receive_write()
        return self._digest

    def status(self) -> Status:
        response = self._send(api.WriteContentRequest(action=api.STAT))
        self._offset = response.offset
        return Status(
            ref=self._ref,
            offset=response.offset,
            total=response.total,
            expected=self._expected,
            started_at=datetime_from_timestamp(response.started_at),
            updated_at=datetime_from_timestamp(response.updated_at),
        )

    def truncate(self, size: int = 0) -> None:
        if size != 0:
            raise Unimplemented(f"truncate of ingest {self._ref} to {size} bytes: only 0 is")
        with self._guard:
            self._gathered, self._gathered_size = [], 0  # no use sending what goes now
        # A write at offset zero restarts the ingest (the API's promise).
        response = self._send(api.WriteContentRequest(action=api.WRITE, offset=0))
        self._offset = response.offset

    def commit(
        self, size: int = 0, expected: str = "", labels: Mapping[str, str] | None = None
    ) -> str:
        labels = self._labels if labels is None else dict(labels)
        try:
            response = self._send(
                api.WriteContentRequest(
                    action=api.COMMIT,
                    offset=self.offset,
                    total=size,
                    expected=expected,
                    labels=labels,
                )
            )
        finally:
            self._end()
        digest = check_commit(size, expected, response.offset, lambda: response.digest)
        self._offset = response.offset
        return digest

    def close(self) -> None:
        """Send what was written, half-close the stream and wait until the daemon has
        released the ref."""
        if self._finished:
            return
        try:
            # The ingest keeps every write for a later resume; one that fails
            # here leaves the ingest shorter, which its offset says.
            with self._guard, contextlib.suppress(ContentdError):
                self._flush()
        finally:
            self._end()

    def _end(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._requests.end()
        # Drain to the end of the call: the daemon ends the stream only after
        # it has closed its writer and released the lock.
        with contextlib.suppress(grpc.RpcError, ContentdError):
            for _ in self._responses:
                pass


if TYPE_CHECKING:
    # mypy checks here that the remote classes satisfy the Store protocols.
    _store: type[MetadataStore] = RemoteStore
    _reader: type[ReaderAt] = RemoteReader
    _writer: type[Writer] = RemoteWriter

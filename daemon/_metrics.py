"""The daemon's Prometheus metrics, served on their own address (`contentd serve --metrics`).

Each daemon keeps its own `CollectorRegistry` (never the process-wide default),
so daemons and tests in one process do not collide. What is counted, and where:

- gRPC calls, by an interceptor, with go-grpc-prometheus's names and labels
  (Grafana's dashboards for it work as they are);
- registry requests, by a middleware, by route, method and status;
- bytes received and sent at both doors, per message or request, never per chunk;
- the store's lock refusals and group commits, through its `StoreMeter` hooks;
- commits, through the store's `Changes`; garbage collections, from their reports;
- blobs, bytes and ingests per namespace and locks held, computed when scraped
  (one aggregate query), and the process's own metrics.

Without ``--metrics`` none of this exists: no interceptor, no middleware, no hooks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Final, Protocol

import grpc
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.registry import Collector

from contentd.content import Changes, CollectionReport, NamespaceUsage, StoreMeter
from contentd.errdefs import FailedPrecondition, InvalidArgument

from .registry import ROUTE

_log = logging.getLogger("contentd.daemon")

#: gRPC status codes as Go spells them (codes.Code.String()), as go-grpc-prometheus labels them.
GRPC_CODES: Final = {
    code: "".join(word.capitalize() for word in code.name.split("_")) for code in grpc.StatusCode
} | {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}
#: Handling time buckets, in seconds: a small blob's calls take a millisecond or
#: less, a large blob's Write stream minutes.
GRPC_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)
#: Callers one group commit carried: powers of two up to the most a daemon's threads make.
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128)
#: The two doors bytes go in and out by, as the `api` label names them.
GRPC_API: Final = "grpc"
REGISTRY_API: Final = "registry"


class MeteredStore(Protocol):
    """What the metrics read of a store: its hooks, its changes and its usage."""

    @property
    def meter(self) -> StoreMeter: ...

    @property
    def changes(self) -> Changes: ...

    def usage(self) -> list[NamespaceUsage]: ...


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) as a host and a port; InvalidArgument if it is none."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"metrics address {address!r}: expected host:port")
    return host.removeprefix("[").removesuffix("]") or "0.0.0.0", int(port)


class Metrics:
    """One daemon's metrics: what it counts, and the HTTP endpoint Prometheus scrapes."""

    def __init__(self, store: MeteredStore, address: str) -> None:
        self._host, self._port = parse_address(address)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.grpc = GrpcMetrics(self.registry)
        self.ingested_bytes = Counter(
            "contentd_ingested_bytes",
            "Bytes received for the store: Write messages' data, registry request bodies.",
            ["api"],
            registry=self.registry,
        )
        self.read_bytes = Counter(
            "contentd_read_bytes",
            "Bytes of blobs sent: Read messages' data, registry blob and manifest bodies.",
            ["api"],
            registry=self.registry,
        )
        self.registry_requests = RegistryMetrics(self.registry, self)
        self._commits = Counter(
            "contentd_commits", "Blobs committed into a namespace.", registry=self.registry
        )
        lock_refusals = Counter(
            "contentd_ingest_lock_refusals",
            "Writers refused because another writer held their ref (REF_LOCKED).",
            registry=self.registry,
        )
        batches = Histogram(
            "contentd_group_commit_batch_size",
            "Commits (and other durable changes) carried by one metadata transaction.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._gc_runs = Counter(
            "contentd_gc_runs",
            "Garbage collections run, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self._gc_seconds = Histogram(
            "contentd_gc_duration_seconds",
            "How long garbage collections took.",
            buckets=GRPC_BUCKETS,
            registry=self.registry,
        )
        self._gc_freed_bytes = Counter(
            "contentd_gc_freed_bytes",
            "Bytes of blobs garbage collections freed.",
            registry=self.registry,
        )
        self._gc_freed_blobs = Counter(
            "contentd_gc_freed_blobs",
            "Blobs garbage collections freed the bytes of.",
            registry=self.registry,
        )
        self._state = StateCollector(store.usage)
        self.registry.register(self._state)
        meter = store.meter
        meter.lock_refused = lock_refusals.inc
        meter.batch_committed = batches.observe
        store.changes.subscribe(self._changed)
        self._server: Any = None
        self.url = ""

    def count_locks(self, held: Callable[[], int]) -> None:
        """Count `held()` (ingest locks some part of the daemon holds) in the locks held gauge."""
        self._state.lock_holders.append(held)

    def _changed(self, deletion: bool) -> None:
        if not deletion:
            self._commits.inc()

    def collected(self, report: CollectionReport | None, seconds: float) -> None:
        """Count a garbage collection: its report, or None if it failed."""
        self._gc_seconds.observe(seconds)
        if report is None:
            self._gc_runs.labels("failed").inc()
            return
        self._gc_runs.labels("ok").inc()
        self._gc_freed_bytes.inc(report.bytes)
        self._gc_freed_blobs.inc(report.blobs)

    def serve(self) -> None:
        """Serve the metrics at ``/metrics`` on the address given, from a thread; sets `url`."""
        try:
            server, _ = start_http_server(self._port, self._host, registry=self.registry)
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot listen on {self._host}:{self._port} for metrics: {exc.strerror}"
            ) from None
        self._server = server
        shown = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"http://{shown}:{server.server_port}/metrics"

    def stop(self) -> None:
        """Stop serving the metrics."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class StateCollector(Collector):
    """What the store holds and the daemon holds open, measured when Prometheus scrapes."""

    def __init__(self, usage: Callable[[], list[NamespaceUsage]]) -> None:
        self._usage = usage
        self.lock_holders: list[Callable[[], int]] = []

    def describe(self) -> Iterable[Metric]:
        return ()  # measured at scrape time only: nothing to query on registration

    def collect(self) -> Iterable[Metric]:
        blobs = GaugeMetricFamily(
            "contentd_store_blobs", "Blobs committed in the namespace.", labels=["namespace"]
        )
        size = GaugeMetricFamily(
            "contentd_store_size_bytes",
            "Bytes of the namespace's blobs (a blob in two namespaces counts in each).",
            labels=["namespace"],
        )
        ingests = GaugeMetricFamily(
            "contentd_store_ingests",
            "Ingests in progress in the namespace (resumable writes, open or not).",
            labels=["namespace"],
        )
        for namespace in self._usage():
            blobs.add_metric([namespace.namespace], namespace.blobs)
            size.add_metric([namespace.namespace], namespace.bytes)
            ingests.add_metric([namespace.namespace], namespace.ingests)
        held = GaugeMetricFamily(
            "contentd_ingest_locks_held",
            "Ingest locks held by this daemon's open writers (Write streams, registry uploads).",
            value=sum(count() for count in self.lock_holders),
        )
        return (blobs, size, ingests, held)


# gRPC calls, as go-grpc-prometheus counts them.

_Behavior = Callable[..., Any]


class _MethodMetrics:
    """One method's counters, bound to its labels once, so a call only increments."""

    __slots__ = ("_handled", "_labels", "_owner", "received", "seconds", "sent", "started")

    def __init__(self, owner: GrpcMetrics, labels: tuple[str, str, str]) -> None:
        self._owner = owner
        self._labels = labels
        self.started = owner.started.labels(*labels)
        self.received = owner.received.labels(*labels)
        self.sent = owner.sent.labels(*labels)
        self.seconds = owner.seconds.labels(*labels)
        self._handled: dict[grpc.StatusCode | None, Any] = {}

    def done(self, context: grpc.ServicerContext, started: float, answered: bool) -> None:
        """Count the call as handled with the code it ends with, and its time.

        `answered`: the handler returned an answer, so no code set means OK.
        """
        code = context.code()  # type: ignore[attr-defined]  # not in grpc-stubs
        if code is None:
            # Otherwise it ended well, or its caller left and the handler
            # returned quietly (contentd's boundary does not answer nobody).
            ok = answered or context.is_active()
            code = grpc.StatusCode.OK if ok else grpc.StatusCode.CANCELLED
        self.handled(code, started)

    def handled(self, code: grpc.StatusCode, started: float) -> None:
        """Count the call as handled with `code`, and its time."""
        self.seconds.observe(time.perf_counter() - started)
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled[code] = self._owner.handled.labels(
                *self._labels, GRPC_CODES[code]
            )
        handled.inc()

    def counted(self, requests: Iterator[Any]) -> Iterator[Any]:
        """The request stream, each message counted as received."""
        received = self.received
        for request in requests:
            received.inc()
            yield request


class GrpcMetrics(grpc.ServerInterceptor):  # type: ignore[type-arg]  # generic in grpc-stubs only
    """go-grpc-prometheus's server metrics, for every method the daemon serves."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            "grpc_server_started",
            "Total number of RPCs started on the server.",
            labels,
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.received = Counter(
            "grpc_server_msg_received",
            "Total number of RPC stream messages received on the server.",
            labels,
            registry=registry,
        )
        self.sent = Counter(
            "grpc_server_msg_sent",
            "Total number of gRPC stream messages sent by the server.",
            labels,
            registry=registry,
        )
        self.seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            labels,
            buckets=GRPC_BUCKETS,
            registry=registry,
        )
        #: Each method's measured handler, made at its first call.
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        measured = self._handlers.get(method)
        if measured is None:
            handler = continuation(handler_call_details)
            if handler is None:
                return None  # no such method: gRPC answers UNIMPLEMENTED
            measured = self._handlers.setdefault(method, self._measured(method, handler))
        return measured

    def _measured(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        service, _, name = method.lstrip("/").rpartition("/")
        streaming = handler.request_streaming, handler.response_streaming
        kind = _GRPC_TYPES[streaming]
        metrics = _MethodMetrics(self, (kind, service, name))
        behavior = getattr(handler, _BEHAVIORS[streaming])
        measure = _streamed_response if handler.response_streaming else _unary_response
        return _HANDLER_MAKERS[streaming](
            measure(behavior, metrics, handler.request_streaming),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _unary_response(
    behavior: _Behavior, metrics: _MethodMetrics, streamed_requests: bool
) -> _Behavior:
    started_total, received, sent = metrics.started, metrics.received, metrics.sent

    def measured(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        started_total.inc()
        if streamed_requests:
            request = metrics.counted(request)
        else:
            received.inc()
        response = None
        try:
            response = behavior(request, context)
        finally:
            metrics.done(context, started, answered=response is not None)
        if response is not None:
            sent.inc()
        return response

    return measured


def _streamed_response(
    behavior: _Behavior, metrics: _MethodMetrics, streamed_requests: bool
) -> _Behavior:
    started_total, received, sent = metrics.started, metrics.received, metrics.sent

    def measured(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        started = time.perf_counter()
        started_total.inc()
        if streamed_requests:
            request = metrics.counted(request)
        else:
            received.inc()
        try:
            for response in behavior(request, context):
                sent.inc()
                yield response
        except GeneratorExit:
            # gRPC closes the stream of a caller that left while it waited to send.
            metrics.handled(grpc.StatusCode.CANCELLED, started)
            raise
        except BaseException:
            metrics.done(context, started, answered=False)
            raise
        metrics.done(context, started, answered=False)

    return measured


_GRPC_TYPES: Final = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}
_BEHAVIORS: Final = {
    (False, False): "unary_unary",
    (True, False): "stream_unary",
    (False, True): "unary_stream",
    (True, True): "stream_stream",
}
_HANDLER_MAKERS: Final = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


# Registry requests.

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Requests that bring bytes for the store, and those whose answers carry its bytes.
_INGESTING: Final = frozenset(
    {("upload", "POST"), ("upload", "PATCH"), ("upload", "PUT"), ("manifest", "PUT")}
)
_READING: Final = frozenset({("blob", "GET"), ("manifest", "GET")})


class RegistryMetrics:
    """The registry's requests by route, method and status, and the bytes they moved."""

    def __init__(self, registry: CollectorRegistry, metrics: Metrics) -> None:
        labels = ["route", "method"]
        self._requests = Counter(
            "contentd_registry_requests",
            "Registry (OCI distribution API) requests answered, by route, method and status.",
            [*labels, "status"],
            registry=registry,
        )
        self._seconds = Histogram(
            "contentd_registry_request_duration_seconds",
            "How long registry requests took to answer, by route and method.",
            labels,
            buckets=GRPC_BUCKETS,
            registry=registry,
        )
        self._ingested = metrics.ingested_bytes.labels(REGISTRY_API)
        self._read = metrics.read_bytes.labels(REGISTRY_API)

    @web.middleware
    async def middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Count the request once answered (the outermost middleware, so refusals count too)."""
        started = time.perf_counter()
        status = 500
        sent = 0
        try:
            response = await handler(request)
            status = response.status
            sent = response.content_length or 0
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = request.get(ROUTE, "none")
            method = request.method
            self._requests.labels(route, method, str(status)).inc()
            self._seconds.labels(route, method).observe(time.perf_counter() - started)
            if (route, method) in _INGESTING:
                self._ingested.inc(request.content.total_bytes)
            elif status < 300 and (route, method) in _READING:
                self._read.inc(sent)

"""The Write streams of one daemon: how many may run, when an idle one is ended, handoffs.

Admission. Each Write stream holds a server thread for as long as it lives, so
at most `max_streams` run at once; more are refused at once with
RESOURCE_EXHAUSTED, which keeps threads free for every other call. With
`max_per_namespace`, one namespace's streams are bounded too, so no namespace
can take every stream the daemon admits. Open streams are what is counted,
not ingest records: a stream holds a thread, a lock and a file, while a
stored ingest holds only disk space (which a full disk bounds already), and
counting records would shut a namespace out for good with ingests its
clients abandoned.

Idleness. A stream that waits for its client longer than `idle_timeout` is
canceled: its writer closes, its lock is released, its ingest is kept for a
later resume. A client that vanished without closing its connection would
otherwise hold a thread and a lock indefinitely.

Handoff. containerd's Go proxy ends a writer by half-closing its stream, and
its callers (containerd's own testsuite, `content.Copy` retries) open the next
writer on the same ref at once. The half-close is already on the wire, but the
daemon may start the new stream before the old one's thread has seen it and
released the lock. So a new stream that finds its ref held by another stream
of this daemon that is waiting for its client, or already ending, waits for
that stream to release the ref, for at most `HANDOFF_SECONDS`. A holder that
is busy with a request, or that lives in another process, refuses the new
stream at once, as the store does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, TypeVar

import grpc

from contentd.errdefs import (
    REF_LOCKED,
    TOO_MANY_INGESTS,
    TOO_MANY_WRITE_STREAMS,
    ResourceExhausted,
    Unavailable,
)

#: Longest wait for a yielding holder on this daemon to release a ref, in seconds.
HANDOFF_SECONDS: Final = 0.25

_T = TypeVar("_T")
_log = logging.getLogger("contentd.daemon")


class StreamState:
    """One Write stream, as the registry sees it."""

    def __init__(self, context: grpc.ServicerContext, namespace: str) -> None:
        self.context = context
        self.namespace = namespace
        # True while the stream waits for its client or winds down: a new
        # stream may wait for it, and the idle watchdog times it. False while
        # it works on a request.
        self.yielding = False
        self.yielding_since = time.monotonic()
        self.canceled = False
        self.ended = threading.Event()

    def waiting(self) -> None:
        """The stream's answer is out (or about to be): it now waits for its client."""
        self.yielding_since = time.monotonic()
        self.yielding = True


class StreamRegistry:
    """The Write streams of one daemon, by (namespace, ref)."""

    def __init__(
        self, max_streams: int, idle_timeout: float | None, max_per_namespace: int | None = None
    ) -> None:
        self._guard = threading.Lock()
        self._holders: dict[tuple[str, str], StreamState] = {}
        self._streams: set[StreamState] = set()
        self._per_namespace: dict[str, int] = {}
        self._max_streams = max_streams
        self._max_per_namespace = max_per_namespace
        self._idle_timeout = idle_timeout
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        if idle_timeout:
            self._watchdog = threading.Thread(
                target=self._watch, name="contentd-idle-writes", daemon=True
            )
            self._watchdog.start()

    @contextmanager
    def admitted(self, context: grpc.ServicerContext, namespace: str) -> Iterator[StreamState]:
        """Count a Write stream for as long as it runs; refuse it if the daemon is full."""
        state = StreamState(context, namespace)
        with self._guard:
            if len(self._streams) >= self._max_streams:
                raise ResourceExhausted(
                    f"{self._max_streams} write streams in progress, the daemon's limit; retry",
                    reason=TOO_MANY_WRITE_STREAMS,
                )
            in_namespace = self._per_namespace.get(namespace, 0)
            limit = self._max_per_namespace
            if limit is not None and in_namespace >= limit:
                raise ResourceExhausted(
                    f"{limit} write streams in progress in namespace {namespace}, its limit; retry",
                    reason=TOO_MANY_INGESTS,
                    metadata={"namespace": namespace, "limit": str(limit)},
                )
            self._streams.add(state)
            self._per_namespace[namespace] = in_namespace + 1
        try:
            yield state
        finally:
            with self._guard:
                self._streams.discard(state)
                remaining = self._per_namespace[namespace] - 1
                if remaining:
                    self._per_namespace[namespace] = remaining
                else:
                    del self._per_namespace[namespace]

    def open(self, key: tuple[str, str], opener: Callable[[], _T]) -> _T:
        """Run `opener` (which takes the ref's lock); on REF_LOCKED, await a yielding holder."""
        deadline = time.monotonic() + HANDOFF_SECONDS
        retried = False
        while True:
            try:
                return opener()
            except Unavailable as exc:
                if exc.reason != REF_LOCKED:
                    raise
                with self._guard:
                    holder = self._holders.get(key)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                if holder is None:
                    # Held elsewhere, or released by a stream here since the
                    # attempt above: one more attempt tells which.
                    if retried:
                        raise
                    retried = True
                    continue
                if not holder.yielding:
                    raise
                holder.ended.wait(remaining)

    @contextmanager
    def holding(self, key: tuple[str, str], state: StreamState) -> Iterator[StreamState]:
        """Register `state` as the holder of `key` for the duration of the block."""
        with self._guard:
            self._holders[key] = state
        try:
            yield state
        finally:
            with self._guard:
                if self._holders.get(key) is state:
                    del self._holders[key]
            state.ended.set()

    def held(self) -> int:
        """Refs Write streams hold now (each its ingest's lock), from any thread."""
        return len(self._holders)

    @staticmethod
    def receive(state: StreamState, requests: Iterator[_T]) -> _T | None:
        """The stream's next request, or None once the client has closed its side.

        The stream yields from its last answer until a request arrives, and
        keeps yielding after the close (or a failed receive) until it has
        released the ref.
        """
        if not state.yielding:
            state.waiting()
        request = next(requests, None)
        if request is not None:
            state.yielding = False
        return request

    def _watch(self) -> None:
        timeout = self._idle_timeout
        assert timeout
        interval = min(1.0, timeout / 4)
        while not self._stop.wait(interval):
            now = time.monotonic()
            with self._guard:
                idle = [
                    state
                    for state in self._streams
                    if state.yielding
                    and not state.canceled
                    and now - state.yielding_since > timeout
                ]
            for state in idle:
                state.canceled = True
                _log.info("canceling a write stream idle for over %gs", timeout)
                # The handler's pending receive fails; its writer closes and
                # releases the lock as for any caller that leaves.
                state.context.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs

    def close(self) -> None:
        """Stop the idle watchdog."""
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join()

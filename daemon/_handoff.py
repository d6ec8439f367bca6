"""Handing a ref from a Write stream that is ending to the next one, in one daemon.

containerd's Go proxy ends a writer by half-closing its stream, and its
callers (containerd's own testsuite, `content.Copy` retries) open the next
writer on the same ref at once. The half-close is already on the wire, but the
daemon may start the new stream before the old one's thread has seen it and
released the lock. Answering REF_LOCKED there would report a lock the client
has already let go.

So a new Write stream that finds its ref held by another stream of this daemon
that is waiting for its client, or already ending, waits for that stream to
release the ref, for at most `HANDOFF_SECONDS`. A holder that is busy with a
request, or that lives in another process, refuses the new stream at once, as
the store does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from contentd.errdefs import REF_LOCKED, Unavailable

#: Longest wait for an idle holder on this daemon to end, in seconds.
HANDOFF_SECONDS = 0.25

_T = TypeVar("_T")


class _Holder:
    def __init__(self) -> None:
        # True while the stream waits for its client or winds down: a new
        # stream may wait for it. False while it works on a request.
        self.yielding = False
        self.ended = threading.Event()


class StreamRegistry:
    """The Write streams of one daemon, by (namespace, ref)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._holders: dict[tuple[str, str], _Holder] = {}

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
    def holding(self, key: tuple[str, str]) -> Iterator[_Holder]:
        """Register the stream holding `key` for the duration of the block."""
        holder = _Holder()
        with self._guard:
            self._holders[key] = holder
        try:
            yield holder
        finally:
            with self._guard:
                if self._holders.get(key) is holder:
                    del self._holders[key]
            holder.ended.set()

    @staticmethod
    def answered(holder: _Holder) -> None:
        """Mark the stream as waiting for its client: its answer is ready to go out."""
        holder.yielding = True

    @staticmethod
    def receive(holder: _Holder, requests: Iterator[_T]) -> _T | None:
        """The stream's next request, or None once the client has closed its side.

        The holder yields from its last answer until a request arrives, and
        keeps yielding after the close (or a failed receive) until it has
        released the ref.
        """
        holder.yielding = True
        request = next(requests, None)
        if request is not None:
            holder.yielding = False
        return request

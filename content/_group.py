"""What the metadata backends share about writing: one writer at a time per process, and
group commit.

Each backend (`_sqlite`, `_postgres`) says how a batch of bodies runs in one of
its transactions (a savepoint each); the queueing of callers, the handing of
every outcome back to its caller, and the bound on waiting for the write turn
are the same for both, and live here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, cast

from contentd.errdefs import Unavailable

from ._meter import StoreMeter

_T = TypeVar("_T")
_Tx = TypeVar("_Tx")


class Pending(Generic[_Tx, _T]):
    """One caller's part of a group commit: its body, then its result or error."""

    def __init__(self, body: Callable[[_Tx], _T]):
        self.body = body
        self.finished = False
        self.result: _T | None = None
        self.error: BaseException | None = None

    def outcome(self) -> _T:
        if self.error is not None:
            raise self.error
        return cast(_T, self.result)


#: Runs a batch's bodies in one durable write transaction, each in a savepoint of its
#: own, setting each one's `result`, or `error` (its savepoint rolled back).
BatchRunner = Callable[[str, list[Pending[_Tx, Any]]], None]


class GroupCommit(Generic[_Tx]):
    """Callers that arrive while a batch commits wait, and go together in the next one.

    A batch costs one flush of the database's log however many callers it
    carries. A body that raises undoes only its own changes, and its caller
    gets the exception; when the transaction itself fails, every caller does.
    """

    def __init__(self, run_batch: BatchRunner[_Tx], meter: StoreMeter) -> None:
        self._run_batch = run_batch
        self._meter = meter
        self._batch = threading.Condition()
        self._queue: list[Pending[_Tx, Any]] = []
        self._running = False

    def commit(self, doing: str, body: Callable[[_Tx], _T]) -> _T:
        pending: Pending[_Tx, _T] = Pending(body)
        with self._batch:
            self._queue.append(pending)
            while not pending.finished and self._running:
                self._batch.wait()
            if not pending.finished:
                self._running = True
                batch, self._queue = self._queue, []
            else:
                batch = []
        if batch:
            counted = self._meter.batch_committed
            if counted is not None:
                counted(len(batch))
            try:
                self._run(doing, batch)
            finally:
                with self._batch:
                    self._running = False
                    self._batch.notify_all()
        return pending.outcome()

    def _run(self, doing: str, batch: list[Pending[_Tx, Any]]) -> None:
        try:
            self._run_batch(doing, batch)
        except BaseException as exc:
            for pending in batch:
                if pending.error is None:
                    pending.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for pending in batch:
                pending.finished = True


class WriteTurn:
    """This process's writers, one at a time, each waiting at most the busy bound."""

    def __init__(self, busy_timeout: float, busy: Callable[[str, float], Unavailable]) -> None:
        self._lock = threading.Lock()
        self._busy_timeout = busy_timeout
        self._busy = busy

    @contextlib.contextmanager
    def __call__(self, doing: str) -> Iterator[float]:
        """The turn to write; yields the seconds of the busy bound left for the database."""
        if self._lock.acquire(blocking=False):
            left = self._busy_timeout
        else:
            started = time.monotonic()
            if not self._lock.acquire(timeout=self._busy_timeout):
                raise self._busy(doing, self._busy_timeout)
            left = max(0.0, self._busy_timeout - (time.monotonic() - started))
        try:
            yield left
        finally:
            self._lock.release()

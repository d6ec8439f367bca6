"""The daemon's garbage collection scheduler, with containerd's policy and settings.

Collections run on a thread of their own. Each change the store makes in this
process counts: a deletion (content, a lease or what it held, an image) makes
the next tick collect, and so do `mutation_threshold` other changes (commits);
with `deletion_threshold` set, that many deletions collect at once. Ticks come
`pause_threshold` apart in proportion to how long collections take (at 0.02, a
collection that takes 10 ms is followed by 490 ms of none), so collecting
never takes more than that share of the daemon's time. A `sync` delete waits
for a collection that starts after it (`wait`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from contentd.content import Changes, CollectionReport, MetadataStore
from contentd.errdefs import DeadlineExceeded, Unknown

_log = logging.getLogger("contentd.gc")
#: The interval between ticks before any collection has been timed, and when
#: `pause_threshold` is 0 (containerd's).
_FIRST_INTERVAL: Final = 1.0
#: Added to the interval after a failed collection, before the next try.
_RETRY_DELAY: Final = 1.0


@dataclass(frozen=True)
class CollectionPolicy:
    """When collections run: containerd's gc scheduler settings, with its defaults."""

    #: The share of time collections may take: ticks are spaced to keep to it (0 to 0.5).
    pause_threshold: float = 0.02
    #: Deletions that make a collection run at once (0: any deletion waits for the next tick).
    deletion_threshold: int = 0
    #: Other changes (commits) that make the next tick collect (0: never).
    mutation_threshold: int = 100
    #: Seconds from a trigger to the collection it causes.
    schedule_delay: float = 0.0
    #: Seconds from start to the first collection, which always runs.
    startup_delay: float = 0.1
    #: Whether collections run by themselves; without, only `sync` deletes (and
    #: callers of `Collections.wait`) make one run.
    automatic: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.pause_threshold <= 0.5:
            raise ValueError(f"pause threshold {self.pause_threshold}: must be 0 to 0.5")
        if min(self.deletion_threshold, self.mutation_threshold) < 0:
            raise ValueError("collection thresholds must not be negative")
        if min(self.schedule_delay, self.startup_delay) < 0:
            raise ValueError("collection delays must not be negative")


class CollectedStore(MetadataStore, Protocol):
    """A store whose collector hears of its changes."""

    @property
    def changes(self) -> Changes: ...


class Collections:
    """Runs the store's garbage collections by `policy`, and on demand."""

    def __init__(
        self,
        store: CollectedStore,
        policy: CollectionPolicy | None = None,
        collected: Callable[[CollectionReport | None, float], None] | None = None,
    ) -> None:
        """`collected`, when given, hears of each collection: its report (None if it failed)
        and its seconds."""
        self._store = store
        self._collected = collected
        self._policy = policy or CollectionPolicy()
        self._condition = threading.Condition()
        self._deletions = 0
        self._mutations = 0
        self._triggered = False
        self._stopped = False
        self._due = time.monotonic() + self._policy.startup_delay
        self._interval = _FIRST_INTERVAL
        self._average = 0.0
        #: Collections started, and finished with their outcome, by number.
        self._started = 0
        self._finished = 0
        self._outcome: CollectionReport | None = None
        self._thread = threading.Thread(target=self._run, name="contentd-gc", daemon=True)
        store.changes.subscribe(self._changed)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling; a collection under way finishes first."""
        with self._condition:
            self._stopped = True
            self._condition.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def wait(self, timeout: float | None = None) -> CollectionReport:
        """Have a collection run that starts after this call, and wait for it; its report.

        Unknown ("gc failed") if it fails, as containerd answers; DeadlineExceeded
        if `timeout` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            wanted = self._started + 1
            self._trigger(self._policy.schedule_delay)
            while self._finished < wanted:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise DeadlineExceeded("waiting for a garbage collection")
                if self._stopped:
                    raise Unknown("gc failed: the daemon is stopping")
                self._condition.wait(left)
            if self._outcome is None:
                raise Unknown("gc failed")
            return self._outcome

    def _changed(self, deletion: bool) -> None:
        policy = self._policy
        with self._condition:
            if deletion:
                self._deletions += 1
                if policy.deletion_threshold and self._deletions >= policy.deletion_threshold:
                    self._trigger(policy.schedule_delay)
            else:
                self._mutations += 1

    def _trigger(self, delay: float) -> None:
        """Collect at the latest `delay` seconds from now (the condition is held)."""
        self._triggered = True
        self._due = min(self._due, time.monotonic() + delay)
        self._condition.notify_all()

    def _wanted(self) -> bool:
        """Whether the tick that is due collects (the condition is held)."""
        policy = self._policy
        if not policy.automatic:
            return self._triggered
        return (
            self._triggered
            or self._started == 0
            or (policy.deletion_threshold == 0 and self._deletions > 0)
            or (policy.deletion_threshold > 0 and self._deletions >= policy.deletion_threshold)
            or (policy.mutation_threshold > 0 and self._mutations >= policy.mutation_threshold)
        )

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._stopped and time.monotonic() < self._due:
                    self._condition.wait(self._due - time.monotonic())
                if self._stopped:
                    return
                if not self._wanted():
                    self._due = time.monotonic() + self._interval
                    continue
                self._started += 1
                self._triggered = False
                self._deletions = self._mutations = 0
            self._collect()

    def _collect(self) -> None:
        started = time.monotonic()
        try:
            report: CollectionReport | None = self._store.collect()
        except Exception:
            _log.exception("garbage collection failed")
            report = None
        elapsed = time.monotonic() - started
        if self._collected is not None:
            self._collected(report, elapsed)
        if report is not None and (report.content or report.leases or report.ingests):
            _log.info(
                "garbage collection removed %d content records, %d leases, %d ingests and"
                " freed %d blobs (%d bytes) in %.3fs",
                report.content,
                report.leases,
                report.ingests,
                report.blobs,
                report.bytes,
                elapsed,
            )
        with self._condition:
            self._finished = self._started
            self._outcome = report
            if report is None:
                self._due = time.monotonic() + self._interval + _RETRY_DELAY
            else:
                self._average = elapsed if not self._average else (self._average + elapsed) / 2
                pause = self._policy.pause_threshold
                self._interval = self._average / pause - self._average if pause else _FIRST_INTERVAL
                self._due = time.monotonic() + self._interval
            self._condition.notify_all()

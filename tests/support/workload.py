"""A workload whose every acknowledged effect is known, for tests that kill what runs it.

A `Worker` owns a few blobs (`Blob`: bytes derived from the owner's name and an
index, so every digest is known in advance) and commits, relabels, deletes and
reads them through any `Store`, small ones in one `put`, larger ones streamed
through a writer. It journals each operation before it starts, how far a
stream got, and that the store acknowledged the operation. A `Ledger` replays
a journal into what the store must hold afterwards: every acknowledged commit
present with its labels, every acknowledged delete gone, and at most one
operation in flight, whose outcome may go either way. `check_after_crash`
holds a store to its ledgers, resumes every interrupted ingest and checks
again.

    python workload.py run ROOT NAMESPACE OWNER SEED JOURNAL

runs a daemonless worker on the store at ROOT until it is killed, journaling
one JSON object a line to JOURNAL (first the blobs it found, then "ready").
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import random
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contentd import errdefs
from contentd.content import Info, Status, Store, digest_of, open_store, write_blob
from contentd.content._records import ingest_key

#: Blobs each worker owns: even indexes are small (one put), odd ones streamed.
SLOTS = 8
#: Bytes per write of a streamed blob; the worker journals its progress after each.
STREAM_CHUNK = 256 << 10
MiB = 1 << 20

Event = dict[str, Any]
Journal = Callable[[Event], None]


@dataclass(frozen=True)
class Blob:
    """One blob a worker owns: its bytes are a function of the owner's name and the index."""

    owner: str
    index: int

    @property
    def streamed(self) -> bool:
        """Larger than write_blob sends in one message, so it is written in chunks."""
        return self.index % 2 == 1

    @property
    def ref(self) -> str:
        return f"{self.owner}-{self.index}"

    @property
    def size(self) -> int:
        return _size(self.owner, self.index)

    @property
    def digest(self) -> str:
        return _digest(self.owner, self.index)

    def data(self) -> bytes:
        return random.Random(f"data/{self.owner}/{self.index}").randbytes(self.size)


@functools.cache
def _size(owner: str, index: int) -> int:
    sizes = random.Random(f"size/{owner}/{index}")
    if index % 2:
        # Above one message (1 MiB), so write_blob streams it and can resume it.
        return sizes.randrange(MiB + MiB // 8, 2 * MiB + MiB // 2)
    return sizes.randrange(1000, 160_000)


@functools.cache
def _digest(owner: str, index: int) -> str:
    return digest_of(Blob(owner, index).data())


def blobs(owner: str) -> list[Blob]:
    return [Blob(owner, index) for index in range(SLOTS)]


@dataclass
class InFlight:
    """The operation a worker had started and the store had not acknowledged."""

    kind: str  # "put", "stream", "update" or "delete"
    blob: Blob
    #: The blob's labels once the operation took effect (a commit's, or an update's result).
    labels: dict[str, str] | None
    #: Its labels before (update, delete).
    previous: dict[str, str] | None
    #: A stream's writer was opened (the ref was locked, its ingest recorded).
    opened: bool = False
    #: Bytes handed to the stream's writer, and bytes it acknowledged.
    sent: int = 0
    acked: int = 0
    committing: bool = False

    def describe(self) -> str:
        if self.kind != "stream":
            return self.kind
        if self.committing:
            return "stream commit"
        return "stream data" if self.sent else "stream open"


@dataclass
class Ledger:
    """What a store must hold of one worker's blobs: present ones with their labels."""

    owner: str
    present: dict[int, dict[str, str]] = field(default_factory=dict)
    in_flight: InFlight | None = None

    def blobs(self) -> list[Blob]:
        return blobs(self.owner)

    def apply(self, event: Event) -> None:
        """Replay one journal event."""
        if "error" in event:
            raise AssertionError(f"worker {self.owner} failed:\n{event['error']}")
        if "present" in event:
            found = {int(index): labels for index, labels in event["present"].items()}
            assert found == self.present, f"worker {self.owner} found {found}, not {self.present}"
            return
        if "op" in event:
            assert self.in_flight is None, f"{self.owner}: {event} while {self.in_flight} runs"
            index = event["index"]
            self.in_flight = InFlight(
                event["op"], Blob(self.owner, index), event.get("labels"), self.present.get(index)
            )
            return
        op = self.in_flight
        if op is None:
            return  # "ready"
        if "opened" in event:
            op.opened = True
        elif "sent" in event:
            op.sent = event["sent"]
        elif "acked" in event:
            op.acked = event["acked"]
        elif "committing" in event:
            op.committing = True
        elif "done" in event:
            self.in_flight = None
            if op.kind == "delete":
                self.present.pop(op.blob.index, None)
            else:
                assert op.labels is not None
                self.present[op.blob.index] = op.labels

    def replay(self, path: Path) -> None:
        """Replay a worker's journal file; a line cut short by the kill never happened."""
        text = path.read_text() if path.exists() else ""
        for line in text.splitlines(keepends=True):
            if line.endswith("\n"):
                self.apply(json.loads(line))


class Worker:
    """Operations on one owner's blobs, each journaled before it starts and once acknowledged.

    `before(kind)` is called just before a request goes out ("put", "stream",
    "stream-data" before each chunk after the first, "commit", "update",
    "delete"): a test kills the store's process from there. `reopen` (for
    daemonless workers) opens the store again, which repairs it while others
    work on it.
    """

    def __init__(
        self,
        store: Store,
        owner: str,
        rng: random.Random,
        journal: Journal,
        *,
        present: dict[int, dict[str, str]],
        before: Callable[[str], None] = lambda kind: None,
        reopen: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.owner = owner
        self.rng = rng
        self.journal = journal
        self.present = dict(present)
        self.before = before
        self.reopen = reopen
        self.done: Counter[str] = Counter()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.step()

    def step(self) -> None:
        if self.reopen is not None and self.rng.random() < 0.05:
            self.reopen()
            self.done["reopen"] += 1
            return
        blob = Blob(self.owner, self.rng.randrange(SLOTS))
        labels = self.present.get(blob.index)
        if labels is None:
            new = {"owner": self.owner, "gen": f"{self.rng.getrandbits(32):08x}"}
            if blob.streamed:
                self._stream(blob, new)
            else:
                self._put(blob, new)
            return
        choice = self.rng.random()
        if choice < 0.4:
            self._update(blob, labels)
        elif choice < 0.75:
            self._delete(blob)
        else:
            self._read(blob, labels)

    def _begin(self, kind: str, blob: Blob, labels: dict[str, str] | None) -> None:
        self.journal({"op": kind, "index": blob.index, "labels": labels})

    def _done(self, kind: str, blob: Blob, labels: dict[str, str] | None) -> None:
        self.journal({"done": True})
        if labels is None:
            self.present.pop(blob.index, None)
        else:
            self.present[blob.index] = labels
        self.done[kind] += 1

    def _put(self, blob: Blob, labels: dict[str, str]) -> None:
        data = blob.data()
        self._begin("put", blob, labels)
        self.before("put")
        stored = self.store.put(blob.ref, data, size=len(data), expected=blob.digest, labels=labels)
        assert stored == blob.digest, f"put of {blob.ref} stored {stored}, not {blob.digest}"
        self._done("put", blob, labels)

    def _stream(self, blob: Blob, labels: dict[str, str]) -> None:
        data = memoryview(blob.data())
        self._begin("stream", blob, labels)
        self.before("stream")
        with self.store.writer(blob.ref, total=len(data), expected=blob.digest) as writer:
            self.journal({"opened": True})
            offset = writer.status().offset
            assert offset == 0, f"new ingest {blob.ref} starts at {offset}, not 0"
            for start in range(0, len(data), STREAM_CHUNK):
                chunk = data[start : start + STREAM_CHUNK]
                if start:
                    self.before("stream-data")
                self.journal({"sent": start + len(chunk)})
                writer.write(chunk)
                self.journal({"acked": writer.status().offset})
            self.journal({"committing": True})
            self.before("commit")
            committed = writer.commit(len(data), blob.digest, labels)
        assert committed == blob.digest, f"commit of {blob.ref} gave {committed}"
        self._done("stream", blob, labels)

    def _update(self, blob: Blob, labels: dict[str, str]) -> None:
        updated = {**labels, "gen": f"{self.rng.getrandbits(32):08x}"}
        self._begin("update", blob, updated)
        self.before("update")
        info = self.store.update(blob.digest, {"gen": updated["gen"]}, ["labels.gen"])
        assert dict(info.labels) == updated, f"update of {blob.digest} answered {info.labels}"
        self._done("update", blob, updated)

    def _delete(self, blob: Blob) -> None:
        self._begin("delete", blob, None)
        self.before("delete")
        self.store.delete(blob.digest)
        self._done("delete", blob, None)

    def _read(self, blob: Blob, labels: dict[str, str]) -> None:
        info = self.store.info(blob.digest)
        assert dict(info.labels) == labels, f"{blob.digest} has labels {info.labels}"
        with self.store.reader_at(blob.digest) as reader:
            assert reader.read() == blob.data(), f"{blob.digest} read back wrong"
        self.done["read"] += 1


def present_blobs(store: Store, owner: str) -> dict[int, dict[str, str]]:
    """The labels of each of `owner`'s blobs the store holds."""
    found = {}
    for blob in blobs(owner):
        with contextlib.suppress(errdefs.NotFound):
            found[blob.index] = dict(store.info(blob.digest).labels)
    return found


# Checking a store


def read_verified(store: Store, info: Info) -> int:
    """Read a listed blob whole and check its size and digest; returns the size."""
    with store.reader_at(info.digest) as reader:
        data = reader.read()
    assert len(data) == info.size, f"{info.digest} reads {len(data)} bytes, listed {info.size}"
    assert digest_of(data) == info.digest, f"{info.digest} reads back as {digest_of(data)}"
    return len(data)


def check_layout(root: Path, digests: Iterable[str]) -> None:
    """With nothing in progress: blobs/ holds exactly `digests`; ingest/ and trash/ are empty."""
    on_disk = {
        f"{algorithm.name}:{path.name}"
        for algorithm in (root / "blobs").iterdir()
        for path in algorithm.iterdir()
    }
    assert on_disk == set(digests), (
        f"blobs on disk but not listed: {sorted(on_disk - set(digests))}; "
        f"listed but not on disk: {sorted(set(digests) - on_disk)}"
    )
    assert sorted(p.name for p in (root / "ingest").iterdir()) == []
    assert sorted(p.name for p in (root / "trash").iterdir()) == []


@dataclass
class CheckReport:
    """What a check after a crash found: how each interrupted operation had ended, and more."""

    outcomes: Counter[str] = field(default_factory=Counter)
    blobs: int = 0
    resumed: int = 0


def check_after_crash(
    store: Store, root: Path, ledgers: Sequence[Ledger], *, layout: bool = True
) -> CheckReport:
    """Hold `store` (a namespace on `root`, nothing else writing it) to its ledgers.

    As found: every listed blob reads back whole and hashes to its digest;
    every blob acknowledged present is listed with its acknowledged labels and
    every one acknowledged deleted is gone; an operation in flight shows
    either its effect or none; every ingest listed belongs to an interrupted
    stream and its offset is the bytes on disk for it, a prefix of the blob.
    Then every ref in flight is taken at once by a new writer (no lock was
    left held) and every interrupted stream resumes from its offset to a
    verified commit. Afterwards the ledgers are certain again, no ingest is
    left and, with `layout`, the directory holds exactly the listed blobs.
    """
    report = CheckReport()
    known = {blob.digest: blob for ledger in ledgers for blob in ledger.blobs()}
    # Ingests first: listing them finishes commits whose writer died after
    # the bytes moved, and those blobs are then listed below.
    statuses = {status.ref: status for status in store.list_statuses()}
    listed = _listed_verified(store, known)
    flights = {
        ledger.in_flight.blob.ref: ledger.in_flight for ledger in ledgers if ledger.in_flight
    }
    for ref, status in statuses.items():
        op = flights.get(ref)
        assert op is not None, f"ingest {ref} listed, none interrupted"
        assert op.kind == "stream", f"ingest {ref} listed after an interrupted {op.kind}"
        blob = op.blob
        assert (status.total, status.expected) == (blob.size, blob.digest), status
        path = root / "ingest" / ingest_key(store.namespace, ref)
        held = path.read_bytes() if path.exists() else b""
        assert status.offset == len(held), f"ingest {ref} at {status.offset}, {len(held)} on disk"
        assert held == blob.data()[: len(held)], f"ingest {ref} holds bytes of other content"
        assert op.acked <= status.offset <= op.sent, (
            f"ingest {ref} at {status.offset}; {op.acked} acknowledged, {op.sent} sent"
        )
        assert blob.digest not in listed, f"{ref} listed as blob and ingest"
    for ledger in ledgers:
        for blob in ledger.blobs():
            op = ledger.in_flight if ledger.in_flight and ledger.in_flight.blob == blob else None
            _check_found(ledger, blob, op, listed.get(blob.digest))
        op = ledger.in_flight
        if op and op.kind == "stream" and op.opened and op.blob.digest not in listed:
            assert op.blob.ref in statuses, f"interrupted ingest {op.blob.ref} is not listed"
    for op in flights.values():
        if op.kind in ("put", "stream"):
            _resume(store, op, statuses.get(op.blob.ref), report)
    after = _listed_verified(store, known, skip=listed)
    for ledger in ledgers:
        op, ledger.in_flight = ledger.in_flight, None
        if op is not None:
            info = after.get(op.blob.digest)
            _check_found(ledger, op.blob, op, info)
            report.outcomes[f"{op.describe()}: {_outcome(op, listed, info)}"] += 1
            if info is None:
                ledger.present.pop(op.blob.index, None)
            else:
                ledger.present[op.blob.index] = dict(info.labels)
        for blob in ledger.blobs():
            _check_found(ledger, blob, None, after.get(blob.digest))
    assert store.list_statuses() == [], "ingests left after resuming every interrupted one"
    if layout:
        check_layout(root, after)
    report.blobs = len(after)
    return report


def _listed_verified(
    store: Store, known: dict[str, Blob], *, skip: Iterable[str] = ()
) -> dict[str, Info]:
    """Every listed blob, each one known and (unless in `skip`) read back and verified."""
    skipped = set(skip)
    listed = {}
    for info in store.walk():
        blob = known.get(info.digest)
        assert blob is not None, f"{info.digest} listed, never written"
        assert info.size == blob.size, f"{info.digest} listed with size {info.size}"
        if info.digest not in skipped:
            read_verified(store, info)
        listed[info.digest] = info
    return listed


def _check_found(ledger: Ledger, blob: Blob, op: InFlight | None, info: Info | None) -> None:
    """Whether `info` (None: not listed) is what `blob` may be, given the operation in flight."""
    found = None if info is None else dict(info.labels)
    if op is None:
        expected = ledger.present.get(blob.index)
        assert found == expected, f"{blob.ref} {blob.digest}: {found}, acknowledged {expected}"
    elif op.kind in ("put", "stream"):
        assert found in (None, op.labels), f"{blob.ref} committed with labels {found}"
    elif op.kind == "delete":
        assert found in (None, op.previous), f"{blob.ref} has labels {found} after a delete"
    else:
        assert found in (op.previous, op.labels), (
            f"{blob.ref} has labels {found}: neither {op.previous} nor the update's {op.labels}"
        )


def _outcome(op: InFlight, before: dict[str, Info], after: Info | None) -> str:
    if op.kind in ("put", "stream"):
        if op.blob.digest in before:
            return "committed"
        if after is None:
            return "not committed"
        # A put is no ingest: opening its ref again finished its commit.
        return "resumed" if op.kind == "stream" else "finished by the next writer"
    if op.kind == "delete":
        return "not applied" if after is not None else "applied"
    return "applied" if after is not None and dict(after.labels) == op.labels else "not applied"


def _resume(store: Store, op: InFlight, status: Status | None, report: CheckReport) -> None:
    """Take the ref of an interrupted commit at once, and resume its ingest to a commit."""
    blob = op.blob
    try:
        writer = store.writer(blob.ref)
    except errdefs.Unavailable as exc:
        raise AssertionError(f"ref {blob.ref} is still locked after the crash: {exc}") from exc
    with writer:
        offset = writer.status().offset
    expected = 0 if status is None else status.offset
    assert offset == expected, f"a new writer of {blob.ref} starts at {offset}, not {expected}"
    try:
        store.info(blob.digest)
    except errdefs.NotFound:
        committed = False
    else:
        committed = True
    if committed or status is None:
        # Nothing to resume: drop the ingest the lock check opened.
        store.abort(blob.ref)
        return
    progress: list[int] = []
    digest = write_blob(
        store,
        blob.ref,
        io.BytesIO(blob.data()),
        blob.size,
        blob.digest,
        op.labels,
        progress=progress.append,
    )
    assert digest == blob.digest, f"resuming {blob.ref} committed {digest}"
    # Nothing copied means a half-done commit was finished when the writer opened.
    assert progress[:1] in ([], [status.offset]), f"{blob.ref} resumed at {progress[:1]}"
    report.resumed += 1


# A daemonless worker in its own process


def _run(root: str, namespace: str, owner: str, seed: str, journal_path: str) -> None:
    store = open_store(root, namespace)
    fd = os.open(journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def journal(event: Event) -> None:
        # One write per line: a kill leaves whole lines, or a last one cut short.
        os.write(fd, (json.dumps(event) + "\n").encode())

    def reopen() -> None:
        open_store(root, namespace).close()

    present = present_blobs(store, owner)
    journal({"present": present})
    worker = Worker(store, owner, random.Random(seed), journal, present=present, reopen=reopen)
    journal({"ready": True})
    try:
        while True:
            worker.step()
    except BaseException:
        journal({"error": traceback.format_exc()})
        raise


if __name__ == "__main__":
    verb, *arguments = sys.argv[1:]
    if verb != "run" or len(arguments) != 5:
        sys.exit(__doc__)
    _run(*arguments)

"""contentd under load: 32 clients for a minute of mixed work, and nothing lost or corrupted.

Each client has its own gRPC channel to one daemon and works in one of two
namespaces: it writes blobs of its own (small ones in one message, medium ones
streamed), reads them back verified, lists, relabels and deletes them, opens
and aborts ingests, and lists ingests. Every client also writes the same few
shared blobs under the same refs, so writers meet each other's locks and wait
(REF_LOCKED), and deletes them while others read them. Each client knows
exactly what its own blobs must look like and checks every answer against
that. Afterwards every blob in the store is read back and verified.

Throughput and the daemon's peak memory are printed and recorded for the
record; only correctness and a generous memory bound are asserted.
"""

from __future__ import annotations

import io
import os
import random
import statistics
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, start_daemon
from support.workload import check_layout, read_verified

from contentd import errdefs
from contentd.client import RemoteStore
from contentd.content import Backoff, digest_of, write_blob

CLIENTS = 32
#: A minute in CI; CONTENTD_LOAD_SECONDS makes it a soak (README: Crashes and load).
SECONDS = float(os.environ.get("CONTENTD_LOAD_SECONDS", "60"))
NAMESPACES = ("load-a", "load-b")
#: Blobs every client writes under the same refs: even ones in one message, odd ones streamed.
SHARED = 6
#: A client deletes its oldest blobs beyond this many, so the store stays small.
OWN_LIMIT = 12
#: Peak resident memory the daemon may reach (it is printed, too).
RSS_LIMIT = 300 << 20
MiB = 1 << 20

#: The operations and how often each is picked.
WEIGHTS = {
    "write small": 14,
    "write medium": 3,
    "write shared": 5,
    "info": 12,
    "read": 10,
    "read shared": 4,
    "list": 4,
    "update": 8,
    "delete": 5,
    "delete shared": 2,
    "list statuses": 4,
    "abort": 3,
}

pytestmark = pytest.mark.slow


def shared_blob(index: int) -> bytes:
    size = 1_500_000 if index % 2 else 200_000
    return random.Random(f"shared/{index}").randbytes(size)


SHARED_BLOBS = [shared_blob(index) for index in range(SHARED)]
SHARED_DIGESTS = [digest_of(data) for data in SHARED_BLOBS]


@dataclass(frozen=True)
class CountingBackoff(Backoff):
    """write_blob's backoff, counting each wait: one per REF_LOCKED refusal."""

    waits: list[int] = field(default_factory=lambda: [0], compare=False)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        for delay in super().delays(rng):
            self.waits[0] += 1
            yield delay


@dataclass
class ClientResult:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    #: Errors the workload causes on purpose, by what they were and why they are expected.
    expected: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    ref_locked_waits: int = 0


class Client:
    """One client: its own channel, its own blobs, and a check of every answer."""

    def __init__(self, address: str, number: int, seed: int) -> None:
        self.name = f"c{number}"
        self.store = RemoteStore(address, NAMESPACES[number % len(NAMESPACES)])
        self.rng = random.Random(f"{seed}/{number}")
        self.backoff = CountingBackoff()
        #: This client's blobs: digest -> (size, labels); nobody else touches them.
        self.own: dict[str, tuple[int, dict[str, str]]] = {}
        self.written = 0
        self.result = ClientResult()

    def run(self, until: float) -> None:
        kinds = list(WEIGHTS)
        weights = list(WEIGHTS.values())
        try:
            while time.monotonic() < until:
                kind = self.rng.choices(kinds, weights)[0]
                started = time.monotonic()
                try:
                    getattr(self, "_" + kind.replace(" ", "_"))()
                except errdefs.NotFound:
                    if "shared" not in kind:
                        raise
                    self.result.expected[f"{kind}: not found, another client deleted it"] += 1
                    continue
                self.result.latencies[kind].append(time.monotonic() - started)
        except BaseException:
            self.result.unexpected.append(f"{self.name}:\n{traceback.format_exc()}")
        finally:
            self.result.ref_locked_waits = self.backoff.waits[0]
            self.store.close()

    # Own blobs

    def _new(self, size: int, kind: str) -> None:
        self.written += 1
        data = self.rng.randbytes(size)
        labels = {"client": self.name, "kind": kind, "n": str(self.written)}
        ref = f"{self.name}-{self.written}"
        source: bytes | io.BytesIO = data if size <= MiB else io.BytesIO(data)
        digest = write_blob(self.store, ref, source, size, digest_of(data), labels)
        assert digest == digest_of(data)
        self.own[digest] = (size, labels)
        if len(self.own) > OWN_LIMIT:
            self._remove(next(iter(self.own)))

    def _write_small(self) -> None:
        self._new(self.rng.randrange(1, 64 << 10), "small")

    def _write_medium(self) -> None:
        self._new(self.rng.randrange(MiB + 1, 3 * MiB), "medium")

    def _pick(self) -> str | None:
        return self.rng.choice(list(self.own)) if self.own else None

    def _info(self) -> None:
        digest = self._pick()
        if digest is None:
            return
        info = self.store.info(digest)
        assert (info.size, dict(info.labels)) == self.own[digest], info

    def _read(self) -> None:
        digest = self._pick()
        if digest is None:
            return
        with self.store.reader_at(digest) as reader:
            data = reader.read()
        assert (len(data), digest_of(data)) == (self.own[digest][0], digest)

    def _list(self) -> None:
        listed = {
            info.digest: (info.size, dict(info.labels))
            for info in self.store.walk(f"labels.client=={self.name}")
        }
        assert listed == self.own
        small = {
            info.digest
            for info in self.store.walk(f"labels.client=={self.name},labels.kind==small")
        }
        assert small == {
            digest for digest, (_, labels) in self.own.items() if labels["kind"] == "small"
        }

    def _update(self) -> None:
        digest = self._pick()
        if digest is None:
            return
        size, labels = self.own[digest]
        updated = {**labels, "touched": str(self.rng.randrange(1000))}
        info = self.store.update(digest, {"touched": updated["touched"]}, ["labels.touched"])
        assert dict(info.labels) == updated
        self.own[digest] = (size, updated)

    def _delete(self) -> None:
        digest = self._pick()
        if digest is not None:
            self._remove(digest)

    def _remove(self, digest: str) -> None:
        self.store.delete(digest)
        del self.own[digest]
        with pytest.raises(errdefs.NotFound):
            self.store.info(digest)

    # Shared blobs

    def _write_shared(self) -> None:
        index = self.rng.randrange(SHARED)
        data = SHARED_BLOBS[index]
        source: bytes | io.BytesIO = data if len(data) <= MiB else io.BytesIO(data)
        digest = write_blob(
            self.store,
            f"shared-{index}",
            source,
            len(data),
            SHARED_DIGESTS[index],
            {"shared": str(index)},
            backoff=self.backoff,
        )
        assert digest == SHARED_DIGESTS[index]

    def _read_shared(self) -> None:
        index = self.rng.randrange(SHARED)
        with self.store.reader_at(SHARED_DIGESTS[index]) as reader:
            data = reader.read()
        assert data == SHARED_BLOBS[index]

    def _delete_shared(self) -> None:
        self.store.delete(SHARED_DIGESTS[self.rng.randrange(SHARED)])

    # Ingests

    def _abort(self) -> None:
        ref = f"{self.name}-abandoned"
        with self.store.writer(ref) as writer:
            writer.write(self.rng.randbytes(64 << 10))
        assert self.store.status(ref).offset == 64 << 10
        self.store.abort(ref)
        with pytest.raises(errdefs.NotFound):
            self.store.status(ref)

    def _list_statuses(self) -> None:
        # Only _abort opens ingests of this client's own, and it leaves none.
        assert self.store.list_statuses(f"ref~=^{self.name}-") == []
        for status in self.store.list_statuses():
            assert status.total == 0 or status.offset <= status.total, status


def peak_rss(daemon: DaemonProcess) -> int:
    """The daemon's peak resident memory (VmHWM), in bytes."""
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def summary(results: list[ClientResult], elapsed: float, rss: int) -> list[str]:
    latencies: dict[str, list[float]] = defaultdict(list)
    expected: Counter[str] = Counter()
    for result in results:
        for kind, values in result.latencies.items():
            latencies[kind].extend(values)
        expected.update(result.expected)
    total = sum(len(values) for values in latencies.values())
    lines = [
        f"load: {CLIENTS} clients, {elapsed:.0f} s, {total} operations, "
        f"{total / elapsed:.0f} ops/s; daemon peak RSS {rss / MiB:.0f} MiB",
        f"  {'operation':<14} {'ops/s':>7} {'p50 ms':>7} {'p99 ms':>7}",
    ]
    for kind in WEIGHTS:
        values = sorted(latencies[kind])
        if not values:
            continue
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        lines.append(
            f"  {kind:<14} {len(values) / elapsed:>7.1f} "
            f"{statistics.median(values) * 1000:>7.1f} {p99 * 1000:>7.1f}"
        )
    waits = sum(result.ref_locked_waits for result in results)
    lines.append(f"  expected errors: {waits} x REF_LOCKED, write_blob waiting for another writer")
    lines.extend(f"    {count} x {what}" for what, count in sorted(expected.items()))
    return lines


def test_daemon_under_load_serves_every_client_correctly(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    root = tmp_path / "root"
    daemon = start_daemon(root)
    try:
        clients = [Client(daemon.address, number, seed) for number in range(CLIENTS)]
        started = time.monotonic()
        threads = [
            threading.Thread(target=client.run, args=(started + SECONDS,)) for client in clients
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=SECONDS + 120)
            assert not thread.is_alive(), "a client is stuck"
        elapsed = time.monotonic() - started
        results = [client.result for client in clients]
        rss = peak_rss(daemon)
        lines = summary(results, elapsed, rss)
        record_property("load_summary", "\n".join(lines))
        with capsys.disabled():
            print("\n" + "\n".join(lines))
        unexpected = [failure for result in results for failure in result.unexpected]
        assert unexpected == [], "\n".join(unexpected[:5])

        # The whole store, as the clients left it.
        listed: set[str] = set()
        with RemoteStore(daemon.address) as store:
            for namespace in NAMESPACES:
                view = store.with_namespace(namespace)
                for info in view.walk():
                    read_verified(view, info)
                    listed.add(info.digest)
                assert view.list_statuses() == []
            for client in clients:
                view = store.with_namespace(client.store.namespace)
                mine = {info.digest for info in view.walk(f"labels.client=={client.name}")}
                assert mine == set(client.own)
        errors = [line for line in daemon.log if " ERROR " in line or "Traceback" in line]
        assert errors == [], "".join(errors[:20])
        assert daemon.stop() == 0
        check_layout(root, listed)
        assert rss < RSS_LIMIT, f"daemon peak RSS {rss / MiB:.0f} MiB"
    finally:
        daemon.kill()

"""contentd loses nothing when killed: SIGKILL in the middle of its work, every promise checked.

Workers (support/workload.py) commit, relabel, delete and read blobs whose
bytes they derive from an index, journaling what the store acknowledged. The
process serving them is killed at seeded random points: a daemon (restarted
on the same root after each kill) or daemonless processes (several at once,
with and without a daemon serving the same root). After every kill the store
is held to the journals: listed blobs read back whole and verified, nothing
half-written listed, every acknowledged commit, label update and delete in
effect, every interrupted ingest listed at the offset its bytes on disk have,
its ref free at once, and resumed to a verified commit.

Each test prints its seed; CONTENTD_CRASH_SEED=N replays the same kill
points and operations (the timing between processes still varies).
"""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, start_daemon
from support.grpc_client import poll
from support.store_actor import content as actor_content
from support.store_actor import spawn as actor
from support.workload import (
    CheckReport,
    Ledger,
    Worker,
    check_after_crash,
    check_layout,
)

from contentd import errdefs
from contentd.client import RemoteStore
from contentd.content import digest_of, open_store
from contentd.content._files import INGEST_MODE
from contentd.content._records import ingest_key

NAMESPACE = "crash"
WORKLOAD = Path(__file__).resolve().parent / "support" / "workload.py"
#: Daemon kills in the daemon's loop, and client threads working on it;
#: CONTENTD_CRASH_ROUNDS multiplies every loop's rounds for a longer soak.
SOAK = int(os.environ.get("CONTENTD_CRASH_ROUNDS", "1"))
DAEMON_KILLS = 40 * SOAK
DAEMON_WORKERS = 4
#: The request a worker is about to send when the daemon is killed, in turn
#: (None: at a random moment).
KILL_TARGETS = ("stream-data", "commit", "put", "delete", "update", None)
#: Rounds of daemonless processes killed, and processes in each round.
DAEMONLESS_ROUNDS = 10 * SOAK
DAEMONLESS_BESIDE_DAEMON_ROUNDS = 6 * SOAK
PROCESSES = 3
#: Store opens while other processes commit (each open repairs, racing their commits).
OPENS_BESIDE_CHURN = 1000
#: How long a worker may take to reach a kill target before the kill comes anyway.
TARGET_WAIT = 2.0


@pytest.fixture
def seed(record_property: Callable[[str, object], None]) -> int:
    chosen = os.environ.get("CONTENTD_CRASH_SEED")
    value = int(chosen) if chosen else random.randrange(1 << 32)
    print(f"seed {value}: CONTENTD_CRASH_SEED={value} replays this test")
    record_property("crash_seed", value)
    return value


class Tally:
    """What the kills hit, for the record: the operations in flight and how each ended."""

    def __init__(self) -> None:
        self.in_flight: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.resumed = 0
        self.kills = 0

    def killed(self, ledgers: list[Ledger], processes: int = 1) -> None:
        self.kills += processes
        for ledger in ledgers:
            if ledger.in_flight is not None:
                self.in_flight[ledger.in_flight.describe()] += 1

    def add(self, report: CheckReport) -> None:
        self.outcomes.update(report.outcomes)
        self.resumed += report.resumed

    def show(
        self,
        title: str,
        capsys: pytest.CaptureFixture[str],
        record_property: Callable[[str, object], None],
    ) -> None:
        lines = [
            f"{title}: {self.kills} kills, {self.resumed} interrupted ingests resumed",
            "  in flight at a kill: " + _counts(self.in_flight),
            "  and then: " + _counts(self.outcomes),
        ]
        record_property("crash_tally", "\n".join(lines))
        with capsys.disabled():
            print("\n" + "\n".join(lines))


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(counter.items())) or "none"


class KillSwitch:
    """Tells the test a worker is about to send the request the daemon is to die in."""

    def __init__(self, target: str | None) -> None:
        self.target = target
        self.reached = threading.Event()
        self.pulled = threading.Event()

    def before(self, kind: str) -> None:
        if kind == self.target:
            self.reached.set()


class WorkerThreads:
    """Workers on a daemon, one thread and one client each, journaling into their ledgers."""

    def __init__(
        self,
        address: str,
        ledgers: list[Ledger],
        rng: random.Random,
        *,
        before: Callable[[str], None] = lambda kind: None,
        expect_failure: Callable[[], bool] = lambda: False,
    ) -> None:
        self.stop = threading.Event()
        self.failures: list[str] = []
        self._expect_failure = expect_failure
        self._stores = [RemoteStore(address, NAMESPACE) for _ in ledgers]
        self._threads = [
            threading.Thread(
                target=self._work,
                args=(
                    Worker(
                        store,
                        ledger.owner,
                        random.Random(rng.random()),
                        ledger.apply,
                        present=ledger.present,
                        before=before,
                    ),
                ),
            )
            for store, ledger in zip(self._stores, ledgers, strict=True)
        ]

    def _work(self, worker: Worker) -> None:
        try:
            worker.run(self.stop)
        except BaseException as exc:
            # Workers find out about a kill by failing; anything else is a finding.
            if isinstance(exc, AssertionError) or not self._expect_failure():
                self.failures.append(f"worker {worker.owner}:\n{traceback.format_exc()}")

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a worker is stuck after its daemon died"
        for store in self._stores:
            store.close()


def kill_in_the_middle(
    daemon: DaemonProcess, ledgers: list[Ledger], rng: random.Random, target: str | None
) -> list[str]:
    """Run workers on the daemon and SIGKILL it as one is about to send `target`.

    Returns the workers' unexpected failures.
    """
    switch = KillSwitch(target)
    workers = WorkerThreads(
        daemon.address, ledgers, rng, before=switch.before, expect_failure=switch.pulled.is_set
    )
    workers.start()
    if target is None:
        time.sleep(rng.uniform(0.05, 0.6))
    else:
        switch.reached.wait(TARGET_WAIT)
        # A little later, so the request is on the wire or in the daemon's hands.
        time.sleep(rng.uniform(0, 0.004))
    switch.pulled.set()
    daemon.kill()
    workers.join()
    return workers.failures


def assert_no_internal_errors(daemon: DaemonProcess) -> None:
    """The daemon logged no error: nothing it did failed unclassified."""
    errors = [line for line in daemon.log if " ERROR " in line or "Traceback" in line]
    assert errors == [], "".join(errors)


@pytest.mark.slow
def test_daemon_killed_mid_operation_loses_nothing(
    tmp_path: Path,
    seed: int,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    rng = random.Random(seed)
    root = tmp_path / "root"
    ledgers = [Ledger(f"w{n}") for n in range(DAEMON_WORKERS)]
    tally = Tally()
    for kill in range(DAEMON_KILLS + 1):
        daemon = start_daemon(root)
        try:
            with RemoteStore(daemon.address, NAMESPACE) as store:
                tally.add(check_after_crash(store, root, ledgers))
            if kill == DAEMON_KILLS:
                assert daemon.stop() == 0
                break
            target = KILL_TARGETS[kill % len(KILL_TARGETS)]
            failures = kill_in_the_middle(daemon, ledgers, rng, target)
            assert failures == [], "\n".join(failures)
            tally.killed(ledgers)
            assert_no_internal_errors(daemon)
        finally:
            daemon.kill()
    tally.show("daemon killed", capsys, record_property)
    # The kills fell where they were aimed: in the middle of streams, among others.
    assert tally.resumed > 0


# Daemonless processes


def spawn_worker(root: Path, owner: str, seed: int, journal: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            str(WORKLOAD),
            "run",
            str(root),
            NAMESPACE,
            owner,
            str(seed),
            str(journal),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@contextmanager
def daemonless_workers(
    root: Path, ledgers: list[Ledger], rng: random.Random, journals: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start a worker process per ledger on `root`, ready when the block starts.

    Leaving the block kills whatever still runs and replays each journal
    into its ledger.
    """
    journals.mkdir()
    paths = [journals / ledger.owner for ledger in ledgers]
    processes = [
        spawn_worker(root, ledger.owner, rng.randrange(1 << 32), path)
        for ledger, path in zip(ledgers, paths, strict=True)
    ]
    try:
        for process, path in zip(processes, paths, strict=True):
            deadline = time.monotonic() + 30
            while not (path.exists() and '"ready"' in path.read_text()):
                assert process.poll() is None, process.communicate()[1].decode()
                assert time.monotonic() < deadline, "a worker process did not start"
                time.sleep(0.01)
        yield processes
    finally:
        for process in processes:
            process.kill()
            process.communicate()
    for ledger, path in zip(ledgers, paths, strict=True):
        ledger.replay(path)


def kill_staggered(processes: list[subprocess.Popen[bytes]], rng: random.Random) -> None:
    """SIGKILL each process at its own random moment, while the others go on."""
    for process in rng.sample(processes, len(processes)):
        time.sleep(rng.uniform(0.02, 0.4))
        assert process.poll() is None, process.communicate()[1].decode()
        process.kill()
        assert process.wait() == -signal.SIGKILL


@pytest.mark.slow
def test_daemonless_processes_killed_mid_operation_lose_nothing(
    tmp_path: Path,
    seed: int,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    rng = random.Random(seed)
    root = tmp_path / "root"
    open_store(root).close()
    ledgers = [Ledger(f"p{n}") for n in range(PROCESSES)]
    tally = Tally()
    for round_ in range(DAEMONLESS_ROUNDS):
        with daemonless_workers(root, ledgers, rng, tmp_path / f"round-{round_}") as processes:
            kill_staggered(processes, rng)
        tally.killed(ledgers, len(processes))
        # Opening the store repairs what the kills left.
        with open_store(root, NAMESPACE) as store:
            tally.add(check_after_crash(store, root, ledgers))
    tally.show("daemonless processes killed", capsys, record_property)


@pytest.mark.slow
def test_daemonless_processes_killed_beside_a_daemon_lose_nothing(
    tmp_path: Path,
    seed: int,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    rng = random.Random(seed)
    root = tmp_path / "root"
    ledgers = [Ledger(f"p{n}") for n in range(PROCESSES)]
    # A client of the daemon works alongside; it is never killed.
    remote = [Ledger("d0")]
    tally = Tally()
    daemon = start_daemon(root)
    try:
        with RemoteStore(daemon.address, NAMESPACE) as store:
            for round_ in range(DAEMONLESS_BESIDE_DAEMON_ROUNDS):
                client = WorkerThreads(daemon.address, remote, rng)
                client.start()
                try:
                    with daemonless_workers(
                        root, ledgers, rng, tmp_path / f"round-{round_}"
                    ) as processes:
                        kill_staggered(processes, rng)
                finally:
                    client.join()
                assert client.failures == [], "\n".join(client.failures)
                tally.killed(ledgers, len(processes))
                # The daemon does not reopen the store: it has to cope as it is.
                tally.add(check_after_crash(store, root, [*ledgers, *remote], layout=False))
        assert_no_internal_errors(daemon)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    with open_store(root, NAMESPACE) as store:
        check_after_crash(store, root, [*ledgers, *remote])
        check_layout(root, [info.digest for info in store.walk()])
    tally.show("daemonless processes killed beside a daemon", capsys, record_property)


# What the loops above found, one case each


def test_opening_a_store_while_others_commit_never_fails(tmp_path: Path) -> None:
    # Each open repairs, looking through ingest files that commits in the
    # other processes remove meanwhile.
    root = tmp_path / "root"
    open_store(root).close()
    churners = [actor("churn", str(root), "default") for _ in range(2)]
    try:
        with open_store(root) as store:
            assert poll(lambda: len(list(store.walk())) > 100, timeout=60)
        for _ in range(OPENS_BESIDE_CHURN):
            open_store(root).close()
        for churner in churners:
            assert churner.poll() is None, churner.communicate()[1]
    finally:
        for churner in churners:
            churner.kill()
            churner.communicate()


def killed_actor(*arguments: str) -> None:
    """Run an actor that SIGKILLs itself at its crash point."""
    process = actor(*arguments)
    out, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, (out, err)


@pytest.mark.parametrize("resumed_by", ["a reopened store", "a store open all along"])
def test_an_ingest_whose_commit_died_is_writable_again(tmp_path: Path, resumed_by: str) -> None:
    # Resuming appends to the bytes, which a store run by anyone but root can
    # do only if they are writable again, not read-only as the commit left them.
    root = tmp_path / "root"
    data = actor_content(300_000)
    store = open_store(root)
    try:
        killed_actor("crash", str(root), "default", "crashing", "after-mark")
        if resumed_by == "a reopened store":
            store.close()
            store = open_store(root)
        with store.writer("crashing", total=len(data), expected=digest_of(data)) as writer:
            assert writer.status().offset == len(data)
            data_file = root / "ingest" / ingest_key("default", "crashing")
            assert stat.S_IMODE(data_file.stat().st_mode) == INGEST_MODE
            assert writer.commit(len(data), digest_of(data)) == digest_of(data)
    finally:
        store.close()


def test_a_new_writer_starts_empty_where_a_put_died(tmp_path: Path) -> None:
    # No reopen repairs the store in between, as when a daemon serves it.
    root = tmp_path / "root"
    with open_store(root) as store:
        killed_actor("crash-put", str(root), "default", "putting", "after-fsync")
        assert store.list_statuses() == []
        with store.writer("putting") as writer:
            assert writer.status().offset == 0
            writer.write(b"new")
            assert writer.commit() == digest_of(b"new")


def stored(root: Path, data: bytes) -> str:
    with open_store(root) as store:
        return store.put("stored", data)


def test_a_blob_whose_delete_died_reads_back(tmp_path: Path) -> None:
    root = tmp_path / "root"
    data = actor_content(100_000)
    digest = stored(root, data)
    with open_store(root) as store:
        killed_actor("crash-delete", str(root), "default", digest)
        with store.reader_at(digest) as reader:
            assert reader.read() == data
        assert store.info(digest).size == len(data)
    assert list((root / "trash").iterdir()) == []


def test_a_blob_being_deleted_is_not_found_never_lost(tmp_path: Path) -> None:
    root = tmp_path / "root"
    digest = stored(root, actor_content(100_000))
    with open_store(root) as store:
        deleter = actor("slow-delete", str(root), "default", digest)
        try:
            assert deleter.stdout is not None
            assert deleter.stdout.readline().strip() == "moved"
            # The delete has moved the bytes aside and not yet committed.
            with pytest.raises(errdefs.NotFound):
                store.reader_at(digest)
            assert deleter.stdout.readline().strip() == "deleted"
        finally:
            deleter.kill()
            deleter.communicate()


def test_a_commit_whose_bytes_moved_before_its_writer_died_is_listed_as_a_blob(
    tmp_path: Path,
) -> None:
    # Not as an ingest at offset 0 whose bytes are nowhere, while nothing
    # reopens the store (a daemon serving it, say).
    root = tmp_path / "root"
    data = actor_content(300_000)
    with open_store(root) as store:
        killed_actor("crash", str(root), "default", "crashing", "after-rename")
        assert store.list_statuses() == []
        with pytest.raises(errdefs.NotFound):
            store.status("crashing")
        assert store.info(digest_of(data)).size == len(data)
        with store.reader_at(digest_of(data)) as reader:
            assert reader.read() == data
    check_layout(root, [digest_of(data)])


@pytest.mark.skipif(os.geteuid() == 0, reason="root may truncate a read-only file anyway")
def test_a_put_replaces_the_bytes_a_dead_put_left(tmp_path: Path) -> None:
    # A dead put's bytes are read-only, and no reopen removed them.
    root = tmp_path / "root"
    with open_store(root) as store:
        killed_actor("crash-put", str(root), "default", "putting", "after-fsync")
        assert store.put("putting", b"new") == digest_of(b"new")

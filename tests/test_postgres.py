"""What the PostgreSQL backends promise beyond the backend contracts (tests/test_backends.py).

Locks that hold across processes and go with a killed holder's connection;
a database restarted under load (failures are Unavailable, nothing
acknowledged is lost, the same objects work again); migrations raced by
daemons starting together; group commit; strings PostgreSQL cannot hold as
they are; and a password that never shows in an error or a log line.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from support import backends as support_backends
from support.postgres import PostgresCluster

from contentd import errdefs
from contentd.content import (
    ContentRecord,
    IngestRecord,
    LeaseRecord,
    digest_of,
)
from contentd.content._postgres import (
    LOCK_KEEPALIVES,
    SCHEMA_VERSION,
    PostgresLocks,
    PostgresMetadata,
    Transaction,
    parse_url,
)

KEY = "c" * 64


@pytest.fixture
def schema() -> str:
    return f"t_{uuid.uuid4().hex[:20]}"


@pytest.fixture
def metadata(postgres: PostgresCluster, schema: str) -> Iterator[PostgresMetadata]:
    opened = PostgresMetadata(postgres.dsn, schema=schema)
    yield opened
    opened.close()


@pytest.fixture
def locks(postgres: PostgresCluster, schema: str) -> Iterator[PostgresLocks]:
    opened = PostgresLocks(postgres.dsn, schema=schema)
    yield opened
    opened.close()


def record(number: int, **labels: str) -> ContentRecord:
    return ContentRecord(digest_of(str(number).encode()), number, 1, 1, dict(labels))


# Locks


def test_a_lock_is_refused_to_another_backend_of_this_process(
    postgres: PostgresCluster, schema: str, locks: PostgresLocks
) -> None:
    other = PostgresLocks(postgres.dsn, schema=schema)
    try:
        held = locks.try_lock(KEY)
        assert held is not None
        assert other.try_lock(KEY) is None
        assert other.exists(KEY)
        held.release()
        taken = other.try_lock(KEY)
        assert taken is not None
        taken.release(remove=True)
        assert not locks.exists(KEY)
    finally:
        other.close()


def test_the_server_probes_a_lock_connection_so_a_vanished_host_frees_its_locks(
    locks: PostgresLocks,
) -> None:
    held = locks.try_lock(KEY)
    assert held is not None
    # The settings of the session the lock lives on, as the server applies them
    # (the tests reach the server over TCP, where they take effect).
    connection = locks._current().connection
    for setting, value in LOCK_KEEPALIVES.items():
        shown = connection.execute(f"SHOW {setting}").fetchone()
        assert shown is not None
        assert shown[0] in (str(value), f"{value}ms", f"{value // 1000}s")
    held.release(remove=True)


def test_locks_of_stores_in_other_schemas_never_collide(
    postgres: PostgresCluster, locks: PostgresLocks
) -> None:
    elsewhere = PostgresLocks(postgres.dsn, schema=f"t_{uuid.uuid4().hex[:20]}")
    try:
        here, there = locks.try_lock(KEY), elsewhere.try_lock(KEY)
        assert here is not None
        assert there is not None
        here.write_note("here")
        assert there.read_note() == ""
    finally:
        elsewhere.close()


def test_a_lock_held_by_a_killed_process_is_free_with_its_note(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    place = tmp_path / "store"
    holder = subprocess.Popen(
        [sys.executable, support_backends.__file__, "hold", "postgres", str(place), KEY, "note"],
        stdout=subprocess.PIPE,
        text=True,
    )
    backends = support_backends.open_backends("postgres", place)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        assert backends.locks.try_lock(KEY) is None
        assert backends.locks.try_lock(KEY, create=False) is None
        assert backends.locks.existing() == {KEY: True}
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(30)
        # The server frees the lock once it sees the connection close.
        deadline = time.monotonic() + 10
        while (lock := backends.locks.try_lock(KEY, create=False)) is None:
            assert time.monotonic() < deadline, "the killed holder's lock stayed held"
            time.sleep(0.05)
        assert lock.read_note() == "note"
        lock.release(remove=True)
        assert backends.locks.existing() == {}
    finally:
        holder.kill()
        holder.wait(30)
        backends.close()


# The database restarted under load


def test_a_restart_mid_load_fails_operations_loses_nothing_and_is_survived(
    postgres: PostgresCluster, schema: str
) -> None:
    metadata = PostgresMetadata(postgres.dsn, schema=schema, connect_timeout=1, busy_timeout=2)
    locks = PostgresLocks(postgres.dsn, schema=schema, connect_timeout=1)
    acknowledged: list[str] = []
    unexpected: list[BaseException] = []
    unavailable = 0
    stop = threading.Event()

    def insert(number: int, tx: Transaction) -> None:
        tx.insert_content("ns", record(number))

    def load(worker: int) -> None:
        nonlocal unavailable
        number = worker * 1_000_000
        while not stop.is_set():
            number += 1
            digest = record(number).digest
            try:
                metadata.commit("committing", partial(insert, number))
            except errdefs.Unavailable:
                unavailable += 1
                time.sleep(0.05)
            except BaseException as exc:
                unexpected.append(exc)
                return
            else:
                acknowledged.append(digest)

    lock = locks.try_lock(KEY)
    assert lock is not None
    lock.write_note("noted before the restart")
    workers = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1)
        postgres.stop("immediate")
        try:
            with (
                pytest.raises(errdefs.Unavailable, match="metadata database unavailable"),
                metadata.read("reading during the outage") as tx,
            ):
                tx.content("ns", record(1).digest)
        finally:
            postgres.start()
        deadline = time.monotonic() + 30
        before = len(acknowledged)
        while len(acknowledged) == before:
            assert time.monotonic() < deadline, "the metadata never came back"
            time.sleep(0.1)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    try:
        assert unexpected == []
        assert unavailable > 0
        with metadata.read("checking") as tx:
            missing = [d for d in acknowledged if tx.content("ns", d) is None]
        assert missing == []
        # The lock went with its connection: its holder cannot go on as if it held it.
        with pytest.raises(errdefs.Unavailable):
            lock.write_note("noted after the restart")
        with pytest.raises(errdefs.Unavailable):
            lock.read_note()
        lock.release()
        again = locks.try_lock(KEY)
        assert again is not None
        assert again.read_note() == "noted before the restart"
        again.release(remove=True)
    finally:
        metadata.close()
        locks.close()


# Migrations


def test_daemons_starting_together_migrate_an_empty_schema_once(
    postgres: PostgresCluster, schema: str
) -> None:
    barrier = threading.Barrier(4)
    opened: list[PostgresMetadata] = []
    failures: list[BaseException] = []

    def open_one() -> None:
        barrier.wait()
        try:
            opened.append(PostgresMetadata(postgres.dsn, schema=schema))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == []
        assert len(opened) == 4
        with opened[0].read("reading the version") as tx:
            versions = tx.connection.execute("SELECT version FROM schema_version").fetchall()
            assert versions == [(SCHEMA_VERSION,)]
            # A fresh store has nothing stored before collection to keep.
            assert tx.connection.execute("SELECT count(*) FROM leases").fetchone() == (0,)
    finally:
        for each in opened:
            each.close()


# Transactions


def test_group_commit_shares_transactions_and_a_failing_body_undoes_only_itself(
    metadata: PostgresMetadata,
) -> None:
    callers = 32
    barrier = threading.Barrier(callers)
    transactions: dict[int, int] = {}
    failed: set[int] = set()

    def body(number: int, tx: Transaction) -> None:
        tx.insert_content("ns", record(number))
        if number % 4 == 0:
            raise errdefs.InvalidArgument(f"body {number} fails")
        if number % 4 == 1:
            tx.insert_content("ns", record(number))  # a unique violation, in the database
        row = tx.connection.execute("SELECT txid_current()").fetchone()
        assert row is not None
        transactions[number] = row[0]

    def caller(number: int) -> None:
        barrier.wait()
        try:
            metadata.commit("committing", lambda tx: body(number, tx))
        except Exception:
            failed.add(number)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failed == {n for n in range(callers) if n % 4 in (0, 1)}
    assert len(set(transactions.values())) < len(transactions)
    with metadata.read("reading") as tx:
        for number in range(callers):
            assert (tx.content("ns", record(number).digest) is not None) == (number not in failed)


def test_readers_never_wait_for_a_writer(metadata: PostgresMetadata) -> None:
    with metadata.write("filling") as tx:
        tx.insert_content("ns", record(1))
    with metadata.write("holding the write lock") as writing:
        writing.delete_content("ns", record(1).digest)
        started = time.monotonic()
        with metadata.read("reading beside it") as tx:
            assert tx.content("ns", record(1).digest) == record(1)
        assert time.monotonic() - started < 1


def test_strings_postgresql_cannot_hold_round_trip_in_byte_order(
    metadata: PostgresMetadata,
) -> None:
    refs = ["a\x00b", "a\x01", "a\x01\x00", "a", "a\x02", "ab", "a\x00"]
    labels = {"k\x00": "v\x00\x01", "plain": "\x01"}
    with metadata.write("filling") as tx:
        for ref in refs:
            tx.insert_ingest(IngestRecord("ns", ref, uuid.uuid4().hex, 0, "", 1, 1, None))
        tx.insert_content("ns", record(1, **labels))
        tx.insert_content("ns", record(2, plain="other"))
        tx.insert_lease("ns", LeaseRecord("l\x00", 1, {"k": "\x00"}))
    with metadata.read("reading") as tx:
        assert [i.ref for i in tx.ingests("ns")] == sorted(refs)
        assert tx.ingest("ns", "a\x00b") is not None
        found = tx.content("ns", record(1).digest)
        assert found is not None
        assert found.labels == labels
        narrowed = tx.content_page("ns", "", 10, [{"k\x00": "v\x00\x01"}])
        assert [r.digest for r in narrowed] == [record(1).digest]
        assert tx.leases("ns") == [LeaseRecord("l\x00", 1, {"k": "\x00"})]


# Connecting


def test_a_url_names_the_schema_and_the_rest_goes_to_libpq(
    postgres: PostgresCluster, schema: str
) -> None:
    conninfo, named = parse_url(f"{postgres.dsn}?application_name=contentd&schema={schema}")
    assert named == schema
    assert conninfo == f"{postgres.dsn}?application_name=contentd"
    assert parse_url(postgres.dsn)[1] == "contentd"
    with pytest.raises(errdefs.InvalidArgument):
        parse_url(f"{postgres.dsn}?schema=Not-A-Name")
    opened = PostgresMetadata.from_url(f"{postgres.dsn}?schema={schema}")
    try:
        with opened.write("writing") as tx:
            tx.ensure_namespace("ns", 1)
        with opened.read("reading") as tx:
            name = tx.connection.execute("SELECT current_schema()").fetchone()
        assert name == (schema,)
    finally:
        opened.close()


def test_a_password_never_shows_in_errors_or_logs(
    postgres: PostgresCluster, caplog: pytest.LogCaptureFixture
) -> None:
    secret, user = "pw-s3cr3t-pw", "someone-unknown"
    caplog.set_level(logging.DEBUG)
    urls = [
        # A server that answers, for a role it does not know.
        f"postgresql://{user}:{secret}@127.0.0.1:{postgres.port}/postgres?schema=t_secret",
        # Nothing listening.
        f"postgresql://{user}:{secret}@127.0.0.1:1/postgres",
    ]
    for url in urls:
        for opener in (PostgresMetadata.from_url, PostgresLocks.from_url):
            with pytest.raises(errdefs.Unavailable) as failed:
                opener(url, connect_timeout=1)
            error: BaseException | None = failed.value
            while error is not None:
                assert secret not in str(error)
                assert user not in str(error)
                error = error.__cause__ or error.__context__
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert secret not in logged
    assert user not in logged

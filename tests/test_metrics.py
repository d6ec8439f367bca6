"""Prometheus metrics (`contentd serve --metrics`): scraped from a real daemon with the real
client parser, while the tests send it gRPC and registry traffic.

One daemon serves the module, with `--metrics 127.0.0.1:0` and `--http 127.0.0.1:0` and its
garbage collection scheduler off, so only the collections a test asks for run. Each test reads
the metrics, does something, and checks that exactly the counters it should have moved moved,
by exactly what it did. A streaming call's last answer can reach the client just before the
daemon counts the call as handled, so the checks wait (briefly) for the counts to arrive.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.daemon import DaemonProcess, remote, running_daemon, start_daemon
from support.registry_http import RegistryClient

from contentd.client import RemoteStore
from contentd.content import ROOT_LABEL, digest_of
from contentd.errdefs import NotFound, Unavailable

CONTENT = "containerd.services.content.v1.Content"
README = Path(__file__).resolve().parents[1] / "README.md"
#: Labelled roots stay through the collections the tests run.
KEPT = {ROOT_LABEL: "kept"}
#: A sample: its name and its labels.
Key = tuple[str, frozenset[tuple[str, str]]]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("metrics")
    process = start_daemon(root, "--metrics", "127.0.0.1:0", "--http", "127.0.0.1:0")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def store(daemon: DaemonProcess) -> Iterator[RemoteStore]:
    client = remote(daemon, namespace=f"metrics-{uuid.uuid4().hex[:8]}")
    try:
        yield client
    finally:
        client.close()


def scrape(daemon: DaemonProcess) -> dict[Key, float]:
    """Every sample the daemon exposes now, parsed by Prometheus's own client."""
    with urllib.request.urlopen(daemon.metrics_url, timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def key(name: str, **labels: str) -> Key:
    return name, frozenset(labels.items())


def grpc_labels(method: str, kind: str, service: str = CONTENT) -> dict[str, str]:
    return {"grpc_type": kind, "grpc_service": service, "grpc_method": method}


def moved(
    daemon: DaemonProcess, before: Mapping[Key, float], expected: Mapping[Key, float]
) -> dict[Key, float]:
    """The metrics once each `expected` key has moved by its amount since `before`.

    Fails with what moved instead if they have not within a few seconds.
    """
    deadline = time.monotonic() + 10
    while True:
        after = scrape(daemon)
        deltas = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in expected}
        if deltas == dict(expected) or time.monotonic() > deadline:
            assert deltas == dict(expected)
            return after
        time.sleep(0.05)


def test_grpc_calls_are_counted_by_method_and_code(
    daemon: DaemonProcess, store: RemoteStore
) -> None:
    data = os.urandom(4096)
    before = scrape(daemon)
    digest = store.put("metrics-put", data, labels=KEPT)
    assert store.info(digest).size == len(data)
    with pytest.raises(NotFound):
        store.info(digest_of(b"never stored"))
    with store.reader_at(digest) as reader:
        assert reader.read_at(len(data), 0) == data
    # Two Info calls found their blob (the client's reader asks for the size first), one not.
    info = grpc_labels("Info", "unary")
    write = grpc_labels("Write", "bidi_stream")
    read = grpc_labels("Read", "server_stream")
    after = moved(
        daemon,
        before,
        {
            key("grpc_server_started_total", **info): 3,
            key("grpc_server_handled_total", **info, grpc_code="OK"): 2,
            key("grpc_server_handled_total", **info, grpc_code="NotFound"): 1,
            key("grpc_server_msg_received_total", **info): 3,
            key("grpc_server_msg_sent_total", **info): 2,
            key("grpc_server_handling_seconds_count", **info): 3,
            key("grpc_server_started_total", **write): 1,
            key("grpc_server_handled_total", **write, grpc_code="OK"): 1,
            key("grpc_server_msg_received_total", **write): 1,
            key("grpc_server_msg_sent_total", **write): 1,
            key("grpc_server_handled_total", **read, grpc_code="OK"): 1,
            key("grpc_server_msg_sent_total", **read): 1,
            key("contentd_ingested_bytes_total", api="grpc"): len(data),
            key("contentd_read_bytes_total", api="grpc"): len(data),
            key("contentd_commits_total"): 1,
            key("contentd_group_commit_batch_size_count"): 1,
            key("contentd_group_commit_batch_size_sum"): 1,
        },
    )
    # The histogram has its buckets, cumulative up to +Inf, which holds every call.
    buckets = {
        dict(labels)["le"]: value
        for (name, labels), value in after.items()
        if name == "grpc_server_handling_seconds_bucket"
        and {k: v for k, v in labels if k != "le"} == info
    }
    assert len(buckets) > 10
    assert buckets["+Inf"] == after[key("grpc_server_handling_seconds_count", **info)]
    values = [buckets[le] for le in sorted(buckets, key=float)]
    assert values == sorted(values)


def test_a_locked_ref_is_counted_as_refused(daemon: DaemonProcess, store: RemoteStore) -> None:
    write = grpc_labels("Write", "bidi_stream")
    before = scrape(daemon)
    with store.writer("metrics-held") as holder:
        holder.write(b"held")
        held = scrape(daemon)
        assert held[key("contentd_ingest_locks_held")] == 1
        with pytest.raises(Unavailable), store.writer("metrics-held") as second:
            second.write(b"refused")
    after = moved(
        daemon,
        before,
        {
            key("grpc_server_handled_total", **write, grpc_code="Unavailable"): 1,
            key("contentd_ingest_locks_held"): 0,
        },
    )
    # The refused stream may try again once while a holder on this daemon hands over.
    refusals = key("contentd_ingest_lock_refusals_total")
    assert after[refusals] - before.get(refusals, 0) >= 1


def test_registry_requests_are_counted_by_route_and_status(daemon: DaemonProcess) -> None:
    registry = RegistryClient(daemon.http_url)
    data = os.urandom(5000)
    before = scrape(daemon)
    digest = registry.push_blob("metrics/pushed", data)
    assert registry.get(f"/v2/metrics/pushed/blobs/{digest}").body == data
    missing = registry.get(f"/v2/metrics/pushed/blobs/{digest_of(b'never pushed')}")
    assert missing.status == 404
    moved(
        daemon,
        before,
        {
            key("contentd_registry_requests_total", route="upload", method="POST", status="201"): 1,
            key("contentd_registry_requests_total", route="blob", method="GET", status="200"): 1,
            key("contentd_registry_requests_total", route="blob", method="GET", status="404"): 1,
            key("contentd_registry_request_duration_seconds_count", route="blob", method="GET"): 2,
            key("contentd_ingested_bytes_total", api="registry"): len(data),
            key("contentd_read_bytes_total", api="registry"): len(data),
            key("contentd_commits_total"): 1,
        },
    )


def test_a_collection_counts_its_run_and_the_bytes_it_freed(
    daemon: DaemonProcess, store: RemoteStore
) -> None:
    garbage = os.urandom(3000)
    store.put("metrics-garbage", garbage)  # no root, no lease: garbage at once
    before = scrape(daemon)
    report = store.collect()
    assert (report.blobs, report.bytes) == (1, len(garbage))
    moved(
        daemon,
        before,
        {
            key("contentd_gc_runs_total", outcome="ok"): 1,
            key("contentd_gc_freed_bytes_total"): len(garbage),
            key("contentd_gc_freed_blobs_total"): 1,
            key("contentd_gc_duration_seconds_count"): 1,
        },
    )


def test_store_size_and_blob_count_per_namespace_match_the_store(
    daemon: DaemonProcess, store: RemoteStore
) -> None:
    for size in (100, 2000, 30000):
        store.put(f"metrics-{size}", os.urandom(size), labels=KEPT)
    with store.writer("metrics-unfinished") as writer:
        writer.write(b"part of something")
    metrics = scrape(daemon)
    namespace = store.namespace
    listed = list(store.walk())
    assert metrics[key("contentd_store_blobs", namespace=namespace)] == len(listed) == 3
    assert metrics[key("contentd_store_size_bytes", namespace=namespace)] == sum(
        info.size for info in listed
    )
    assert metrics[key("contentd_store_ingests", namespace=namespace)] == len(store.list_statuses())
    assert len(store.list_statuses()) == 1


def test_process_metrics_are_exposed(daemon: DaemonProcess) -> None:
    metrics = scrape(daemon)
    names = {name for name, _ in metrics}
    assert {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "python_info",
    } <= names
    assert metrics[key("process_resident_memory_bytes")] > 0


def test_the_readme_lists_every_metric_the_daemon_serves(
    daemon: DaemonProcess, store: RemoteStore
) -> None:
    store.put("metrics-listed", b"listed", labels=KEPT)  # every namespace gauge has a sample
    with urllib.request.urlopen(daemon.metrics_url, timeout=10) as answer:
        families = text_string_to_metric_families(answer.read().decode())
        served = {
            (family.name, family.type)
            for family in families
            if family.name.startswith(("grpc_server_", "contentd_"))
            # prometheus-client's companions of counters and histograms: when each began.
            and not family.name.endswith("_created")
        }
    listed = set(
        re.findall(
            r"^\| `((?:grpc_server|contentd)_\w+?)(?:_total)?` \| (\w+) \|",
            README.read_text(),
            flags=re.MULTILINE,
        )
    )
    assert served == listed


def _listening_tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    inodes.add(fields[9])
    return inodes


def test_without_the_flag_nothing_listens_for_metrics(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "root") as plain:
        remote(plain).close()
        sockets = {
            os.readlink(f"/proc/{plain.process.pid}/fd/{fd}")
            for fd in os.listdir(f"/proc/{plain.process.pid}/fd")
        }
        inodes = {link[len("socket:[") : -1] for link in sockets if link.startswith("socket:")}
        assert inodes
        assert not inodes & _listening_tcp_inodes()
        assert "metrics" not in plain.logged()

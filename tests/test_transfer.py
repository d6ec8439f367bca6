"""contentd's Transfer service: a pull through a daemon that the daemon fetches itself.

What every pull must do runs on both routes in tests/test_pull.py; these are the daemon's
own concerns: the credentials it is sent, a call canceled mid-layer, its limit of transfers
at once, and a daemon without the service (containerd), for which the client fetches.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.containerd import start_containerd
from support.daemon import DaemonProcess, contentd_command, start_daemon
from support.image_registries import (
    APP,
    Source,
    auth_file,
    run_cli,
    sockets,
    stored,
    threads,
    wait_for_release,
    wait_for_threads,
)
from support.oci_layout import Image, MiB
from support.registry_proxy import RegistryProxy
from support.tools import require_tool

from contentd.client import RemoteStore, TransferEvent, pull
from contentd.content import LocalStore, open_store
from contentd.errdefs import TOO_MANY_TRANSFERS, NotFound, ResourceExhausted
from contentd.proto import transfer_pb2
from contentd.proto.transfer_pb2_grpc import TransferStub
from contentd.proto.wire import NAMESPACE_HEADER

pytestmark = [pytest.mark.conformance, pytest.mark.slow]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon on tmp_path/store, logging every request."""
    running = start_daemon(tmp_path / "store", "--log-level", "debug")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def store(daemon: DaemonProcess) -> Iterator[LocalStore]:
    """The daemon's store, read beside it."""
    with open_store(daemon.root) as opened:
        yield opened


def start_pull(
    channel: grpc.Channel,
    reference: str,
    events: transfer_pb2.PullRequest.Events = transfer_pb2.PullRequest.ALL,
) -> Iterator[transfer_pb2.PullEvent]:
    """A Pull call on the Transfer service as a client makes it; cancel it with `.cancel()`."""
    stub = TransferStub(channel)  # type: ignore[no-untyped-call]
    request = transfer_pb2.PullRequest(reference=reference, plain_http=True, events=events)
    call: Iterator[transfer_pb2.PullEvent] = stub.Pull(
        request, metadata=((NAMESPACE_HEADER, "default"),)
    )
    return call


@pytest.fixture
def channel(daemon: DaemonProcess) -> Iterator[grpc.Channel]:
    """A channel to `daemon`, connected, its first call served (a server thread started)."""
    opened = grpc.insecure_channel(daemon.address)
    with pytest.raises(grpc.RpcError):
        next(iter(start_pull(opened, "no reference")))
    try:
        yield opened
    finally:
        opened.close()


def wait_for_progress(call: Iterator[transfer_pb2.PullEvent], digest: str) -> int:
    """Read the call's events until the daemon has written some of `digest`; how much."""
    for event in call:
        if event.kind == "progress" and event.digest == digest and event.offset > 0:
            return event.offset
    raise AssertionError(f"the pull ended before any of {digest} was written")


def test_credentials_reach_the_registry_through_the_daemon_but_never_its_log(
    proxy: RegistryProxy, daemon: DaemonProcess, store: LocalStore, image: Image, tmp_path: Path
) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    proxy.configure(bearer={"user": "puller", "password": password})
    credentials = auth_file(tmp_path / "auth.json", proxy.host, "puller", password)
    reference = f"{proxy.host}/{APP}:v1"

    with RemoteStore(daemon.address) as remote:
        recorded = pull(remote, reference, plain_http=True, auth_file=credentials)

    assert recorded.target.digest == image.manifest.digest
    assert stored(store) == {blob.digest: blob.data for blob in image.blobs}
    tokens = [r for r in proxy.log() if r["method"] == "TOKEN"]
    assert [t["authorization"] for t in tokens] == [
        "Basic " + base64.b64encode(f"puller:{password}".encode()).decode()
    ]
    logged = daemon.logged()
    assert f"pulling {reference}" in logged, "the daemon fetched the image itself"
    assert "/contentd.services.transfer.v1.Transfer/Pull OK" in logged
    assert password not in logged
    assert base64.b64encode(f"puller:{password}".encode()).decode() not in logged
    assert str(credentials) not in logged, "the daemon is sent no file names"


def test_canceling_the_call_mid_layer_cancels_the_daemons_download_and_the_next_pull_resumes(
    proxy: RegistryProxy,
    daemon: DaemonProcess,
    channel: grpc.Channel,
    store: LocalStore,
    image: Image,
) -> None:
    big = image.layers[1]
    # The registry sends 2 MiB of the layer, then holds the rest back until told otherwise.
    proxy.configure(stall={big.digest: 2 * MiB})
    reference = f"{proxy.host}/{APP}:v1"
    pid = daemon.process.pid
    threads_before, sockets_before = threads(pid), sockets(pid)
    call = start_pull(channel, reference)
    wait_for_progress(call, big.digest)
    assert threads(pid) > threads_before

    call.cancel()  # type: ignore[attr-defined]  # a grpc call is also its iterator
    wait_for_release(store, f"layer-{big.digest}")
    wait_for_threads(pid, threads_before)

    assert sockets(pid) == sockets_before, "its downloads are closed"
    with RemoteStore(daemon.address) as remote:
        kept = store.status(f"layer-{big.digest}").offset
        assert kept > 0
        with pytest.raises(NotFound):
            store.images.get(reference)
        proxy.configure()
        events: list[TransferEvent] = []
        pull(remote, reference, plain_http=True, on_event=events.append)

    assert [g["range"] for g in proxy.gets(big.digest)] == ["", f"bytes={kept}-"]
    assert [e.offset for e in events if e.kind == "started" and e.digest == big.digest] == [kept]
    with store.reader_at(big.digest) as reader:
        assert reader.read() == big.data


def test_the_daemon_sends_only_the_events_its_caller_asks_for(
    proxy: RegistryProxy, image: Image, tmp_path: Path
) -> None:
    reference = f"{proxy.host}/{APP}:v1"
    request = transfer_pb2.PullRequest
    told: dict[int, list[tuple[str, str]]] = {}
    for events in (request.ALL, request.STEPS, request.LAST):
        # A store each, so each pull fetches every blob.
        daemon = start_daemon(tmp_path / f"store-{events}")
        try:
            with grpc.insecure_channel(daemon.address) as channel:
                told[events] = [
                    (e.kind, e.digest) for e in start_pull(channel, reference, events=events)
                ]
        finally:
            daemon.stop()

    resolved = [("resolved", image.manifest.digest)]
    steps = [(kind, blob.digest) for blob in image.blobs for kind in ("started", "done")]
    recorded = [("recorded", image.manifest.digest)]
    every = told[request.ALL]
    assert {("progress", blob.digest) for blob in image.blobs} <= set(every)
    assert sorted(e for e in every if e[0] != "progress") == sorted([*resolved, *steps, *recorded])
    assert sorted(told[request.STEPS]) == sorted([*resolved, *steps, *recorded])
    assert told[request.LAST] == recorded


def test_a_caller_that_hears_no_progress_is_told_the_steps(
    proxy: RegistryProxy, daemon: DaemonProcess, image: Image
) -> None:
    events: list[TransferEvent] = []
    with RemoteStore(daemon.address) as remote:
        pull(
            remote,
            f"{proxy.host}/{APP}:v1",
            plain_http=True,
            on_event=events.append,
            progress=False,
        )

    kinds = {(e.kind, e.digest) for e in events}
    assert {("started", b.digest) for b in image.blobs} <= kinds
    assert {("done", b.digest) for b in image.blobs} <= kinds
    assert [e for e in events if e.kind == "progress"] == []
    assert "/contentd.services.transfer.v1.Transfer/Pull OK" in daemon.logged()


def test_a_pull_past_the_daemons_transfer_limit_is_refused_at_once(
    proxy: RegistryProxy, image: Image, tmp_path: Path
) -> None:
    big = image.layers[1]
    proxy.configure(stall={big.digest: MiB})
    reference = f"{proxy.host}/{APP}:v1"
    daemon = start_daemon(tmp_path / "store", "--max-transfers", "1")
    try:
        with grpc.insecure_channel(daemon.address) as channel:
            first = start_pull(channel, reference)  # this one fills the daemon
            wait_for_progress(first, big.digest)

            with RemoteStore(daemon.address) as remote, pytest.raises(ResourceExhausted) as refused:
                pull(remote, reference, plain_http=True)

            first.cancel()  # type: ignore[attr-defined]
    finally:
        daemon.stop()
    assert refused.value.reason == TOO_MANY_TRANSFERS
    assert refused.value.metadata == {"limit": "1"}
    assert "1 transfers in progress, the daemon's limit" in str(refused.value)


def test_a_pull_through_containerd_is_fetched_by_the_client(
    docker_registry: Source, image: Image, tmp_path: Path
) -> None:
    require_tool("containerd", "containerd")
    reference = docker_registry.ref(APP)
    with start_containerd(tmp_path / "containerd", collect=False) as containerd:
        result = subprocess.run(
            [*contentd_command(), "--address", containerd.address, "-n", "fallback",
             "pull", "--plain-http", reference],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{reference}@{image.manifest.digest}\n"
        with RemoteStore(containerd.address, "fallback") as remote:
            assert remote.images.get(reference).target.digest == image.manifest.digest
            assert {info.digest for info in remote.walk()} == {b.digest for b in image.blobs}


def test_fetch_locally_writes_through_the_daemon_and_skips_its_transfer_service(
    docker_registry: Source, daemon: DaemonProcess, store: LocalStore, image: Image
) -> None:
    reference = docker_registry.ref(APP)

    result = run_cli(daemon, "default", "pull", "--plain-http", "--fetch-locally", reference)

    assert result.stdout == f"{reference}@{image.manifest.digest}\n"
    assert stored(store) == {blob.digest: blob.data for blob in image.blobs}
    logged = daemon.logged()
    assert "/containerd.services.content.v1.Content/Write OK" in logged
    assert "Transfer/Pull" not in logged


def test_a_daemon_without_transfers_serves_none_and_its_clients_fetch_themselves(
    docker_registry: Source, image: Image, tmp_path: Path
) -> None:
    reference = docker_registry.ref(APP)
    daemon = start_daemon(tmp_path / "store", "--max-transfers", "0", "--log-level", "debug")
    try:
        with grpc.insecure_channel(daemon.address) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                next(start_pull(channel, reference))
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED

        result = run_cli(daemon, "default", "pull", "--plain-http", reference)

        assert result.stdout == f"{reference}@{image.manifest.digest}\n"
        with RemoteStore(daemon.address) as remote:
            assert {info.digest for info in remote.walk()} == {b.digest for b in image.blobs}
    finally:
        daemon.stop()
    assert "/containerd.services.content.v1.Content/Write OK" in daemon.logged()

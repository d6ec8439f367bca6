"""`contentd pull` and `contentd.client.pull` against real registries on loopback.

The registries are Debian's docker-registry 2.8 and contentd's own HTTP face, filled by
skopeo from OCI layouts the tests build (tests/support/oci_layout.py). What a pull stores is
compared byte for byte with what `skopeo copy` puts in an OCI layout, and its labels with
what `ctr content fetch` (containerd's own fetch code) records. Misbehaviour (throttled,
failing, corrupt or token-guarded answers) comes from a proxy in a process of its own
(tests/support/registry_proxy.py), which also logs every request, so the tests can count
GETs and see Range requests. The registries and helpers are shared with the push tests
(tests/support/image_registries.py). What a pull must do whichever way it goes runs on each
`route`: daemonless, and through a daemon that fetches the image itself (tests/test_transfer.py
has the daemon's side of it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import bcrypt
import pytest
from support.ctr import Ctr
from support.daemon import DaemonProcess, contentd_command, start_daemon
from support.image_registries import (
    APP,
    MULTI,
    Route,
    Source,
    auth_file,
    run_cli,
    skopeo_copy,
    sockets,
    stored,
    threads,
    wait_for_release,
    wait_for_threads,
)
from support.oci_layout import Image, ImageIndex, Layout, MiB
from support.registry_proxy import RegistryProxy
from support.skopeo import Skopeo
from support.tools import require_tool

from contentd.client import RemoteStore, TransferEvent, pull
from contentd.content import LocalStore, open_store
from contentd.errdefs import DataLoss, NotFound, Unauthenticated, Unavailable, Unknown

pytestmark = [pytest.mark.conformance, pytest.mark.slow]

GC = "containerd.io/gc.ref.content"


def manifest_labels(image: Image) -> dict[str, str]:
    """The labels containerd's fetch puts on `image`'s manifest for its children."""
    labels = {f"{GC}.config": image.config.digest}
    labels |= {f"{GC}.l.{n}": layer.digest for n, layer in enumerate(image.layers)}
    return labels


def gc_labels(labels: dict[str, str] | object) -> dict[str, str]:
    assert isinstance(labels, dict)
    return {key: value for key, value in labels.items() if key.startswith(GC)}


def assert_collection_keeps_everything(store: LocalStore) -> None:
    before = {info.digest for info in store.walk()}
    report = store.collect()
    assert (report.content, report.blobs) == (0, 0)
    assert {info.digest for info in store.walk()} == before
    assert store.leases.list() == [], "the pull's lease is deleted once the image is recorded"


# What a pull stores


def test_pulls_a_multi_layer_image_as_skopeo_copies_it(
    source: Source, store: LocalStore, skopeo: Skopeo, image: Image, tmp_path: Path
) -> None:
    recorded = pull(store, source.ref(APP), plain_http=True)

    assert stored(store) == skopeo_copy(skopeo, source.ref(APP), tmp_path / "skopeo")
    assert recorded.name == source.ref(APP)
    assert recorded.target.digest == image.manifest.digest
    assert recorded.target.size == image.manifest.size
    assert store.images.get(source.ref(APP)).target == recorded.target
    assert gc_labels(store.info(image.manifest.digest).labels) == manifest_labels(image)
    source_label = "containerd.io/distribution.source.127.0.0.1"
    assert all(info.labels[source_label] == APP for info in store.walk())
    assert_collection_keeps_everything(store)


def test_pulls_the_platform_asked_for_from_an_index(
    source: Source, store: LocalStore, skopeo: Skopeo, index: ImageIndex, tmp_path: Path
) -> None:
    arm64 = next(i for i in index.images if i.architecture == "arm64")

    recorded = pull(store, source.ref(MULTI), plain_http=True, platform="linux/arm64")

    copied = skopeo_copy(skopeo, source.ref(MULTI), tmp_path / "skopeo", "--override-arch", "arm64")
    pulled = stored(store)
    assert pulled == {blob.digest: blob.data for blob in (index.index, *arm64.blobs)}
    assert {digest: pulled[digest] for digest in copied} == copied
    assert recorded.target.digest == index.index.digest
    # containerd labels an index with every manifest it names, fetched or not.
    assert gc_labels(store.info(index.index.digest).labels) == {
        f"{GC}.m.{n}": image.manifest.digest for n, image in enumerate(index.images)
    }
    assert gc_labels(store.info(arm64.manifest.digest).labels) == manifest_labels(arm64)
    assert_collection_keeps_everything(store)


def test_pulls_every_platform_of_an_index_with_all_platforms(
    source: Source, store: LocalStore, skopeo: Skopeo, index: ImageIndex, tmp_path: Path
) -> None:
    pull(store, source.ref(MULTI), plain_http=True, all_platforms=True)

    assert stored(store) == skopeo_copy(skopeo, source.ref(MULTI), tmp_path / "skopeo", "--all")
    for each in index.images:
        assert gc_labels(store.info(each.manifest.digest).labels) == manifest_labels(each)
    assert_collection_keeps_everything(store)


def test_pulls_by_digest(docker_registry: Source, store: LocalStore, image: Image) -> None:
    reference = f"{docker_registry.host}/{APP}@{image.manifest.digest}"

    recorded = pull(store, reference, plain_http=True)

    assert recorded.name == reference
    assert set(stored(store)) == {blob.digest for blob in image.blobs}


def test_labels_what_it_stores_as_ctr_content_fetch_does(
    docker_registry: Source, contentd_registry: DaemonProcess, index: ImageIndex
) -> None:
    require_tool("ctr", "containerd")
    reference = docker_registry.ref(MULTI)
    Ctr(contentd_registry.address, "by-ctr").run(
        "content", "fetch", "--plain-http", "--platform", "linux/amd64", reference
    )
    run_cli(
        contentd_registry,
        "by-contentd",
        "pull",
        "--plain-http",
        "--platform",
        "linux/amd64",
        reference,
    )

    def labels(namespace: str) -> dict[str, dict[str, str]]:
        listed = json.loads(run_cli(contentd_registry, namespace, "--json", "ls").stdout)
        return {info["digest"]: info["labels"] for info in listed}

    by_ctr = labels("by-ctr")
    assert len(by_ctr) == 1 + len(index.images[0].blobs)
    assert labels("by-contentd") == by_ctr


# The command line, through a daemon


def test_the_cli_pulls_through_a_daemon_and_prints_json_events(
    empty_daemon: DaemonProcess, docker_registry: Source, image: Image
) -> None:
    reference = docker_registry.ref(APP)

    first = run_cli(empty_daemon, "cli", "--json", "pull", "--plain-http", reference)
    again = run_cli(empty_daemon, "cli", "--json", "pull", "--plain-http", reference)

    events = [json.loads(line) for line in first.stdout.splitlines()]
    assert events[0] == {
        "event": "resolved",
        "digest": image.manifest.digest,
        "size": image.manifest.size,
        "media_type": image.manifest.media_type,
        "name": reference,
    }
    assert events[-1]["event"] == "recorded"
    done = {e["digest"]: e for e in events if e["event"] == "done"}
    assert set(done) == {blob.digest for blob in image.blobs}
    assert done[image.layers[0].digest]["ref"] == f"layer-{image.layers[0].digest}"
    assert done[image.config.digest]["ref"] == f"config-{image.config.digest}"
    skipped = [json.loads(line) for line in again.stdout.splitlines()][1:-1]
    assert {(e["event"], e.get("reason")) for e in skipped} == {("skipped", "present")}
    listed = json.loads(run_cli(empty_daemon, "cli", "--json", "images", "ls").stdout)
    assert [(i["name"], i["target"]["digest"]) for i in listed] == [
        (reference, image.manifest.digest)
    ]


def test_bytes_another_namespace_holds_are_stored_without_a_download(
    contentd_registry: DaemonProcess, image: Image
) -> None:
    # The daemon's registry holds the image in its namespace `registry`.
    reference = f"{contentd_registry.http_url.removeprefix('http://')}/{APP}:v1"

    pulled = run_cli(contentd_registry, "shared", "--json", "pull", "--plain-http", reference)

    events = [json.loads(line) for line in pulled.stdout.splitlines()]
    assert {e["digest"]: e.get("reason") for e in events if e["event"] == "skipped"} == {
        blob.digest: "stored" for blob in image.blobs
    }


def test_the_cli_prints_the_pinned_reference_and_nothing_on_stderr_in_a_pipe(
    contentd_registry: DaemonProcess, image: Image
) -> None:
    reference = f"{contentd_registry.http_url.removeprefix('http://')}/{APP}:v1"

    result = run_cli(contentd_registry, "quiet", "pull", "--plain-http", "--name", "app", reference)

    assert result.stdout == f"app@{image.manifest.digest}\n"
    assert result.stderr == ""


# Many pullers, interruptions and failures


def cli_pull(route: Route, reference: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*contentd_command(), *route.cli(), "pull", "--plain-http", *args, reference],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_eight_processes_pulling_at_once_fetch_each_blob_once(
    proxy: RegistryProxy, image: Image, tmp_path: Path, route: Route
) -> None:
    # Slow enough that the pulls overlap.
    proxy.configure(throttle={image.layers[1].digest: 4 * MiB})
    reference = f"{proxy.host}/{APP}:v1"
    pullers = [cli_pull(route, reference) for _ in range(8)]
    for puller in pullers:
        _, stderr = puller.communicate(timeout=120)
        assert puller.returncode == 0, stderr

    for blob in image.blobs:
        assert len(proxy.gets(blob.digest)) == 1, blob.digest
    with open_store(tmp_path / "store") as store:
        assert stored(store) == {blob.digest: blob.data for blob in image.blobs}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_pull_interrupted_mid_layer_resumes_from_its_offset(
    proxy: RegistryProxy, image: Image, route: Route, sig: signal.Signals
) -> None:
    big = image.layers[1]
    proxy.configure(throttle={big.digest: MiB})
    reference = f"{proxy.host}/{APP}:v1"
    puller = cli_pull(route, reference)
    with open_store(route.root) as store:
        offset = wait_for_ingest(store, f"layer-{big.digest}", MiB, puller)
        puller.send_signal(sig)
        _, stderr = puller.communicate(timeout=30)
        if sig == signal.SIGINT:
            assert puller.returncode == 130, stderr
            assert "interrupted; pull again to resume" in stderr
        # The caller gone, a daemon cancels its pull, which stops writing.
        wait_for_release(store, f"layer-{big.digest}")
        kept = store.status(f"layer-{big.digest}").offset
        assert kept >= offset
        # The interrupted pull's lease keeps its ingests from collection.
        store.collect()
        assert store.status(f"layer-{big.digest}").offset == kept

        proxy.configure()
        route.pull(store, reference, plain_http=True)

        assert [g["range"] for g in proxy.gets(big.digest)] == ["", f"bytes={kept}-"]
        with store.reader_at(big.digest) as reader:
            assert reader.read() == big.data


def wait_for_ingest(store: LocalStore, ref: str, offset: int, puller: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert puller.poll() is None, puller.communicate()
        try:
            found = store.status(ref).offset
        except NotFound:
            found = 0
        if found >= offset:
            return found
        time.sleep(0.05)
    raise AssertionError(f"ingest {ref} never reached {offset} bytes")


@pytest.mark.parametrize(("status", "error"), [(500, Unknown), (404, NotFound)], ids=["500", "404"])
def test_a_layer_the_registry_fails_fails_the_pull_fast_and_cancels_the_rest(
    proxy: RegistryProxy,
    store: LocalStore,
    image: Image,
    route: Route,
    status: int,
    error: type[Exception],
) -> None:
    big, failing = image.layers[1], image.layers[2]
    # The big layer alone would take about 30 s.
    # The failure waits for the big layer's download to begin: it has one to cancel.
    proxy.configure(
        throttle={big.digest: 100_000}, fail={failing.digest: status}, fail_after=big.digest
    )
    # Where the pull runs: this process, or the daemon (its client's channel already open).
    puller = os.getpid() if route.daemon is None else route.daemon.process.pid
    remote = None if route.daemon is None else RemoteStore(route.daemon.address)
    if remote is not None:
        # The channel connected, and the daemon's server threads started and idle again: a
        # call takes an idle one once it has gone back to waiting, else starts another.
        for _ in range(3):
            remote.images.list()
    threads_before = set(threading.enumerate())
    puller_threads = threads(puller)
    sockets_before = sockets(puller)
    started = time.monotonic()

    with pytest.raises(error) as failed:
        pull(remote or store, f"{proxy.host}/{APP}:v1", plain_http=True)

    assert time.monotonic() - started < 5
    assert f"injected failure {status}" in str(failed.value)
    assert failing.digest in str(failed.value)
    assert set(threading.enumerate()) == threads_before
    # A daemon's answer may go out as the call's server thread returns to its pool.
    wait_for_threads(puller, puller_threads)
    assert sockets(puller) == sockets_before
    if remote is not None:
        remote.close()
    assert len(proxy.gets(big.digest)) == 1, "the big layer's download had begun"
    with pytest.raises(NotFound):
        store.images.get(f"{proxy.host}/{APP}:v1")


def test_content_the_registry_corrupts_fails_with_digest_invalid_and_commits_nothing(
    proxy: RegistryProxy, store: LocalStore, image: Image
) -> None:
    bad = image.layers[0]
    proxy.configure(corrupt={bad.digest: True})

    with pytest.raises(DataLoss) as failed:
        pull(store, f"{proxy.host}/{APP}:v1", plain_http=True)

    assert failed.value.reason == "DIGEST_INVALID"
    assert bad.digest in str(failed.value)
    with pytest.raises(NotFound):
        store.info(bad.digest)
    # Its bytes are no use to resume; those of transfers it canceled are.
    assert f"layer-{bad.digest}" not in [s.ref for s in store.list_statuses()]


def test_events_report_skips_of_what_is_present(
    docker_registry: Source, store: LocalStore, image: Image
) -> None:
    pull(store, docker_registry.ref(APP), plain_http=True)
    events: list[TransferEvent] = []

    pull(store, docker_registry.ref(APP), plain_http=True, on_event=events.append)

    assert [e.kind for e in events] == ["resolved", *["skipped"] * len(image.blobs), "recorded"]


# Authorization


def test_bearer_tokens_are_fetched_with_the_auth_files_credentials_once_per_scope(
    proxy: RegistryProxy, store: LocalStore, image: Image, tmp_path: Path, route: Route
) -> None:
    proxy.configure(bearer={"user": "puller", "password": "s3cret"})
    credentials = auth_file(tmp_path / "auth.json", proxy.host, "puller", "s3cret")

    route.pull(store, f"{proxy.host}/{APP}:v1", plain_http=True, auth_file=credentials)

    log = proxy.log()
    tokens = [r for r in log if r["method"] == "TOKEN"]
    assert [t["path"] for t in tokens] == [f"repository:{APP}:pull"]
    assert tokens[0]["authorization"].startswith("Basic ")
    blob_gets = [r for r in log if r["method"] == "GET" and "/blobs/" in r["path"]]
    assert len(blob_gets) == len(image.blobs) - 1
    assert all(r["authorization"].startswith("Bearer ") for r in blob_gets)


def test_bearer_tokens_refused_to_wrong_credentials_fail_unauthenticated(
    proxy: RegistryProxy, store: LocalStore, tmp_path: Path, route: Route
) -> None:
    proxy.configure(bearer={"user": "puller", "password": "s3cret"})
    credentials = auth_file(tmp_path / "auth.json", proxy.host, "puller", "wrong")

    with pytest.raises(Unauthenticated, match="getting a token"):
        route.pull(store, f"{proxy.host}/{APP}:v1", plain_http=True, auth_file=credentials)


def test_anonymous_bearer_tokens_are_asked_for_without_credentials(
    proxy: RegistryProxy,
    store: LocalStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    route: Route,
) -> None:
    proxy.configure(bearer={})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "none.json"))
    monkeypatch.setenv("HOME", str(tmp_path))

    route.pull(store, f"{proxy.host}/{APP}:v1", plain_http=True)

    tokens = [r for r in proxy.log() if r["method"] == "TOKEN"]
    assert [t["authorization"] for t in tokens] == [""]


def test_basic_auth_comes_from_registry_auth_file(
    tmp_path: Path, skopeo: Skopeo, image_layout: Layout, image: Image, route: Route
) -> None:
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"ci:{hashed}\n")
    registry = start_daemon(
        tmp_path / "registry", "--http", "127.0.0.1:0", "--http-htpasswd", str(htpasswd)
    )
    try:
        host = registry.http_url.removeprefix("http://")
        skopeo.push(
            image_layout.reference("v1"), f"docker://{host}/{APP}:v1", "--dest-creds", "ci:pw"
        )
        reference = f"{host}/{APP}:v1"
        env = {"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path / "run")}

        refused = cli_run(route, reference, env)
        env["REGISTRY_AUTH_FILE"] = str(auth_file(tmp_path / "auth.json", host, "ci", "pw"))
        accepted = cli_run(route, reference, env)
    finally:
        registry.stop()

    assert refused.returncode == 14, refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout == f"{reference}@{image.manifest.digest}\n"


def cli_run(route: Route, reference: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*contentd_command(), *route.cli(), "pull", "--plain-http", reference],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )


# TLS


def test_a_registry_over_https_is_trusted_through_tls_ca(
    tmp_path: Path,
    skopeo: Skopeo,
    image_layout: Layout,
    image: Image,
    store: LocalStore,
    route: Route,
) -> None:
    cert, key = tmp_path / "registry.pem", tmp_path / "registry.key"
    subprocess.run(
        [
            require_tool("openssl", "openssl"), "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=registry",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-addext", "basicConstraints=critical,CA:TRUE",
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    registry = start_daemon(
        tmp_path / "registry",
        "--http", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key),
    )  # fmt: skip
    try:
        host = registry.http_url.split("://")[1]
        skopeo.push(image_layout.reference("v1"), f"docker://{host}/{APP}:v1")

        with pytest.raises(Unavailable, match="certificate"):
            route.pull(store, f"{host}/{APP}:v1")
        recorded = route.pull(store, f"{host}/{APP}:v1", tls_ca=cert)
    finally:
        registry.stop()

    assert recorded.target.digest == image.manifest.digest

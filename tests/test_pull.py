"""`contentd pull` and `contentd.client.pull` against real registries on loopback.

The registries are Debian's docker-registry 2.8 and contentd's own HTTP face, filled by
skopeo from OCI layouts the tests build (tests/support/oci_layout.py). What a pull stores is
compared byte for byte with what `skopeo copy` puts in an OCI layout, and its labels with
what `ctr content fetch` (containerd's own fetch code) records. Misbehaviour (throttled,
failing, corrupt or token-guarded answers) comes from a proxy in a process of its own
(tests/support/registry_proxy.py), which also logs every request, so the tests can count
GETs and see Range requests.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from support.ctr import Ctr
from support.daemon import DaemonProcess, contentd_command, start_daemon
from support.oci_layout import Image, ImageIndex, Layout, MiB
from support.pull_sources import APP, MULTI, Source, fill, skopeo_copy
from support.registry_proxy import RegistryProxy, start_registry_proxy
from support.skopeo import Skopeo
from support.tools import require_tool

from contentd.client import PullEvent, pull
from contentd.content import LocalStore, open_store
from contentd.errdefs import DataLoss, NotFound, Unauthenticated, Unavailable, Unknown

pytestmark = [pytest.mark.conformance, pytest.mark.slow]

GC = "containerd.io/gc.ref.content"


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory,
    skopeo: Skopeo,
    image_layout: Layout,
    index_layout: Layout,
) -> Iterator[DaemonProcess]:
    """A contentd serving gRPC, and a registry (namespace `registry`) holding the images."""
    running = start_daemon(
        tmp_path_factory.mktemp("contentd") / "root",
        "--http",
        "127.0.0.1:0",
        "--http-namespace",
        "registry",
    )
    try:
        fill(skopeo, running.http_url.removeprefix("http://"), image_layout, index_layout)
        yield running
    finally:
        running.stop()


@pytest.fixture(params=["docker-registry", "contentd"])
def source(request: pytest.FixtureRequest) -> Source:
    if request.param == "docker-registry":
        found: Source = request.getfixturevalue("docker_registry")
        return found
    running: DaemonProcess = request.getfixturevalue("daemon")
    return Source("contentd", running.http_url.removeprefix("http://"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with open_store(tmp_path / "store") as opened:
        yield opened


@pytest.fixture
def proxy(docker_registry: Source) -> Iterator[RegistryProxy]:
    running = start_registry_proxy(f"http://{docker_registry.host}")
    try:
        yield running
    finally:
        running.stop()


def stored(store: LocalStore) -> dict[str, bytes]:
    found = {}
    for info in store.walk():
        with store.reader_at(info.digest) as reader:
            found[info.digest] = reader.read()
    return found


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
    docker_registry: Source, daemon: DaemonProcess, index: ImageIndex
) -> None:
    require_tool("ctr", "containerd")
    reference = docker_registry.ref(MULTI)
    Ctr(daemon.address, "by-ctr").run(
        "content", "fetch", "--plain-http", "--platform", "linux/amd64", reference
    )
    run_cli(daemon, "by-contentd", "pull", "--plain-http", "--platform", "linux/amd64", reference)

    def labels(namespace: str) -> dict[str, dict[str, str]]:
        listed = json.loads(run_cli(daemon, namespace, "--json", "ls").stdout)
        return {info["digest"]: info["labels"] for info in listed}

    by_ctr = labels("by-ctr")
    assert len(by_ctr) == 1 + len(index.images[0].blobs)
    assert labels("by-contentd") == by_ctr


# The command line, through a daemon


def run_cli(
    daemon: DaemonProcess, namespace: str, *args: str, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*contentd_command(), "--address", daemon.address, "-n", namespace, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env},
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def empty_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    running = start_daemon(tmp_path / "daemon")
    try:
        yield running
    finally:
        running.stop()


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
    daemon: DaemonProcess, image: Image
) -> None:
    # The daemon's registry holds the image in its namespace `registry`.
    reference = f"{daemon.http_url.removeprefix('http://')}/{APP}:v1"

    pulled = run_cli(daemon, "shared", "--json", "pull", "--plain-http", reference)

    events = [json.loads(line) for line in pulled.stdout.splitlines()]
    assert {e["digest"]: e.get("reason") for e in events if e["event"] == "skipped"} == {
        blob.digest: "stored" for blob in image.blobs
    }


def test_the_cli_prints_the_pinned_reference_and_nothing_on_stderr_in_a_pipe(
    daemon: DaemonProcess, image: Image
) -> None:
    reference = f"{daemon.http_url.removeprefix('http://')}/{APP}:v1"

    result = run_cli(daemon, "quiet", "pull", "--plain-http", "--name", "app", reference)

    assert result.stdout == f"app@{image.manifest.digest}\n"
    assert result.stderr == ""


# Many pullers, interruptions and failures


def cli_pull(root: Path, reference: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*contentd_command(), "--root", str(root), "pull", "--plain-http", *args, reference],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_eight_processes_pulling_at_once_fetch_each_blob_once(
    proxy: RegistryProxy, image: Image, tmp_path: Path
) -> None:
    # Slow enough that the pulls overlap.
    proxy.configure(throttle={image.layers[1].digest: 4 * MiB})
    reference = f"{proxy.host}/{APP}:v1"
    pullers = [cli_pull(tmp_path / "store", reference) for _ in range(8)]
    for puller in pullers:
        _, stderr = puller.communicate(timeout=120)
        assert puller.returncode == 0, stderr

    for blob in image.blobs:
        assert len(proxy.gets(blob.digest)) == 1, blob.digest
    with open_store(tmp_path / "store") as store:
        assert stored(store) == {blob.digest: blob.data for blob in image.blobs}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_pull_interrupted_mid_layer_resumes_from_its_offset(
    proxy: RegistryProxy, image: Image, tmp_path: Path, sig: signal.Signals
) -> None:
    big = image.layers[1]
    proxy.configure(throttle={big.digest: MiB})
    reference = f"{proxy.host}/{APP}:v1"
    puller = cli_pull(tmp_path / "store", reference)
    with open_store(tmp_path / "store") as store:
        offset = wait_for_ingest(store, f"layer-{big.digest}", MiB, puller)
        puller.send_signal(sig)
        _, stderr = puller.communicate(timeout=30)
        if sig == signal.SIGINT:
            assert puller.returncode == 130, stderr
            assert "interrupted; pull again to resume" in stderr
        kept = store.status(f"layer-{big.digest}").offset
        assert kept >= offset
        # The interrupted pull's lease keeps its ingests from collection.
        store.collect()
        assert store.status(f"layer-{big.digest}").offset == kept

        proxy.configure()
        pull(store, reference, plain_http=True)

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


def sockets() -> int:
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


@pytest.mark.parametrize(("status", "error"), [(500, Unknown), (404, NotFound)], ids=["500", "404"])
def test_a_layer_the_registry_fails_fails_the_pull_fast_and_cancels_the_rest(
    proxy: RegistryProxy,
    store: LocalStore,
    image: Image,
    status: int,
    error: type[Exception],
) -> None:
    big, failing = image.layers[1], image.layers[2]
    # The big layer alone would take about 30 s.
    # The failure waits for the big layer's download to begin: it has one to cancel.
    proxy.configure(
        throttle={big.digest: 100_000}, fail={failing.digest: status}, fail_after=big.digest
    )
    threads_before = set(threading.enumerate())
    sockets_before = sockets()
    started = time.monotonic()

    with pytest.raises(error) as failed:
        pull(store, f"{proxy.host}/{APP}:v1", plain_http=True)

    assert time.monotonic() - started < 5
    assert f"injected failure {status}" in str(failed.value)
    assert failing.digest in str(failed.value)
    assert set(threading.enumerate()) == threads_before
    assert sockets() == sockets_before
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
    events: list[PullEvent] = []

    pull(store, docker_registry.ref(APP), plain_http=True, on_event=events.append)

    assert [e.kind for e in events] == ["resolved", *["skipped"] * len(image.blobs), "recorded"]


# Authorization


def auth_file(path: Path, host: str, user: str, password: str) -> Path:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": encoded}}}))
    return path


def test_bearer_tokens_are_fetched_with_the_auth_files_credentials_once_per_scope(
    proxy: RegistryProxy, store: LocalStore, image: Image, tmp_path: Path
) -> None:
    proxy.configure(bearer={"user": "puller", "password": "s3cret"})
    credentials = auth_file(tmp_path / "auth.json", proxy.host, "puller", "s3cret")

    pull(store, f"{proxy.host}/{APP}:v1", plain_http=True, auth_file=credentials)

    log = proxy.log()
    tokens = [r for r in log if r["method"] == "TOKEN"]
    assert [t["path"] for t in tokens] == [f"repository:{APP}:pull"]
    assert tokens[0]["authorization"].startswith("Basic ")
    blob_gets = [r for r in log if r["method"] == "GET" and "/blobs/" in r["path"]]
    assert len(blob_gets) == len(image.blobs) - 1
    assert all(r["authorization"].startswith("Bearer ") for r in blob_gets)


def test_bearer_tokens_refused_to_wrong_credentials_fail_unauthenticated(
    proxy: RegistryProxy, store: LocalStore, tmp_path: Path
) -> None:
    proxy.configure(bearer={"user": "puller", "password": "s3cret"})
    credentials = auth_file(tmp_path / "auth.json", proxy.host, "puller", "wrong")

    with pytest.raises(Unauthenticated, match="getting a token"):
        pull(store, f"{proxy.host}/{APP}:v1", plain_http=True, auth_file=credentials)


def test_anonymous_bearer_tokens_are_asked_for_without_credentials(
    proxy: RegistryProxy, store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy.configure(bearer={})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "none.json"))
    monkeypatch.setenv("HOME", str(tmp_path))

    pull(store, f"{proxy.host}/{APP}:v1", plain_http=True)

    tokens = [r for r in proxy.log() if r["method"] == "TOKEN"]
    assert [t["authorization"] for t in tokens] == [""]


def test_basic_auth_comes_from_registry_auth_file(
    tmp_path: Path, skopeo: Skopeo, image_layout: Layout, image: Image
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

        refused = cli_run(tmp_path / "store", reference, env)
        env["REGISTRY_AUTH_FILE"] = str(auth_file(tmp_path / "auth.json", host, "ci", "pw"))
        accepted = cli_run(tmp_path / "store", reference, env)
    finally:
        registry.stop()

    assert refused.returncode == 14, refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout == f"{reference}@{image.manifest.digest}\n"


def cli_run(root: Path, reference: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*contentd_command(), "--root", str(root), "pull", "--plain-http", reference],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )


# TLS


def test_a_registry_over_https_is_trusted_through_tls_ca(
    tmp_path: Path, skopeo: Skopeo, image_layout: Layout, image: Image, store: LocalStore
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
            pull(store, f"{host}/{APP}:v1")
        recorded = pull(store, f"{host}/{APP}:v1", tls_ca=cert)
    finally:
        registry.stop()

    assert recorded.target.digest == image.manifest.digest

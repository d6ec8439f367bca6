"""The registry face as a pull-through mirror: `contentd serve --http ... --http-upstream URL`.

The upstream is Debian's docker-registry 2.8 on loopback, filled by skopeo, behind the
counting proxy of tests/support/registry_proxy.py, which logs every GET by digest and can
hold a body mid-way (`stall`) or corrupt it; the mirror is a real daemon whose upstream is
that proxy. Its clients are skopeo, as users run it, and plain HTTP requests where a test
must read a body a piece at a time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support.daemon import DaemonProcess, contentd_command, remote, start_daemon
from support.docker_registry import start_docker_registry
from support.image_registries import APP, MULTI, Source, fill, skopeo_copy
from support.oci_layout import Blob, Image, ImageIndex, Layout
from support.registry_proxy import RegistryProxy, start_registry_proxy
from support.skopeo import Skopeo

from contentd.client import pull
from contentd.content import LocalStore, open_store
from contentd.errdefs import NotFound

pytestmark = [pytest.mark.conformance, pytest.mark.slow]

#: Bytes of a stalled body the upstream sends before it holds the rest back.
STALL_AT = 256 * 1024
#: Bytes a client reads of a blob while the upstream holds the rest back.
FIRST_BYTES = 64 * 1024
#: How long a test waits for something a daemon does in the background (not a timing check).
PATIENCE = 60.0


def start_mirror(root: Path, upstream: str) -> DaemonProcess:
    return start_daemon(root, "--http", "127.0.0.1:0", "--http-upstream", upstream)


@pytest.fixture
def mirror(tmp_path: Path, proxy: RegistryProxy) -> Iterator[DaemonProcess]:
    running = start_mirror(tmp_path / "mirror", proxy.url)
    try:
        yield running
    finally:
        running.stop()


def host_of(daemon: DaemonProcess) -> str:
    return daemon.http_url.removeprefix("http://")


def largest_layer(image: Image) -> Blob:
    return max(image.layers, key=lambda layer: layer.size)


def connect(daemon: DaemonProcess) -> http.client.HTTPConnection:
    url = urlsplit(daemon.http_url)
    return http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=PATIENCE)


def open_blob(
    daemon: DaemonProcess, digest: str, repository: str = APP
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A GET of blob `digest` through the mirror, its answer's body not read yet."""
    connection = connect(daemon)
    connection.request("GET", f"/v2/{repository}/blobs/{digest}")
    return connection, connection.getresponse()


def request(daemon: DaemonProcess, method: str, path: str) -> tuple[int, bytes]:
    connection = connect(daemon)
    try:
        connection.request(method, path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def error_codes(body: bytes) -> list[str]:
    return [error["code"] for error in json.loads(body)["errors"]]


def wait_for(condition: object, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.02)


def stored_blobs(store: LocalStore) -> dict[str, bytes]:
    found = {}
    for info in store.walk():
        with store.reader_at(info.digest) as reader:
            found[info.digest] = reader.read()
    return found


def stored_digests(daemon: DaemonProcess) -> set[str]:
    with remote(daemon) as store:
        return {info.digest for info in store.walk()}


# Single flight, and serving while the blob streams in


def test_two_skopeo_copies_at_once_fetch_each_blob_once_and_match_a_direct_copy(
    mirror: DaemonProcess,
    proxy: RegistryProxy,
    docker_registry: Source,
    skopeo: Skopeo,
    image: Image,
    tmp_path: Path,
) -> None:
    # Slow enough that the second copy asks while the first one's fetches are under way.
    proxy.configure(throttle={blob.digest: 4 << 20 for blob in image.blobs})
    reference = f"{host_of(mirror)}/{APP}:v1"
    copies: dict[str, dict[str, bytes]] = {}
    failures: list[BaseException] = []

    def copy(name: str) -> None:
        try:
            copies[name] = skopeo_copy(skopeo, reference, tmp_path / name)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=copy, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    direct = skopeo_copy(skopeo, docker_registry.ref(APP), tmp_path / "direct")
    assert copies["first"] == direct
    assert copies["second"] == direct
    assert {blob.digest: len(proxy.gets(blob.digest)) for blob in image.blobs} == {
        blob.digest: 1 for blob in image.blobs
    }
    assert stored_digests(mirror) == {blob.digest for blob in image.blobs}


def test_clients_get_a_blobs_first_bytes_before_its_upstream_fetch_completes(
    mirror: DaemonProcess, proxy: RegistryProxy, image: Image
) -> None:
    layer = largest_layer(image)
    proxy.configure(stall={layer.digest: STALL_AT})
    first, first_answer = open_blob(mirror, layer.digest)
    second, second_answer = open_blob(mirror, layer.digest)
    try:
        # The upstream holds back all but its first bytes: what both clients have came
        # through the mirror as it streamed in, the second client joining the first's fetch.
        assert first_answer.status == second_answer.status == 200
        assert first_answer.getheader("Content-Length") == str(layer.size)
        assert first_answer.read(FIRST_BYTES) == layer.data[:FIRST_BYTES]
        assert second_answer.read(FIRST_BYTES) == layer.data[:FIRST_BYTES]
        with remote(mirror) as store:
            with pytest.raises(NotFound):
                store.info(layer.digest)
            assert [s.ref for s in store.list_statuses()] == [f"mirror-{layer.digest}"]

        proxy.configure()

        assert FIRST_BYTES + len(first_answer.read()) == layer.size
        assert layer.data[:FIRST_BYTES] + second_answer.read() == layer.data
    finally:
        first.close()
        second.close()
    assert len(proxy.gets(layer.digest)) == 1
    with remote(mirror) as store:
        assert store.info(layer.digest).size == layer.size
        assert store.list_statuses() == []


def test_a_client_going_away_mid_blob_does_not_stop_its_fetch(
    mirror: DaemonProcess, proxy: RegistryProxy, image: Image
) -> None:
    layer = largest_layer(image)
    proxy.configure(stall={layer.digest: STALL_AT})
    connection, answer = open_blob(mirror, layer.digest)
    assert answer.read(FIRST_BYTES) == layer.data[:FIRST_BYTES]
    connection.close()

    proxy.configure()

    wait_for(lambda: layer.digest in stored_digests(mirror), "the blob to be stored")
    connection, answer = open_blob(mirror, layer.digest)
    try:
        assert answer.read() == layer.data
    finally:
        connection.close()
    assert len(proxy.gets(layer.digest)) == 1


def test_daemons_sharing_a_store_fetch_a_blob_once(
    tmp_path: Path, proxy: RegistryProxy, image: Image
) -> None:
    layer = largest_layer(image)
    proxy.configure(stall={layer.digest: STALL_AT})
    root = tmp_path / "shared"
    first = start_mirror(root, proxy.url)
    try:
        second = start_mirror(root, proxy.url)
        try:
            connection, answer = open_blob(first, layer.digest)
            assert answer.read(FIRST_BYTES) == layer.data[:FIRST_BYTES]
            waited: dict[str, bytes] = {}

            def through_second() -> None:
                other, other_answer = open_blob(second, layer.digest)
                try:
                    waited["body"] = other_answer.read()
                finally:
                    other.close()

            thread = threading.Thread(target=through_second)
            thread.start()
            # Each daemon's fetch holds a lease: the second's is taken once it waits for
            # the first's writer, whose ref it cannot have.
            with remote(first) as store:
                wait_for(lambda: len(store.leases.list()) == 2, "the second daemon's fetch")
            proxy.configure()
            assert FIRST_BYTES + len(answer.read()) == layer.size
            connection.close()
            thread.join()
            assert waited["body"] == layer.data
        finally:
            second.stop()
    finally:
        first.stop()
    assert len(proxy.gets(layer.digest)) == 1


def test_contentd_pull_through_the_mirror_stores_what_a_direct_pull_does(
    mirror: DaemonProcess, docker_registry: Source, tmp_path: Path
) -> None:
    with open_store(tmp_path / "through") as through, open_store(tmp_path / "direct") as direct:
        pulled = pull(through, f"{host_of(mirror)}/{MULTI}:v1", plain_http=True)
        pull(direct, docker_registry.ref(MULTI), plain_http=True)

        assert stored_blobs(through) == stored_blobs(direct)
        assert pulled.target == direct.images.get(docker_registry.ref(MULTI)).target


# Upstream failures


def test_a_corrupt_upstream_blob_is_never_kept_and_its_client_gets_no_whole_blob(
    mirror: DaemonProcess, proxy: RegistryProxy, image: Image
) -> None:
    layer = largest_layer(image)
    proxy.configure(corrupt={layer.digest: True})
    connection, answer = open_blob(mirror, layer.digest)
    try:
        with pytest.raises(http.client.IncompleteRead) as cut:
            answer.read()
        assert len(cut.value.partial) < layer.size
    finally:
        connection.close()
    wait_for(lambda: "does not match its digest" in mirror.logged(), "the failure to be logged")
    with remote(mirror) as store:
        assert layer.digest not in {info.digest for info in store.walk()}
        assert store.list_statuses() == []
        assert store.leases.list() == []

    proxy.configure()

    connection, answer = open_blob(mirror, layer.digest)
    try:
        assert answer.read() == layer.data
    finally:
        connection.close()


def test_with_the_upstream_stopped_what_the_mirror_holds_still_pulls(
    tmp_path: Path,
    skopeo: Skopeo,
    image_layout: Layout,
    index_layout: Layout,
    image: Image,
    index: ImageIndex,
) -> None:
    with contextlib.ExitStack() as running:
        # An upstream of its own, since this test stops it.
        registry = start_docker_registry(tmp_path / "registry")
        running.callback(registry.stop)
        fill(skopeo, registry.url.removeprefix("http://"), image_layout, index_layout)
        proxy = start_registry_proxy(registry.url)
        running.callback(proxy.stop)
        daemon = start_mirror(tmp_path / "mirror", proxy.url)
        running.callback(daemon.stop)
        by_tag = f"{host_of(daemon)}/{APP}:v1"
        by_digest = f"{host_of(daemon)}/{APP}@{image.manifest.digest}"
        before = skopeo_copy(skopeo, by_tag, tmp_path / "before")

        proxy.stop()
        registry.stop()

        assert before == {blob.digest: blob.data for blob in image.blobs}
        assert skopeo_copy(skopeo, by_tag, tmp_path / "by-tag") == before
        assert skopeo_copy(skopeo, by_digest, tmp_path / "by-digest") == before
        # What it never fetched: a clear UNAVAILABLE, not an internal error.
        failed = skopeo.fails(
            "copy",
            "--src-tls-verify=false",
            f"docker://{host_of(daemon)}/{MULTI}:v1",
            f"oci:{tmp_path / 'multi'}:v1",
        )
        assert "unavailable" in failed.stderr.lower()
        config = index.images[0].config.digest
        status, body = request(daemon, "GET", f"/v2/{MULTI}/blobs/{config}")
        assert (status, error_codes(body)) == (503, ["UNAVAILABLE"])
        status, body = request(daemon, "GET", f"/v2/{MULTI}/manifests/v1")
        assert (status, error_codes(body)) == (503, ["UNAVAILABLE"])
        assert "Traceback" not in daemon.logged()


def test_what_is_not_upstream_is_unknown(mirror: DaemonProcess, image: Image) -> None:
    status, body = request(mirror, "GET", f"/v2/{APP}/manifests/v9")
    assert (status, error_codes(body)) == (404, ["MANIFEST_UNKNOWN"])
    missing = "sha256:" + "0" * 64
    status, body = request(mirror, "GET", f"/v2/{APP}/blobs/{missing}")
    assert (status, error_codes(body)) == (404, ["BLOB_UNKNOWN"])
    status, _ = request(mirror, "HEAD", f"/v2/{APP}/blobs/{missing}")
    assert status == 404


# What the mirror keeps, and refuses


def test_what_the_mirror_fetched_survives_garbage_collection(
    mirror: DaemonProcess, skopeo: Skopeo, index: ImageIndex, tmp_path: Path
) -> None:
    copied = skopeo_copy(skopeo, f"{host_of(mirror)}/{MULTI}:v1", tmp_path / "copy", "--all")

    with remote(mirror) as store:
        report = store.collect()
        assert (report.content, report.blobs) == (0, 0)
        assert store.leases.list() == []
        assert {info.digest for info in store.walk()} == set(copied)
        assert set(copied) == {blob.digest for blob in index.blobs}


def test_pushes_and_deletes_are_unsupported(
    mirror: DaemonProcess, skopeo: Skopeo, image_layout: Layout, image: Image
) -> None:
    failed = skopeo.fails(
        "copy",
        "--dest-tls-verify=false",
        image_layout.reference("v1"),
        f"docker://{host_of(mirror)}/pushed:v1",
    )
    assert "unsupported" in failed.stderr.lower()
    for method, path in (
        ("POST", f"/v2/{APP}/blobs/uploads/"),
        ("PUT", f"/v2/{APP}/manifests/v1"),
        ("DELETE", f"/v2/{APP}/manifests/{image.manifest.digest}"),
        ("DELETE", f"/v2/{APP}/blobs/{image.config.digest}"),
    ):
        status, body = request(mirror, method, path)
        assert (status, error_codes(body)) == (405, ["UNSUPPORTED"]), (method, path)


def test_a_tag_moved_upstream_is_followed(
    mirror: DaemonProcess,
    docker_registry: Source,
    skopeo: Skopeo,
    image_layout: Layout,
    index_layout: Layout,
    image: Image,
    index: ImageIndex,
) -> None:
    upstream = f"docker://{docker_registry.host}/{APP}:moving"
    skopeo.push(image_layout.reference("v1"), upstream)
    status, _ = request(mirror, "GET", f"/v2/{APP}/manifests/moving")
    assert status == 200

    skopeo.push(index_layout.reference("v1"), upstream, "--all")

    connection = connect(mirror)
    try:
        connection.request("GET", f"/v2/{APP}/manifests/moving")
        answer = connection.getresponse()
        assert answer.read() == index.index.data
        assert answer.getheader("Docker-Content-Digest") == index.index.digest
    finally:
        connection.close()
    assert image.manifest.digest in stored_digests(mirror)


def test_serve_refuses_an_upstream_without_http_or_with_a_path(tmp_path: Path) -> None:
    auth_file = tmp_path / "auth.json"
    auth_file.write_text('{"auths": {}}')
    for flags, said in (
        (["--http-upstream", "https://registry.example"], "--http-upstream needs --http"),
        (
            ["--http", "127.0.0.1:0", "--http-upstream", "https://registry.example/v2"],
            "without path",
        ),
        (["--http", "127.0.0.1:0", "--http-upstream", "ftp://registry.example"], "https://"),
        (
            ["--http", "127.0.0.1:0", "--http-upstream-auth-file", str(auth_file)],
            "needs --http-upstream",
        ),
    ):
        run = subprocess.run(
            [*contentd_command(), "serve", "--root", str(tmp_path / "root"), *flags],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 2, run.stderr
        assert said in run.stderr

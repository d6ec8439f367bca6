"""`contentd push` and `contentd.client.push` against real registries on loopback.

Images are pulled from Debian's docker-registry 2.8 or contentd's own HTTP face (filled by
skopeo, tests/support/image_registries.py) into a store, pushed to the other kind, and what
`skopeo copy` then takes from the destination is compared byte for byte with what it takes
from the source. A proxy in a process of its own (tests/support/registry_proxy.py) logs
every request, so the tests see what a push sends (HEADs, mounts, uploads, tokens), and
throttles or fails uploads as a test asks.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, start_daemon
from support.docker_registry import DOCKER_REGISTRY, start_docker_registry
from support.image_registries import (
    APP,
    MULTI,
    Source,
    auth_file,
    proxied,
    run_cli,
    skopeo_copy,
    sockets,
)
from support.oci_layout import Image, ImageIndex
from support.registry_proxy import RegistryProxy
from support.skopeo import Skopeo
from support.tools import require_tool

from contentd.client import TransferEvent, pull, push
from contentd.content import LocalStore
from contentd.errdefs import InvalidArgument, NotFound, Unknown

pytestmark = [pytest.mark.conformance, pytest.mark.slow]

SOURCE_LABEL = "containerd.io/distribution.source.127.0.0.1"


@pytest.fixture
def fresh_docker_registry(tmp_path: Path) -> Iterator[str]:
    """An empty docker-registry; its host."""
    require_tool(DOCKER_REGISTRY, "docker-registry")
    running = start_docker_registry(tmp_path / "fresh-registry")
    try:
        yield running.url.removeprefix("http://")
    finally:
        running.stop()


@pytest.fixture
def fresh_contentd_registry(tmp_path: Path) -> Iterator[str]:
    """An empty contentd registry face; its host."""
    running = start_daemon(tmp_path / "fresh-contentd", "--http", "127.0.0.1:0")
    try:
        yield running.http_url.removeprefix("http://")
    finally:
        running.stop()


@pytest.fixture
def fresh_proxy(fresh_docker_registry: str) -> Iterator[RegistryProxy]:
    """A logging proxy before an empty docker-registry."""
    with proxied(fresh_docker_registry) as running:
        yield running


def since(proxy: RegistryProxy, start: int) -> list[dict[str, str]]:
    return proxy.log()[start:]


def blob_uploads(log: list[dict[str, str]]) -> list[dict[str, str]]:
    """The requests that carry a blob's bytes (or start carrying them)."""
    return [r for r in log if r["method"] in ("PATCH", "PUT") and "/blobs/uploads/" in r["path"]]


# What a push sends


@pytest.mark.parametrize("repository", [APP, MULTI], ids=["image", "index"])
@pytest.mark.parametrize("destination", ["contentd", "docker-registry"])
def test_pushes_what_it_pulled_to_the_other_registry_as_skopeo_copies_it(
    request: pytest.FixtureRequest,
    destination: str,
    repository: str,
    store: LocalStore,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    if destination == "contentd":
        origin: Source = request.getfixturevalue("docker_registry")
        host: str = request.getfixturevalue("fresh_contentd_registry")
    else:
        running: DaemonProcess = request.getfixturevalue("contentd_registry")
        origin = Source("contentd", running.http_url.removeprefix("http://"))
        host = request.getfixturevalue("fresh_docker_registry")
    pulled = pull(store, origin.ref(repository), plain_http=True, all_platforms=True)
    reference = f"{host}/{repository}:v1"

    pushed = push(store, reference, source=origin.ref(repository), plain_http=True)

    assert pushed == pulled.target
    everything = ["--all"] if repository == MULTI else []
    from_source = skopeo_copy(skopeo, origin.ref(repository), tmp_path / "source", *everything)
    assert skopeo_copy(skopeo, reference, tmp_path / "pushed", *everything) == from_source
    assert all(
        set(info.labels[SOURCE_LABEL].split(",")) == {repository} for info in store.walk()
    ), "pushed to the same repository name: one source, as containerd merges them"


def test_a_second_push_asks_with_heads_and_uploads_nothing(
    docker_registry: Source, fresh_proxy: RegistryProxy, store: LocalStore, image: Image
) -> None:
    pull(store, docker_registry.ref(APP), plain_http=True)
    reference = f"{fresh_proxy.host}/{APP}:v1"
    push(store, reference, source=docker_registry.ref(APP), plain_http=True)
    start = len(fresh_proxy.log())
    events: list[TransferEvent] = []

    push(store, reference, source=docker_registry.ref(APP), plain_http=True, on_event=events.append)

    log = since(fresh_proxy, start)
    assert [r["method"] for r in log] == ["HEAD"] * len(image.blobs)
    assert {r["path"].rsplit("/", 1)[1] for r in log} == {
        *(blob.digest for blob in (image.config, *image.layers)),
        "v1",
    }
    assert {(e.kind, e.reason) for e in events[1:-1]} == {("skipped", "exists")}
    assert (events[0].kind, events[-1].kind) == ("resolved", "pushed")


def test_blobs_in_another_repository_of_the_registry_are_mounted_not_uploaded(
    proxy: RegistryProxy, store: LocalStore, skopeo: Skopeo, image: Image, tmp_path: Path
) -> None:
    pulled = pull(store, f"{proxy.host}/{APP}:v1", plain_http=True)
    start = len(proxy.log())
    reference = f"{proxy.host}/team/mounted:v1"
    events: list[TransferEvent] = []

    push(store, reference, source=pulled.name, plain_http=True, on_event=events.append)

    log = since(proxy, start)
    mounts = [r for r in log if r["method"] == "POST"]
    assert sorted(r["query"] for r in mounts) == sorted(
        f"mount={blob.digest}&from={APP}" for blob in (image.config, *image.layers)
    )
    assert blob_uploads(log) == []
    assert [r["path"] for r in log if r["method"] == "PUT"] == ["/v2/team/mounted/manifests/v1"]
    mounted = {e.digest: e.name for e in events if e.reason == "mounted"}
    assert mounted == {blob.digest: APP for blob in (image.config, *image.layers)}
    assert skopeo_copy(skopeo, reference, tmp_path / "pushed") == skopeo_copy(
        skopeo, pulled.name, tmp_path / "source"
    )
    assert store.info(image.layers[0].digest).labels[SOURCE_LABEL] == f"{APP},team/mounted"


def test_a_mount_the_registry_cannot_do_falls_back_to_uploading(
    docker_registry: Source, fresh_proxy: RegistryProxy, store: LocalStore, image: Image
) -> None:
    # The store says the blobs are in team/app of 127.0.0.1, which this registry is not.
    pull(store, docker_registry.ref(APP), plain_http=True)

    push(
        store, f"{fresh_proxy.host}/team/other:v1", source=docker_registry.ref(APP), plain_http=True
    )

    log = fresh_proxy.log()
    posts = [r for r in log if r["method"] == "POST"]
    assert all(r["query"].endswith(f"&from={APP}") for r in posts)
    assert len(posts) == len(image.blobs) - 1
    # The large layer goes in a PATCH then an empty PUT, the others in one PUT each.
    uploads = blob_uploads(log)
    assert [r["method"] for r in uploads].count("PATCH") == 1
    assert [r["method"] for r in uploads].count("PUT") == len(image.blobs) - 1


def test_pushing_by_digest_puts_the_manifest_by_digest(
    docker_registry: Source, fresh_proxy: RegistryProxy, store: LocalStore, image: Image
) -> None:
    pull(store, docker_registry.ref(APP), plain_http=True)
    digest = image.manifest.digest

    push(
        store,
        f"{fresh_proxy.host}/{APP}@{digest}",
        source=docker_registry.ref(APP),
        plain_http=True,
    )

    manifests = [
        r for r in fresh_proxy.log() if r["method"] == "PUT" and "/manifests/" in r["path"]
    ]
    assert [r["path"] for r in manifests] == [f"/v2/{APP}/manifests/{digest}"]
    with pytest.raises(InvalidArgument, match="the image is"):
        push(
            store,
            f"{fresh_proxy.host}/{APP}@{image.config.digest}",
            source=docker_registry.ref(APP),
            plain_http=True,
        )


def test_an_index_whose_platforms_were_not_all_pulled_fails_not_found_naming_the_missing(
    docker_registry: Source, fresh_docker_registry: str, store: LocalStore, index: ImageIndex
) -> None:
    pull(store, docker_registry.ref(MULTI), plain_http=True, platform="linux/arm64")
    amd64 = next(i for i in index.images if i.architecture == "amd64")

    with pytest.raises(NotFound, match="not in the store") as failed:
        push(
            store,
            f"{fresh_docker_registry}/{MULTI}:v1",
            source=docker_registry.ref(MULTI),
            plain_http=True,
        )

    assert amd64.manifest.digest in str(failed.value)


def test_an_image_not_in_the_store_fails_not_found(
    fresh_docker_registry: str, store: LocalStore
) -> None:
    with pytest.raises(NotFound, match="image"):
        push(store, f"{fresh_docker_registry}/{APP}:v1", plain_http=True)


# Failures


@pytest.mark.parametrize(
    ("status", "error"), [(500, Unknown), (400, InvalidArgument)], ids=["500", "400"]
)
def test_a_blob_the_registry_refuses_fails_the_push_fast_and_cancels_the_rest(
    docker_registry: Source,
    fresh_proxy: RegistryProxy,
    store: LocalStore,
    image: Image,
    status: int,
    error: type[Exception],
) -> None:
    big, failing = image.layers[1], image.layers[2]
    pull(store, docker_registry.ref(APP), plain_http=True)
    # The big layer's upload alone would take about 30 s; the failure waits for it to begin.
    fresh_proxy.configure(
        throttle={"PATCH": 100_000}, fail={f"digest={failing.digest}": status}, fail_after="PATCH"
    )
    threads_before = set(threading.enumerate())
    sockets_before = sockets()
    started = time.monotonic()

    with pytest.raises(error) as failed:
        push(
            store, f"{fresh_proxy.host}/{APP}:v1", source=docker_registry.ref(APP), plain_http=True
        )

    assert time.monotonic() - started < 5
    assert f"injected failure {status}" in str(failed.value)
    assert failing.digest in str(failed.value)
    assert set(threading.enumerate()) == threads_before
    assert sockets() == sockets_before
    log = fresh_proxy.log()
    assert [r["method"] for r in blob_uploads(log)].count("PATCH") == 1, "the big upload had begun"
    assert not [r for r in log if r["method"] == "PUT" and "/manifests/" in r["path"]]
    assert big.digest not in [r["query"] for r in log]


# Authorization


def test_bearer_tokens_are_asked_for_with_push_scope_and_the_mount_sources_pull_scope(
    docker_registry: Source, proxy: RegistryProxy, store: LocalStore, image: Image, tmp_path: Path
) -> None:
    pull(store, docker_registry.ref(APP), plain_http=True)
    proxy.configure(bearer={"user": "pusher", "password": "s3cret"})
    credentials = auth_file(tmp_path / "auth.json", proxy.host, "pusher", "s3cret")
    start = len(proxy.log())

    push(
        store,
        f"{proxy.host}/team/tokened:v1",
        source=docker_registry.ref(APP),
        plain_http=True,
        auth_file=credentials,
    )

    log = since(proxy, start)
    tokens = [r for r in log if r["method"] == "TOKEN"]
    assert sorted(t["path"] for t in tokens) == [
        "repository:team/tokened:pull,push",
        f"repository:team/tokened:pull,push repository:{APP}:pull",
    ]
    assert all(t["authorization"].startswith("Basic ") for t in tokens)
    mounts = [r for r in log if r["method"] == "POST" and r["authorization"]]
    assert len(mounts) == len(image.blobs) - 1
    assert all(r["authorization"].startswith("Bearer ") for r in mounts)


# The command line, through a daemon


def test_the_cli_pushes_through_a_daemon_with_json_events_and_prints_one_line_in_a_pipe(
    empty_daemon: DaemonProcess,
    docker_registry: Source,
    fresh_docker_registry: str,
    image: Image,
) -> None:
    run_cli(empty_daemon, "cli", "pull", "--plain-http", "--name", "app", docker_registry.ref(APP))
    reference = f"{fresh_docker_registry}/{APP}:v1"

    pushed = run_cli(
        empty_daemon, "cli", "--json", "push", "--plain-http", "--from", "app", reference
    )
    again = run_cli(empty_daemon, "cli", "push", "--plain-http", "--from", "app", reference)

    events = [json.loads(line) for line in pushed.stdout.splitlines()]
    assert events[0] == {
        "event": "resolved",
        "digest": image.manifest.digest,
        "size": image.manifest.size,
        "media_type": image.manifest.media_type,
        "name": "app",
    }
    assert events[-1] == {
        "event": "pushed",
        "digest": image.manifest.digest,
        "size": image.manifest.size,
        "media_type": image.manifest.media_type,
        "name": reference,
    }
    done = {e["digest"]: e["ref"] for e in events if e["event"] == "done"}
    assert done == {blob.digest: f"{kind}-{blob.digest}" for kind, blob in [
        ("manifest", image.manifest), ("config", image.config),
        *(("layer", layer) for layer in image.layers),
    ]}  # fmt: skip
    assert again.stdout == f"{reference}@{image.manifest.digest}\n"
    assert again.stderr == ""


def test_the_cli_fails_with_not_found_for_an_image_not_stored(
    empty_daemon: DaemonProcess, fresh_docker_registry: str
) -> None:
    result = run_cli(
        empty_daemon,
        "cli",
        "push",
        "--plain-http",
        f"{fresh_docker_registry}/{APP}:v1",
        check=False,
    )

    assert result.returncode == 3, result.stderr
    assert result.stdout == ""

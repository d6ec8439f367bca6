"""Registries holding test images, and what the pull and push tests do with them.

A pytest plugin (tests/conftest.py loads it): `docker_registry` (Debian's docker-registry
2.8) and `contentd_registry` (contentd's own HTTP face, namespace `registry`, beside its
gRPC API) are started once per module and filled by skopeo with APP:v1 (one image,
`image`) and MULTI:v1 (a two-platform index, `index`) from OCI layouts built on disk
(support/oci_layout.py); `source` is each of the two in turn. `route` is each way a pull
goes in turn: daemonless, and through a daemon that fetches the image itself. `proxy` puts
a misbehaving, logging proxy (support/registry_proxy.py) before docker-registry. The
helpers copy with skopeo, read a store, run the CLI, count a process's sockets and see its
pulls' threads.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from contentd.client import RemoteStore, pull
from contentd.content import Image as RecordedImage
from contentd.content import LocalStore, open_store
from contentd.errdefs import Unavailable
from support.daemon import DaemonProcess, contentd_command, start_daemon
from support.docker_registry import DOCKER_REGISTRY, DockerRegistryProcess, start_docker_registry
from support.oci_layout import (
    Image,
    ImageIndex,
    Layout,
    read_blobs,
    write_image_layout,
    write_index_layout,
)
from support.registry_proxy import RegistryProxy, start_registry_proxy
from support.skopeo import Skopeo
from support.tools import require_tool

APP, MULTI = "team/app", "team/multi"


@dataclass(frozen=True)
class Source:
    """A registry holding APP:v1 (one image) and MULTI:v1 (a two-platform index)."""

    kind: str
    host: str

    def ref(self, repository: str, tag: str = "v1") -> str:
        return f"{self.host}/{repository}:{tag}"


@pytest.fixture(scope="module")
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    require_tool("skopeo", "skopeo")
    home = tmp_path_factory.mktemp("skopeo-home")
    (home / "registries.conf").write_text("")
    return Skopeo(home)


@pytest.fixture(scope="module")
def image_layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    return write_image_layout(tmp_path_factory.mktemp("layout") / "image", seed=23)


@pytest.fixture(scope="module")
def index_layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    return write_index_layout(tmp_path_factory.mktemp("layout") / "index", seed=230)


@pytest.fixture(scope="module")
def image(image_layout: Layout) -> Image:
    tagged = image_layout.tags["v1"]
    assert isinstance(tagged, Image)
    return tagged


@pytest.fixture(scope="module")
def index(index_layout: Layout) -> ImageIndex:
    tagged = index_layout.tags["v1"]
    assert isinstance(tagged, ImageIndex)
    return tagged


def fill(skopeo: Skopeo, host: str, image_layout: Layout, index_layout: Layout) -> None:
    skopeo.push(image_layout.reference("v1"), f"docker://{host}/{APP}:v1")
    skopeo.push(index_layout.reference("v1"), f"docker://{host}/{MULTI}:v1", "--all")


@pytest.fixture(scope="module")
def docker_registry(
    tmp_path_factory: pytest.TempPathFactory,
    skopeo: Skopeo,
    image_layout: Layout,
    index_layout: Layout,
) -> Iterator[Source]:
    require_tool(DOCKER_REGISTRY, "docker-registry")
    running: DockerRegistryProcess = start_docker_registry(tmp_path_factory.mktemp("registry"))
    try:
        host = running.url.removeprefix("http://")
        fill(skopeo, host, image_layout, index_layout)
        yield Source("docker-registry", host)
    finally:
        running.stop()


@pytest.fixture(scope="module")
def contentd_registry(
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
    running: DaemonProcess = request.getfixturevalue("contentd_registry")
    return Source("contentd", running.http_url.removeprefix("http://"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with open_store(tmp_path / "store") as opened:
        yield opened


@contextlib.contextmanager
def proxied(host: str) -> Iterator[RegistryProxy]:
    """A proxy (support/registry_proxy.py) before the registry at `host`, for a with-block."""
    running = start_registry_proxy(f"http://{host}")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def proxy(docker_registry: Source) -> Iterator[RegistryProxy]:
    with proxied(docker_registry.host) as running:
        yield running


def skopeo_copy(skopeo: Skopeo, reference: str, out: Path, *flags: str) -> dict[str, bytes]:
    skopeo.pull(f"docker://{reference}", f"oci:{out}:v1", *flags)
    return read_blobs(out)


def stored(store: LocalStore) -> dict[str, bytes]:
    found = {}
    for info in store.walk():
        with store.reader_at(info.digest) as reader:
            found[info.digest] = reader.read()
    return found


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


def sockets(pid: int | str = "self") -> int:
    """The sockets a process (by default this one) holds open."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def threads(pid: int) -> int:
    """How many threads process `pid` runs."""
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def wait_for_threads(pid: int, count: int) -> None:
    """Wait until process `pid` runs no more than `count` threads (a daemon's canceled pull
    unwinds on its own, after its caller has gone)."""
    deadline = time.monotonic() + 30
    while threads(pid) > count:
        assert time.monotonic() < deadline, f"{threads(pid)} threads, not {count}"
        time.sleep(0.05)


def wait_for_release(store: LocalStore, ref: str) -> None:
    """Wait until no writer holds `ref` (a daemon's canceled pull closes its own)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            store.writer(ref).close()
            return
        except Unavailable:
            assert time.monotonic() < deadline, f"{ref} still held"
            time.sleep(0.05)


@dataclass(frozen=True)
class Route:
    """Which way a pull goes into the store at `root`: daemonless (`daemon` None), or
    through a contentd daemon serving that root, which fetches the image itself."""

    root: Path
    daemon: DaemonProcess | None = None

    def cli(self) -> list[str]:
        """The CLI's global options choosing this route."""
        if self.daemon is None:
            return ["--root", str(self.root)]
        return ["--address", self.daemon.address]

    def pull(self, store: LocalStore, reference: str, **options: Any) -> RecordedImage:
        """`contentd.client.pull` along this route; `store` is the root's store, daemonless."""
        if self.daemon is None:
            return pull(store, reference, **options)
        with RemoteStore(self.daemon.address) as remote:
            return pull(remote, reference, **options)


@pytest.fixture(params=["daemonless", "daemon"])
def route(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Route]:
    """Each route in turn into the store at tmp_path/store (the `store` fixture's)."""
    root = tmp_path / "store"
    if request.param == "daemonless":
        yield Route(root)
        return
    running = start_daemon(root)
    try:
        yield Route(root, running)
    finally:
        running.stop()


def auth_file(path: Path, host: str, user: str, password: str) -> Path:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": encoded}}}))
    return path

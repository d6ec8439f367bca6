"""Fixtures shared by several test modules.

- Modules that talk to one daemon of their own over raw stubs define a module-scoped
  `daemon` fixture (started as its tests need); `channel`, `stub` and `ns` build on it.
- The pull tests (contentd pull, the pull-through mirror) pull the images of
  `image_layout` and `index_layout` from a `docker_registry` skopeo filled
  (see support.pull_sources); each module gets its own, module-scoped.
- The engines of the cluster backend, for the session.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

# tests/ is no package and pytest imports in importlib mode, so the shared helpers under
# tests/support are importable only with this directory on the path.
sys.path.insert(0, str(Path(__file__).parent))

from support.backends import ENGINES, ClusterURLs, cluster_urls
from support.daemon import DaemonProcess
from support.docker_registry import DOCKER_REGISTRY, DockerRegistryProcess, start_docker_registry
from support.grpc_client import connect
from support.oci_layout import (
    Image,
    ImageIndex,
    Layout,
    write_image_layout,
    write_index_layout,
)
from support.postgres import DSN_VARIABLE, PostgresCluster, running_postgres
from support.pull_sources import Source, fill
from support.seaweedfs import SeaweedFS, running_seaweedfs
from support.skopeo import Skopeo
from support.tools import require_tool

from contentd.proto import content_pb2_grpc


@pytest.fixture(scope="module")
def channel(daemon: DaemonProcess) -> Iterator[grpc.Channel]:
    """A channel to the module's daemon."""
    with connect(daemon.address) as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> content_pb2_grpc.ContentStub:
    """The Content API of the module's daemon."""
    return content_pb2_grpc.ContentStub(channel)


@pytest.fixture
def ns() -> str:
    """A namespace no other test uses."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """The session's private PostgreSQL cluster, its DSN published in `DSN_VARIABLE`."""
    with running_postgres() as cluster:
        os.environ[DSN_VARIABLE] = cluster.dsn
        try:
            yield cluster
        finally:
            os.environ.pop(DSN_VARIABLE, None)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 server for the session, started on first use; see support.seaweedfs."""
    with running_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(autouse=True)
def _engines_for_their_kind(request: pytest.FixtureRequest) -> None:
    """Tests parametrised over backend kinds get the engines their kind needs (ENGINES)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None:
        for engine in ENGINES.get(callspec.params.get("kind"), ()):
            request.getfixturevalue(engine)


@pytest.fixture
def cluster(seaweedfs: SeaweedFS, postgres: PostgresCluster) -> ClusterURLs:
    """A fresh, empty cluster store on the session's engines."""
    return cluster_urls(uuid.uuid4().hex)


# The images pull tests pull, and a docker-registry holding them


@pytest.fixture(scope="module")
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    """skopeo with a home of its own (no registries.conf, policy or credentials of the host's)."""
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
    """The image APP:v1."""
    tagged = image_layout.tags["v1"]
    assert isinstance(tagged, Image)
    return tagged


@pytest.fixture(scope="module")
def index(index_layout: Layout) -> ImageIndex:
    """The two-platform index MULTI:v1."""
    tagged = index_layout.tags["v1"]
    assert isinstance(tagged, ImageIndex)
    return tagged


@pytest.fixture(scope="module")
def docker_registry(
    tmp_path_factory: pytest.TempPathFactory,
    skopeo: Skopeo,
    image_layout: Layout,
    index_layout: Layout,
) -> Iterator[Source]:
    """docker-registry 2.8 on loopback, holding APP:v1 and MULTI:v1."""
    require_tool(DOCKER_REGISTRY, "docker-registry")
    running: DockerRegistryProcess = start_docker_registry(tmp_path_factory.mktemp("registry"))
    try:
        host = running.url.removeprefix("http://")
        fill(skopeo, host, image_layout, index_layout)
        yield Source("docker-registry", host)
    finally:
        running.stop()

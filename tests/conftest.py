"""Fixtures shared by the modules that talk to one daemon of their own over raw stubs.

Such a module defines a module-scoped `daemon` fixture (started as its tests need);
`channel`, `stub` and `ns` here build on it.
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
from support.grpc_client import connect
from support.postgres import DSN_VARIABLE, PostgresCluster, running_postgres
from support.seaweedfs import SeaweedFS, running_seaweedfs

from contentd.proto import content_pb2_grpc

# Registries holding test images, for the modules that pull and push images.
pytest_plugins = ["support.image_registries"]


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

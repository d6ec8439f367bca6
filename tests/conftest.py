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

from support.daemon import DaemonProcess
from support.grpc_client import connect
from support.postgres import DSN_VARIABLE, PostgresCluster, running_postgres

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


@pytest.fixture(autouse=True)
def _postgres_for_its_kind(request: pytest.FixtureRequest) -> None:
    """Start the cluster for tests parametrised over the backend kind "postgres"."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("kind") == "postgres":
        request.getfixturevalue("postgres")

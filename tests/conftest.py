"""Fixtures shared by the modules that talk to one daemon of their own over raw stubs.

Such a module defines a module-scoped `daemon` fixture (started as its tests need);
`channel`, `stub` and `ns` here build on it.
"""

from __future__ import annotations

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
from support.seaweedfs import SeaweedFS, running_seaweedfs

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
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 server for the session, started on first use; see support.seaweedfs."""
    with running_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(autouse=True)
def _object_storage_for_the_s3_kind(request: pytest.FixtureRequest) -> None:
    """Tests parametrised over backend kinds get the S3 server when their kind is "s3"."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("kind") == "s3":
        request.getfixturevalue("seaweedfs")

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

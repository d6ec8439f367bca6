"""Fixtures for the Go conformance suites (support/go_suite.py): their test binary, built
once per session, and the servers they run against, each started on an empty directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from support.containerd import start_containerd
from support.daemon import running_daemon
from support.go_suite import TESTSUITE_SOURCES, SuiteServer, build_suite
from support.tools import require_path, require_tool


@contextmanager
def private_containerd(workdir: Path) -> Iterator[SuiteServer]:
    """containerd itself, on a fresh root: the reference the suites were written for. Its
    garbage collector runs as it does by default: the metadata suite tests it, and the
    content suite must hold leases against it."""
    require_tool("containerd", "containerd")
    with start_containerd(workdir, collect=True) as containerd:
        yield SuiteServer(containerd.address, leases=True)


@contextmanager
def contentd(workdir: Path) -> Iterator[SuiteServer]:
    """`contentd serve` on a fresh root; the content suite runs against it without leases."""
    with running_daemon(workdir / "root") as daemon:
        yield SuiteServer(daemon.address, leases=False)


# Each server, by the name the test ids carry.
SERVERS: dict[str, Callable[[Path], AbstractContextManager[SuiteServer]]] = {
    "containerd": private_containerd,
    "contentd": contentd,
}


@pytest.fixture(params=sorted(SERVERS))
def suite_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SuiteServer]:
    """Each server in turn, fresh for the test."""
    with SERVERS[request.param](tmp_path) as server:
        yield server


@pytest.fixture
def contentd_server(tmp_path: Path) -> Iterator[SuiteServer]:
    """A fresh contentd alone."""
    with contentd(tmp_path) as server:
        yield server


@pytest.fixture(scope="session")
def suite_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suites' test binary."""
    go = require_tool("go", "golang-go")
    require_path(
        TESTSUITE_SOURCES, "containerd's Go sources (golang-github-containerd-containerd-dev)"
    )
    return build_suite(tmp_path_factory.mktemp("go-suites"), go)

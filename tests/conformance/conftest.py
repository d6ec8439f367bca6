"""Fixtures for the Go conformance suites (support/go_suite.py): their test binary, built
once per session, and the servers they run against, each started on an empty directory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from support.containerd import start_containerd
from support.daemon import running_daemon
from support.go_suite import TESTSUITE_SOURCES, SuiteServer, build_suite
from support.tools import require_path, require_tool

# The servers each suite runs against, by the names the test ids carry.
SERVERS = ("containerd", "contentd")


@contextmanager
def private_containerd(workdir: Path) -> Iterator[SuiteServer]:
    """containerd itself, on a fresh root: the reference the suites were written for. Its
    garbage collector runs on containerd's default schedule."""
    require_tool("containerd", "containerd")
    with start_containerd(workdir, collect=True) as containerd:
        yield SuiteServer(containerd.address, collects=True)


@contextmanager
def contentd(workdir: Path, *, collect: bool) -> Iterator[SuiteServer]:
    """`contentd serve` on a fresh root, its collection scheduler on if `collect` (a
    synchronous delete collects either way)."""
    with running_daemon(workdir / "root", collect=collect) as daemon:
        yield SuiteServer(daemon.address, collects=collect)


def start_server(name: str, workdir: Path, *, collect: bool) -> AbstractContextManager[SuiteServer]:
    """Server `name` of SERVERS; contentd collects on a schedule only if `collect`."""
    if name == "containerd":
        return private_containerd(workdir)
    return contentd(workdir, collect=collect)


@pytest.fixture(params=SERVERS)
def content_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SuiteServer]:
    """Each server in turn, fresh, for the content suite: contentd without its scheduler, so
    the suite drives the Content API without the lease header there."""
    with start_server(request.param, tmp_path, collect=False) as server:
        yield server


@pytest.fixture(params=SERVERS)
def metadata_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SuiteServer]:
    """Each server in turn, fresh, for the metadata suite: both collect garbage on their own
    schedules, as containerd does by default."""
    with start_server(request.param, tmp_path, collect=True) as server:
        yield server


@pytest.fixture
def contentd_server(tmp_path: Path) -> Iterator[SuiteServer]:
    """A fresh contentd alone, without its scheduler."""
    with contentd(tmp_path, collect=False) as server:
        yield server


@pytest.fixture(scope="session")
def suite_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suites' test binary."""
    go = require_tool("go", "golang-go")
    require_path(
        TESTSUITE_SOURCES, "containerd's Go sources (golang-github-containerd-containerd-dev)"
    )
    return build_suite(tmp_path_factory.mktemp("go-suites"), go)

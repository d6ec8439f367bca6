"""containerd's own content testsuite, run against each content server over its socket.

The suite (content_suite_test.go beside this file) drives the server through containerd's
Go content proxy, exactly as containerd's clients do. Each server listed in SERVERS runs
it on a fresh store; a real containerd runs it too, to prove the harness itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.containerd import start_containerd
from support.daemon import running_daemon
from support.go_suite import (
    EXPECTED_SUBTESTS,
    TESTSUITE_SOURCES,
    build_suite,
    parse_results,
    run_suite,
)
from support.tools import require_path, require_tool


@dataclass(frozen=True)
class ContentServer:
    """A server under test: where it listens, and whether it serves the Leases API the
    suite needs to keep a garbage-collecting store from losing content mid-test."""

    address: str
    leases: bool


@contextmanager
def private_containerd(workdir: Path) -> Iterator[ContentServer]:
    """containerd itself, on a fresh root: the reference the suite was written for."""
    require_tool("containerd", "containerd")
    with start_containerd(workdir) as containerd:
        # containerd collects unreferenced content after every 100 metadata mutations,
        # which the suite passes mid-test; without leases about half the runs lose a blob.
        yield ContentServer(containerd.address, leases=True)


@contextmanager
def contentd(workdir: Path) -> Iterator[ContentServer]:
    """`contentd serve` on a fresh root; it serves the Content API only, without leases."""
    with running_daemon(workdir / "root") as daemon:
        yield ContentServer(daemon.address, leases=False)


# Each server, by the name the test ids carry, started on an empty directory of its own.
SERVERS: dict[str, Callable[[Path], AbstractContextManager[ContentServer]]] = {
    "containerd": private_containerd,
    "contentd": contentd,
}


@pytest.fixture(params=sorted(SERVERS))
def content_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ContentServer]:
    with SERVERS[request.param](tmp_path) as server:
        yield server


@pytest.fixture(scope="session")
def suite_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = require_tool("go", "golang-go")
    require_path(
        TESTSUITE_SOURCES, "containerd's Go sources (golang-github-containerd-containerd-dev)"
    )
    return build_suite(tmp_path_factory.mktemp("content-suite"), go)


@pytest.mark.conformance
def test_content_suite_passes_every_subtest(
    suite_binary: Path, content_server: ContentServer
) -> None:
    run = run_suite(suite_binary, content_server.address, leases=content_server.leases)

    assert run.results == dict.fromkeys(EXPECTED_SUBTESTS, "PASS"), run.output
    assert run.returncode == 0, run.output


@pytest.mark.conformance
@pytest.mark.parametrize("attempt", range(3))
def test_content_suite_passes_against_contentd_run_after_run(
    suite_binary: Path, tmp_path: Path, attempt: int
) -> None:
    # The suite closes writers by half-closing their streams and reopens the
    # same refs at once; repeated runs show the daemon's handoff holds up.
    with contentd(tmp_path) as server:
        run = run_suite(suite_binary, server.address, leases=False)
    assert run.results == dict.fromkeys(EXPECTED_SUBTESTS, "PASS"), run.output


def test_results_are_read_from_subtest_lines_only() -> None:
    output = """\
=== RUN   TestContentSuite
=== RUN   TestContentSuite/Writer
    testsuite.go:531: compare update --- PASS: TestContentSuite/Fake (0.00s)
--- FAIL: TestContentSuite (0.05s)
    --- PASS: TestContentSuite/Writer (0.02s)
    --- FAIL: TestContentSuite/Labels (0.01s)
    --- SKIP: TestContentCrossNSSharedSuite/CrossNamespaceShare (0.00s)
FAIL
"""

    assert parse_results(output) == {
        "TestContentSuite/Writer": "PASS",
        "TestContentSuite/Labels": "FAIL",
        "TestContentCrossNSSharedSuite/CrossNamespaceShare": "SKIP",
    }


def test_results_of_output_without_subtests_are_empty() -> None:
    assert parse_results("panic: dial unix /tmp/x.sock: connect: no such file\nFAIL\n") == {}

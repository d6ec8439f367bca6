"""containerd's own content testsuite, run against each content server over its socket.

The suite (content_suite_test.go beside this file) drives the server through containerd's
Go content proxy, exactly as containerd's clients do. Each server conftest.py lists runs it
on a fresh store; a real containerd runs it too, to prove the harness itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.go_suite import (
    CONTENT_LEASES_ENV,
    CONTENT_SUITE,
    SuiteRun,
    SuiteServer,
    parse_results,
    run_suite,
)


def run_content_suite(binary: Path, server: SuiteServer) -> SuiteRun:
    """Run the content suite against `server`, holding leases where the server collects."""
    return run_suite(
        binary, CONTENT_SUITE, server.address, {CONTENT_LEASES_ENV: "1" if server.collects else "0"}
    )


@pytest.mark.conformance
def test_content_suite_passes_every_subtest(
    suite_binary: Path, content_server: SuiteServer
) -> None:
    run = run_content_suite(suite_binary, content_server)

    assert run.results == CONTENT_SUITE.expected_results(), run.output
    assert run.returncode == 0, run.output


@pytest.mark.conformance
@pytest.mark.parametrize("attempt", range(3))
def test_content_suite_passes_against_contentd_run_after_run(
    suite_binary: Path, contentd_server: SuiteServer, attempt: int
) -> None:
    # The suite closes writers by half-closing their streams and reopens the
    # same refs at once; repeated runs show the daemon's handoff holds up.
    run = run_content_suite(suite_binary, contentd_server)

    assert run.results == CONTENT_SUITE.expected_results(), run.output


def test_results_are_read_from_result_lines_only() -> None:
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
        "TestContentSuite": "FAIL",
        "TestContentSuite/Writer": "PASS",
        "TestContentSuite/Labels": "FAIL",
        "TestContentCrossNSSharedSuite/CrossNamespaceShare": "SKIP",
    }


def test_results_of_output_without_tests_are_empty() -> None:
    assert parse_results("panic: dial unix /tmp/x.sock: connect: no such file\nFAIL\n") == {}

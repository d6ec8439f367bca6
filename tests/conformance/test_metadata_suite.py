"""containerd's own tests of leases, images, namespaces and garbage collection, run against
each server over its socket.

The suite (metadata_suite_test.go beside this file) ports containerd 1.6's metadata tests to
the gRPC API and drives the server through containerd's Go client, exactly as containerd's
tooling does. Each server conftest.py lists runs it on a fresh store, collecting garbage on
its own schedule as containerd does by default; a real containerd runs it too, to prove the
suite itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.go_suite import METADATA_SUITE, SuiteServer, run_suite


@pytest.mark.conformance
def test_metadata_suite_passes_every_test(suite_binary: Path, metadata_server: SuiteServer) -> None:
    run = run_suite(suite_binary, METADATA_SUITE, metadata_server.address)

    assert run.results == METADATA_SUITE.expected_results(), run.output
    assert run.returncode == 0, run.output

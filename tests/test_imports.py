"""What importing a package loads: the store and the error classes speak no gRPC."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import contentd.client
import contentd.content

# What a process that speaks gRPC loads: grpc (and the grpc_* packages it pulls
# in), protobuf, and the google.rpc messages errdefs' gRPC mapping uses.
_GRPC_PREFIXES = ("grpc.", "grpc_", "google.protobuf", "google.rpc")


def _loaded_by(module: str) -> list[str]:
    """The modules a fresh interpreter holds after importing `module`."""
    script = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(run.stdout)
    return loaded


@pytest.mark.parametrize("module", ["contentd.content", "contentd.errdefs"])
def test_importing_loads_no_grpc_or_protobuf(module: str) -> None:
    grpc_modules = [
        name for name in _loaded_by(module) if name == "grpc" or name.startswith(_GRPC_PREFIXES)
    ]
    assert grpc_modules == []


def test_the_errdefs_grpc_mapping_is_still_reachable_from_the_package() -> None:
    script = (
        "import grpc; from contentd import errdefs; "
        "from contentd.errdefs import STATUS_DETAILS_KEY, from_grpc, to_grpc_status; "
        "assert errdefs.NotFound.grpc_code is grpc.StatusCode.NOT_FOUND; "
        "assert errdefs.NotFound('x').grpc_code is grpc.StatusCode.NOT_FOUND; "
        "assert to_grpc_status(errdefs.NotFound('x')).code is grpc.StatusCode.NOT_FOUND; "
        "assert STATUS_DETAILS_KEY == 'grpc-status-details-bin'; "
        "assert 'to_grpc_status' in dir(errdefs)"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_the_command_line_loads_no_grpc_http_client_or_terminal_display() -> None:
    # Each command is a process of its own: what the CLI loads, every command pays for.
    heavy = [
        name
        for name in _loaded_by("contentd.client.cli")
        if name in ("grpc", "aiohttp", "rich") or name.startswith((*_GRPC_PREFIXES, "rich."))
    ]
    assert heavy == []


def test_a_daemonless_pull_loads_no_grpc() -> None:
    grpc_modules = [
        name
        for name in _loaded_by("contentd.client.cli, contentd.client._pull")
        if name == "grpc" or name.startswith(_GRPC_PREFIXES)
    ]
    assert grpc_modules == []


def test_a_pull_through_a_daemon_loads_no_http_client() -> None:
    # The daemon fetches; the client only checks the request and shows the events.
    http_modules = [
        name
        for name in _loaded_by(
            "contentd.client.cli, contentd.client._pull, contentd.client._remote"
        )
        if name == "aiohttp" or name.startswith(("aiohttp.", "contentd.client._fetch"))
    ]
    assert http_modules == []


def test_every_name_the_client_exports_is_reachable() -> None:
    script = (
        "import contentd.client as client; "
        "missing = [n for n in client.__all__ if getattr(client, n, None) is None]; "
        "assert missing == [], missing; "
        "assert set(client.__all__) <= set(dir(client))"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_the_client_re_exports_the_stores_ingest_helpers() -> None:
    for name in ("Backoff", "is_ref_locked", "open_writer", "write_blob"):
        assert getattr(contentd.client, name) is getattr(contentd.content, name)

"""The private containerd and the `ctr` helpers work: what goes in through `ctr content
ingest` comes back out of `ctr content ls` and `ctr content get`, byte for byte."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.containerd import REQUIRED_PLUGINS, ContainerdProcess, start_containerd
from support.ctr import Ctr, CtrError
from support.tools import require_tool

pytestmark = pytest.mark.conformance

# Every byte value, newlines and NULs included, across several of ctr's read buffers.
BLOB = bytes(range(256)) * 1024
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[ContainerdProcess]:
    require_tool("containerd", "containerd")
    with start_containerd(tmp_path) as process:
        yield process


@pytest.fixture
def ctr(containerd: ContainerdProcess) -> Ctr:
    require_tool("ctr", "containerd")
    return Ctr(containerd.address, namespace="smoke")


def test_private_containerd_loads_only_the_plugins_it_requires(
    containerd: ContainerdProcess,
) -> None:
    log = containerd.log_path.read_text()

    assert set(re.findall(r'loading plugin \\"([^"\\]+)\\"', log)) == set(REQUIRED_PLUGINS), log
    assert "level=warning" not in log, log
    assert "level=error" not in log, log


def test_ingested_blob_is_listed_by_digest(ctr: Ctr) -> None:
    ctr.content_ingest("smoke-ls", BLOB)

    assert ctr.content_ls() == [BLOB_DIGEST]


def test_get_returns_the_ingested_bytes(ctr: Ctr) -> None:
    ctr.content_ingest("smoke-get", BLOB)

    assert ctr.content_get(BLOB_DIGEST) == BLOB


def test_ingested_blob_is_invisible_in_another_namespace(
    containerd: ContainerdProcess, ctr: Ctr
) -> None:
    ctr.content_ingest("smoke-ns", BLOB)

    assert Ctr(containerd.address, namespace="elsewhere").content_ls() == []


def test_failed_command_raises_with_ctrs_message(ctr: Ctr) -> None:
    missing = "sha256:" + "0" * 64

    with pytest.raises(CtrError, match=f"content digest {missing}: not found") as raised:
        ctr.content_get(missing)

    assert raised.value.returncode != 0

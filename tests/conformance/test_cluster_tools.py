"""containerd's and the registry's own tools against two daemons serving one cluster store.

The daemons (`contentd serve --blobs s3://... --metadata postgresql://...`) share a
SeaweedFS bucket and a PostgreSQL schema. containerd's content testsuite runs
through each, `ctr` ingests through one and reads through the other, and skopeo
pushes an image through one daemon's registry face and pulls it through the
other's.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support.backends import ClusterURLs
from support.ctr import Ctr
from support.daemon import DaemonProcess, running_pair
from support.go_suite import CONTENT_LEASES_ENV, CONTENT_SUITE, run_suite
from support.oci_layout import read_blobs, write_image_layout
from support.skopeo import Skopeo
from support.tools import require_tool

from contentd.content import digest_of

pytestmark = [pytest.mark.conformance, pytest.mark.slow]


@pytest.fixture
def daemons(tmp_path: Path, cluster: ClusterURLs) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    http = ("--http", "127.0.0.1:0", "--http-namespace", "registry")
    with running_pair(tmp_path, *cluster.flags(), *http) as pair:
        yield pair


@pytest.mark.parametrize("through", [0, 1])
def test_containerd_content_suite_passes_through_each_daemon(
    suite_binary: Path, daemons: tuple[DaemonProcess, DaemonProcess], through: int
) -> None:
    # A fresh store each time: the suite writes the same bytes every run, and a second run
    # on one store would find them committed (containerd's shared policy), as on any store.
    run = run_suite(
        suite_binary, CONTENT_SUITE, daemons[through].address, {CONTENT_LEASES_ENV: "0"}
    )

    assert run.results == CONTENT_SUITE.expected_results(), run.output
    assert run.returncode == 0, run.output


def test_ctr_ingests_through_one_daemon_and_gets_through_the_other(
    daemons: tuple[DaemonProcess, DaemonProcess],
) -> None:
    require_tool("ctr", "containerd")
    first, second = daemons
    data = random.Random(21).randbytes((9 << 20) + 77)
    Ctr(first.address, "default").content_ingest("cluster-ref", data)

    other = Ctr(second.address, "default")
    assert other.content_get(digest_of(data)) == data
    assert digest_of(data) in other.content_ls()


def test_skopeo_pushes_through_one_daemon_and_pulls_through_the_other(
    tmp_path: Path, daemons: tuple[DaemonProcess, DaemonProcess]
) -> None:
    require_tool("skopeo", "skopeo")
    home = tmp_path / "skopeo-home"
    home.mkdir()
    (home / "registries.conf").write_text("")
    skopeo = Skopeo(home)
    layout = write_image_layout(tmp_path / "layout" / "image")
    first, second = (urlsplit(daemon.http_url).netloc for daemon in daemons)

    skopeo.push(layout.reference("v1"), f"docker://{first}/team/app:v1")
    skopeo.pull(f"docker://{second}/team/app:v1", f"oci:{tmp_path / 'pulled'}:v1")

    assert read_blobs(tmp_path / "pulled") == read_blobs(layout.path)

"""The registry face of a cluster daemon sending blob downloads straight to object storage.

With `--http-redirect-blobs`, a blob GET is answered 307 with a presigned URL into the
bucket (as docker-registry's S3 driver does), so the bytes flow from object storage to
the client without passing through the daemon; HEAD, manifests and uploads stay with
the daemon. Clients that follow redirects (skopeo, docker, containerd) pull as before.
"""

from __future__ import annotations

import random
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support.backends import ClusterURLs
from support.daemon import DaemonProcess, contentd_command, start_daemon
from support.oci_layout import read_blobs, write_image_layout
from support.registry_http import RegistryClient, digest_of
from support.skopeo import Skopeo
from support.tools import require_tool

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(tmp_path: Path, cluster: ClusterURLs) -> Iterator[DaemonProcess]:
    started = start_daemon(
        tmp_path / "root", *cluster.flags(), "--http", "127.0.0.1:0", "--http-redirect-blobs"
    )
    try:
        yield started
    finally:
        started.stop()


def test_a_blob_get_is_redirected_into_object_storage(
    daemon: DaemonProcess, cluster: ClusterURLs
) -> None:
    registry = RegistryClient(daemon.http_url)
    data = random.Random(3).randbytes((7 << 20) + 5)
    digest = registry.push_blob("team/app", data)

    answer = registry.get(f"/v2/team/app/blobs/{digest}")

    assert answer.status == 307
    assert answer.header("Docker-Content-Digest") == digest
    location = answer.header("Location")
    assert location is not None
    endpoint = urlsplit(cluster.blobs).query.removeprefix("endpoint=")
    assert location.startswith(endpoint)
    with urllib.request.urlopen(location, timeout=30) as fetched:
        assert fetched.read() == data
    ranged = urllib.request.Request(location, headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(ranged, timeout=30) as fetched:
        assert fetched.status == 206
        assert fetched.read() == data[10:20]
    # HEAD describes the blob itself; an unknown blob is no redirect.
    head = registry.head(f"/v2/team/app/blobs/{digest}")
    assert head.status == 200
    assert head.header("Content-Length") == str(len(data))
    unknown = registry.get(f"/v2/team/app/blobs/{digest_of(b'nothing')}")
    assert unknown.status == 404
    assert unknown.error_code == "BLOB_UNKNOWN"
    other = registry.get(f"/v2/team/other/blobs/{digest}")
    assert other.status == 404


def test_skopeo_pulls_through_the_redirects(tmp_path: Path, daemon: DaemonProcess) -> None:
    require_tool("skopeo", "skopeo")
    home = tmp_path / "skopeo-home"
    home.mkdir()
    (home / "registries.conf").write_text("")
    skopeo = Skopeo(home)
    layout = write_image_layout(tmp_path / "layout" / "image")
    host = urlsplit(daemon.http_url).netloc

    skopeo.push(layout.reference("v1"), f"docker://{host}/team/app:v1")
    skopeo.pull(f"docker://{host}/team/app:v1", f"oci:{tmp_path / 'pulled'}:v1")

    assert read_blobs(tmp_path / "pulled") == read_blobs(layout.path)


def test_redirects_need_blobs_in_object_storage(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *contentd_command(),
            "serve",
            "--root",
            str(tmp_path / "root"),
            "--http",
            "127.0.0.1:0",
            "--http-redirect-blobs",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--http-redirect-blobs needs --blobs" in result.stderr

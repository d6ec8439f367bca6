"""`skopeo` (containers/image) against `contentd serve --http`, as a user of the registry would.

One daemon serves the module. The tests push OCI image layouts they build themselves
(tests/support/oci_layout.py), inspect and list what they pushed, pull it back and compare
it byte for byte, delete, copy between repositories, push with basic auth, and read a
pushed layer over gRPC with containerd's `ctr`.

Facts about skopeo 1.9 the tests rely on:
- It talks plain HTTP only with `--tls-verify=false` (`--src-`/`--dest-` for copy); it
  tries HTTPS first and falls back.
- `copy` leaves manifests as they are unless told to convert, and `--preserve-digests`
  makes it fail rather than change a digest, so a round trip must return identical bytes.
- Before uploading a layer it remembers seeing in another repository of the same registry
  (its blob info cache records where it pushed and pulled), it asks for a cross-repository
  mount; with `--debug` it logs `Trying to mount ...` and, on 201, `... mount OK`.
- `delete` resolves a tag to its digest and deletes the manifest by digest, which removes
  every tag pointing at it.
- With `--debug` it logs the Content-Type a manifest was served with:
  `Content-Type from manifest GET is "<type>"`.
- Errors are printed as `<code's message>: <server's message>`, so `manifest unknown`
  and the like appear whatever words the server chose.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import bcrypt
import pytest
from support.ctr import Ctr
from support.daemon import DaemonProcess, running_daemon
from support.oci_layout import (
    IMAGE_INDEX,
    IMAGE_MANIFEST,
    Image,
    ImageIndex,
    Layout,
    build_image,
    read_blobs,
    tagged_descriptor,
    write_image_layout,
    write_index_layout,
    write_layout,
)
from support.registry_http import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST
from support.skopeo import Skopeo, SkopeoError
from support.tools import require_tool

pytestmark = pytest.mark.conformance

NAMESPACE = "registry"
USER = "ci-user"
PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Registry:
    """The registry a daemon serves over HTTP: image references into it."""

    daemon: DaemonProcess

    @property
    def host(self) -> str:
        return urlsplit(self.daemon.http_url).netloc

    def image(self, repository: str, reference: str = "v1") -> str:
        """`docker://` reference to a tag, or to a digest when `reference` is one."""
        separator = "@" if reference.startswith("sha256:") else ":"
        return f"docker://{self.host}/{repository}{separator}{reference}"

    def repository(self, repository: str) -> str:
        return f"docker://{self.host}/{repository}"


@pytest.fixture(scope="module", autouse=True)
def _skopeo_installed() -> None:
    require_tool("skopeo", "skopeo")


@pytest.fixture(scope="module")
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    home = tmp_path_factory.mktemp("skopeo-home")
    (home / "registries.conf").write_text("")
    return Skopeo(home)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("registry") / "root"
    with running_daemon(root, "--http", "127.0.0.1:0", "--http-namespace", NAMESPACE) as daemon:
        yield Registry(daemon)


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A second daemon whose registry wants basic auth: USER with PASSWORD."""
    base = tmp_path_factory.mktemp("auth-registry")
    htpasswd = base / "htpasswd"
    # htpasswd -B writes the $2y$ prefix; bcrypt's $2b$ is the same algorithm.
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()
    htpasswd.write_text(f"{USER}:$2y${hashed.removeprefix('$2b$')}\n")
    with running_daemon(
        base / "root", "--http", "127.0.0.1:0", "--http-htpasswd", str(htpasswd)
    ) as daemon:
        yield Registry(daemon)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """A layout holding one linux/amd64 image of three gzip'd layers, tagged v1."""
    return write_image_layout(tmp_path_factory.mktemp("layout") / "image")


@pytest.fixture(scope="module")
def image(layout: Layout) -> Image:
    tagged = layout.tags["v1"]
    assert isinstance(tagged, Image)
    return tagged


@pytest.fixture(scope="module")
def pushed(skopeo: Skopeo, registry: Registry, layout: Layout) -> str:
    """The layout's image, pushed as team/app:v1; its reference in the registry."""
    destination = registry.image("team/app", "v1")
    skopeo.push(layout.reference("v1"), destination)
    return destination


def layer_files(directory: Path) -> dict[str, bytes]:
    """The files skopeo's `dir:` transport wrote, by name."""
    return {path.name: path.read_bytes() for path in directory.iterdir()}


# push, inspect


def test_inspect_reports_the_pushed_manifest_digest_and_layers(
    skopeo: Skopeo, pushed: str, image: Image
) -> None:
    inspected = skopeo.json("inspect", "--tls-verify=false", pushed)

    assert inspected["Digest"] == image.manifest.digest
    assert inspected["Layers"] == [layer.digest for layer in image.layers]
    assert (inspected["Architecture"], inspected["Os"]) == ("amd64", "linux")
    assert "v1" in inspected["RepoTags"]


def test_inspect_raw_returns_the_manifest_bytes_as_pushed(
    skopeo: Skopeo, pushed: str, image: Image
) -> None:
    assert skopeo.output("inspect", "--tls-verify=false", "--raw", pushed) == image.manifest.data


def test_inspect_sees_the_manifest_served_with_its_oci_media_type(
    skopeo: Skopeo, pushed: str
) -> None:
    assert skopeo.served_media_type(pushed) == IMAGE_MANIFEST


def test_inspect_config_returns_the_image_config(skopeo: Skopeo, pushed: str, image: Image) -> None:
    raw = skopeo.output("inspect", "--tls-verify=false", "--config", "--raw", pushed)
    config = skopeo.json("inspect", "--tls-verify=false", "--config", pushed)

    assert raw == image.config.data
    assert config["rootfs"]["diff_ids"] == list(image.diff_ids)


def test_inspect_by_digest_finds_the_tagged_manifest(
    skopeo: Skopeo, registry: Registry, pushed: str, image: Image
) -> None:
    by_digest = registry.image("team/app", image.manifest.digest)

    assert skopeo.output("inspect", "--tls-verify=false", "--raw", by_digest) == image.manifest.data


def test_list_tags_lists_every_tag_pushed(
    skopeo: Skopeo, registry: Registry, layout: Layout
) -> None:
    for tag in ("v1", "v2", "latest"):
        skopeo.push(layout.reference("v1"), registry.image("team/tagged", tag))

    listed = skopeo.json("list-tags", "--tls-verify=false", registry.repository("team/tagged"))

    assert sorted(listed["Tags"]) == ["latest", "v1", "v2"]


# pull back


def test_copy_back_to_a_layout_is_byte_identical(
    skopeo: Skopeo, pushed: str, layout: Layout, image: Image, tmp_path: Path
) -> None:
    out = tmp_path / "out"

    skopeo.pull(pushed, f"oci:{out}:v1")

    assert read_blobs(out) == read_blobs(layout.path)
    assert tagged_descriptor(out, "v1")["digest"] == image.manifest.digest


def test_multi_platform_index_round_trips_with_all(
    skopeo: Skopeo, registry: Registry, tmp_path: Path
) -> None:
    source = write_index_layout(tmp_path / "index")
    index = source.tags["v1"]
    assert isinstance(index, ImageIndex)
    destination = registry.image("team/multi", "v1")
    out = tmp_path / "out"

    skopeo.push(source.reference("v1"), destination, "--all")
    skopeo.pull(destination, f"oci:{out}:v1", "--all")

    assert skopeo.output("inspect", "--tls-verify=false", "--raw", destination) == index.index.data
    assert skopeo.served_media_type(destination) == IMAGE_INDEX
    for platform_image in index.images:
        by_digest = registry.image("team/multi", platform_image.manifest.digest)
        raw = skopeo.output("inspect", "--tls-verify=false", "--raw", by_digest)
        assert raw == platform_image.manifest.data
    assert read_blobs(out) == read_blobs(source.path)
    assert tagged_descriptor(out, "v1")["digest"] == index.index.digest


def test_docker_schema2_push_is_served_and_pulled_back_as_docker_schema2(
    skopeo: Skopeo, registry: Registry, layout: Layout, image: Image, tmp_path: Path
) -> None:
    destination = registry.image("team/docker", "v1")
    out = tmp_path / "out"

    skopeo.push(layout.reference("v1"), destination, "--format", "v2s2")
    raw = skopeo.output("inspect", "--tls-verify=false", "--raw", destination)
    inspected = skopeo.json("inspect", "--tls-verify=false", destination)
    skopeo.pull(destination, f"dir:{out}")

    manifest = json.loads(raw)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert skopeo.served_media_type(destination) == DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == DOCKER_CONFIG
    assert [layer["mediaType"] for layer in manifest["layers"]] == [DOCKER_LAYER] * 3
    assert inspected["Layers"] == [layer.digest for layer in image.layers]
    pulled = layer_files(out)
    assert pulled["manifest.json"] == raw
    for blob in (image.config, *image.layers):
        assert pulled[blob.digest.removeprefix("sha256:")] == blob.data


# delete


def test_delete_removes_the_manifest_and_its_tag(
    skopeo: Skopeo, registry: Registry, layout: Layout, tmp_path: Path
) -> None:
    doomed = write_layout(tmp_path / "doomed", {"v1": build_image(2, layer_file_sizes=((999,),))})
    skopeo.push(layout.reference("v1"), registry.image("team/doomed", "keep"))
    skopeo.push(doomed.reference("v1"), registry.image("team/doomed", "gone"))

    skopeo.run("delete", "--tls-verify=false", registry.image("team/doomed", "gone"))

    by_tag = skopeo.fails("inspect", "--tls-verify=false", registry.image("team/doomed", "gone"))
    assert "manifest unknown" in by_tag.stderr
    doomed_digest = doomed.tags["v1"].manifest.digest
    by_digest = skopeo.fails(
        "inspect", "--tls-verify=false", registry.image("team/doomed", doomed_digest)
    )
    assert "manifest unknown" in by_digest.stderr
    listed = skopeo.json("list-tags", "--tls-verify=false", registry.repository("team/doomed"))
    assert listed["Tags"] == ["keep"]
    skopeo.run("inspect", "--tls-verify=false", registry.image("team/doomed", "keep"))


# cross-repository mount


def test_copy_between_repositories_mounts_the_layers(
    skopeo: Skopeo, registry: Registry, pushed: str, image: Image
) -> None:
    destination = registry.image("team/mounted", "v1")

    copied = skopeo.run(
        "--debug",
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--preserve-digests",
        pushed,
        destination,
    )

    log = copied.stderr.decode()
    for layer in image.layers:
        assert f"mount={layer.digest.replace(':', '%3A')}" in log
    assert log.count("... mount OK") == len(image.layers)
    assert skopeo.output("inspect", "--tls-verify=false", "--raw", destination) == (
        image.manifest.data
    )


# basic auth


def test_push_with_the_right_credentials_succeeds(
    skopeo: Skopeo, auth_registry: Registry, layout: Layout, image: Image
) -> None:
    destination = auth_registry.image("team/private", "v1")
    credentials = f"{USER}:{PASSWORD}"

    skopeo.push(layout.reference("v1"), destination, "--dest-creds", credentials)

    inspected = skopeo.json("inspect", "--tls-verify=false", "--creds", credentials, destination)
    assert inspected["Digest"] == image.manifest.digest


def test_push_without_credentials_is_refused(
    skopeo: Skopeo, auth_registry: Registry, layout: Layout
) -> None:
    destination = auth_registry.image("team/anonymous", "v1")

    with pytest.raises(SkopeoError) as refused:
        skopeo.push(layout.reference("v1"), destination)

    assert "authentication required" in refused.value.stderr


def test_push_with_a_wrong_password_is_refused(
    skopeo: Skopeo, auth_registry: Registry, layout: Layout
) -> None:
    destination = auth_registry.image("team/guessed", "v1")

    with pytest.raises(SkopeoError) as refused:
        skopeo.push(layout.reference("v1"), destination, "--dest-creds", f"{USER}:guessed")

    assert "authentication required" in refused.value.stderr


def test_inspect_without_credentials_is_refused(skopeo: Skopeo, auth_registry: Registry) -> None:
    refused = skopeo.fails("inspect", "--tls-verify=false", auth_registry.image("team/private"))

    assert "authentication required" in refused.stderr


# the same store over gRPC


def test_pushed_layers_are_read_with_ctr_in_the_http_namespace(
    registry: Registry, pushed: str, image: Image
) -> None:
    require_tool("ctr", "containerd")
    ctr = Ctr(registry.daemon.address, namespace=NAMESPACE)

    listed = ctr.content_ls()

    for blob in (image.config, *image.layers):
        assert blob.digest in listed
        assert ctr.content_get(blob.digest) == blob.data

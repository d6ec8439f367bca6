"""containerd's tooling workflows with `ctr` 1.6: fetch from a registry, images, leases, GC.

Every test runs against a fresh private containerd (the reference, its garbage collector
on, serving Content, Leases and Images) and against a fresh `contentd serve --http`, and
drives the server only through `ctr`, as an operator would. Images come from real
registries the module starts on loopback: contentd's own HTTP face (on a second contentd)
and docker-registry 2.8, seeded with skopeo from OCI layouts built by
tests/support/oci_layout.py.

`ctr images pull` also unpacks, which needs the Snapshots and Diff services contentd does not
serve; the workflows here fetch with `ctr content fetch`, which records the image as well.

Facts about ctr 1.6 the tests rely on (containerd's `cmd/ctr/commands/`):
- `content fetch REF` takes a lease (`containerd.io/gc.expire` a day ahead), writes every
  blob under it, labels each parent with `containerd.io/gc.ref.content.*` naming its
  children (`m.<i>` for an index's manifests, all of them whatever the platform filter;
  `config` and `l.<i>` for a manifest's config and layers), labels every blob
  `containerd.io/distribution.source.<registry host, no port>=<repository>`, creates the
  image REF with the fetched target, and deletes the lease. Without `--all-platforms` or
  `--platform` it fetches the host's platform only.
- `content ls` pads its table with tabs and joins labels `k=v` with commas, in map order.
  `images ls` and `leases ls` pad with spaces; their labels are sorted. `images ls` shows
  sizes in binary units (`3.2 MiB`) summed over the descriptors of the host's platform.
- `images tag` and `images rm` print each name they made or removed; `images rm` of an
  absent image only warns. `--sync` on the last name waits for a full collection.
- `leases create` prints the lease's id (the server's, when `--id` is absent) and adds
  `containerd.io/gc.expire` unless `--expires 0`; an argument without `=` is a label with
  an empty value, which the server drops. `leases ls` shows `CREATED AT` in RFC 3339.
- `images push` pushes every platform of the image (it needs them all in the store), and
  asks to mount a blob from the repository its distribution source label names when that
  registry host is the destination's.
"""

from __future__ import annotations

import platform
import random
import re
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import pytest
from support.containerd import start_containerd
from support.ctr import Ctr, CtrError, parse_aligned_table, table
from support.daemon import running_daemon
from support.docker_registry import start_docker_registry
from support.oci_layout import (
    IMAGE_INDEX,
    IMAGE_MANIFEST,
    Blob,
    Image,
    ImageIndex,
    Layout,
    build_image,
    build_index,
    random_layer,
    read_blobs,
    tagged_descriptor,
    write_layout,
)
from support.skopeo import Skopeo
from support.tools import require_tool

pytestmark = pytest.mark.conformance

NAMESPACE = "workflows"
GC_REF = "containerd.io/gc.ref.content"
GC_EXPIRE = "containerd.io/gc.expire"
# ctr names the registry by host alone, so both loopback registries share this key.
DISTRIBUTION_SOURCE = "containerd.io/distribution.source.127.0.0.1"
# The platform ctr fetches by default and sizes `images ls` by (platforms.Default()).
HOST_ARCHITECTURE = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "")

IMAGES_COLUMNS = ("REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS")
LEASES_COLUMNS = ("ID", "CREATED AT", "LABELS")
# Server-generated lease ids: nanoseconds of the second, then 3 random bytes in base64url.
GENERATED_LEASE_ID = re.compile(r"\d{1,9}-[A-Za-z0-9_-]{4}")

WAIT_TIMEOUT = 30.0
POLL_INTERVAL = 0.1

T = TypeVar("T")

# What the module's registries hold, in each: repository, tag and what the tag names.
APP = build_image(1)
MULTI = build_index(100)
SHARED_BASE = random_layer(random.Random(300), 0, (4096, 300))
ONE = build_image(301, layer_file_sizes=((8000,), (700,)), base=SHARED_BASE)
TWO = build_image(302, layer_file_sizes=((9000,),), base=SHARED_BASE)
SEEDED: dict[tuple[str, str], Image | ImageIndex] = {
    ("team/app", "v1"): APP,
    ("team/multi", "v1"): MULTI,
    ("team/pair", "one"): ONE,
    ("team/pair", "two"): TWO,
}


@dataclass(frozen=True)
class RegistryServer:
    """A registry the module started, by the host:port clients reach it on."""

    name: str
    host: str

    def reference(self, repository: str, tag: str) -> str:
        """The image reference ctr takes: `HOST:PORT/REPOSITORY:TAG`."""
        return f"{self.host}/{repository}:{tag}"

    def docker(self, repository: str, tag: str) -> str:
        """The same reference as skopeo's `docker://` transport takes it."""
        return f"docker://{self.reference(repository, tag)}"


# Helpers


def wait_until(observe: Callable[[], T], done: Callable[[T], bool], what: str) -> T:
    """Observe until `done` holds, for at most WAIT_TIMEOUT seconds; the last observation."""
    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        seen = observe()
        if done(seen):
            return seen
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {WAIT_TIMEOUT:g} s; last saw {seen!r}")
        time.sleep(POLL_INTERVAL)


def digests(blobs: tuple[Blob, ...]) -> set[str]:
    return {blob.digest for blob in blobs}


def platform_image(index: ImageIndex, architecture: str) -> Image:
    [image] = [image for image in index.images if image.architecture == architecture]
    return image


def parse_labels(cell: str) -> dict[str, str]:
    """The labels of a `k=v,k=v` cell (`-` for none). A value may hold commas itself (a
    distribution source listing several repositories): a piece without `=` continues
    the value before it."""
    if cell == "-":
        return {}
    labels: dict[str, str] = {}
    key = ""
    for piece in cell.split(","):
        if "=" in piece:
            key, value = piece.split("=", 1)
            labels[key] = value
        else:
            labels[key] += "," + piece
    return labels


def content_labels(ctr: Ctr) -> dict[str, dict[str, str]]:
    """Every blob `ctr content ls` lists, with its labels."""
    return {row["DIGEST"]: parse_labels(row["LABELS"]) for row in table(ctr, "content", "ls")}


def images_ls(ctr: Ctr, *filters: str) -> dict[str, dict[str, str]]:
    """The rows of `ctr images ls`, by image name."""
    rows = parse_aligned_table(ctr.run("images", "ls", *filters), IMAGES_COLUMNS)
    return {row["REF"]: row for row in rows}


def leases_ls(ctr: Ctr, *filters: str) -> dict[str, dict[str, str]]:
    """The rows of `ctr leases ls`, by lease id."""
    rows = parse_aligned_table(ctr.run("leases", "ls", *filters), LEASES_COLUMNS)
    return {row["ID"]: row for row in rows}


def binary_size(size: int) -> str:
    """`size` as ctr's progress.Bytes prints it: go-units' CustomSize, `%02.1f %s` in
    powers of 1024."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value = float(size)
    unit = 0
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    return f"{value:02.1f} {units[unit]}"


def shown_size(target: Image | ImageIndex) -> str:
    """The SIZE `ctr images ls` shows: the descriptors of the host's platform, summed."""
    if isinstance(target, ImageIndex):
        image = platform_image(target, HOST_ARCHITECTURE)
        return binary_size(target.index.size + sum(blob.size for blob in image.blobs))
    return binary_size(sum(blob.size for blob in target.blobs))


def manifest_labels(image: Image, repository: str) -> dict[str, str]:
    """The labels `ctr content fetch` leaves on an image manifest."""
    return {
        f"{GC_REF}.config": image.config.digest,
        **{f"{GC_REF}.l.{n}": layer.digest for n, layer in enumerate(image.layers)},
        DISTRIBUTION_SOURCE: repository,
    }


def fetch(ctr: Ctr, reference: str, *flags: str) -> None:
    ctr.run("content", "fetch", "--plain-http", *flags, reference)


def node_seed(request: pytest.FixtureRequest) -> int:
    """A seed of the running test and its parameters: content no other test pushes, so a
    registry the module shares has none of it before the test."""
    return zlib.crc32(request.node.nodeid.encode())


# Servers


@pytest.fixture(scope="module", autouse=True)
def _tools_installed() -> None:
    require_tool("ctr", "containerd")
    require_tool("skopeo", "skopeo")
    require_tool("docker-registry", "docker-registry")


@pytest.fixture(params=["containerd", "contentd"])
def ctr(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ctr]:
    """ctr against a fresh private containerd, or against a fresh `contentd serve --http`,
    each with its garbage collection scheduler on."""
    if request.param == "containerd":
        require_tool("containerd", "containerd")
        with start_containerd(tmp_path / "containerd") as containerd:
            yield Ctr(containerd.address, namespace=NAMESPACE)
    else:
        # Its collection scheduler on, as containerd's is.
        with running_daemon(tmp_path / "contentd", "--http", "127.0.0.1:0", collect=True) as daemon:
            yield Ctr(daemon.address, namespace=NAMESPACE)


@pytest.fixture(scope="module")
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    home = tmp_path_factory.mktemp("skopeo-home")
    (home / "registries.conf").write_text("")
    return Skopeo(home)


@pytest.fixture(scope="module")
def seed_layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """One layout holding every image the registries are seeded with, tagged by position."""
    return write_layout(
        tmp_path_factory.mktemp("seed") / "layout",
        {f"seed{n}": target for n, target in enumerate(SEEDED.values())},
    )


def seed(skopeo: Skopeo, registry: RegistryServer, layout: Layout) -> RegistryServer:
    """Push every image of SEEDED into `registry`."""
    for n, ((repository, tag), target) in enumerate(SEEDED.items()):
        every_platform = ("--all",) if isinstance(target, ImageIndex) else ()
        skopeo.push(layout.reference(f"seed{n}"), registry.docker(repository, tag), *every_platform)
    return registry


@pytest.fixture(scope="module")
def contentd_registry(
    tmp_path_factory: pytest.TempPathFactory, skopeo: Skopeo, seed_layout: Layout
) -> Iterator[RegistryServer]:
    """contentd's HTTP face, on a contentd of its own."""
    root = tmp_path_factory.mktemp("contentd-registry") / "root"
    with running_daemon(root, "--http", "127.0.0.1:0") as daemon:
        registry = RegistryServer("contentd-http", urlsplit(daemon.http_url).netloc)
        yield seed(skopeo, registry, seed_layout)


@pytest.fixture(scope="module")
def docker_registry(
    tmp_path_factory: pytest.TempPathFactory, skopeo: Skopeo, seed_layout: Layout
) -> Iterator[RegistryServer]:
    """docker-registry 2.8."""
    process = start_docker_registry(tmp_path_factory.mktemp("docker-registry"))
    try:
        registry = RegistryServer("docker-registry", urlsplit(process.url).netloc)
        yield seed(skopeo, registry, seed_layout)
    finally:
        process.stop()


# Each registry's name in test ids, and its fixture.
REGISTRIES = {"docker-registry": "docker_registry", "contentd-http": "contentd_registry"}


@pytest.fixture(params=list(REGISTRIES))
def source(request: pytest.FixtureRequest) -> RegistryServer:
    """The registry a test fetches from."""
    registry: RegistryServer = request.getfixturevalue(REGISTRIES[request.param])
    return registry


@pytest.fixture
def destination(source: RegistryServer, request: pytest.FixtureRequest) -> RegistryServer:
    """The registry a test pushes to: the other one."""
    [other] = [fixture for name, fixture in REGISTRIES.items() if name != source.name]
    registry: RegistryServer = request.getfixturevalue(other)
    return registry


@pytest.fixture
def registry(docker_registry: RegistryServer) -> RegistryServer:
    """The registry of tests about the server rather than the registry: the reference one."""
    return docker_registry


# 1. content fetch


def test_content_fetch_stores_every_blob_of_an_image_byte_for_byte(
    ctr: Ctr, source: RegistryServer
) -> None:
    fetch(ctr, source.reference("team/app", "v1"))

    assert sorted(ctr.content_ls()) == sorted(digests(APP.blobs))
    for blob in APP.blobs:
        assert ctr.content_get(blob.digest) == blob.data


def test_content_fetch_labels_the_manifest_with_its_config_and_layers(
    ctr: Ctr, source: RegistryServer
) -> None:
    fetch(ctr, source.reference("team/app", "v1"))

    labels = content_labels(ctr)

    assert labels[APP.manifest.digest] == manifest_labels(APP, "team/app")
    for blob in (APP.config, *APP.layers):
        assert labels[blob.digest] == {DISTRIBUTION_SOURCE: "team/app"}


def test_content_fetch_of_an_index_for_all_platforms_stores_every_blob_byte_for_byte(
    ctr: Ctr, source: RegistryServer
) -> None:
    fetch(ctr, source.reference("team/multi", "v1"), "--all-platforms")

    assert sorted(ctr.content_ls()) == sorted(digests(MULTI.blobs))
    for blob in MULTI.blobs:
        assert ctr.content_get(blob.digest) == blob.data


def test_content_fetch_labels_an_index_and_each_of_its_manifests(
    ctr: Ctr, source: RegistryServer
) -> None:
    fetch(ctr, source.reference("team/multi", "v1"), "--all-platforms")

    labels = content_labels(ctr)

    assert labels[MULTI.index.digest] == {
        **{f"{GC_REF}.m.{n}": image.manifest.digest for n, image in enumerate(MULTI.images)},
        DISTRIBUTION_SOURCE: "team/multi",
    }
    for image in MULTI.images:
        assert labels[image.manifest.digest] == manifest_labels(image, "team/multi")


def test_content_fetch_of_an_index_for_one_platform_stores_only_that_platform(
    ctr: Ctr, source: RegistryServer
) -> None:
    arm64 = platform_image(MULTI, "arm64")

    fetch(ctr, source.reference("team/multi", "v1"), "--platform", "linux/arm64")

    assert sorted(ctr.content_ls()) == sorted({MULTI.index.digest} | digests(arm64.blobs))
    # The index names every manifest, the one not fetched included.
    assert {
        key: value
        for key, value in content_labels(ctr)[MULTI.index.digest].items()
        if GC_REF in key
    } == {f"{GC_REF}.m.{n}": image.manifest.digest for n, image in enumerate(MULTI.images)}


def test_content_fetch_records_the_image_under_its_reference(
    ctr: Ctr, source: RegistryServer
) -> None:
    name = source.reference("team/app", "v1")

    fetch(ctr, name)

    assert ctr.run("images", "ls", "--quiet").decode().split() == [name]


def test_content_fetch_leaves_no_lease_behind(ctr: Ctr, source: RegistryServer) -> None:
    fetch(ctr, source.reference("team/app", "v1"))

    assert ctr.run("leases", "ls", "--quiet") == b""


def test_content_fetch_again_changes_nothing(ctr: Ctr, registry: RegistryServer) -> None:
    name = registry.reference("team/app", "v1")
    fetch(ctr, name)
    before = content_labels(ctr)

    fetch(ctr, name)

    assert content_labels(ctr) == before
    assert list(images_ls(ctr)) == [name]


# 2. images ls, tag, rm, push


def test_images_ls_shows_an_image_with_its_type_digest_size_and_platform(
    ctr: Ctr, registry: RegistryServer
) -> None:
    name = registry.reference("team/app", "v1")
    fetch(ctr, name)

    assert images_ls(ctr) == {
        name: {
            "REF": name,
            "TYPE": IMAGE_MANIFEST,
            "DIGEST": APP.manifest.digest,
            "SIZE": shown_size(APP),
            "PLATFORMS": "linux/amd64",
            "LABELS": "-",
        }
    }


def test_images_ls_shows_an_index_with_every_platform(ctr: Ctr, registry: RegistryServer) -> None:
    if not HOST_ARCHITECTURE:
        pytest.skip(
            f"ctr sizes images by the host's platform; no image here is {platform.machine()}"
        )
    name = registry.reference("team/multi", "v1")
    fetch(ctr, name, "--all-platforms")

    assert images_ls(ctr) == {
        name: {
            "REF": name,
            "TYPE": IMAGE_INDEX,
            "DIGEST": MULTI.index.digest,
            "SIZE": shown_size(MULTI),
            "PLATFORMS": "linux/amd64,linux/arm64",
            "LABELS": "-",
        }
    }


def test_images_ls_filters_by_name(ctr: Ctr, registry: RegistryServer) -> None:
    app = registry.reference("team/app", "v1")
    one = registry.reference("team/pair", "one")
    fetch(ctr, app)
    fetch(ctr, one)

    assert list(images_ls(ctr)) == sorted([app, one])
    assert list(images_ls(ctr, f"name=={one}")) == [one]
    assert ctr.run("images", "ls", "--quiet", "name~=team/app") == f"{app}\n".encode()


def test_images_ls_with_a_malformed_filter_reports_invalid_argument(ctr: Ctr) -> None:
    with pytest.raises(CtrError) as refused:
        ctr.run("images", "ls", "name==")

    assert "failed to list images" in refused.value.stderr
    assert "invalid argument" in refused.value.stderr


def test_images_tag_makes_a_second_name_for_the_same_target(
    ctr: Ctr, registry: RegistryServer
) -> None:
    name = registry.reference("team/app", "v1")
    fetch(ctr, name)

    printed = ctr.run("images", "tag", name, "local/app:stable", "local/app:latest")

    assert printed == b"local/app:stable\nlocal/app:latest\n"
    listed = images_ls(ctr)
    assert sorted(listed) == sorted([name, "local/app:stable", "local/app:latest"])
    for row in listed.values():
        assert (row["TYPE"], row["DIGEST"], row["SIZE"]) == (
            IMAGE_MANIFEST,
            APP.manifest.digest,
            shown_size(APP),
        )


def test_images_tag_onto_an_existing_name_fails_unless_forced(
    ctr: Ctr, registry: RegistryServer
) -> None:
    app = registry.reference("team/app", "v1")
    one = registry.reference("team/pair", "one")
    fetch(ctr, app)
    fetch(ctr, one)

    with pytest.raises(CtrError) as refused:
        ctr.run("images", "tag", app, one)
    assert f'image "{one}": already exists' in refused.value.stderr
    assert images_ls(ctr)[one]["DIGEST"] == ONE.manifest.digest

    ctr.run("images", "tag", "--force", app, one)
    assert images_ls(ctr)[one]["DIGEST"] == APP.manifest.digest


def test_images_tag_of_a_missing_image_reports_not_found(ctr: Ctr) -> None:
    with pytest.raises(CtrError) as refused:
        ctr.run("images", "tag", "local/missing:v1", "local/other:v1")

    assert 'image "local/missing:v1": not found' in refused.value.stderr
    assert ctr.run("images", "ls", "--quiet") == b""


def test_images_rm_removes_only_the_named_image(ctr: Ctr, registry: RegistryServer) -> None:
    name = registry.reference("team/app", "v1")
    fetch(ctr, name)
    ctr.run("images", "tag", name, "local/app:stable")

    printed = ctr.run("images", "rm", name)

    assert printed == f"{name}\n".encode()
    assert list(images_ls(ctr)) == ["local/app:stable"]


def test_images_rm_of_a_missing_image_only_warns(ctr: Ctr) -> None:
    assert ctr.run("images", "rm", "local/missing:v1") == b""


def test_images_label_sets_labels_that_ls_shows(ctr: Ctr, registry: RegistryServer) -> None:
    name = registry.reference("team/app", "v1")
    fetch(ctr, name)

    ctr.run("images", "label", name, "team=storage", "tier=gold")

    assert images_ls(ctr)[name]["LABELS"] == "team=storage,tier=gold"
    assert list(images_ls(ctr, "labels.tier==gold")) == [name]


@pytest.mark.parametrize("kind", ["image", "index"])
def test_images_push_to_the_other_registry_round_trips_byte_for_byte(
    ctr: Ctr,
    source: RegistryServer,
    destination: RegistryServer,
    skopeo: Skopeo,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    kind: str,
) -> None:
    # Content of this test alone: the destination has none of it, so every blob is
    # uploaded (no registry can mount what it never had).
    target: Image | ImageIndex = (
        build_image(node_seed(request)) if kind == "image" else build_index(node_seed(request))
    )
    every_platform = ("--all",) if kind == "index" else ()
    layout = write_layout(tmp_path / "layout", {"v1": target})
    repository = f"pushed/{kind}-{node_seed(request):08x}"
    skopeo.push(layout.reference("v1"), source.docker(repository, "v1"), *every_platform)
    local = source.reference(repository, "v1")
    fetch(ctr, local, "--all-platforms")

    ctr.run("images", "push", "--plain-http", destination.reference(repository, "v1"), local)

    back = tmp_path / "back"
    skopeo.pull(destination.docker(repository, "v1"), f"oci:{back}:v1", *every_platform)
    assert tagged_descriptor(back, "v1")["digest"] == target.manifest.digest
    assert read_blobs(back) == {blob.digest: blob.data for blob in target.blobs}


def test_images_push_of_a_missing_image_reports_not_found(
    ctr: Ctr, registry: RegistryServer
) -> None:
    name = registry.reference("pushed/none", "v1")

    with pytest.raises(CtrError) as refused:
        ctr.run("images", "push", "--plain-http", name)

    assert f'unable to resolve image to manifest: image "{name}": not found' in refused.value.stderr


# 3. leases


def test_leases_create_with_an_id_and_labels_lists_them(ctr: Ctr) -> None:
    before = datetime.now().astimezone().replace(microsecond=0)

    printed = ctr.run("leases", "create", "--id", "build-1", "team=storage", "purpose=test")

    after = datetime.now().astimezone()
    assert printed == b"build-1\n"
    [(lease_id, row)] = leases_ls(ctr).items()
    assert lease_id == "build-1"
    assert before <= datetime.fromisoformat(row["CREATED AT"]) <= after
    labels = parse_labels(row["LABELS"])
    expires = datetime.fromisoformat(labels.pop(GC_EXPIRE))
    assert labels == {"purpose": "test", "team": "storage"}
    assert before + timedelta(hours=24) <= expires <= after + timedelta(hours=24)


def test_leases_create_with_expires_sets_the_expiry_that_far_ahead(ctr: Ctr) -> None:
    before = datetime.now().astimezone().replace(microsecond=0)

    ctr.run("leases", "create", "--id", "short", "--expires", "90m")

    after = datetime.now().astimezone()
    labels = parse_labels(leases_ls(ctr)["short"]["LABELS"])
    expires = datetime.fromisoformat(labels[GC_EXPIRE])
    assert before + timedelta(minutes=90) <= expires <= after + timedelta(minutes=90)


def test_leases_create_with_expires_zero_never_expires(ctr: Ctr) -> None:
    ctr.run("leases", "create", "--id", "forever", "--expires", "0", "team=storage")

    assert leases_ls(ctr)["forever"]["LABELS"] == "team=storage"


def test_leases_create_drops_a_label_without_a_value(ctr: Ctr) -> None:
    ctr.run("leases", "create", "--id", "flagged", "--expires", "0", "flag", "team=storage")

    assert leases_ls(ctr)["flagged"]["LABELS"] == "team=storage"


def test_leases_create_without_an_id_prints_the_id_the_server_made(ctr: Ctr) -> None:
    printed = ctr.run("leases", "create").decode()

    lease_id = printed.strip()
    assert printed == f"{lease_id}\n"
    assert GENERATED_LEASE_ID.fullmatch(lease_id), lease_id
    assert ctr.run("leases", "ls", "--quiet") == printed.encode()


def test_leases_create_of_an_existing_id_reports_already_exists(ctr: Ctr) -> None:
    ctr.run("leases", "create", "--id", "build-1", "first=yes")

    with pytest.raises(CtrError) as refused:
        ctr.run("leases", "create", "--id", "build-1", "second=yes")

    assert 'lease "build-1": already exists' in refused.value.stderr
    assert "first=yes" in leases_ls(ctr)["build-1"]["LABELS"]


def test_leases_ls_lists_by_id_and_filters(ctr: Ctr) -> None:
    for lease_id, team in (("c", "storage"), ("a", "storage"), ("b", "network")):
        ctr.run("leases", "create", "--id", lease_id, f"team={team}")

    assert ctr.run("leases", "ls", "--quiet") == b"a\nb\nc\n"
    assert ctr.run("leases", "ls", "--quiet", "labels.team==storage") == b"a\nc\n"
    assert ctr.run("leases", "ls", "--quiet", "id==b") == b"b\n"
    assert ctr.run("leases", "ls", "--quiet", "id==a", "labels.team==network") == b"a\nb\n"


def test_leases_ls_with_a_malformed_filter_reports_invalid_argument(ctr: Ctr) -> None:
    with pytest.raises(CtrError) as refused:
        ctr.run("leases", "ls", "labels.team==storage,")

    assert "failed to list leases" in refused.value.stderr
    assert "invalid argument" in refused.value.stderr


def test_leases_rm_removes_the_lease_and_prints_its_id(ctr: Ctr) -> None:
    ctr.run("leases", "create", "--id", "gone")
    ctr.run("leases", "create", "--id", "kept")

    printed = ctr.run("leases", "rm", "gone")

    assert printed == b"gone\n"
    assert ctr.run("leases", "ls", "--quiet") == b"kept\n"


def test_leases_rm_sync_removes_the_lease(ctr: Ctr) -> None:
    ctr.run("leases", "create", "--id", "first")
    ctr.run("leases", "create", "--id", "second")

    assert ctr.run("leases", "rm", "--sync", "first", "second") == b"first\nsecond\n"
    assert ctr.run("leases", "ls", "--quiet") == b""


def test_leases_rm_of_a_missing_lease_reports_not_found(ctr: Ctr) -> None:
    with pytest.raises(CtrError) as refused:
        ctr.run("leases", "rm", "missing")

    assert 'lease "missing": not found' in refused.value.stderr


# 4. garbage collection


def test_images_rm_sync_frees_the_unique_blobs_and_keeps_the_shared_layer(
    ctr: Ctr, registry: RegistryServer
) -> None:
    one = registry.reference("team/pair", "one")
    two = registry.reference("team/pair", "two")
    fetch(ctr, one)
    fetch(ctr, two)
    shared = ONE.layers[0]
    assert shared == TWO.layers[0]
    assert sorted(ctr.content_ls()) == sorted(digests(ONE.blobs) | digests(TWO.blobs))

    ctr.run("images", "rm", "--sync", one)

    assert sorted(ctr.content_ls()) == sorted(digests(TWO.blobs))
    assert ctr.content_get(shared.digest) == shared.data
    assert list(images_ls(ctr)) == [two]


def test_images_rm_sync_of_one_of_two_names_frees_nothing(
    ctr: Ctr, registry: RegistryServer
) -> None:
    name = registry.reference("team/app", "v1")
    fetch(ctr, name)
    ctr.run("images", "tag", name, "local/app:stable")

    ctr.run("images", "rm", "--sync", name)

    assert sorted(ctr.content_ls()) == sorted(digests(APP.blobs))


def test_images_rm_sync_of_the_last_image_frees_every_blob(
    ctr: Ctr, registry: RegistryServer
) -> None:
    name = registry.reference("team/multi", "v1")
    fetch(ctr, name, "--all-platforms")

    ctr.run("images", "rm", "--sync", name)

    assert ctr.content_ls() == []


def test_images_rm_without_sync_lets_the_collector_free_the_blobs_soon(
    ctr: Ctr, registry: RegistryServer
) -> None:
    # The collector's defaults: a deletion schedules a collection at the next tick.
    one = registry.reference("team/pair", "one")
    two = registry.reference("team/pair", "two")
    fetch(ctr, one)
    fetch(ctr, two)

    ctr.run("images", "rm", two)

    wait_until(
        lambda: sorted(ctr.content_ls()),
        lambda listed: listed == sorted(digests(ONE.blobs)),
        "the blobs only the removed image held were not collected",
    )

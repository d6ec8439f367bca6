"""The parts of a pull that need no registry: references, platforms, ref keys and labels,
challenges and credentials, and write_blob's lazy sources."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contentd.client import Credentials, Platform, open_store, parse_platform, parse_reference
from contentd.client._auth import find_credentials, parse_challenge
from contentd.client._manifests import (
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Child,
    Manifest,
    child_gc_labels,
    distribution_source_label,
    parse_manifest,
    ref_key,
    select_children,
)
from contentd.client._platforms import PlatformMatcher
from contentd.content import Descriptor, digest_of, write_blob
from contentd.errdefs import InvalidArgument, NotFound

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
D1, D2, D3 = (digest_of(bytes([n])) for n in range(3))


@pytest.mark.parametrize(
    ("text", "host", "repository", "tag", "digest"),
    [
        ("alpine", "docker.io", "library/alpine", "latest", ""),
        ("user/app:v1", "docker.io", "user/app", "v1", ""),
        ("docker.io/alpine:3", "docker.io", "library/alpine", "3", ""),
        ("index.docker.io/user/app", "docker.io", "user/app", "latest", ""),
        ("localhost/app", "localhost", "app", "latest", ""),
        ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000", "team/app", "v1", ""),
        ("registry.example/a/b/c@" + D1, "registry.example", "a/b/c", "", D1),
        ("registry.example/app:v1@" + D1, "registry.example", "app", "v1", D1),
        ("[::1]:5000/app", "[::1]:5000", "app", "latest", ""),
    ],
)
def test_references_parse_as_docker_reads_them(
    text: str, host: str, repository: str, tag: str, digest: str
) -> None:
    parsed = parse_reference(text)
    assert (parsed.host, parsed.repository, parsed.tag, parsed.digest) == (
        host,
        repository,
        tag,
        digest,
    )


def test_docker_hub_is_reached_on_its_api_host() -> None:
    assert parse_reference("alpine").api_host == "registry-1.docker.io"
    assert parse_reference("127.0.0.1:5000/app").api_host == "127.0.0.1:5000"


@pytest.mark.parametrize(
    "text",
    ["", " app", "Registry.example", "host/App", "host/app:", "host/app@sha256:zz", "host//app"],
)
def test_malformed_references_are_invalid_arguments(text: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_reference(text)
    assert refused.value.reason == "REFERENCE_INVALID"


@given(
    st.from_regex(r"[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){1,2}(:[0-9]{1,5})?", fullmatch=True),
    st.lists(
        st.from_regex(r"[a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,2}", fullmatch=True),
        min_size=1,
        max_size=3,
    ),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True),
)
def test_a_reference_reads_back_as_it_is_written(
    host: str, components: list[str], tag: str
) -> None:
    text = f"{host}/{'/'.join(components)}:{tag}"
    assert str(parse_reference(text)) == text


@pytest.mark.parametrize(
    ("specifier", "platform"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("linux/arm", Platform("linux", "arm")),
        ("linux/arm/7", Platform("linux", "arm", "v7")),
        ("windows/amd64", Platform("windows", "amd64")),
    ],
)
def test_platforms_parse_as_containerd_parses_them(specifier: str, platform: Platform) -> None:
    assert parse_platform(specifier) == platform


def test_an_unknown_lone_platform_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        parse_platform("plan10")


def test_amd64_prefers_itself_and_also_runs_386() -> None:
    matcher = PlatformMatcher(Platform("linux", "amd64"))
    assert matcher.rank(Platform("linux", "amd64")) == 0
    assert matcher.rank(Platform("linux", "386")) == 1
    assert matcher.rank(Platform("linux", "arm64")) is None
    assert matcher.rank(Platform("windows", "amd64")) is None


def test_arm64_falls_back_to_arm_variants_best_first() -> None:
    matcher = PlatformMatcher(parse_platform("linux/arm64"))
    ranks = [matcher.rank(Platform("linux", "arm", f"v{n}")) for n in (8, 7, 6, 5)]
    assert ranks == sorted(ranks)
    assert None not in ranks


def index_of(*platforms: Platform | None) -> Manifest:
    return Manifest(
        OCI_INDEX,
        tuple(
            Child(Descriptor(OCI_MANIFEST, digest_of(bytes([n])), 10), platform)
            for n, platform in enumerate(platforms)
        ),
    )


def test_an_index_gives_the_best_match_for_the_platform() -> None:
    index = index_of(Platform("linux", "386"), Platform("linux", "amd64"), None)
    chosen = select_children(index, PlatformMatcher(Platform("linux", "amd64")))
    assert [c.platform for c in chosen] == [Platform("linux", "amd64")]
    assert select_children(index, None) == index.children


def test_an_index_without_the_platform_is_not_found() -> None:
    with pytest.raises(NotFound, match="linux/s390x"):
        select_children(
            index_of(Platform("linux", "amd64")), PlatformMatcher(Platform("linux", "s390x"))
        )


def test_ref_keys_are_containerds() -> None:
    assert ref_key(Descriptor(OCI_MANIFEST, D1, 1)) == f"manifest-{D1}"
    assert ref_key(Descriptor(OCI_INDEX, D1, 1)) == f"index-{D1}"
    assert ref_key(Descriptor(DOCKER_LAYER, D1, 1)) == f"layer-{D1}"
    assert ref_key(Descriptor(OCI_CONFIG, D1, 1)) == f"config-{D1}"
    assert ref_key(Descriptor("text/plain", D1, 1)) == f"unknown-{D1}"
    named = Descriptor(OCI_MANIFEST, D1, 1, {"org.opencontainers.image.ref.name": "v1"})
    assert ref_key(named) == f"manifest-v1@{D1}"


def test_children_are_labelled_as_containerds_fetch_labels_them() -> None:
    manifest = [
        Child(Descriptor(OCI_CONFIG, D1, 1)),
        *(Child(Descriptor(LAYER, d, 1)) for d in (D2, D3)),
    ]
    assert child_gc_labels(manifest) == {
        "containerd.io/gc.ref.content.config": D1,
        "containerd.io/gc.ref.content.l.0": D2,
        "containerd.io/gc.ref.content.l.1": D3,
    }
    others = [Child(Descriptor("text/plain", d, 1)) for d in (D1, D2)]
    assert child_gc_labels(others) == {
        "containerd.io/gc.ref.content.0": D1,
        "containerd.io/gc.ref.content.1": D2,
    }


def test_the_distribution_source_label_merges_repositories_sorted() -> None:
    key, value = distribution_source_label("127.0.0.1:5000", "team/b", "team/c,team/a")
    assert key == "containerd.io/distribution.source.127.0.0.1"
    assert value == "team/a,team/b,team/c"


def test_a_manifest_must_be_what_it_is_served_as() -> None:
    data = json.dumps({"mediaType": OCI_INDEX, "manifests": []}).encode()
    with pytest.raises(InvalidArgument) as refused:
        parse_manifest(Descriptor(DOCKER_MANIFEST, digest_of(data), len(data)), data)
    assert refused.value.reason == "MANIFEST_INVALID"


def test_challenges_parse_with_quoted_and_bare_parameters() -> None:
    parsed = parse_challenge(
        'Bearer realm="https://auth.example/token",service=registry.example,'
        'scope="repository:team/app:pull,push"'
    )
    assert parsed is not None
    assert parsed.scheme == "bearer"
    assert parsed.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:team/app:pull,push",
    }
    basic = parse_challenge('Basic realm="Registry Realm"')
    assert basic is not None
    assert basic.scheme == "basic"


def write_auths(path: Path, auths: dict[str, str]) -> Path:
    entries = {
        key: {"auth": base64.b64encode(pair.encode()).decode()} for key, pair in auths.items()
    }
    path.write_text(json.dumps({"auths": entries}))
    return path


def test_the_most_specific_auth_entry_wins(tmp_path: Path) -> None:
    auth = write_auths(
        tmp_path / "auth.json",
        {"reg.example": "host:1", "reg.example/team": "team:2", "https://other.example/v1/": "o:3"},
    )
    assert find_credentials("reg.example", "team/app", auth_file=auth) == Credentials("team", "2")
    assert find_credentials("reg.example", "solo/app", auth_file=auth) == Credentials("host", "1")
    assert find_credentials("other.example", "x", auth_file=auth) == Credentials("o", "3")
    assert find_credentials("none.example", "x", auth_file=auth) is None


def test_registry_auth_file_comes_before_docker_config(tmp_path: Path) -> None:
    docker = tmp_path / ".docker"
    docker.mkdir()
    write_auths(docker / "config.json", {"reg.example": "docker:1", "only.example": "d:2"})
    auth = write_auths(tmp_path / "auth.json", {"reg.example": "podman:1"})
    env = {"HOME": str(tmp_path), "REGISTRY_AUTH_FILE": str(auth)}
    assert find_credentials("reg.example", "app", env=env) == Credentials("podman", "1")
    assert find_credentials("only.example", "app", env=env) == Credentials("d", "2")


def test_credentials_never_show_their_password() -> None:
    assert "s3cret" not in repr(Credentials("me", "s3cret"))


class CountingSource(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(size)


def test_a_lazy_source_is_not_read_when_the_content_is_stored(tmp_path: Path) -> None:
    data = b"small blob"
    with open_store(tmp_path / "store") as store:
        write_blob(store, "first", data)
        source = CountingSource(data)

        assert write_blob(store, "again", source, len(data), digest_of(data), lazy=True) == (
            digest_of(data)
        )
        assert source.reads == 0


def test_a_lazy_small_source_is_stored_through_a_writer(tmp_path: Path) -> None:
    data = b"small blob"
    with open_store(tmp_path / "store") as store:
        write_blob(store, "ref", CountingSource(data), len(data), digest_of(data), lazy=True)
        with store.reader_at(digest_of(data)) as reader:
            assert reader.read() == data

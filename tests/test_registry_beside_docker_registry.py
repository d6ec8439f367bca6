"""The registry face answers as docker-registry 2.8 does where the distribution spec leaves
the status open: each case sends the same requests to contentd's HTTP face and to a real
docker-registry, and both must answer each step with the same status and error code.

Repositories are fresh per case and per registry, so the two stores see the same history.

Left out are the requests where docker-registry departs from the spec, or answers worse,
and contentd deliberately answers otherwise:
- it serves an index only to a GET whose Accept names index types (contentd serves it
  whatever the Accept);
- it appends a PATCH whose Content-Range does not start at the upload's offset (contentd
  refuses it: 416 BLOB_UPLOAD_INVALID);
- it refuses to DELETE a manifest by tag (contentd deletes the tag, as the spec allows);
- it answers a GET of a manifest by a malformed digest with a 500 that names a storage path
  (contentd: 400 DIGEST_INVALID);
- it answers `tags/list` of a repository with blobs but no tags 404 NAME_UNKNOWN (contentd:
  200 and no tags);
- its answer to a DELETE of a blob lacks the `Docker-Content-Digest` that the Docker
  registry API documents (contentd sends it);
- it ignores `n` on `tags/list` and lists every tag (contentd pages them, with a `Link`
  to the next page), and lists tags in byte order (contentd: the spec's lexical order,
  case-insensitive);
- it answers a HEAD with a Range 206 (contentd answers as to a HEAD without one, 200);
- its upload URLs carry a signed `_state`, so an upload id of its own cannot be made up.
"""

from __future__ import annotations

import http.client
import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from support.daemon import DaemonProcess, start_daemon
from support.docker_registry import DOCKER_REGISTRY, DockerRegistryProcess, start_docker_registry
from support.registry_http import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Answer,
    RegistryClient,
    digest_of,
    image_manifest,
    index_of,
)
from support.tools import require_tool

pytestmark = pytest.mark.conformance


@pytest.fixture(scope="module")
def contentd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryClient]:
    daemon: DaemonProcess = start_daemon(
        tmp_path_factory.mktemp("contentd") / "root", "--http", "127.0.0.1:0"
    )
    try:
        yield RegistryClient(daemon.http_url, forbidden=(str(daemon.root), "Traceback"))
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryClient]:
    require_tool(DOCKER_REGISTRY, "docker-registry")
    running: DockerRegistryProcess = start_docker_registry(tmp_path_factory.mktemp("reference"))
    try:
        yield RegistryClient(running.url)
    finally:
        running.stop()


# The requests of each case, written once and sent to both registries.


def push_blob(registry: RegistryClient, repo: str, data: bytes) -> Answer:
    """POST then PUT with the bytes: the push both registries take (docker-registry
    answers a monolithic POST by opening a session)."""
    return registry.complete_upload(registry.start_upload(repo), digest_of(data), data)


#: Bytes shared by both registries' runs of a case, so digests in the answers agree.
CONFIG, LAYER, OTHER_LAYER = (os.urandom(size) for size in (50, 300, 200))


#: The image most cases push: CONFIG and LAYER, tagged v1.
IMAGE = image_manifest(CONFIG, [LAYER])


def push_image(registry: RegistryClient, repo: str) -> list[Answer]:
    """Push IMAGE's blobs, then IMAGE as v1."""
    return [
        push_blob(registry, repo, CONFIG),
        push_blob(registry, repo, LAYER),
        registry.put_manifest(repo, "v1", IMAGE, OCI_MANIFEST),
    ]


def manifest_missing_its_layer(registry: RegistryClient, repo: str) -> list[Answer]:
    return [
        push_blob(registry, repo, CONFIG),
        registry.put_manifest(repo, "v1", IMAGE, OCI_MANIFEST),
        registry.get(f"/v2/{repo}/manifests/v1"),
    ]


def manifest_missing_its_config(registry: RegistryClient, repo: str) -> list[Answer]:
    return [
        push_blob(registry, repo, LAYER),
        registry.put_manifest(repo, "v1", IMAGE, OCI_MANIFEST),
    ]


def manifest_naming_a_blob_of_another_repository(
    registry: RegistryClient, repo: str
) -> list[Answer]:
    return [
        push_blob(registry, repo, CONFIG),
        push_blob(registry, f"{repo}-elsewhere", OTHER_LAYER),
        registry.put_manifest(repo, "v1", image_manifest(CONFIG, [OTHER_LAYER]), OCI_MANIFEST),
    ]


def index_missing_a_manifest(registry: RegistryClient, repo: str) -> list[Answer]:
    never_pushed = image_manifest(CONFIG, [OTHER_LAYER])
    return [
        *push_image(registry, repo),
        registry.put_manifest(
            repo,
            "multi",
            index_of([(OCI_MANIFEST, IMAGE), (OCI_MANIFEST, never_pushed)]),
            OCI_INDEX,
        ),
    ]


def complete_manifest_and_index(registry: RegistryClient, repo: str) -> list[Answer]:
    return [
        *push_image(registry, repo),
        registry.put_manifest(repo, "multi", index_of([(OCI_MANIFEST, IMAGE)]), OCI_INDEX),
        registry.get(f"/v2/{repo}/manifests/multi", headers={"Accept": OCI_INDEX}),
    ]


def unknown_blob_and_manifest(registry: RegistryClient, repo: str) -> list[Answer]:
    push_blob(registry, repo, CONFIG)  # the repository exists; what is asked for does not
    return [
        registry.get(f"/v2/{repo}/blobs/{digest_of(LAYER)}"),
        registry.get(f"/v2/{repo}/manifests/v9"),
        registry.get(f"/v2/{repo}/manifests/{digest_of(LAYER)}"),
    ]


def upload_completed_with_the_wrong_digest(registry: RegistryClient, repo: str) -> list[Answer]:
    location = registry.start_upload(repo)
    return [registry.complete_upload(location, digest_of(CONFIG), LAYER)]


def manifest_that_is_no_json(registry: RegistryClient, repo: str) -> list[Answer]:
    return [registry.put_manifest(repo, "v1", b"{not json", OCI_MANIFEST)]


def status_only(answer: Answer) -> Answer:
    """`answer` with its body and headers left out of the comparison."""
    return Answer(answer.status, http.client.HTTPMessage(), b"")


def deleted_blob_and_manifest(registry: RegistryClient, repo: str) -> list[Answer]:
    return [
        *push_image(registry, repo),
        registry.delete(f"/v2/{repo}/manifests/{digest_of(IMAGE)}"),
        registry.get(f"/v2/{repo}/manifests/{digest_of(IMAGE)}"),
        registry.get(f"/v2/{repo}/manifests/v1"),
        registry.delete(f"/v2/{repo}/manifests/{digest_of(IMAGE)}"),
        # Its own answer differs on purpose (see above); what it does must not.
        status_only(registry.delete(f"/v2/{repo}/blobs/{digest_of(LAYER)}")),
        registry.get(f"/v2/{repo}/blobs/{digest_of(LAYER)}"),
        registry.head(f"/v2/{repo}/blobs/{digest_of(LAYER)}"),
        registry.delete(f"/v2/{repo}/blobs/{digest_of(LAYER)}"),
    ]


def unknown_repository(registry: RegistryClient, repo: str) -> list[Answer]:
    return [
        registry.get(f"/v2/{repo}/tags/list"),
        registry.get(f"/v2/{repo}/blobs/{digest_of(LAYER)}"),
        registry.get(f"/v2/{repo}/manifests/v1"),
        registry.head(f"/v2/{repo}/manifests/v1"),
    ]


def upload_sessions(registry: RegistryClient, repo: str) -> list[Answer]:
    location = registry.start_upload(repo)
    return [
        registry.get(location),
        registry.request("PUT", location, LAYER, {"Content-Type": "application/octet-stream"}),
        registry.complete_upload(location, "sha256:nothex", LAYER),
        registry.delete(location),
        registry.get(location),
    ]


def malformed_references(registry: RegistryClient, repo: str) -> list[Answer]:
    push_blob(registry, repo, CONFIG)
    return [
        registry.get(f"/v2/{repo}/blobs/sha256:nothex"),
        registry.put_manifest(repo, "sha256:" + "0" * 64, image_manifest(CONFIG, []), OCI_MANIFEST),
    ]


def chunked_upload(registry: RegistryClient, repo: str) -> list[Answer]:
    location = registry.start_upload(repo)
    first = registry.patch_chunk(location, LAYER[:100], 0)
    second = registry.patch_chunk(first.header("Location") or location, LAYER[100:250], 100)
    status = registry.get(second.header("Location") or location)
    done = registry.complete_upload(
        status.header("Location") or location, digest_of(LAYER), LAYER[250:]
    )
    return [first, second, status, done, registry.get(f"/v2/{repo}/blobs/{digest_of(LAYER)}")]


def range_reads(registry: RegistryClient, repo: str) -> list[Answer]:
    push_blob(registry, repo, LAYER)
    blob = f"/v2/{repo}/blobs/{digest_of(LAYER)}"
    return [
        registry.get(blob, headers={"Range": "bytes=10-19"}),
        registry.get(blob, headers={"Range": "bytes=-5"}),
        registry.head(blob),
    ]


def conditional_range_reads(registry: RegistryClient, repo: str) -> list[Answer]:
    push_blob(registry, repo, LAYER)
    blob = f"/v2/{repo}/blobs/{digest_of(LAYER)}"
    other = f'"{digest_of(CONFIG)}"'
    return [
        registry.get(blob, headers={"Range": "bytes=10-19", "If-Range": f'"{digest_of(LAYER)}"'}),
        registry.get(blob, headers={"Range": "bytes=10-19", "If-Range": other}),
    ]


def invalid_manifest_references(registry: RegistryClient, repo: str) -> list[Answer]:
    push_image(registry, repo)
    # docker-registry's router matches no route: a plain-text 404, so statuses alone compare.
    return [
        status_only(registry.get(f"/v2/{repo}/manifests/.INVALID_MANIFEST_NAME")),
        status_only(registry.head(f"/v2/{repo}/manifests/.INVALID_MANIFEST_NAME")),
    ]


def mounts(registry: RegistryClient, repo: str) -> list[Answer]:
    source = f"{repo}-source"
    push_blob(registry, source, LAYER)
    return [
        registry.request(
            "POST", f"/v2/{repo}/blobs/uploads/?mount={digest_of(LAYER)}&from={source}"
        ),
        registry.head(f"/v2/{repo}/blobs/{digest_of(LAYER)}"),
        registry.request(
            "POST", f"/v2/{repo}/blobs/uploads/?mount={digest_of(OTHER_LAYER)}&from={source}"
        ),
    ]


def manifests_read_back(registry: RegistryClient, repo: str) -> list[Answer]:
    return [
        *push_image(registry, repo),
        registry.put_manifest(repo, "v2", IMAGE, OCI_MANIFEST),
        registry.head(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}),
        registry.get(f"/v2/{repo}/manifests/{digest_of(IMAGE)}", headers={"Accept": OCI_MANIFEST}),
        registry.get(f"/v2/{repo}/tags/list"),
    ]


def docker_schema2(registry: RegistryClient, repo: str) -> list[Answer]:
    image = image_manifest(CONFIG, [LAYER], media_type=DOCKER_MANIFEST)
    listing = index_of([(DOCKER_MANIFEST, image)], media_type=DOCKER_MANIFEST_LIST)
    push_blob(registry, repo, CONFIG)
    push_blob(registry, repo, LAYER)
    return [
        registry.put_manifest(repo, "image", image, DOCKER_MANIFEST),
        registry.put_manifest(repo, "list", listing, DOCKER_MANIFEST_LIST),
        registry.get(f"/v2/{repo}/manifests/image", headers={"Accept": DOCKER_MANIFEST}),
        registry.head(
            f"/v2/{repo}/manifests/list",
            headers={"Accept": f"{DOCKER_MANIFEST_LIST}, {DOCKER_MANIFEST}"},
        ),
        registry.get(
            f"/v2/{repo}/manifests/{digest_of(listing)}",
            headers={"Accept": DOCKER_MANIFEST_LIST},
        ),
    ]


CASES: dict[str, Callable[[RegistryClient, str], list[Answer]]] = {
    case.__name__: case
    for case in (
        manifest_missing_its_layer,
        manifest_missing_its_config,
        manifest_naming_a_blob_of_another_repository,
        index_missing_a_manifest,
        complete_manifest_and_index,
        unknown_blob_and_manifest,
        upload_completed_with_the_wrong_digest,
        manifest_that_is_no_json,
        deleted_blob_and_manifest,
        unknown_repository,
        upload_sessions,
        malformed_references,
        chunked_upload,
        range_reads,
        conditional_range_reads,
        invalid_manifest_references,
        mounts,
        manifests_read_back,
        docker_schema2,
    )
}


#: The cases whose every request succeeds.
SUCCEEDING = {
    "complete_manifest_and_index",
    "chunked_upload",
    "range_reads",
    "conditional_range_reads",
    "mounts",
    "manifests_read_back",
    "docker_schema2",
}


#: Headers registry clients act on; which of them an answer carries must agree.
CLIENT_HEADERS = (
    "Location",
    "Range",
    "Content-Range",
    "Docker-Upload-UUID",
    "Docker-Content-Digest",
    "Content-Type",
    "Link",
)


#: Of those, the ones whose values must agree too (a Location names an upload id, which
#: each registry makes up).
COMPARED_VALUES = ("Range", "Content-Range", "Docker-Content-Digest", "Content-Type")


def outline(answers: list[Answer]) -> list[tuple[int, list[str], dict[str, str | None]]]:
    """Each answer's status, the codes of its errors and the client headers it carries."""
    return [
        (
            answer.status,
            answer.error_codes if answer.status >= 400 and answer.body else [],
            {
                name: answer.header(name) if name in COMPARED_VALUES else "present"
                for name in CLIENT_HEADERS
                if answer.header(name) is not None
            },
        )
        for answer in answers
    ]


@pytest.mark.parametrize("case", CASES)
def test_contentd_answers_as_docker_registry_does(
    contentd: RegistryClient, reference: RegistryClient, case: str
) -> None:
    repo = f"beside/{uuid.uuid4().hex[:12]}"
    theirs = CASES[case](reference, repo)
    ours = CASES[case](contentd, repo)
    assert outline(ours) == outline(theirs), (ours, theirs)
    # Each case but those that succeed throughout reaches an error.
    assert any(answer.status >= 400 for answer in theirs) != (case in SUCCEEDING)

"""A store root written by an older contentd opens unchanged: what it stored stays as stored.

tests/data/root-v1.tar.gz is a store root made at commit 5cc6933 by tests/data/make_root_v1.py
(never to be remade: it is the record of that commit's format), and root-v1.json says what
it holds: every namespace's blobs with their labels and times, the ingests in progress, and
the registry's repositories, tags, manifests, referrers and an upload left half done.

These tests open it with today's code, daemonless and under a real daemon, and check what
the store's interfaces, the Content API and the registry's HTTP face show, never which
files the root holds: the layout may change under them (the registry index is moving into
the store's metadata), what was stored may not. Tests that only read share one extracted
copy per kind of opener; tests that write extract their own.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from support.daemon import DaemonProcess, start_daemon
from support.registry_http import OCI_INDEX, RegistryClient

from contentd.client import RemoteStore
from contentd.content import Info, LocalStore, Status, Store, datetime_from_ns, open_store
from contentd.errdefs import NotFound

DATA = Path(__file__).parent / "data"
RECORD: dict[str, Any] = json.loads((DATA / "root-v1.json").read_text())
NAMESPACES = sorted(RECORD["namespaces"])
REGISTRY = RECORD["registry"]
REPOSITORIES = sorted(REGISTRY["repositories"])
UPLOAD = REGISTRY["uploads"][0]
#: The daemon aborts uploads untouched for longer than its TTL, and the recorded one was
#: last touched when the fixture was made: a century keeps it for as long as this test lives.
UPLOAD_TTL = str(100 * 365 * 24 * 3600)
LEAKS = ("/tmp", "Traceback")


# What the record says


def blob_bytes(name: str) -> bytes:
    """The bytes of the recorded blob `name` (its text, or its seeded bytes)."""
    blob = RECORD["blobs"][name]
    if "text" in blob:
        return str(blob["text"]).encode()
    return hashlib.shake_256(f"{RECORD['seed']}/{name}".encode()).digest(blob["size"])


BLOB_NAMES = {blob["digest"]: name for name, blob in RECORD["blobs"].items()}


def recorded_infos(namespace: str) -> dict[str, Info]:
    """Every blob `namespace` holds, by digest, as its Info must read."""
    return {
        entry["digest"]: Info(
            digest=entry["digest"],
            size=entry["size"],
            created_at=datetime_from_ns(entry["created_at"]),
            updated_at=datetime_from_ns(entry["updated_at"]),
            labels=entry["labels"],
        )
        for entry in RECORD["namespaces"][namespace]["content"]
    }


def recorded_statuses(namespace: str) -> dict[str, Status]:
    """Every ingest in progress in `namespace`, by ref, as its Status must read."""
    return {
        entry["ref"]: Status(
            ref=entry["ref"],
            offset=entry["offset"],
            total=entry["total"],
            expected=entry["expected"],
            started_at=datetime.fromisoformat(entry["started_at"]),
            updated_at=datetime.fromisoformat(entry["updated_at"]),
        )
        for entry in RECORD["namespaces"][namespace]["ingests"]
    }


def recorded_ingest(namespace: str, ref: str) -> dict[str, Any]:
    entries = RECORD["namespaces"][namespace]["ingests"]
    return next(entry for entry in entries if entry["ref"] == ref)


def listed_infos(store: Store) -> dict[str, Info]:
    return {info.digest: info for info in store.walk()}


def listed_statuses(store: Store) -> dict[str, Status]:
    return {status.ref: status for status in store.list_statuses()}


def manifests_by_tag() -> list[tuple[str, str, str]]:
    return [
        (name, tag, digest)
        for name in REPOSITORIES
        for tag, digest in REGISTRY["repositories"][name]["tagged"].items()
    ]


def manifests_by_digest() -> list[tuple[str, str, str]]:
    return [
        (name, digest, media_type)
        for name in REPOSITORIES
        for digest, media_type in REGISTRY["repositories"][name]["manifests"].items()
    ]


# Opening the record


def extract(into: Path) -> Path:
    """A copy of the recorded root under `into`, modes as recorded; returns its path."""
    with tarfile.open(DATA / "root-v1.tar.gz") as tar:
        tar.extractall(into, filter="tar")
    return into / "root"


def serve(root: Path) -> DaemonProcess:
    """A daemon on `root` with the registry face on the recorded namespace."""
    return start_daemon(
        root,
        "--http",
        "127.0.0.1:0",
        "--http-namespace",
        REGISTRY["namespace"],
        "--http-upload-ttl",
        UPLOAD_TTL,
    )


def registry_of(daemon: DaemonProcess) -> RegistryClient:
    return RegistryClient(daemon.http_url, forbidden=(str(daemon.root), *LEAKS))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStore]:
    """The recorded root opened daemonless, for tests that only read."""
    with open_store(extract(tmp_path_factory.mktemp("root-v1-store"))) as opened:
        yield opened


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon on the recorded root, for tests that only read."""
    started = serve(extract(tmp_path_factory.mktemp("root-v1-daemon")))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def registry(daemon: DaemonProcess) -> RegistryClient:
    return registry_of(daemon)


@pytest.fixture
def fresh_root(tmp_path: Path) -> Path:
    """A copy of the recorded root of this test's own, to write to."""
    return extract(tmp_path)


# Daemonless: committed blobs


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_walk_lists_each_namespaces_recorded_blobs(store: LocalStore, namespace: str) -> None:
    assert listed_infos(store.with_namespace(namespace)) == recorded_infos(namespace)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_info_of_each_blob_is_as_recorded(store: LocalStore, namespace: str) -> None:
    view = store.with_namespace(namespace)
    for digest, info in recorded_infos(namespace).items():
        assert view.info(digest) == info


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_stored_times_keep_their_nanoseconds(store: LocalStore, namespace: str) -> None:
    records = store.with_namespace(namespace).walk_records()
    times = {record.digest: (record.created_at, record.updated_at) for record in records}
    assert times == {
        entry["digest"]: (entry["created_at"], entry["updated_at"])
        for entry in RECORD["namespaces"][namespace]["content"]
    }


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_each_blob_reads_back_as_recorded(store: LocalStore, namespace: str) -> None:
    view = store.with_namespace(namespace)
    for digest in recorded_infos(namespace):
        with view.reader_at(digest) as reader:
            data = reader.read()
        algorithm, encoded = digest.split(":", 1)
        assert hashlib.new(algorithm, data).hexdigest() == encoded
        assert data == blob_bytes(BLOB_NAMES[digest])


def test_a_blob_in_both_namespaces_keeps_each_namespaces_labels_and_times(
    store: LocalStore,
) -> None:
    default, team = recorded_infos("default"), recorded_infos("team")
    (digest,) = default.keys() & team.keys()
    seen = {name: store.with_namespace(name).info(digest) for name in ("default", "team")}
    assert seen == {"default": default[digest], "team": team[digest]}
    assert seen["default"].labels != seen["team"].labels
    assert seen["default"].created_at != seen["team"].created_at


def test_a_namespace_does_not_see_blobs_only_another_holds(store: LocalStore) -> None:
    only_default = recorded_infos("default").keys() - recorded_infos("team").keys()
    team = store.with_namespace("team")
    for digest in only_default:
        with pytest.raises(NotFound):
            team.info(digest)


LabelTest = Callable[[Mapping[str, str]], bool]
LABEL_FILTERS: list[tuple[tuple[str, ...], LabelTest]] = [
    (("labels.kind==doc",), lambda labels: labels.get("kind") == "doc"),
    (('labels."containerd.io/gc.root"',), lambda labels: "containerd.io/gc.root" in labels),
    (("labels.kind~=^no",), lambda labels: labels.get("kind", "").startswith("no")),
    (("labels.reviewed!=yes",), lambda labels: labels.get("reviewed") != "yes"),
    (
        ("labels.kind==shared,labels.team==blue",),
        lambda labels: labels.get("kind") == "shared" and labels.get("team") == "blue",
    ),
    (('labels.owner=="Zoë"',), lambda labels: labels.get("owner") == "Zoë"),
    (
        ("labels.kind==base", "labels.kind==notes"),
        lambda labels: labels.get("kind") in ("base", "notes"),
    ),
]


@pytest.mark.parametrize(
    ("filters", "selects"), LABEL_FILTERS, ids=[" or ".join(f) for f, _ in LABEL_FILTERS]
)
def test_label_filters_select_the_recorded_blobs(
    store: LocalStore, filters: tuple[str, ...], selects: LabelTest
) -> None:
    selected = 0
    for namespace in NAMESPACES:
        listed = {info.digest for info in store.with_namespace(namespace).walk(*filters)}
        expected = {d for d, info in recorded_infos(namespace).items() if selects(info.labels)}
        assert listed == expected, namespace
        selected += len(listed)
    assert selected, "the record holds no blob this filter selects"


# Daemonless: ingests in progress


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_list_statuses_shows_each_namespaces_recorded_ingests(
    store: LocalStore, namespace: str
) -> None:
    assert listed_statuses(store.with_namespace(namespace)) == recorded_statuses(namespace)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_status_of_each_ingest_is_as_recorded(store: LocalStore, namespace: str) -> None:
    view = store.with_namespace(namespace)
    for ref, status in recorded_statuses(namespace).items():
        assert view.status(ref) == status


def test_a_collection_keeps_everything_stored_before_collections_existed(
    fresh_root: Path,
) -> None:
    # No lease, image or root label names most of these blobs; the upgrade's lease does.
    with open_store(fresh_root) as store:
        report = store.collect()
        assert (report.content, report.blobs) == (0, 0)
        for namespace in NAMESPACES:
            view = store.with_namespace(namespace)
            assert listed_infos(view) == recorded_infos(namespace)
            assert listed_statuses(view) == recorded_statuses(namespace)
            held = {r.id for r in view.leases.resources("contentd.stored-before-gc")}
            assert held == set(recorded_infos(namespace))


def test_deleting_the_upgrades_lease_lets_unkept_blobs_go(fresh_root: Path) -> None:
    with open_store(fresh_root, "team") as team:
        team.leases.delete("contentd.stored-before-gc", sync=True)
        # What the registry's repositories hold in "default" stays; "team" has none.
        assert list(team.walk()) == []
        assert listed_infos(team.with_namespace("default")) == recorded_infos("default")


def test_a_half_written_ingest_resumes_at_its_offset_and_commits(fresh_root: Path) -> None:
    recorded = recorded_ingest("team", "team/partial")
    data = blob_bytes(recorded["blob"])
    with open_store(fresh_root, "team") as team:
        with team.writer(
            recorded["ref"], total=recorded["total"], expected=recorded["expected"]
        ) as writer:
            assert writer.status().offset == recorded["offset"]
            writer.write(data[recorded["offset"] :])
            digest = writer.commit(recorded["total"], recorded["expected"])
        assert digest == recorded["expected"]
        assert team.info(digest).size == len(data)
        with team.reader_at(digest) as reader:
            assert reader.read() == data
        with pytest.raises(NotFound):
            team.status(recorded["ref"])


def test_an_ingest_started_from_another_namespaces_blob_commits_without_bytes(
    fresh_root: Path,
) -> None:
    recorded = recorded_ingest("team", "team/fetch-base")
    with open_store(fresh_root, "team") as team:
        with team.writer(recorded["ref"]) as writer:
            assert writer.status().offset == recorded["total"]
            digest = writer.commit(recorded["total"], recorded["expected"], {"kind": "fetched"})
        assert digest == recorded["base"]
        assert team.info(digest).labels == {"kind": "fetched"}
        with team.reader_at(digest) as reader:
            assert reader.read() == blob_bytes(recorded["blob"])
        assert team.with_namespace("default").info(digest) == recorded_infos("default")[digest]


# Under a daemon: the Content API


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_the_daemon_lists_each_namespaces_recorded_blobs(
    daemon: DaemonProcess, namespace: str
) -> None:
    with RemoteStore(daemon.address, namespace) as remote:
        assert listed_infos(remote) == recorded_infos(namespace)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_the_daemon_reads_each_blob_as_recorded(daemon: DaemonProcess, namespace: str) -> None:
    with RemoteStore(daemon.address, namespace) as remote:
        for digest in recorded_infos(namespace):
            with remote.reader_at(digest) as reader:
                assert reader.read() == blob_bytes(BLOB_NAMES[digest])


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_the_daemon_lists_each_namespaces_recorded_ingests(
    daemon: DaemonProcess, namespace: str
) -> None:
    with RemoteStore(daemon.address, namespace) as remote:
        assert listed_statuses(remote) == recorded_statuses(namespace)


# Under a daemon: the registry


def test_catalog_lists_the_recorded_repositories(registry: RegistryClient) -> None:
    answer = registry.get("/v2/_catalog")
    assert answer.status == 200, answer
    assert answer.json() == {"repositories": REGISTRY["catalog"]}


@pytest.mark.parametrize("name", REPOSITORIES)
def test_tags_list_answers_the_recorded_tags_in_lexical_order(
    registry: RegistryClient, name: str
) -> None:
    answer = registry.get(f"/v2/{name}/tags/list")
    assert answer.status == 200, answer
    assert answer.json() == {"name": name, "tags": REGISTRY["repositories"][name]["tags"]}


@pytest.mark.parametrize(("name", "tag", "digest"), manifests_by_tag())
def test_a_manifest_by_tag_answers_its_bytes_and_media_type(
    registry: RegistryClient, name: str, tag: str, digest: str
) -> None:
    answer = registry.get(f"/v2/{name}/manifests/{tag}")
    assert answer.status == 200, answer
    assert answer.header("Content-Type") == REGISTRY["repositories"][name]["manifests"][digest]
    assert answer.header("Docker-Content-Digest") == digest
    assert answer.body == blob_bytes(BLOB_NAMES[digest])


@pytest.mark.parametrize(("name", "digest", "media_type"), manifests_by_digest())
def test_a_manifest_by_digest_answers_its_bytes_and_media_type(
    registry: RegistryClient, name: str, digest: str, media_type: str
) -> None:
    answer = registry.get(f"/v2/{name}/manifests/{digest}")
    assert answer.status == 200, answer
    assert answer.header("Content-Type") == media_type
    assert answer.header("Docker-Content-Digest") == digest
    assert answer.body == blob_bytes(BLOB_NAMES[digest])


@pytest.mark.parametrize("name", REPOSITORIES)
def test_each_blob_of_a_repository_answers_its_bytes(registry: RegistryClient, name: str) -> None:
    for digest in REGISTRY["repositories"][name]["blobs"]:
        answer = registry.get(f"/v2/{name}/blobs/{digest}")
        assert answer.status == 200, answer
        assert answer.header("Docker-Content-Digest") == digest
        assert answer.body == blob_bytes(BLOB_NAMES[digest])


@pytest.mark.parametrize("name", REPOSITORIES)
def test_a_repository_does_not_serve_blobs_only_another_holds(
    registry: RegistryClient, name: str
) -> None:
    repositories = REGISTRY["repositories"]
    others = {d for other in REPOSITORIES if other != name for d in repositories[other]["blobs"]}
    absent = others - set(repositories[name]["blobs"]) - set(repositories[name]["manifests"])
    assert absent
    for digest in absent:
        answer = registry.get(f"/v2/{name}/blobs/{digest}")
        assert answer.status == 404, answer
        assert answer.error_code == "BLOB_UNKNOWN"


def test_a_mounted_blob_is_served_by_both_repositories(registry: RegistryClient) -> None:
    first, second = (REGISTRY["repositories"][name]["blobs"] for name in REPOSITORIES)
    (digest,) = set(first) & set(second)
    for name in REPOSITORIES:
        assert registry.get(f"/v2/{name}/blobs/{digest}").body == blob_bytes(BLOB_NAMES[digest])


@pytest.mark.parametrize("name", REPOSITORIES)
def test_the_referrers_api_lists_the_recorded_referrers(
    registry: RegistryClient, name: str
) -> None:
    for subject, referrers in REGISTRY["repositories"][name]["referrers"].items():
        answer = registry.get(f"/v2/{name}/referrers/{subject}")
        assert answer.status == 200, answer
        assert answer.header("Content-Type") == OCI_INDEX
        assert answer.json()["manifests"] == referrers


def test_the_referrers_api_filters_the_recorded_referrer_by_artifact_type(
    registry: RegistryClient,
) -> None:
    (name,) = [n for n in REPOSITORIES if REGISTRY["repositories"][n]["referrers"]]
    ((subject, referrers),) = REGISTRY["repositories"][name]["referrers"].items()
    (referrer,) = referrers
    path = f"/v2/{name}/referrers/{subject}?"
    matching = registry.get(path + urlencode({"artifactType": referrer["artifactType"]}))
    assert matching.json()["manifests"] == [referrer]
    other = registry.get(path + urlencode({"artifactType": "application/vnd.example.other"}))
    assert other.json()["manifests"] == []


def test_the_upload_in_progress_answers_its_recorded_range(registry: RegistryClient) -> None:
    answer = registry.get(UPLOAD["location"])
    assert answer.status == 204, answer
    assert answer.header("Range") == f"0-{UPLOAD['offset'] - 1}"
    assert answer.header("Docker-Upload-UUID") == UPLOAD["session"]


def test_the_upload_in_progress_resumes_and_completes(fresh_root: Path) -> None:
    data = blob_bytes(UPLOAD["blob"])
    digest = RECORD["blobs"][UPLOAD["blob"]]["digest"]
    daemon = serve(fresh_root)
    try:
        registry = registry_of(daemon)
        answer = registry.patch_chunk(
            UPLOAD["location"], data[UPLOAD["offset"] :], UPLOAD["offset"]
        )
        assert answer.status == 202, answer
        assert answer.header("Range") == f"0-{len(data) - 1}"
        answer = registry.complete_upload(UPLOAD["location"], digest)
        assert answer.status == 201, answer
        assert registry.get(f"/v2/{UPLOAD['repository']}/blobs/{digest}").body == data
        assert registry.get(UPLOAD["location"]).status == 404
    finally:
        daemon.stop()


# Opened again


def test_the_root_reads_as_recorded_after_being_opened_and_served_before(
    fresh_root: Path,
) -> None:
    for _ in range(2):
        open_store(fresh_root).close()
        serve(fresh_root).stop()
    with open_store(fresh_root) as store:
        for namespace in NAMESPACES:
            view = store.with_namespace(namespace)
            assert listed_infos(view) == recorded_infos(namespace)
            assert listed_statuses(view) == recorded_statuses(namespace)
    daemon = serve(fresh_root)
    try:
        registry = registry_of(daemon)
        assert registry.get("/v2/_catalog").json() == {"repositories": REGISTRY["catalog"]}
        for name, digest, media_type in manifests_by_digest():
            answer = registry.get(f"/v2/{name}/manifests/{digest}")
            assert (answer.status, answer.header("Content-Type")) == (200, media_type)
        for name in REPOSITORIES:
            tags = registry.get(f"/v2/{name}/tags/list").json()["tags"]
            assert tags == REGISTRY["repositories"][name]["tags"]
        assert registry.get(UPLOAD["location"]).header("Range") == f"0-{UPLOAD['offset'] - 1}"
    finally:
        daemon.stop()


def test_changes_made_after_opening_survive_opening_again(fresh_root: Path) -> None:
    recorded = recorded_ingest("team", "team/partial")
    data = blob_bytes(recorded["blob"])
    with open_store(fresh_root, "team") as team, team.writer(recorded["ref"]) as writer:
        writer.write(data[recorded["offset"] :])
        writer.commit(recorded["total"], recorded["expected"], {"kind": "resumed"})
    with open_store(fresh_root, "team") as team:
        infos = listed_infos(team)
        assert infos.pop(recorded["expected"]).labels == {"kind": "resumed"}
        assert infos == recorded_infos("team")
        statuses = recorded_statuses("team")
        del statuses[recorded["ref"]]
        assert listed_statuses(team) == statuses

"""The command line's leases, images and garbage collection, on a daemon and on a directory.

Every test gets a store of its own (a collection sees every namespace, so no
store here is shared between tests).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.daemon import contentd_command, running_daemon

from contentd import errdefs
from contentd.client.cli import EXIT_CODES, parse_duration
from contentd.content import Descriptor, Image, LocalStore, digest_of, open_store

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Cli:
    """`contentd` with its global options set for one store, and where that store lives."""

    target: list[str]
    root: Path

    def store(self) -> LocalStore:
        return open_store(self.root, "default")

    def run(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*contentd_command(), *self.target, *args],
            input=stdin,
            capture_output=True,
            timeout=120,
            check=False,
        )

    def text(self, *args: str, stdin: bytes | None = None) -> str:
        result = self.run(*args, stdin=stdin)
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode()

    def json(self, *args: str) -> object:
        return json.loads(self.text("--json", *args))


@pytest.fixture(params=["daemon", "root"])
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cli]:
    root = tmp_path / "root"
    if request.param == "root":
        yield Cli(["--root", str(root)], root)
        return
    with running_daemon(root) as daemon:
        yield Cli(["--address", daemon.address], root)


def test_gc_dry_run_reports_and_gc_removes_what_nothing_keeps(cli: Cli) -> None:
    kept = cli.text("ingest", "kept", "--label", "containerd.io/gc.root=yes", stdin=b"kept").strip()
    garbage = cli.text("ingest", "garbage", stdin=b"garbage").strip()
    planned = cli.json("gc", "--dry-run")
    assert planned == {
        "content": 1,
        "leases": 0,
        "ingests": 0,
        "blobs": 1,
        "bytes": 7,
        "seconds": planned["seconds"],  # type: ignore[index]
        "dry_run": True,
    }
    assert sorted(cli.text("ls", "-q").split()) == sorted([kept, garbage])
    said = cli.text("gc")
    assert said.startswith("removed 1 content records, 0 leases and 0 ingests; freed 1 blobs")
    assert cli.text("ls", "-q").split() == [kept]


def test_leases_are_created_listed_and_removed(cli: Cli) -> None:
    lease = cli.text("leases", "create", "--id", "build-1", "team=ci").strip()
    assert lease == "build-1"
    forever = cli.text("leases", "create", "--expires", "0").strip()
    listed = {entry["id"]: entry for entry in cli.json("leases", "ls")}  # type: ignore[union-attr]
    assert set(listed) == {"build-1", forever}
    assert listed["build-1"]["labels"]["team"] == "ci"
    assert "containerd.io/gc.expire" in listed["build-1"]["labels"]
    assert "containerd.io/gc.expire" not in listed[forever]["labels"]
    assert cli.text("leases", "ls", "-q", "labels.team==ci").split() == ["build-1"]
    assert cli.text("leases", "rm", "build-1", forever).split() == ["build-1", forever]
    assert cli.text("leases", "ls", "-q") == ""
    missing = cli.run("leases", "rm", "build-1")
    assert missing.returncode == EXIT_CODES[errdefs.NotFound]
    assert b"not found" in missing.stderr


def test_images_are_listed_tagged_and_removed_and_their_content_freed(cli: Cli) -> None:
    manifest = b'{"schemaVersion": 2}'
    digest = cli.text("ingest", "manifest", stdin=manifest).strip()
    with cli.store() as store:
        store.images.create(Image("app:v1", Descriptor(MANIFEST_TYPE, digest, len(manifest))))
    cli.text("images", "tag", "app:v1", "app:latest")
    assert cli.text("images", "ls", "-q").split() == ["app:latest", "app:v1"]
    listed = cli.json("images", "ls", f"target.digest=={digest}")
    assert [entry["name"] for entry in listed] == ["app:latest", "app:v1"]  # type: ignore[index, union-attr]
    refused = cli.run("images", "tag", "app:v1", "app:latest")
    assert refused.returncode == EXIT_CODES[errdefs.AlreadyExists]
    cli.text("images", "tag", "--force", "app:v1", "app:latest")
    cli.text("images", "rm", "--sync", "app:v1")
    assert cli.text("ls", "-q").split() == [digest]  # app:latest still names it
    cli.text("images", "rm", "--sync", "app:latest")
    assert cli.text("ls", "-q") == ""
    assert digest_of(manifest) == digest


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("24h", 86400), ("1h30m", 5400), ("90s", 90), ("2d", 172800), ("0", None)],
)
def test_durations_read_as_ctr_writes_them(text: str, seconds: int | None) -> None:
    parsed = parse_duration(text)
    assert (None if parsed is None else parsed.total_seconds()) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1x", "h", "5m later"])
def test_a_duration_that_is_none_is_refused(text: str) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        parse_duration(text)

"""The `contentd` command line, on a daemon and directly on a store directory."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import pty
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.ctr import Ctr
from support.daemon import DaemonProcess, contentd_command, running_daemon
from support.tools import require_tool

from contentd import errdefs
from contentd.client.cli import EXIT_CODES, human_age, human_size
from contentd.content import LocalStore, default_root, digest_of, open_store
from contentd.proto.wire import default_address

REPO = Path(__file__).resolve().parent.parent
# Every byte value, and more than one 1 MiB message.
BLOB = bytes(range(256)) * 5000
DIGEST = digest_of(BLOB)
MISSING = digest_of(b"never stored")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@dataclass
class Cli:
    """`contentd` with its global options set for one store, and where that store lives."""

    target: list[str]
    root: Path
    namespace: str = "default"

    def store(self) -> LocalStore:
        """The same store, opened directly (a daemon's root welcomes daemonless processes)."""
        return open_store(self.root, self.namespace)

    def run(
        self,
        *args: str,
        stdin: bytes | None = None,
        namespace: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            [*contentd_command(), *self.target, "-n", namespace or self.namespace, *args],
            input=stdin,
            capture_output=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"contentd {' '.join(args)}: {result.stderr.decode()}")
        return result

    def text(self, *args: str, **kwargs: object) -> str:
        return self.run(*args, **kwargs).stdout.decode()  # type: ignore[arg-type]

    def json(self, *args: str, **kwargs: object) -> object:
        return json.loads(self.text("--json", *args, **kwargs))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("cli") / "root") as running:
        yield running


_test_namespaces = itertools.count()


@pytest.fixture(params=["daemon", "root"])
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    if request.param == "daemon":
        daemon: DaemonProcess = request.getfixturevalue("daemon")
        # A namespace per test keeps tests apart on the shared daemon.
        namespace = f"t{next(_test_namespaces)}"
        return Cli(["--address", daemon.address], daemon.root, namespace)
    return Cli(["--root", str(tmp_path / "root")], tmp_path / "root")


# Ingest, list, read


def test_ingest_prints_the_digest_and_ls_lists_it(cli: Cli) -> None:
    assert cli.text("ingest", "layer", stdin=BLOB).strip() == DIGEST
    listing = cli.text("ls")
    assert listing.splitlines()[0].split("\t") == ["DIGEST", "SIZE", "AGE", "LABELS"]
    assert DIGEST in listing
    assert cli.text("ls", "-q").split() == [DIGEST]


def test_get_writes_the_bytes_unchanged(cli: Cli, tmp_path: Path) -> None:
    cli.run("ingest", "layer", stdin=BLOB)
    assert cli.run("get", DIGEST).stdout == BLOB
    cli.run("get", DIGEST, "-o", str(tmp_path / "out"))
    assert (tmp_path / "out").read_bytes() == BLOB


def test_info_shows_every_field_with_the_exact_size(cli: Cli) -> None:
    cli.run("ingest", "layer", "--label", "k=v", stdin=BLOB)
    lines = cli.text("info", DIGEST).splitlines()
    assert f"digest: {DIGEST}" in lines
    assert f"size: {len(BLOB)}" in lines
    assert "  k=v" in lines


def test_ingest_from_a_file_with_expectations(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "blob"
    source.write_bytes(BLOB)
    digest = cli.text(
        "ingest",
        "layer",
        "-i",
        str(source),
        "--expected-size",
        str(len(BLOB)),
        "--expected-digest",
        DIGEST,
    )
    assert digest.strip() == DIGEST


def test_ingest_with_a_wrong_digest_fails_and_stores_nothing(cli: Cli) -> None:
    result = cli.run("ingest", "bad", "--expected-digest", MISSING, stdin=BLOB, check=False)
    assert result.returncode == EXIT_CODES[errdefs.FailedPrecondition]
    assert result.stderr.decode().startswith("contentd: ")
    assert result.stderr.decode().count("\n") == 1
    assert cli.text("ls", "-q") == ""
    assert cli.text("ingest", "bad", stdin=BLOB).strip() == DIGEST


def test_ingest_resumes_an_interrupted_ingest(cli: Cli) -> None:
    with cli.store() as store, store.writer("resumed") as writer:
        writer.write(BLOB[:300_000])
    assert cli.text("ingest", "resumed", stdin=BLOB).strip() == DIGEST
    assert cli.run("get", DIGEST).stdout == BLOB


def test_ingest_of_stored_content_succeeds(cli: Cli) -> None:
    cli.run("ingest", "one", stdin=BLOB)
    assert cli.text("ingest", "two", "--expected-digest", DIGEST, stdin=BLOB).strip() == DIGEST


def test_progress_never_reaches_a_pipe(cli: Cli) -> None:
    result = cli.run("ingest", "quiet", stdin=BLOB)
    assert result.stderr == b""
    assert cli.run("get", DIGEST).stderr == b""


# Labels, filters, removal


def test_label_sets_and_removes_labels(cli: Cli) -> None:
    cli.run("ingest", "layer", stdin=BLOB)
    cli.run("label", DIGEST, "team=storage", "tier=hot")
    assert cli.json("info", DIGEST)["labels"] == {"team": "storage", "tier": "hot"}  # type: ignore[index]
    cli.run("label", DIGEST, "tier=")
    assert cli.json("info", DIGEST)["labels"] == {"team": "storage"}  # type: ignore[index]


def test_ls_filters_by_label(cli: Cli) -> None:
    cli.run("ingest", "a", "--label", "kind=layer", stdin=BLOB)
    cli.run("ingest", "b", "--label", "kind=config", stdin=b"{}")
    assert cli.text("ls", "-q", "labels.kind==layer").split() == [DIGEST]
    assert len(cli.text("ls", "-q", "labels.kind").split()) == 2


def test_rm_removes_blobs_and_reports_missing_ones(cli: Cli) -> None:
    cli.run("ingest", "layer", stdin=BLOB)
    result = cli.run("rm", MISSING, DIGEST, check=False)
    assert result.returncode == EXIT_CODES[errdefs.NotFound]
    assert result.stderr.decode() == f"contentd: content {MISSING}: not found\n"
    assert cli.text("ls", "-q") == ""


def test_active_lists_ingests_in_progress_and_abort_discards_them(cli: Cli) -> None:
    with cli.store() as store:
        for ref in ("layer-1", "layer-2", "config"):
            with store.writer(ref) as writer:
                writer.write(b"12345")
    statuses = cli.json("active", "^layer-")
    assert sorted(s["ref"] for s in statuses) == ["layer-1", "layer-2"]  # type: ignore[attr-defined]
    cli.run("abort", "layer-1")
    assert [s["ref"] for s in cli.json("active")] == ["config", "layer-2"]  # type: ignore[attr-defined]


def test_namespaces_are_isolated(cli: Cli) -> None:
    cli.run("ingest", "layer", stdin=BLOB, namespace="ns-a")
    assert cli.text("ls", "-q", namespace="ns-b") == ""
    missing = cli.run("get", DIGEST, namespace="ns-b", check=False)
    assert missing.returncode == EXIT_CODES[errdefs.NotFound]
    cli.run("ingest", "layer", stdin=BLOB, namespace="ns-b")
    cli.run("rm", DIGEST, namespace="ns-a")
    assert cli.run("get", DIGEST, namespace="ns-b").stdout == BLOB


# Errors and machine-readable output


def test_missing_digest_is_one_line_and_not_found_status(cli: Cli) -> None:
    result = cli.run("info", MISSING, check=False)
    assert result.returncode == EXIT_CODES[errdefs.NotFound] == 3
    assert result.stderr.decode() == f"contentd: content {MISSING}: not found\n"


def test_malformed_digest_is_invalid_argument_status(cli: Cli) -> None:
    result = cli.run("get", "sha256:nothex", check=False)
    assert result.returncode == EXIT_CODES[errdefs.InvalidArgument] == 2
    assert result.stderr.decode().startswith("contentd: digest 'sha256:nothex'")
    assert "invalid argument" in result.stderr.decode()


def test_json_objects_are_flat_with_utc_times(cli: Cli) -> None:
    cli.run("ingest", "layer", "--label", "k=v", stdin=BLOB)
    (listed,) = cli.json("ls")  # type: ignore[misc]
    assert set(listed) == {"digest", "size", "created_at", "updated_at", "labels"}
    assert (listed["digest"], listed["size"], listed["labels"]) == (DIGEST, len(BLOB), {"k": "v"})
    assert ISO_UTC.match(listed["created_at"])
    assert cli.json("info", DIGEST) == listed


def test_progress_shows_on_a_terminal(tmp_path: Path) -> None:
    root = tmp_path / "root"
    Cli(["--root", str(root)], root).run("ingest", "layer", stdin=BLOB)
    leader, follower = pty.openpty()
    try:
        result = subprocess.run(
            [*contentd_command(), "--root", str(root), "get", DIGEST, "-o", str(tmp_path / "out")],
            stderr=follower,
            capture_output=False,
            check=False,
            timeout=60,
        )
        os.close(follower)
        follower = -1
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal has no writer left
            while chunk := os.read(leader, 65536):
                shown += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert result.returncode == 0
    assert (tmp_path / "out").read_bytes() == BLOB
    assert DIGEST[:19].encode() in shown


@pytest.mark.parametrize(
    ("size", "shown"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 << 30, "5.0 GiB")],
)
def test_sizes_read_in_binary_units(size: int, shown: str) -> None:
    assert human_size(size) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0 seconds"), (1, "1 second"), (59, "59 seconds"), (60, "1 minute"), (7200, "2 hours")],
)
def test_ages_read_in_the_largest_whole_unit(seconds: int, shown: str) -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert human_age(now - timedelta(seconds=seconds), now) == shown


def test_address_and_root_together_are_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [*contentd_command(), "--address", "unix:///x", "--root", str(tmp_path), "ls"],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 2
    assert b"one of --address, --root or --blobs with --metadata" in result.stderr


@pytest.mark.parametrize(
    "options",
    [
        ["--blobs", "s3://bucket"],
        ["--metadata", "postgresql://host/db"],
        ["--root", "ROOT", "--blobs", "s3://bucket", "--metadata", "postgresql://host/db"],
    ],
)
def test_cluster_options_must_come_together_and_alone(tmp_path: Path, options: list[str]) -> None:
    options = [str(tmp_path) if option == "ROOT" else option for option in options]
    result = subprocess.run(
        [*contentd_command(), *options, "ls"], capture_output=True, check=False, text=True
    )
    assert result.returncode == 2, result.stderr
    assert "--blobs" in result.stderr
    assert not list(tmp_path.iterdir())


def test_cluster_urls_of_the_wrong_kind_are_invalid(tmp_path: Path) -> None:
    secret = "postgresql://user:hunter2@127.0.0.1:1/db"
    for blobs, metadata, said in [
        ("http://127.0.0.1:1/bucket", secret, "s3://"),
        ("s3://bucket", "mysql://user:hunter2@host/db", "postgresql://"),
    ]:
        result = subprocess.run(
            [*contentd_command(), "--blobs", blobs, "--metadata", metadata, "ls"],
            capture_output=True,
            check=False,
            text=True,
        )
        assert result.returncode != 0
        assert said in result.stderr
        assert "hunter2" not in result.stderr


def test_unreachable_daemon_is_unavailable(tmp_path: Path) -> None:
    result = subprocess.run(
        [*contentd_command(), "--address", f"unix://{tmp_path}/none.sock", "ls"],
        capture_output=True,
        check=False,
    )
    assert result.returncode == EXIT_CODES[errdefs.Unavailable]
    assert result.stderr.decode().startswith("contentd: no daemon answering at unix://")


def test_the_default_root_is_under_xdg_data_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_root() == tmp_path / "data" / "contentd"


def test_the_default_root_is_under_local_share_without_xdg_data_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_root() == tmp_path / ".local" / "share" / "contentd"


def test_the_default_address_is_the_socket_in_the_default_root_as_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "link"))
    assert default_address() == f"unix://{tmp_path / 'link' / 'contentd' / 'contentd.sock'}"


def test_the_address_of_a_served_root_is_resolved(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    expected = f"unix://{(tmp_path / 'real').resolve() / 'contentd.sock'}"
    assert default_address(Path("link")) == expected


def test_readme_documents_every_exit_status() -> None:
    readme = (REPO / "README.md").read_text()
    documented = dict(re.findall(r"^\| `(\w+)` \| (\d+) \|$", readme, flags=re.MULTILINE))
    assert documented == {cls.__name__: str(code) for cls, code in EXIT_CODES.items()}


# Many processes, one ref


def test_racing_processes_through_a_daemon_and_a_root_all_succeed(tmp_path: Path) -> None:
    data = os.urandom(8 << 20)
    digest = digest_of(data)
    source = tmp_path / "blob"
    source.write_bytes(data)
    root = tmp_path / "root"
    with running_daemon(root) as daemon:
        targets = [["--address", daemon.address], ["--root", str(root)]] * 4
        racers = [
            subprocess.Popen(
                [*contentd_command(), *target, "ingest", "shared-ref", "-i", str(source)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for target in targets
        ]
        outcomes = [(racer.communicate(timeout=120), racer.returncode) for racer in racers]
        for (out, err), code in outcomes:
            assert code == 0, err.decode()
            assert out.decode().strip() == digest
        with open_store(root) as store:
            assert [info.digest for info in store.walk()] == [digest]
            with store.reader_at(digest) as reader:
                assert hashlib.sha256(reader.read()).hexdigest() == digest.split(":")[1]
        blobs = list((root / "blobs" / "sha256").iterdir())
        assert [blob.name for blob in blobs] == [digest.split(":")[1]]


# ctr and contentd read each other's blobs


@pytest.mark.conformance
def test_ctr_and_contentd_read_each_others_blobs(daemon: DaemonProcess) -> None:
    require_tool("ctr", "containerd")
    ctr = Ctr(daemon.address, namespace="interop")
    cli = Cli(["--address", daemon.address], daemon.root)
    from_ctr = bytes(reversed(BLOB))
    ctr.content_ingest("from-ctr", from_ctr)
    assert cli.run("get", digest_of(from_ctr), namespace="interop").stdout == from_ctr
    cli.run("ingest", "from-contentd", stdin=BLOB, namespace="interop")
    assert ctr.content_get(DIGEST) == BLOB

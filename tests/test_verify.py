"""`contentd verify`: finding blobs damaged behind the store's back, and quarantining them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, contentd_command, running_daemon

from contentd import errdefs
from contentd.client import RemoteStore
from contentd.content import BlobState, LocalStore, digest_of, open_store, write_blob

LAYER = bytes(range(256)) * 4000
CONFIG = b'{"architecture": "amd64"}'
#: Dies (SIGKILL) at POINT of quarantining every bad blob of ROOT.
QUARANTINE_ACTOR = """
import os, signal, sys
from contentd.content import _sqlite, _verify, open_store

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

root, point = sys.argv[1:]
if point == "after-move":  # the bytes are in quarantine, the records not yet dropped
    _sqlite.Transaction.forget_blob = die
elif point == "after-commit":  # the records are dropped, the entry not yet named
    _verify._finish = die
with open_store(root) as store:
    store.verify(quarantine=True)
"""


def contentd(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*contentd_command(), *args], input=stdin, capture_output=True, timeout=120, check=False
    )


def blob_file(root: Path, digest: str) -> Path:
    algorithm, encoded = digest.split(":")
    return root / "blobs" / algorithm / encoded


def flip(root: Path, digest: str, offset: int = 100) -> bytes:
    """Flip bytes of a stored blob behind the store's back; returns what the file now holds."""
    path = blob_file(root, digest)
    path.chmod(0o644)
    with open(path, "r+b") as file:
        file.seek(offset)
        original = file.read(4)
        file.seek(offset)
        file.write(bytes(b ^ 0xFF for b in original))
    path.chmod(0o444)
    return path.read_bytes()


def quarantined(root: Path) -> list[Path]:
    folder = root / "quarantine"
    return sorted(folder.iterdir()) if folder.exists() else []


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A store with LAYER in two namespaces (with labels) and CONFIG in one."""
    path = tmp_path / "root"
    with open_store(path) as store:
        write_blob(store, "layer", LAYER, labels={"role": "layer"})
        write_blob(store, "config", CONFIG)
        write_blob(store.with_namespace("builds"), "layer", LAYER, labels={"team": "ci"})
    return path


def listed(root: Path, namespace: str = "default") -> list[str]:
    with open_store(root, namespace) as store:
        return sorted(info.digest for info in store.walk())


def test_a_whole_store_verifies_clean_and_exits_0(root: Path) -> None:
    result = contentd("--root", str(root), "verify")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == "2 blobs checked, 0 bad"


def test_flipped_bytes_are_reported_corrupt_with_every_namespace_and_exit_12(root: Path) -> None:
    damaged = flip(root, digest_of(LAYER))
    result = contentd("--root", str(root), "verify")
    assert result.returncode == 12
    header, row, summary = result.stdout.decode().splitlines()
    assert header.split("\t") == ["STATE", "DIGEST", "SIZE", "NAMESPACES", "QUARANTINED"]
    assert row.split("\t") == ["corrupt", digest_of(LAYER), "1000.0 KiB", "builds,default", "-"]
    assert summary == "2 blobs checked, 1 bad"
    assert result.stderr.decode() == (
        "contentd: 1 of 2 blobs corrupt, unreadable or missing: data loss\n"
    )
    report = json.loads(contentd("--root", str(root), "--json", "verify").stdout)
    assert report == {
        "checked": 2,
        "problems": [
            {
                "digest": digest_of(LAYER),
                "state": "corrupt",
                "size": len(LAYER),
                "found_digest": digest_of(damaged),
                "found_size": len(LAYER),
                "namespaces": ["builds", "default"],
                "quarantined": None,
            }
        ],
    }
    # Reporting changes nothing.
    assert blob_file(root, digest_of(LAYER)).read_bytes() == damaged
    assert digest_of(LAYER) in listed(root, "builds")


def test_quarantine_moves_a_corrupt_blob_aside_so_it_can_be_pushed_again(root: Path) -> None:
    damaged = flip(root, digest_of(LAYER))
    result = contentd("--root", str(root), "--json", "verify", "--quarantine")
    assert result.returncode == 12
    [entry] = quarantined(root)
    [problem] = json.loads(result.stdout)["problems"]
    assert problem["quarantined"] == f"quarantine/{entry.name}"
    assert (entry / "blob").read_bytes() == damaged
    note = json.loads((entry / "note.json").read_text())
    assert note["digest"] == digest_of(LAYER)
    assert note["state"] == "corrupt"
    assert note["found_digest"] == digest_of(damaged)
    assert [(r["namespace"], r["labels"]) for r in note["records"]] == [
        ("builds", {"team": "ci"}),
        ("default", {"role": "layer"}),
    ]
    # Gone from every namespace and from blobs/; the rest stays.
    assert listed(root) == [digest_of(CONFIG)]
    assert listed(root, "builds") == []
    assert not blob_file(root, digest_of(LAYER)).exists()
    # Pushing it again stores it afresh, instead of answering "already exists".
    pushed = contentd("--root", str(root), "ingest", "layer", stdin=LAYER)
    assert pushed.stdout.decode().strip() == digest_of(LAYER)
    assert contentd("--root", str(root), "get", digest_of(LAYER)).stdout == LAYER
    again = contentd("--root", str(root), "verify")
    assert again.returncode == 0, again.stdout
    assert again.stdout.decode().strip() == "2 blobs checked, 0 bad"


def test_missing_bytes_are_reported_and_quarantine_drops_their_records(root: Path) -> None:
    blob_file(root, digest_of(CONFIG)).unlink()
    report = json.loads(contentd("--root", str(root), "--json", "verify").stdout)
    assert [(p["digest"], p["state"]) for p in report["problems"]] == [
        (digest_of(CONFIG), "missing")
    ]
    assert contentd("--root", str(root), "verify", "--quarantine").returncode == 12
    [entry] = quarantined(root)
    assert sorted(path.name for path in entry.iterdir()) == ["note.json"]
    assert listed(root) == [digest_of(LAYER)]
    with open_store(root) as store:
        assert write_blob(store, "config", CONFIG) == digest_of(CONFIG)
        with store.reader_at(digest_of(CONFIG)) as reader:
            assert reader.read() == CONFIG
    assert contentd("--root", str(root), "verify").returncode == 0


def test_a_bad_file_no_namespace_records_is_quarantined_not_adopted(root: Path) -> None:
    # Bytes under a digest they do not hash to, recorded nowhere: a commit of
    # that digest would take the file as it is.
    orphan = b"orphan content"
    path = blob_file(root, digest_of(orphan))
    path.write_bytes(b"0rphan content")
    report = json.loads(contentd("--root", str(root), "--json", "verify", "--quarantine").stdout)
    [problem] = report["problems"]
    assert (problem["digest"], problem["state"], problem["namespaces"]) == (
        digest_of(orphan),
        "corrupt",
        [],
    )
    assert problem["quarantined"]
    with open_store(root) as store:
        write_blob(store, "orphan", orphan)
        with store.reader_at(digest_of(orphan)) as reader:
            assert reader.read() == orphan


def test_verify_and_quarantine_while_a_daemon_serves_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with running_daemon(root) as daemon:
        remote = ["--address", daemon.address]
        assert contentd(*remote, "ingest", "layer", stdin=LAYER).returncode == 0
        assert contentd(*remote, "ingest", "config", stdin=CONFIG).returncode == 0
        flip(root, digest_of(LAYER))
        # Over the wire it reads every blob through Read and can only report.
        over_the_wire = contentd(*remote, "--json", "verify")
        assert over_the_wire.returncode == 12
        [problem] = json.loads(over_the_wire.stdout)["problems"]
        assert (problem["digest"], problem["state"]) == (digest_of(LAYER), "corrupt")
        refused = contentd(*remote, "verify", "--quarantine")
        assert refused.returncode == 2
        assert b"--quarantine needs --root" in refused.stderr
        # On the root, beside the daemon.
        assert contentd("--root", str(root), "verify", "--quarantine").returncode == 12
        with RemoteStore(daemon.address) as store:
            assert [info.digest for info in store.walk()] == [digest_of(CONFIG)]
            with pytest.raises(errdefs.NotFound):
                store.info(digest_of(LAYER))
            assert write_blob(store, "layer", LAYER) == digest_of(LAYER)
        assert contentd(*remote, "get", digest_of(LAYER)).stdout == LAYER
        assert contentd(*remote, "verify").returncode == 0
        blob_file(root, digest_of(CONFIG)).unlink()
        missing = json.loads(contentd(*remote, "--json", "verify").stdout)["problems"]
        assert [(p["digest"], p["state"]) for p in missing] == [(digest_of(CONFIG), "missing")]
        assert_daemon_healthy(daemon)


def assert_daemon_healthy(daemon: DaemonProcess) -> None:
    assert daemon.process.poll() is None
    assert "Traceback" not in daemon.logged()


def test_a_quarantine_killed_after_moving_the_bytes_is_undone_on_open(root: Path) -> None:
    damaged = flip(root, digest_of(LAYER))
    actor = subprocess.run(
        [sys.executable, "-c", QUARANTINE_ACTOR, str(root), "after-move"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert actor.returncode == -signal.SIGKILL
    assert not blob_file(root, digest_of(LAYER)).exists()  # the bytes were in quarantine
    with open_store(root) as store:  # opening repairs
        assert store.info(digest_of(LAYER)).labels == {"role": "layer"}
        assert blob_file(root, digest_of(LAYER)).read_bytes() == damaged
        assert quarantined(root) == []
        [problem] = store.verify().problems
        assert problem.state is BlobState.CORRUPT


def test_a_quarantine_killed_after_its_commit_is_finished_on_open(root: Path) -> None:
    flip(root, digest_of(LAYER))
    actor = subprocess.run(
        [sys.executable, "-c", QUARANTINE_ACTOR, str(root), "after-commit"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert actor.returncode == -signal.SIGKILL
    assert [entry.name.startswith(".pending.") for entry in quarantined(root)] == [True]
    with open_store(root) as store:
        [entry] = quarantined(root)
        assert not entry.name.startswith(".")
        assert json.loads((entry / "note.json").read_text())["digest"] == digest_of(LAYER)
        with pytest.raises(errdefs.NotFound):
            store.info(digest_of(LAYER))
        assert store.verify().clean


def test_the_store_method_returns_typed_results(root: Path) -> None:
    os.remove(blob_file(root, digest_of(CONFIG)))
    with LocalStore(root) as store:
        report = store.verify()
    assert report.checked == 2
    assert not report.clean
    [problem] = report.problems
    assert problem.digest == digest_of(CONFIG)
    assert problem.state is BlobState.MISSING
    assert problem.namespaces == ("default",)
    assert problem.quarantined is None


def test_a_commit_resting_on_quarantined_bytes_is_aborted_not_recorded(tmp_path: Path) -> None:
    data = b"shared between namespaces"
    digest = digest_of(data)
    with open_store(tmp_path / "store", namespace="first") as first:
        second = first.with_namespace("second")
        write_blob(first, "original", data)
        # The second namespace's writer starts from the stored bytes (containerd's shared policy).
        writer = second.writer("sharing", total=len(data), expected=digest)
        assert writer.status().offset == len(data)
        flip(tmp_path / "store", digest, offset=0)
        assert first.verify(quarantine=True).problems
        with pytest.raises(errdefs.Aborted):
            writer.commit(len(data), digest)
        with pytest.raises(errdefs.NotFound):
            second.info(digest)
        # Pushed again, it is stored afresh and whole.
        assert write_blob(second, "sharing", data, len(data), digest) == digest
        with second.reader_at(digest) as blob:
            assert blob.read() == data
        assert first.verify().clean

"""Collections beside writers in other processes, and collectors killed midway.

A collection must never take what is kept, however the writes and the
collection interleave, and a collector that dies at any step must leave the
store whole and its next collection able to finish the work. Writers here are
real processes (daemonless, and through a daemon whose scheduler collects after
every commit), and the collectors that die are killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.daemon import start_daemon

from contentd.content import digest_of, open_store

ROOT_LABEL = {"containerd.io/gc.root": "kept"}

#: Writes for SECONDS and records each kept digest in LOG once its write returned: blobs
#: labelled as roots, blobs committed under a lease then labelled before the lease goes,
#: and garbage between them. Through a daemon when ADDRESS is given, else on ROOT.
WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    from contentd.client import RemoteStore
    from contentd.content import open_store, write_blob

    root, address, log, seconds = sys.argv[1:]
    store = RemoteStore(address, "race") if address else open_store(root, "race")
    deadline = time.monotonic() + float(seconds)
    count = 0
    with open(log, "w") as out:
        while time.monotonic() < deadline:
            count += 1
            tag = f"{os.getpid()}-{count}"
            data = os.urandom(2048) + tag.encode()
            store.put(f"garbage-{tag}", os.urandom(512))
            if count % 2:
                digest = store.put(f"root-{tag}", data, labels={"containerd.io/gc.root": "kept"})
            else:
                with store.lease() as leased:
                    digest = write_blob(leased, f"leased-{tag}", data)
                    store.update(digest, {"containerd.io/gc.root": "kept"},
                                 ["labels.containerd.io/gc.root"])
            out.write(json.dumps({"digest": digest, "size": len(data)}) + "\\n")
            out.flush()
    store.close()
    """
)


def start_writer(root: Path, address: str, log: Path, seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), address, str(log), str(seconds)],
        stderr=subprocess.PIPE,
    )


def written(log: Path) -> list[dict[str, int | str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.slow
def test_writers_racing_collectors_lose_nothing_they_keep(tmp_path: Path) -> None:
    root = tmp_path / "root"
    daemon = start_daemon(
        root,
        "--gc-mutation-threshold",
        "1",
        "--gc-pause-threshold",
        "0.5",
        collect=True,
    )
    logs = [tmp_path / f"writer-{number}.log" for number in range(4)]
    try:
        writers = [
            start_writer(root, daemon.address if number % 2 else "", log, 8.0)
            for number, log in enumerate(logs)
        ]
        collections = 0
        with open_store(root, "race") as collector:
            while any(writer.poll() is None for writer in writers):
                if collections % 2:
                    collector.collect()
                else:
                    # A store just opened lists every blob and record for orphans
                    # while the writers commit.
                    with open_store(root, "race") as opened:
                        opened.collect()
                collections += 1
            for writer in writers:
                _, errors = writer.communicate(timeout=60)
                assert writer.returncode == 0, errors.decode()
            collector.collect()
            kept = [entry for log in logs for entry in written(log)]
            assert len(kept) > 20, kept
            for entry in kept:
                digest = str(entry["digest"])
                assert collector.info(digest).size == entry["size"], digest
                with collector.reader_at(digest) as reader:
                    assert digest_of(reader.read()) == digest
            # The garbage between them went, to the last blob.
            assert len(list(collector.walk())) == len({e["digest"] for e in kept})
        assert collections > 3
        assert "garbage collection failed" not in daemon.logged()
    finally:
        daemon.stop()


#: Fills ROOT (namespace "crash") with kept and garbage blobs, then collects, dying by
#: SIGKILL at POINT: while marking, after setting the first bytes aside (the removal not
#: committed), or after it committed but before the bytes were freed.
COLLECTOR = textwrap.dedent(
    """
    import os, signal, sys
    from contentd.content import _files, _gc, open_store

    root, point = sys.argv[1:]

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "marking":
        _gc._Namespace._reach = die
    elif point == "set-aside":
        set_aside = _files.FileBlobs.set_aside
        def set_one_aside(self, digest):
            token = set_aside(self, digest)
            die()
        _files.FileBlobs.set_aside = set_one_aside
    elif point == "committed":
        _files.FileBlobs.drop = die
    with open_store(root, "crash") as store:
        store.collect()
    """
)


@pytest.mark.parametrize("point", ["marking", "set-aside", "committed"])
def test_a_collector_killed_midway_leaves_the_kept_and_the_next_collection_finishes(
    tmp_path: Path, point: str
) -> None:
    root = tmp_path / "root"
    with open_store(root, "crash") as store:
        kept = [store.put(f"kept-{n}", os.urandom(300), labels=ROOT_LABEL) for n in range(20)]
        garbage = [store.put(f"garbage-{n}", os.urandom(300)) for n in range(20)]
    collector = subprocess.run(
        [sys.executable, "-c", COLLECTOR, str(root), point],
        check=False,
        capture_output=True,
        timeout=60,
    )
    assert collector.returncode == -signal.SIGKILL, collector.stderr.decode()
    with open_store(root, "crash") as store:
        for digest in kept:
            with store.reader_at(digest) as reader:
                assert digest_of(reader.read()) == digest
        report = store.collect()
        removed_before = 0 if point in ("marking", "set-aside") else len(garbage)
        assert report.content == len(garbage) - removed_before
        assert sorted(info.digest for info in store.walk()) == sorted(kept)
        for digest in garbage:
            algorithm, encoded = digest.split(":")
            assert not (root / "blobs" / algorithm / encoded).exists()
    assert list((root / "trash").iterdir()) == []

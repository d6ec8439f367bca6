"""IngestLock: the per-ingest lock, across processes and through the unlink at an ingest's end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from contentd.content._locks import IngestLock


def test_second_holder_is_refused_until_the_first_releases(tmp_path: Path) -> None:
    first, second = IngestLock(tmp_path / "a.lock"), IngestLock(tmp_path / "a.lock")
    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()


def test_it_contends_with_filelock_on_the_same_file(tmp_path: Path) -> None:
    lock = IngestLock(tmp_path / "a.lock")
    assert lock.try_acquire()
    with pytest.raises(Timeout):
        FileLock(str(tmp_path / "a.lock"), timeout=0).acquire()
    lock.release()


def test_it_holds_against_another_process(tmp_path: Path) -> None:
    lock = IngestLock(tmp_path / "a.lock")
    assert lock.try_acquire()
    probe = (
        "import sys; from pathlib import Path; from contentd.content._locks import IngestLock; "
        "sys.exit(0 if IngestLock(Path(sys.argv[1])).try_acquire() else 3)"
    )
    other = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "a.lock")], check=False)
    assert other.returncode == 3
    lock.release()


def test_a_lock_on_a_file_its_path_no_longer_names_is_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race at an ingest's end: a contender opens the lock file, the holder
    # unlinks it and releases, the contender locks the unlinked file. It must
    # notice and lock the file the path names now (here, made by the next writer).
    path = tmp_path / "a.lock"
    path.touch()
    stale = tmp_path / "stale"
    stale.touch()
    real_open = os.open
    opens: list[str] = []

    def open_stale_first(file: os.PathLike[str] | str, flags: int, mode: int = 0o777) -> int:
        if os.fspath(file) != os.fspath(path):
            return real_open(file, flags, mode)
        if not opens:
            opens.append("stale")
            fd = real_open(stale, flags, mode)
            stale.unlink()
            return fd
        opens.append("path")
        return real_open(file, flags, mode)

    monkeypatch.setattr(os, "open", open_stale_first)
    lock = IngestLock(path)
    assert lock.try_acquire()
    monkeypatch.undo()
    # The stale file, then the file the path names now.
    assert opens == ["stale", "path"]
    assert not IngestLock(path).try_acquire()
    lock.release()


def test_release_with_remove_unlinks_the_file_while_held(tmp_path: Path) -> None:
    lock = IngestLock(tmp_path / "a.lock")
    assert lock.try_acquire()
    lock.release(remove=True)
    assert not (tmp_path / "a.lock").exists()
    assert not lock.held


def test_notes_are_kept_in_the_file_for_the_next_holder(tmp_path: Path) -> None:
    lock = IngestLock(tmp_path / "a.lock")
    assert lock.try_acquire()
    lock.write_note('{"digest": "sha256:00"}')
    lock.release()
    successor = IngestLock(tmp_path / "a.lock")
    assert successor.try_acquire()
    assert successor.read_note() == '{"digest": "sha256:00"}'
    successor.clear_note()
    assert successor.read_note() == ""
    successor.release()


def test_a_contender_is_not_refused_by_a_finishing_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race at an ingest's end, one step earlier: the contender opens the
    # lock file and the holder unlinks it, still holding it. The ingest is
    # over and the ref free, so the contender takes a new lock file rather
    # than report the ref locked.
    path = tmp_path / "a.lock"
    holder = IngestLock(path)
    assert holder.try_acquire()
    real_open = os.open

    def unlink_after_open(file: os.PathLike[str] | str, flags: int, mode: int = 0o777) -> int:
        fd = real_open(file, flags, mode)
        if os.path.lexists(path) and path.stat().st_ino == os.fstat(fd).st_ino:
            path.unlink()  # what holder.release(remove=True) does before it unlocks
        return fd

    monkeypatch.setattr(os, "open", unlink_after_open)
    contender = IngestLock(path)
    assert contender.try_acquire()
    monkeypatch.undo()
    assert not IngestLock(path).try_acquire()
    holder.release()  # the rest of its release: the unlock
    assert not IngestLock(path).try_acquire()
    contender.release(remove=True)
    assert not path.exists()

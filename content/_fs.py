"""Filesystem steps the store takes, with their failures translated into error classes."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, cast

from contentd.errdefs import PermissionDenied, ResourceExhausted

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


@contextlib.contextmanager
def translate_os_errors(doing: str) -> Iterator[None]:
    """Turn a full or read-only disk into error classes; leave other OSErrors unclassified.

    The messages say what was being done, never which path: paths are internals.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise ResourceExhausted(f"{doing}: no space left on device") from exc
        if exc.errno in _NOT_WRITABLE:
            raise PermissionDenied(f"{doing}: the store is not writable") from exc
        raise


def fsync_directory(path: Path) -> None:
    """Make a directory's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of `data`, looping over short writes."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def remove_quietly(path: Path) -> None:
    """Unlink a file that may already be gone."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _find_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None  # not Linux: commits flush everything at their fsync
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int]", function)


_sync_file_range = _find_sync_file_range()
_SYNC_FILE_RANGE_WRITE: Final = 2

#: How many bytes an ingest lets pile up in the page cache before it asks
#: the kernel to start writing them out.
WRITEBACK_BYTES: Final = 8 << 20


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range of a file to disk, without waiting.

    Large ingests otherwise leave all their bytes dirty until the commit's
    fsync, which then waits for the whole blob to reach the disk while the
    stream that carried it sits idle. Started early, the writing overlaps the
    stream and the fsync finds little left. Advisory: durability still comes
    from the fsync alone, and a failure here changes nothing.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

"""Filesystem steps the store takes, with their failures translated into error classes."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, cast

from contentd.errdefs import DataLoss, PermissionDenied, ResourceExhausted, Unavailable

#: Reason of the Unavailable error raised when the store's disk fails a write (EIO).
STORE_IO_ERROR: Final = "STORE_IO_ERROR"
#: Reasons of the DataLoss errors for a recorded blob whose bytes are gone, or unreadable.
BLOB_MISSING: Final = "BLOB_MISSING"
BLOB_UNREADABLE: Final = "BLOB_UNREADABLE"

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
# EUCLEAN is how ext4, xfs and btrfs report a damaged filesystem structure.
_IO_FAILED = frozenset({errno.EIO, errno.EUCLEAN})
_log = logging.getLogger("contentd.store")


@contextlib.contextmanager
def translate_os_errors(doing: str) -> Iterator[None]:
    """Turn a full, read-only or failing disk into error classes; leave other OSErrors alone.

    An I/O error is Unavailable (reason STORE_IO_ERROR): nothing was stored,
    the fault is the store's disk and not the request, and the same request
    may succeed once the disk is repaired. The messages say what was being
    done, never which path: paths are internals, kept for the log.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise ResourceExhausted(f"{doing}: no space left on device") from exc
        if exc.errno in _NOT_WRITABLE:
            raise PermissionDenied(f"{doing}: the store is not writable") from exc
        if exc.errno in _IO_FAILED:
            _log.error("%s: %s", doing, exc)
            raise Unavailable(
                f"{doing}: I/O error on the store's disk", reason=STORE_IO_ERROR
            ) from exc
        raise


@contextlib.contextmanager
def translate_read_errors(digest: str) -> Iterator[None]:
    """Reading a committed blob: an I/O error means its bytes cannot be read back, DataLoss.

    Retrying does not bring such bytes back; `contentd verify` finds every
    blob in that state and can quarantine it so that it can be stored again.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno in _IO_FAILED:
            _log.error("reading content %s: %s", digest, exc)
            raise DataLoss(
                f"content {digest}: I/O error reading its bytes", reason=BLOB_UNREADABLE
            ) from exc
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

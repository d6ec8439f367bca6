"""Filesystem steps the store takes, with their failures translated into error classes."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

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

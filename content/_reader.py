"""Reading committed blobs: random access and file-like streaming, locally or from a daemon."""

from __future__ import annotations

import io
import os

from contentd.errdefs import InvalidArgument, OutOfRange

from ._fs import translate_read_errors


class SeekableBlob(io.RawIOBase):
    """A committed blob as a read-only binary file, with `size` and `read_at`.

    Subclasses supply `_read_into`, which fills a buffer from a position; the
    file semantics (position, seeking, bounds, closing) live here once.
    Reads never go past `size`.
    """

    def __init__(self, digest: str, size: int) -> None:
        super().__init__()
        self.digest = digest
        self._size = size
        self._position = 0

    @property
    def size(self) -> int:
        """The blob's size in bytes."""
        return self._size

    def _read_into(self, view: memoryview, offset: int) -> int:
        """Fill `view` (already cut to what the blob holds) from `offset`; the byte count."""
        raise NotImplementedError

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed blob reader")

    def _check_offset(self, offset: int) -> None:
        if offset < 0:
            raise InvalidArgument(f"read of {self.digest} at offset {offset}: must not be negative")
        if offset > self._size:
            raise OutOfRange(
                f"read of {self.digest} at offset {offset}: past the end ({self._size} bytes)"
            )

    def read_at(self, size: int, offset: int) -> bytes:
        """Up to `size` bytes from `offset`; ``b""`` at the end of the blob."""
        if size < 0:
            raise InvalidArgument(f"read of {self.digest}: size {size} must not be negative")
        buffer = bytearray(min(size, max(0, self._size - offset)))
        return bytes(memoryview(buffer)[: self.readinto_at(buffer, offset)])

    def readinto_at(self, buffer: bytearray | memoryview, offset: int) -> int:
        """Fill `buffer` from `offset` (as far as the blob goes); returns the byte count."""
        self._check_offset(offset)
        self._check_open()
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._size - offset)
        done = 0
        while done < wanted:
            count = self._read_into(view[done:wanted], offset + done)
            if count == 0:
                break
            done += count
        return done

    # io.RawIOBase

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0:
            return self.readall()
        buffer = bytearray(size)
        return bytes(memoryview(buffer)[: self.readinto(buffer)])

    def readall(self) -> bytes:
        start = min(self._position, self._size)
        data = self.read_at(self._size - start, start)
        self._position = start + len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        read = self.readinto_at(buffer, min(self._position, self._size))
        self._position += read
        return read

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._position + offset
        elif whence == io.SEEK_END:
            target = self._size + offset
        else:
            raise InvalidArgument(f"seek whence {whence}: must be 0, 1 or 2")
        if target < 0:
            raise InvalidArgument(f"seek of {self.digest} to {target}: must not be negative")
        self._position = target
        return target

    def tell(self) -> int:
        self._check_open()
        return self._position


class BlobReader(SeekableBlob):
    """A committed blob in a local store, read with pread from one open file.

    `size` is the blob's committed size, and reads never go past it even if
    the file on disk were longer. pread keeps `read_at` from several threads
    on one reader safe. A read the disk fails (EIO) is DataLoss: the bytes
    cannot be read back. Reads do not hash; whole reads are verified by
    their callers (`contentd get`, `contentd verify`).
    """

    def __init__(self, fd: int, size: int, digest: str) -> None:
        super().__init__(digest, size)
        self._fd = fd

    def _read_into(self, view: memoryview, offset: int) -> int:
        with translate_read_errors(self.digest):
            return os.preadv(self._fd, [view], offset)

    def read_at(self, size: int, offset: int) -> bytes:
        # One pread, straight into the bytes returned: the daemon's Read
        # path calls this for every 1 MiB it sends.
        if size < 0:
            raise InvalidArgument(f"read of {self.digest}: size {size} must not be negative")
        self._check_offset(offset)
        self._check_open()
        with translate_read_errors(self.digest):
            return os.pread(self._fd, min(size, self._size - offset), offset)

    def fileno(self) -> int:
        self._check_open()
        return self._fd

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()

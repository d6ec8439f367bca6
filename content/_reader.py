"""Reading committed blobs: random access and file-like streaming over one open file."""

from __future__ import annotations

import io
import os
from types import TracebackType
from typing import Self

from contentd.errdefs import InvalidArgument, OutOfRange


class BlobReader(io.RawIOBase):
    """A committed blob opened for reading; a binary file object with `read_at` and `size`.

    `size` is the blob's committed size, and reads never go past it even if
    the file on disk were longer. Reads use pread, so `read_at` from several
    threads on one reader is safe.
    """

    def __init__(self, fd: int, size: int, digest: str) -> None:
        super().__init__()
        self._fd = fd
        self._size = size
        self._position = 0
        self.digest = digest

    @property
    def size(self) -> int:
        """The blob's size in bytes."""
        return self._size

    def _check_offset(self, offset: int) -> None:
        if offset < 0:
            raise InvalidArgument(f"read of {self.digest} at offset {offset}: must not be negative")
        if offset > self._size:
            raise OutOfRange(
                f"read of {self.digest} at offset {offset}: past the end ({self._size} bytes)"
            )

    def read_at(self, size: int, offset: int) -> bytes:
        """Up to `size` bytes from `offset`; ``b""`` at the end of the blob."""
        self._check_offset(offset)
        if size < 0:
            raise InvalidArgument(f"read of {self.digest}: size {size} must not be negative")
        self._check_closed()
        return os.pread(self._fd, min(size, self._size - offset), offset)

    def readinto_at(self, buffer: bytearray | memoryview, offset: int) -> int:
        """Fill `buffer` from `offset` (as far as the blob goes); returns the byte count."""
        self._check_offset(offset)
        self._check_closed()
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._size - offset)
        return os.preadv(self._fd, [view[:wanted]], offset) if wanted else 0

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
        data = self.read_at(max(0, self._size - self._position), min(self._position, self._size))
        self._position += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        read = self.readinto_at(buffer, min(self._position, self._size))
        self._position += read
        return read

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_closed()
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
        self._check_closed()
        return self._position

    def fileno(self) -> int:
        self._check_closed()
        return self._fd

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()

    def _check_closed(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed blob reader")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

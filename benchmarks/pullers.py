"""The tools the pull benchmark runs, each into a fresh destination, and how each is checked.

- `skopeo copy docker://REF oci:DIR:v1`, as its users copy an image into a layout;
- `ctr content fetch --plain-http REF` into a private containerd 1.6 (`servers.Containerd`);
- `contentd pull --plain-http REF` through a running `contentd serve` (`servers.Contentd`);
- `contentd --root DIR pull --plain-http REF`, with no daemon.

A puller is given a new directory for each round: `prepare` makes the destination there
(starting a fresh daemon on a fresh root, not timed) and says what command pulls into it
and which daemon to measure; `check` then reads every blob of the image back through the
destination's own reader (the layout's files, `ctr content get`, the contentd client) and
hashes it, which proves nothing was missed or mangled; `finish` stops the daemon. The
harness then removes the directory, so the disk never holds more than one copy of the
image beside the registry's.
"""

from __future__ import annotations

import hashlib
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from pull_image import TAG, BuiltImage
from servers import Containerd, Contentd, Server
from support.ctr import Ctr
from support.daemon import contentd_command
from support.oci_layout import tagged_descriptor
from support.skopeo import Skopeo

from contentd.client import RemoteStore
from contentd.content import Descriptor, ReaderAt, Store, open_store

SKOPEO: Final = "skopeo"
CTR: Final = "ctr"
CONTENTD_PULL: Final = "contentd"
CONTENTD_LOCAL: Final = "contentd --fetch-locally"
CONTENTD_ROOT: Final = "contentd --root"
#: Bytes read back at a time when a destination is checked.
CHUNK: Final = 1 << 20
#: The namespace ctr and contentd pull into.
NAMESPACE: Final = "default"


class CheckError(RuntimeError):
    """A destination does not hold the image it was pulled into."""


@dataclass(frozen=True)
class Destination:
    """A fresh destination: the command that pulls into it, and the daemon it goes through."""

    command: list[str]
    environment: dict[str, str] | None = None
    #: The daemon to measure beside the command (None: the command does everything).
    daemon_pid: int | None = None


def verify(blob: Descriptor, data: Iterable[bytes], where: str) -> None:
    """Hash `data`, which must be exactly `blob`'s bytes."""
    hasher = hashlib.sha256()
    size = 0
    for piece in data:
        hasher.update(piece)
        size += len(piece)
    digest = "sha256:" + hasher.hexdigest()
    if (digest, size) != (blob.digest, blob.size):
        raise CheckError(
            f"{where}: {blob.digest} read back as {size} bytes of {digest} "
            f"(expected {blob.size} bytes)"
        )


def pieces(source: BinaryIO | ReaderAt) -> Iterator[bytes]:
    """What is left of `source`, CHUNK bytes at a time."""
    while piece := source.read(CHUNK):
        yield piece


def file_pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        yield from pieces(source)


class Puller(ABC):
    """One tool, pulling into a fresh destination each round."""

    #: The row's name in the tables and the JSON.
    name: str
    #: The daemon it pulls through, if any.
    daemon: str | None = None

    def __init__(self, registry: str) -> None:
        #: HOST:PORT of the registry every tool pulls from.
        self.registry = registry

    @abstractmethod
    def prepare(self, place: Path, image: BuiltImage) -> Destination:
        """Make a fresh destination under `place` (a new directory) for pulling `image`."""

    @abstractmethod
    def check(self, image: BuiltImage) -> int:
        """Read back and hash every blob of `image` from the destination; how many there were.
        Raises CheckError when one is missing or wrong."""

    def finish(self) -> None:  # noqa: B027 (only a daemon needs stopping)
        """Stop what `prepare` started, if anything; safe to call more than once."""

    def log(self) -> str | None:
        """The last lines the daemon logged, for error reports (None: there is none)."""
        return None


class SkopeoPuller(Puller):
    """`skopeo copy` into a new OCI layout, with a home of its own (no host policy or auth)."""

    name = SKOPEO

    def __init__(self, registry: str, home: Path) -> None:
        super().__init__(registry)
        self._skopeo = Skopeo(home)
        self._layout: Path | None = None

    def prepare(self, place: Path, image: BuiltImage) -> Destination:
        self._layout = place / "layout"
        command = [
            SKOPEO,
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            f"docker://{image.reference(self.registry)}",
            f"oci:{self._layout}:{TAG}",
        ]
        return Destination(command, self._skopeo.env())

    def check(self, image: BuiltImage) -> int:
        assert self._layout is not None
        tagged = tagged_descriptor(self._layout, TAG)
        if tagged["digest"] != image.manifest.digest:
            raise CheckError(f"skopeo's layout tags {tagged['digest']}, not the image's manifest")
        blobs = self._layout / "blobs" / "sha256"
        for blob in image.blobs:
            path = blobs / blob.digest.removeprefix("sha256:")
            if not path.is_file():
                raise CheckError(f"skopeo's layout has no blob {blob.digest}")
            verify(blob, file_pieces(path), "skopeo's layout")
        return len(image.blobs)


class _DaemonPuller(Puller):
    """A tool that pulls through a daemon started fresh, on a new root, for each round."""

    daemon: str
    #: The daemon's server (started on a directory of its own under the round's).
    server_type: type[Containerd] | type[Contentd]

    def __init__(self, registry: str) -> None:
        super().__init__(registry)
        self._server: Server | None = None
        self._address = ""

    @abstractmethod
    def command(self, address: str, image: BuiltImage) -> list[str]:
        """The command that pulls `image` through the daemon at `address`."""

    def prepare(self, place: Path, image: BuiltImage) -> Destination:
        self._server = self.server_type(place / self.daemon)
        running = self._server.start()
        self._address = running.address
        return Destination(self.command(running.address, image), daemon_pid=running.pid)

    def finish(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def log(self) -> str | None:
        return None if self._server is None else self._server.log()


class CtrPuller(_DaemonPuller):
    """`ctr content fetch` into a fresh private containerd."""

    name = CTR
    daemon = "containerd"
    server_type = Containerd

    def command(self, address: str, image: BuiltImage) -> list[str]:
        return Ctr(address, NAMESPACE).command(
            "content", "fetch", "--plain-http", image.reference(self.registry)
        )

    def check(self, image: BuiltImage) -> int:
        ctr = Ctr(self._address, NAMESPACE)
        listed = set(ctr.content_ls())
        for blob in image.blobs:
            if blob.digest not in listed:
                raise CheckError(f"`ctr content ls` does not list {blob.digest}")
            verify(blob, self._content_get(ctr, blob.digest), "ctr content get")
        return len(image.blobs)

    @staticmethod
    def _content_get(ctr: Ctr, digest: str) -> Iterator[bytes]:
        """`ctr content get DIGEST`'s output, streamed."""
        with subprocess.Popen(ctr.command("content", "get", digest), stdout=subprocess.PIPE) as get:
            assert get.stdout is not None
            while piece := get.stdout.read(CHUNK):
                yield piece
        if get.returncode != 0:
            raise CheckError(f"`ctr content get {digest}` exited with status {get.returncode}")


def check_store(store: Store, image: BuiltImage, where: str) -> int:
    """Every blob of `image` in `store`, at its size, read back and hashed."""
    for blob in image.blobs:
        info = store.info(blob.digest)
        if info.size != blob.size:
            raise CheckError(f"{where}: {blob.digest} is {info.size} bytes, not {blob.size}")
        with store.reader_at(blob.digest) as reader:
            verify(blob, pieces(reader), where)
    return len(image.blobs)


class ContentdPuller(_DaemonPuller):
    """`contentd pull` through a fresh `contentd serve` on a new root, which fetches the
    image itself (its Transfer service)."""

    name = CONTENTD_PULL
    daemon = "contentd"
    server_type = Contentd

    def command(self, address: str, image: BuiltImage) -> list[str]:
        pull = ["pull", "--plain-http", image.reference(self.registry)]
        return [*contentd_command(), "--address", address, *pull]

    def check(self, image: BuiltImage) -> int:
        with RemoteStore(self._address, NAMESPACE) as store:
            return check_store(store, image, "contentd serve")


class FetchLocallyPuller(ContentdPuller):
    """`contentd pull --fetch-locally` through a fresh `contentd serve`: the client downloads
    and writes every blob through the daemon's Content API (containerd 1.6's way)."""

    name = CONTENTD_LOCAL

    def command(self, address: str, image: BuiltImage) -> list[str]:
        return [*super().command(address, image), "--fetch-locally"]


class DaemonlessPuller(Puller):
    """`contentd --root DIR pull`: the client on a new store directory, no daemon."""

    name = CONTENTD_ROOT

    def __init__(self, registry: str) -> None:
        super().__init__(registry)
        self._root: Path | None = None

    def prepare(self, place: Path, image: BuiltImage) -> Destination:
        self._root = place / "root"
        pull = ["pull", "--plain-http", image.reference(self.registry)]
        return Destination([*contentd_command(), "--root", str(self._root), *pull])

    def check(self, image: BuiltImage) -> int:
        assert self._root is not None
        with open_store(self._root, NAMESPACE) as store:
            return check_store(store, image, "contentd --root")

"""The images the pull benchmark pulls: made on disk as an OCI layout, pushed with skopeo.

An image is a manifest, a small config and layers that are real gzip'd tars, each of one
file of random bytes. They are written at gzip level 0 (stored deflate blocks): that is
what any compressor emits for random bytes, which do not shrink, and it is quick to make.
Real gzip matters: skopeo recompresses a layer whose bytes are not gzip though its media
type says so, which would change its digests and measure its compressor. Layers are
streamed to disk, hashed as they are written, so a large image never sits in memory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from support.oci_layout import (
    IMAGE_CONFIG,
    IMAGE_INDEX,
    IMAGE_LAYER_GZIP,
    IMAGE_MANIFEST,
    OCI_LAYOUT_VERSION,
    REF_NAME,
    encode,
)
from support.skopeo import Skopeo

from contentd.content import Descriptor

#: Bytes of random data made and written at a time.
PIECE: Final = 1 << 20
TAG: Final = "v1"


@dataclass(frozen=True)
class ImageShape:
    """What one benchmark case pulls: `layers` layers of `layer_size` random bytes each."""

    #: The case's name, on the command line and in the JSON.
    case: str
    #: The repository it is pushed to.
    repository: str
    layers: int
    layer_size: int


@dataclass(frozen=True)
class BuiltImage:
    """An image written as an OCI layout: its blobs, the manifest first."""

    shape: ImageShape
    blobs: tuple[Descriptor, ...]

    @property
    def manifest(self) -> Descriptor:
        return self.blobs[0]

    @property
    def size(self) -> int:
        """Every blob's bytes together: what a pull moves."""
        return sum(blob.size for blob in self.blobs)

    def reference(self, registry: str) -> str:
        """Where it is in the registry at `registry` (HOST:PORT), without a scheme."""
        return f"{registry}/{self.shape.repository}:{TAG}"


class _Hashing(io.RawIOBase):
    """A writable stream that hashes and counts what passes through it to `target`."""

    def __init__(self, target: io.RawIOBase | gzip.GzipFile) -> None:
        super().__init__()
        self._target = target
        self.hasher = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.hasher.update(data)
        self.size += len(data)
        written = self._target.write(data)
        return len(data) if written is None else written

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()


class _RandomFile(io.RawIOBase):
    """`size` random bytes, read as a file."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self._left, PIECE)
        buffer[:count] = os.urandom(count)
        self._left -= count
        return count


def _write_blob(blobs: Path, data: bytes, media_type: str) -> Descriptor:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return Descriptor(media_type, f"sha256:{digest}", len(data))


def _write_layer(blobs: Path, index: int, size: int) -> tuple[Descriptor, str]:
    """A gzip'd tar of one file of `size` random bytes, and its diff id (the tar's digest)."""
    partial = blobs / f"layer-{index}.partial"
    with partial.open("wb", buffering=0) as raw:
        compressed = _Hashing(raw)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=0, mtime=0) as zipped:
            tar_stream = _Hashing(zipped)
            with tarfile.open(fileobj=tar_stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                member = tarfile.TarInfo(f"layer{index}/data.bin")
                member.size = size
                member.mode = 0o644
                tar.addfile(member, io.BufferedReader(_RandomFile(size), PIECE))
    partial.rename(blobs / compressed.digest.removeprefix("sha256:"))
    return Descriptor(IMAGE_LAYER_GZIP, compressed.digest, compressed.size), tar_stream.digest


def write_image(path: Path, shape: ImageShape) -> BuiltImage:
    """Write an OCI layout at `path` holding one new image of `shape`, tagged `TAG`."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layered = [_write_layer(blobs, n, shape.layer_size) for n in range(shape.layers)]
    layers = tuple(layer for layer, _ in layered)
    config = _write_blob(
        blobs,
        encode(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": ["/bin/true"]},
                "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layered]},
            }
        ),
        IMAGE_CONFIG,
    )

    def descriptor(blob: Descriptor) -> dict[str, object]:
        return {"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size}

    manifest = _write_blob(
        blobs,
        encode(
            {
                "schemaVersion": 2,
                "mediaType": IMAGE_MANIFEST,
                "config": descriptor(config),
                "layers": [descriptor(layer) for layer in layers],
            }
        ),
        IMAGE_MANIFEST,
    )
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
    tagged = descriptor(manifest) | {"annotations": {REF_NAME: TAG}}
    index = {"schemaVersion": 2, "mediaType": IMAGE_INDEX, "manifests": [tagged]}
    (path / "index.json").write_bytes(encode(index))
    return BuiltImage(shape, (manifest, config, *layers))


def push_image(skopeo: Skopeo, layout: Path, image: BuiltImage, registry: str) -> None:
    """Push the image in `layout` to `registry` (HOST:PORT, plain HTTP), digests unchanged."""
    skopeo.push(f"oci:{layout}:{TAG}", f"docker://{image.reference(registry)}")

"""Build OCI image layouts on disk, the way a build tool would, with no network.

`write_image_layout(path, tag, seed)` writes a layout holding one image: a config (a valid
OCI image config for linux/amd64 whose `rootfs.diff_ids` match its layers) and layers that
are real gzip'd tars of random files, one of them a few MiB so a push crosses any chunk
size a client or server picks. `write_index_layout` writes a multi-platform image index of
two such images that share their base layer. Everything is deterministic in `seed`: the
same call writes the same bytes, so digests can be compared across a round trip.

Manifests are written indented, not in any canonical form, so a server that re-serialises
a manifest instead of storing its bytes changes its digest and is caught.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20

OCI_LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"

IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
IMAGE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# A fixed time for tar headers and the config, so layers and digests depend on the seed only.
EPOCH = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"

# Sizes of the files each layer holds; the second layer's file is larger than any usual
# upload chunk, and random bytes do not compress, so its blob is as large.
LAYER_FILE_SIZES = ((4096, 700), (3 * MiB + 12345,), (20_000,))


def digest_of(data: bytes) -> str:
    """The sha256 digest string of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def encode(document: dict[str, Any]) -> bytes:
    """A JSON document as a manifest or config is stored: indented, keys in a fixed order."""
    return json.dumps(document, indent=3, sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class Blob:
    """Content destined for `blobs/`, with the media type its descriptor gives it."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return digest_of(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        """The OCI descriptor of this blob; `extra` adds fields such as `platform`."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Image:
    """One image: its manifest, its config and its layers, in manifest order."""

    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]
    #: The digests of the uncompressed layers, as the config's `rootfs.diff_ids` has them.
    diff_ids: tuple[str, ...]
    architecture: str

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """Every blob the image is made of, manifest included."""
        return (self.manifest, self.config, *self.layers)


@dataclass(frozen=True)
class ImageIndex:
    """A multi-platform image index and the images it lists."""

    index: Blob
    images: tuple[Image, ...]

    @property
    def manifest(self) -> Blob:
        """The index itself: what a tag points at."""
        return self.index

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """Every distinct blob of the index and its images, the index first."""
        seen: dict[str, Blob] = {self.index.digest: self.index}
        for image in self.images:
            for blob in image.blobs:
                seen.setdefault(blob.digest, blob)
        return tuple(seen.values())


@dataclass(frozen=True)
class Layout:
    """An OCI image layout directory and what `index.json` tags in it."""

    path: Path
    #: Each tag (`org.opencontainers.image.ref.name`) and what it names.
    tags: dict[str, Image | ImageIndex] = field(default_factory=dict)

    def reference(self, tag: str) -> str:
        """The `oci:` image reference skopeo and other containers/image tools take."""
        return f"oci:{self.path}:{tag}"


def gzip_tar(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """A tar of `files` (name to content), and that tar gzip'd; both reproducible."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            member = tarfile.TarInfo(name)
            member.size = len(content)
            member.mtime = EPOCH
            member.mode = 0o644
            tar.addfile(member, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return tar_bytes, gzip.compress(tar_bytes, mtime=0)


def random_layer(rng: random.Random, index: int, sizes: tuple[int, ...]) -> tuple[Blob, str]:
    """A gzip'd tar layer of random files of `sizes` bytes, and its diff id."""
    files = {f"layer{index}/file{n}.bin": rng.randbytes(size) for n, size in enumerate(sizes)}
    tar_bytes, compressed = gzip_tar(files)
    return Blob(IMAGE_LAYER_GZIP, compressed), digest_of(tar_bytes)


def build_image(
    seed: int,
    architecture: str = "amd64",
    layer_file_sizes: tuple[tuple[int, ...], ...] = LAYER_FILE_SIZES,
    base: tuple[Blob, str] | None = None,
) -> Image:
    """An image of random layers, deterministic in `seed`. `base`, a layer and its diff id,
    goes first when given, as a shared base layer does."""
    rng = random.Random(seed)
    layered = [base] if base is not None else []
    layered += [
        random_layer(rng, n, sizes) for n, sizes in enumerate(layer_file_sizes, start=len(layered))
    ]
    layers = tuple(layer for layer, _ in layered)
    diff_ids = tuple(diff_id for _, diff_id in layered)
    config = Blob(
        IMAGE_CONFIG,
        encode(
            {
                "architecture": architecture,
                "os": "linux",
                "created": CREATED,
                "config": {
                    "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
                    "Cmd": ["/bin/true"],
                    "Labels": {"seed": str(seed)},
                },
                "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
                "history": [
                    {"created": CREATED, "created_by": f"layer {n}"} for n in range(len(layers))
                ],
            }
        ),
    )
    manifest = Blob(
        IMAGE_MANIFEST,
        encode(
            {
                "schemaVersion": 2,
                "mediaType": IMAGE_MANIFEST,
                "config": config.descriptor(),
                "layers": [layer.descriptor() for layer in layers],
                "annotations": {"org.opencontainers.image.created": CREATED},
            }
        ),
    )
    return Image(manifest, config, layers, diff_ids, architecture)


def build_index(seed: int, architectures: tuple[str, ...] = ("amd64", "arm64")) -> ImageIndex:
    """An image index of one image per architecture, all on one shared base layer."""
    base = random_layer(random.Random(seed), 0, (2048, 100))
    images = tuple(
        build_image(
            seed + n + 1,
            architecture,
            layer_file_sizes=((MiB + 17 * n,), (5000,)),
            base=base,
        )
        for n, architecture in enumerate(architectures)
    )
    index = Blob(
        IMAGE_INDEX,
        encode(
            {
                "schemaVersion": 2,
                "mediaType": IMAGE_INDEX,
                "manifests": [
                    image.manifest.descriptor(
                        platform={"architecture": image.architecture, "os": "linux"}
                    )
                    for image in images
                ],
            }
        ),
    )
    return ImageIndex(index, images)


def write_layout(path: Path, tags: dict[str, Image | ImageIndex]) -> Layout:
    """Write an OCI image layout at `path` holding every blob of `tags`, each tag named in
    `index.json` by the `org.opencontainers.image.ref.name` annotation."""
    blobs_dir = path / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
    for target in tags.values():
        for blob in target.blobs:
            (blobs_dir / blob.digest.removeprefix("sha256:")).write_bytes(blob.data)
    index = {
        "schemaVersion": 2,
        "mediaType": IMAGE_INDEX,
        "manifests": [
            target.manifest.descriptor(annotations={REF_NAME: tag}) for tag, target in tags.items()
        ],
    }
    (path / "index.json").write_bytes(encode(index))
    return Layout(path, dict(tags))


def write_image_layout(path: Path, tag: str = "v1", seed: int = 1) -> Layout:
    """A layout at `path` holding one linux/amd64 image (see `build_image`) tagged `tag`."""
    return write_layout(path, {tag: build_image(seed)})


def write_index_layout(path: Path, tag: str = "v1", seed: int = 100) -> Layout:
    """A layout at `path` holding a two-platform image index (see `build_index`) tagged `tag`."""
    return write_layout(path, {tag: build_index(seed)})


def read_blobs(path: Path) -> dict[str, bytes]:
    """Every blob of the layout at `path`, by digest."""
    return {
        f"sha256:{blob.name}": blob.read_bytes()
        for blob in sorted((path / "blobs" / "sha256").iterdir())
    }


def tagged_descriptor(path: Path, tag: str) -> dict[str, Any]:
    """The descriptor `index.json` of the layout at `path` names `tag` by."""
    index = json.loads((path / "index.json").read_bytes())
    matches = [
        descriptor
        for descriptor in index["manifests"]
        if descriptor.get("annotations", {}).get(REF_NAME) == tag
    ]
    if len(matches) != 1:
        raise LookupError(f"layout {path}: {len(matches)} descriptors tagged {tag!r}")
    return dict(matches[0])

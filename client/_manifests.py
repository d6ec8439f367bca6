"""Image media types, manifests' children, and the ref keys and labels containerd gives them.

An image is a tree of content: an index (or Docker manifest list) names
manifests, a manifest names its config and layers. containerd's fetch
stores each under a ref named for its kind (`ref_key`) and labels each
parent with its children (`child_gc_labels`) so that garbage collection
keeps the tree whole; this module does both the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from contentd.content import Descriptor, validate_digest
from contentd.errdefs import InvalidArgument, NotFound, Unimplemented

from ._platforms import Platform, PlatformMatcher

OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_PREFIX: Final = "application/vnd.oci.image.layer."
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
_DOCKER_LAYERS: Final = frozenset(
    {
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
_CONTAINERD_CONFIGS: Final = frozenset(
    {
        "application/vnd.containerd.container.criu.checkpoint.criu.tar",
        "application/vnd.containerd.container.checkpoint.config.v1+proto",
    }
)
#: What a client accepts from a manifests endpoint, best first, as containerd asks.
MANIFEST_ACCEPT: Final = ", ".join(
    [DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"]
)
#: The annotation an OCI layout names a tag by; containerd puts it in a ref key.
REF_NAME: Final = "org.opencontainers.image.ref.name"
#: Label keys containerd's fetch puts on parents (ChildGCLabels).
GC_REF_CONFIG: Final = "containerd.io/gc.ref.content.config"
GC_REF_MANIFEST: Final = "containerd.io/gc.ref.content.m."
GC_REF_LAYER: Final = "containerd.io/gc.ref.content.l."
GC_REF_OTHER: Final = "containerd.io/gc.ref.content."
#: The label containerd keeps, per registry host, the repositories a blob came from.
DISTRIBUTION_SOURCE: Final = "containerd.io/distribution.source"
#: The largest manifest read (docker distribution refuses to store larger ones).
MAX_MANIFEST_BYTES: Final = 4 << 20


def is_index(media_type: str) -> bool:
    return media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST)


def is_manifest(media_type: str) -> bool:
    return media_type in (OCI_MANIFEST, DOCKER_MANIFEST)


def is_layer(media_type: str) -> bool:
    return (
        media_type.startswith(OCI_LAYER_PREFIX)
        or media_type.split("+", maxsplit=1)[0] in _DOCKER_LAYERS
    )


def is_config(media_type: str) -> bool:
    return media_type in (OCI_CONFIG, DOCKER_CONFIG) or media_type in _CONTAINERD_CONFIGS


def kind(media_type: str) -> str:
    """What the content is, as containerd's ref keys name it: manifest, index, layer, config."""
    if is_manifest(media_type):
        return "manifest"
    if is_index(media_type):
        return "index"
    if is_layer(media_type):
        return "layer"
    if is_config(media_type):
        return "config"
    return "unknown"


def ref_key(descriptor: Descriptor) -> str:
    """The ingest ref containerd's fetch writes `descriptor` under (remotes.MakeRefKey)."""
    key = descriptor.digest
    name = descriptor.annotations.get(REF_NAME)
    if name is not None:
        key = f"{name}@{key}"
    return f"{kind(descriptor.media_type)}-{key}"


@dataclass(frozen=True)
class Child:
    """A descriptor in a manifest or index, with the platform an index gives it."""

    descriptor: Descriptor
    platform: Platform | None = None


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as far as a pull needs it: what it names."""

    media_type: str
    children: tuple[Child, ...] = field(default=())


def descriptor_of(raw: Any, where: str) -> Descriptor:
    """A descriptor from its JSON form; InvalidArgument if it is not a valid one."""
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}: a descriptor must be an object", reason="MANIFEST_INVALID")
    media_type, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
    if not isinstance(media_type, str) or not isinstance(digest, str):
        raise InvalidArgument(
            f"{where}: a descriptor needs mediaType and digest", reason="MANIFEST_INVALID"
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(
            f"{where}: descriptor {digest}: size must be a whole number", reason="MANIFEST_INVALID"
        )
    try:
        validate_digest(digest)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}: {exc.message}", reason="MANIFEST_INVALID") from None
    annotations = raw.get("annotations") or {}
    if not isinstance(annotations, dict):
        annotations = {}
    return Descriptor(media_type, digest, size, {str(k): str(v) for k, v in annotations.items()})


def parse_manifest(descriptor: Descriptor, data: bytes) -> Manifest:
    """What the manifest or index `data` (stored under `descriptor`) names.

    The descriptor's media type decides how it is read, as in containerd;
    a manifest whose own mediaType field says otherwise is refused. Content
    of other types names nothing.
    """
    media_type = descriptor.media_type
    if media_type == DOCKER_SCHEMA1_MANIFEST:
        raise Unimplemented(f"manifest {descriptor.digest}: Docker schema 1 is not supported")
    if not (is_index(media_type) or is_manifest(media_type)):
        return Manifest(media_type)
    where = f"{kind(media_type)} {descriptor.digest}"
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(f"{where}: not JSON", reason="MANIFEST_INVALID") from None
    if not isinstance(document, dict):
        raise InvalidArgument(f"{where}: not a JSON object", reason="MANIFEST_INVALID")
    declared = document.get("mediaType")
    if declared not in (None, "", media_type):
        raise InvalidArgument(
            f"{where}: says it is {declared}, served as {media_type}", reason="MANIFEST_INVALID"
        )
    if is_index(media_type):
        entries = document.get("manifests") or []
        if not isinstance(entries, list):
            raise InvalidArgument(f"{where}: manifests must be a list", reason="MANIFEST_INVALID")
        children = []
        for entry in entries:
            child = descriptor_of(entry, where)
            described = entry.get("platform")
            found = Platform.from_descriptor(described) if isinstance(described, dict) else None
            children.append(Child(child, found))
        return Manifest(media_type, tuple(children))
    layers = document.get("layers") or []
    if "config" not in document or not isinstance(layers, list):
        raise InvalidArgument(f"{where}: needs a config and layers", reason="MANIFEST_INVALID")
    named = [document["config"], *layers]
    return Manifest(media_type, tuple(Child(descriptor_of(raw, where)) for raw in named))


def _gc_label_key(media_type: str) -> str:
    if is_config(media_type):
        return GC_REF_CONFIG
    if is_manifest(media_type):
        return GC_REF_MANIFEST
    if is_layer(media_type):
        return GC_REF_LAYER
    return GC_REF_OTHER


def child_gc_labels(children: Iterable[Child]) -> dict[str, str]:
    """The labels containerd's fetch sets on a parent for its children.

    Each child's key (ChildGCLabels) is numbered per key, in order, from 0;
    a key not ending in ``.`` goes unnumbered the first time
    (images.SetChildrenMappedLabels).
    """
    labels: dict[str, str] = {}
    counts: dict[str, int] = {}
    for child in children:
        key = _gc_label_key(child.descriptor.media_type)
        index = counts.get(key, 0)
        counts[key] = index + 1
        if index > 0 or key.endswith("."):
            key = f"{key}{index}"
        labels[key] = child.descriptor.digest
    return labels


def distribution_source_label(host: str, repository: str, current: str = "") -> tuple[str, str]:
    """The label recording that a blob is in `repository` of `host`, merged with `current`.

    containerd keeps the repositories sorted and without repeats, one label
    per host (the host without its port).
    """
    hostname = urlsplit(f"dummy://{host}").hostname or host
    repositories = {r for r in current.split(",") if r} | {repository}
    return f"{DISTRIBUTION_SOURCE}.{hostname}", ",".join(sorted(repositories))


def select_children(manifest: Manifest, matcher: PlatformMatcher | None) -> Sequence[Child]:
    """The children a pull fetches: all of a manifest's; of an index's, all with no
    `matcher` (every platform), else the one best for it (containerd's FilterPlatforms
    and LimitManifests to 1: a child without a platform only if none matches).

    NotFound if the index has nothing for the matcher's platform.
    """
    if not is_index(manifest.media_type) or matcher is None:
        return manifest.children
    ranked = []
    for position, child in enumerate(manifest.children):
        rank = None if child.platform is None else matcher.rank(child.platform)
        if rank is not None:
            ranked.append((rank, position, child))
    if ranked:
        return [min(ranked, key=lambda entry: entry[:2])[2]]
    unplatformed = [child for child in manifest.children if child.platform is None]
    if not unplatformed:
        raise NotFound(f"no manifest for platform {matcher.wanted} in the index")
    return unplatformed[:1]


def matching_children(manifest: Manifest, matcher: PlatformMatcher | None) -> Sequence[Child]:
    """The children a push sends: all of a manifest's; of an index's, all with no
    `matcher`, else every one for its platform and every one without a platform
    (containerd's FilterPlatforms)."""
    if not is_index(manifest.media_type) or matcher is None:
        return manifest.children
    return [
        child
        for child in manifest.children
        if child.platform is None or matcher.rank(child.platform) is not None
    ]

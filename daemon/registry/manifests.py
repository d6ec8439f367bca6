"""Image manifests and indexes as the registry accepts them: parsed, checked, their references.

The registry stores a manifest's bytes exactly as pushed (its digest is of
those bytes); this module only decides whether they are a manifest it
serves, of which media type, and which other content they name, so a push
can be refused before anything it depends on is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from contentd.content import validate_digest
from contentd.errdefs import InvalidArgument

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"

#: Media types of manifests that name a config and layers.
IMAGE_MANIFESTS: Final = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
#: Media types of manifests that name other manifests.
INDEXES: Final = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES: Final = IMAGE_MANIFESTS | INDEXES

#: As docker distribution: larger bodies are refused before they are parsed.
MAX_MANIFEST_BYTES: Final = 4 << 20

MANIFEST_INVALID: Final = "MANIFEST_INVALID"


@dataclass(frozen=True)
class Manifest:
    """A checked manifest: its media type, what it references, and its subject if any."""

    media_type: str
    #: Blobs (config, layers) an image manifest needs in the repository.
    blobs: tuple[str, ...]
    #: Manifests an index needs in the repository.
    manifests: tuple[str, ...]
    subject: str | None
    #: What a referrer is (its artifactType, else its config's media type).
    artifact_type: str = ""
    annotations: dict[str, str] | None = None


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(f"manifest invalid: {message}", reason=MANIFEST_INVALID)


def _descriptor(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{where} is not a descriptor object")
    if not isinstance(value.get("mediaType"), str) or not value["mediaType"]:
        raise _invalid(f"{where} has no mediaType")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where} has no valid size")
    digest = value.get("digest")
    if not isinstance(digest, str):
        raise _invalid(f"{where} has no digest")
    try:
        validate_digest(digest)
    except InvalidArgument:
        raise _invalid(f"{where} has an invalid digest") from None
    return value


def _descriptors(document: dict[str, Any], key: str) -> list[dict[str, Any]]:
    values = document.get(key)
    if not isinstance(values, list):
        raise _invalid(f"{key} is not a list")
    return [_descriptor(value, f"{key}[{index}]") for index, value in enumerate(values)]


def _media_type(document: dict[str, Any], content_type: str) -> str:
    declared = document.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType is not a string")
    content_type = content_type.split(";", 1)[0].strip().lower()
    if content_type in MANIFEST_TYPES:
        if declared and declared != content_type:
            raise _invalid(f"mediaType {declared} does not match Content-Type {content_type}")
        return content_type
    if declared:
        if declared not in MANIFEST_TYPES:
            raise _invalid(f"media type {declared} is not supported")
        return declared
    # OCI allows mediaType to be left out; the shape tells which it is.
    if "manifests" in document:
        return OCI_INDEX
    if "config" in document and "layers" in document:
        return OCI_MANIFEST
    raise _invalid("no media type, in Content-Type or in the manifest")


def parse_manifest(body: bytes, content_type: str) -> Manifest:
    """Check `body` as a manifest pushed with `content_type`; MANIFEST_INVALID if it is not."""
    if len(body) > MAX_MANIFEST_BYTES:
        raise _invalid(f"{len(body)} bytes is more than the {MAX_MANIFEST_BYTES} allowed")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _invalid("not JSON") from None
    if not isinstance(document, dict):
        raise _invalid("not a JSON object")
    if document.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")
    media_type = _media_type(document, content_type)
    subject = document.get("subject")
    subject_digest = _descriptor(subject, "subject")["digest"] if subject is not None else None
    artifact_type = document.get("artifactType") or ""
    if not isinstance(artifact_type, str):
        raise _invalid("artifactType is not a string")
    annotations = document.get("annotations")
    if annotations is not None and (
        not isinstance(annotations, dict)
        or not all(isinstance(v, str) for v in annotations.values())
    ):
        raise _invalid("annotations are not a map of strings")
    if media_type in INDEXES:
        manifests = _descriptors(document, "manifests")
        return Manifest(
            media_type,
            (),
            tuple(m["digest"] for m in manifests),
            subject_digest,
            artifact_type,
            annotations,
        )
    config = _descriptor(document.get("config"), "config")
    layers = _descriptors(document, "layers")
    # Foreign (non-distributable) layers live elsewhere, named by their urls.
    needed = [config["digest"]] + [layer["digest"] for layer in layers if not layer.get("urls")]
    return Manifest(
        media_type,
        tuple(needed),
        (),
        subject_digest,
        artifact_type or config["mediaType"],
        annotations,
    )

"""What the metadata backend keeps, as plain records every backend reads and writes alike."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class ContentRecord(NamedTuple):
    """A committed blob as one namespace records it (times in nanoseconds since the epoch).

    A named tuple: List builds one per blob, and that costs half of what a
    frozen dataclass's field-by-field `__init__` does.
    """

    digest: str
    size: int
    created_at: int
    updated_at: int
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class IngestRecord:
    """An ingest in progress as its namespace records it.

    Its bytes are the blob backend's under `key`, unless `base` names a
    committed blob it starts from (containerd's shared policy) and nothing
    has been appended to it yet.
    """

    namespace: str
    ref: str
    key: str
    total: int
    expected: str
    started_at: int
    updated_at: int
    base: str | None
    #: When an ingest written without a lease may be collected (ns); None: never
    #: by itself (a lease holds it, or it predates collection).
    expires_at: int | None = None


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A lease as its namespace records it: what it holds is listed apart (`lease_resources`)."""

    id: str
    created_at: int
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class Descriptor:
    """What an image points at: containerd's types.Descriptor as images store it."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """An image (a name for a target descriptor) as its namespace records it."""

    name: str
    labels: dict[str, str]
    target: Descriptor
    created_at: int
    updated_at: int


@dataclass(frozen=True)
class Referrer:
    """A manifest as a referrer of its subject: the descriptor the referrers API lists for it."""

    subject: str
    descriptor: dict[str, Any]
    artifact_type: str


def ingest_key(namespace: str, ref: str) -> str:
    """The key of an ingest's bytes and lock: a hash, so no ref ever becomes a path or name."""
    return hashlib.sha256(f"{namespace}\0{ref}".encode("utf-8", "surrogatepass")).hexdigest()

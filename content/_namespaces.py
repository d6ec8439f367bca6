"""Namespaces, as containerd's Namespaces service has them: names with labels.

A namespace comes into being with its first record (a blob, an ingest, a
lease, an image) or when created; it goes when deleted, which it may be only
once it holds no images and no blobs (its leases and ingests go with it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from contentd.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

from ._backends import MetadataBackend
from ._validate import validate_labels, validate_namespace


@dataclass(frozen=True, slots=True)
class Namespace:
    """A namespace and its labels."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


def _checked_labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in validate_labels(labels).items() if value}


class StoreNamespaces:
    """Every namespace of one store."""

    def __init__(self, metadata: MetadataBackend) -> None:
        self._metadata = metadata

    def list(self) -> list[Namespace]:
        """Every namespace, by name."""
        with self._metadata.read("listing namespaces") as tx:
            return [Namespace(name, labels) for name, labels in tx.namespaces()]

    def get(self, name: str) -> Namespace:
        """The namespace `name`, with no labels if it does not exist (as containerd answers)."""
        with self._metadata.read(f"reading namespace {name}") as tx:
            labels = tx.namespace_labels(name)
        return Namespace(name, labels or {})

    def create(self, name: str, labels: Mapping[str, str] | None = None) -> Namespace:
        validate_namespace(name)
        kept = _checked_labels(labels or {})
        with self._metadata.write(f"creating namespace {name}") as tx:
            if tx.namespace_labels(name) is not None:
                raise AlreadyExists(f'namespace "{name}"')
            tx.set_namespace_labels(name, kept, time.time_ns())
        return Namespace(name, kept)

    def update(
        self, name: str, labels: Mapping[str, str], fieldpaths: Sequence[str] = ()
    ) -> Namespace:
        """Set labels: all of them with no paths, one per ``labels.<k>`` path (absent: removed).

        A namespace that does not exist is created, as containerd does.
        """
        validate_namespace(name)
        for path in fieldpaths:
            if not path.startswith("labels."):
                raise InvalidArgument(f'cannot update "{path}" field')
        given = _checked_labels(labels)
        with self._metadata.write(f"updating namespace {name}") as tx:
            updated = dict(tx.namespace_labels(name) or {}) if fieldpaths else {}
            if not fieldpaths:
                updated = given
            for path in fieldpaths:
                key = path.removeprefix("labels.")
                if key in given:
                    updated[key] = given[key]
                else:
                    updated.pop(key, None)
            tx.set_namespace_labels(name, updated, time.time_ns())
        return Namespace(name, updated)

    def delete(self, name: str) -> None:
        """Remove an empty namespace with its leases and ingests."""
        with self._metadata.write(f"deleting namespace {name}") as tx:
            held = tx.namespace_holds(name)
            if held:
                raise FailedPrecondition(
                    f'namespace "{name}" must be empty, but it still has {", ".join(held)}'
                )
            if not tx.delete_namespace(name):
                raise NotFound(f'namespace "{name}"')

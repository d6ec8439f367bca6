"""What the registry face knows beyond blobs: which repository holds what, and its tags.

Blob bytes, labels and times are the store's. A repository is a view onto the
blobs of one namespace, so membership, manifests (with their media types),
referrers and tags are records in the store's own metadata, keyed by
namespace and repository: a collection sees them in the same transaction as
content. Rows only ever point at digests: a blob deleted from the store behind
the registry's back makes its rows dangling, never wrong, and every read
checks the store before it answers.
"""

from __future__ import annotations

from typing import Any

from ._backends import MetadataBackend
from ._records import Referrer


class RepositoryIndex:
    """Repository membership, manifests, referrers and tags, per namespace.

    Every change is one durable metadata transaction, done when the method
    returns; reads see one snapshot.
    """

    def __init__(self, metadata: MetadataBackend) -> None:
        self._metadata = metadata

    # Blobs

    def link_blob(self, namespace: str, repository: str, digest: str) -> None:
        """Make blob `digest` part of `repository`."""
        with self._metadata.write(f"linking {digest} into {repository}") as tx:
            tx.link_blob(namespace, repository, digest)

    def unlink_blob(self, namespace: str, repository: str, digest: str) -> bool:
        """Take blob `digest` out of `repository`; whether it was in it."""
        with self._metadata.write(f"unlinking {digest} from {repository}") as tx:
            return tx.unlink_blob(namespace, repository, digest)

    def has_blob(self, namespace: str, repository: str, digest: str) -> bool:
        """Whether `repository` holds `digest`, as a blob or as a manifest."""
        with self._metadata.read(f"looking up {digest} in {repository}") as tx:
            return tx.repository_has(namespace, repository, digest)

    # Manifests and tags

    def put_manifest(
        self,
        namespace: str,
        repository: str,
        digest: str,
        media_type: str,
        tag: str | None,
        referrer: Referrer | None = None,
    ) -> None:
        """Record manifest `digest` in `repository`, and point `tag` at it if given.

        A manifest with a subject is recorded as one of its referrers, by the
        descriptor the referrers API answers with.
        """
        with self._metadata.write(f"recording manifest {digest} in {repository}") as tx:
            tx.put_manifest(namespace, repository, digest, media_type, tag, referrer)

    def manifest_media_type(self, namespace: str, repository: str, digest: str) -> str | None:
        """The media type manifest `digest` was pushed with, or None if not in `repository`."""
        with self._metadata.read(f"looking up manifest {digest} in {repository}") as tx:
            return tx.manifest_media_type(namespace, repository, digest)

    def resolve_tag(self, namespace: str, repository: str, tag: str) -> str | None:
        """The digest `tag` points at in `repository`, or None."""
        with self._metadata.read(f"resolving tag {tag} of {repository}") as tx:
            return tx.resolve_tag(namespace, repository, tag)

    def delete_manifest(self, namespace: str, repository: str, digest: str) -> bool:
        """Remove manifest `digest` and every tag pointing at it; whether it was there."""
        with self._metadata.write(f"deleting manifest {digest} from {repository}") as tx:
            return tx.delete_manifest(namespace, repository, digest)

    def delete_tag(self, namespace: str, repository: str, tag: str) -> bool:
        """Remove `tag` (not the manifest it points at); whether it was there."""
        with self._metadata.write(f"deleting tag {tag} of {repository}") as tx:
            return tx.delete_tag(namespace, repository, tag)

    def tags(
        self, namespace: str, repository: str, *, after: str = "", limit: int
    ) -> list[tuple[str, str]]:
        """Up to `limit` (tag, digest) pairs of `repository` after `after`, in lexical order.

        Lexical is the distribution spec's order: case-insensitive, ties (tags
        that differ in case alone) in byte order. `after` need not be a tag.
        """
        with self._metadata.read(f"listing tags of {repository}") as tx:
            return tx.tags(namespace, repository, after, limit)

    def referrers(
        self, namespace: str, repository: str, subject: str, artifact_type: str | None = None
    ) -> list[dict[str, Any]]:
        """The descriptors of manifests in `repository` whose subject is `subject`."""
        with self._metadata.read(f"listing referrers of {subject}") as tx:
            return tx.referrers(namespace, repository, subject, artifact_type)

    def repository_exists(self, namespace: str, repository: str) -> bool:
        """Whether anything was ever pushed to `repository` and is still recorded."""
        with self._metadata.read(f"looking up {repository}") as tx:
            return tx.repository_exists(namespace, repository)

    def repositories(self, namespace: str, *, after: str = "", limit: int) -> list[str]:
        """Up to `limit` repository names after `after`, in lexical order."""
        with self._metadata.read("listing repositories") as tx:
            return tx.repositories(namespace, after, limit)

"""Manifests: their handlers, and image manifests and indexes as the registry accepts them.

The registry stores a manifest's bytes exactly as pushed (its digest is of
those bytes); `parse_manifest` only decides whether they are a manifest it
serves, of which media type, and which other content they name, so a push
can be refused before anything it depends on is missing.

`ManifestHandler` serves ``/v2/<name>/manifests/<reference>``, by tag or
digest: GET, HEAD, PUT and DELETE. A mirror (see `mirror`) brings what is
asked for in from its upstream first, and keeps it as a push would.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from contentd.client import Reference
from contentd.content import REF_CONTENT, Referrer, Store, digest_of, validate_digest
from contentd.errdefs import (
    AlreadyExists,
    ContentdError,
    DataLoss,
    InvalidArgument,
    NotFound,
    Unavailable,
)

from .context import ResourceHandler
from .errors import digest_invalid, manifest_unknown, registry_error
from .mirror import Mirror, upstream_failure
from .routes import is_tag, parse_digest
from .uploads import new_session_id, upload_ref

_log = logging.getLogger("contentd.daemon")

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
#: The reason of a manifest refused for its size: 413, as the spec answers it.
MANIFEST_TOO_LARGE: Final = "MANIFEST_TOO_LARGE"


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

    def reference_labels(self) -> dict[str, str]:
        """The labels that keep what this manifest names from garbage collection.

        containerd's fetch writes the same ones: its config, its layers by
        index, an index's manifests by index.
        """
        labels = {f"{REF_CONTENT}.m.{i}": digest for i, digest in enumerate(self.manifests)}
        if self.blobs and self.media_type in IMAGE_MANIFESTS:
            config, *layers = self.blobs
            labels[f"{REF_CONTENT}.config"] = config
            labels.update({f"{REF_CONTENT}.l.{i}": digest for i, digest in enumerate(layers)})
        return labels


def _invalid(message: str) -> ContentdError:
    return registry_error(InvalidArgument, f"manifest invalid: {message}", MANIFEST_INVALID)


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


def _tag_invalid(reference: str) -> ContentdError:
    return registry_error(InvalidArgument, f"tag {reference[:80]!r}", MANIFEST_INVALID)


class ManifestHandler(ResourceHandler):
    """A repository's manifests: bytes in the store, media types and tags in the index."""

    async def _resolve(self, name: str, reference: str) -> tuple[str, str]:
        """The digest and media type `reference` (a tag or digest) names in `name`."""
        if ":" in reference:
            digest = parse_digest(reference)
        elif is_tag(reference):
            found = await self._run(self._index.resolve_tag, self._namespace, name, reference)
            if found is None:
                raise manifest_unknown(reference)
            digest = found
        else:
            # No manifest can have such a tag: unknown, as the spec's pulls expect.
            raise manifest_unknown(reference[:80])
        media_type = await self._run(self._index.manifest_media_type, self._namespace, name, digest)
        if media_type is None:
            raise manifest_unknown(reference)
        return digest, media_type

    async def get(self, request: web.Request, name: str, reference: str) -> web.StreamResponse:
        """GET or HEAD a manifest by tag or digest, with the media type it was pushed with."""
        if self._mirror is not None:
            await self._pull_through(self._mirror, name, reference)
        digest, media_type = await self._resolve(name, reference)
        try:
            body = await self._run(self._read_blob, digest)
        except NotFound:
            raise manifest_unknown(reference) from None
        headers = {"Docker-Content-Digest": digest, "ETag": f'"{digest}"'}
        return web.Response(body=body, headers=headers, content_type=media_type)

    async def _pull_through(self, mirror: Mirror, name: str, reference: str) -> None:
        """Bring the manifest `reference` names in from the upstream, unless it is here.

        By digest, what the repository holds is served as it is. By tag, the
        upstream is asked where its tag points, and the local tag pointed
        there; if the upstream cannot say, the local tag serves as it is.
        """
        if ":" in reference:
            digest = parse_digest(reference)
        elif not is_tag(reference):
            raise manifest_unknown(reference[:80])
        else:
            try:
                found = await mirror.registry.resolve(
                    Reference(mirror.upstream.host, name, tag=reference)
                )
            except NotFound:
                raise manifest_unknown(reference) from None
            except ContentdError as exc:
                if await self._run(self._index.resolve_tag, self._namespace, name, reference):
                    _log.info("mirror: serving the tag %s:%s held here: %s", name, reference, exc)
                    return
                raise upstream_failure(exc) from None
            digest = found.digest
        if not await self._holds_manifest(name, digest):
            await mirror.once((name, digest), lambda: self._fetch(mirror, name, digest))
        if ":" not in reference:
            tagged = await self._run(self._index.resolve_tag, self._namespace, name, reference)
            if tagged != digest:
                media_type = await self._run(
                    self._index.manifest_media_type, self._namespace, name, digest
                )
                assert media_type is not None
                await self._run(
                    self._index.put_manifest, self._namespace, name, digest, media_type, reference
                )

    async def _holds_manifest(self, name: str, digest: str) -> bool:
        known = await self._run(self._index.manifest_media_type, self._namespace, name, digest)
        return known is not None and await self._present(name, digest)

    async def _fetch(self, mirror: Mirror, name: str, digest: str) -> None:
        """Fetch manifest `digest` of `name` from the upstream, check it, and keep it."""
        try:
            body, content_type = await mirror.registry.get_manifest(name, digest)
        except ContentdError as exc:
            failure = upstream_failure(exc)
            raise (manifest_unknown(digest) if isinstance(failure, NotFound) else failure) from None
        where = f"manifest {digest} from {mirror.upstream.host}/{name}"
        if digest_of(body, digest.partition(":")[0]) != digest:
            raise DataLoss(
                f"{where}: the upstream served content that does not match its digest",
                reason="DIGEST_INVALID",
            )
        try:
            manifest = parse_manifest(body, content_type)
        except InvalidArgument as exc:
            raise Unavailable(
                f"{where}: not a manifest this registry serves: {exc.message}"
            ) from None
        async with mirror.leased() as leased:
            await self._keep(leased, name, digest, body, manifest, None)

    def _read_blob(self, digest: str) -> bytes:
        with self._store.reader_at(digest) as reader:
            return reader.read()

    async def put(self, request: web.Request, name: str, reference: str) -> web.StreamResponse:
        """PUT a manifest under a tag or its digest, once everything it names is in `name`."""
        length = request.content_length
        if length is not None and length > MAX_MANIFEST_BYTES:
            # 413: the spec's answer to a manifest over the registry's limit.
            raise registry_error(
                InvalidArgument,
                f"manifest of {length} bytes: more than the {MAX_MANIFEST_BYTES} allowed",
                MANIFEST_TOO_LARGE,
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise registry_error(
                InvalidArgument,
                f"manifest of more than the {MAX_MANIFEST_BYTES} bytes allowed",
                MANIFEST_TOO_LARGE,
            ) from None
        tag: str | None = None
        if ":" in reference:
            digest = parse_digest(reference)
            algorithm = digest.split(":", 1)[0]
            actual = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
            if actual != digest:
                raise digest_invalid(f"manifest is {actual}, not {digest}")
        elif is_tag(reference):
            tag = reference
            digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        else:
            raise _tag_invalid(reference)
        manifest = parse_manifest(body, request.headers.get("Content-Type", ""))
        for needed in manifest.blobs:
            if not await self._present(name, needed):
                raise registry_error(
                    NotFound,
                    f"manifest names blob {needed}",
                    "MANIFEST_BLOB_UNKNOWN",
                    digest=needed,
                )
        for needed in manifest.manifests:
            known = await self._run(self._index.manifest_media_type, self._namespace, name, needed)
            if known is None or not await self._present(name, needed):
                raise registry_error(
                    NotFound,
                    f"index names manifest {needed}",
                    "MANIFEST_BLOB_UNKNOWN",
                    digest=needed,
                )
        await self._keep(self._store, name, digest, body, manifest, tag)
        headers = {
            "Location": f"/v2/{name}/manifests/{digest}",
            "Docker-Content-Digest": digest,
        }
        if manifest.subject is not None:
            headers["OCI-Subject"] = manifest.subject
        return web.Response(status=201, headers=headers)

    async def _keep(
        self,
        store: Store,
        name: str,
        digest: str,
        body: bytes,
        manifest: Manifest,
        tag: str | None,
    ) -> None:
        """Store a checked manifest's bytes in `store` and record it in `name` (under `tag`)."""
        # Labelled as containerd labels what it fetches, so a collection keeps what a
        # manifest names for as long as the manifest is kept.
        labels = manifest.reference_labels()
        try:
            await self._run(
                store.put,
                upload_ref(name, new_session_id()),
                body,
                expected=digest,
                labels=labels,
            )
        except AlreadyExists:
            if labels:
                paths = [f"labels.{key}" for key in labels]
                await self._run(store.update, digest, labels, paths)
        referrer = None
        if manifest.subject is not None:
            descriptor: dict[str, Any] = {
                "mediaType": manifest.media_type,
                "digest": digest,
                "size": len(body),
            }
            if manifest.artifact_type:
                descriptor["artifactType"] = manifest.artifact_type
            if manifest.annotations:
                descriptor["annotations"] = manifest.annotations
            referrer = Referrer(manifest.subject, descriptor, manifest.artifact_type)
        await self._run(
            self._index.put_manifest,
            self._namespace,
            name,
            digest,
            manifest.media_type,
            tag,
            referrer,
        )

    async def delete(self, request: web.Request, name: str, reference: str) -> web.StreamResponse:
        """DELETE a manifest by digest (its tags go with it), or only a tag."""
        if ":" in reference:
            digest = parse_digest(reference)
            found = await self._run(self._index.delete_manifest, self._namespace, name, digest)
        elif is_tag(reference):
            found = await self._run(self._index.delete_tag, self._namespace, name, reference)
        else:
            raise _tag_invalid(reference)
        if not found:
            raise manifest_unknown(reference)
        return web.Response(status=202)

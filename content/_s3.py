"""The blob backend of a distributed store: committed blobs and ingests' bytes in S3.

Layout under ``s3://BUCKET/PREFIX/``::

    blobs/<algorithm>/<hex>      committed blobs, plain objects (any S3 tool reads them)
    ingest/<key>/manifest        an ingest's synced state (with its writer's hash
                                 state), and its tail bytes
    ingest/<key>/data            the key of its multipart upload, and once that is
                                 completed, its bytes as one object
    trash/<alg>.<hex>.<random>   blobs set aside by a delete in progress

An ingest is a multipart upload of fixed-size parts (`part_size`, 8 MiB by
default), the bytes not yet in a part (held in memory, and in the manifest
once synced), and possibly a *base*: a completed object at its data key
holding its first bytes. The manifest (one small object) is the ingest's
only truth: a resume reads it, and bytes appended since it was last saved
(at `sync`, `close`, when an upload starts, and at the first append after a
part went up) may be lost by a crash, never bytes before them.

Each save also stores the writer's hash state for exactly the bytes it
describes (see `IngestData`), so a writer resuming in any process reads the
manifest and no byte of the ingest. Only without a usable state does a
resume rehash the bytes (`chunks`); parts of an upload in progress cannot be
read back, so that first completes the upload into the base, and the next
part boundary starts a new upload whose first parts are server-side copies
of the base (UploadPartCopy).

S3 has no rename, so the bytes reach their digest's key by a server-side
copy, inside the metadata transaction that records them: a small ingest's
tail is written there with one conditional PUT (If-None-Match, so a second
publisher gets 412 and the first's bytes stay); a large one's upload is
completed at its data key and copied (CopyObject, or UploadPartCopy past
5 GiB) with the same condition. A delete sets a blob aside the same way, by
a copy into trash/ and a delete: a marker that hid the blob in place would
race the drop that follows the delete's commit against a new publish of the
same digest, which S3 cannot order (it has no conditional delete).

Credentials come from boto3's default chain and never appear in an error.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.config
import botocore.exceptions
import urllib3.exceptions

from contentd.errdefs import (
    ContentdError,
    DataLoss,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)

from ._backends import MetadataTransaction
from ._fs import BLOB_MISSING
from ._reader import SeekableBlob
from ._validate import ALGORITHMS, split_digest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

#: Default size of an ingest's multipart upload parts.
PART_SIZE: Final = 8 << 20
#: S3's smallest part (except an upload's last).
MIN_PART_SIZE: Final = 5 << 20
#: Parts an ingest uploads between saves of its manifest while its writer streams:
#: what a daemon dying mid-ingest may lose (each save waits for the part going up).
CHECKPOINT_PARTS: Final = 4
#: The most bytes outside a part such a save carries: a larger tail waits for the
#: next append (aligned writes leave none).
CHECKPOINT_TAIL: Final = 1 << 20
#: The largest object one CopyObject copies; larger ones are copied in parts.
COPY_LIMIT: Final = 5 << 30
#: Part size of a copy in parts (S3 allows 10,000 parts of up to 5 GiB).
COPY_PART_SIZE: Final = 512 << 20
#: Parts of one ingest going up at once while its writer receives the next bytes: two
#: keep the object store busy on every core it has while a part's request is answered.
PARTS_IN_FLIGHT: Final = 2
#: Connections kept open to S3: one per concurrent stream a daemon serves, roughly.
POOL_CONNECTIONS: Final = 64
_CHUNK: Final = 1 << 20
_MANIFEST_VERSION: Final = 1
_log = logging.getLogger("contentd.store")

# Errors S3 returns when it is overloaded or failing, whatever their HTTP status.
_UNAVAILABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "ServiceUnavailable",
        "InternalError",
    }
)
_ACCESS_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
)
_MISSING = frozenset({"NoSuchKey", "NotFound", "404"})
_CONFLICT = frozenset({"PreconditionFailed"})
_NO_UPLOAD = frozenset({"NoSuchUpload"})
_NETWORK_ERRORS = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.ResponseStreamingError,
    urllib3.exceptions.HTTPError,
)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@dataclass
class _Manifest:
    """An ingest's state as one object holds it: see the module's layout."""

    base: int = 0
    upload: str | None = None
    parts: list[tuple[int, str]] = field(default_factory=list)  # (size, ETag), part i+1
    tail: bytes = b""
    modified_ns: int = 0
    #: The writer's hash state and the offset it describes (see `IngestData`).
    hash: tuple[int, bytes] | None = None

    @property
    def size(self) -> int:
        return self.base + sum(size for size, _ in self.parts) + len(self.tail)

    def encode(self) -> bytes:
        header: dict[str, Any] = {
            "version": _MANIFEST_VERSION,
            "base": self.base,
            "upload": self.upload,
            "parts": self.parts,
            "modified": self.modified_ns,
        }
        if self.hash is not None:
            offset, state = self.hash
            header["hash"] = [offset, base64.b64encode(state).decode()]
        return json.dumps(header, separators=(",", ":")).encode() + b"\n" + self.tail

    @classmethod
    def decode(cls, body: bytes, what: str) -> _Manifest:
        header, _, tail = body.partition(b"\n")
        try:
            fields = json.loads(header)
            if fields["version"] != _MANIFEST_VERSION:
                raise ValueError(fields["version"])
            parts = [(int(size), str(etag)) for size, etag in fields["parts"]]
            upload = fields["upload"]
            manifest = cls(
                int(fields["base"]),
                None if upload is None else str(upload),
                parts,
                tail,
                int(fields["modified"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataLoss(f"{what}: its state in object storage is damaged") from exc
        # Optional (manifests written before hash states have none), and only ever a
        # shortcut: one that cannot be read is dropped, and the bytes re-read.
        try:
            offset, state = fields.get("hash") or (None, None)
            if offset is not None:
                manifest.hash = (int(offset), base64.b64decode(str(state), validate=True))
        except (TypeError, ValueError, binascii.Error):
            _log.warning("%s: its hash state in object storage is damaged; ignored", what)
        return manifest


class S3Blobs:
    """Blobs and ingest bytes in one S3 bucket, under a prefix (see the module's layout).

    One boto3 client serves every thread (clients are thread-safe), with a
    connection pool sized for many concurrent streams. Calls fail within a
    few seconds when S3 is unreachable, as Unavailable.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        part_size: int = PART_SIZE,
        copy_limit: int = COPY_LIMIT,
        copy_part_size: int = COPY_PART_SIZE,
        connect_timeout: float = 2.0,
        read_timeout: float = 30.0,
        pool_connections: int = POOL_CONNECTIONS,
    ) -> None:
        if part_size < MIN_PART_SIZE or copy_part_size < MIN_PART_SIZE:
            raise InvalidArgument(f"object storage part size must be at least {MIN_PART_SIZE}")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_size = part_size
        self.copy_limit = copy_limit
        self.copy_part_size = copy_part_size
        config = botocore.config.Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # One retry: a blip is ridden out, an outage is reported in seconds.
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=pool_connections,
            s3={"addressing_style": "path" if endpoint else "auto"},
        )
        # A session per store: boto3's default session is shared and not thread-safe.
        session = boto3.session.Session()
        self._client: S3Client = session.client(
            "s3", endpoint_url=endpoint, region_name=region, config=config
        )
        self._guard = threading.Lock()
        #: Ingests open in this process, by key (each held by its writer's lock).
        self._open: dict[str, S3Ingest] = {}
        #: Bytes `store_ingest` keeps until their publish, by key.
        self._stored: dict[str, tuple[bytes, int]] = {}
        #: Where ingests upload a part while their writer receives the next one.
        self._part_uploads = ThreadPoolExecutor(
            max_workers=max(1, pool_connections // 2), thread_name_prefix="contentd-s3-part"
        )
        doing = f"opening bucket {bucket}"
        try:
            with self.translating(doing, _MISSING):
                self._client.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as exc:
            raise FailedPrecondition(f"{doing}: bucket {bucket!r} does not exist") from exc

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3Blobs:
        """``s3://BUCKET[/prefix][?endpoint=URL&region=NAME]``; AWS's defaults otherwise."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.hostname:
            raise InvalidArgument("object storage URL: expected s3://BUCKET[/prefix]")
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "region"}
        if unknown:
            raise InvalidArgument(f"object storage URL: unknown parameters {sorted(unknown)}")
        return cls(
            parts.netloc,
            parts.path,
            endpoint=query.get("endpoint"),
            region=query.get("region"),
            **options,
        )

    # Errors

    @contextlib.contextmanager
    def translating(self, doing: str, passing: frozenset[str] = frozenset()) -> Iterator[None]:
        """Turn S3's failures into error classes whose messages say what was being done.

        S3 errors whose code is in `passing` are re-raised as they are, for the
        caller to act on (a missing key, a failed condition). Messages carry
        S3's error code, never a request, a signature or a key.
        """
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in passing:
                raise
            raise self._classify(exc, doing) from exc
        except _NETWORK_ERRORS as exc:
            _log.warning("object storage unavailable while %s: %s", doing, type(exc).__name__)
            raise Unavailable(f"object storage unavailable while {doing}") from exc
        except botocore.exceptions.NoCredentialsError as exc:
            raise FailedPrecondition(f"{doing}: no credentials for object storage") from exc

    def _classify(self, exc: botocore.exceptions.ClientError, doing: str) -> ContentdError:
        code = _code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code == "NoSuchBucket":
            return FailedPrecondition(f"{doing}: bucket {self.bucket!r} does not exist")
        if code in _UNAVAILABLE_CODES or status >= 500 or status == 429:
            _log.warning("object storage unavailable while %s: %s %s", doing, status, code)
            return Unavailable(f"object storage unavailable while {doing} ({code or status})")
        if code in _ACCESS_CODES or status == 403:
            return PermissionDenied(f"{doing}: object storage refused access ({code or status})")
        _log.error("object storage failed while %s: %s %s", doing, status, code)
        return Internal(f"{doing}: object storage failed ({code or status})")

    # Keys

    def blob_key(self, digest: str) -> str:
        algorithm, encoded = split_digest(digest)
        return f"{self.prefix}blobs/{algorithm}/{encoded}"

    def _manifest_key(self, key: str) -> str:
        return f"{self.prefix}ingest/{key}/manifest"

    def data_key(self, key: str) -> str:
        """The key of an ingest's multipart upload and of its base."""
        return f"{self.prefix}ingest/{key}/data"

    def _trash_key(self, token: str) -> str:
        return f"{self.prefix}trash/{token}"

    def _list(self, prefix: str, doing: str) -> Iterator[str]:
        """Keys under `prefix`, relative to it, a page (a request) at a time."""
        paginator = self._client.get_paginator("list_objects_v2")
        with self.translating(doing):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for entry in page.get("Contents", []):
                    yield entry.get("Key", "")[len(prefix) :]

    def _delete(self, keys: list[str], doing: str) -> None:
        """Delete `keys` (missing ones too) in one request per thousand."""
        for start in range(0, len(keys), 1000):
            objects: Any = [{"Key": key} for key in keys[start : start + 1000]]
            with self.translating(doing):
                self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )

    def _copy(self, source: str, target: str, size: int, doing: str) -> bool:
        """Copy object `source` to `target` if `target` does not exist; whether it did.

        Server-side: no byte passes through this process. Past `copy_limit`,
        in parts copied concurrently.
        """
        if size <= self.copy_limit:
            try:
                with self.translating(doing, _CONFLICT):
                    self._client.copy_object(
                        Bucket=self.bucket,
                        Key=target,
                        CopySource={"Bucket": self.bucket, "Key": source},
                        IfNoneMatch="*",
                    )
            except botocore.exceptions.ClientError:
                return False
            return True
        with self.translating(doing):
            upload = self._client.create_multipart_upload(Bucket=self.bucket, Key=target)[
                "UploadId"
            ]
        try:
            ranges = [
                (number, start, min(start + self.copy_part_size, size) - 1)
                for number, start in enumerate(range(0, size, self.copy_part_size), 1)
            ]

            def copy_part(part: tuple[int, int, int]) -> CompletedPartTypeDef:
                number, first, last = part
                with self.translating(doing):
                    result = self._client.upload_part_copy(
                        Bucket=self.bucket,
                        Key=target,
                        UploadId=upload,
                        PartNumber=number,
                        CopySource={"Bucket": self.bucket, "Key": source},
                        CopySourceRange=f"bytes={first}-{last}",
                    )
                return {"PartNumber": number, "ETag": result["CopyPartResult"].get("ETag", "")}

            with ThreadPoolExecutor(max_workers=8) as pool:
                completed = list(pool.map(copy_part, ranges))
            return self._complete(target, upload, completed, doing, exclusive=True)
        except BaseException:
            self._abort(target, upload)
            raise

    def _complete(
        self,
        target: str,
        upload: str,
        parts: list[CompletedPartTypeDef],
        doing: str,
        *,
        exclusive: bool,
    ) -> bool:
        """Complete a multipart upload; with `exclusive`, False if `target` exists (aborted)."""
        try:
            with self.translating(doing, _CONFLICT):
                if exclusive:
                    self._client.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=target,
                        UploadId=upload,
                        MultipartUpload={"Parts": parts},
                        IfNoneMatch="*",
                    )
                else:
                    self._client.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=target,
                        UploadId=upload,
                        MultipartUpload={"Parts": parts},
                    )
        except botocore.exceptions.ClientError:
            self._abort(target, upload)
            return False
        return True

    def _abort(self, target: str, upload: str) -> None:
        """Abort an upload, quietly: a leftover one is only storage, which S3 can expire."""
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=target, UploadId=upload)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) != "NoSuchUpload":
                _log.warning("could not abort an upload to object storage: %s", _code(exc))
        except _NETWORK_ERRORS:
            _log.warning("could not abort an upload to object storage: unavailable")

    # Committed blobs

    def stat(self, digest: str) -> int | None:
        try:
            with self.translating(f"reading content {digest}", _MISSING):
                return self._client.head_object(Bucket=self.bucket, Key=self.blob_key(digest))[
                    "ContentLength"
                ]
        except botocore.exceptions.ClientError:
            return None

    def open_blob(self, digest: str, size: int) -> S3BlobReader | None:
        # One GET from the start, its body read as far as reads go in order:
        # a whole read costs this one request.
        try:
            with self.translating(f"reading content {digest}", _MISSING):
                body = self._client.get_object(Bucket=self.bucket, Key=self.blob_key(digest))[
                    "Body"
                ]
        except botocore.exceptions.ClientError:
            return None
        return S3BlobReader(self, digest, size, body)

    def blob_url(self, digest: str, expires_in: float) -> str:
        """A presigned URL that GETs blob `digest` for `expires_in` seconds (made locally)."""
        with self.translating(f"signing a URL for {digest}"):
            return self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self.blob_key(digest)},
                ExpiresIn=max(1, round(expires_in)),
            )

    def publish(self, key: str, digest: str, tx: MetadataTransaction) -> bool:
        target = self.blob_key(digest)
        doing = f"committing {digest}"
        with self._guard:
            stored = self._stored.get(key)
            ingest = self._open.get(key)
        if stored is not None:
            if not self._put_exclusive(target, stored[0], doing):
                return False
            # A put's bytes never were an object, but a writer that died on the same ref
            # may have left its upload and manifest: a published ingest leaves nothing.
            self.remove_ingest(key)
            return True
        if ingest is None:
            ingest = S3Ingest.load(self, key, f"ingest {key}")
            if ingest is None:
                raise FailedPrecondition(f"{doing}: its ingest has no bytes")
        return ingest.publish_to(target, doing)

    def _put_exclusive(self, target: str, data: bytes, doing: str) -> bool:
        """PUT `data` at `target` unless an object is there; whether it was put."""
        try:
            with self.translating(doing, _CONFLICT):
                self._client.put_object(Bucket=self.bucket, Key=target, Body=data, IfNoneMatch="*")
        except botocore.exceptions.ClientError:
            return False
        return True

    def make_durable(self, digest: str, tx: MetadataTransaction) -> None:
        """Nothing to do: S3 acknowledges a write once it is durable."""

    def set_aside(self, digest: str) -> str | None:
        size = self.stat(digest)
        if size is None:
            return None
        algorithm, encoded = split_digest(digest)
        token = f"{algorithm}.{encoded}.{secrets.token_hex(4)}"
        doing = f"deleting content {digest}"
        self._copy(self.blob_key(digest), self._trash_key(token), size, doing)
        with self.translating(doing):
            self._client.delete_object(Bucket=self.bucket, Key=self.blob_key(digest))
        return token

    def restore(self, token: str, digest: str) -> bool:
        doing = f"restoring content {digest}"
        try:
            with self.translating(doing, _MISSING):
                size = self._client.head_object(Bucket=self.bucket, Key=self._trash_key(token))[
                    "ContentLength"
                ]
        except botocore.exceptions.ClientError:
            return False  # someone else put it back first, or dropped it
        # Not copied if the digest was published again meanwhile: the same bytes.
        self._copy(self._trash_key(token), self.blob_key(digest), size, doing)
        self.drop(token)
        return True

    def drop(self, token: str) -> None:
        with self.translating("freeing deleted content"):
            self._client.delete_object(Bucket=self.bucket, Key=self._trash_key(token))

    def set_aside_entries(self) -> list[tuple[str, str]]:
        entries = []
        for token in self._list(f"{self.prefix}trash/", "listing deleted content"):
            algorithm, _, rest = token.partition(".")
            digest = f"{algorithm}:{rest.partition('.')[0]}"
            try:
                split_digest(digest)
            except InvalidArgument:
                continue  # not a name this store writes; leave it alone
            entries.append((token, digest))
        return sorted(entries)

    def digests(self) -> Iterator[str]:
        for algorithm in ALGORITHMS:
            prefix = f"{self.prefix}blobs/{algorithm}/"
            for name in self._list(prefix, "listing content"):
                digest = f"{algorithm}:{name}"
                try:
                    split_digest(digest)
                except InvalidArgument:
                    continue
                yield digest

    # Ingests

    def open_ingest(self, key: str, what: str, *, truncate: bool = False) -> S3Ingest:
        with self._guard:
            self._stored.pop(key, None)
        ingest = None
        if truncate:
            self.remove_ingest(key)
        else:
            ingest = S3Ingest.load(self, key, what)
        if ingest is None:
            ingest = S3Ingest(self, key, what, _Manifest(modified_ns=time.time_ns()), stored=False)
        with self._guard:
            self._open[key] = ingest
        return ingest

    def _closed(self, key: str, ingest: S3Ingest) -> None:
        with self._guard:
            if self._open.get(key) is ingest:
                del self._open[key]

    def store_ingest(self, key: str, what: str, data: bytes | bytearray | memoryview) -> None:
        # Kept in memory until the publish that follows, which PUTs them at
        # their digest's key in one request: a process dying between the two
        # loses only a put that was never acknowledged. Whatever an earlier
        # ingest left under the key goes when the caller removes the ingest.
        with self._guard:
            self._stored[key] = (bytes(data), time.time_ns())

    def ingest_size(self, key: str) -> tuple[int, int] | None:
        with self._guard:
            stored = self._stored.get(key)
            ingest = self._open.get(key)
        if stored is not None:
            return len(stored[0]), stored[1]
        if ingest is not None:
            return ingest.size, ingest.modified_ns
        try:
            with self.translating("reading an ingest", _MISSING):
                head = self._client.head_object(Bucket=self.bucket, Key=self._manifest_key(key))
        except botocore.exceptions.ClientError:
            return None
        metadata = head.get("Metadata", {})
        try:
            return int(metadata["size"]), int(metadata["modified"])
        except (KeyError, ValueError) as exc:
            raise DataLoss("an ingest's state in object storage is damaged") from exc

    def unseal_ingest(self, key: str) -> None:
        # A seal lives in the process that sealed: a writer that died sealing left none.
        with self._guard:
            ingest = self._open.get(key)
        if ingest is not None:
            ingest.unseal()

    def remove_ingest(self, key: str) -> None:
        with self._guard:
            self._stored.pop(key, None)
            ingest = self._open.pop(key, None)
        if ingest is not None:
            ingest.forget()
        manifest = self._read_manifest(key, "removing an ingest")
        if manifest is None:
            return
        if manifest.upload is not None:
            self._abort(self.data_key(key), manifest.upload)
        if manifest.base or manifest.upload is not None:
            self._delete([self.data_key(key), self._manifest_key(key)], "removing an ingest")
        else:
            with self.translating("removing an ingest"):
                self._client.delete_object(Bucket=self.bucket, Key=self._manifest_key(key))

    def _read_manifest(self, key: str, what: str) -> _Manifest | None:
        try:
            with self.translating(what, _MISSING):
                body = self._client.get_object(Bucket=self.bucket, Key=self._manifest_key(key))[
                    "Body"
                ].read()
        except botocore.exceptions.ClientError:
            return None
        return _Manifest.decode(body, what)

    def _write_manifest(self, key: str, manifest: _Manifest, what: str) -> None:
        with self.translating(what):
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._manifest_key(key),
                Body=manifest.encode(),
                Metadata={"size": str(manifest.size), "modified": str(manifest.modified_ns)},
            )

    def ingest_keys(self) -> set[str]:
        # By their manifests: some servers (SeaweedFS) list emptied folders as prefixes.
        keys = {
            name.removesuffix("/manifest")
            for name in self._list(f"{self.prefix}ingest/", "listing ingests")
            if name.endswith("/manifest")
        }
        with self._guard:
            return keys | self._open.keys() | self._stored.keys()

    def close(self) -> None:
        self._part_uploads.shutdown(wait=True)
        self._client.close()


class S3Ingest:
    """An ingest's bytes in S3, open for appending by its writer (see the module's layout).

    Appends fill a buffer; each full part goes up as a part of the ingest's
    multipart upload, the last part an append fills in the background while
    the writer receives the next (one at a time: the next full part waits for
    it). `sync` writes the manifest: the parts so far, the buffer's bytes, and
    the writer's hash state of them all. A failed append changes nothing: a
    part going up in the background stays held in memory until S3 has it (an
    upload that failed there is tried again, in the writer's thread, by the
    next append that needs it settled, or by sync, which raise if it fails
    again), and the buffer and the list of parts move only once every part an
    append filled is uploaded.
    """

    def __init__(
        self, blobs: S3Blobs, key: str, what: str, manifest: _Manifest, *, stored: bool
    ) -> None:
        self._blobs = blobs
        self._client = blobs._client
        self._key = key
        self._what = what
        self._base = manifest.base
        self._upload = manifest.upload
        self._parts = list(manifest.parts)
        self._buffer = bytearray(manifest.tail)
        self._modified_ns = manifest.modified_ns
        #: The hash state the manifest holds, and where the writer's comes from.
        self._hash = manifest.hash
        self._hash_source: Callable[[], bytes | None] | None = None
        #: Whether a manifest is in S3, and whether it differs from this state.
        self._stored = stored
        self._dirty = False
        self._sealed = False
        self._closed = False
        #: Parts uploaded since the manifest was last saved: an append saves it past a few.
        self._unsaved_parts = 0
        #: The parts going up in the background, in order: number, bytes and upload.
        self._inflight: collections.deque[tuple[int, bytes, Future[tuple[int, str]] | None]] = (
            collections.deque()
        )

    @classmethod
    def load(cls, blobs: S3Blobs, key: str, what: str) -> S3Ingest | None:
        """The ingest as its manifest has it; None if it has none."""
        manifest = blobs._read_manifest(key, f"opening {what}")
        if manifest is None:
            return None
        if manifest.upload is not None:
            # A publish that failed after completing the upload leaves the
            # manifest naming it: its bytes are the base now.
            try:
                with blobs.translating(f"opening {what}", _NO_UPLOAD):
                    blobs._client.list_parts(
                        Bucket=blobs.bucket,
                        Key=blobs.data_key(key),
                        UploadId=manifest.upload,
                        MaxParts=1,
                    )
            except botocore.exceptions.ClientError:
                manifest.base += sum(size for size, _ in manifest.parts)
                manifest.upload, manifest.parts = None, []
        return cls(blobs, key, what, manifest, stored=True)

    @property
    def size(self) -> int:
        inflight = sum(len(data) for _, data, _ in self._inflight)
        return self._base + sum(size for size, _ in self._parts) + inflight + len(self._buffer)

    def _settle(self, doing: str, keep: int = 0) -> None:
        """Wait for the parts going up in the background, oldest first, until at most `keep`
        are; a part that failed is tried again here.

        Raises if it fails again; its bytes stay held, for the next try.
        """
        while len(self._inflight) > keep:
            number, data, upload = self._inflight[0]
            part = None
            if upload is not None:
                try:
                    part = upload.result()
                except (ContentdError, OSError) as exc:
                    _log.info("part %d of %s failed (%s); trying it again", number, self._what, exc)
                    self._inflight[0] = (number, data, None)
            if part is None:
                part = self._upload_part(number, data, doing)
            self._parts.append(part)
            self._unsaved_parts += 1
            self._inflight.popleft()

    def _drop_inflight(self) -> None:
        """Forget the parts going up (their upload is being aborted), once they are done."""
        while self._inflight:
            upload = self._inflight.popleft()[2]
            if upload is not None:
                with contextlib.suppress(ContentdError, OSError):
                    upload.result()

    @property
    def modified_ns(self) -> int:
        return self._modified_ns

    @property
    def keeps_hash(self) -> bool:
        return True

    def saved_hash(self) -> tuple[int, bytes] | None:
        return self._hash

    def keep_hash(self, source: Callable[[], bytes | None]) -> None:
        self._hash_source = source
        if self._stored and self.size and (self._hash is None or self._hash[0] != self.size):
            # Resumed by re-reading: the next sync or close saves the state, so
            # the next resume needs not.
            self._dirty = True

    def _manifest(self) -> _Manifest:
        size = self.size
        saved = self._hash
        if self._hash_source is not None:
            # Called only while the bytes held are those the writer hashed:
            # between appends, or within one before any of its bytes count.
            state = self._hash_source()
            saved = None if state is None else (size, state)
        elif saved is not None and saved[0] != size:
            saved = None
        return _Manifest(
            self._base,
            self._upload,
            list(self._parts),
            bytes(self._buffer),
            self._modified_ns,
            saved,
        )

    def _check_writable(self, doing: str) -> None:
        if self._sealed:
            raise FailedPrecondition(f"{doing} {self._what}: its bytes are sealed for a commit")

    def chunks(self) -> Iterator[bytes]:
        self._settle(f"reading {self._what}")
        if self._upload is not None and self._parts:
            self._complete_into_base()
        if self._base:
            body = self._get(f"reading {self._what}", f"bytes=0-{self._base - 1}")
            try:
                with self._blobs.translating(f"reading {self._what}"):
                    while chunk := body.read(_CHUNK):
                        yield chunk
            finally:
                body.close()
        if self._buffer:
            yield bytes(self._buffer)

    def _get(self, doing: str, byte_range: str) -> Any:
        with self._blobs.translating(doing):
            return self._client.get_object(
                Bucket=self._blobs.bucket, Key=self._blobs.data_key(self._key), Range=byte_range
            )["Body"]

    def _complete_into_base(self, *, save: bool = True) -> None:
        """Complete the upload at the data key, so its bytes can be read: the new base.

        The manifest names the upload, which is gone now: it is saved at once
        unless `save` is False (a publish, which removes it if it succeeds;
        if not, a resume finds the upload gone and takes its parts as the base).
        """
        assert self._upload is not None
        parts: list[CompletedPartTypeDef] = [
            {"PartNumber": number, "ETag": etag} for number, (_, etag) in enumerate(self._parts, 1)
        ]
        self._blobs._complete(
            self._blobs.data_key(self._key),
            self._upload,
            parts,
            f"reading {self._what}",
            exclusive=False,
        )
        self._base = sum(size for size, _ in self._parts)
        self._upload, self._parts = None, []
        self._dirty = True
        if save:
            self._save(f"reading {self._what}")

    def _start_upload(self, doing: str) -> None:
        """Start the multipart upload; a base becomes its first parts (copied server-side)."""
        data_key = self._blobs.data_key(self._key)
        with self._blobs.translating(doing):
            upload = self._client.create_multipart_upload(Bucket=self._blobs.bucket, Key=data_key)[
                "UploadId"
            ]
        parts: list[tuple[int, str]] = []
        remainder = b""
        try:
            whole = self._base // self._blobs.part_size * self._blobs.part_size
            for start in range(0, whole, self._blobs.part_size):
                end = start + self._blobs.part_size - 1
                with self._blobs.translating(doing):
                    result = self._client.upload_part_copy(
                        Bucket=self._blobs.bucket,
                        Key=data_key,
                        UploadId=upload,
                        PartNumber=len(parts) + 1,
                        CopySource={"Bucket": self._blobs.bucket, "Key": data_key},
                        CopySourceRange=f"bytes={start}-{end}",
                    )
                parts.append((self._blobs.part_size, result["CopyPartResult"].get("ETag", "")))
            if whole < self._base:
                body = self._get(doing, f"bytes={whole}-{self._base - 1}")
                with self._blobs.translating(doing):
                    remainder = body.read()
            state = (self._base, self._upload, self._parts, self._buffer)
            self._base, self._upload, self._parts = 0, upload, parts
            self._buffer = bytearray(remainder) + self._buffer
            try:
                # Named in the manifest before any part goes up, so removing
                # the ingest finds the upload to abort.
                self._save(doing)
            except BaseException:
                self._base, self._upload, self._parts, self._buffer = state
                raise
        except BaseException:
            self._blobs._abort(data_key, upload)
            raise

    def _upload_part(self, number: int, data: bytes | memoryview, doing: str) -> tuple[int, str]:
        assert self._upload is not None
        with self._blobs.translating(doing):
            result = self._client.upload_part(
                Bucket=self._blobs.bucket,
                Key=self._blobs.data_key(self._key),
                UploadId=self._upload,
                PartNumber=number,
                Body=bytes(data),
            )
        return len(data), result["ETag"]

    def append(self, data: bytes | bytearray | memoryview) -> None:
        doing = f"writing {self._what}"
        self._check_writable("writing")
        if self._unsaved_parts >= CHECKPOINT_PARTS and len(self._buffer) <= CHECKPOINT_TAIL:
            # Parts went up since the last save and every byte held is hashed
            # (this append's are not held yet): save now, one small PUT every
            # few parts, so a daemon dying mid-ingest loses a few parts at
            # most, not all it uploaded since the writer opened.
            self._save(doing)
        view = memoryview(data).cast("B")
        part_size = self._blobs.part_size
        if len(self._buffer) + len(view) < part_size:
            self._buffer += view
        else:
            if self._upload is None:
                self._start_upload(doing)
            # The first part is the buffer and the head of `data`; then whole
            # parts straight from `data`; the rest is the new buffer.
            first = bytes(self._buffer) + view[: max(0, part_size - len(self._buffer))]
            pieces = [memoryview(first)[:part_size]]
            rest = view[max(0, part_size - len(self._buffer)) :]
            if len(first) > part_size:  # the buffer alone held more than a part
                rest = memoryview(first[part_size:] + bytes(rest))
            while len(rest) >= part_size:
                pieces.append(rest[:part_size])
                rest = rest[part_size:]
            # The last few go up in the background while the writer receives
            # more, once as many of those going up are up; any before them go
            # up now. Whatever fails here fails before anything is taken: the
            # append leaves the ingest as it was.
            background = pieces[-PARTS_IN_FLIGHT:]
            self._settle(doing, keep=PARTS_IN_FLIGHT - len(background))
            parts = [
                self._upload_part(len(self._parts) + number, piece, doing)
                for number, piece in enumerate(pieces[: -len(background)], 1)
            ]
            self._parts += parts
            self._unsaved_parts += len(parts)
            for piece in background:
                number, held = len(self._parts) + len(self._inflight) + 1, bytes(piece)
                upload = self._blobs._part_uploads.submit(self._upload_part, number, held, doing)
                self._inflight.append((number, held, upload))
            self._buffer = bytearray(rest)
        self._modified_ns = time.time_ns()
        self._dirty = True

    def truncate(self) -> None:
        doing = f"truncating {self._what}"
        self._check_writable("truncating")
        self._drop_inflight()
        upload = self._upload
        self._base, self._upload, self._parts, self._buffer = 0, None, [], bytearray()
        self._modified_ns = time.time_ns()
        self._dirty = True
        if self._stored:
            self._save(doing)  # before the upload goes: the manifest must not name it
        if upload is not None:
            self._blobs._abort(self._blobs.data_key(self._key), upload)

    def sync(self) -> None:
        if self._dirty or not self._stored:
            self._save(f"committing {self._what}")

    def _save(self, doing: str) -> None:
        self._settle(doing)
        manifest = self._manifest()
        self._blobs._write_manifest(self._key, manifest, doing)
        self._hash = manifest.hash
        self._stored = True
        self._dirty = False
        self._unsaved_parts = 0

    def seal(self) -> None:
        self._sealed = True

    def unseal(self) -> None:
        self._sealed = False

    def publish_to(self, target: str, doing: str) -> bool:
        """Make the bytes the object `target` unless it exists; whether they did.

        Called inside the transaction that records the blob. The ingest's
        own objects go once the bytes are there; if they are not, it stays
        (resumable, and the caller removes it if the blob existed).
        """
        self._settle(doing)
        if self._upload is None and not self._base:
            published = self._blobs._put_exclusive(target, bytes(self._buffer), doing)
        else:
            if self._buffer and self._upload is None:
                self._start_upload(doing)
            if self._upload is not None:
                if self._buffer:
                    part = self._upload_part(len(self._parts) + 1, bytes(self._buffer), doing)
                    self._parts.append(part)
                    self._buffer = bytearray()
                self._complete_into_base(save=False)
            published = self._blobs._copy(
                self._blobs.data_key(self._key), target, self._base, doing
            )
        if published:
            self._blobs._delete(
                [self._blobs.data_key(self._key), self._blobs._manifest_key(self._key)],
                f"removing {self._what}",
            )
            self.forget()
        return published

    def forget(self) -> None:
        """This ingest's objects are gone: nothing is left to save on close."""
        self._drop_inflight()
        self._base, self._upload, self._parts, self._buffer = 0, None, [], bytearray()
        self._hash = None
        self._stored = True
        self._dirty = False
        self._blobs._closed(self._key, self)

    def close(self) -> None:
        """Save what was appended since the last sync, so that another writer resumes from it.

        A close that cannot reach S3 loses only what was not synced, as a
        crash would; it is logged, not raised.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._dirty or self._inflight:
                self._save(f"closing {self._what}")
        except ContentdError as exc:
            _log.warning("could not save %s on close: %s", self._what, exc)
            self._drop_inflight()
        finally:
            self._blobs._closed(self._key, self)


class S3BlobReader(SeekableBlob):
    """A committed blob read straight from S3.

    Reads in order stream one GET's body (the first from the start, opened
    with the reader); a read elsewhere is one ranged GET, and reads that go
    on in order from there stream from a new GET. `read_at` from several
    threads is safe: the streamed body is read under a lock.
    """

    def __init__(self, blobs: S3Blobs, digest: str, size: int, body: Any) -> None:
        super().__init__(digest, size)
        self._blobs = blobs
        self._lock = threading.Lock()
        self._body: Any = body
        self._body_offset = 0
        #: Where the last read ended: a read from here is taken as a stream.
        self._last_end = 0

    def read_at(self, size: int, offset: int) -> bytes:
        # Reads in order (the daemon's Read, the registry's GET) take the
        # streamed body's bytes as they come, not copied into a buffer and
        # out again: two copies of every byte fewer.
        if size >= 0 and 0 <= offset <= self._size:
            self._check_open()
            wanted = min(size, self._size - offset)
            chunk = b""
            with self._lock:
                if wanted and self._body is not None and self._body_offset == offset:
                    with self._blobs.translating(f"reading content {self.digest}"):
                        chunk = self._body.read(wanted)
                    self._body_offset += len(chunk)
                    self._last_end = self._body_offset
            if len(chunk) == wanted:
                return chunk
            if chunk:  # short (the body ended early): the rest the usual way
                return chunk + super().read_at(wanted - len(chunk), offset + len(chunk))
        return super().read_at(size, offset)

    def _read_into(self, view: memoryview, offset: int) -> int:
        doing = f"reading content {self.digest}"
        with self._lock:
            if self._body is not None and self._body_offset != offset:
                self._body.close()
                self._body = None
            if self._body is None and offset == self._last_end:
                self._body = self._get(doing, f"bytes={offset}-")
                self._body_offset = offset
            if self._body is not None:
                with self._blobs.translating(doing):
                    chunk = self._body.read(len(view))
                view[: len(chunk)] = chunk
                self._body_offset += len(chunk)
                self._last_end = self._body_offset
                return len(chunk)
        body = self._get(doing, f"bytes={offset}-{offset + len(view) - 1}")
        try:
            with self._blobs.translating(doing):
                chunk = body.read()
        finally:
            body.close()
        view[: len(chunk)] = chunk
        with self._lock:
            self._last_end = offset + len(chunk)
        return len(chunk)

    def _get(self, doing: str, byte_range: str) -> Any:
        try:
            with self._blobs.translating(doing, _MISSING):
                return self._blobs._client.get_object(
                    Bucket=self._blobs.bucket,
                    Key=self._blobs.blob_key(self.digest),
                    Range=byte_range,
                )["Body"]
        except botocore.exceptions.ClientError as exc:
            raise DataLoss(
                f"content {self.digest}: its bytes are missing from the store",
                reason=BLOB_MISSING,
            ) from exc

    def close(self) -> None:
        with self._lock:
            if self._body is not None:
                self._body.close()
                self._body = None
        super().close()


if TYPE_CHECKING:
    from ._backends import BlobBackend, IngestData

    # mypy checks here that the S3 classes keep the blob backend's contract.
    _backend: type[BlobBackend] = S3Blobs
    _ingest: type[IngestData] = S3Ingest

"""ClusterStore: the store's rules on object storage and PostgreSQL, shared by many daemons.

The rules (`_rules`) wired to S3-compatible object storage for the bytes
(`_s3`) and a PostgreSQL schema for the records and writer locks
(`_postgres`). Nothing lives on the daemon's own disk, so every daemon (on
any host) that opens the same bucket and schema serves one store, and one
that dies leaves nothing another cannot finish: its locks go with its
database connection, and its ingests resume from what object storage holds.

The engines need the `cluster` extra (``pip install 'contentd[cluster]'``);
they are imported only when a cluster store is opened, so a local store
never loads them.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from contentd.errdefs import FailedPrecondition, InvalidArgument

from ._rules import DEFAULT_NAMESPACE, BackedStore, Backends
from ._sqlite import BUSY_TIMEOUT

#: URL schemes each part of a cluster store is given by.
BLOB_SCHEMES = ("s3",)
METADATA_SCHEMES = ("postgresql", "postgres")


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""


def check_cluster_urls(blobs: str, metadata: str) -> None:
    """InvalidArgument unless `blobs` is an s3:// URL and `metadata` a postgresql:// one.

    The message names the flag's meaning, never the URL: it may hold a password.
    """
    if _scheme(blobs) not in BLOB_SCHEMES:
        raise InvalidArgument("blobs: give an s3://BUCKET[/PREFIX] URL")
    if _scheme(metadata) not in METADATA_SCHEMES:
        raise InvalidArgument("metadata: give a postgresql:// URL")


#: Words that, in a URL's query parameter names, mark the value as a secret
#: (libpq's password and sslpassword among them).
_SECRET_PARAMETER_WORDS = ("password", "secret", "token")
#: What a secret in a shown URL becomes.
REDACTED = "***"


def redact_url(url: str) -> str:
    """`url` fit to show (in a log of the daemon's settings): its password, and the values of
    query parameters that name a password, secret or token, become ``***``, also in URLs
    given as parameter values (``?endpoint=https://user:pass@...``). Anything that does not
    parse as a URL is hidden whole: it may be a mistyped one with a password in it."""
    try:
        parts = urlsplit(url)
        password = parts.password
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{REDACTED}@{host}"
    shown = [(name, _redact_parameter(name, value)) for name, value in query]
    if netloc == parts.netloc and shown == query:
        return url  # nothing to hide: as given, not as urlunsplit would respell it
    return urlunsplit(
        parts._replace(
            netloc=netloc,
            query="&".join(
                f"{quote(name, safe='')}={quote(value, safe=':/@*')}" for name, value in shown
            ),
        )
    )


def _redact_parameter(name: str, value: str) -> str:
    if any(word in name.lower() for word in _SECRET_PARAMETER_WORDS):
        return REDACTED
    return redact_url(value) if "://" in value else value


class ClusterStore(BackedStore):
    """The content store in object storage and PostgreSQL, as one namespace sees it.

    `blobs` is ``s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME]`` (credentials
    from the AWS SDK's usual environment variables and files); `metadata` is a
    libpq URL, ``postgresql://[USER@]HOST[:PORT]/DATABASE[?schema=NAME]``
    (passwords from libpq's PGPASSWORD or ~/.pgpass as well). Opening applies
    the schema's migrations and repairs what dead writers left, as a local
    store does; views from `with_namespace` share this one's connections.
    """

    def __init__(
        self,
        blobs: str,
        metadata: str,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        check_cluster_urls(blobs, metadata)
        try:
            from ._postgres import PostgresLocks, PostgresMetadata  # noqa: PLC0415
            from ._s3 import S3Blobs  # noqa: PLC0415
        except ImportError as exc:
            if (exc.name or "").startswith("contentd"):
                raise
            raise FailedPrecondition(
                "a cluster store needs the engines' clients: pip install 'contentd[cluster]'"
                f" ({exc.name} is missing)"
            ) from None
        object_storage = S3Blobs.from_url(blobs)
        try:
            records = PostgresMetadata.from_url(metadata, busy_timeout=busy_timeout)
            try:
                locks = PostgresLocks.from_url(metadata)
            except BaseException:
                records.close()
                raise
        except BaseException:
            object_storage.close()
            raise
        super().__init__(Backends(object_storage, records, locks), namespace)
        self._object_storage = object_storage
        self.repair()

    def blob_url(self, digest: str, *, expires_in: float) -> str:
        """A presigned URL that GETs blob `digest` straight from object storage.

        Valid for `expires_in` seconds, for whoever holds it; NotFound if the
        namespace does not hold the blob.
        """
        self.info(digest)
        return self._object_storage.blob_url(digest, expires_in)

    @property
    def shared_across_hosts(self) -> bool:
        """True: any daemon on any host that opens the same bucket and schema serves this store."""
        return True

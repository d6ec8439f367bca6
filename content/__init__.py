"""The content store: blobs by digest and ingests by ref, for the daemon and daemonless clients.

    from contentd.content import open_store

    with open_store("/var/lib/contentd") as store:
        with store.writer("my-ref", expected=digest) as writer:
            writer.write(data)
            writer.commit()
        with store.reader_at(digest) as reader:
            data = reader.read()

`Store` is the interface both `LocalStore` (a directory, this process) and the
client's `RemoteStore` (a daemon) implement. `write_blob` and `open_writer`
write into either, waiting out other writers of a ref and resuming interrupted
ingests. Errors are `contentd.errdefs` classes. None of this loads gRPC.
"""

from ._fs import BLOB_MISSING, BLOB_UNREADABLE, STORE_IO_ERROR
from ._ingest import Backoff, is_ref_locked, open_writer, write_blob
from ._metadata import BUSY_TIMEOUT, STORE_BUSY, ContentRecord
from ._reader import BlobReader, SeekableBlob
from ._store import DEFAULT_NAMESPACE, LocalStore, default_root, open_store
from ._types import Closing, Info, ReaderAt, Status, Store, Writer, datetime_from_ns
from ._validate import (
    ALGORITHMS,
    CANONICAL_ALGORITHM,
    MAX_LABEL_BYTES,
    MAX_LABELS,
    MAX_LABELS_BYTES,
    MAX_REF_BYTES,
    MAX_UPDATE_PATHS,
    digest_of,
    validate_digest,
    validate_labels,
    validate_namespace,
    validate_ref,
    validate_update_paths,
)
from ._verify import QUARANTINE, BlobCheck, BlobState, VerifyReport, verify_namespace
from ._writer import LocalWriter

__all__ = [
    "ALGORITHMS",
    "BLOB_MISSING",
    "BLOB_UNREADABLE",
    "BUSY_TIMEOUT",
    "CANONICAL_ALGORITHM",
    "DEFAULT_NAMESPACE",
    "MAX_LABELS",
    "MAX_LABELS_BYTES",
    "MAX_LABEL_BYTES",
    "MAX_REF_BYTES",
    "MAX_UPDATE_PATHS",
    "QUARANTINE",
    "STORE_BUSY",
    "STORE_IO_ERROR",
    "Backoff",
    "BlobCheck",
    "BlobReader",
    "BlobState",
    "Closing",
    "ContentRecord",
    "Info",
    "LocalStore",
    "LocalWriter",
    "ReaderAt",
    "SeekableBlob",
    "Status",
    "Store",
    "VerifyReport",
    "Writer",
    "datetime_from_ns",
    "default_root",
    "digest_of",
    "is_ref_locked",
    "open_store",
    "open_writer",
    "validate_digest",
    "validate_labels",
    "validate_namespace",
    "validate_ref",
    "validate_update_paths",
    "verify_namespace",
    "write_blob",
]

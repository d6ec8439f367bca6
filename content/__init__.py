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

Under `LocalStore` is a seam: the store's rules (`BackedStore`) are written
once over three backends, blob bytes (`BlobBackend`), records
(`MetadataBackend`) and writer locks (`LockBackend`), which a local store
wires to files, SQLite and flock. docs/architecture.md draws the layers.
"""

from ._backends import (
    BlobBackend,
    IngestData,
    LockBackend,
    MetadataBackend,
    MetadataTransaction,
    RefLock,
)
from ._cluster import ClusterStore, redact_url
from ._fs import BLOB_MISSING, BLOB_UNREADABLE, STORE_IO_ERROR
from ._gc import REF_CONTENT, ROOT_LABEL, CollectionReport
from ._images import Image, StoreImages
from ._ingest import Backoff, is_ref_locked, open_writer, write_blob
from ._leases import (
    CONTENT,
    DEFAULT_LEASE_EXPIRY,
    EXPIRE_LABEL,
    FLAT_LABEL,
    INGESTS,
    Lease,
    LeaseResource,
    StoreLeases,
    leased,
    new_lease_id,
)
from ._local import LocalStore, default_root, open_store
from ._meter import NamespaceUsage, StoreMeter
from ._namespaces import Namespace, StoreNamespaces
from ._reader import BlobReader, SeekableBlob
from ._records import ContentRecord, Descriptor, ImageRecord, IngestRecord, LeaseRecord, Referrer
from ._repositories import RepositoryIndex
from ._rules import (
    DEFAULT_NAMESPACE,
    BackedStore,
    BackedWriter,
    Backends,
    Changes,
    check_commit,
)
from ._sqlite import BUSY_TIMEOUT, STORE_BUSY
from ._types import (
    BlobLocator,
    Closing,
    FileReader,
    Images,
    Info,
    Leases,
    MetadataStore,
    Namespaces,
    ReaderAt,
    RecordWalker,
    RepositoryHolder,
    Status,
    Store,
    Writer,
    datetime_from_ns,
)
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

__all__ = [
    "ALGORITHMS",
    "BLOB_MISSING",
    "BLOB_UNREADABLE",
    "BUSY_TIMEOUT",
    "CANONICAL_ALGORITHM",
    "CONTENT",
    "DEFAULT_LEASE_EXPIRY",
    "DEFAULT_NAMESPACE",
    "EXPIRE_LABEL",
    "FLAT_LABEL",
    "INGESTS",
    "MAX_LABELS",
    "MAX_LABELS_BYTES",
    "MAX_LABEL_BYTES",
    "MAX_REF_BYTES",
    "MAX_UPDATE_PATHS",
    "QUARANTINE",
    "REF_CONTENT",
    "ROOT_LABEL",
    "STORE_BUSY",
    "STORE_IO_ERROR",
    "BackedStore",
    "BackedWriter",
    "Backends",
    "Backoff",
    "BlobBackend",
    "BlobCheck",
    "BlobLocator",
    "BlobReader",
    "BlobState",
    "Changes",
    "Closing",
    "ClusterStore",
    "CollectionReport",
    "ContentRecord",
    "Descriptor",
    "FileReader",
    "Image",
    "ImageRecord",
    "Images",
    "Info",
    "IngestData",
    "IngestRecord",
    "Lease",
    "LeaseRecord",
    "LeaseResource",
    "Leases",
    "LocalStore",
    "LockBackend",
    "MetadataBackend",
    "MetadataStore",
    "MetadataTransaction",
    "Namespace",
    "NamespaceUsage",
    "Namespaces",
    "ReaderAt",
    "RecordWalker",
    "RefLock",
    "Referrer",
    "RepositoryHolder",
    "RepositoryIndex",
    "SeekableBlob",
    "Status",
    "Store",
    "StoreImages",
    "StoreLeases",
    "StoreMeter",
    "StoreNamespaces",
    "VerifyReport",
    "Writer",
    "check_commit",
    "datetime_from_ns",
    "default_root",
    "digest_of",
    "is_ref_locked",
    "leased",
    "new_lease_id",
    "open_store",
    "open_writer",
    "redact_url",
    "validate_digest",
    "validate_labels",
    "validate_namespace",
    "validate_ref",
    "validate_update_paths",
    "verify_namespace",
    "write_blob",
]

"""The Python client: one Store interface on a daemon or directly on a directory.

    from contentd.client import RemoteStore, write_blob

    with RemoteStore("unix:///run/contentd/contentd.sock", namespace="builds") as store:
        digest = write_blob(store, "layer-1", open("layer.tar", "rb"))
        with store.reader_at(digest) as blob:
            head = blob.read(512)

`RemoteStore` talks to contentd or containerd (over TLS, given a `TLSConfig`);
`open_store` opens a store directory with no daemon. `write_blob` and
`open_writer` work on either: they wait out other writers of a ref, resume
interrupted ingests and treat content that already exists as success. Both,
and the store types, are re-exported from `contentd.content`.
"""

from contentd.content import (
    Backoff,
    Info,
    LocalStore,
    ReaderAt,
    Status,
    Store,
    Writer,
    is_ref_locked,
    open_store,
    open_writer,
    write_blob,
)

from ._remote import RemoteReader, RemoteStore, RemoteWriter
from ._tls import TLSConfig

__all__ = [
    "Backoff",
    "Info",
    "LocalStore",
    "ReaderAt",
    "RemoteReader",
    "RemoteStore",
    "RemoteWriter",
    "Status",
    "Store",
    "TLSConfig",
    "Writer",
    "is_ref_locked",
    "open_store",
    "open_writer",
    "write_blob",
]

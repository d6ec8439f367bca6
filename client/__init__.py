"""The Python client: one Store interface on a daemon or directly on a directory.

    from contentd.client import RemoteStore, write_blob

    with RemoteStore("unix:///run/contentd/contentd.sock", namespace="builds") as store:
        digest = write_blob(store, "layer-1", open("layer.tar", "rb"))
        with store.reader_at(digest) as blob:
            head = blob.read(512)

`pull(store, "registry.example/team/app:v1")` fetches an image from a
registry into either kind of store and records it (see `contentd.client._pull`);
`push(store, "registry.example/team/app:v1")` sends one back (`contentd.client._push`).

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

from ._auth import Credentials
from ._platforms import Platform, default_platform, parse_platform
from ._pull import pull
from ._push import push
from ._reference import Reference, parse_reference
from ._registry import RegistryClient, RegistryOptions
from ._remote import RemoteReader, RemoteStore, RemoteWriter
from ._tls import TLSConfig
from ._transfer import TransferEvent

__all__ = [
    "Backoff",
    "Credentials",
    "Info",
    "LocalStore",
    "Platform",
    "ReaderAt",
    "Reference",
    "RegistryClient",
    "RegistryOptions",
    "RemoteReader",
    "RemoteStore",
    "RemoteWriter",
    "Status",
    "Store",
    "TLSConfig",
    "TransferEvent",
    "Writer",
    "default_platform",
    "is_ref_locked",
    "open_store",
    "open_writer",
    "parse_platform",
    "parse_reference",
    "pull",
    "push",
    "write_blob",
]

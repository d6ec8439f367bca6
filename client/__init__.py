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

import importlib
from typing import TYPE_CHECKING, Final

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

from ._platforms import Platform, default_platform, parse_platform
from ._reference import Reference, parse_reference

if TYPE_CHECKING:
    from ._auth import Credentials
    from ._pull import pull
    from ._push import push
    from ._registry import RegistryClient
    from ._registry_options import RegistryOptions
    from ._remote import RemoteReader, RemoteStore, RemoteWriter
    from ._tls import TLSConfig
    from ._transfer import TransferEvent

# gRPC (a daemon's store) and aiohttp (registries) take a third of a second to
# load between them, and many commands need neither, a daemonless pull no gRPC
# at all: their names are imported on first use.
_LAZY_NAMES: Final = {
    "Credentials": "_auth",
    "pull": "_pull",
    "push": "_push",
    "RegistryClient": "_registry",
    "RegistryOptions": "_registry_options",
    "RemoteReader": "_remote",
    "RemoteStore": "_remote",
    "RemoteWriter": "_remote",
    "TLSConfig": "_tls",
    "TransferEvent": "_transfer",
}

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


if not TYPE_CHECKING:  # mypy would read every unknown name as this function's answer

    def __getattr__(name: str) -> object:
        module = _LAZY_NAMES.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_NAMES})

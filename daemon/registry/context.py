"""What the handlers of every resource share: the namespace's store, its repository index,
the thread pool.

The server builds one `RegistryContext` and hands it to each resource's
handlers (`blobs`, `uploads`, `manifests`, `listing`), which derive from
`ResourceHandler`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, ParamSpec, Protocol, TypeVar

from contentd.content import MetadataStore, RepositoryHolder, RepositoryIndex
from contentd.errdefs import NotFound

if TYPE_CHECKING:  # the mirror is built on a context without one
    from .mirror import Mirror

T = TypeVar("T")
P = ParamSpec("P")

#: Headers on every answer: the API version clients look for, and a Server
#: header instead of aiohttp's own, which names library and Python versions to
#: anyone who asks. The middleware adds them; an answer streamed out carries
#: them itself, since no header can be added once it is under way.
REGISTRY_HEADERS: Final = MappingProxyType(
    {"Docker-Distribution-API-Version": "registry/2.0", "Server": "contentd"}
)
#: Bytes moved per call off the event loop (hashed and written into an upload,
#: or read for a blob sent over TLS): large enough that the hop costs nothing
#: next to the work, small enough to stream.
IO_CHUNK: Final = 1 << 20


def is_stored(store: MetadataStore, digest: str) -> bool:
    """Whether `store`'s namespace holds blob `digest` (blocking: run it off the loop)."""
    try:
        store.info(digest)
    except NotFound:
        return False
    return True


class RegistryStore(MetadataStore, RepositoryHolder, Protocol):
    """What the registry serves: a Store that keeps repositories, manifests and tags, and
    leases (a mirror fetches under one)."""

    @property
    def shared_across_hosts(self) -> bool:
        """Whether daemons on other hosts may serve the store (and the next request) too."""
        ...


@dataclass(frozen=True)
class RegistryContext:
    """The store, index and thread pool one registry's handlers work with."""

    #: The store as the served namespace sees it.
    store: MetadataStore
    #: The repositories, manifests and tags, in the store's metadata.
    index: RepositoryIndex
    executor: futures.ThreadPoolExecutor
    #: Seconds a blob GET's redirect into object storage stays valid; None: no redirects.
    redirect_blobs: float | None = None
    #: The upstream registry this one mirrors, if it is a pull-through mirror.
    mirror: Mirror | None = None

    def run(
        self, function: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[T]:
        """Call `function` on the thread pool: store calls block."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self.executor, functools.partial(function, *args, **kwargs))


class ResourceHandler:
    """The base of one resource's handlers: the context's parts, and what several handlers ask."""

    def __init__(self, context: RegistryContext) -> None:
        self._store = context.store
        self._namespace = context.store.namespace
        self._index = context.index
        self._run = context.run
        self._redirect_blobs = context.redirect_blobs
        self._mirror = context.mirror

    def _stored(self, digest: str) -> bool:
        return is_stored(self._store, digest)

    async def _present(self, name: str, digest: str) -> bool:
        """Whether `name` holds `digest` and the store still has its bytes."""
        if not await self._run(self._index.has_blob, self._namespace, name, digest):
            return False
        return await self._run(self._stored, digest)

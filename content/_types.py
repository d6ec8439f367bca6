"""What the store hands out: Info for committed blobs, Status for ingests, and the protocols."""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from ._records import ContentRecord

if TYPE_CHECKING:
    from ._gc import CollectionReport
    from ._images import Image
    from ._leases import Lease, LeaseResource
    from ._namespaces import Namespace
    from ._repositories import RepositoryIndex

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def datetime_from_ns(ns: int) -> datetime:
    """A UTC datetime from nanoseconds since the epoch (microsecond precision)."""
    # The epoch plus a timedelta: half the time of fromtimestamp and replace,
    # and a walk makes two per blob.
    return _EPOCH + timedelta(microseconds=ns // 1000)


@dataclass(frozen=True, slots=True)
class Info:
    """A committed blob as one namespace sees it."""

    digest: str
    size: int
    created_at: datetime
    updated_at: datetime
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Status:
    """An ingest in progress: how far it got and what it expects to become."""

    ref: str
    offset: int
    total: int
    expected: str
    started_at: datetime
    updated_at: datetime


class Closing:
    """Closes itself at the end of a with-block."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ReaderAt(Protocol):
    """Random and sequential access to one committed blob; close it when done.

    Reading never goes past `size`: ``read_at`` at the end returns ``b""``.
    """

    @property
    def size(self) -> int: ...

    def read_at(self, size: int, offset: int) -> bytes:
        """Up to `size` bytes starting at `offset`."""
        ...

    def read(self, size: int | None = -1, /) -> bytes: ...

    def readinto(self, buffer: bytearray | memoryview, /) -> int: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Writer(Protocol):
    """One ingest, held under its ref's lock until commit, close or abort.

    Writes append; `truncate(0)` starts over. `commit` verifies and stores the
    blob and always ends the writer, whether it succeeds or not; `close`
    releases the lock and keeps what was written, for a later writer on the
    same ref to resume.
    """

    @property
    def ref(self) -> str: ...

    @property
    def offset(self) -> int:
        """How many bytes the ingest holds (cheaper than a whole `status`)."""
        ...

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Append `data`; returns how many bytes were written (all of them)."""
        ...

    def digest(self) -> str:
        """The digest of everything written so far."""
        ...

    def status(self) -> Status: ...

    def truncate(self, size: int = 0) -> None:
        """Discard what was written; only size 0 is supported."""
        ...

    def commit(
        self, size: int = 0, expected: str = "", labels: Mapping[str, str] | None = None
    ) -> str:
        """Verify size and digest (when given), store the blob and return its digest."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class FileReader(ReaderAt, Protocol):
    """A reader whose bytes are one open file: a server may send them with sendfile."""

    def fileno(self) -> int: ...


@runtime_checkable
class BlobLocator(Protocol):
    """A store whose blobs a client may fetch straight from where they are kept.

    What a registry redirects blob downloads to (docker distribution's
    storage middleware does the same for S3).
    """

    def blob_url(self, digest: str, *, expires_in: float) -> str:
        """A URL that serves blob `digest` to any GET for `expires_in` seconds.

        NotFound if this store's namespace does not hold the blob.
        """
        ...


class RecordWalker(Protocol):
    """A store that lists stored records as they are (times in nanoseconds, no Info built).

    What a server lists from: it fills its answers straight from them.
    """

    def walk_records(self, *filters: str) -> Iterator[ContentRecord]: ...


class RepositoryHolder(Protocol):
    """A store that keeps the registry face's repositories, manifests and tags in its metadata."""

    @property
    def repositories(self) -> RepositoryIndex: ...


class Store(Protocol):
    """A content store as one namespace sees it.

    `LocalStore` works on a directory, in this process; the client's
    `RemoteStore` talks to a daemon. Code written against this protocol runs
    on either. Errors are `contentd.errdefs` classes.
    """

    @property
    def namespace(self) -> str: ...

    def with_namespace(self, namespace: str) -> Self:
        """The same store as another namespace sees it."""
        ...

    def info(self, digest: str) -> Info:
        """The committed blob `digest`; NotFound if the namespace has none."""
        ...

    def update(
        self, digest: str, labels: Mapping[str, str], fieldpaths: tuple[str, ...] | list[str] = ()
    ) -> Info:
        """Change a blob's labels.

        With no field paths the labels are replaced; ``"labels"`` does the
        same; ``"labels.<key>"`` sets that key from `labels`, or removes it
        when `labels` lacks it.
        """
        ...

    def walk(self, *filters: str) -> Iterator[Info]:
        """Every committed blob matching any of the filters (all, with none)."""
        ...

    def delete(self, digest: str) -> None:
        """Remove a blob from the namespace."""
        ...

    def reader_at(self, digest: str) -> ReaderAt:
        """Open a committed blob for reading."""
        ...

    def status(self, ref: str) -> Status:
        """The ingest `ref`; NotFound if there is none."""
        ...

    def list_statuses(self, *filters: str) -> list[Status]:
        """Every ingest matching any of the filters (all, with none)."""
        ...

    def abort(self, ref: str) -> None:
        """Discard the ingest `ref`; Unavailable if a writer holds it."""
        ...

    def writer(
        self,
        ref: str,
        *,
        total: int = 0,
        expected: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Writer:
        """Start or resume the ingest `ref`.

        Unavailable (reason REF_LOCKED) at once if another writer holds the
        ref; AlreadyExists at once if `expected` is already committed in the
        namespace. `labels` are the default labels for `commit`.
        """
        ...

    def put(
        self,
        ref: str,
        data: bytes | bytearray | memoryview,
        *,
        size: int = 0,
        expected: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Store small `data` through the ingest `ref` in one step; returns its digest.

        Equivalent to opening a writer, writing `data` from offset 0,
        committing and closing, in one exchange: Unavailable if the ref is
        held, FailedPrecondition if `data` is not `size` bytes or does not
        hash to `expected` (checked before anything else, so stored bytes
        never pass for another digest), AlreadyExists if the namespace has
        the digest already.
        """
        ...

    def close(self) -> None: ...


class Leases(Protocol):
    """The leases of one namespace, as containerd's Leases service has them."""

    def create(self, lease_id: str = "", labels: Mapping[str, str] | None = None) -> Lease:
        """A new lease; with no id, one the store chooses. AlreadyExists if the id is taken."""
        ...

    def delete(self, lease_id: str, *, sync: bool = False) -> None:
        """Remove the lease (not what it held, which a collection may then take).

        With `sync`, return once a collection that started after it has run.
        """
        ...

    def get(self, lease_id: str) -> Lease: ...

    def list(self, *filters: str) -> list[Lease]:
        """The leases matching any of the filters (``id``, ``labels.<k>``), by id."""
        ...

    def add_resource(self, lease_id: str, resource: LeaseResource) -> None: ...

    def delete_resource(self, lease_id: str, resource: LeaseResource) -> None: ...

    def resources(self, lease_id: str) -> builtins.list[LeaseResource]:
        """What the lease holds: content, then ingests, then snapshots, each sorted."""
        ...


class Images(Protocol):
    """The images of one namespace, as containerd's Images service has them."""

    def get(self, name: str) -> Image: ...

    def list(self, *filters: str) -> list[Image]:
        """The images matching any of the filters, by name."""
        ...

    def create(self, image: Image) -> Image: ...

    def update(self, image: Image, fieldpaths: Sequence[str] = ()) -> Image:
        """Change an image through field paths (none: replace labels and target)."""
        ...

    def delete(self, name: str, *, sync: bool = False) -> None:
        """Remove the image; with `sync`, return once a collection that started after it ran."""
        ...


class Namespaces(Protocol):
    """Every namespace of a store, as containerd's Namespaces service has them."""

    def list(self) -> list[Namespace]: ...

    def get(self, name: str) -> Namespace:
        """The namespace `name`, with no labels if it does not exist."""
        ...

    def create(self, name: str, labels: Mapping[str, str] | None = None) -> Namespace: ...

    def update(
        self, name: str, labels: Mapping[str, str], fieldpaths: Sequence[str] = ()
    ) -> Namespace: ...

    def delete(self, name: str) -> None:
        """Remove an empty namespace; FailedPrecondition while it holds images or blobs."""
        ...


class MetadataStore(Store, Protocol):
    """A store that keeps containerd's metadata beyond content, and collects garbage by it.

    Leases, images and namespaces, as containerd's services have them; writes
    made under a lease (`with_lease`, or `lease` for a block); and `collect`,
    which removes what nothing keeps.
    """

    def with_lease(self, lease: str | None) -> Self:
        """The same store, its writes made under `lease` (None: under none)."""
        ...

    @property
    def lease_id(self) -> str | None:
        """The lease this view writes under, if any."""
        ...

    def lease(
        self,
        *,
        expire: timedelta | None = ...,
        labels: Mapping[str, str] | None = None,
    ) -> AbstractContextManager[Self]:
        """A new lease for a with-block, and a view writing under it; the lease goes after."""
        ...

    @property
    def leases(self) -> Leases: ...

    @property
    def images(self) -> Images: ...

    @property
    def namespaces(self) -> Namespaces: ...

    def collect(self, *, dry_run: bool = False) -> CollectionReport:
        """Collect garbage in every namespace now; what was (or would be) removed."""
        ...

"""Leases, as containerd has them: named holds on content, ingests and snapshots.

While a lease lives, a collection keeps what it lists (and, unless the lease
is flat, what that content references). A lease lives until it is deleted or
until the time its `containerd.io/gc.expire` label gives. Writes made under a
lease (`BackedStore.with_lease`) list their ingest, then their blob, on it:
that is how a pull keeps its content until the image that names it exists.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, TypeVar

from contentd.errdefs import AlreadyExists, InvalidArgument, NotFound, Unimplemented

from . import filters
from ._backends import MetadataBackend, MetadataTransaction
from ._records import LeaseRecord
from ._types import datetime_from_ns
from ._validate import validate_digest, validate_labels

if TYPE_CHECKING:
    from ._types import MetadataStore

_Store = TypeVar("_Store", bound="MetadataStore")

#: The lease label that says when it expires: RFC 3339, as containerd writes it.
EXPIRE_LABEL: Final = "containerd.io/gc.expire"
#: The lease label (any value) that keeps only what the lease lists, not what that references.
FLAT_LABEL: Final = "containerd.io/gc.flat"
#: Resource types a lease holds; "snapshots/<snapshotter>" is the third kind.
CONTENT: Final = "content"
INGESTS: Final = "ingests"
SNAPSHOTS: Final = "snapshots"
#: How long an ingest written under no lease lives after its writer last opened it
#: (containerd's 24 h), in nanoseconds.
INGEST_EXPIRY_NS: Final = 24 * 3600 * 1_000_000_000
#: How long a lease taken for a block (`leased`) lives should its taker die first: a day,
#: as containerd's clients take theirs.
DEFAULT_LEASE_EXPIRY: Final = timedelta(hours=24)
#: The longest lease id or resource id accepted, in UTF-8 bytes (containerd sets none).
MAX_ID_BYTES: Final = 4096


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease as its namespace sees it."""

    id: str
    created_at: datetime
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class LeaseResource:
    """Something a lease holds: a digest (``content``), a ref (``ingests``), a snapshot key."""

    id: str
    type: str


def new_lease_id() -> str:
    """A fresh lease id in containerd's form: ``<nanosecond of the second>-<4 base64url chars>``."""
    nanosecond = time.time_ns() % 1_000_000_000
    return f"{nanosecond}-{base64.urlsafe_b64encode(secrets.token_bytes(3)).decode()}"


def _lease(record: LeaseRecord) -> Lease:
    return Lease(record.id, datetime_from_ns(record.created_at), record.labels)


def _check_id(what: str, value: str) -> str:
    if not value:
        raise InvalidArgument(f"{what} must not be empty")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise InvalidArgument(f"{what} {value[:40]!r}...: longer than {MAX_ID_BYTES} bytes")
    return value


def check_resource(resource: LeaseResource) -> LeaseResource:
    """`resource` as a lease stores it, or the error containerd gives for it."""
    kind, *rest = resource.type.split("/")
    if kind == CONTENT:
        if rest:
            raise InvalidArgument(f"invalid resource type {resource.type}")
        try:
            validate_digest(resource.id)
        except InvalidArgument as exc:
            raise InvalidArgument(f"invalid content resource id {resource.id}: {exc}") from None
    elif kind == INGESTS:
        if rest:
            raise InvalidArgument(f"invalid resource type {resource.type}")
    elif kind == SNAPSHOTS:
        if len(rest) != 1 or not rest[0]:
            raise InvalidArgument(f"invalid snapshot resource type {resource.type}")
    else:
        raise Unimplemented(f"resource type {resource.type} not supported yet")
    _check_id("resource id", resource.id)
    return resource


def expires_at(labels: Mapping[str, str]) -> datetime | None:
    """When a lease with `labels` expires; None if never.

    A value that is not an RFC 3339 time with its offset means never, as in
    containerd: an expiry nobody can read must not delete what a user kept.
    """
    text = labels.get(EXPIRE_LABEL)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def lease_expired(labels: Mapping[str, str], now: datetime) -> bool:
    """Whether a lease with `labels` has expired at `now` (strictly after its expiry)."""
    moment = expires_at(labels)
    return moment is not None and now > moment


def require_lease(tx: MetadataTransaction, namespace: str, lease: str, doing: str = "") -> None:
    """NotFound, as containerd words it, unless `lease` exists in `namespace`."""
    if tx.lease(namespace, lease) is None:
        raise NotFound(f"{doing}lease does not exist")


class StoreLeases:
    """The leases of one namespace: create, list, delete, and what each holds.

    `on_deletion` is told of every change that may free something (a lease
    or a resource removed), for a collection scheduler; `collect` runs a
    collection, for deletes with `sync`.
    """

    def __init__(
        self,
        metadata: MetadataBackend,
        namespace: str,
        on_deletion: Callable[[], None],
        collect: Callable[[], object],
    ) -> None:
        self._metadata = metadata
        self._namespace = namespace
        self._on_deletion = on_deletion
        self._collect = collect

    def create(self, lease_id: str = "", labels: Mapping[str, str] | None = None) -> Lease:
        """A new lease; with no id, one in containerd's form. AlreadyExists if the id is taken."""
        chosen = _check_id("lease id", lease_id) if lease_id else new_lease_id()
        kept = {key: value for key, value in validate_labels(labels or {}).items() if value}
        now = time.time_ns()
        with self._metadata.write(f"creating lease {chosen}") as tx:
            while tx.lease(self._namespace, chosen) is not None:
                if lease_id:
                    raise AlreadyExists(f'lease "{chosen}"')
                chosen = new_lease_id()  # a generated id that collided: draw again
            tx.ensure_namespace(self._namespace, now)
            record = LeaseRecord(chosen, now, kept)
            tx.insert_lease(self._namespace, record)
        return _lease(record)

    def delete(self, lease_id: str, *, sync: bool = False) -> None:
        """Remove the lease (not what it held, which a collection may then take).

        With `sync`, a collection runs before this returns.
        """
        with self._metadata.write(f"deleting lease {lease_id}") as tx:
            if not tx.delete_lease(self._namespace, lease_id):
                raise NotFound(f'lease "{lease_id}"')
        self._on_deletion()
        if sync:
            self._collect()

    def get(self, lease_id: str) -> Lease:
        with self._metadata.read(f"reading lease {lease_id}") as tx:
            record = tx.lease(self._namespace, lease_id)
        if record is None:
            raise NotFound(f'lease "{lease_id}"')
        return _lease(record)

    def list(self, *filter_expressions: str) -> list[Lease]:
        """The namespace's leases matching any of the filters (``id``, ``labels.<k>``), by id."""
        match = filters.parse_all(filter_expressions)
        with self._metadata.read("listing leases") as tx:
            records = tx.leases(self._namespace)
        return [
            _lease(record)
            for record in records
            if match.match(filters.fields_adaptor({"id": record.id}, {"labels": record.labels}))
        ]

    def add_resource(self, lease_id: str, resource: LeaseResource) -> None:
        """Have the lease hold `resource` (adding it twice is no error)."""
        with self._metadata.write(f"adding to lease {lease_id}") as tx:
            if tx.lease(self._namespace, lease_id) is None:
                raise NotFound(f'lease "{lease_id}"')
            checked = check_resource(resource)
            tx.add_lease_resource(self._namespace, lease_id, checked.type, checked.id)

    def delete_resource(self, lease_id: str, resource: LeaseResource) -> None:
        """Have the lease no longer hold `resource` (one it does not hold is no error)."""
        with self._metadata.write(f"removing from lease {lease_id}") as tx:
            if tx.lease(self._namespace, lease_id) is None:
                raise NotFound(f'lease "{lease_id}"')
            checked = check_resource(resource)
            tx.delete_lease_resource(self._namespace, lease_id, checked.type, checked.id)
        self._on_deletion()

    def resources(self, lease_id: str) -> builtins.list[LeaseResource]:
        """What the lease holds: content, then ingests, then snapshots, each sorted."""
        with self._metadata.read(f"listing lease {lease_id}") as tx:
            if tx.lease(self._namespace, lease_id) is None:
                raise NotFound(f'lease "{lease_id}"')
            held = tx.lease_resources(self._namespace, lease_id)
        return [LeaseResource(resource_id, kind) for kind, resource_id in held]


@contextlib.contextmanager
def leased(
    store: _Store, expire: timedelta | None, labels: Mapping[str, str] | None
) -> Iterator[_Store]:
    """A new lease for a with-block, and `store` writing under it; the lease goes after.

    What is written meanwhile is kept from collection until then (and for as
    long as something else keeps it: an image, a root label, a reference).
    `expire` bounds the lease's life should this process die first (None:
    no bound), as containerd's clients do.
    """
    given = dict(labels or {})
    if expire is not None:
        given[EXPIRE_LABEL] = (datetime.now(UTC) + expire).isoformat(timespec="seconds")
    created = store.leases.create(labels=given)
    try:
        yield store.with_lease(created.id)
    finally:
        store.leases.delete(created.id)

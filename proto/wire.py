"""What the daemon and the client agree on about the wire: its constants and conversions.

Hand-written, beside the generated modules. The daemon answers with the
messages these functions build and the client reads them back with these
functions, so each side of each conversion is written once; neither package
imports the other.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from google.protobuf import timestamp_pb2

from contentd.content import (
    CollectionReport,
    ContentRecord,
    Descriptor,
    Image,
    Info,
    Lease,
    LeaseResource,
    Namespace,
    Status,
    datetime_from_ns,
    default_root,
)

from . import content_pb2 as api
from . import (
    descriptor_pb2,
    gc_pb2,
    images_pb2,
    leases_pb2,
    namespace_pb2,
    transfer_pb2,
)

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

#: The request metadata key containerd's clients put the namespace in and its daemons read.
NAMESPACE_HEADER: Final = "containerd-namespace"
#: The request metadata key naming the lease a Content write is made under.
LEASE_HEADER: Final = "containerd-lease"
#: containerd's limit on gRPC messages, both ways.
MAX_MESSAGE_BYTES: Final = 16 << 20
#: The Content service's full name, as calls, health checks and reflection name it.
CONTENT_SERVICE: Final = api.DESCRIPTOR.services_by_name["Content"].full_name
#: The other services' full names.
LEASES_SERVICE: Final = leases_pb2.DESCRIPTOR.services_by_name["Leases"].full_name
IMAGES_SERVICE: Final = images_pb2.DESCRIPTOR.services_by_name["Images"].full_name
NAMESPACES_SERVICE: Final = namespace_pb2.DESCRIPTOR.services_by_name["Namespaces"].full_name
#: contentd's own garbage collection service.
GC_SERVICE: Final = gc_pb2.DESCRIPTOR.services_by_name["GC"].full_name
#: contentd's own transfer service: pulls the daemon fetches itself.
TRANSFER_SERVICE: Final = transfer_pb2.DESCRIPTOR.services_by_name["Transfer"].full_name


def default_address(root: Path | None = None) -> str:
    """The daemon's default address: a unix socket in its store root.

    Given `root`, the store a daemon serves, the path is resolved, so the
    address it logs names its socket from anywhere. Without it, as a client
    given no address asks, the socket is the one in `default_root()`, named
    as the environment names it.
    """
    if root is None:
        return f"unix://{default_root() / 'contentd.sock'}"
    return f"unix://{root.resolve() / 'contentd.sock'}"


# Store to wire (the daemon's answers)


def timestamp_from_datetime(moment: datetime) -> timestamp_pb2.Timestamp:
    """The wire form of a moment."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _set_time(stamp: timestamp_pb2.Timestamp, ns: int) -> None:
    # Microseconds, as the datetimes Info and Update answer with, so one blob
    # shows the same times whichever call describes it.
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp.seconds = seconds
    stamp.nanos = nanos - nanos % 1000


def add_record(infos: RepeatedCompositeFieldContainer[api.Info], record: ContentRecord) -> int:
    """Append the wire form of a stored record to `infos`; returns its encoded size.

    List sends thousands of these. Filling the message in place, field by
    field, costs about a quarter of building an Info from keyword arguments
    and copying it into the response (protobuf copies a map given to a
    constructor through a Python-level update).
    """
    info = infos.add(digest=record.digest, size=record.size)
    _set_time(info.created_at, record.created_at)
    _set_time(info.updated_at, record.updated_at)
    labels = info.labels
    for key, value in record.labels.items():
        labels[key] = value
    return info.ByteSize()


def info_message(info: Info) -> api.Info:
    """The wire form of a committed blob's Info."""
    return api.Info(
        digest=info.digest,
        size=info.size,
        created_at=timestamp_from_datetime(info.created_at),
        updated_at=timestamp_from_datetime(info.updated_at),
        labels=dict(info.labels),
    )


def status_message(status: Status) -> api.Status:
    """The wire form of an ingest's Status."""
    return api.Status(
        started_at=timestamp_from_datetime(status.started_at),
        updated_at=timestamp_from_datetime(status.updated_at),
        ref=status.ref,
        offset=status.offset,
        total=status.total,
        expected=status.expected,
    )


def lease_message(lease: Lease) -> leases_pb2.Lease:
    """The wire form of a lease."""
    return leases_pb2.Lease(
        id=lease.id,
        created_at=timestamp_from_datetime(lease.created_at),
        labels=dict(lease.labels),
    )


def resource_message(resource: LeaseResource) -> leases_pb2.Resource:
    """The wire form of what a lease holds."""
    return leases_pb2.Resource(id=resource.id, type=resource.type)


def descriptor_message(descriptor: Descriptor) -> descriptor_pb2.Descriptor:
    """The wire form of a descriptor."""
    return descriptor_pb2.Descriptor(
        media_type=descriptor.media_type,
        digest=descriptor.digest,
        size=descriptor.size,
        annotations=dict(descriptor.annotations),
    )


def image_message(image: Image) -> images_pb2.Image:
    """The wire form of an image; times it has not (yet) been given are sent as zero."""
    message = images_pb2.Image(
        name=image.name, labels=dict(image.labels), target=descriptor_message(image.target)
    )
    # Always present, as containerd's non-nullable times are.
    message.created_at.SetInParent()
    message.updated_at.SetInParent()
    if image.created_at is not None:
        message.created_at.CopyFrom(timestamp_from_datetime(image.created_at))
    if image.updated_at is not None:
        message.updated_at.CopyFrom(timestamp_from_datetime(image.updated_at))
    return message


def namespace_message(namespace: Namespace) -> namespace_pb2.Namespace:
    """The wire form of a namespace."""
    return namespace_pb2.Namespace(name=namespace.name, labels=dict(namespace.labels))


def collection_message(report: CollectionReport) -> gc_pb2.CollectResponse:
    """The wire form of what a collection removed."""
    return gc_pb2.CollectResponse(
        content=report.content,
        leases=report.leases,
        ingests=report.ingests,
        blobs=report.blobs,
        bytes=report.bytes,
        seconds=report.seconds,
        dry_run=report.dry_run,
    )


# Wire to store (the client's reading of them)


def datetime_from_timestamp(stamp: timestamp_pb2.Timestamp) -> datetime:
    """`stamp.ToDatetime(tzinfo=UTC)`, in less than half the time."""
    return datetime_from_ns(stamp.seconds * 1_000_000_000 + stamp.nanos)


def info_from_message(message: api.Info) -> Info:
    """The Info a wire Info describes."""
    return Info(
        digest=message.digest,
        size=message.size,
        created_at=datetime_from_timestamp(message.created_at),
        updated_at=datetime_from_timestamp(message.updated_at),
        labels=dict(message.labels),
    )


def status_from_message(message: api.Status) -> Status:
    """The Status a wire Status describes."""
    return Status(
        ref=message.ref,
        offset=message.offset,
        total=message.total,
        expected=message.expected,
        started_at=datetime_from_timestamp(message.started_at),
        updated_at=datetime_from_timestamp(message.updated_at),
    )


def lease_from_message(message: leases_pb2.Lease) -> Lease:
    """The lease a wire Lease describes."""
    return Lease(message.id, datetime_from_timestamp(message.created_at), dict(message.labels))


def resource_from_message(message: leases_pb2.Resource) -> LeaseResource:
    """What a lease holds, as a wire Resource says."""
    return LeaseResource(message.id, message.type)


def descriptor_from_message(message: descriptor_pb2.Descriptor) -> Descriptor:
    """The descriptor a wire Descriptor describes."""
    return Descriptor(message.media_type, message.digest, message.size, dict(message.annotations))


def image_from_message(message: images_pb2.Image, *, with_times: bool = True) -> Image:
    """The image a wire Image describes; without its times where a request's mean nothing."""
    return Image(
        message.name,
        descriptor_from_message(message.target),
        dict(message.labels),
        datetime_from_timestamp(message.created_at) if with_times else None,
        datetime_from_timestamp(message.updated_at) if with_times else None,
    )


def namespace_from_message(message: namespace_pb2.Namespace) -> Namespace:
    """The namespace a wire Namespace describes."""
    return Namespace(message.name, dict(message.labels))


def collection_from_message(message: gc_pb2.CollectResponse) -> CollectionReport:
    """What a collection removed, as a wire CollectResponse says."""
    return CollectionReport(
        content=message.content,
        leases=message.leases,
        ingests=message.ingests,
        blobs=message.blobs,
        bytes=message.bytes,
        seconds=message.seconds,
        dry_run=message.dry_run,
    )

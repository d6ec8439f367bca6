"""containerd's metadata on a daemon: leases, images and namespaces through their services.

Each class is the store's own (`contentd.content.Leases`, `Images`,
`Namespaces`) over gRPC, so code written for a LocalStore's runs on a
RemoteStore's, against contentd or containerd. Errors are `contentd.errdefs`
classes, decoded from the daemon's statuses.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import grpc
from google.protobuf import field_mask_pb2

from contentd.content import Image, Lease, LeaseResource, Namespace
from contentd.errdefs import NotFound, from_grpc
from contentd.proto import images_pb2, leases_pb2, namespace_pb2
from contentd.proto.images_pb2_grpc import ImagesStub
from contentd.proto.leases_pb2_grpc import LeasesStub
from contentd.proto.namespace_pb2_grpc import NamespacesStub
from contentd.proto.wire import (
    image_from_message,
    image_message,
    lease_from_message,
    namespace_from_message,
    namespace_message,
    resource_from_message,
    resource_message,
)

_T = TypeVar("_T")
#: Metadata sent with each call: the namespace header, and the lease header if any.
Headers = tuple[tuple[str, str], ...]


def call(method: Callable[..., _T], request: object, headers: Headers, timeout: float | None) -> _T:
    """Call `method` with `request`, raising a failure as its contentd.errdefs class."""
    try:
        return method(request, metadata=headers, timeout=timeout)
    except grpc.RpcError as exc:
        raise from_grpc(exc) from exc


class RemoteLeases:
    """The leases of one namespace on a daemon."""

    def __init__(self, channel: grpc.Channel, headers: Headers, timeout: float | None) -> None:
        self._stub = LeasesStub(channel)  # type: ignore[no-untyped-call]
        self._headers = headers
        self._timeout = timeout

    def create(self, lease_id: str = "", labels: Mapping[str, str] | None = None) -> Lease:
        request = leases_pb2.CreateRequest(id=lease_id, labels=dict(labels or {}))
        response = call(self._stub.Create, request, self._headers, self._timeout)
        return lease_from_message(response.lease)

    def delete(self, lease_id: str, *, sync: bool = False) -> None:
        """Remove the lease; with `sync`, return once a collection ran after it."""
        request = leases_pb2.DeleteRequest(id=lease_id, sync=sync)
        call(self._stub.Delete, request, self._headers, self._timeout)

    def get(self, lease_id: str) -> Lease:
        # The Leases service has no Get: a List by id is how containerd's clients ask.
        for lease in self.list(f"id=={_quoted(lease_id)}"):
            if lease.id == lease_id:
                return lease
        raise NotFound(f'lease "{lease_id}"')

    def list(self, *filters: str) -> builtins.list[Lease]:
        request = leases_pb2.ListRequest(filters=list(filters))
        response = call(self._stub.List, request, self._headers, self._timeout)
        return [lease_from_message(lease) for lease in response.leases]

    def add_resource(self, lease_id: str, resource: LeaseResource) -> None:
        request = leases_pb2.AddResourceRequest(id=lease_id, resource=resource_message(resource))
        call(self._stub.AddResource, request, self._headers, self._timeout)

    def delete_resource(self, lease_id: str, resource: LeaseResource) -> None:
        message = resource_message(resource)
        request = leases_pb2.DeleteResourceRequest(id=lease_id, resource=message)
        call(self._stub.DeleteResource, request, self._headers, self._timeout)

    def resources(self, lease_id: str) -> builtins.list[LeaseResource]:
        request = leases_pb2.ListResourcesRequest(id=lease_id)
        response = call(self._stub.ListResources, request, self._headers, self._timeout)
        return [resource_from_message(resource) for resource in response.resources]


def _quoted(text: str) -> str:
    """`text` as a quoted filter value (Go's escapes, as the filter language reads them)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class RemoteImages:
    """The images of one namespace on a daemon."""

    def __init__(self, channel: grpc.Channel, headers: Headers, timeout: float | None) -> None:
        self._stub = ImagesStub(channel)  # type: ignore[no-untyped-call]
        self._headers = headers
        self._timeout = timeout

    def get(self, name: str) -> Image:
        request = images_pb2.GetImageRequest(name=name)
        response = call(self._stub.Get, request, self._headers, self._timeout)
        return image_from_message(response.image)

    def list(self, *filters: str) -> builtins.list[Image]:
        request = images_pb2.ListImagesRequest(filters=list(filters))
        response = call(self._stub.List, request, self._headers, self._timeout)
        return [image_from_message(image) for image in response.images]

    def create(self, image: Image) -> Image:
        request = images_pb2.CreateImageRequest(image=image_message(image))
        response = call(self._stub.Create, request, self._headers, self._timeout)
        return image_from_message(response.image)

    def update(self, image: Image, fieldpaths: Sequence[str] = ()) -> Image:
        request = images_pb2.UpdateImageRequest(image=image_message(image))
        if fieldpaths:
            request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=list(fieldpaths)))
        response = call(self._stub.Update, request, self._headers, self._timeout)
        return image_from_message(response.image)

    def delete(self, name: str, *, sync: bool = False) -> None:
        """Remove the image; with `sync`, return once a collection ran after it."""
        request = images_pb2.DeleteImageRequest(name=name, sync=sync)
        call(self._stub.Delete, request, self._headers, self._timeout)


class RemoteNamespaces:
    """Every namespace of a daemon's store."""

    def __init__(self, channel: grpc.Channel, timeout: float | None) -> None:
        self._stub = NamespacesStub(channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout

    def list(self) -> builtins.list[Namespace]:
        request = namespace_pb2.ListNamespacesRequest()
        response = call(self._stub.List, request, (), self._timeout)
        return [namespace_from_message(namespace) for namespace in response.namespaces]

    def get(self, name: str) -> Namespace:
        request = namespace_pb2.GetNamespaceRequest(name=name)
        response = call(self._stub.Get, request, (), self._timeout)
        return namespace_from_message(response.namespace)

    def create(self, name: str, labels: Mapping[str, str] | None = None) -> Namespace:
        message = namespace_message(Namespace(name, dict(labels or {})))
        request = namespace_pb2.CreateNamespaceRequest(namespace=message)
        response = call(self._stub.Create, request, (), self._timeout)
        return namespace_from_message(response.namespace)

    def update(
        self, name: str, labels: Mapping[str, str], fieldpaths: Sequence[str] = ()
    ) -> Namespace:
        message = namespace_message(Namespace(name, dict(labels)))
        request = namespace_pb2.UpdateNamespaceRequest(namespace=message)
        if fieldpaths:
            request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=list(fieldpaths)))
        call(self._stub.Update, request, (), self._timeout)
        # containerd answers an empty namespace: read back what it now holds.
        return self.get(name)

    def delete(self, name: str) -> None:
        request = namespace_pb2.DeleteNamespaceRequest(name=name)
        call(self._stub.Delete, request, (), self._timeout)

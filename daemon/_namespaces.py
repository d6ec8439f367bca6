"""containerd.services.namespaces.v1.Namespaces over a store, with containerd 1.6's semantics.

This service names namespaces in its requests; it reads no namespace header.
"""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from contentd.content import Namespaces
from contentd.proto import namespace_pb2 as api
from contentd.proto.wire import namespace_message

from ._boundary import unary


class NamespacesService:
    """Every namespace of the store, with its labels."""

    def __init__(self, namespaces: Namespaces) -> None:
        self._namespaces = namespaces

    @unary
    def Get(
        self, request: api.GetNamespaceRequest, context: grpc.ServicerContext
    ) -> api.GetNamespaceResponse:
        # An unknown name answers with no labels, not NotFound, as containerd's
        # does: its Go client asks for its default namespace's labels on connect.
        namespace = self._namespaces.get(request.name)
        return api.GetNamespaceResponse(namespace=namespace_message(namespace))

    @unary
    def List(
        self, request: api.ListNamespacesRequest, context: grpc.ServicerContext
    ) -> api.ListNamespacesResponse:
        namespaces = self._namespaces.list()
        return api.ListNamespacesResponse(namespaces=[namespace_message(n) for n in namespaces])

    @unary
    def Create(
        self, request: api.CreateNamespaceRequest, context: grpc.ServicerContext
    ) -> api.CreateNamespaceResponse:
        given = request.namespace
        created = self._namespaces.create(given.name, dict(given.labels))
        return api.CreateNamespaceResponse(namespace=namespace_message(created))

    @unary
    def Update(
        self, request: api.UpdateNamespaceRequest, context: grpc.ServicerContext
    ) -> api.UpdateNamespaceResponse:
        given = request.namespace
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        updated = self._namespaces.update(given.name, dict(given.labels), paths)
        return api.UpdateNamespaceResponse(namespace=namespace_message(updated))

    @unary
    def Delete(
        self, request: api.DeleteNamespaceRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._namespaces.delete(request.name)
        return empty_pb2.Empty()

"""containerd.services.leases.v1.Leases over a store, with containerd 1.6's semantics."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from contentd.content import MetadataStore
from contentd.proto import leases_pb2 as api
from contentd.proto.wire import lease_message, resource_from_message, resource_message

from ._boundary import unary
from ._collection import Collections
from ._requests import request_namespace


class LeasesService:
    """Leases in the request's namespace: create, list, delete, and what each holds."""

    def __init__(self, store: MetadataStore, collections: Collections) -> None:
        self._store = store
        self._collections = collections

    def _leases(self, context: grpc.ServicerContext) -> MetadataStore:
        return self._store.with_namespace(request_namespace(context))

    @unary
    def Create(
        self, request: api.CreateRequest, context: grpc.ServicerContext
    ) -> api.CreateResponse:
        lease = self._leases(context).leases.create(request.id, dict(request.labels))
        return api.CreateResponse(lease=lease_message(lease))

    @unary
    def Delete(self, request: api.DeleteRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        self._leases(context).leases.delete(request.id)
        if request.sync:
            self._collections.wait(context.time_remaining())
        return empty_pb2.Empty()

    @unary
    def List(self, request: api.ListRequest, context: grpc.ServicerContext) -> api.ListResponse:
        leases = self._leases(context).leases.list(*request.filters)
        return api.ListResponse(leases=[lease_message(lease) for lease in leases])

    @unary
    def AddResource(
        self, request: api.AddResourceRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        resource = resource_from_message(request.resource)
        self._leases(context).leases.add_resource(request.id, resource)
        return empty_pb2.Empty()

    @unary
    def DeleteResource(
        self, request: api.DeleteResourceRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        resource = resource_from_message(request.resource)
        self._leases(context).leases.delete_resource(request.id, resource)
        return empty_pb2.Empty()

    @unary
    def ListResources(
        self, request: api.ListResourcesRequest, context: grpc.ServicerContext
    ) -> api.ListResourcesResponse:
        resources = self._leases(context).leases.resources(request.id)
        return api.ListResourcesResponse(resources=[resource_message(r) for r in resources])

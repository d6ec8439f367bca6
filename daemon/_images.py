"""containerd.services.images.v1.Images over a store, with containerd 1.6's semantics."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from contentd.content import Images, MetadataStore
from contentd.proto import images_pb2 as api
from contentd.proto.wire import image_from_message, image_message

from ._boundary import unary
from ._collection import Collections
from ._requests import request_namespace


class ImagesService:
    """Images in the request's namespace; the times a request carries are ignored."""

    def __init__(self, store: MetadataStore, collections: Collections) -> None:
        self._store = store
        self._collections = collections

    def _images(self, context: grpc.ServicerContext) -> Images:
        return self._store.with_namespace(request_namespace(context)).images

    @unary
    def Get(
        self, request: api.GetImageRequest, context: grpc.ServicerContext
    ) -> api.GetImageResponse:
        return api.GetImageResponse(image=image_message(self._images(context).get(request.name)))

    @unary
    def List(
        self, request: api.ListImagesRequest, context: grpc.ServicerContext
    ) -> api.ListImagesResponse:
        images = self._images(context).list(*request.filters)
        return api.ListImagesResponse(images=[image_message(image) for image in images])

    @unary
    def Create(
        self, request: api.CreateImageRequest, context: grpc.ServicerContext
    ) -> api.CreateImageResponse:
        image = image_from_message(request.image, with_times=False)
        return api.CreateImageResponse(image=image_message(self._images(context).create(image)))

    @unary
    def Update(
        self, request: api.UpdateImageRequest, context: grpc.ServicerContext
    ) -> api.UpdateImageResponse:
        image = image_from_message(request.image, with_times=False)
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        updated = self._images(context).update(image, paths)
        return api.UpdateImageResponse(image=image_message(updated))

    @unary
    def Delete(
        self, request: api.DeleteImageRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._images(context).delete(request.name)
        if request.sync:
            self._collections.wait(context.time_remaining())
        return empty_pb2.Empty()

"""contentd.services.gc.v1.GC: a garbage collection on demand (`contentd gc` via a daemon)."""

from __future__ import annotations

import grpc

from contentd.content import MetadataStore
from contentd.proto import gc_pb2 as api
from contentd.proto.wire import collection_message

from ._boundary import unary
from ._collection import Collections


class GCService:
    """Runs a collection now, through the daemon's scheduler (a dry run beside it)."""

    def __init__(self, store: MetadataStore, collections: Collections) -> None:
        self._store = store
        self._collections = collections

    @unary
    def Collect(
        self, request: api.CollectRequest, context: grpc.ServicerContext
    ) -> api.CollectResponse:
        if request.dry_run:
            report = self._store.collect(dry_run=True)
        else:
            report = self._collections.wait(context.time_remaining())
        return collection_message(report)

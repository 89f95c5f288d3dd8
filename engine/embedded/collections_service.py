"""`qdrant.Collections` (collections and aliases) and `qdrant.Qdrant` (health check) on the catalog."""

from __future__ import annotations

import importlib.metadata
import time

import grpc
from qdrant_client import grpc as pb

from engine.embedded import schema
from engine.embedded.catalog import Catalog, apply_alias_action
from engine.embedded.compat import Compat
from engine.embedded.status import rpc, unsupported

EDGE_VERSION = importlib.metadata.version("qdrant-edge-py")


class QdrantService(pb.QdrantServicer):
    def __init__(self, compat: Compat) -> None:
        self.compat = compat

    @rpc
    def HealthCheck(self, request: pb.HealthCheckRequest, context: grpc.ServicerContext) -> pb.HealthCheckReply:
        return pb.HealthCheckReply(
            title=f"qdrant-edge {EDGE_VERSION} (reembed embedded endpoint)", version=self.compat.version_text
        )


class CollectionsService(pb.CollectionsServicer):
    def __init__(self, catalog: Catalog, compat: Compat) -> None:
        self.catalog = catalog
        self.compat = compat

    @rpc
    def Create(self, request: pb.CreateCollection, context: grpc.ServicerContext) -> pb.CollectionOperationResponse:
        started = time.perf_counter()
        config = schema.config_from_create(request, with_metadata=self.compat.metadata)
        self.catalog.create(request.collection_name, config)
        return pb.CollectionOperationResponse(result=True, time=time.perf_counter() - started)

    @rpc
    def Get(self, request: pb.GetCollectionInfoRequest, context: grpc.ServicerContext) -> pb.GetCollectionInfoResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            shard_info = coll.shard.info()
            info = pb.CollectionInfo(
                status=pb.CollectionStatus.Green,
                optimizer_status=pb.OptimizerStatus(ok=True),
                segments_count=shard_info.segments_count,
                config=coll.config,
                points_count=shard_info.points_count,
                indexed_vectors_count=shard_info.indexed_vectors_count,
                update_queue=pb.UpdateQueueInfo(length=0),
            )
            indexed = shard_info.payload_schema
            for field, stored in coll.payload_schema.items():
                out = info.payload_schema[field]
                out.CopyFrom(stored)
                edge_index = indexed.get(field)
                out.points = edge_index.points if edge_index is not None else 0
            coll.fill_created_at(info.created_at)
        return pb.GetCollectionInfoResponse(result=info, time=time.perf_counter() - started)

    @rpc
    def List(self, request: pb.ListCollectionsRequest, context: grpc.ServicerContext) -> pb.ListCollectionsResponse:
        started = time.perf_counter()
        return pb.ListCollectionsResponse(
            collections=[pb.CollectionDescription(name=name) for name in self.catalog.names()],
            time=time.perf_counter() - started,
        )

    @rpc
    def Update(self, request: pb.UpdateCollection, context: grpc.ServicerContext) -> pb.CollectionOperationResponse:
        started = time.perf_counter()
        with self.catalog.writing(request.collection_name) as coll:
            config = pb.CollectionConfig()
            config.CopyFrom(coll.config)
            reopen = schema.apply_update(config, request, with_metadata=self.compat.metadata)
            previous = coll.config
            coll.config = config
            if reopen:
                try:
                    self.catalog.reopen(coll)
                except Exception:
                    coll.config = previous
                    raise
            coll.save()
            coll.refresh_derived()
        return pb.CollectionOperationResponse(result=True, time=time.perf_counter() - started)

    @rpc
    def Delete(self, request: pb.DeleteCollection, context: grpc.ServicerContext) -> pb.CollectionOperationResponse:
        started = time.perf_counter()
        deleted = self.catalog.delete(request.collection_name)
        return pb.CollectionOperationResponse(result=deleted, time=time.perf_counter() - started)

    @rpc
    def CollectionExists(
        self, request: pb.CollectionExistsRequest, context: grpc.ServicerContext
    ) -> pb.CollectionExistsResponse:
        started = time.perf_counter()
        exists = self.catalog.exists(request.collection_name)
        return pb.CollectionExistsResponse(
            result=pb.CollectionExists(exists=exists), time=time.perf_counter() - started
        )

    @rpc
    def UpdateAliases(self, request: pb.ChangeAliases, context: grpc.ServicerContext) -> pb.CollectionOperationResponse:
        started = time.perf_counter()

        def apply(mapping: dict[str, str], collections: set[str]) -> None:
            for action in request.actions:
                apply_alias_action(action, mapping, collections)

        self.catalog.change_aliases(apply)
        return pb.CollectionOperationResponse(result=True, time=time.perf_counter() - started)

    @rpc
    def ListAliases(self, request: pb.ListAliasesRequest, context: grpc.ServicerContext) -> pb.ListAliasesResponse:
        started = time.perf_counter()
        aliases = sorted(self.catalog.aliases().items())
        return pb.ListAliasesResponse(
            aliases=[pb.AliasDescription(alias_name=a, collection_name=c) for a, c in aliases],
            time=time.perf_counter() - started,
        )

    @rpc
    def ListCollectionAliases(
        self, request: pb.ListCollectionAliasesRequest, context: grpc.ServicerContext
    ) -> pb.ListAliasesResponse:
        started = time.perf_counter()
        name = self.catalog.resolve_name(request.collection_name)
        aliases = sorted(a for a, c in self.catalog.aliases().items() if c == name)
        return pb.ListAliasesResponse(
            aliases=[pb.AliasDescription(alias_name=a, collection_name=name) for a in aliases],
            time=time.perf_counter() - started,
        )

    @rpc
    def CollectionClusterInfo(
        self, request: pb.CollectionClusterInfoRequest, context: grpc.ServicerContext
    ) -> pb.CollectionClusterInfoResponse:
        started = time.perf_counter()
        with self.catalog.reading(request.collection_name) as coll:
            points = coll.shard.info().points_count
        return pb.CollectionClusterInfoResponse(
            peer_id=0,
            shard_count=1,
            local_shards=[pb.LocalShardInfo(shard_id=0, points_count=points, state=pb.ReplicaState.Active)],
            time=time.perf_counter() - started,
        )

    @rpc
    def UpdateCollectionClusterSetup(
        self, request: pb.UpdateCollectionClusterSetupRequest, context: grpc.ServicerContext
    ) -> pb.UpdateCollectionClusterSetupResponse:
        raise unsupported("cluster setup changes")

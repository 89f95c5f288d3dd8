"""`qdrant.Collections` (collections, aliases, shard keys) and `qdrant.Qdrant` (health check) on the catalog."""

from __future__ import annotations

import importlib.metadata
import time
from typing import Any, Callable, Optional

import grpc
from qdrant_client import grpc as pb

from engine.embedded import indexing, schema
from engine.embedded.catalog import Catalog
from engine.embedded.compat import Compat
from engine.embedded.sharding import ShardKey, fill_shard_key, shard_key_in
from engine.embedded.status import ApiError, invalid_argument, rpc, unsupported, validation_error

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
    def __init__(
        self, catalog: Catalog, compat: Compat, index_seconds_per_point: float = indexing.DEFAULT_SECONDS_PER_POINT
    ) -> None:
        self.catalog = catalog
        self.compat = compat
        self.index_seconds_per_point = index_seconds_per_point

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
            infos = [shard.edge.info() for shard in coll.shards.values()]
            # Summed over shards, the worst status wins (collection/collection_ops.rs `info`).
            info = pb.CollectionInfo(
                status=coll.index_build.status(),
                optimizer_status=pb.OptimizerStatus(ok=True),
                segments_count=sum(i.segments_count for i in infos),
                config=coll.config,
                points_count=sum(i.points_count for i in infos),
                indexed_vectors_count=sum(i.indexed_vectors_count for i in infos),
                update_queue=pb.UpdateQueueInfo(length=0),
            )
            for field, stored in coll.payload_schema.items():
                out = info.payload_schema[field]
                out.CopyFrom(stored)
                out.points = sum(
                    i.payload_schema[field].points for i in infos if i.payload_schema.get(field) is not None
                )
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
            if request.HasField("strict_mode_config"):
                coll.refresh_limiters()
            points = coll.points_count()
            if indexing.needs_rebuild(previous, config, points):
                coll.index_build.start(points, self.index_seconds_per_point)
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
        self.catalog.change_aliases(list(request.actions))
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

    # -- shards -------------------------------------------------------------------------------------------------------

    @rpc
    def CollectionClusterInfo(
        self, request: pb.CollectionClusterInfoRequest, context: grpc.ServicerContext
    ) -> pb.CollectionClusterInfoResponse:
        """Every shard is local and Active on peer 0, with its shard key (collection_ops.rs `cluster_info`)."""
        started = time.perf_counter()
        response = pb.CollectionClusterInfoResponse(peer_id=0)
        with self.catalog.reading(request.collection_name) as coll:
            response.shard_count = len(coll.shards)
            for shard_id in sorted(coll.shards):
                out = response.local_shards.add(
                    shard_id=shard_id,
                    points_count=coll.shards[shard_id].edge.info().points_count,
                    state=pb.ReplicaState.Active,
                )
                key = coll.layout.key_of.get(shard_id)
                if key is not None:
                    fill_shard_key(out.shard_key, key)
        response.time = time.perf_counter() - started
        return response

    def _create_shard_key(self, collection: str, request: pb.CreateShardKey) -> None:
        if request.HasField("shards_number") and request.shards_number == 0:  # grpc/validate.rs CreateShardKey
            raise validation_error("shards_number", "Validation error: Shards number must be greater than 0 [{}]")
        if request.HasField("replication_factor") and request.replication_factor == 0:
            raise validation_error(
                "replication_factor", "Validation error: Replication factor must be greater than 0 [{}]"
            )
        key = _named_key(request)
        shards_number: Optional[int] = request.shards_number if request.HasField("shards_number") else None
        with self.catalog.writing(collection) as coll:
            self.catalog.create_shard_key(coll, key, shards_number)

    def _delete_shard_key(self, collection: str, request: pb.DeleteShardKey) -> None:
        key = _named_key(request)
        with self.catalog.writing(collection) as coll:
            self.catalog.delete_shard_key(coll, key)

    @rpc
    def CreateShardKey(
        self, request: pb.CreateShardKeyRequest, context: grpc.ServicerContext
    ) -> pb.CreateShardKeyResponse:
        return pb.CreateShardKeyResponse(result=True, time=_timed_shard_key_call(request, self._create_shard_key))

    @rpc
    def DeleteShardKey(
        self, request: pb.DeleteShardKeyRequest, context: grpc.ServicerContext
    ) -> pb.DeleteShardKeyResponse:
        return pb.DeleteShardKeyResponse(result=True, time=_timed_shard_key_call(request, self._delete_shard_key))

    @rpc
    def ListShardKeys(
        self, request: pb.ListShardKeysRequest, context: grpc.ServicerContext
    ) -> pb.ListShardKeysResponse:
        """The keys of a custom-sharded collection; none for auto sharding (src/common/collections.rs
        do_get_collection_shard_keys). The RPC exists since Qdrant 1.17."""
        if not self.compat.list_shard_keys:
            raise ApiError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"Method not found: /qdrant.Collections/ListShardKeys (this endpoint emulates Qdrant "
                f"{self.compat.version_text}; ListShardKeys needs 1.17)",
            )
        started = time.perf_counter()
        response = pb.ListShardKeysResponse()
        with self.catalog.reading(request.collection_name) as coll:
            for key in coll.layout.keys:
                fill_shard_key(response.shard_keys.add().key, key)
        response.time = time.perf_counter() - started
        return response

    @rpc
    def UpdateCollectionClusterSetup(
        self, request: pb.UpdateCollectionClusterSetupRequest, context: grpc.ServicerContext
    ) -> pb.UpdateCollectionClusterSetupResponse:
        started = time.perf_counter()
        kind = request.WhichOneof("operation")
        if kind is None:
            raise invalid_argument("empty operation")
        if kind == "create_shard_key":
            self._create_shard_key(request.collection_name, request.create_shard_key)
        elif kind == "delete_shard_key":
            self._delete_shard_key(request.collection_name, request.delete_shard_key)
        else:
            raise unsupported(f"cluster setup operation `{kind}` (one peer, every shard local)")
        return pb.UpdateCollectionClusterSetupResponse(result=True, time=time.perf_counter() - started)


def _named_key(request: pb.CreateShardKey | pb.DeleteShardKey) -> ShardKey:
    """The shard key a create or delete names; none is bad input."""
    key = shard_key_in(request.shard_key) if request.HasField("shard_key") else None
    if key is None:
        raise invalid_argument("Shard key is not specified")
    return key


def _timed_shard_key_call(
    request: pb.CreateShardKeyRequest | pb.DeleteShardKeyRequest, apply: Callable[[str, Any], None]
) -> float:
    """`apply` to the collection and the inner request of a Create/DeleteShardKey call (an empty one is bad input,
    src/tonic/api/collections_api.rs); returns the seconds it took, for the response."""
    started = time.perf_counter()
    if not request.HasField("request"):
        raise invalid_argument("empty request")
    apply(request.collection_name, request.request)
    return time.perf_counter() - started

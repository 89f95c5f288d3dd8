"""A small blocking gRPC client for everything except the bulk write path: server version, collections, aliases,
scroll pages, counts, sampling, and the few small writes checkpoints need.

It uses raw stubs rather than qdrant-client so that the engine depends only on the wire protocol (the same stubs
every Qdrant server speaks) and so every call goes through one retry policy with one error translation.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from qdrant_client import grpc as pb

from engine.errors import NotFound, QdrantRequestError
from engine.qdrant import retry, wire
from engine.qdrant.connection import Endpoint
from engine.qdrant.strict import StrictMode

log = logging.getLogger(__name__)
T = TypeVar("T")
# What a server without Query's random sampling answers (Query is 1.10+, sample=random 1.11+).
_SAMPLING_MISSING = re.compile(r"\((UNIMPLEMENTED|INVALID_ARGUMENT)[:)]")
# Strict mode refusing a request is INVALID_ARGUMENT too, so it must be told apart from a server without sampling:
# the fallback scroll would be refused by the same limits. Qdrant words every strict-mode refusal "<what>. Help:
# <how>" (CollectionError::strict_mode); a `limit` over max_query_limit is check_limit_opt's
# `Limit exceeded 8192 > 1024 for "limit"` (lib/collection/src/operations/verification/mod.rs).
_STRICT_MODE_REFUSAL = re.compile(r"\. Help: ")
_QUERY_LIMIT_EXCEEDED = re.compile(r'Limit exceeded (\d+) > (\d+) for "limit"')
SCAN_PAGE = 10_000  # ids per scroll page of the fallback sample: id-only pages are small
RESERVOIR_SEED = 7  # the fallback sample is reproducible, so a re-planned job cuts the same boundaries


@dataclass(frozen=True)
class ServerInfo:
    title: str
    version: str

    def version_tuple(self) -> tuple[int, int, int]:
        return parse_version(self.version)


def parse_version(text: str) -> tuple[int, int, int]:
    core = text.strip().lstrip("v").split("-")[0].split("+")[0]
    parts = (core.split(".") + ["0", "0", "0"])[:3]
    try:
        return tuple(int(p) for p in parts)  # type: ignore[return-value]
    except ValueError:
        return (0, 0, 0)


class QdrantGrpc:
    def __init__(self, endpoint: Endpoint, policy: retry.RetryPolicy | None = None,
                 stats: retry.RetryStats | None = None, announce_waits: bool = False) -> None:
        """`announce_waits`: log what an outage holds up (the driver's client, whose calls no progress line
        reports; workers' waits reach the coordinator's progress line instead)."""
        self.endpoint = endpoint
        self._announce = log.warning if announce_waits else None
        self.policy = policy or retry.RetryPolicy()
        self.stats = stats or retry.RetryStats()
        self._channel = endpoint.channel()
        self.points = pb.PointsStub(self._channel)
        self.collections = pb.CollectionsStub(self._channel)
        self.qdrant = pb.QdrantStub(self._channel)
        self._raw_upsert = self._channel.unary_unary(
            "/qdrant.Points/Upsert", request_serializer=None,
            response_deserializer=pb.PointsOperationResponse.FromString,
        )
        self._raw_update_vectors = self._channel.unary_unary(
            "/qdrant.Points/UpdateVectors", request_serializer=None,
            response_deserializer=pb.PointsOperationResponse.FromString,
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "QdrantGrpc":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, method: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        md = self.endpoint.metadata()
        t = timeout or self.endpoint.timeout_s
        return retry.call(
            lambda: method(request, metadata=md, timeout=t),
            what=what, address=self.endpoint.address, policy=self.policy, stats=self.stats, announce=self._announce,
        )

    # --- server ---------------------------------------------------------------------------------------------------
    def health(self) -> ServerInfo:
        reply = self._call("health check", self.qdrant.HealthCheck, pb.HealthCheckRequest())
        return ServerInfo(title=reply.title, version=reply.version)

    # --- collections ----------------------------------------------------------------------------------------------
    def collection_exists(self, name: str) -> bool:
        reply = self._call(f"check collection {name!r}", self.collections.CollectionExists,
                           pb.CollectionExistsRequest(collection_name=name))
        return bool(reply.result.exists)

    def collection_info(self, name: str) -> pb.CollectionInfo | None:
        """The collection (or alias target) description, or None if it does not exist."""
        try:
            return self._call(f"describe collection {name!r}", self.collections.Get,
                              pb.GetCollectionInfoRequest(collection_name=name)).result
        except NotFound:
            return None

    def list_collections(self) -> list[str]:
        reply = self._call("list collections", self.collections.List, pb.ListCollectionsRequest())
        return [c.name for c in reply.collections]

    def create_collection(self, request: pb.CreateCollection) -> None:
        self._call(f"create collection {request.collection_name!r}", self.collections.Create, request)

    def delete_collection(self, name: str) -> None:
        self._call(f"delete collection {name!r}", self.collections.Delete,
                   pb.DeleteCollection(collection_name=name))

    def update_collection(self, request: pb.UpdateCollection) -> None:
        self._call(f"update collection {request.collection_name!r}", self.collections.Update, request)

    def list_aliases(self) -> dict[str, str]:
        """alias -> collection."""
        reply = self._call("list aliases", self.collections.ListAliases, pb.ListAliasesRequest())
        return {a.alias_name: a.collection_name for a in reply.aliases}

    def update_aliases(self, actions: Sequence[pb.AliasOperations]) -> None:
        self._call("update aliases", self.collections.UpdateAliases, pb.ChangeAliases(actions=list(actions)))

    def resolve(self, name: str) -> str:
        """The collection behind a name that may be an alias."""
        return self.list_aliases().get(name, name)

    def create_field_index(self, collection: str, field: str, field_type: pb.FieldType.ValueType,
                           params: pb.PayloadIndexParams | None = None) -> None:
        req = pb.CreateFieldIndexCollection(collection_name=collection, field_name=field, wait=True,
                                            field_type=field_type)
        if params is not None:
            req.field_index_params.CopyFrom(params)
        self._call(f"create payload index {field!r} on {collection!r}", self.points.CreateFieldIndex, req)

    def list_shard_keys(self, collection: str) -> list[wire.ShardKeyValue]:
        """The shard keys of a custom-sharded collection (Collections.ListShardKeys, Qdrant >= 1.17)."""
        reply = self._call(f"list shard keys of {collection!r}", self.collections.ListShardKeys,
                           pb.ListShardKeysRequest(collection_name=collection))
        return [d.key.keyword if d.key.WhichOneof("key") == "keyword" else int(d.key.number) for d in reply.shard_keys]

    def shards_per_key(self, collection: str) -> dict[wire.ShardKeyValue, int]:
        """How many shards each shard key of a custom-sharded collection has (CollectionClusterInfo: the distinct
        shard ids per key over this peer's local and remote shards; replicas share an id). Keys can differ from the
        collection's shard_number: CreateShardKey takes its own shards_number."""
        reply = self._call(f"read the cluster layout of {collection!r}", self.collections.CollectionClusterInfo,
                           pb.CollectionClusterInfoRequest(collection_name=collection))
        ids: dict[wire.ShardKeyValue, set[int]] = {}
        for shard in [*reply.local_shards, *reply.remote_shards]:
            if shard.HasField("shard_key"):
                key = shard.shard_key
                value = key.keyword if key.WhichOneof("key") == "keyword" else int(key.number)
                ids.setdefault(value, set()).add(shard.shard_id)
        return {key: len(shard_ids) for key, shard_ids in ids.items()}

    def create_shard_key(self, request: pb.CreateShardKeyRequest) -> None:
        key = request.request.shard_key
        name = key.keyword if key.WhichOneof("key") == "keyword" else key.number
        self._call(f"create shard key {name!r} on {request.collection_name!r}", self.collections.CreateShardKey,
                   request)

    # --- points ---------------------------------------------------------------------------------------------------
    def scroll(self, collection: str, offset: wire.PointIdValue | None, limit: int, *,
               with_payload: bool | pb.WithPayloadSelector = True,
               with_vectors: bool | pb.WithVectorsSelector = False,
               flt: pb.Filter | None = None, shard_key: wire.ShardKeyValue | None = None,
               ) -> tuple[list[pb.RetrievedPoint], wire.PointIdValue | None]:
        req = pb.ScrollPoints(collection_name=collection, limit=limit)
        if shard_key is not None:
            req.shard_key_selector.CopyFrom(wire.shard_key_selector(shard_key))
        if offset is not None:
            req.offset.CopyFrom(wire.point_id(offset))
        if isinstance(with_payload, bool):
            req.with_payload.enable = with_payload
        else:
            req.with_payload.CopyFrom(with_payload)
        if isinstance(with_vectors, bool):
            req.with_vectors.enable = with_vectors
        else:
            req.with_vectors.CopyFrom(with_vectors)
        if flt is not None:
            req.filter.CopyFrom(flt)
        reply = self._call(f"scroll {collection!r}", self.points.Scroll, req)
        nxt = wire.id_value(reply.next_page_offset) if reply.HasField("next_page_offset") else None
        return list(reply.result), nxt

    def count(self, collection: str, exact: bool = True, flt: pb.Filter | None = None) -> int:
        req = pb.CountPoints(collection_name=collection, exact=exact)
        if flt is not None:
            req.filter.CopyFrom(flt)
        return int(self._call(f"count {collection!r}", self.points.Count, req).result.count)

    def get(self, collection: str, ids: Sequence[wire.PointIdValue], *, with_payload: bool = True,
            with_vectors: bool | Sequence[str] = False,
            shard_key: wire.ShardKeyValue | None = None) -> list[pb.RetrievedPoint]:
        req = pb.GetPoints(collection_name=collection, ids=[wire.point_id(i) for i in ids])
        if shard_key is not None:
            req.shard_key_selector.CopyFrom(wire.shard_key_selector(shard_key))
        req.with_payload.enable = with_payload
        if isinstance(with_vectors, bool):
            req.with_vectors.enable = with_vectors
        else:
            req.with_vectors.include.names.extend(with_vectors)
        return list(self._call(f"get points from {collection!r}", self.points.Get, req).result)

    def sample_ids(self, collection: str, n: int,
                   shard_key: wire.ShardKeyValue | None = None) -> list[wire.PointIdValue]:
        """About n random point ids (Query sample=random, Qdrant >= 1.11); falls back to reading every id.

        The Query's `limit` is n: under strict mode the caller keeps n within max_query_limit
        (StrictMode.sample_limit); a refusal of it raises, naming the limit, rather than falling back to a scan."""
        req = pb.QueryPoints(collection_name=collection, limit=n, query=pb.Query(sample=pb.Sample.Random))
        req.with_payload.enable = False
        if shard_key is not None:
            req.shard_key_selector.CopyFrom(wire.shard_key_selector(shard_key))
        what = f"sample ids of {collection!r}"
        try:
            reply = self._call(what, self.points.Query, req)
            return [wire.id_value(p.id) for p in reply.result]
        except QdrantRequestError as exc:
            over = _QUERY_LIMIT_EXCEEDED.search(str(exc))
            if over is not None:
                asked, limit = int(over.group(1)), int(over.group(2))
                raise QdrantRequestError(
                    f"{what}: strict mode on {collection!r} caps a query at max_query_limit {limit:,} and the "
                    f"sample asked for {asked:,} ids; ask for at most {limit:,} (StrictMode.sample_limit), or raise "
                    f"the collection's strict_mode_config.max_query_limit to {asked:,}"
                ) from exc
            if _STRICT_MODE_REFUSAL.search(str(exc)) or not _SAMPLING_MISSING.search(str(exc)):
                raise
            log.info("random sampling unavailable (%s); sampling ids of %s while scrolling them", exc, collection)
        # A server without random sampling: one id-only pass, keeping a uniform reservoir of n ids, so memory stays
        # at n ids whatever the collection's size. Its pages stay inside the collection's query limit.
        page_size = StrictMode.from_info(self.collection_info(collection)).page_limit(SCAN_PAGE)
        rng = random.Random(RESERVOIR_SEED)
        kept: list[wire.PointIdValue] = []
        seen = 0
        offset = None
        while True:
            page, offset = self.scroll(collection, offset, page_size, with_payload=False, shard_key=shard_key)
            for p in page:
                seen += 1
                if len(kept) < n:
                    kept.append(wire.id_value(p.id))
                else:
                    j = rng.randrange(seen)
                    if j < n:
                        kept[j] = wire.id_value(p.id)
            if offset is None:
                return kept

    def upsert_raw(self, request: bytes, what: str) -> None:
        """A pre-serialised UpsertPoints (engine.qdrant.wire); the caller guarantees it is safe to repeat."""
        self._call(what, self._raw_upsert, request)

    def update_vectors_raw(self, request: bytes, what: str) -> None:
        self._call(what, self._raw_update_vectors, request)

    def delete_points(self, collection: str, ids: Sequence[wire.PointIdValue], wait: bool = True,
                      shard_key: wire.ShardKeyValue | None = None) -> None:
        req = pb.DeletePoints(collection_name=collection, wait=wait,
                              points=pb.PointsSelector(points=pb.PointsIdsList(ids=[wire.point_id(i) for i in ids])))
        if shard_key is not None:
            req.shard_key_selector.CopyFrom(wire.shard_key_selector(shard_key))
        self._call(f"delete points from {collection!r}", self.points.Delete, req)

    def search(self, collection: str, vector, *, using: str | None = None, limit: int = 10, exact: bool = False,
               with_payload: bool = True) -> list[pb.ScoredPoint]:
        """Nearest neighbours of a dense vector (Query API)."""
        req = pb.QueryPoints(collection_name=collection, limit=limit,
                             query=pb.Query(nearest=pb.VectorInput(
                                 dense=pb.DenseVector(data=list(map(float, vector))))))
        if using:
            req.using = using
        req.with_payload.enable = with_payload
        if exact:
            req.params.exact = True
        return list(self._call(f"search {collection!r}", self.points.Query, req).result)

    # --- vector schema (Qdrant >= 1.18) ---------------------------------------------------------------------------
    def create_vector_name(self, collection: str, name: str, *, dense: pb.DenseVectorCreationConfig | None = None,
                           sparse: pb.SparseVectorCreationConfig | None = None) -> None:
        """Add a named vector to an existing collection (Points.CreateVectorName, Qdrant >= 1.18)."""
        req = pb.CreateVectorNameRequest(collection_name=collection, vector_name=name, wait=True)
        if dense is not None:
            req.dense_config.CopyFrom(dense)
        elif sparse is not None:
            req.sparse_config.CopyFrom(sparse)
        else:
            raise ValueError("create_vector_name needs dense or sparse")
        self._call(f"create vector {name!r} on {collection!r}", self.points.CreateVectorName, req)

    def delete_vector_name(self, collection: str, name: str) -> None:
        """Drop a named vector's schema and all its data (Points.DeleteVectorName, Qdrant >= 1.18)."""
        req = pb.DeleteVectorNameRequest(collection_name=collection, vector_name=name, wait=True)
        self._call(f"delete vector {name!r} from {collection!r}", self.points.DeleteVectorName, req)

    def wait_green(self, collection: str, timeout_s: float, poll_s: float = 2.0) -> tuple[str, float]:
        """Poll until the collection's status is green (optimisations and index builds done); returns the last
        status name and the seconds waited. Never raises on a timeout: the caller reports the status."""
        t0 = time.monotonic()
        last_log = t0
        while True:
            info = self.collection_info(collection)
            status = pb.CollectionStatus.Name(info.status) if info is not None else "Missing"
            waited = time.monotonic() - t0
            if status in ("Green", "Missing") or waited >= timeout_s:
                return status, waited
            if time.monotonic() - last_log >= 30:
                log.info("waiting for %s to turn green (status %s, %.0f s so far)", collection, status, waited)
                last_log = time.monotonic()
            time.sleep(poll_s)

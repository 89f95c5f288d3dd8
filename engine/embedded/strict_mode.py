"""Strict mode, checked per request before anything is read or written, with Qdrant's wording.

Read from lib/collection/src/operations/verification/{mod,update,query,local_shard,count}.rs,
lib/storage/src/content_manager/collection_verification.rs and StrictModeConfig in lib/segment/src/types.rs:
- only a config with `enabled: true` is checked;
- a violation is `Bad request: <what>. Help: <how>` (CollectionError::StrictMode becomes StorageError::BadRequest,
  INVALID_ARGUMENT);
- checked here: `max_query_limit` (scroll and query `limit`, prefetch limits), `upsert_max_batchsize` (upsert and
  update-vectors point counts), `search_allow_exact` (exact search, exact count, and queries on a vector whose
  HNSW is off), `search_max_hnsw_ef`, `search_max_oversampling`, `search_max_batchsize`, `max_timeout`,
  `filter_max_conditions`, `unindexed_filtering_retrieve` / `_update` (a filter key without a fitting payload index);
- the read and write rate limits are per-shard token buckets (rate_limit.py), charged where the shards are used.
Not emulated: collection size limits (`max_points_count`, `max_collection_*_size_bytes`), `condition_max_size`,
multivector/sparse size limits, `max_payload_index_count`, `max_resident_memory_percent`.
"""

from __future__ import annotations

from typing import Any, Iterator, Literal, Optional

from qdrant_client import grpc as pb

from engine.embedded import schema
from engine.embedded.status import ApiError, bad_request

# Payload index types that answer each kind of condition (lib/collection/src/problems/unindexed_field.rs,
# infer_index_from_field_condition), as Qdrant names them in its error.
_ANY_INDEX = ("keyword", "integer", "float", "geo", "text", "bool", "datetime", "uuid")
_SCHEMA_NAMES = {
    pb.PayloadSchemaType.Keyword: "keyword",
    pb.PayloadSchemaType.Integer: "integer",
    pb.PayloadSchemaType.Float: "float",
    pb.PayloadSchemaType.Geo: "geo",
    pb.PayloadSchemaType.Text: "text",
    pb.PayloadSchemaType.Bool: "bool",
    pb.PayloadSchemaType.Datetime: "datetime",
    pb.PayloadSchemaType.Uuid: "uuid",
}


def violation(error: str, solution: str) -> ApiError:
    """CollectionError::strict_mode, as the client sees it."""
    return bad_request(f"{error}. Help: {solution}")


def _num(x: float) -> str:
    """A number as Rust's Display writes it (2.0 -> "2", 2.5 -> "2.5")."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def check_limit(value: Optional[float], limit: Optional[float], name: str) -> None:
    """verification/mod.rs check_limit_opt."""
    if value is None or limit is None or value <= limit:
        return
    raise violation(
        f'Limit exceeded {_num(value)} > {_num(limit)} for "{name}"',
        f'Reduce the "{name}" parameter to or below {_num(limit)}.',
    )


def _opt(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def check_exact(strict: pb.StrictModeConfig, exact: bool) -> None:
    if exact and strict.HasField("search_allow_exact") and not strict.search_allow_exact:
        raise violation("Exact search disabled!", "Set exact=false.")


def check_timeout(strict: pb.StrictModeConfig, request: Any) -> None:
    if "timeout" in request.DESCRIPTOR.fields_by_name and request.HasField("timeout"):
        check_limit(request.timeout, _opt(strict, "max_timeout"), "timeout")


def check_search_params(strict: pb.StrictModeConfig, params: pb.SearchParams) -> None:
    if params.HasField("quantization") and params.quantization.HasField("oversampling"):
        check_limit(params.quantization.oversampling, _opt(strict, "search_max_oversampling"), "oversampling")
    if params.HasField("hnsw_ef"):
        check_limit(params.hnsw_ef, _opt(strict, "search_max_hnsw_ef"), "hnsw_ef")
    check_exact(strict, params.exact)


# -- filters -------------------------------------------------------------------------------------------------------


def conditions_count(flt: pb.Filter) -> int:
    """Filter::total_conditions_count: leaf conditions, nested filters counted through."""
    total = 0
    for cond in _top_conditions(flt):
        kind = cond.WhichOneof("condition_one_of")
        if kind == "filter":
            total += conditions_count(cond.filter)
        elif kind == "nested":
            total += conditions_count(cond.nested.filter)
        else:
            total += 1
    return total


def _top_conditions(flt: pb.Filter) -> Iterator[pb.Condition]:
    yield from flt.should
    if flt.HasField("min_should"):
        yield from flt.min_should.conditions
    yield from flt.must
    yield from flt.must_not


def _required_indexes(fc: pb.FieldCondition) -> tuple[str, ...]:
    """Which index types serve a field condition (infer_index_from_field_condition)."""
    needed: list[str] = []
    if fc.HasField("match"):
        kind = fc.match.WhichOneof("match_value")
        if kind in ("keyword", "keywords", "except_keywords", "prefix"):
            needed += ["keyword", "uuid"] if kind == "keyword" else ["keyword"]
        elif kind in ("integer", "integers", "except_integers"):
            needed.append("integer")
        elif kind == "boolean":
            needed.append("bool")
        elif kind in ("text", "text_any", "phrase"):
            needed.append("text")
    if fc.HasField("range"):
        needed += ["float", "integer"]
    if fc.HasField("datetime_range"):
        needed.append("datetime")
    if fc.HasField("geo_bounding_box") or fc.HasField("geo_radius") or fc.HasField("geo_polygon"):
        needed.append("geo")
    if fc.HasField("values_count") or fc.HasField("is_empty") or fc.HasField("is_null"):
        needed += _ANY_INDEX
    return tuple(dict.fromkeys(needed))


def _unindexed_key(flt: pb.Filter, indexed: dict[str, str], prefix: str = "") -> Optional[tuple[str, tuple[str, ...]]]:
    for cond in _top_conditions(flt):
        kind = cond.WhichOneof("condition_one_of")
        if kind == "filter":
            found = _unindexed_key(cond.filter, indexed, prefix)
        elif kind == "nested":
            found = _unindexed_key(cond.nested.filter, indexed, f"{prefix}{cond.nested.key}[].")
        elif kind == "field":
            needed = _required_indexes(cond.field)
            key = prefix + cond.field.key
            found = (key, needed) if needed and indexed.get(key) not in needed else None
        elif kind in ("is_empty", "is_null"):
            key = prefix + getattr(cond, kind).key
            found = (key, _ANY_INDEX) if key not in indexed else None
        else:
            found = None  # has_id, has_vector, slice: no index needed
        if found is not None:
            return found
    return None


def check_filter(
    strict: pb.StrictModeConfig, flt: Optional[pb.Filter], payload_schema: dict[str, pb.PayloadSchemaInfo], write: bool
) -> None:
    """verification/mod.rs check_request_filter: indexes required when unindexed filtering is off, then limits."""
    if flt is None:
        return
    allow: Literal["unindexed_filtering_update", "unindexed_filtering_retrieve"] = (
        "unindexed_filtering_update" if write else "unindexed_filtering_retrieve")
    if strict.HasField(allow) and not getattr(strict, allow):
        indexed = {key: _SCHEMA_NAMES.get(info.data_type, "") for key, info in payload_schema.items()}
        found = _unindexed_key(flt, indexed)
        if found is not None:
            key, types = found
            raise violation(
                f'Index required but not found for "{key}" of one of the following types: [{", ".join(sorted(types))}]',
                "Create an index for this key or use a different filter.",
            )
    if strict.HasField("filter_max_conditions"):
        count = conditions_count(flt)
        if count > strict.filter_max_conditions:
            raise violation(
                f"Filter condition limit reached ({count} > {strict.filter_max_conditions})",
                "Reduce the amount of conditions of your filter.",
            )


# -- requests --------------------------------------------------------------------------------------------------------


def check_scroll(strict: pb.StrictModeConfig, request: pb.ScrollPoints, coll_schema: dict) -> None:
    check_limit(_opt(request, "limit"), _opt(strict, "max_query_limit"), "limit")
    check_filter(strict, request.filter if request.HasField("filter") else None, coll_schema, write=False)
    check_timeout(strict, request)


def check_count(strict: pb.StrictModeConfig, request: pb.CountPoints, coll_schema: dict) -> None:
    check_filter(strict, request.filter if request.HasField("filter") else None, coll_schema, write=False)
    check_exact(strict, request.exact if request.HasField("exact") else True)
    check_timeout(strict, request)


def check_write_batch(strict: pb.StrictModeConfig, points: int, name: str, request: Any) -> None:
    """Upsert ("upsert limit") and update-vectors ("update limit") point counts."""
    check_limit(points, _opt(strict, "upsert_max_batchsize"), name)
    check_timeout(strict, request)


def _check_fullscan(strict: pb.StrictModeConfig, config: pb.CollectionConfig, query: pb.Query, using: str) -> None:
    """verification/query.rs check_fullscan: no exact search on a vector whose HNSW index is off (m = 0)."""
    if not (strict.HasField("search_allow_exact") and not strict.search_allow_exact):
        return
    if query.WhichOneof("variant") in ("fusion", "rrf", "order_by", "formula", "sample", None):
        return
    if using in schema.sparse_vectors(config):
        return  # sparse vectors are always indexed
    params = schema.dense_vectors(config).get(using)
    m = config.hnsw_config.m
    if params is not None and params.HasField("hnsw_config") and params.hnsw_config.HasField("m"):
        m = params.hnsw_config.m
    if m > 0:
        return
    label = "" if using == "" else f" on '{using}'"
    raise violation(
        f"Request is forbidden{label} because global vector indexing is disabled (hnsw_config.m = 0)",
        "Use tenant-specific filter, enable global vector indexing or enable strict mode `search_allow_exact` option",
    )


def _check_prefetch(strict: pb.StrictModeConfig, coll: Any, pf: pb.PrefetchQuery) -> None:
    for inner in pf.prefetch:
        _check_prefetch(strict, coll, inner)
    if pf.HasField("query"):
        _check_fullscan(strict, coll.config, pf.query, pf.using if pf.HasField("using") else "")
    check_limit(pf.limit if pf.HasField("limit") else 10, _opt(strict, "max_query_limit"), "limit")
    check_filter(strict, pf.filter if pf.HasField("filter") else None, coll.payload_schema, write=False)
    if pf.HasField("params"):
        check_search_params(strict, pf.params)


def check_query(strict: pb.StrictModeConfig, coll: Any, request: pb.QueryPoints) -> None:
    """CollectionQueryRequest: prefetches first, then the root (fullscan only without prefetch), limit, filter."""
    for pf in request.prefetch:
        _check_prefetch(strict, coll, pf)
    if request.HasField("query") and not request.prefetch:
        _check_fullscan(strict, coll.config, request.query, request.using if request.HasField("using") else "")
    check_limit(request.limit if request.HasField("limit") else 10, _opt(strict, "max_query_limit"), "limit")
    check_filter(strict, request.filter if request.HasField("filter") else None, coll.payload_schema, write=False)
    if request.HasField("params"):
        check_search_params(strict, request.params)
    check_timeout(strict, request)


def check_query_batch(strict: pb.StrictModeConfig, coll: Any, request: pb.QueryBatchPoints) -> None:
    check_limit(len(request.query_points), _opt(strict, "search_max_batchsize"), "search batch size")
    for query in request.query_points:
        check_query(strict, coll, query)
    check_timeout(strict, request)

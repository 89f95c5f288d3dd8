"""Qdrant gRPC messages <-> qdrant-edge objects: point ids, vectors, filters, selectors, queries, results.

The per-point functions sit on the endpoint's hot paths (upsert reads, scroll writes), so they avoid building
intermediate messages and read dense vectors from the packed float bytes.
"""

from __future__ import annotations

import struct
import sys
import uuid
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import qdrant_edge as qe
from qdrant_client import grpc as pb

from engine.embedded.status import bad_input, unsupported
from engine.qdrant.values import fill_payload

PointId = Union[int, uuid.UUID]
EdgeVector = Union[Sequence[float], qe.SparseVector]

DEFAULT_VECTOR = ""  # Qdrant's name for the unnamed vector

# ----------------------------------------------------------------------------------------------------------------
# point ids


def point_id_in(pid: pb.PointId) -> PointId:
    """A gRPC PointId to what qdrant-edge takes: int, or uuid.UUID (validated, any format uuid accepts)."""
    kind = pid.WhichOneof("point_id_options")
    if kind == "num":
        return pid.num
    if kind == "uuid":
        try:
            return uuid.UUID(pid.uuid)
        except ValueError:
            raise bad_input(f"Unable to parse UUID: {pid.uuid}") from None
    raise bad_input("Empty point id: set `num` or `uuid`")


def fill_point_id(target: pb.PointId, pid: Any) -> None:
    """Write a qdrant-edge id (int, uuid.UUID, or UUID string) into a gRPC PointId in place."""
    if type(pid) is int:
        target.num = pid
    else:
        target.uuid = str(pid)


# ----------------------------------------------------------------------------------------------------------------
# vectors in


_LITTLE_ENDIAN = sys.byteorder == "little"


def dense_floats(dense: pb.DenseVector) -> Sequence[float]:
    """The floats of a DenseVector as a float32 memoryview over its packed wire bytes.

    qdrant-edge reads any float sequence; a memoryview skips building 384 Python floats per point (measured:
    about 3x cheaper than list(dense.data) or numpy's tolist()).
    """
    count = len(dense.data)
    if count == 0:
        return []
    if not _LITTLE_ENDIAN:  # the wire format is little-endian; cast() would read native order
        return list(dense.data)
    raw = dense.SerializeToString()
    # field 1, packed: tag byte + varint length + count*4 little-endian float32
    return memoryview(raw)[len(raw) - 4 * count :].cast("f")


def vector_in(vec: pb.Vector) -> EdgeVector:
    """One gRPC Vector (the `oneof vector`, or the deprecated flat layout older clients send)."""
    kind = vec.WhichOneof("vector")
    if kind == "dense":
        return dense_floats(vec.dense)
    if kind == "sparse":
        return _sparse_in(list(vec.sparse.indices), list(vec.sparse.values))
    if kind is None:  # pre-1.10 layout: data (+ indices for sparse, + vectors_count for multi)
        if vec.HasField("vectors_count"):
            raise unsupported("multi-vectors")
        if vec.HasField("indices"):
            return _sparse_in(list(vec.indices.data), list(vec.data))
        return list(vec.data)
    if kind == "multi_dense":
        raise unsupported("multi-vectors")
    raise unsupported(f"server-side inference (`{kind}` vectors)")


def _sparse_in(indices: list[int], values: list[float]) -> qe.SparseVector:
    if len(indices) != len(values):
        raise bad_input(
            f"Validation error in body: [sparse vector: indices and values must have the same length, "
            f"got {len(indices)} and {len(values)}]"
        )
    return qe.SparseVector(indices, values)


def vectors_in(vectors: pb.Vectors) -> dict[str, EdgeVector]:
    """A point's gRPC Vectors as {name: vector}; the unnamed vector is under ""."""
    kind = vectors.WhichOneof("vectors_options")
    if kind == "vector":
        return {DEFAULT_VECTOR: vector_in(vectors.vector)}
    if kind == "vectors":
        return {name: vector_in(vec) for name, vec in vectors.vectors.vectors.items()}
    return {}


class VectorSchema:
    """The vector names and sizes of one collection, for validating writes the way Qdrant does before applying."""

    def __init__(self, dense: dict[str, int], sparse: set[str]) -> None:
        self.dense = dense
        self.sparse = sparse

    def check(self, named: dict[str, EdgeVector]) -> None:
        dense = self.dense
        for name, vec in named.items():
            size = dense.get(name)
            if size is not None:
                if isinstance(vec, qe.SparseVector):
                    raise bad_input(f"Conversion between sparse and regular vectors failed for vector `{name}`")
                if len(vec) != size:
                    raise bad_input(f"Vector dimension error: expected dim: {size}, got {len(vec)}")
            elif name in self.sparse:
                if not isinstance(vec, qe.SparseVector):
                    raise bad_input(f"Conversion between sparse and regular vectors failed for vector `{name}`")
            else:
                raise bad_input(f"Not existing vector name error: {name}")


# ----------------------------------------------------------------------------------------------------------------
# vectors and points out


_PACKERS: dict[int, struct.Struct] = {}


def _packed_dense(floats: list[float]) -> bytes:
    """DenseVector wire bytes for `floats` (struct.pack beats repeated-field extend by ~20 % per vector)."""
    count = len(floats)
    packer = _PACKERS.get(count)
    if packer is None:
        packer = _PACKERS[count] = struct.Struct(f"<{count}f")
    return b"\x0a" + _varint(4 * count) + packer.pack(*floats)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fill_vector_out(target: pb.VectorOutput, vec: Any) -> None:
    if type(vec) is list:
        if vec:
            target.dense.MergeFromString(_packed_dense(vec))
        else:
            target.dense.SetInParent()
    elif isinstance(vec, qe.SparseVector):
        sparse = target.sparse
        sparse.indices.extend(vec.indices)
        sparse.values.extend(vec.values)
    else:
        raise unsupported("multi-vectors")


def fill_vectors_out(target: pb.VectorsOutput, vector: Any, single_unnamed: bool) -> None:
    """Write a qdrant-edge record's vector(s) into VectorsOutput: single form for unnamed-vector collections."""
    if type(vector) is list:
        vector = {DEFAULT_VECTOR: vector}
    if single_unnamed and len(vector) == 1 and DEFAULT_VECTOR in vector:
        _fill_vector_out(target.vector, vector[DEFAULT_VECTOR])
        return
    named = target.vectors.vectors
    target.vectors.SetInParent()
    for name, vec in vector.items():
        _fill_vector_out(named[name], vec)


def fill_retrieved(target: pb.RetrievedPoint, record: Any, single_unnamed: bool) -> None:
    fill_point_id(target.id, record.id)
    payload = record.payload
    if payload:
        fill_payload(target.payload, payload)
    vector = record.vector
    if vector is not None:
        fill_vectors_out(target.vectors, vector, single_unnamed)
    order_value = record.order_value
    if order_value is not None:
        _fill_order_value(target.order_value, order_value)


def fill_scored(target: pb.ScoredPoint, point: Any, single_unnamed: bool, with_vectors: bool) -> None:
    fill_point_id(target.id, point.id)
    target.score = point.score
    target.version = point.version
    payload = point.payload
    if payload:
        fill_payload(target.payload, payload)
    vector = point.vector
    if vector is not None and with_vectors:  # MMR hands back the vectors it scored with, asked for or not
        fill_vectors_out(target.vectors, vector, single_unnamed)
    order_value = point.order_value
    if order_value is not None:
        _fill_order_value(target.order_value, order_value)


def _fill_order_value(target: pb.OrderValue, value: Union[int, float]) -> None:
    if type(value) is int:
        target.int = value
    else:
        target.float = value


# ----------------------------------------------------------------------------------------------------------------
# selectors


def with_payload_in(selector: pb.WithPayloadSelector, default: bool) -> Any:
    kind = selector.WhichOneof("selector_options")
    if kind == "enable":
        return selector.enable
    if kind == "include":
        return qe.PayloadSelector.Include(list(selector.include.fields))
    if kind == "exclude":
        return qe.PayloadSelector.Exclude(list(selector.exclude.fields))
    return default


def wants_vectors(message: Any) -> bool:
    """Whether a request's `with_vectors` asks for any vector (absent means no)."""
    if not message.HasField("with_vectors"):
        return False
    return with_vectors_in(message.with_vectors) not in (False, [])


def with_vectors_in(selector: pb.WithVectorsSelector) -> Union[bool, list[str]]:
    kind = selector.WhichOneof("selector_options")
    if kind == "enable":
        return selector.enable
    if kind == "include":
        return list(selector.include.names)
    return False


# ----------------------------------------------------------------------------------------------------------------
# filters


def filter_in(flt: pb.Filter) -> Optional[qe.Filter]:
    """A gRPC Filter to a qdrant-edge Filter; None when it holds no clause."""
    must = [condition_in(c) for c in flt.must]
    should = [condition_in(c) for c in flt.should]
    must_not = [condition_in(c) for c in flt.must_not]
    min_should = None
    if flt.HasField("min_should"):
        min_should = qe.MinShould(
            [condition_in(c) for c in flt.min_should.conditions], int(flt.min_should.min_count)
        )
    if not (must or should or must_not or min_should):
        return None
    return qe.Filter(
        must=must or None, should=should or None, must_not=must_not or None, min_should=min_should
    )


def optional_filter(message: Any, field: str = "filter") -> Optional[qe.Filter]:
    return filter_in(getattr(message, field)) if message.HasField(field) else None


def condition_in(cond: pb.Condition) -> Any:
    kind = cond.WhichOneof("condition_one_of")
    if kind == "field":
        return _field_condition_in(cond.field)
    if kind == "is_empty":
        return qe.IsEmptyCondition(cond.is_empty.key)
    if kind == "is_null":
        return qe.IsNullCondition(cond.is_null.key)
    if kind == "has_id":
        return qe.HasIdCondition({point_id_in(pid) for pid in cond.has_id.has_id})
    if kind == "filter":
        nested = filter_in(cond.filter)
        return nested if nested is not None else qe.Filter()
    if kind == "nested":
        inner = filter_in(cond.nested.filter) or qe.Filter()
        return qe.NestedCondition(cond.nested.key, inner)
    if kind == "has_vector":
        return qe.HasVectorCondition(cond.has_vector.has_vector)
    if kind == "slice":
        return qe.SliceCondition(cond.slice.total, cond.slice.index)
    raise bad_input("Condition without a variant: set one of field, is_empty, has_id, filter, is_null, nested")


def _opt(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def _field_condition_in(fc: pb.FieldCondition) -> qe.FieldCondition:
    kwargs: dict[str, Any] = {}
    if fc.HasField("match"):
        kwargs["match"] = _match_in(fc.match)
    if fc.HasField("range"):
        r = fc.range
        kwargs["range"] = qe.RangeFloat(gte=_opt(r, "gte"), gt=_opt(r, "gt"), lte=_opt(r, "lte"), lt=_opt(r, "lt"))
    if fc.HasField("datetime_range"):
        r = fc.datetime_range
        kwargs["range"] = qe.RangeDateTime(
            **{k: getattr(r, k).ToJsonString() for k in ("gte", "gt", "lte", "lt") if r.HasField(k)}
        )
    if fc.HasField("geo_bounding_box"):
        box = fc.geo_bounding_box
        kwargs["geo_bounding_box"] = qe.GeoBoundingBox(_geo(box.top_left), _geo(box.bottom_right))
    if fc.HasField("geo_radius"):
        kwargs["geo_radius"] = qe.GeoRadius(_geo(fc.geo_radius.center), fc.geo_radius.radius)
    if fc.HasField("geo_polygon"):
        poly = fc.geo_polygon
        kwargs["geo_polygon"] = qe.GeoPolygon(
            [_geo(p) for p in poly.exterior.points],
            [[_geo(p) for p in ring.points] for ring in poly.interiors] or None,
        )
    if fc.HasField("values_count"):
        vc = fc.values_count
        kwargs["values_count"] = qe.ValuesCount(
            lt=_opt(vc, "lt"), gt=_opt(vc, "gt"), lte=_opt(vc, "lte"), gte=_opt(vc, "gte")
        )
    if fc.HasField("is_empty"):
        kwargs["is_empty"] = fc.is_empty
    if fc.HasField("is_null"):
        kwargs["is_null"] = fc.is_null
    if not kwargs:
        raise bad_input(f"Field condition on `{fc.key}` has no match, range, geo, values_count or is_empty clause")
    return qe.FieldCondition(fc.key, **kwargs)


def _geo(point: pb.GeoPoint) -> qe.GeoPoint:
    return qe.GeoPoint(lon=point.lon, lat=point.lat)


def _match_in(match: pb.Match) -> Any:
    kind = match.WhichOneof("match_value")
    if kind == "boolean":
        # qdrant-edge 0.9 reads a Python bool as the integer 1/0 (bool subclasses int), so `true` would never
        # match a boolean payload; numpy.bool_ is not an int and reaches its bool branch.
        return qe.MatchValue(np.bool_(match.boolean))
    if kind in ("keyword", "integer"):
        return qe.MatchValue(getattr(match, kind))
    if kind == "text":
        return qe.MatchText(match.text)
    if kind == "keywords":
        return qe.MatchAny(list(match.keywords.strings))
    if kind == "integers":
        return qe.MatchAny(list(match.integers.integers))
    if kind == "except_keywords":
        return qe.MatchExcept(list(match.except_keywords.strings))
    if kind == "except_integers":
        return qe.MatchExcept(list(match.except_integers.integers))
    if kind == "phrase":
        return qe.MatchPhrase(match.phrase)
    if kind == "text_any":
        return qe.MatchTextAny(match.text_any)
    if kind == "prefix":
        return qe.MatchPrefix(match.prefix)
    if kind == "substring":
        return qe.MatchSubstring(match.substring)
    raise bad_input("Match without a value")


# ----------------------------------------------------------------------------------------------------------------
# queries


def search_params_in(params: pb.SearchParams) -> qe.SearchParams:
    quantization = None
    if params.HasField("quantization"):
        q = params.quantization
        quantization = qe.QuantizationSearchParams(
            ignore=q.ignore, rescore=_opt(q, "rescore"), oversampling=_opt(q, "oversampling")
        )
    acorn = None
    if params.HasField("acorn"):
        acorn = qe.AcornSearchParams(enable=params.acorn.enable, max_selectivity=_opt(params.acorn, "max_selectivity"))
    idf = None
    if params.HasField("idf"):
        idf = qe.IdfParams(corpus=optional_filter(params.idf, "corpus"))
    return qe.SearchParams(
        hnsw_ef=_opt(params, "hnsw_ef"),
        exact=params.exact,
        quantization=quantization,
        indexed_only=params.indexed_only,
        acorn=acorn,
        idf=idf,
    )


def _vector_input_in(vin: pb.VectorInput) -> EdgeVector:
    kind = vin.WhichOneof("variant")
    if kind == "dense":
        return dense_floats(vin.dense)
    if kind == "sparse":
        return _sparse_in(list(vin.sparse.indices), list(vin.sparse.values))
    if kind == "id":
        raise unsupported("querying by point id")
    if kind == "multi_dense":
        raise unsupported("multi-vector queries")
    if kind is None:
        raise bad_input("Query vector input is empty")
    raise unsupported(f"server-side inference (`{kind}` query input)")


_DEFAULT_RRF_K = 2  # Qdrant's default RRF constant (lib/segment: DEFAULT_RRF_K)
DEFAULT_QUERY_LIMIT = 10  # Qdrant's default `limit` for query, prefetch and scroll


def query_in(query: pb.Query, using: Optional[str], limit: int) -> Any:
    """A gRPC Query (+ `using`, and the stage's limit for MMR's default pool) to a qdrant-edge scoring query."""
    kind = query.WhichOneof("variant")
    if kind == "nearest":
        return qe.Query.Nearest(_vector_input_in(query.nearest), using=using)
    if kind == "sample":
        return qe.Sample.Random
    if kind == "fusion":
        if query.fusion == pb.Fusion.DBSF:
            return qe.Fusion.Dbsf()
        return qe.Fusion.Rrf(k=_DEFAULT_RRF_K)
    if kind == "rrf":
        k = query.rrf.k if query.rrf.HasField("k") else _DEFAULT_RRF_K
        return qe.Fusion.Rrf(k=k, weights=list(query.rrf.weights) or None)
    if kind == "order_by":
        return order_by_in(query.order_by)
    if kind == "nearest_with_mmr":
        mmr = query.nearest_with_mmr.mmr
        diversity = mmr.diversity if mmr.HasField("diversity") else 0.5
        candidates = mmr.candidates_limit if mmr.HasField("candidates_limit") else limit  # Qdrant's default
        return qe.Mmr(_vector_input_in(query.nearest_with_mmr.nearest), 1.0 - diversity, candidates, using=using)
    if kind is None:
        return None
    raise unsupported(f"`{kind}` queries")


def order_by_in(order: pb.OrderBy) -> qe.OrderBy:
    direction = None
    if order.HasField("direction"):
        direction = qe.Direction.Desc if order.direction == pb.Direction.Desc else qe.Direction.Asc
    start_from = None
    if order.HasField("start_from"):
        sf = order.start_from
        which = sf.WhichOneof("value")
        if which == "timestamp":
            start_from = sf.timestamp.ToJsonString()
        elif which is not None:
            start_from = getattr(sf, which)
    return qe.OrderBy(order.key, direction=direction, start_from=start_from)


def prefetch_in(prefetch: pb.PrefetchQuery) -> qe.Prefetch:
    if prefetch.HasField("lookup_from"):
        raise unsupported("`lookup_from`")
    using = prefetch.using if prefetch.HasField("using") else None
    limit = prefetch.limit if prefetch.HasField("limit") else DEFAULT_QUERY_LIMIT
    return qe.Prefetch(
        limit=limit,
        query=query_in(prefetch.query, using, limit) if prefetch.HasField("query") else None,
        prefetches=[prefetch_in(p) for p in prefetch.prefetch] or None,
        params=search_params_in(prefetch.params) if prefetch.HasField("params") else None,
        filter=optional_filter(prefetch),
        score_threshold=_opt(prefetch, "score_threshold"),
    )


def query_request_in(req: pb.QueryPoints) -> qe.QueryRequest:
    if req.HasField("lookup_from"):
        raise unsupported("`lookup_from`")
    using = req.using if req.HasField("using") else None
    limit = req.limit if req.HasField("limit") else DEFAULT_QUERY_LIMIT
    return qe.QueryRequest(
        limit=limit,
        offset=req.offset if req.HasField("offset") else None,
        query=query_in(req.query, using, limit) if req.HasField("query") else None,
        prefetches=[prefetch_in(p) for p in req.prefetch] or None,
        with_vector=with_vectors_in(req.with_vectors) if req.HasField("with_vectors") else False,
        with_payload=with_payload_in(req.with_payload, False) if req.HasField("with_payload") else False,
        filter=optional_filter(req),
        score_threshold=_opt(req, "score_threshold"),
        params=search_params_in(req.params) if req.HasField("params") else None,
    )


# ----------------------------------------------------------------------------------------------------------------
# enums shared by collection configs and vector-name creation

DISTANCES: dict[int, Any] = {
    pb.Distance.Cosine: qe.Distance.Cosine,
    pb.Distance.Euclid: qe.Distance.Euclid,
    pb.Distance.Dot: qe.Distance.Dot,
    pb.Distance.Manhattan: qe.Distance.Manhattan,
}

DATATYPES: dict[int, Any] = {
    pb.Datatype.Float32: qe.VectorStorageDatatype.Float32,
    pb.Datatype.Float16: qe.VectorStorageDatatype.Float16,
    pb.Datatype.Uint8: qe.VectorStorageDatatype.Uint8,
    pb.Datatype.Turbo8: qe.VectorStorageDatatype.Turbo8,
    pb.Datatype.Turbo16: qe.VectorStorageDatatype.Turbo16,
}


def distance_in(distance: int, where: str) -> Any:
    try:
        return DISTANCES[distance]
    except KeyError:
        raise bad_input(f"Unknown distance {distance} for {where}: use Cosine, Euclid, Dot or Manhattan") from None


def datatype_in(message: Any) -> Any:
    if not message.HasField("datatype") or message.datatype == pb.Datatype.Default:
        return None
    try:
        return DATATYPES[message.datatype]
    except KeyError:
        raise unsupported(f"vector datatype {pb.Datatype.Name(message.datatype)}") from None


def modifier_in(message: Any) -> Any:
    if message.HasField("modifier") and message.modifier == pb.Modifier.Idf:
        return qe.Modifier.Idf
    return None


# Payload index types: the request speaks FieldType (Keyword=0...), CollectionInfo speaks PayloadSchemaType
# (Keyword=1...), qdrant-edge has its own enum and params classes.
FIELD_TYPES: dict[int, tuple[int, Any, str]] = {
    pb.FieldType.FieldTypeKeyword: (pb.PayloadSchemaType.Keyword, qe.PayloadSchemaType.Keyword, "keyword_index_params"),
    pb.FieldType.FieldTypeInteger: (pb.PayloadSchemaType.Integer, qe.PayloadSchemaType.Integer, "integer_index_params"),
    pb.FieldType.FieldTypeFloat: (pb.PayloadSchemaType.Float, qe.PayloadSchemaType.Float, "float_index_params"),
    pb.FieldType.FieldTypeGeo: (pb.PayloadSchemaType.Geo, qe.PayloadSchemaType.Geo, "geo_index_params"),
    pb.FieldType.FieldTypeText: (pb.PayloadSchemaType.Text, qe.PayloadSchemaType.Text, "text_index_params"),
    pb.FieldType.FieldTypeBool: (pb.PayloadSchemaType.Bool, qe.PayloadSchemaType.Bool, "bool_index_params"),
    pb.FieldType.FieldTypeDatetime: (
        pb.PayloadSchemaType.Datetime,
        qe.PayloadSchemaType.Datetime,
        "datetime_index_params",
    ),
    pb.FieldType.FieldTypeUuid: (pb.PayloadSchemaType.Uuid, qe.PayloadSchemaType.Uuid, "uuid_index_params"),
}

_PARAMS_TO_FIELD_TYPE = {params_field: field_type for field_type, (_, _, params_field) in FIELD_TYPES.items()}


def field_index_in(req: pb.CreateFieldIndexCollection) -> tuple[pb.PayloadSchemaInfo, Any]:
    """The index a CreateFieldIndex asks for: (the PayloadSchemaInfo Get will report, the qdrant-edge schema)."""
    params_kind = req.field_index_params.WhichOneof("index_params") if req.HasField("field_index_params") else None
    if req.HasField("field_type"):
        field_type = req.field_type
    elif params_kind is not None:
        field_type = _PARAMS_TO_FIELD_TYPE[params_kind]
    else:
        raise bad_input(f"Payload index for `{req.field_name}` needs a field_type or field_index_params")
    if field_type not in FIELD_TYPES:
        raise bad_input(f"Unknown payload field type {field_type}")
    schema_type, edge_type, expected_params = FIELD_TYPES[field_type]
    info = pb.PayloadSchemaInfo(data_type=schema_type)
    if params_kind is None:
        return info, edge_type
    if params_kind != expected_params:
        raise bad_input(f"Payload index params `{params_kind}` do not match field type {pb.FieldType.Name(field_type)}")
    info.params.CopyFrom(req.field_index_params)
    return info, _index_params_in(params_kind, getattr(req.field_index_params, params_kind))


def _index_params_in(kind: str, p: Any) -> Any:
    common = {"on_disk": _opt(p, "on_disk"), "enable_hnsw": _opt(p, "enable_hnsw"), "nested": _opt(p, "nested")}
    if kind == "keyword_index_params":
        return qe.KeywordIndexParams(is_tenant=_opt(p, "is_tenant"), prefix=True if p.HasField("prefix") else None, **common)
    if kind == "integer_index_params":
        return qe.IntegerIndexParams(
            lookup=_opt(p, "lookup"), range=_opt(p, "range"), is_principal=_opt(p, "is_principal"), **common
        )
    if kind == "float_index_params":
        return qe.FloatIndexParams(is_principal=_opt(p, "is_principal"), **common)
    if kind == "geo_index_params":
        return qe.GeoIndexParams(**common)
    if kind == "bool_index_params":
        return qe.BoolIndexParams(**common)
    if kind == "datetime_index_params":
        return qe.DatetimeIndexParams(is_principal=_opt(p, "is_principal"), **common)
    if kind == "uuid_index_params":
        return qe.UuidIndexParams(is_tenant=_opt(p, "is_tenant"), **common)
    if kind == "text_index_params":
        return _text_index_params_in(p, common)
    raise bad_input(f"Unknown payload index params `{kind}`")


_TOKENIZERS: dict[int, Callable[[], Any]] = {
    pb.TokenizerType.Prefix: lambda: qe.TokenizerType.Prefix,
    pb.TokenizerType.Whitespace: lambda: qe.TokenizerType.Whitespace,
    pb.TokenizerType.Word: lambda: qe.TokenizerType.Word,
    pb.TokenizerType.Multilingual: lambda: qe.TokenizerType.Multilingual,
    pb.TokenizerType.Code: lambda: qe.TokenizerType.Code,
}


def _text_index_params_in(p: pb.TextIndexParams, common: dict[str, Any]) -> Any:
    if p.tokenizer not in _TOKENIZERS:
        raise bad_input("Text index needs a tokenizer (prefix, whitespace, word, multilingual or code)")
    if p.HasField("stopwords") or p.HasField("stemmer"):
        raise unsupported("text index stopwords/stemmer settings")
    return qe.TextIndexParams(
        tokenizer=_TOKENIZERS[p.tokenizer](),
        min_token_len=_opt(p, "min_token_len"),
        max_token_len=_opt(p, "max_token_len"),
        lowercase=_opt(p, "lowercase"),
        ascii_folding=_opt(p, "ascii_folding"),
        phrase_matching=_opt(p, "phrase_matching"),
        scoring=True if p.HasField("scoring") else None,
        **common,
    )

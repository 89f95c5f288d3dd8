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

from engine.embedded.status import bad_input, internal, invalid_argument, unsupported, validation_error
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


class MultiDense(list):
    """A multivector (ColBERT-style: several dense vectors of one size) on its way to qdrant-edge."""


def multi_in(vectors: list[Sequence[float]]) -> MultiDense:
    """Qdrant's multivector validation (common/validation.rs validate_multi_vector_by_length)."""
    if not vectors:
        raise validation_error("data", "multi vector must not be empty")
    lengths = [len(v) for v in vectors]
    if 0 in lengths:
        raise validation_error("data", "all vectors must be non-empty")
    bad = next((n for n in lengths if n != lengths[0]), None)
    if bad is not None:
        raise validation_error("data", f"all vectors must have the same dimension, found vector with dimension {bad}")
    return MultiDense(vectors)


def _plain_multi_in(data: Sequence[float], vectors_count: int) -> MultiDense:
    """The pre-1.10 flat layout: `data` holds `vectors_count` vectors end to end (conversions/vectors.rs)."""
    if vectors_count == 0 or not data:
        raise invalid_argument(
            f"Unable to convert to multi-dense vector: Validation error: Empty multi-vector data with vectors count: "
            f"{vectors_count}"
        )
    dim = len(data) // vectors_count
    if dim * vectors_count != len(data):
        raise invalid_argument(
            "Unable to convert to multi-dense vector: Validation error: Data length is not divisible by vectors "
            f"count. Data length: {len(data)}, vectors count: {vectors_count}"
        )
    return multi_in([list(data[i * dim : (i + 1) * dim]) for i in range(vectors_count)])


def vector_in(vec: pb.Vector) -> EdgeVector:
    """One gRPC Vector (the `oneof vector`, or the deprecated flat layout older clients send)."""
    kind = vec.WhichOneof("vector")
    if kind == "dense":
        return dense_floats(vec.dense)
    if kind == "sparse":
        return sparse_in(list(vec.sparse.indices), list(vec.sparse.values))
    if kind == "multi_dense":
        return multi_in([dense_floats(v) for v in vec.multi_dense.vectors])
    if kind is None:  # pre-1.10 layout: data (+ indices for sparse, + vectors_count for multi)
        if vec.HasField("vectors_count"):
            return _plain_multi_in(list(vec.data), vec.vectors_count)
        if vec.HasField("indices"):
            return sparse_in(list(vec.indices.data), list(vec.data))
        return list(vec.data)
    raise unsupported(f"server-side inference (`{kind}` vectors)")


def sparse_in(indices: list[int], values: list[float]) -> qe.SparseVector:
    """A sparse vector, validated as Qdrant's gRPC layer does (sparse_vector.rs validate_sparse_vector_impl)."""
    if len(indices) != len(values):
        raise validation_error("values", "Validation error: must be the same length as indices [{}]")
    if len(set(indices)) != len(indices):
        raise validation_error("indices", "Validation error: must be unique [{}]")
    return qe.SparseVector(indices, values)


def vectors_in(vectors: pb.Vectors) -> dict[str, EdgeVector]:
    """A point's gRPC Vectors as {name: vector}; the unnamed vector is under "".

    Refused like Qdrant's conversion (lib/api/src/conversions/vectors.rs): a Vectors with neither variant set is
    "No Vector Provided", a sparse vector must be named. An empty NamedVectors map is accepted: the point is stored
    without vectors (the segment's `insert_new_vectors` leaves every vector of the point unset).
    """
    kind = vectors.WhichOneof("vectors_options")
    if kind == "vector":
        vec = vectors.vector
        if vec.WhichOneof("vector") == "sparse" or (vec.WhichOneof("vector") is None and vec.HasField("indices")):
            raise invalid_argument("Sparse vector must be named")
        return {DEFAULT_VECTOR: vector_in(vec)}
    if kind == "vectors":
        return {name: vector_in(vec) for name, vec in vectors.vectors.vectors.items()}
    raise invalid_argument("No Vector Provided")


class VectorSchema:
    """The vector names, sizes and kinds of one collection, for validating writes as Qdrant does before applying."""

    def __init__(
        self,
        dense: dict[str, int],
        sparse: set[str],
        multi: Optional[set[str]] = None,
        distances: Optional[dict[str, int]] = None,
    ) -> None:
        self.dense = dense
        self.sparse = sparse
        self.multi = multi or set()
        self.distances = distances or {}

    def check(self, named: dict[str, EdgeVector]) -> None:
        dense = self.dense
        for name, vec in named.items():
            size = dense.get(name)
            if size is not None:
                if isinstance(vec, qe.SparseVector):
                    raise bad_input(f"Conversion between sparse and regular vectors failed for vector `{name}`")
                if type(vec) is MultiDense:
                    if name not in self.multi:
                        raise bad_input("Wrong usage of multi vectors")
                    for sub in vec:
                        if len(sub) != size:
                            raise bad_input(f"Vector dimension error: expected dim: {size}, got {len(sub)}")
                elif len(vec) != size:
                    raise bad_input(f"Vector dimension error: expected dim: {size}, got {len(vec)}")
            elif name in self.sparse:
                if not isinstance(vec, qe.SparseVector):
                    raise bad_input(f"Conversion between sparse and regular vectors failed for vector `{name}`")
            else:
                raise bad_input(f"Not existing vector name error: {name}")

    def larger_is_better(self, using: Optional[str]) -> bool:
        """Whether a higher score ranks first for nearest queries on `using` (Distance::distance_order)."""
        distance = self.distances.get(using or DEFAULT_VECTOR)
        return distance not in (pb.Distance.Euclid, pb.Distance.Manhattan)


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
        if not vec:
            target.dense.SetInParent()
        elif type(vec[0]) is list:  # a multivector: MultiDenseVector of DenseVectors, as Qdrant answers
            multi = target.multi_dense
            for sub in vec:
                multi.vectors.add().MergeFromString(_packed_dense(sub))
        else:
            target.dense.MergeFromString(_packed_dense(vec))
    elif isinstance(vec, qe.SparseVector):
        sparse = target.sparse
        sparse.indices.extend(vec.indices)
        sparse.values.extend(vec.values)
    else:
        raise internal(f"unexpected vector type {type(vec).__name__} from qdrant-edge")


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
        return qe.SliceCondition(cond.slice.total, cond.slice.index)  # type: ignore[attr-defined]  # stub lacks it
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
        return qe.MatchValue(np.bool_(match.boolean))  # type: ignore[arg-type]  # stub omits numpy.bool_
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


DEFAULT_RRF_K = 2  # Qdrant's default RRF constant (lib/segment: DEFAULT_RRF_K)
DEFAULT_QUERY_LIMIT = 10  # Qdrant's default `limit` for query, prefetch and scroll


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


def comparator_in(config: pb.MultiVectorConfig, where: str) -> qe.MultiVectorConfig:
    if config.comparator != pb.MultiVectorComparator.MaxSim:
        raise bad_input(f"Unknown multivector comparator {config.comparator} for {where}: use MaxSim")
    return qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim)


def modifier_in(message: Any) -> Any:
    if message.HasField("modifier") and message.modifier == pb.Modifier.Idf:
        return qe.Modifier.Idf
    return None


# Payload index types: the request speaks FieldType (Keyword=0...), CollectionInfo speaks PayloadSchemaType
# (Keyword=1...), qdrant-edge has its own enum and params classes.
FIELD_TYPES: dict[pb.FieldType.ValueType, tuple[pb.PayloadSchemaType.ValueType, Any, str]] = {
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


def field_index_of_info(field: str, info: pb.PayloadSchemaInfo) -> Any:
    """The qdrant-edge schema of a stored payload index (to build it on a shard created later)."""
    field_type = next(ft for ft, (schema_type, _, _) in FIELD_TYPES.items() if schema_type == info.data_type)
    request = pb.CreateFieldIndexCollection(field_name=field, field_type=field_type)
    if info.HasField("params"):
        request.field_index_params.CopyFrom(info.params)
    return field_index_in(request)[1]


def _index_params_in(kind: str, p: Any) -> Any:
    common = {"on_disk": _opt(p, "on_disk"), "enable_hnsw": _opt(p, "enable_hnsw"), "nested": _opt(p, "nested")}
    if kind == "keyword_index_params":
        return qe.KeywordIndexParams(is_tenant=_opt(p, "is_tenant"), prefix=True if p.HasField("prefix") else None,
                                     **common)
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
